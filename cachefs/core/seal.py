"""Sealing NAME.pack directories into one pack each, saving a mounted pack with its layer of
changes as a new pack, and sealing at start what a daemon that died had logged (packdir.py has
the layers themselves and their logs).
"""

from __future__ import annotations

import contextlib
import logging

import trio

from ..errors import CacheFSError
from ..metrics import Stats
from ..nodes import Kind, Node, PackDir
from ..pack import build as packbuild
from ..pack.build import BuildLog, Item
from ..remote.manifest import ManifestWriter
from ..remote.namespace import Namespace
from ..remote.writeback import Op
from ..tier.blobs import BlobTier, digest_path
from .options import Limiters, Options
from .packdir import Building, Layers
from .uploads import Uploads
from .write import Writes

log = logging.getLogger(__name__)

#: metadata of a pack object
PACK_META = {"cachefs-pack": "1"}


class Sealer:
    def __init__(self, *, layers: Layers, writes: Writes, uploads: Uploads, ns: Namespace,
                 blobs: BlobTier, manifests: ManifestWriter, stats: Stats, limits: Limiters,
                 opts: Options) -> None:
        self.layers = layers
        self.writes = writes
        self.uploads = uploads
        self.ns = ns
        self.blobs = blobs
        self.manifests = manifests
        self.stats = stats
        self.limits = limits
        self.opts = opts

    async def seal_idle(self) -> None:
        """Seal the building directories nobody has touched for ``pack_idle`` seconds."""
        idle = self.opts.pack_idle
        if idle <= 0:
            return
        now = trio.current_time()
        for b in list(self.layers.building.values()):
            if not b.overlay and now - b.changed >= idle and not self.layers.writers_below(b):
                try:
                    await self.seal(b)
                except CacheFSError as e:
                    log.error("%s: not sealed: %s (tried again later)", b.node.describe(), e)
                    b.changed = trio.current_time()

    async def seal_all(self) -> list[str]:
        """Seal every building directory now (sync, unmount); returns the errors."""
        errors = []
        for b in list(self.layers.building.values()):
            if b.overlay:
                continue
            try:
                await self.seal(b)
            except CacheFSError as e:
                errors.append(f"{b.node.describe()}: {e}")
        return errors

    async def _take_open_files(self, b: Building) -> None:
        """Files below ``b`` still open for writing: take what was written so far."""
        for n in self.layers.open_below(b):
            await self.writes.commit(n, wait=False)

    async def seal(self, b: Building) -> Op | None:
        """Write the tree below ``b`` as one pack and queue its upload as ``NAME.pack``."""
        node = b.node
        if node.pack_dir is not PackDir.BUILDING or self.layers.building.get(node.ino) is not b:
            return None
        await self._take_open_files(b)
        node.pack_dir = PackDir.SEALING  # read-only from here on
        try:
            op, _ = await self._seal_items(self.ns.key(node), packbuild.items_of(node), node)
        except CacheFSError:
            node.pack_dir = PackDir.BUILDING
            raise
        del self.layers.building[node.ino]
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
        op = await self.uploads.submit(node, "put", key, digest=digest, size=size,
                                       meta={**PACK_META, "cachefs-sha256": digest},
                                       wait=False)
        self.stats.count("packs_sealed")
        summary["bytes_stored"] = size
        log.info("%s: sealed %d files into one pack (%d bytes, %d new frames, %d reused); "
                 "uploading", key, summary["files"], size, summary["frames_new"],
                 summary["frames_reused"])
        return op, summary

    async def save_as(self, node: Node, key: str) -> dict[str, int]:
        """Write the tree shown at ``node`` (a pack, with its layer of changes if any) as a new
        pack ``key``: only new content is uploaded; unchanged files point at stored frames."""
        if node.pack_dir not in (PackDir.PACK, PackDir.BUILDING):
            raise CacheFSError(f"{node.describe()} is not a mounted pack")
        await self.ns.children(node)
        b = self.layers.building.get(node.ino)
        if b is not None:
            await self._take_open_files(b)
        await self._load_tree(node)
        op, summary = await self._seal_items(key, packbuild.items_of(node), None)
        while not op.done.is_set():
            await self.uploads.wait(op)
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
        build_dir = self.layers.build_dir
        logs = await trio.to_thread.run_sync(lambda: sorted(build_dir.glob("*.log")),
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
                await self.uploads.wait(op)
            if not op.done.is_set():
                await trio.sleep(5)
        if op.info is None or op.superseded:
            return
        try:
            await self.manifests.add_pack(op.key, op.info)
        except CacheFSError as e:
            log.error("%s: stored, but not listed in its directory's manifest: %s", op.key, e)
