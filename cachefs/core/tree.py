"""The filesystem core, the tree: lookups, and create, mkdir, symlink, mknod, unlink, rmdir,
rename. Each change goes to the store first (in sync mode) and shows here after; below a
NAME.pack being built it is logged for the pack instead (packdir.py).
"""

from __future__ import annotations

import logging
import os
import stat
from typing import Any

import trio

from .. import attrs as attrs_mod
from ..errors import (
    CacheFSError,
    Exists,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
)
from ..nodes import InodeTable, Kind, Node, PackDir, now_ns
from ..pack import build as packbuild
from ..pack import tarzst as tarpack
from ..remote.fallback import OriginFallback
from ..remote.manifest import ManifestWriter, manifest_key
from ..remote.namespace import Namespace
from ..tier.listings import MetadataCache
from .access import Access
from .entries import Entries
from .handles import OpenFiles, WriteHandle
from .keys import KeyChecks
from .options import Limiters, Options
from .packdir import Building, Layers
from .uploads import Item, Uploads
from .write import Writes

log = logging.getLogger(__name__)


class Tree:
    def __init__(self, *, ns: Namespace, table: InodeTable, layers: Layers, entries: Entries,
                 access: Access, writes: Writes, uploads: Uploads, files: OpenFiles,
                 manifests: ManifestWriter, metadata: MetadataCache,
                 origins: OriginFallback | None, limits: Limiters, opts: Options) -> None:
        self.ns = ns
        self.table = table
        self.layers = layers
        self.entries = entries
        self.access = access
        self.writes = writes
        self.uploads = uploads
        self.files = files
        self.manifests = manifests
        self.metadata = metadata
        self.origins = origins
        self.limits = limits
        self.opts = opts
        self.keys = KeyChecks(ns=ns, layers=layers, limits=limits)

    # -- lookups -------------------------------------------------------------------------------

    async def lookup(self, parent: Node, name: str) -> Node | None:
        """The child ``name``, or None (a negative entry the kernel may cache)."""
        if name == ".":
            return parent
        if name == "..":
            return parent.parent or parent
        node = await self.ns.lookup(parent, name)
        if node is None and name.endswith(tarpack.DIR_SUFFIX):
            node = self._archive_dir(parent, name)
        if node is None and self.origins is not None:
            node = await self.origins.probe(parent, name)
        return node

    def _archive_dir(self, parent: Node, name: str) -> Node | None:
        """``X.tar.zst.d``: the archive ``X.tar.zst`` next to it, as a read-only directory."""
        archive = (parent.children or {}).get(name[:-2])
        if archive is None or archive.kind is not Kind.FILE or archive.etag is None:
            return None
        assert parent.children is not None
        node = self.table.new(Kind.DIR, name, parent, mode=0o555, etag=archive.etag,
                              size=archive.size, pack_dir=PackDir.TARZST,
                              mtime_ns=archive.mtime_ns)
        parent.children[name] = node
        return node

    async def readdir(self, directory: Node) -> list[tuple[str, Node]]:
        children = await self.ns.children(directory)
        return sorted(children.items())

    async def readlink(self, node: Node) -> str:
        if node.kind is not Kind.LINK or node.target is None:
            raise InvalidArgument(f"{node.describe()} is not a symlink")
        return node.target

    # -- changes -------------------------------------------------------------------------------

    async def _absent(self, parent: Node, name: str) -> None:
        if await self.ns.lookup(parent, name) is not None:
            raise Exists(f"{parent.describe()}/{name}".lstrip("/"))

    async def create(self, parent: Node, name: str, mode: int, flags: int,
                     uid: int, gid: int) -> tuple[Node, int]:
        """A new file, open for writing; returns it and its handle number."""
        node, handle = await self._create(parent, name, mode, flags, uid, gid)
        return node, self.files.add(handle)

    async def _create(self, parent: Node, name: str, mode: int, flags: int,
                      uid: int, gid: int) -> tuple[Node, WriteHandle]:
        self.access.check_writable(parent)
        with self.ns.reserving((parent, name)):
            await self._absent(parent, name)
            self.keys.check_new_entry(parent, name, Kind.FILE)
            node = self.table.new(Kind.FILE, name, parent, mode=mode & 0o7777, uid=uid,
                                  gid=gid, mtime_ns=now_ns(), source="local",
                                  attrs_from="local")
            node.staging = await self.writes.new_staging(node, copy=False)
            self.entries.attach(parent, node)
        handle = await self.writes.open(node, truncate=False,
                                        readable=(flags & os.O_ACCMODE) == os.O_RDWR)
        handle.dirty = node.staging.dirty = True  # an empty file is still a file to store
        return node, handle

    async def mkdir(self, parent: Node, name: str, mode: int, uid: int, gid: int) -> Node:
        self.access.check_writable(parent)
        with self.ns.reserving((parent, name)):
            return await self._mkdir(parent, name, mode, uid, gid)

    async def _mkdir(self, parent: Node, name: str, mode: int, uid: int, gid: int) -> Node:
        await self._absent(parent, name)
        self.keys.check_new_entry(parent, name, Kind.DIR)
        node = self.table.new(Kind.DIR, name, parent, mode=mode & 0o7777, uid=uid, gid=gid,
                              mtime_ns=now_ns(), children={}, listed_at=self.ns.clock(),
                              attrs_from="local")
        building = self.layers.building_of(parent)
        if building is not None or packbuild.is_pack_name(name):
            node.listed_at = float("inf")  # lives here only until sealed: never listed
            if building is None:
                await self.layers.build_start(node)
            self.entries.attach(parent, node)
            if building is not None:
                await self.layers.build_put(building, node)
            return node
        marker = self.ns.dir_prefix(parent) + name + "/"
        await self.uploads.submit(None, "put", marker,
                                    meta=attrs_mod.object_metadata(node))
        self.entries.attach(parent, node)
        return node

    async def symlink(self, parent: Node, name: str, target: str, uid: int, gid: int) -> Node:
        self.access.check_writable(parent)
        with self.ns.reserving((parent, name)):
            return await self._symlink(parent, name, target, uid, gid)

    async def _symlink(self, parent: Node, name: str, target: str, uid: int, gid: int) -> Node:
        await self._absent(parent, name)
        self.keys.check_new_entry(parent, name, Kind.LINK)
        node = self.table.new(Kind.LINK, name, parent, mode=0o777, uid=uid, gid=gid,
                              mtime_ns=now_ns(), target=target, size=len(target.encode()),
                              source="local", attrs_from="local")
        building = self.layers.building_of(parent)
        if building is not None:
            self.entries.attach(parent, node)
            await self.layers.build_put(building, node)
            return node
        meta = attrs_mod.object_metadata(node)
        meta["cachefs-body"] = target
        await self.uploads.submit(node, "put", self.ns.key(node), meta=meta)
        self.entries.attach(parent, node)
        return node

    async def unlink(self, parent: Node, name: str) -> None:
        self.access.check_writable(parent)
        node = await self.ns.lookup(parent, name)
        if node is None:
            raise NotFound(name)
        if node.kind is Kind.DIR:
            raise IsADirectory(name)
        building = self.layers.building_of(parent)
        if building is not None:
            await self.layers.build_remove(building, node)
        else:
            await self.uploads.submit(None, "delete", self.ns.key(node))
        self.entries.remove(parent, name, node)

    async def rmdir(self, parent: Node, name: str) -> None:
        self.access.check_writable(parent)
        node = await self.ns.lookup(parent, name)
        if node is None:
            raise NotFound(name)
        if node.kind is not Kind.DIR:
            raise NotADirectory(name)
        if await self.ns.children(node):
            raise NotEmpty(name)
        if node.pack_dir is PackDir.BUILDING:  # an empty NAME.pack: nothing stored or sealed
            dropped = self.layers.building.pop(node.ino, None)
            if dropped is not None and dropped.log is not None:
                await trio.to_thread.run_sync(dropped.log.discard, limiter=self.limits.disk)
            self.entries.remove(parent, name, node)
            return
        building = self.layers.building_of(parent)
        if building is not None:
            await self.layers.build_remove(building, node)
            self.entries.remove(parent, name, node)
            return
        prefix = self.ns.dir_prefix(node)
        await self.uploads.submit(None, "delete", manifest_key(self.ns.prefix, node.path()))
        await self.uploads.submit(None, "delete", prefix)
        self.metadata.drop(node.path())
        self.entries.remove(parent, name, node)

    async def rename(self, old_parent: Node, old_name: str, new_parent: Node, new_name: str,
                     noreplace: bool = False) -> None:
        self.access.check_writable(old_parent, new_parent)
        await self.keys.check_rename_keys(old_parent, old_name, new_parent, new_name)
        node = await self.ns.lookup(old_parent, old_name)
        if node is None:
            raise NotFound(old_name)
        if new_parent is node or node in new_parent.ancestors():
            raise InvalidArgument("cannot move a directory into itself")
        self.layers.check_same_layer(old_parent, new_parent, node)
        building = self.layers.building_of(node)
        if building is not None:
            await self._rename_in_build(building, old_parent, old_name, node, new_parent,
                                        new_name, noreplace)
            return
        # Listings of both entries and of the moving tree wait for the end (they would see
        # the store half moved), and no manifest is written under a path that is changing.
        async with self.manifests.paused():
            with self.ns.moving(node, (old_parent, old_name), (new_parent, new_name)):
                await self._rename_store(old_parent, old_name, node, new_parent, new_name,
                                         noreplace)

    async def _rename_store(self, old_parent: Node, old_name: str, node: Node,
                            new_parent: Node, new_name: str, noreplace: bool) -> None:
        target = await self._rename_target(node, new_parent, new_name, noreplace)
        if target is node:
            return
        if target is not None and target.kind is Kind.DIR:
            await self.rmdir(new_parent, new_name)
        new_base = self.ns.dir_prefix(new_parent) + new_name
        if node.kind is Kind.DIR:
            await self._rename_dir(node, new_base)
        else:
            await self._rename_file(node, new_base)
        if target is not None and target.kind is not Kind.DIR:
            self.entries.remove(new_parent, new_name, target)
        old_path = node.path()
        self._move_node(old_parent, old_name, node, new_parent, new_name)
        if node.kind is Kind.DIR:
            self.metadata.drop(old_path)
            self.manifests.moved(old_path, node.path())
            self.entries.mark_tree(node)

    async def _rename_target(self, node: Node, new_parent: Node, new_name: str,
                             noreplace: bool) -> Node | None:
        """What a rename of ``node`` would replace (``node`` itself: nothing to do), after
        POSIX's checks: a directory only replaces an empty directory, a file only a file."""
        target = await self.ns.lookup(new_parent, new_name)
        if target is None or target is node:
            return target
        if noreplace:
            raise Exists(new_name)
        if target.kind is Kind.DIR:
            if node.kind is not Kind.DIR:
                raise IsADirectory(new_name)
            if await self.ns.children(target):
                raise NotEmpty(new_name)
        elif node.kind is Kind.DIR:
            raise NotADirectory(new_name)
        return target

    async def _rename_in_build(self, b: Building, old_parent: Node, old_name: str, node: Node,
                               new_parent: Node, new_name: str, noreplace: bool) -> None:
        """A rename inside a NAME.pack being built: only the tree here and its log change."""
        target = await self._rename_target(node, new_parent, new_name, noreplace)
        if target is node:
            return
        if target is not None:
            await self.layers.build_remove(b, target)
            self.entries.remove(new_parent, new_name, target)
        old_rel = self.layers.rel(b, node)
        self._move_node(old_parent, old_name, node, new_parent, new_name)
        await self.layers.build_moved(b, node, old_rel)

    def _move_node(self, old_parent: Node, old_name: str, node: Node, new_parent: Node,
                   new_name: str) -> None:
        self.entries.detach_name(old_parent, old_name, node)
        node.name, node.parent = new_name, new_parent
        node.ctime_ns = now_ns()
        self.entries.attach(new_parent, node)

    def _move_ops(self, node: Node, new_key: str) -> list[tuple[str, str, dict[str, Any]]]:
        """Store operations that move one file or symlink to ``new_key``."""
        old_key = self.ns.key(node)
        if node.etag is not None and node.pending == 0:
            return [("move", new_key, {"src": old_key})]
        if node.kind is Kind.LINK:
            meta = attrs_mod.object_metadata(node)
            meta["cachefs-body"] = node.target or ""
            return [("put", new_key, {"meta": meta}), ("delete", old_key, {})]
        if node.digest is None:
            raise CacheFSError(f"{node.describe()}: content is not available to move")
        meta = attrs_mod.object_metadata(node, node.digest)
        return [("put", new_key, {"digest": node.digest, "size": node.size, "meta": meta}),
                ("delete", old_key, {})]

    async def _rename_file(self, node: Node, new_key: str) -> None:
        if node.staging is not None and node.staging.dirty:
            await self.writes.commit(node)
        items = [(node if kind != "delete" else None, kind, key, kw)
                 for kind, key, kw in self._move_ops(node, new_key)]
        await self.uploads.run_all(items)

    async def _rename_dir(self, node: Node, new_base: str) -> None:
        """Move every key below the directory. Not atomic: see docs/SEMANTICS.md."""
        old_prefix = self.ns.dir_prefix(node)
        new_prefix = new_base + "/"
        listing = await trio.to_thread.run_sync(self.ns.store.list_all, old_prefix, None,
                                                limiter=self.limits.s3)
        items: list[Item] = []
        local: dict[str, Node] = {}
        stack = [node]
        while stack:
            n = stack.pop()
            for child in (n.children or {}).values():
                if child.kind is Kind.DIR:
                    stack.append(child)
                elif child.etag is None or child.pending:
                    local[self.ns.key(child)] = child
        for obj in listing.objects:
            if obj.key in local or self.uploads.wb.pending_kind(obj.key) == "delete":
                continue
            new_key = new_prefix + obj.key[len(old_prefix):]
            if obj.key.endswith("/"):
                # Directory markers are re-created, not copied: some stores (SeaweedFS) keep
                # directories as real directories and refuse to copy them.
                items.append((None, "put", new_key, {"meta": {}}))
                items.append((None, "delete", obj.key, {}))
                continue
            items.append((self.ns.find_key(obj.key), "move", new_key, {"src": obj.key}))
        for key, child in local.items():
            for kind, k, kw in self._move_ops(child, new_prefix + key[len(old_prefix):]):
                items.append((child if kind != "delete" else None, kind, k, kw))
        if not any(k == new_prefix for _, _, k, _ in items):
            items.append((None, "put", new_prefix, {"meta": attrs_mod.object_metadata(node)}))
        try:
            await self.uploads.run_all(items)
        except CacheFSError:
            # Partly moved: show the store's truth on both sides.
            self.ns.invalidate(node)
            raise

    async def mknod(self, parent: Node, name: str, mode: int, uid: int, gid: int) -> Node:
        """mknod(2): a regular file is created empty; FIFOs, sockets and devices have no
        object to be in a store, so they are refused (EPERM), after the name's own checks."""
        self.access.check_writable(parent)
        await self._absent(parent, name)
        self.keys.check_new_entry(parent, name, Kind.FILE)
        if not stat.S_ISREG(mode):
            raise NotPermitted(f"{name}: only regular files, directories and symlinks can be "
                               "stored (not FIFOs, sockets or devices)")
        node, handle = await self._create(parent, name, mode, os.O_WRONLY, uid, gid)
        try:
            await self.writes.flush(handle)
        finally:
            await self.writes.release(handle)
        return node
