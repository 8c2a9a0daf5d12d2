"""Where a file's content is, and how to bring it here: the blob tier, a mounted pack, the store,
an origin. Readers, writers (a change starts from the current content) and the prefetcher all ask
here, so each place content can come from is known in one room.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from pathlib import Path

import trio

from ..errors import CacheFSError, Detached, InvalidArgument, NotFound
from ..metrics import Stats
from ..nodes import Kind, Node
from ..pack.format import unit_of
from ..pack.mounted import PackFile, PackFileReader, Packs
from ..remote.fallback import OriginFallback
from ..remote.fetch import SMALL, Fetch, Fetcher
from ..remote.namespace import Namespace
from ..tier.blobs import BlobReader, BlobTier, digest_path
from .arrivals import Arrivals
from .options import Limiters, Options

log = logging.getLogger(__name__)


class Contents:
    def __init__(self, *, ns: Namespace, blobs: BlobTier, fetcher: Fetcher, packs: Packs,
                 origins: OriginFallback | None, arrivals: Arrivals, stats: Stats,
                 limits: Limiters, opts: Options) -> None:
        self.ns = ns
        self.blobs = blobs
        self.fetcher = fetcher
        self.packs = packs
        self.origins = origins
        self.arrivals = arrivals
        self.stats = stats
        self.limits = limits
        self.opts = opts

    def local_digest(self, node: Node) -> str | None:
        """The blob holding ``node``'s content, if the blob tier has it."""
        if node.digest and self.blobs.has(node.digest):
            return node.digest
        if node.etag is not None:
            digest = self.blobs.lookup(self.ns.key(node), node.etag)
            if digest is not None:
                node.digest = digest
                return digest
        return None

    @staticmethod
    def known_sha(node: Node) -> str | None:
        """The digest a directory manifest recorded for this version of the file."""
        return node.digest if node.attrs_from == "manifest" else None

    async def source(self, node: Node) -> tuple[BlobReader | PackFileReader | None,
                                                Fetch | None]:
        """Where a new reader of ``node`` reads: a local reader, or a fetch it joins (neither:
        the file is empty)."""
        if isinstance(node.pack_file, PackFile):
            self.stats.count("hits_pack")
            return PackFileReader(self.packs, node.pack_file), None
        digest = self.local_digest(node)
        if digest is not None:
            self.stats.count("hits_local")
            self.stats.key_event(self.ns.key(node), "hit_local")
            return self.blobs.open_reader(digest), None
        if node.origin_url is not None and node.etag is None and self.origins is not None:
            info = await self.origins.info(node)
            return None, self.fetcher.fetch_origin(self.ns.key(node), info,
                                                   self.origins.pin_for(node))
        if node.etag is not None:
            key = self.ns.key(node)
            self.stats.count("hits_store")
            self.stats.key_event(key, "hit_store")
            if node.size <= SMALL:
                return await self._fetch_and_open(node), None
            return None, self.fetcher.fetch(key, node.etag, node.size, self.known_sha(node))
        if node.size == 0:
            return None, None
        raise CacheFSError(f"{node.describe()}: content is missing from the cache and the store")

    async def _fetch_and_open(self, node: Node) -> BlobReader:
        """Fetch a small object whole and open its blob.

        Prefetches that land between the fetch and the open may evict the blob on a tight
        cache; then fetch it again rather than fail the open.
        """
        for attempt in range(3):
            digest = await self.fetch_whole(node)
            try:
                return self.blobs.open_reader(digest)
            except FileNotFoundError:
                log.info("%s: evicted before it was opened; fetching again (%d)",
                         node.describe(), attempt + 1)
        raise CacheFSError(f"{node.describe()}: the blob tier is too small to hold it open")

    async def fetch_whole(self, node: Node) -> str:
        """Bring the stored object of ``node`` into the blob tier; its digest."""
        assert node.etag is not None
        key = self.ns.key(node)
        with trio.fail_after(self.opts.timeout * 4):
            digest = await self.fetcher.fetch_whole(key, node.etag, node.size,
                                                    self.known_sha(node))
        if self.ns.key(node) == key:
            node.digest = digest
        return digest

    async def as_blob(self, node: Node) -> str | None:
        """The current content of ``node`` as one blob (before a change copies it), brought
        here if need be; None if it has none anywhere."""
        digest = self.local_digest(node)
        if digest is None and isinstance(node.pack_file, PackFile):
            digest = await self._pack_file_blob(node, node.pack_file)
        if digest is None and node.etag is not None:
            digest = await self.fetch_whole(node)
        return digest

    async def _pack_file_blob(self, node: Node, file: PackFile) -> str:
        """The content of a file still read from its pack, copied into one blob."""
        reader = PackFileReader(self.packs, file)
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

    async def corrupt(self, digest: str) -> None:
        """A blob failed its check when read back: it goes, the next read fetches again."""
        self.stats.error("corrupt_blob")
        await self.blobs.discard(digest, "a block failed its checksum when read back")

    # -- origins -------------------------------------------------------------------------------

    async def approve(self, path: str) -> Node:
        """`cachefs fetch`: download from the origin, verify, upload, then show the file."""
        parent_path, _, name = path.strip("/").rpartition("/")
        parent = await self.ns.resolve(parent_path)
        if parent is None or parent.kind is not Kind.DIR:
            raise NotFound(f"{parent_path or '/'}: no such directory")
        node = await self.ns.lookup(parent, name)
        if node is not None and node.etag is not None:
            return node  # already in the store
        if self.origins is None or self.origins.url(parent, name) is None:
            raise InvalidArgument(f"{path}: no origin is set for this directory")
        node = node or await self.origins.probe(parent, name, approve=True)
        if node is None:
            raise NotFound(f"{path}: the origin does not have it")
        if node.digest is None or not self.blobs.has(node.digest):
            info = await self.origins.info(node)
            await self.fetcher.wait(self.fetcher.fetch_origin(
                self.ns.key(node), info, self.origins.pin_for(node)))
        op = self.arrivals.origin_uploads.get(self.ns.key(node))
        if op is not None:
            await self.arrivals.uploads.wait(op)
        return node

    async def finish_origin_fills(self) -> list[str]:
        """Wait for fills from an origin in progress, so that what was fetched is uploaded
        too; a fill that received nothing for ``--timeout`` seconds is given up on (its key
        is returned, and logged)."""
        stalled = await self.fetcher.wait_origin_fills(self.opts.timeout)
        for key in stalled:
            log.warning("%s: its fill from the origin made no progress for %gs: not uploaded",
                        key, self.opts.timeout)
        return stalled

    # -- for the prefetcher --------------------------------------------------------------------

    def cached_paths(self, node: Node) -> list[Path] | None:
        """Local files holding ``node``'s content, if it is all cached."""
        if isinstance(node.pack_file, PackFile):
            return self.packs.frame_paths(node.pack_file)
        digest = self.local_digest(node)
        return [self.blobs.path(digest)] if digest is not None else None

    def unit(self, node: Node) -> object:
        """The unit ``node`` is read with (pack/format.unit_of: its Go module, else its
        top-level directory; in a pack, counted from the pack's top)."""
        if isinstance(node.pack_file, PackFile):
            return (id(node.pack_file.pack), unit_of(node.pack_file.entry.path))
        try:
            return unit_of(node.path())
        except Detached:
            return None

    def start_fetch(self, node: Node, max_size: int, ahead: bool = False) \
            -> Awaitable[object] | None:
        """Begin bringing ``node``'s content into the blob tier; ``ahead``: for a reader going
        through the whole tree (a pack's GET may run on into the next units' frames)."""
        if isinstance(node.pack_file, PackFile):
            return self.packs.ensure(node.pack_file, ahead)
        if node.etag is not None and node.size <= max_size:
            fetch = self.fetcher.fetch(self.ns.key(node), node.etag, node.size,
                                       self.known_sha(node))
            return fetch.done.wait()
        return None
