"""The filesystem core, writing: open for writing, staging files, close and what it hands to
write-back, truncation and attribute changes.

Writers of one file share its staging file (handles.Staging) in the cache dir's ``tmp/``. Closing
seals it into the blob tier under its digest and hands that blob to write-back (uploads.py); below
a NAME.pack being built it is logged for the pack instead (packdir.py).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from array import array
from typing import Any

import trio

from .. import attrs as attrs_mod
from ..errors import CacheFSError, InvalidArgument, NoSpace, NotPermitted, ReadOnly
from ..metrics import Stats
from ..nodes import InodeTable, Kind, Node, now_ns
from ..remote.namespace import Namespace
from ..remote.writeback import WriteBack
from ..tier.blobs import BlobTier, DigestBuilder, digest_fd
from .access import Access
from .content import Contents
from .entries import Entries
from .handles import Staging, WriteHandle
from .options import STREAM_THRESHOLD, Limiters, Options
from .packdir import Layers, in_pack
from .uploads import Uploads

log = logging.getLogger(__name__)


class Writes:
    def __init__(self, *, ns: Namespace, table: InodeTable, blobs: BlobTier, contents: Contents,
                 uploads: Uploads, wb: WriteBack, layers: Layers, access: Access,
                 entries: Entries, stats: Stats, limits: Limiters, opts: Options) -> None:
        self.ns = ns
        self.table = table
        self.blobs = blobs
        self.contents = contents
        self.uploads = uploads
        self.wb = wb
        self.layers = layers
        self.access = access
        self.entries = entries
        self.stats = stats
        self.limits = limits
        self.opts = opts

    async def open(self, node: Node, truncate: bool, readable: bool) -> WriteHandle:
        """A writer of ``node``; its writers share one staging file."""
        staging = node.staging
        empty = False  # a staging file made here with truncate starts empty
        if staging is None:
            fresh = await self.new_staging(node, copy=not truncate, lazy=True)
            if node.staging is None:
                node.staging = staging = fresh
                empty = truncate
            else:  # another open made one meanwhile: share it
                fresh.close()
                staging = node.staging
        # Counted before the truncate waits for the lock: the last other writer's release
        # meanwhile must not retire this staging file (close its fd) under this open.
        staging.writers += 1
        if truncate and not empty:
            try:
                await self.truncate(node, staging, 0)
            except BaseException:
                self._let_go(node, staging)
                raise
        if truncate:
            node.size = 0
            node.touch()
        handle = WriteHandle(node, staging, readable, self.limits.disk)
        if truncate:
            handle.dirty = staging.dirty = True
        return handle

    async def new_staging(self, node: Node, copy: bool, lazy: bool = False) -> Staging:
        """A private copy of the file's current content (empty if ``copy`` is false).

        ``lazy``: if that content is a local blob, copy it at the first change instead
        (``_materialize``); until then reads go to the blob. Opening a file read-write
        only to read it (SQLite, editors) then costs no copy, and nothing is uploaded.
        """
        source = None
        if copy and node.size > 0:
            source = self.contents.local_digest(node)
            if source is not None and lazy:
                reader = self.blobs.open_reader(source)  # pins the blob until copied
                path = self.blobs.new_temp_path("stage")
                try:
                    fd = await trio.to_thread.run_sync(
                        os.open, path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600,
                        limiter=self.limits.disk)
                except OSError:
                    reader.close()
                    raise
                return Staging(path, fd, node.size, base_size=node.size, base=source,
                               lazy=reader)
            if source is None:
                source = await self.contents.as_blob(node)  # a pack's file: copied up
            if source is None:
                raise CacheFSError(f"{node.describe()}: current content is not available")
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
        return Staging(path, fd, size, base_size=node.size, base=source,
                       hasher=None if source is not None else DigestBuilder())

    async def _materialize(self, staging: Staging, upto: int | None = None) -> None:
        """Copy the blob a lazy staging file starts from into it (the caller holds its lock);
        ``upto``: only that much is needed (a truncation)."""
        reader = staging.lazy
        if reader is None:
            return
        size = min(reader.size, staging.size if upto is None else upto)

        def copy() -> None:
            offset = 0
            while offset < size:
                chunk = os.pread(reader.fd, min(8 << 20, size - offset), offset)
                if not chunk:
                    raise OSError(errno.EIO, "the cached copy is shorter than it should be")
                offset += os.pwrite(staging.fd, chunk, offset)

        await trio.to_thread.run_sync(copy, limiter=self.limits.disk)
        staging.lazy = None
        reader.close()

    async def truncate(self, node: Node, staging: Staging, size: int) -> None:
        async with staging.lock:
            if staging.sealed:
                await self._unseal(node, staging, copy=size > 0)
            await self._materialize(staging, upto=size)
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
        fresh = await self.new_staging(node, copy=copy)
        os.close(staging.fd)
        staging.path, staging.fd, staging.sealed = fresh.path, fresh.fd, False
        staging.size = fresh.size
        staging.hasher, staging.hashed = fresh.hasher, 0

    async def write(self, handle: WriteHandle, offset: int, data: bytes) -> int:
        node, staging = handle.node, handle.staging
        # Writes and sealing exclude each other: a sealed file must not change under its digest.
        async with staging.lock:
            if staging.broken:
                raise OSError(staging.broken_errno, staging.broken)
            if staging.sealed:
                await self._unseal(node, staging)
            try:
                await self._materialize(staging)
                written = await self._pwrite(node, staging, data, offset)
            except OSError as e:
                staging.broken = f"{node.describe()}: {e.strerror}; the file is not saved"
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

    async def flush(self, handle: WriteHandle) -> None:
        """close(2): in sync mode, returns once the content is in the store."""
        if handle.staging.dirty:
            await self.commit(handle.node)

    async def fsync(self, handle: WriteHandle) -> None:
        await self.commit(handle.node, wait=True)

    async def release(self, handle: WriteHandle) -> None:
        """The handle's last close: save what it left unsaved; the last writer lets go of
        the staging file."""
        node, staging = handle.node, handle.staging
        try:
            if staging.dirty and not staging.broken:
                await self.commit(node)
        except CacheFSError as e:
            log.warning("%s: not saved at release: %s", node.describe(), e)
        finally:
            self._let_go(node, staging)
            self.table.release(node)

    def _let_go(self, node: Node, staging: Staging) -> None:
        """One writer less; the last one closes the staging file (a new writer starts a new
        one), and a write that failed takes the file back to its last saved content."""
        staging.writers -= 1
        if staging.writers > 0:
            return
        self._drop_stream(staging)
        staging.close()
        if node.staging is staging:
            node.staging = None
            if staging.broken:
                self._abandon(node, staging)


    def _abandon(self, node: Node, staging: Staging) -> None:
        """A write failed: the file goes back to its last saved content (or away, if new)."""
        log.warning("%s", staging.broken)
        parent = node.parent
        if node.digest is None and node.etag is None and parent is not None:
            self.entries.remove(parent, node.name, node)
            self.ns.notifier.entry_removed(parent.ino, node.name, node.ino)
        else:
            node.size = staging.base_size

    async def commit(self, node: Node, wait: bool | None = None) -> None:
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
            if not self.table.reachable(node):
                # Unlinked while open: its key is gone (or another file's now), so there is
                # nothing to store; the staged bytes stay readable through open descriptors.
                log.debug("%s: closed after unlink; nothing to store", node.name)
                self._drop_stream(staging)
                return
            digest, size, crcs, stream = await self._staged_digest(node, staging)
            building = self.layers.building_of(node)
            if building is None and in_pack(node):
                raise ReadOnly(f"{node.describe()}: its NAME.pack directory was sealed while the "
                               "file was open; what was written after that is not saved")
            # In sync mode the upload makes it durable before close() returns; only a
            # journaled (async) close, or a file kept for a pack, needs it on local disk first.
            await self.blobs.commit(staging.path, digest, size, crcs,
                                    durable=not self.opts.sync_writes or building is not None)
            staging.sealed, staging.digest = True, digest
            staging.path = self.blobs.path(digest)
            changed = node.digest != digest
            node.digest, node.size, node.etag = digest, size, None
            self.ns.local_change(node)
            node.source, node.attrs_from = "local", "local"
            if changed:  # pages read through older handles must not outlive them
                self.ns.notifier.inode_changed(node.ino)
            if building is not None:  # kept for the pack: logged, not uploaded
                node.pack_file = None  # no longer the pack's version of the file
                await self.layers.build_put(building, node)
                staging.error = ""
                return
            op = await self.uploads.submit_put(node, digest, size, stream)
        # The upload waits outside the lock: the sealed blob no longer changes.
        if self.opts.sync_writes if wait is None else wait:
            try:
                await self.wb.wait(op)
                staging.error = ""
            except CacheFSError as e:
                self.stats.error("store_write_failed")
                staging.error = str(e)
                raise

    async def _staged_digest(self, node: Node, staging: Staging) -> tuple[str, int, array, Any]:
        """Digest, size and CRCs of the staged content, and the upload streamed while it was
        written (if it is still for the node's key). Under the staging lock."""
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
        return digest, size, crcs, stream

    # -- attributes ----------------------------------------------------------------------------

    async def setattr(self, node: Node, *, size: int | None = None, mode: int | None = None,
                      uid: int | None = None, gid: int | None = None,
                      mtime_ns: int | None = None, atime_ns: int | None = None,
                      handle: WriteHandle | None = None, caller_uid: int = 0) -> Node:
        self.access.check_writable(node)
        if caller_uid != 0 and (uid not in (None, self.table.uid) or
                                gid not in (None, self.table.gid)):
            raise NotPermitted("only root may give files away")
        if size is not None:
            if node.kind is not Kind.FILE:
                raise InvalidArgument("only files can be truncated")
            if handle is not None:
                await self.truncate(node, handle.staging, size)
                handle.dirty = True
                node.size = size
            else:
                own = await self.open(node, truncate=size == 0, readable=False)
                try:
                    await self.truncate(node, own.staging, size)
                    node.size = size
                    await self.commit(node)
                finally:
                    await self.release(own)
            node.touch()
        changed = False
        if mode is not None:
            node.mode, changed = mode & 0o7777, True
        if uid is not None:
            node.uid, changed = uid, True
        if gid is not None:
            node.gid, changed = gid, True
        if mtime_ns is not None:
            if node.atime_ns is None:
                node.atime_ns = node.mtime_ns  # it read as mtime: it stays where it was
            node.mtime_ns, changed = mtime_ns, True
        if atime_ns is not None:
            node.atime_ns, changed = atime_ns, True
        if changed:
            node.ctime_ns = now_ns()
            building = self.layers.building_of(node)
            if building is None:
                self.entries.attrs_changed(node)
            elif node is not building.node and (node.kind is not Kind.FILE or node.digest):
                await self.layers.build_put(building, node)
        return node
