"""The filesystem core: what each operation does, independent of FUSE.

Every method takes and returns plain values (nodes, bytes, handle numbers) and raises
cachefs.errors exceptions; fuse/ops.py is the only place that turns them into FUSE replies. State
changes happen on the trio thread; anything that blocks runs in a worker thread under one of the
limiters (store, disk, CPU).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from .. import attrs as attrs_mod
from ..errors import (
    CacheFSError,
    ChecksumMismatch,
    InvalidArgument,
    IsADirectory,
    NotFound,
    ReadOnly,
)
from ..metrics import Stats
from ..nodes import InodeTable, Kind, Node
from ..pack import build as packbuild
from ..pack import tarzst as tarpack
from ..pack.mounted import PackFile, PackFileReader, PackRef, Packs
from ..remote.fallback import OriginFallback
from ..remote.fetch import SMALL, Fetch, Fetcher
from ..remote.manifest import ManifestWriter
from ..remote.namespace import Namespace
from ..remote.origin import OriginInfo
from ..remote.writeback import Op, WriteBack
from ..tier.blobs import BlobReader, BlobTier
from ..tier.listings import MetadataCache
from .handles import ReadHandle, WriteHandle
from .packdir import BUILDING, Building, PackBuildOps
from .state import CoreState, Limiters, Options
from .tree import TreeOps
from .write import WriteOps

log = logging.getLogger(__name__)

__all__ = ["CacheFS", "Limiters", "Options"]


class CacheFS(WriteOps, TreeOps, PackBuildOps, CoreState):
    def __init__(self, *, ns: Namespace, table: InodeTable, blobs: BlobTier, fetcher: Fetcher,
                 writeback: WriteBack, manifests: ManifestWriter, metadata: MetadataCache,
                 stats: Stats, limiters: Limiters, options: Options,
                 origins: OriginFallback | None = None, packs: Packs | None = None,
                 build_dir: Path | None = None) -> None:
        self.ns = ns
        self.table = table
        self.blobs = blobs
        self.fetcher = fetcher
        self.wb = writeback
        self.manifests = manifests
        self.metadata = metadata
        self.stats = stats
        self.limits = limiters
        self.opts = options
        self.handles: dict[int, ReadHandle | WriteHandle] = {}
        self._next_fh = 1
        self._op_nodes: dict[int, Node] = {}
        self.origins = origins
        self.packs = packs
        #: mounted while the store was unreachable: refuse changes until it answers
        self.offline_at_start = False
        if packs is not None:
            ns.pack_loader = self._load_pack
        #: told about every open for reading (prefetch.Prefetcher), set by the daemon
        self.on_read_open: Callable[[Node], None] = lambda node: None
        self._origin_uploads: dict[str, Op] = {}
        self.building: dict[int, Building] = {}
        self.overlay_root = False
        self.pack_idle = options.pack_idle
        self.build_dir = build_dir or blobs.root.parent / packbuild.LOG_DIR
        self.build_dir.mkdir(mode=0o700, exist_ok=True)
        writeback.on_complete = self._op_done
        fetcher.on_info = self._object_info
        fetcher.after_origin = self._origin_done
        fetcher.on_failed = self._fetch_failed

    # -- lookups -------------------------------------------------------------------------------

    def node(self, ino: int) -> Node:
        node = self.table.get(ino)
        if node is None:
            raise NotFound(f"inode {ino} is gone")
        return node

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
        if archive is None or archive.kind is not Kind.FILE or archive.etag is None or \
                self.packs is None:
            return None
        assert parent.children is not None
        node = self.table.new(Kind.DIR, name, parent, mode=0o555, etag=archive.etag,
                              size=archive.size, pack="tar.zst", mtime_ns=archive.mtime_ns)
        parent.children[name] = node
        return node

    async def readdir(self, directory: Node) -> list[tuple[str, Node]]:
        children = await self.ns.children(directory)
        return sorted(children.items())

    async def readlink(self, node: Node) -> str:
        if node.kind is not Kind.LINK or node.target is None:
            raise InvalidArgument(f"{node.describe()} is not a symlink")
        return node.target

    # -- reading -------------------------------------------------------------------------------

    async def open(self, node: Node, flags: int) -> tuple[int, bool]:
        """Open a file; returns (handle, keep_cache)."""
        if node.kind is Kind.DIR:
            raise IsADirectory(node.describe())
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC
        if writing:
            self._check_writable(node)
            handle: ReadHandle | WriteHandle = await self._open_write(
                node, truncate=bool(flags & os.O_TRUNC),
                readable=(flags & os.O_ACCMODE) == os.O_RDWR)
            keep = False
        else:
            handle = await self._open_read(node, follow=True)
            handle.version = self.content_token(node)
            # The kernel's page cache is one per inode: while another version of the file is
            # being written or read here, its pages could mix with ours, so this handle goes
            # around the cache. Otherwise the kernel may keep its pages, but only for verified
            # content (bytes of a fetch still in progress could yet fail their check).
            handle.direct_io = node.staging is not None or any(
                isinstance(h, ReadHandle) and h.node is node and h.version != handle.version
                for h in self.handles.values())
            keep = handle.reader is not None and not handle.direct_io
            self.on_read_open(node)
        return self._add_handle(handle), keep

    @staticmethod
    def content_token(node: Node) -> object:
        """Which content ``node`` shows now (changes when it is rewritten or replaced)."""
        return (node.etag or node.digest, id(node.pack) if node.pack is not None else None)

    def _add_handle(self, handle: ReadHandle | WriteHandle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = handle
        if isinstance(handle, ReadHandle):
            handle.node.readers += 1
        return fh

    async def _open_read(self, node: Node, follow: bool = False) -> ReadHandle:
        """A reader of ``node``'s content; ``follow``: of what a writer has written so far,
        if one has it open (see docs/SEMANTICS.md, Writing)."""
        handle = ReadHandle(node, timeout=self.opts.timeout, disk=self.limits.disk,
                            open_blob=self.blobs.open_reader, on_corrupt=self._corrupt,
                            reopen=lambda: self._open_read(node))
        staging = node.staging
        if follow and staging is not None and not staging.broken:
            handle.follow(staging)
            return handle
        if isinstance(node.pack, PackFile) and self.packs is not None:
            handle.reader = PackFileReader(self.packs, node.pack)  # type: ignore[assignment]
            self.stats.count("hits_pack")
            return handle
        digest = self.local_digest(node)
        if digest is not None:
            handle.reader = self.blobs.open_reader(digest)
            self.stats.count("hits_local")
            self.stats.key_event(self._key_or_path(node), "hit_local")
            return handle
        if node.origin_url is not None and node.etag is None and self.origins is not None:
            info = await self.origins.info(node)
            handle.fetch = self.fetcher.fetch_origin(self.ns.key(node), info,
                                                     self.origins.pin_for(node))
            return handle
        if node.etag is not None:
            key = self.ns.key(node)
            self.stats.count("hits_store")
            self.stats.key_event(key, "hit_store")
            if node.size <= SMALL:
                handle.reader = await self._fetch_and_open(node)
            else:
                handle.fetch = self.fetcher.fetch(key, node.etag, node.size,
                                                  self._known_sha(node))
            return handle
        if node.size == 0:
            return handle
        raise CacheFSError(f"{node.describe()}: content is missing from the cache and the store")

    async def _fetch_and_open(self, node: Node) -> BlobReader:
        """Fetch a small object whole and open its blob.

        Prefetches that land between the fetch and the open may evict the blob on a tight
        cache; then fetch it again rather than fail the open.
        """
        for attempt in range(3):
            digest = await self._fetch_whole(node)
            try:
                return self.blobs.open_reader(digest)
            except FileNotFoundError:
                log.info("%s: evicted before it was opened; fetching again (%d)",
                         node.describe(), attempt + 1)
        raise CacheFSError(f"{node.describe()}: the blob tier is too small to hold it open")

    def local_digest(self, node: Node) -> str | None:
        if node.digest and self.blobs.has(node.digest):
            return node.digest
        if node.etag is not None:
            digest = self.blobs.lookup(self.ns.key(node), node.etag)
            if digest is not None:
                node.digest = digest
                return digest
        return None

    def _key_or_path(self, node: Node) -> str:
        return self.ns.key(node)

    async def _fetch_whole(self, node: Node) -> str:
        assert node.etag is not None
        key = self.ns.key(node)
        with trio.fail_after(self.opts.timeout * 4):
            digest = await self.fetcher.fetch_whole(key, node.etag, node.size,
                                                    self._known_sha(node))
        if self.ns.key(node) == key:
            node.digest = digest
        return digest

    @staticmethod
    def _known_sha(node: Node) -> str | None:
        """The digest a directory manifest recorded for this version of the file."""
        return node.digest if node.attrs_from == "manifest" else None

    async def _corrupt(self, digest: str) -> None:
        self.stats.error("corrupt_blob")
        await self.blobs.discard(digest, "a block failed its checksum when read back")

    def _fetch_failed(self, key: str) -> None:
        """Whatever a reader saw of a failed fetch must leave the kernel's page cache."""
        node = self.ns.find_key(key)
        if node is not None:
            self.ns.notifier.inode_changed(node.ino)

    def _object_info(self, info: Any) -> None:
        """Attributes from a GET's headers (cachefs's or s3fs-fuse's metadata)."""
        node = self.ns.find_key(info.key)
        if node is not None and node.etag == info.etag:
            size = node.size
            attrs_mod.apply_object_metadata(node, info.metadata)
            if node.size != size:
                self.ns.notifier.inode_changed(node.ino)

    async def _origin_done(self, fetch: Fetch, info: OriginInfo) -> None:
        """An origin fetch is in the blob tier: upload it so the next runner hits the store."""
        node = self.ns.find_key(fetch.key)
        if node is None or node.origin_url is None or fetch.digest is None:
            return
        node.digest = fetch.digest
        self.stats.key_event(fetch.key, "miss_origin")
        if self.opts.read_only:
            return
        meta = attrs_mod.object_metadata(node, fetch.digest)
        meta["cachefs-origin-url"] = node.origin_url.split("?", 1)[0]
        meta["cachefs-crc"] = await self._crc_meta(fetch.digest, fetch.size)
        op = await self._submit_and_wait(node, "put", fetch.key, digest=fetch.digest,
                                         size=fetch.size, meta=meta, wait=False)
        self._origin_uploads[fetch.key] = op

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
        op = self._origin_uploads.get(self.ns.key(node))
        if op is not None:
            await self.wb.wait(op)
        return node

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self.handles[fh]
        if isinstance(handle, WriteHandle) and not handle.readable:
            raise CacheFSError("file is open write-only")
        return await handle.read(offset, size)

    # -- writing -------------------------------------------------------------------------------

    def _check_writable(self, *nodes: Node) -> None:
        if self.opts.read_only:
            raise ReadOnly("the mount is read-only")
        if self.offline_at_start:
            raise ReadOnly("the store was unreachable when this mount started: it is a "
                           "read-only view of what is cached until the store comes back")
        for node in nodes:
            self.open_overlay(node)
            if self.in_pack(node):
                raise ReadOnly(f"{node.describe()} is inside a pack, which is read-only")

    @staticmethod
    def in_pack(node: Node) -> bool:
        """Inside a read-only pack (a NAME.pack being built, or a layer over a mounted pack,
        is writable: the nearest pack-like directory decides)."""
        for n in (node, *node.ancestors()):
            if n.pack == BUILDING:
                return False
            if n.kind is Kind.DIR and n.pack is not None:
                return True
        return False

    async def _load_pack(self, directory: Node) -> None:
        assert self.packs is not None
        key = self.ns.key(directory)
        if directory.pack == "tar.zst" and key.endswith(tarpack.DIR_SUFFIX):
            key = key[:-2]  # X.tar.zst.d shows the archive X.tar.zst
        kind = "tar.zst" if directory.pack == "tar.zst" else "pack"
        ref = PackRef(key, directory.etag or "", directory.size, kind)
        toc = await self.packs.load(ref)
        self.packs.populate(directory, ref, toc)

    def cached_paths(self, node: Node) -> list[Path] | None:
        """Local files holding ``node``'s content, if it is all cached (for the prefetcher)."""
        if isinstance(node.pack, PackFile) and self.packs is not None:
            return self.packs.frame_paths(node.pack)
        digest = self.local_digest(node)
        return [self.blobs.path(digest)] if digest is not None else None

    def start_fetch(self, node: Node, max_size: int) -> Awaitable[object] | None:
        """Begin bringing ``node``'s content into the blob tier (for the prefetcher)."""
        if isinstance(node.pack, PackFile) and self.packs is not None:
            return self.packs.ensure(node.pack)
        if node.etag is not None and node.size <= max_size:
            fetch = self.fetcher.fetch(self.ns.key(node), node.etag, node.size,
                                       self._known_sha(node))
            return fetch.done.wait()
        return None

    async def sync(self) -> dict[str, Any]:
        """Seal NAME.pack directories, let fills from an origin finish (they queue their
        upload when complete), wait until everything written is in the store; report what
        kept failing."""
        stalled_fills = await self.finish_origin_fills()
        seal_errors = await self.seal_all()
        for handle in list(self.handles.values()):
            if isinstance(handle, WriteHandle) and handle.staging.dirty:
                try:
                    await self._commit(handle.node, wait=False)
                except CacheFSError as e:
                    log.warning("sync: %s", e)
        failed = await self.wb.drain()
        manifest_error = ""
        try:
            await self.manifests.flush()
        except CacheFSError as e:
            manifest_error = str(e)
        await self.flush_index()
        return {
            "pending": len(self.wb.queue),
            "failed": [op.describe() for op in failed],
            "manifest_error": manifest_error,
            "seal_errors": seal_errors,
            "origin_fills_unfinished": stalled_fills,
        }

    async def finish_origin_fills(self) -> list[str]:
        """Wait for fills from an origin in progress, so that what was fetched is uploaded
        too; a fill that received nothing for ``--timeout`` seconds is given up on (its key
        is returned, and logged)."""
        stalled = await self.fetcher.wait_origin_fills(self.opts.timeout)
        for key in stalled:
            log.warning("%s: its fill from the origin made no progress for %gs: not uploaded",
                        key, self.opts.timeout)
        return stalled

    async def flush_index(self) -> None:
        await self.metadata.flush(self.table.root)
        await self.blobs.flush()

    def status(self) -> dict[str, Any]:
        return {"pending": [op.describe() for op in self.wb.pending()],
                "refused": list(self.wb.refused)}


__all__ = ["BlobReader", "CacheFS", "ChecksumMismatch", "Limiters", "Options"]
