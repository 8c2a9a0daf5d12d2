"""The filesystem core: what each operation does, independent of FUSE.

Every method takes and returns plain values (nodes, bytes, handle numbers) and raises
cachefs.errors exceptions; fuse_ops.py is the only place that turns them into FUSE replies. State
changes happen on the trio thread; anything that blocks runs in a worker thread under one of the
limiters (store, disk, CPU).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from . import attrs as attrs_mod
from . import tarpack
from .blobs import BLOCK, BlobReader, BlobTier, DigestBuilder, digest_fd
from .errors import (
    CacheFSError,
    ChecksumMismatch,
    Exists,
    InvalidArgument,
    IsADirectory,
    NoSpace,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    ReadOnly,
)
from .fallback import OriginFallback
from .fetch import SMALL, Fetch, Fetcher
from .handles import ReadHandle, Staging, WriteHandle
from .integrity import combine_units, crc_unit, encode_crcs, file_crcs
from .manifest import ManifestWriter, manifest_key
from .metadata import MetadataCache
from .metrics import Stats
from .namespace import Namespace
from .nodes import InodeTable, Kind, Node, now_ns
from .origin import OriginInfo
from .packs import PackFile, PackFileReader, PackRef, Packs
from .writeback import Op, WriteBack

log = logging.getLogger(__name__)


#: files written in order past this size start uploading before they are closed (sync mode)
STREAM_THRESHOLD = 16 << 20


@dataclasses.dataclass(frozen=True)
class Options:
    read_only: bool = False
    sync_writes: bool = True
    timeout: float = 30.0
    ttl: float = 60.0


@dataclasses.dataclass(frozen=True)
class Limiters:
    s3: trio.CapacityLimiter
    disk: trio.CapacityLimiter
    cpu: trio.CapacityLimiter


class CacheFS:
    def __init__(self, *, ns: Namespace, table: InodeTable, blobs: BlobTier, fetcher: Fetcher,
                 writeback: WriteBack, manifests: ManifestWriter, metadata: MetadataCache,
                 stats: Stats, limiters: Limiters, options: Options,
                 origins: OriginFallback | None = None, packs: Packs | None = None) -> None:
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
            raise InvalidArgument(f"{node.path()} is not a symlink")
        return node.target

    # -- reading -------------------------------------------------------------------------------

    async def open(self, node: Node, flags: int) -> tuple[int, bool]:
        """Open a file; returns (handle, keep_cache)."""
        if node.kind is Kind.DIR:
            raise IsADirectory(node.path())
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC
        if writing:
            self._check_writable(node)
            handle: ReadHandle | WriteHandle = await self._open_write(
                node, truncate=bool(flags & os.O_TRUNC),
                readable=(flags & os.O_ACCMODE) == os.O_RDWR)
            keep = False
        else:
            handle = await self._open_read(node)
            # The kernel may keep its page cache only for verified content: bytes read from a
            # fetch still in progress could yet fail their check.
            keep = handle.reader is not None
            self.on_read_open(node)
        return self._add_handle(handle), keep

    def _add_handle(self, handle: ReadHandle | WriteHandle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = handle
        if isinstance(handle, ReadHandle):
            handle.node.readers += 1
        return fh

    async def _open_read(self, node: Node) -> ReadHandle:
        handle = ReadHandle(node, timeout=self.opts.timeout, disk=self.limits.disk,
                            open_blob=self.blobs.open_reader, on_corrupt=self._corrupt,
                            reopen=lambda: self._open_read(node))
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
                digest = await self._fetch_whole(node)
                handle.reader = self.blobs.open_reader(digest)
            else:
                handle.fetch = self.fetcher.fetch(key, node.etag, node.size,
                                                  self._known_sha(node))
            return handle
        if node.staging is not None:  # created here, first writer still has it open
            handle.staging = node.staging
            return handle
        if node.size == 0:
            return handle
        raise CacheFSError(f"{node.path()}: content is missing from the cache and the store")

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
            if self.in_pack(node):
                raise ReadOnly(f"{node.path() or '/'} is inside a pack, which is read-only")

    @staticmethod
    def in_pack(node: Node) -> bool:
        return node.pack is not None or any(a.pack is not None for a in node.ancestors())

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

    async def _open_write(self, node: Node, truncate: bool, readable: bool) -> WriteHandle:
        staging = node.staging
        if staging is None:
            staging = await self._new_staging(node, copy=not truncate)
            node.staging = staging
        elif truncate:
            await self._truncate(node, staging, 0)
        if truncate:
            node.size = 0
            node.touch()
        staging.writers += 1
        handle = WriteHandle(node, staging, readable, self.limits.disk)
        if truncate:
            handle.dirty = staging.dirty = True
        return handle

    async def _new_staging(self, node: Node, copy: bool) -> Staging:
        """A private copy of the file's current content (empty if ``copy`` is false)."""
        source = None
        if copy and node.size > 0:
            source = self.local_digest(node)
            if source is None and node.etag is not None:
                source = await self._fetch_whole(node)
            if source is None:
                raise CacheFSError(f"{node.path()}: current content is not available")
        path = self.blobs.new_temp_path("stage")

        def make() -> int:
            if source is not None:
                shutil.copyfile(self.blobs.path(source), path)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            return fd

        fd = await trio.to_thread.run_sync(make, limiter=self.limits.disk)
        if source is not None:
            self.blobs.touch(source)
        size = node.size if source is not None else 0
        return Staging(path, fd, size, base_size=node.size,
                       hasher=None if source is not None else DigestBuilder())

    async def _truncate(self, node: Node, staging: Staging, size: int) -> None:
        async with staging.lock:
            if staging.sealed:
                await self._unseal(node, staging, copy=size > 0)
            await trio.to_thread.run_sync(os.ftruncate, staging.fd, size,
                                          limiter=self.limits.disk)
            staging.size = size
            staging.dirty = True
            self._drop_stream(staging)
            if size == 0:
                staging.hasher, staging.hashed = DigestBuilder(), 0
            elif size < staging.hashed:
                staging.hasher = None

    async def _unseal(self, node: Node, staging: Staging, copy: bool = True) -> None:
        """A write after close/fsync: continue on a fresh copy, the sealed blob stays intact."""
        fresh = await self._new_staging(node, copy=copy)
        os.close(staging.fd)
        staging.path, staging.fd, staging.sealed = fresh.path, fresh.fd, False
        staging.size = fresh.size
        staging.hasher, staging.hashed = fresh.hasher, 0

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self.handles[fh]
        if not isinstance(handle, WriteHandle):
            raise CacheFSError("file is not open for writing")
        node, staging = handle.node, handle.staging
        # Writes and sealing exclude each other: a sealed file must not change under its digest.
        async with staging.lock:
            if staging.broken:
                raise OSError(staging.broken_errno, staging.broken)
            if staging.sealed:
                await self._unseal(node, staging)
            try:
                written = await self._pwrite(node, staging, data, offset)
            except OSError as e:
                staging.broken = f"{node.path()}: {e.strerror}; the file is not saved"
                staging.broken_errno = e.errno or errno.EIO
                raise OSError(staging.broken_errno, staging.broken) from None
            staging.size = max(staging.size, offset + written)
            node.size = staging.size
            node.mtime_ns = node.ctime_ns = now_ns()
            staging.dirty = handle.dirty = True
        return written

    async def _pwrite(self, node: Node, staging: Staging, data: bytes, offset: int) -> int:
        """Write to a staging file (the caller holds its lock); on a full disk, evict from
        the blob tier and try again."""
        in_order = staging.hasher is not None and offset == staging.hashed
        if not in_order and offset < staging.hashed + len(data):
            staging.hasher = None  # overwrites hashed bytes: digest the file at close
        hasher = staging.hasher if in_order else None

        def write() -> int:
            written = os.pwrite(staging.fd, data, offset)
            if hasher is not None:
                hasher.update(memoryview(data)[:written])
            return written

        try:
            written = await trio.to_thread.run_sync(write, limiter=self.limits.disk)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            staging.hasher = None
            try:
                await self.blobs.make_room(max(len(data), 16 << 20))
            except NoSpace:
                raise e from None
            return await trio.to_thread.run_sync(os.pwrite, staging.fd, data, offset,
                                                 limiter=self.limits.disk)
        if hasher is not None:
            staging.hashed += written
            self._stream(node, staging)
        elif staging.stream is not None:
            self._drop_stream(staging)
        return written

    def _stream(self, node: Node, staging: Staging) -> None:
        """Sync mode, written in order: send whole parts before close() asks for them."""
        if staging.stream is None:
            if not self.opts.sync_writes or staging.hashed < STREAM_THRESHOLD:
                return
            staging.stream = self.wb.start_stream(self.ns.key(node),
                                                  attrs_mod.object_metadata(node), staging.fd)
            if staging.stream is None:
                return
        staging.stream.feed(staging.hashed)

    def _drop_stream(self, staging: Staging) -> None:
        stream, staging.stream = staging.stream, None
        if stream is not None:
            self.wb.abort_stream(stream)

    async def flush(self, fh: int) -> None:
        """close(2): in sync mode, returns once the content is in the store."""
        handle = self.handles.get(fh)
        if isinstance(handle, WriteHandle) and handle.staging.dirty:
            await self._commit(handle.node)

    async def fsync(self, fh: int) -> None:
        handle = self.handles.get(fh)
        if isinstance(handle, WriteHandle):
            await self._commit(handle.node, wait=True)

    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if handle is None:
            return
        node = handle.node
        try:
            if isinstance(handle, WriteHandle):
                staging = handle.staging
                try:
                    if staging.dirty and not staging.broken:
                        await self._commit(node)
                except CacheFSError as e:
                    log.warning("%s: not saved at release: %s", node.path(), e)
                finally:
                    staging.writers -= 1
                    if staging.writers <= 0:
                        self._drop_stream(staging)
                        staging.close()
                        if node.staging is staging:
                            node.staging = None
                            if staging.broken:
                                self._abandon(node, staging)
            else:
                handle.close()
                node.readers -= 1
        finally:
            self.table.release(node)

    def _abandon(self, node: Node, staging: Staging) -> None:
        """A write failed: the file goes back to its last saved content (or away, if new)."""
        log.warning("%s", staging.broken)
        parent = node.parent
        if node.digest is None and node.etag is None and parent is not None:
            self._remove(parent, node.name, node)
            self.ns.notifier.entry_removed(parent.ino, node.name, node.ino)
        else:
            node.size = staging.base_size

    async def _commit(self, node: Node, wait: bool | None = None) -> None:
        """Seal the node's staging file into the blob tier and hand it to write-back."""
        staging = node.staging
        if staging is None:
            return
        async with staging.lock:
            if staging.broken:
                raise OSError(staging.broken_errno, staging.broken)
            if not staging.dirty:
                if staging.error:
                    raise CacheFSError(staging.error)
                return
            staging.dirty = False
            stream = None
            if staging.hasher is not None and staging.hashed == staging.size:
                size = staging.size
                digest, crcs = staging.hasher.finish()  # written in order: already hashed
                if staging.stream is not None and staging.stream.key == self.ns.key(node):
                    stream, staging.stream = staging.stream, None
            else:
                digest, size, crcs = await trio.to_thread.run_sync(
                    digest_fd, staging.fd, None, limiter=self.limits.cpu)
            self._drop_stream(staging)
            staging.hasher = None
            # In sync mode the upload makes it durable before close() returns; only a
            # journaled (async) close needs it on local disk first.
            await self.blobs.commit(staging.path, digest, size, crcs,
                                    durable=not self.opts.sync_writes)
            staging.sealed = True
            staging.path = self.blobs.path(digest)
            node.digest, node.size, node.etag = digest, size, None
            node.source, node.attrs_from = "local", "local"
            meta = attrs_mod.object_metadata(node, digest)
            meta["cachefs-crc"] = await self._crc_meta(digest, size)
            op = await self.wb.submit("put", self.ns.key(node), digest=digest, size=size,
                                      meta=meta, stream=stream)
            node.pending += 1
            self._op_nodes[op.seq] = node
        # The upload waits outside the lock: the sealed blob no longer changes.
        if self.opts.sync_writes if wait is None else wait:
            try:
                await self.wb.wait(op)
                staging.error = ""
            except CacheFSError as e:
                self.stats.error("store_write_failed")
                staging.error = str(e)
                raise

    async def _crc_meta(self, digest: str, size: int) -> str:
        unit = crc_unit(size)
        entry = self.blobs.entry(digest)
        if entry is None:
            crcs = await trio.to_thread.run_sync(file_crcs, self.blobs.path(digest), unit,
                                                 limiter=self.limits.cpu)
            return encode_crcs(unit, crcs)
        if unit == BLOCK:
            return encode_crcs(unit, entry.crcs)
        return encode_crcs(unit, combine_units(entry.crcs, BLOCK, size, unit))

    async def _submit_and_wait(self, node: Node | None, kind: str, key: str, *,
                               wait: bool | None = None, keep: bool = False,
                               **kwargs: Any) -> Op:
        """Journal an operation; in sync mode (or when asked) wait until the store has it.

        ``keep``: on failure leave the operation queued for retry (content that exists only
        here); otherwise it is withdrawn so the store and the mount stay as they were.
        """
        op = await self.wb.submit(kind, key, **kwargs)
        if node is not None:
            node.pending += 1
            self._op_nodes[op.seq] = node
        if self.opts.sync_writes if wait is None else wait:
            try:
                await self.wb.wait(op)
            except CacheFSError:
                self.stats.error("store_write_failed")
                if not keep:
                    self.wb.withdraw(op)
                raise
        return op

    def _op_done(self, op: Op) -> None:
        """An operation reached the store (or was superseded): record the new ETag."""
        node = self._op_nodes.pop(op.seq, None)
        if node is not None:
            node.pending = max(0, node.pending - 1)
        else:  # replayed from the journal after a restart
            node = self.ns.find_key(op.key)
        if node is None or op.superseded or op.info is None or node.parent is None:
            return
        if self.ns.key(node) == op.key and node.kind is not Kind.DIR and \
                (op.kind != "put" or node.digest == op.digest):
            node.etag = op.info.etag
            if node.digest:
                self.blobs.bind(op.key, node.etag, node.digest)
            self.manifests.mark(node.parent.path(), node.name)
            self.metadata.mark(node.parent)

    # -- attributes ----------------------------------------------------------------------------

    async def setattr(self, node: Node, *, size: int | None = None, mode: int | None = None,
                      uid: int | None = None, gid: int | None = None,
                      mtime_ns: int | None = None, fh: int | None = None,
                      caller_uid: int = 0) -> Node:
        self._check_writable(node)
        if caller_uid != 0 and (uid not in (None, self.table.uid) or
                                gid not in (None, self.table.gid)):
            raise NotPermitted("only root may give files away")
        if size is not None:
            if node.kind is not Kind.FILE:
                raise InvalidArgument("only files can be truncated")
            handle = self.handles.get(fh) if fh is not None else None
            if isinstance(handle, WriteHandle):
                await self._truncate(node, handle.staging, size)
                handle.dirty = True
                node.size = size
            else:
                fh2 = self._add_handle(await self._open_write(node, truncate=size == 0,
                                                              readable=False))
                try:
                    staging = node.staging
                    assert staging is not None
                    await self._truncate(node, staging, size)
                    node.size = size
                    await self._commit(node)
                finally:
                    await self.release(fh2)
            node.touch()
        changed = False
        if mode is not None:
            node.mode, changed = mode & 0o7777, True
        if uid is not None:
            node.uid, changed = uid, True
        if gid is not None:
            node.gid, changed = gid, True
        if mtime_ns is not None:
            node.mtime_ns, changed = mtime_ns, True
        if changed:
            node.ctime_ns = now_ns()
            self._attrs_changed(node)
        return node

    def _attrs_changed(self, node: Node) -> None:
        node.attrs_from = "local"
        parent = node.parent
        if parent is None:
            if node is self.table.root:
                self.manifests.mark("", ".")
            return
        self.manifests.mark(parent.path(), node.name)
        self.metadata.mark(parent)

    # -- namespace changes ---------------------------------------------------------------------

    async def _absent(self, parent: Node, name: str) -> None:
        if await self.ns.lookup(parent, name) is not None:
            raise Exists(f"{parent.path()}/{name}".lstrip("/"))

    def _attach(self, parent: Node, node: Node) -> None:
        assert parent.children is not None
        parent.children[node.name] = node
        self.manifests.mark(parent.path(), node.name)
        self.metadata.mark(parent)
        parent.touch()

    async def create(self, parent: Node, name: str, mode: int, flags: int,
                     uid: int, gid: int) -> tuple[Node, int]:
        self._check_writable(parent)
        await self._absent(parent, name)
        node = self.table.new(Kind.FILE, name, parent, mode=mode & 0o7777, uid=uid, gid=gid,
                              mtime_ns=now_ns(), source="local", attrs_from="local")
        node.staging = await self._new_staging(node, copy=False)
        self._attach(parent, node)
        handle = await self._open_write(node, truncate=False,
                                        readable=(flags & os.O_ACCMODE) == os.O_RDWR)
        handle.dirty = node.staging.dirty = True  # an empty file is still a file to store
        return node, self._add_handle(handle)

    async def mkdir(self, parent: Node, name: str, mode: int, uid: int, gid: int) -> Node:
        self._check_writable(parent)
        await self._absent(parent, name)
        node = self.table.new(Kind.DIR, name, parent, mode=mode & 0o7777, uid=uid, gid=gid,
                              mtime_ns=now_ns(), children={}, listed_at=self.ns.clock(),
                              attrs_from="local")
        marker = self.ns.dir_prefix(parent) + name + "/"
        await self._submit_and_wait(None, "put", marker,
                                    meta=attrs_mod.object_metadata(node))
        self._attach(parent, node)
        return node

    async def symlink(self, parent: Node, name: str, target: str, uid: int, gid: int) -> Node:
        self._check_writable(parent)
        await self._absent(parent, name)
        node = self.table.new(Kind.LINK, name, parent, mode=0o777, uid=uid, gid=gid,
                              mtime_ns=now_ns(), target=target, size=len(target.encode()),
                              source="local", attrs_from="local")
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
        await self._submit_and_wait(None, "delete", self.ns.key(node))
        self._remove(parent, name, node)

    def _remove(self, parent: Node, name: str, node: Node) -> None:
        assert parent.children is not None
        if parent.children.get(name) is node:
            del parent.children[name]
        self.table.detach(node)
        self.manifests.mark(parent.path(), name)
        self.metadata.mark(parent)
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
        prefix = self.ns.dir_prefix(node)
        await self._submit_and_wait(None, "delete", manifest_key(self.ns.prefix, node.path()))
        await self._submit_and_wait(None, "delete", prefix)
        self.metadata.drop(node.path())
        self._remove(parent, name, node)

    async def rename(self, old_parent: Node, old_name: str, new_parent: Node, new_name: str,
                     noreplace: bool = False) -> None:
        self._check_writable(old_parent, new_parent)
        node = await self.ns.lookup(old_parent, old_name)
        if node is None:
            raise NotFound(old_name)
        if new_parent is node or node in new_parent.ancestors():
            raise InvalidArgument("cannot move a directory into itself")
        target = await self.ns.lookup(new_parent, new_name)
        if target is node:
            return
        if target is not None:
            if noreplace:
                raise Exists(new_name)
            if target.kind is Kind.DIR:
                if node.kind is not Kind.DIR:
                    raise IsADirectory(new_name)
                if await self.ns.children(target):
                    raise NotEmpty(new_name)
            elif node.kind is Kind.DIR:
                raise NotADirectory(new_name)
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

    def _move_node(self, old_parent: Node, old_name: str, node: Node, new_parent: Node,
                   new_name: str) -> None:
        assert old_parent.children is not None and new_parent.children is not None
        if old_parent.children.get(old_name) is node:
            del old_parent.children[old_name]
        self.manifests.mark(old_parent.path(), old_name)
        self.metadata.mark(old_parent)
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
            raise CacheFSError(f"{node.path()}: content is not available to move")
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

    async def sync(self) -> dict[str, Any]:
        """Wait until everything written is in the store; report what kept failing."""
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
        }

    async def flush_index(self) -> None:
        await self.metadata.flush(self.table.root)
        await self.blobs.flush()

    def status(self) -> dict[str, Any]:
        return {"pending": [op.describe() for op in self.wb.pending()]}

    async def verify_blob(self, digest: str) -> bool:
        return await self.blobs.verify(digest)


__all__ = ["BlobReader", "CacheFS", "ChecksumMismatch", "Limiters", "Options"]
