"""Uploading a file while it is still being written.

When a program writes a large file in order (cp, tar x, a build writing an archive) and the mount
waits for uploads at close (sync mode), its 8 MiB parts go into a multipart upload as soon as they
are written; closing the file then only sends the last part and completes the upload. The upload
stays invisible until it is completed, so a reader never sees a partial object; if the file is
written out of order, truncated or renamed before it is closed, the upload is aborted and the
file is uploaded whole at close as usual. The parts go through the one multipart uploader
(store/multipart.py).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Mapping

import trio

from ..errors import CacheFSError
from ..metrics import Stats
from ..store import ObjectInfo, Store
from ..store.multipart import MultipartUpload

log = logging.getLogger(__name__)


class StreamUpload:
    def __init__(self, store: Store, key: str, meta: Mapping[str, str], fd: int, *,
                 part_size: int, in_flight: int, s3: trio.CapacityLimiter,
                 disk: trio.CapacityLimiter, nursery: trio.Nursery, stats: Stats) -> None:
        self.key = key
        self.meta = dict(meta)
        self.fd = os.dup(fd)  # the staging file may be closed and reopened meanwhile
        self.part_size = part_size
        self.next = 0  # where the next part starts
        self.upload = MultipartUpload(
            store, key, self.meta, nursery=nursery, s3=s3, disk=disk, in_flight=in_flight,
            on_sent=lambda n: stats.count("bytes_to_store", n))

    def feed(self, written: int) -> None:
        """The file holds bytes [0, written) in order: send every whole part in there."""
        while self.upload.ok and self.next + self.part_size <= written:
            self._send(self.part_size)

    def _send(self, length: int) -> None:
        number = self.next // self.part_size + 1
        self.upload.start(number, functools.partial(os.pread, self.fd, length, self.next))
        self.next += length

    async def complete(self, size: int) -> ObjectInfo:
        """Send what is left and complete; CacheFSError (the upload aborted) if the early
        parts failed or no longer match the file."""
        try:
            await self.upload.wait()
            if not self.upload.ok or size < self.next:
                raise CacheFSError(str(self.upload.error or "")
                                   or "early upload no longer matches the file")
            if self.next < size or self.next == 0:
                self._send(size - self.next)
            return await self.upload.complete(size)
        except CacheFSError:
            raise
        except Exception as e:  # a part could not be read: the file is uploaded whole instead
            raise CacheFSError(f"{self.key}: early upload failed: {type(e).__name__}: "
                               f"{e}") from e
        finally:
            await self.abort()

    async def abort(self) -> None:
        """Give up: the parts sent so far are discarded by the store."""
        await self.upload.abort()
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
