"""Handing changes to write-back, and showing what the store has once it has it.

Every store operation the core makes goes through ``Uploads.submit``: it is journaled, counted on
the node it is for (``Node.pending``: a listing must not replace a node with changes in flight),
and waited for in sync mode. When it leaves the queue, ``stored`` records the new ETag, binds the
blob to it and marks the directory's manifest; a NAME.pack sealed here turns into a read-only
pack directory.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import trio

from .. import attrs as attrs_mod
from ..errors import CacheFSError
from ..metrics import Stats
from ..nodes import NEVER, InodeTable, Kind, Node, PackDir
from ..remote.manifest import ManifestWriter
from ..remote.namespace import Namespace
from ..remote.writeback import Op, WriteBack
from ..tier.blobs import BLOCK, BlobTier
from ..tier.integrity import combine_units, crc_unit, encode_crcs, file_crcs
from ..tier.listings import MetadataCache
from .options import Limiters, Options

log = logging.getLogger(__name__)

#: one store operation: the node it is for (None: none shows it), kind, key, arguments
Item = tuple[Node | None, str, str, dict[str, Any]]


class Uploads:
    def __init__(self, *, wb: WriteBack, ns: Namespace, table: InodeTable, blobs: BlobTier,
                 manifests: ManifestWriter, metadata: MetadataCache, stats: Stats,
                 limits: Limiters, opts: Options) -> None:
        self.wb = wb
        self.ns = ns
        self.table = table
        self.blobs = blobs
        self.manifests = manifests
        self.metadata = metadata
        self.stats = stats
        self.limits = limits
        self.opts = opts

    async def submit(self, node: Node | None, kind: str, key: str, *,
                     wait: bool | None = None, keep: bool = False, **kwargs: Any) -> Op:
        """Journal an operation; in sync mode (or when asked) wait until the store has it.

        ``keep``: on failure leave the operation queued for retry (content that exists only
        here); otherwise it is withdrawn so the store and the mount stay as they were.
        """
        op = await self.wb.submit(kind, key, on_done=functools.partial(self._done, node),
                                  **kwargs)
        if node is not None:
            node.pending += 1
        if self.opts.sync_writes if wait is None else wait:
            try:
                await self.wb.wait(op)
            except CacheFSError:
                self.stats.error("store_write_failed")
                if not keep:
                    self.wb.withdraw(op)
                raise
        return op

    async def submit_put(self, node: Node, digest: str, size: int, stream: Any) -> Op:
        """Hand sealed content to write-back under the node's key (waited for by the caller)."""
        meta = attrs_mod.object_metadata(node, digest)
        meta["cachefs-crc"] = await self.crc_meta(digest, size)
        return await self.submit(node, "put", self.ns.key(node), digest=digest, size=size,
                                 meta=meta, stream=stream, wait=False)


    async def crc_meta(self, digest: str, size: int) -> str:
        """The per-unit CRCs a reader checks the object against (from the blob's blocks)."""
        unit = crc_unit(size)
        entry = self.blobs.entry(digest)
        if entry is None:
            crcs = await trio.to_thread.run_sync(file_crcs, self.blobs.path(digest), unit,
                                                 limiter=self.limits.cpu)
            return encode_crcs(unit, crcs)
        if unit == BLOCK:
            return encode_crcs(unit, entry.crcs)
        return encode_crcs(unit, combine_units(entry.crcs, BLOCK, size, unit))

    async def wait(self, op: Op) -> None:
        await self.wb.wait(op)

    async def run_all(self, items: Sequence[Item]) -> None:
        """Submit every operation, then (sync mode) wait for all; raise the first failure."""
        ops = [await self.submit(node, kind, key, wait=False, **kwargs)
               for node, kind, key, kwargs in items]
        if not self.opts.sync_writes:
            return
        failures = []
        for op in ops:
            try:
                await self.wb.wait(op)
            except CacheFSError as e:
                failures.append(e)
        if failures:
            raise failures[0]

    # -- when an operation leaves the queue ----------------------------------------------------

    def replayed_done(self, op: Op) -> None:
        """An operation replayed from the journal after a restart finished."""
        self._done(None, op)

    def _done(self, node: Node | None, op: Op) -> None:
        """An operation reached the store (or was superseded): record the new ETag."""
        if node is not None:
            node.pending = max(0, node.pending - 1)
        else:
            node = self.ns.find_key(op.key)
        if node is None or op.superseded or op.info is None or not node.attached:
            return
        assert node.parent is not None
        key = self.ns.key(node)
        if node.pack_dir is PackDir.SEALING and op.kind == "put" and key == op.key:
            self._pack_stored(node, op)
            return
        if key == op.key and node.kind is not Kind.DIR and \
                (op.kind != "put" or node.digest == op.digest):
            node.etag = op.info.etag
            self.ns.local_change(node)
            if node.digest:
                self.blobs.bind(op.key, node.etag, node.digest)
            self.manifests.mark(node.parent.path(), node.name)
            self.metadata.mark(node.parent)

    def _pack_stored(self, node: Node, op: Op) -> None:
        """A NAME.pack sealed here is in the store: show it from its table from now on."""
        assert op.info is not None and node.parent is not None
        old = node.children or {}
        node.pack_dir, node.etag, node.size = PackDir.PACK, op.info.etag, op.size
        node.mode = 0o555  # read-only from now on, like every pack
        node.children, node.listed_at = None, NEVER
        for name, child in old.items():
            self.ns.notifier.entry_removed(node.ino, name, child.ino)
            self.table.detach(child)
        self.manifests.mark(node.parent.path(), node.name)
        self.metadata.mark(node.parent)
