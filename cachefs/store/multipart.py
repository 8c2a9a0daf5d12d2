"""Uploading one object in parts: the multipart uploader every writer uses.

Write-back of a closed file (``upload_file``), the parts sent while a large file is still being
written (remote/streamup.py) and ``cachefs pack`` (pack/save.py) all go through
``MultipartUpload``, so they share one set of rules:

* the upload is created with the first part, never for nothing;
* parts go up in parallel, at most ``in_flight`` at a time, each a store call in a worker thread
  under the store's limiter (a part's bytes are read in a thread under the disk limiter);
* each part's ETag is kept by its number and the upload is completed with the parts in order,
  after checking that none is missing (a gap would silently store a shorter object);
* the first failed part fails the upload: parts not yet started are skipped, and ``complete``
  aborts the upload and raises that error; ``abort`` discards the parts sent so far, shielded
  from cancellation, so a failed or cancelled upload leaves no parts billed in the store;
* ``on_sent(n)`` reports each part's bytes as it lands (progress, counters).

Part numbers are 1-based and at most MAX_PARTS; the caller picks the part size
(``part_size_for`` scales it to the object's size when that is known).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Mapping

import trio

from ..errors import CacheFSError, unwrap_group
from .base import MAX_PARTS, MIN_PART_SIZE, ObjectInfo, Store

log = logging.getLogger(__name__)

#: 8 MiB parts, as the AWS CLI and boto3 send them: big enough that the request overhead is
#: small, small enough that a retried part costs little.
PART_SIZE = 8 << 20
#: parts of one object in flight at once (every upload also shares the store's limiter)
PARTS_IN_FLIGHT = 8

#: a part's bytes: in memory already, or read (blocking) in a worker thread
Source = bytes | Callable[[], bytes]


def part_size_for(size: int, preferred: int = PART_SIZE) -> int:
    """The part size for an object of ``size`` bytes: ``preferred``, but never below S3's
    minimum and large enough that the object fits in MAX_PARTS parts."""
    return max(preferred, MIN_PART_SIZE, -(-size // MAX_PARTS))


class MultipartUpload:
    """One multipart upload, its parts sent by tasks in ``nursery``."""

    def __init__(self, store: Store, key: str, metadata: Mapping[str, str], *,
                 nursery: trio.Nursery, s3: trio.CapacityLimiter,
                 disk: trio.CapacityLimiter | None = None, in_flight: int = PARTS_IN_FLIGHT,
                 on_sent: Callable[[int], None] = lambda n: None, replace: bool = True) -> None:
        self.store = store
        #: False: completing refuses a key that exists (Exists), atomically where the store
        #: can (Store.complete_multipart_new)
        self.replace = replace
        self.key = key
        self.metadata = dict(metadata)
        self.nursery = nursery
        self.s3 = s3
        self.disk = disk
        self.on_sent = on_sent
        self.upload_id: str | None = None
        self.etags: dict[int, str] = {}
        #: the first failure: the upload can no longer complete
        self.error: Exception | None = None
        #: completed or aborted: no part starts any more
        self.closed = False
        self._slots = trio.Semaphore(in_flight)
        self._running = 0
        self._idle = trio.Event()
        self._idle.set()
        self._created = trio.Lock()

    @property
    def ok(self) -> bool:
        """Parts may still be added."""
        return self.error is None and not self.closed

    def start(self, number: int, source: Source) -> None:
        """Queue part ``number``; it waits for a free slot in the background. For a producer
        that must not wait (the write path)."""
        if self._begin(number):
            self.nursery.start_soon(self._run, number, source, False)

    async def send(self, number: int, source: Source) -> None:
        """Wait for a free slot, then send part ``number`` in the background: a producer
        holding its parts in memory keeps at most ``in_flight`` of them. Raises the upload's
        error once a part has failed, so the producer stops early."""
        if self.error is not None:
            raise self.error
        await self._slots.acquire()
        if self._begin(number):
            self.nursery.start_soon(self._run, number, source, True)
        else:
            self._slots.release()
            if self.error is not None:
                raise self.error

    def _begin(self, number: int) -> bool:
        if not self.ok:
            return False
        if not 1 <= number <= MAX_PARTS:
            self.error = CacheFSError(f"{self.key}: part {number} is beyond the store's "
                                      f"{MAX_PARTS} parts")
            return False
        self._running += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        return True

    async def _run(self, number: int, source: Source, holding_slot: bool) -> None:
        try:
            if holding_slot:
                try:
                    await self._part(number, source)
                finally:
                    self._slots.release()
            else:
                async with self._slots:
                    await self._part(number, source)
        except Exception as e:  # the upload fails; complete() raises it to the caller
            if self.error is None:
                self.error = e
            log.info("%s: part %d failed: %s", self.key, number, e)
        finally:
            self._running -= 1
            if not self._running:
                self._idle.set()

    async def _part(self, number: int, source: Source) -> None:
        if not self.ok:  # failed or aborted while this part waited for its slot
            return
        upload_id = await self._create()
        if isinstance(source, bytes):
            data = source
        else:
            data = await trio.to_thread.run_sync(source, limiter=self.disk)
        self.etags[number] = await trio.to_thread.run_sync(
            self.store.upload_part, self.key, upload_id, number, data, limiter=self.s3)
        self.on_sent(len(data))

    async def _create(self) -> str:
        async with self._created:
            if self.upload_id is None:
                self.upload_id = await trio.to_thread.run_sync(
                    self.store.create_multipart, self.key, self.metadata, limiter=self.s3)
            return self.upload_id

    async def wait(self) -> None:
        """Until no part is queued or in flight."""
        await self._idle.wait()

    async def complete(self, size: int) -> ObjectInfo:
        """Wait for the parts and complete the object (``size`` bytes); on any failure the
        upload is aborted and the error raised."""
        try:
            await self.wait()
            if self.error is not None:
                raise self.error
            if self.closed:
                raise CacheFSError(f"{self.key}: the upload was aborted")
            self.closed = True
            numbers = sorted(self.etags)
            if not numbers or numbers != list(range(1, len(numbers) + 1)):
                raise CacheFSError(f"{self.key}: parts missing from the upload "
                                   f"(have {len(numbers)}, up to {numbers[-1:]})")
            assert self.upload_id is not None
            complete = self.store.complete_multipart if self.replace \
                else self.store.complete_multipart_new
            info = await trio.to_thread.run_sync(
                complete, self.key, self.upload_id,
                [(n, self.etags[n]) for n in numbers], size, limiter=self.s3)
        except BaseException:
            await self.abort()
            raise
        self.upload_id = None
        return ObjectInfo(self.key, size, info.etag, time.time(), self.metadata)

    async def abort(self) -> None:
        """Give up: no part starts any more, and the store discards the parts sent."""
        self.closed = True
        with trio.CancelScope(shield=True):
            await self.wait()
            upload_id, self.upload_id = self.upload_id, None
            if upload_id is not None:
                with contextlib.suppress(CacheFSError):
                    await trio.to_thread.run_sync(self.store.abort_multipart, self.key,
                                                  upload_id, limiter=self.s3)


async def upload_file(store: Store, key: str, fd: int, size: int, metadata: Mapping[str, str],
                      *, s3: trio.CapacityLimiter, disk: trio.CapacityLimiter,
                      part_size: int = PART_SIZE, in_flight: int = PARTS_IN_FLIGHT,
                      on_sent: Callable[[int], None] = lambda n: None,
                      replace: bool = True) -> ObjectInfo:
    """Upload ``size`` bytes of the open file ``fd`` as ``key``, in parts (``replace``
    False: refuse an existing key, see MultipartUpload)."""
    part_size = part_size_for(size, part_size)
    try:
        async with trio.open_nursery() as nursery:
            upload = MultipartUpload(store, key, metadata, nursery=nursery, s3=s3, disk=disk,
                                     in_flight=in_flight, on_sent=on_sent, replace=replace)
            for number, offset in enumerate(range(0, size, part_size), 1):
                upload.start(number, functools.partial(os.pread, fd, part_size, offset))
            return await upload.complete(size)
    except BaseExceptionGroup as group:
        raise unwrap_group(group) from None
