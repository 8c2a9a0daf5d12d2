"""Uploading a file while it is still being written.

When a program writes a large file in order (cp, tar x, a build writing an archive) and the mount
waits for uploads at close (sync mode), its 8 MiB parts go into a multipart upload as soon as they
are written; closing the file then only sends the last part and completes the upload. The upload
stays invisible until it is completed, so a reader never sees a partial object; if the file is
written out of order, truncated or renamed before it is closed, the upload is aborted and the
file is uploaded whole at close as usual.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping

import trio

from ..errors import CacheFSError, unwrap_group
from ..metrics import Stats
from ..store import ObjectInfo, Store

log = logging.getLogger(__name__)


class StreamUpload:
    def __init__(self, store: Store, key: str, meta: Mapping[str, str], fd: int, *,
                 part_size: int, in_flight: int, s3: trio.CapacityLimiter,
                 disk: trio.CapacityLimiter, nursery: trio.Nursery, stats: Stats) -> None:
        self.store = store
        self.key = key
        self.meta = dict(meta)
        self.fd = os.dup(fd)  # the staging file may be closed and reopened meanwhile
        self.part_size = part_size
        self.s3 = s3
        self.disk = disk
        self.nursery = nursery
        self.stats = stats
        self.next = 0  # where the next part starts
        self.parts: dict[int, str] = {}
        self.upload_id: str | None = None
        self.failed = ""
        self.closed = False
        self._slots = trio.Semaphore(in_flight)
        self._running = 0
        self._idle = trio.Event()
        self._idle.set()
        self._created = trio.Lock()

    def feed(self, written: int) -> None:
        """The file holds bytes [0, written) in order: send every whole part in there."""
        while not self.failed and not self.closed and self.next + self.part_size <= written:
            self._start(len(self.parts) + self._running + 1, self.next)
            self.next += self.part_size

    def _start(self, number: int, offset: int) -> None:
        self._running += 1
        self._idle = trio.Event()
        self.nursery.start_soon(self._part, number, offset)

    async def _part(self, number: int, offset: int) -> None:
        try:
            async with self._slots:
                if self.failed or self.closed:
                    return
                await self._create()
                data = await trio.to_thread.run_sync(os.pread, self.fd, self.part_size, offset,
                                                     limiter=self.disk)
                assert self.upload_id is not None
                etag = await trio.to_thread.run_sync(self.store.upload_part, self.key,
                                                     self.upload_id, number, data,
                                                     limiter=self.s3)
                self.parts[number] = etag
                self.stats.count("bytes_to_store", len(data))
        except CacheFSError as e:
            self.failed = str(e)
            log.info("%s: early upload of part %d failed (%s); it is uploaded at close",
                     self.key, number, e)
        finally:
            self._running -= 1
            if not self._running:
                self._idle.set()

    async def _create(self) -> None:
        async with self._created:
            if self.upload_id is None:
                self.upload_id = await trio.to_thread.run_sync(
                    self.store.create_multipart, self.key, self.meta, limiter=self.s3)

    async def complete(self, size: int) -> ObjectInfo:
        """Send what is left and complete; CacheFSError if the early parts failed."""
        await self._idle.wait()
        if self.failed or self.closed or size < self.next:
            raise CacheFSError(self.failed or "early upload no longer matches the file")
        self.closed = True
        try:
            if self.next < size or not self.parts:
                number = len(self.parts) + 1
                await self._create()
                data = await trio.to_thread.run_sync(os.pread, self.fd, size - self.next,
                                                     self.next, limiter=self.disk)
                assert self.upload_id is not None
                self.parts[number] = await trio.to_thread.run_sync(
                    self.store.upload_part, self.key, self.upload_id, number, data,
                    limiter=self.s3)
                self.stats.count("bytes_to_store", len(data))
            assert self.upload_id is not None
            info = await trio.to_thread.run_sync(
                self.store.complete_multipart, self.key, self.upload_id,
                sorted(self.parts.items()), size, limiter=self.s3)
        except BaseExceptionGroup as group:
            await self.abort()
            raise unwrap_group(group) from None
        except BaseException:
            await self.abort()
            raise
        self._close_fd()
        return info

    async def abort(self) -> None:
        """Give up: the parts sent so far are discarded by the store."""
        self.closed = True
        with trio.CancelScope(shield=True):
            await self._idle.wait()
            if self.upload_id is not None:
                with contextlib.suppress(CacheFSError):
                    await trio.to_thread.run_sync(self.store.abort_multipart, self.key,
                                                  self.upload_id, limiter=self.s3)
                self.upload_id = None
        self._close_fd()

    def _close_fd(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
