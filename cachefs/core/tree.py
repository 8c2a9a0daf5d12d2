"""The filesystem core, the tree: create, mkdir, symlink, unlink, rmdir, rename (see state.py)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
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
)
from ..nodes import Kind, Node, now_ns
from ..pack import build as packbuild
from ..remote.manifest import manifest_key
from .keys import KeyChecks
from .packdir import BUILDING, Building

log = logging.getLogger(__name__)


class TreeOps(KeyChecks):
    async def _absent(self, parent: Node, name: str) -> None:
        if await self.ns.lookup(parent, name) is not None:
            raise Exists(f"{parent.describe()}/{name}".lstrip("/"))

    def _attach(self, parent: Node, node: Node) -> None:
        assert parent.children is not None
        replaced = parent.children.get(node.name)
        parent.children[node.name] = node
        if replaced is not None and replaced is not node:  # one node per name, always
            self.table.detach(replaced)
            self.ns.notifier.entry_removed(parent.ino, node.name, replaced.ino)
        self._note(parent, node.name)
        parent.touch()

    def _note(self, parent: Node, name: str) -> None:
        """``parent``'s entry ``name`` changed: its manifest and the listing cache follow
        (not below a NAME.pack being built: that tree is only ever stored as the pack), and
        no listing that began earlier may undo it."""
        self.ns.local_change(parent, name)
        if self.building_of(parent) is None:
            self.manifests.mark(parent.path(), name)
            self.metadata.mark(parent)

    async def create(self, parent: Node, name: str, mode: int, flags: int,
                     uid: int, gid: int) -> tuple[Node, int]:
        self._check_writable(parent)
        with self.ns.reserving((parent, name)):
            await self._absent(parent, name)
            self.check_new_entry(parent, name, Kind.FILE)
            node = self.table.new(Kind.FILE, name, parent, mode=mode & 0o7777, uid=uid,
                                  gid=gid, mtime_ns=now_ns(), source="local",
                                  attrs_from="local")
            node.staging = await self._new_staging(node, copy=False)
            self._attach(parent, node)
        handle = await self._open_write(node, truncate=False,
                                        readable=(flags & os.O_ACCMODE) == os.O_RDWR)
        handle.dirty = node.staging.dirty = True  # an empty file is still a file to store
        return node, self._add_handle(handle)

    async def mkdir(self, parent: Node, name: str, mode: int, uid: int, gid: int) -> Node:
        self._check_writable(parent)
        with self.ns.reserving((parent, name)):
            return await self._mkdir(parent, name, mode, uid, gid)

    async def _mkdir(self, parent: Node, name: str, mode: int, uid: int, gid: int) -> Node:
        await self._absent(parent, name)
        self.check_new_entry(parent, name, Kind.DIR)
        node = self.table.new(Kind.DIR, name, parent, mode=mode & 0o7777, uid=uid, gid=gid,
                              mtime_ns=now_ns(), children={}, listed_at=self.ns.clock(),
                              attrs_from="local")
        building = self.building_of(parent)
        if building is not None or packbuild.is_pack_name(name):
            node.listed_at = float("inf")  # lives here only until sealed: never listed
            if building is None:
                await self.build_start(node)
            self._attach(parent, node)
            if building is not None:
                await self.build_put(building, node)
            return node
        marker = self.ns.dir_prefix(parent) + name + "/"
        await self._submit_and_wait(None, "put", marker,
                                    meta=attrs_mod.object_metadata(node))
        self._attach(parent, node)
        return node

    async def symlink(self, parent: Node, name: str, target: str, uid: int, gid: int) -> Node:
        self._check_writable(parent)
        with self.ns.reserving((parent, name)):
            return await self._symlink(parent, name, target, uid, gid)

    async def _symlink(self, parent: Node, name: str, target: str, uid: int, gid: int) -> Node:
        await self._absent(parent, name)
        self.check_new_entry(parent, name, Kind.LINK)
        node = self.table.new(Kind.LINK, name, parent, mode=0o777, uid=uid, gid=gid,
                              mtime_ns=now_ns(), target=target, size=len(target.encode()),
                              source="local", attrs_from="local")
        building = self.building_of(parent)
        if building is not None:
            self._attach(parent, node)
            await self.build_put(building, node)
            return node
        meta = attrs_mod.object_metadata(node)
        meta["cachefs-body"] = target
        await self._submit_and_wait(node, "put", self.ns.key(node), meta=meta)
        self._attach(parent, node)
        return node

    async def unlink(self, parent: Node, name: str) -> None:
        self._check_writable(parent)
        node = await self.ns.lookup(parent, name)
        if node is None:
            raise NotFound(name)
        if node.kind is Kind.DIR:
            raise IsADirectory(name)
        building = self.building_of(parent)
        if building is not None:
            await self.build_remove(building, node)
        else:
            await self._submit_and_wait(None, "delete", self.ns.key(node))
        self._remove(parent, name, node)

    def _remove(self, parent: Node, name: str, node: Node) -> None:
        assert parent.children is not None
        if parent.children.get(name) is node:
            del parent.children[name]
        self.table.detach(node)
        self._note(parent, name)
        parent.touch()

    async def rmdir(self, parent: Node, name: str) -> None:
        self._check_writable(parent)
        node = await self.ns.lookup(parent, name)
        if node is None:
            raise NotFound(name)
        if node.kind is not Kind.DIR:
            raise NotADirectory(name)
        if await self.ns.children(node):
            raise NotEmpty(name)
        if node.pack == BUILDING:  # an empty NAME.pack: nothing was stored, nothing to seal
            dropped = self.building.pop(node.ino, None)
            if dropped is not None and dropped.log is not None:
                await trio.to_thread.run_sync(dropped.log.discard, limiter=self.limits.disk)
            self._remove(parent, name, node)
            return
        building = self.building_of(parent)
        if building is not None:
            await self.build_remove(building, node)
            self._remove(parent, name, node)
            return
        prefix = self.ns.dir_prefix(node)
        await self._submit_and_wait(None, "delete", manifest_key(self.ns.prefix, node.path()))
        await self._submit_and_wait(None, "delete", prefix)
        self.metadata.drop(node.path())
        self._remove(parent, name, node)

    async def rename(self, old_parent: Node, old_name: str, new_parent: Node, new_name: str,
                     noreplace: bool = False) -> None:
        self._check_writable(old_parent, new_parent)
        await self.check_rename_keys(old_parent, old_name, new_parent, new_name)
        node = await self.ns.lookup(old_parent, old_name)
        if node is None:
            raise NotFound(old_name)
        if new_parent is node or node in new_parent.ancestors():
            raise InvalidArgument("cannot move a directory into itself")
        self.check_same_layer(old_parent, new_parent, node)
        building = self.building_of(node)
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
            self._remove(new_parent, new_name, target)
        old_path = node.path()
        self._move_node(old_parent, old_name, node, new_parent, new_name)
        if node.kind is Kind.DIR:
            self.metadata.drop(old_path)
            self.manifests.moved(old_path, node.path())
            self._mark_tree(node)

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
            await self.build_remove(b, target)
            self._remove(new_parent, new_name, target)
        old_rel = self._rel(b, node)
        self._move_node(old_parent, old_name, node, new_parent, new_name)
        await self.build_moved(b, node, old_rel)

    def _move_node(self, old_parent: Node, old_name: str, node: Node, new_parent: Node,
                   new_name: str) -> None:
        assert old_parent.children is not None and new_parent.children is not None
        if old_parent.children.get(old_name) is node:
            del old_parent.children[old_name]
        self._note(old_parent, old_name)
        old_parent.touch()
        node.name, node.parent = new_name, new_parent
        node.ctime_ns = now_ns()
        self._attach(new_parent, node)

    def _mark_tree(self, node: Node) -> None:
        stack = [node]
        while stack:
            n = stack.pop()
            if n.children is not None:
                self.metadata.mark(n)
                stack.extend(c for c in n.children.values() if c.kind is Kind.DIR)

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

    async def _run_ops(self, items: Sequence[tuple[Node | None, str, str, dict[str, Any]]]) \
            -> None:
        ops = []
        for node, kind, key, kwargs in items:
            ops.append(await self._submit_and_wait(node, kind, key, wait=False, **kwargs))
        if self.opts.sync_writes:
            failures = []
            for op in ops:
                try:
                    await self.wb.wait(op)
                except CacheFSError as e:
                    failures.append(e)
            if failures:
                raise failures[0]

    async def _rename_file(self, node: Node, new_key: str) -> None:
        if node.staging is not None and node.staging.dirty:
            await self._commit(node)
        items = [(node if kind != "delete" else None, kind, key, kw)
                 for kind, key, kw in self._move_ops(node, new_key)]
        await self._run_ops(items)

    async def _rename_dir(self, node: Node, new_base: str) -> None:
        """Move every key below the directory. Not atomic: see docs/SEMANTICS.md."""
        old_prefix = self.ns.dir_prefix(node)
        new_prefix = new_base + "/"
        listing = await trio.to_thread.run_sync(self.ns.store.list_all, old_prefix, None,
                                                limiter=self.limits.s3)
        items: list[tuple[Node | None, str, str, dict[str, Any]]] = []
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
            if obj.key in local or self.wb.pending_kind(obj.key) == "delete":
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
            await self._run_ops(items)
        except CacheFSError:
            # Partly moved: show the store's truth on both sides.
            self.ns.invalidate(node)
            raise

    # -- maintenance ---------------------------------------------------------------------------
