"""One object on its way into the blob tier: the state every reader of it shares.

A ``Fetch`` records which byte ranges were requested, have arrived and may be read (released
once checked), and where the download goes next (``next_range``: parts that start small and
double while reading stays sequential; a reader that seeks moves the next part to where it
reads). Readers wait on it (``wait_range``, ``read``); the engine that downloads into it is
``Fetcher`` in fetch.py, which tells whoever keeps the tree what happened (``FetchEvents``).
Everything here runs on the trio thread, except the ``pread`` of a read.
"""


from __future__ import annotations

import bisect
import contextlib
import os
from array import array
from pathlib import Path
from typing import Protocol

import trio

from ..errors import CacheFSError, TimedOut
from ..store import ObjectInfo
from ..tier.blobs import BLOCK
from .origin import OriginInfo

#: The first part is small so the first byte comes fast; parts double up to MAX_PART.
MIN_PART = 1 << 20
MAX_PART = 8 << 20


class RangeSet:
    """Disjoint, sorted half-open intervals."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, start: int, end: int) -> None:
        if start >= end:
            return
        i = bisect.bisect_left(self.ends, start)
        j = bisect.bisect_right(self.starts, end)
        if i < j:
            start = min(start, self.starts[i])
            end = max(end, self.ends[j - 1])
        self.starts[i:j] = [start]
        self.ends[i:j] = [end]

    def covers(self, start: int, end: int) -> bool:
        if start >= end:
            return True
        i = bisect.bisect_right(self.starts, start) - 1
        return i >= 0 and self.ends[i] >= end

    def end_of(self, pos: int) -> int:
        """End of the interval containing ``pos`` (or ``pos`` if none does)."""
        i = bisect.bisect_right(self.starts, pos) - 1
        return self.ends[i] if i >= 0 and self.ends[i] > pos else pos

    def next_gap(self, pos: int, limit: int) -> tuple[int, int] | None:
        """First uncovered interval at or after ``pos``, below ``limit``."""
        pos = self.end_of(pos)
        if pos >= limit:
            return None
        i = bisect.bisect_right(self.starts, pos)
        end = self.starts[i] if i < len(self.starts) else limit
        return pos, min(end, limit)

    def total(self) -> int:
        return sum(e - s for s, e in zip(self.starts, self.ends, strict=True))


class ReadTheBlob(Exception):
    """The fetch ended without writing its file (the content was already in the blob tier):
    the reader must read the blob instead."""


class Fetch:
    """One object on its way into the blob tier."""

    def __init__(self, key: str, etag: str, size: int) -> None:
        self.key = key
        self.etag = etag
        self.size = size
        self.info: ObjectInfo | None = None
        self.path: Path | None = None
        self.fd = -1
        self.received = RangeSet()
        self.released = RangeSet()
        self.requested = RangeSet()
        self.done = trio.Event()
        self.error: CacheFSError | None = None
        self.digest: str | None = None
        self.cursor = 0
        self.part = MIN_PART
        self.unit_crcs: tuple[int, array] | None = None
        #: multipart upload part size, when parts are downloaded whole and MD5'd in place
        self.align = 0
        self.range_md5: dict[tuple[int, int], bytes] = {}
        self.expected_sha: str | None = None
        #: finished without downloading: the blob tier already had this content
        self.via_blob = False
        self.verified_units: set[int] = set()
        self.hold_tail = True
        self._changed = trio.Event()
        self._active_reads = 0
        self._closed = False

    # -- state changes (trio thread) ------------------------------------------------------------

    def changed(self) -> None:
        event, self._changed = self._changed, trio.Event()
        event.set()

    async def progressed(self, timeout: float) -> bool:
        """Wait until bytes arrive or the fetch ends; False if nothing happened for
        ``timeout`` seconds."""
        with trio.move_on_after(timeout):
            await self._changed.wait()
            return True
        return False

    def release_received(self) -> None:
        """Release what arrived, except what still needs a check."""
        if self.unit_crcs is not None:
            unit, _ = self.unit_crcs
            for u in sorted(self.verified_units):
                self.released.add(u * unit, min(self.size, (u + 1) * unit))
        else:
            tail = ((self.size - 1) // BLOCK) * BLOCK if self.hold_tail and self.size else self.size
            for s, e in zip(self.received.starts, self.received.ends, strict=True):
                self.released.add(s, min(e, tail))
        self.changed()

    def finish(self, digest: str) -> None:
        self.digest = digest
        self.released.add(0, self.size)
        self.done.set()
        self.changed()
        self._maybe_close()

    def fail(self, error: CacheFSError) -> None:
        self.error = error
        self.done.set()
        self.changed()
        self._maybe_close()

    def want(self, offset: int) -> None:
        """A reader needs ``offset``: if nothing covers it yet, fetch from there next."""
        if not self.requested.covers(offset, offset + 1):
            self.cursor = (offset // BLOCK) * BLOCK
            self.part = MIN_PART

    def next_range(self) -> tuple[int, int] | None:
        gap = self.requested.next_gap(self.cursor, self.size)
        if gap is None:
            gap = self.requested.next_gap(0, self.size)
            if gap is None:
                return None
        start, end = gap
        end = min(end, start + self.part)
        if self.unit_crcs is not None:
            unit = self.unit_crcs[0]
            end = min(gap[1], -(-end // unit) * unit)  # whole units, so each can be checked
        if self.align:
            end = min(end, (start // self.align + 1) * self.align)  # never across two parts
        self.requested.add(start, end)
        self.cursor = end
        self.part = min(self.part * 2, max(MAX_PART, self.align))
        return start, end

    # -- readers --------------------------------------------------------------------------------

    async def wait_range(self, start: int, end: int, timeout: float) -> None:
        """Wait until [start, end) may be read; TimedOut if nothing arrives for ``timeout`` s."""
        end = min(end, self.size)
        while not self.released.covers(start, end):
            if self.error is not None:
                raise self.error
            self.want(start)
            with trio.move_on_after(timeout) as scope:
                await self._changed.wait()
            if scope.cancelled_caught:
                raise TimedOut(f"{self.key}: no data for {timeout:g}s (store too slow or down)")
        if self.error is not None and not self.released.covers(start, end):
            raise self.error

    async def read(self, offset: int, size: int, timeout: float,
                   disk: trio.CapacityLimiter) -> bytes:
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        if self._closed:
            raise CacheFSError(f"{self.key}: fetch already closed")
        # Counted from the start: the file stays open while anyone waits to read it.
        self._active_reads += 1
        try:
            await self.wait_range(offset, end, timeout)
            if self.via_blob:
                raise ReadTheBlob()
            return await trio.to_thread.run_sync(os.pread, self.fd, end - offset, offset,
                                                 limiter=disk)
        finally:
            self._active_reads -= 1
            self._maybe_close()

    def _maybe_close(self) -> None:
        if self.done.is_set() and self._active_reads == 0 and not self._closed:
            self._closed = True
            if self.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self.fd)
            if self.digest is None and self.path is not None:
                with contextlib.suppress(OSError):
                    self.path.unlink()

    @property
    def closed(self) -> bool:
        return self._closed


class FetchEvents(Protocol):
    """What the fetcher tells whoever keeps the tree (the core) about fetches it ran."""

    def object_info(self, info: ObjectInfo) -> None:
        """A GET's first response arrived: its headers may carry the file's attributes."""

    async def origin_fetched(self, fetch: Fetch, info: OriginInfo) -> None:
        """An origin fetch is complete and in the blob tier (called before its readers learn
        it is done, so the upload it queues is in the journal first)."""

    def fetch_failed(self, key: str) -> None:
        """A fetch failed: readers may have seen bytes that were not checked yet."""


class NoEvents:
    """Nobody to tell (a fetcher used on its own, as by `cachefs warm` tests and tools)."""

    def object_info(self, info: ObjectInfo) -> None:
        pass

    async def origin_fetched(self, fetch: Fetch, info: OriginInfo) -> None:
        pass

    def fetch_failed(self, key: str) -> None:
        pass
