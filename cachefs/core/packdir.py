"""The filesystem core, pack-building directories (see pack/build.py and state.py).

``mkdir MOUNT/.../NAME.pack`` starts one. What is written below it stays in the blob tier (each
closed file logged, so a crash loses nothing) and is never uploaded file by file. It is sealed:

- when it has been idle for ``pack_idle`` seconds (no change, no file open for writing below it);
- at ``cachefs sync`` and at unmount, whatever its state (a file still open is taken as it is);
- at the next mount with the same cache dir, if the daemon died before it was sealed.

Sealing writes the tree as one pack into the blob tier and hands that blob to write-back as the
object ``NAME.pack``; from then on the directory is a read-only pack like any other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path

import trio

from ..errors import CacheFSError, CrossDevice
from ..nodes import NEVER, Kind, Node
from ..pack import build as packbuild
from ..pack.build import BuildLog, Item
from ..remote.writeback import Op
from ..tier.blobs import digest_path
from .state import CoreState

log = logging.getLogger(__name__)

#: Node.pack of a directory being written as a pack, and while it is turned into one
BUILDING = "building"
SEALING = "sealing"
PACK_META = {"cachefs-pack": "1"}


@dataclasses.dataclass(eq=False)
class Building:
    node: Node
    #: None for an overlay: its changes live for this mount only, until `pack --from-mount`
    log: BuildLog | None
    changed: float
    #: a writable layer over a mounted pack (--subtree): never sealed by itself
    overlay: bool = False
    #: digests pinned in the blob tier for files below, by inode (released once sealed)
    pins: dict[int, str] = dataclasses.field(default_factory=dict)


class PackBuildOps(CoreState):
    building: dict[int, Building]
    pack_idle: float
    build_dir: Path
    #: the mount root is a pack (--subtree) that may get a writable layer on top
    overlay_root: bool

    # -- where a node belongs ------------------------------------------------------------------

    def building_of(self, node: Node) -> Building | None:
        """The building directory ``node`` is in (or is), if any."""
        for n in (node, *node.ancestors()):
            if n.pack == BUILDING:
                return self.building.get(n.ino)
        return None

    @staticmethod
    def _rel(b: Building, node: Node) -> str:
        top = b.node.path()
        return node.path()[len(top) + 1:] if top else node.path()

    def _item(self, b: Building, node: Node) -> Item:
        kind = node.kind.letter
        return Item(self._rel(b, node), kind, node.mode, node.mtime_ns,
                    node.digest or "" if kind == "f" else "", node.size if kind == "f" else 0,
                    node.target or "" if kind == "l" else "")

    def _changed(self, b: Building) -> None:
        b.changed = trio.current_time()

    # -- changes below a building directory (called by fswrite/fstree instead of the store) ----

    async def build_start(self, node: Node) -> None:
        """``node`` was just made by mkdir NAME.pack: log it and start collecting."""
        path = BuildLog.path_for(self.build_dir, self.ns.key(node))
        blog = await trio.to_thread.run_sync(BuildLog, path, self.ns.key(node),
                                             limiter=self.limits.disk)
        node.pack = BUILDING
        node.listed_at = float("inf")  # its contents live here only: never listed
        self.building[node.ino] = Building(node, blog, trio.current_time())
        log.info("%s: building a pack (sealed when idle %.0fs, at sync or unmount)",
                 node.describe(), self.pack_idle)

    async def build_put(self, b: Building, node: Node) -> None:
        """A file closed, or a directory/symlink made or changed, below ``b``: log it."""
        if node.kind is Kind.FILE and node.digest and self.blobs.has(node.digest):
            old = b.pins.get(node.ino)  # (a file still read from a pack has no blob of its own)
            if old != node.digest:
                self.blobs.pin(node.digest)
                b.pins[node.ino] = node.digest
                if old:
                    self.blobs.unpin(old)
        if b.log is not None:
            await trio.to_thread.run_sync(b.log.put, self._item(b, node),
                                          limiter=self.limits.disk)
        self._changed(b)

    async def build_remove(self, b: Building, node: Node, rel: str | None = None) -> None:
        old = b.pins.pop(node.ino, None)
        if old:
            self.blobs.unpin(old)
        if b.log is not None:
            await trio.to_thread.run_sync(b.log.remove, rel or self._rel(b, node),
                                          limiter=self.limits.disk)
        self._changed(b)

    async def build_moved(self, b: Building, node: Node, old_rel: str) -> None:
        """``node`` (and what is below it) was renamed within ``b``."""
        self._changed(b)
        blog = b.log
        if blog is None:
            return
        items = []
        stack = [node]
        while stack:
            n = stack.pop()
            items.append(self._item(b, n))
            stack.extend((n.children or {}).values())

        def write() -> None:
            blog.remove(old_rel, durable=False)
            for item in items:
                blog.put(item, durable=False)
            os.fdatasync(blog.fd)

        await trio.to_thread.run_sync(write, limiter=self.limits.disk)

    def check_same_layer(self, *nodes: Node) -> None:
        """A rename may not cross into or out of a building directory (nor move one)."""
        layers = {id(self.building_of(n)) for n in nodes}
        if len(layers) > 1:
            raise CrossDevice("cannot move files into or out of a NAME.pack directory being "
                              "built (copy them instead)")

    # -- sealing -------------------------------------------------------------------------------

    def _writers_below(self, b: Building) -> int:
        return sum(1 for n in self.table.nodes.values()
                   if n.staging is not None and n.staging.writers > 0 and
                   self.building_of(n) is b)

    async def seal_idle(self) -> None:
        """Seal the building directories nobody has touched for ``pack_idle`` seconds."""
        if self.pack_idle <= 0:
            return
        now = trio.current_time()
        for b in list(self.building.values()):
            if not b.overlay and now - b.changed >= self.pack_idle and \
                    not self._writers_below(b):
                try:
                    await self.seal(b)
                except CacheFSError as e:
                    log.error("%s: not sealed: %s (tried again later)", b.node.describe(), e)
                    self._changed(b)

    async def seal_all(self) -> list[str]:
        """Seal every building directory now (sync, unmount); returns the errors."""
        errors = []
        for b in list(self.building.values()):
            if b.overlay:
                continue
            try:
                await self.seal(b)
            except CacheFSError as e:
                errors.append(f"{b.node.describe()}: {e}")
        return errors

    async def seal(self, b: Building) -> Op | None:
        """Write the tree below ``b`` as one pack and queue its upload as ``NAME.pack``."""
        node = b.node
        if node.pack != BUILDING or self.building.get(node.ino) is not b:
            return None
        for n in self.table.nodes.values():  # files still open: take what was written so far
            if n.staging is not None and n.staging.dirty and self.building_of(n) is b:
                await self._commit(n, wait=False)
        node.pack = SEALING  # read-only from here on
        try:
            op, _ = await self._seal_items(self.ns.key(node), packbuild.items_of(node), node)
        except CacheFSError:
            node.pack = BUILDING
            raise
        del self.building[node.ino]
        if b.log is not None:
            await trio.to_thread.run_sync(b.log.discard, limiter=self.limits.disk)
        for digest in b.pins.values():
            self.blobs.unpin(digest)
        return op

    async def _seal_items(self, key: str, items: list[Item],
                          node: Node | None) -> tuple[Op, dict[str, int]]:
        out = self.blobs.new_temp_path("packbuild")
        try:
            summary = await trio.to_thread.run_sync(packbuild.write_pack, items,
                                                    self.blobs.path, out,
                                                    limiter=self.limits.cpu)
            digest, size, crcs = await trio.to_thread.run_sync(digest_path, out,
                                                               limiter=self.limits.cpu)
        except (OSError, ValueError) as e:
            await self.blobs.remove_file(out)
            self.stats.error("pack_seal_failed")
            raise CacheFSError(f"pack {key} not written: {e}") from e
        await self.blobs.commit(out, digest, size, crcs, durable=True)
        # The digest in the metadata lets a retried upload recognise its own pack (packs are
        # written only if the key is absent: remote/writeback.py _put_pack).
        op = await self._submit_and_wait(node, "put", key, digest=digest, size=size,
                                         meta={**PACK_META, "cachefs-sha256": digest},
                                         wait=False)
        self.stats.count("packs_sealed")
        summary["bytes_stored"] = size
        log.info("%s: sealed %d files into one pack (%d bytes, %d new frames, %d reused); "
                 "uploading", key, summary["files"], size, summary["frames_new"],
                 summary["frames_reused"])
        return op, summary

    def pack_uploaded(self, node: Node, op: Op) -> None:
        """The sealed pack is in the store: show the directory from its table from now on."""
        assert op.info is not None and node.parent is not None
        old = node.children or {}
        node.pack, node.etag, node.size = True, op.info.etag, op.size
        node.mode = 0o555  # read-only from now on, like every pack
        node.children, node.listed_at = None, NEVER
        for name, child in old.items():
            self.ns.notifier.entry_removed(node.ino, name, child.ino)
            self.table.detach(child)
        self.manifests.mark(node.parent.path(), node.name)
        self.metadata.mark(node.parent)

    # -- a writable layer over a mounted pack ----------------------------------------------------

    def open_overlay(self, node: Node) -> None:
        """A change below the pack mounted with --subtree: from now on the pack's tree is a
        local layer where changes stay until `cachefs pack --from-mount` saves it."""
        root = self.table.root
        if not self.overlay_root or root.pack is not True or root.ino in self.building:
            return
        if node is not root and root not in node.ancestors():
            return
        root.pack = BUILDING
        self.building[root.ino] = Building(root, None, trio.current_time(), overlay=True)
        log.info("changes to the mounted pack are kept in a local layer (save them with "
                 "cachefs pack --from-mount)")

    async def pack_file_blob(self, node: Node) -> str:
        """The content of a file still read from its pack, as one blob (before a change)."""
        from ..pack.mounted import PackFileReader

        assert self.packs is not None
        reader = PackFileReader(self.packs, node.pack)
        temp = self.blobs.new_temp_path("copyup")
        disk = self.limits.disk
        try:
            f = await trio.to_thread.run_sync(open, temp, "wb", limiter=disk)
            try:
                offset = 0
                while offset < node.size:
                    data = await reader.read(offset, 1 << 20)
                    if not data:
                        raise CacheFSError(f"{node.describe()}: pack file ended early")
                    await trio.to_thread.run_sync(f.write, data, limiter=disk)
                    offset += len(data)
            finally:
                with trio.CancelScope(shield=True):  # flushes: a disk write
                    await trio.to_thread.run_sync(f.close, limiter=disk)
            digest, size, crcs = await trio.to_thread.run_sync(digest_path, temp,
                                                               limiter=self.limits.cpu)
        finally:
            reader.close()
        if node.digest and digest != node.digest:
            await self.blobs.remove_file(temp)
            raise CacheFSError(f"{node.describe()}: content does not match the pack's table")
        await self.blobs.commit(temp, digest, size, crcs)
        return digest

    async def save_as(self, node: Node, key: str) -> dict[str, int]:
        """Write the tree shown at ``node`` (a pack, with its layer of changes if any) as a new
        pack ``key``: only new content is uploaded; unchanged files point at stored frames."""
        if node.pack not in (True, BUILDING):
            raise CacheFSError(f"{node.describe()} is not a mounted pack")
        await self.ns.children(node)
        b = self.building.get(node.ino)
        if b is not None:
            for n in list(self.table.nodes.values()):  # take files still open as they are
                if n.staging is not None and n.staging.dirty and self.building_of(n) is b:
                    await self._commit(n, wait=False)
        await self._load_tree(node)
        op, summary = await self._seal_items(key, packbuild.items_of(node), None)
        while not op.done.is_set():
            await self.wb.wait(op)
        if op.info is None:
            raise CacheFSError(f"{key}: superseded while it was being stored")
        await self.manifests.add_pack(key, op.info)
        return summary

    async def _load_tree(self, node: Node) -> None:
        """Make sure every directory below ``node`` is loaded (pack trees load at once)."""
        stack = [node]
        while stack:
            n = stack.pop()
            children = await self.ns.children(n)
            stack.extend(c for c in children.values() if c.kind is Kind.DIR)

    async def recover_builds(self) -> None:
        """At start: seal what a previous daemon logged but did not seal (it died)."""
        disk = self.limits.disk
        logs = await trio.to_thread.run_sync(lambda: sorted(self.build_dir.glob("*.log")),
                                             limiter=disk)
        for path in logs:
            key, items = await trio.to_thread.run_sync(BuildLog.replay, path, limiter=disk)
            if not key:
                await self.blobs.remove_file(path)
                continue
            missing = {i.path for i in items if i.kind == "f" and i.size and
                       not self.blobs.has(i.digest)}
            if missing:
                log.error("%s: %d file(s) of an unsealed pack are gone from the cache dir "
                          "(%s ...): sealing the rest", key, len(missing), min(missing))
                items = [i for i in items if i.path not in missing]
            try:
                op, _ = await self._seal_items(key, items, None)
            except CacheFSError as e:
                log.error("%s: unsealed pack from the last run could not be sealed: %s", key, e)
                continue
            await self.blobs.remove_file(path)
            log.warning("%s: sealed the pack a previous mount was building when it stopped "
                        "(%d entries); uploading", key, len(items))
            await self._register_when_stored(op)

    async def _register_when_stored(self, op: Op) -> None:
        """Once a recovered pack is stored, list it in its directory's manifest (no node of
        this mount shows it yet, so the manifest writer cannot)."""
        while not op.done.is_set():
            with contextlib.suppress(CacheFSError):
                await self.wb.wait(op)
            if not op.done.is_set():
                await trio.sleep(5)
        if op.info is None or op.superseded:
            return
        info = op.info
        try:
            await self.manifests.add_pack(op.key, info)
        except CacheFSError as e:
            log.error("%s: stored, but not listed in its directory's manifest: %s", op.key, e)
