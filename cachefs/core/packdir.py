"""The filesystem core, pack layers: which NAME.pack directory being built a node is in, and the
log of what is written below it (see pack/build.py; sealing is in seal.py).

``mkdir MOUNT/.../NAME.pack`` starts one. What is written below it stays in the blob tier (each
closed file logged, so a crash loses nothing) and is never uploaded file by file. It is sealed:

- when it has been idle for ``pack_idle`` seconds (no change, no file open for writing below it);
- at ``cachefs sync`` and at unmount, whatever its state (a file still open is taken as it is);
- at the next mount with the same cache dir, if the daemon died before it was sealed.

Sealing writes the tree as one pack into the blob tier and hands that blob to write-back as the
object ``NAME.pack``; from then on the directory is a read-only pack like any other.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import trio

from ..errors import CrossDevice
from ..nodes import InodeTable, Kind, Node, PackDir
from ..pack.build import BuildLog, Item
from ..remote.namespace import Namespace
from ..tier.blobs import BlobTier
from .options import Limiters, Options

log = logging.getLogger(__name__)

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


class Layers:
    def __init__(self, *, ns: Namespace, table: InodeTable, blobs: BlobTier, limits: Limiters,
                 opts: Options, build_dir: Path, overlay_root: bool = False) -> None:
        self.ns = ns
        self.table = table
        self.blobs = blobs
        self.limits = limits
        self.opts = opts
        self.build_dir = build_dir
        build_dir.mkdir(mode=0o700, exist_ok=True)
        #: the mount root is a pack (--subtree) that may get a writable layer on top
        self.overlay_root = overlay_root
        #: the directories being built, by inode
        self.building: dict[int, Building] = {}

    # -- where a node belongs ------------------------------------------------------------------

    def building_of(self, node: Node) -> Building | None:
        """The building directory ``node`` is in (or is), if any."""
        for n in (node, *node.ancestors()):
            if n.pack_dir is PackDir.BUILDING:
                return self.building.get(n.ino)
        return None

    @staticmethod
    def rel(b: Building, node: Node) -> str:
        top = b.node.path()
        return node.path()[len(top) + 1:] if top else node.path()

    def _item(self, b: Building, node: Node) -> Item:
        kind = node.kind.letter
        return Item(self.rel(b, node), kind, node.mode, node.mtime_ns,
                    node.digest or "" if kind == "f" else "", node.size if kind == "f" else 0,
                    node.target or "" if kind == "l" else "")

    @staticmethod
    def _changed(b: Building) -> None:
        b.changed = trio.current_time()

    # -- changes below a building directory (logged here instead of sent to the store) --------

    async def build_start(self, node: Node) -> None:
        """``node`` was just made by mkdir NAME.pack: log it and start collecting."""
        path = BuildLog.path_for(self.build_dir, self.ns.key(node))
        blog = await trio.to_thread.run_sync(BuildLog, path, self.ns.key(node),
                                             limiter=self.limits.disk)
        node.pack_dir = PackDir.BUILDING
        node.listed_at = float("inf")  # its contents live here only: never listed
        self.building[node.ino] = Building(node, blog, trio.current_time())
        log.info("%s: building a pack (sealed when idle %.0fs, at sync or unmount)",
                 node.describe(), self.opts.pack_idle)

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
            await trio.to_thread.run_sync(b.log.remove, rel or self.rel(b, node),
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

    # -- a writable layer over a mounted pack ----------------------------------------------------

    def open_overlay(self, node: Node) -> None:
        """A change below the pack mounted with --subtree: from now on the pack's tree is a
        local layer where changes stay until `cachefs pack --from-mount` saves it."""
        root = self.table.root
        if not self.overlay_root or root.pack_dir is not PackDir.PACK or \
                root.ino in self.building:
            return
        if node is not root and root not in node.ancestors():
            return
        root.pack_dir = PackDir.BUILDING
        self.building[root.ino] = Building(root, None, trio.current_time(), overlay=True)
        log.info("changes to the mounted pack are kept in a local layer (save them with "
                 "cachefs pack --from-mount)")

    def writers_below(self, b: Building) -> int:
        return sum(1 for n in self.table.nodes.values()
                   if n.staging is not None and n.staging.writers > 0 and
                   self.building_of(n) is b)

    def open_below(self, b: Building) -> list[Node]:
        """Files below ``b`` with unsaved changes (still open for writing)."""
        return [n for n in list(self.table.nodes.values())
                if n.staging is not None and n.staging.dirty and self.building_of(n) is b]


def in_pack(node: Node) -> bool:
    """Inside a read-only pack (a NAME.pack being built, or a layer over a mounted pack, is
    writable: the nearest pack-like directory decides)."""
    for n in (node, *node.ancestors()):
        if n.pack_dir is PackDir.BUILDING:
            return False
        if n.kind is Kind.DIR and n.pack_dir is not None:
            return True
    return False
