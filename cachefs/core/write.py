"""The filesystem core, writing: open for writing, staging files, close, upload (see state.py)."""

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
from ..nodes import Kind, Node, now_ns
from ..pack.mounted import PackFile
from ..remote.writeback import Op
from ..tier.blobs import BLOCK, DigestBuilder, digest_fd
from ..tier.integrity import combine_units, crc_unit, encode_crcs, file_crcs
from .handles import Staging, WriteHandle
from .packdir import SEALING, PackBuildOps
from .state import STREAM_THRESHOLD

log = logging.getLogger(__name__)


class WriteOps(PackBuildOps):
    async def _open_write(self, node: Node, truncate: bool, readable: bool) -> WriteHandle:
        staging = node.staging
        if staging is None:
            fresh = await self._new_staging(node, copy=not truncate, lazy=True)
            if node.staging is None:
                node.staging = staging = fresh
            else:  # another open made one meanwhile: share it
                fresh.close()
                staging = node.staging
                if truncate:
                    await self._truncate(node, staging, 0)
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

    async def _new_staging(self, node: Node, copy: bool, lazy: bool = False) -> Staging:
        """A private copy of the file's current content (empty if ``copy`` is false).

        ``lazy``: if that content is a local blob, copy it at the first change instead
        (``_materialize``); until then reads go to the blob. Opening a file read-write
        only to read it (SQLite, editors) then costs no copy, and nothing is uploaded.
        """
        source = None
        if copy and node.size > 0:
            source = self.local_digest(node)
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
            if source is None and isinstance(node.pack, PackFile):
                source = await self.pack_file_blob(node)  # a change to a pack file: copy up
            if source is None and node.etag is not None:
                source = await self._fetch_whole(node)
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

    async def _truncate(self, node: Node, staging: Staging, size: int) -> None:
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
                    log.warning("%s: not saved at release: %s", node.describe(), e)
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
                if handle.version is not None and handle.version != self.content_token(node):
                    self.ns.notifier.inode_changed(node.ino)  # drop the old version's pages
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
            if not self.table.reachable(node):
                # Unlinked while open: its key is gone (or another file's now), so there is
                # nothing to store; the staged bytes stay readable through open descriptors.
                log.debug("%s: closed after unlink; nothing to store", node.name)
                self._drop_stream(staging)
                return
            digest, size, crcs, stream = await self._staged_digest(node, staging)
            building = self.building_of(node)
            if building is None and self.in_pack(node):
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
                node.pack = None  # no longer the pack's version of the file
                await self.build_put(building, node)
                staging.error = ""
                return
            op = await self._submit_put(node, digest, size, stream)
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

    async def _submit_put(self, node: Node, digest: str, size: int, stream: Any) -> Op:
        """Hand the sealed content to write-back under the node's key."""
        meta = attrs_mod.object_metadata(node, digest)
        meta["cachefs-crc"] = await self._crc_meta(digest, size)
        op = await self.wb.submit("put", self.ns.key(node), digest=digest, size=size,
                                  meta=meta, stream=stream)
        node.pending += 1
        self._op_nodes[op.seq] = node
        return op

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
        if node is None or op.superseded or op.info is None or not node.attached:
            return
        assert node.parent is not None
        key = self.ns.key(node)
        if node.pack == SEALING and op.kind == "put" and key == op.key:
            self.pack_uploaded(node, op)
            return
        if key == op.key and node.kind is not Kind.DIR and \
                (op.kind != "put" or node.digest == op.digest):
            node.etag = op.info.etag
            self.ns.local_change(node)
            if node.digest:
                self.blobs.bind(op.key, node.etag, node.digest)
            self.manifests.mark(node.parent.path(), node.name)
            self.metadata.mark(node.parent)

    # -- attributes ----------------------------------------------------------------------------

    async def setattr(self, node: Node, *, size: int | None = None, mode: int | None = None,
                      uid: int | None = None, gid: int | None = None,
                      mtime_ns: int | None = None, atime_ns: int | None = None,
                      fh: int | None = None, caller_uid: int = 0) -> Node:
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
            if node.atime_ns is None:
                node.atime_ns = node.mtime_ns  # it read as mtime: it stays where it was
            node.mtime_ns, changed = mtime_ns, True
        if atime_ns is not None:
            node.atime_ns, changed = atime_ns, True
        if changed:
            node.ctime_ns = now_ns()
            building = self.building_of(node)
            if building is None:
                self._attrs_changed(node)
            elif node is not building.node and (node.kind is not Kind.FILE or node.digest):
                await self.build_put(building, node)
        return node

    def _attrs_changed(self, node: Node) -> None:
        node.attrs_from = "local"
        self.ns.local_change(node)
        parent = node.parent
        if parent is None:
            if node is self.table.root:
                self.manifests.mark("", ".")
            return
        self.manifests.mark(parent.path(), node.name)
        self.metadata.mark(parent)

    # -- namespace changes ---------------------------------------------------------------------
