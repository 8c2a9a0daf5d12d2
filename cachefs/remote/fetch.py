"""Copying objects from the store into the blob tier, once per object, for every reader.

A ``Fetch`` is shared by all readers of one (key, ETag): the first open starts it, later opens
join it. Small objects come in one GET and are verified before anyone reads them. Large objects
come in ranged GETs, several in flight, in parts that start small (the first byte arrives fast)
and double while reading stays sequential; a reader that seeks moves the next part to where it
reads. Readers are answered as soon as their range is present and checked:

* with per-unit CRCs in the object's metadata (objects cachefs wrote), each unit is checked
  before it is released;
* otherwise bytes are released as they arrive, except the last block, which is held back until
  the whole object matched its SHA-256 / ETag: a reader never reaches end-of-file on bad data.

The completed file is renamed into the blob tier under its SHA-256. This module is the engine
(``Fetcher``: single flight per (key, ETag), the GETs, the checks); what readers share of one
object, the ranges and their waits, is ``Fetch`` in fetchstate.py.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zlib
from array import array
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from ..errors import (
    CacheFSError,
    ChecksumMismatch,
    NoSpace,
    ObjectChanged,
    StoreUnavailable,
    unwrap_group,
)
from ..metrics import Progress, Stats
from ..pack import zobject
from ..store import ObjectInfo, Store
from ..store.retry import REQUEST, retry
from ..tier.blobs import BLOCK, BlobTier, DigestBuilder
from ..tier.integrity import EtagCheck, decode_crcs, expected_sha256
from .fetchstate import MIN_PART, Fetch, FetchEvents, NoEvents, RangeSet, ReadTheBlob
from .origin import OriginClient, OriginInfo

log = logging.getLogger(__name__)

#: Fetch and ReadTheBlob are what the core holds of a fetch (its state lives in fetchstate.py)
__all__ = ["SMALL", "EtagMismatch", "Fetch", "FetchEvents", "Fetcher", "RangeSet", "ReadTheBlob"]

T = TypeVar("T")

#: Objects up to this size are fetched in one GET and verified before they are served.
SMALL = 1 << 20
#: Parts of one object in flight at once (every fetch also shares the store's limiter).
PARALLEL = 8
#: Downloads of one object whose content fails its digest before the read fails with EIO.
CHECK_ATTEMPTS = 3
#: Chunk size when streaming a body to disk: memory per part in flight.
CHUNK = 1 << 20


class EtagMismatch(ChecksumMismatch):
    """The content does not match the ETag (which some stores do not compute as an MD5)."""

    def __init__(self, message: str, sha256: str) -> None:
        super().__init__(message)
        self.sha256 = sha256


class Fetcher:
    """Starts and tracks fetches; one per (key, ETag) at a time."""

    def __init__(self, store: Store, blobs: BlobTier, *, s3: trio.CapacityLimiter,
                 disk: trio.CapacityLimiter, cpu: trio.CapacityLimiter, stats: Stats,
                 parallel: int = PARALLEL, origin: OriginClient | None = None,
                 etag_check: bool = True, events: FetchEvents | None = None) -> None:
        self.store = store
        self.blobs = blobs
        self.s3 = s3
        self.disk = disk
        self.cpu = cpu
        self.stats = stats
        self.parallel = parallel
        self.active: dict[tuple[str, str], Fetch] = {}
        #: whether ETags are MD5s of the content (--etag-check; SSE-KMS/-C objects never are)
        self.etag_is_md5 = etag_check
        self.origin = origin
        self._nursery: trio.Nursery | None = None
        self.events: FetchEvents = events or NoEvents()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def fetch(self, key: str, etag: str, size: int, sha256: str | None = None) -> Fetch:
        """The fetch of (key, etag), started if needed. ``sha256``: the content's digest when
        known from elsewhere (a manifest), checked when the object's metadata has none."""
        existing = self.active.get((key, etag))
        if existing is not None:
            return existing
        fetch = Fetch(key, etag, size)
        fetch.expected_sha = sha256
        self.active[(key, etag)] = fetch
        assert self._nursery is not None, "Fetcher.run() is not running"
        self._nursery.start_soon(self._job, fetch)
        return fetch

    def fetch_origin(self, key: str, info: OriginInfo, expected_sha: str | None) -> Fetch:
        """Stream ``info.url`` into the blob tier, serving readers as bytes arrive."""
        etag = "origin:" + info.url
        existing = self.active.get((key, etag))
        if existing is not None:
            return existing
        fetch = Fetch(key, etag, info.size)
        fetch.hold_tail = expected_sha is not None
        self.active[(key, etag)] = fetch
        assert self._nursery is not None, "Fetcher.run() is not running"
        self._nursery.start_soon(self._origin_job, fetch, info, expected_sha)
        return fetch

    def origin_fills(self) -> list[Fetch]:
        """Fills from an origin still in progress (their upload is not queued yet)."""
        return [f for (_, etag), f in self.active.items()
                if etag.startswith("origin:") and not f.done.is_set()]

    async def wait_origin_fills(self, idle_timeout: float) -> list[str]:
        """Wait until every fill from an origin has ended, and so has queued its upload (or
        failed). A fill counts as stalled once no byte arrived for ``idle_timeout`` seconds:
        then the keys of those still in progress are returned, and they are not uploaded."""
        while fills := self.origin_fills():
            before = [(f, f.received.total()) for f in fills]
            if await fills[0].progressed(idle_timeout):
                continue
            if not any(f.done.is_set() or f.received.total() != n for f, n in before):
                return sorted(f.key for f in fills)
        return []

    async def fetch_whole(self, key: str, etag: str, size: int,
                          sha256: str | None = None) -> str:
        """Fetch and wait; returns the digest of the blob."""
        return await self.wait(self.fetch(key, etag, size, sha256))

    @staticmethod
    async def wait(fetch: Fetch) -> str:
        await fetch.done.wait()
        if fetch.error is not None:
            raise fetch.error
        assert fetch.digest is not None
        return fetch.digest

    # -- the job --------------------------------------------------------------------------------

    async def _job(self, fetch: Fetch) -> None:
        progress = self.stats.begin("fetch", fetch.key, fetch.size)
        try:
            for attempt in range(CHECK_ATTEMPTS):
                try:
                    if fetch.size <= SMALL:
                        await self._small(fetch, progress)
                    else:
                        await self._large(fetch, progress)
                    break
                except ChecksumMismatch as e:
                    self.stats.error("checksum_mismatch")
                    if attempt == CHECK_ATTEMPTS - 1:
                        if isinstance(e, EtagMismatch):
                            raise ChecksumMismatch(
                                f"{e}: downloaded {CHECK_ATTEMPTS} times, never matching. If "
                                "this store's ETags are not MD5 digests, mount with "
                                "--no-etag-check") from None
                        raise
                    log.warning("%s: %s; fetching it again", fetch.key, e)
                self._reset(fetch)
            self.stats.count("fetched_objects")
            self.stats.count("bytes_from_store", fetch.size)
        except CacheFSError as e:
            log.warning("fetching %s failed: %s", fetch.key, e)
            self.stats.error(type(e).__name__)
            fetch.fail(e)
        except OSError as e:
            log.warning("fetching %s failed: %s", fetch.key, e)
            self.stats.error("OSError")
            fetch.fail(NoSpace(str(e)) if e.errno == 28 else CacheFSError(str(e)))
        except Exception as e:
            log.exception("fetching %s failed unexpectedly", fetch.key)
            fetch.fail(CacheFSError(f"{fetch.key}: {type(e).__name__}: {e}"))
        finally:
            self.active.pop((fetch.key, fetch.etag), None)
            self.stats.end(progress)
            if not fetch.done.is_set():  # cancelled at shutdown
                fetch.fail(CacheFSError("fetch cancelled"))
            if fetch.error is not None:
                self.events.fetch_failed(fetch.key)

    async def _origin_job(self, fetch: Fetch, info: OriginInfo, expected: str | None) -> None:
        progress = self.stats.begin("origin", fetch.key, fetch.size)
        try:
            assert self.origin is not None
            fetch.path = self.blobs.new_temp_path("origin")
            fetch.fd = os.open(fetch.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            state = {"builder": DigestBuilder()}

            def write(offset: int, data: bytes) -> None:
                if offset == 0 and state["builder"].size:
                    state["builder"] = DigestBuilder()
                    os.ftruncate(fetch.fd, 0)
                _pwrite_all(fetch.fd, data, offset)
                state["builder"].update(data)

            async def sink(offset: int, data: bytes) -> None:
                if offset == 0 and fetch.received.total():
                    self._reset(fetch)
                await trio.to_thread.run_sync(write, offset, data, limiter=self.disk)
                fetch.received.add(offset, offset + len(data))
                fetch.release_received()
                progress.done = offset + len(data)

            await self.origin.download(info, sink)
            digest, crcs = state["builder"].finish()
            if expected and digest != expected:
                raise ChecksumMismatch(f"{info.url}: SHA-256 is {digest}, expected {expected} "
                                       "(pinned): nothing kept, nothing uploaded")
            await self.blobs.commit(fetch.path, digest, fetch.size, crcs)
            self.stats.count("origin_fetches")
            self.stats.count("bytes_from_origin", fetch.size)
            fetch.digest = digest
            try:  # queue the upload before anyone learns the fetch is done
                await self.events.origin_fetched(fetch, info)
            except CacheFSError as e:
                log.warning("%s: fetched from its origin, but not queued for upload: %s",
                            fetch.key, e)
            fetch.finish(digest)
        except CacheFSError as e:
            log.warning("fetching %s from its origin failed: %s", fetch.key, e)
            self.stats.error("origin_" + type(e).__name__)
            fetch.fail(e)
        except OSError as e:
            log.warning("fetching %s from its origin failed: %s", fetch.key, e)
            fetch.fail(NoSpace(str(e)) if e.errno == 28 else CacheFSError(str(e)))
        finally:
            self.active.pop((fetch.key, fetch.etag), None)
            self.stats.end(progress)
            if not fetch.done.is_set():
                fetch.fail(CacheFSError("fetch cancelled"))
            if fetch.error is not None:
                self.events.fetch_failed(fetch.key)

    def _reset(self, fetch: Fetch) -> None:
        fetch.received = RangeSet()
        fetch.released = RangeSet()
        fetch.requested = RangeSet()
        fetch.verified_units = set()
        fetch.cursor, fetch.part = 0, MIN_PART

    async def _retrying(self, what: str, fn: Callable[[], T]) -> T:
        """``fn`` (blocking) in a worker thread, retried by the request policy."""
        return await retry(REQUEST, what,
                           lambda: trio.to_thread.run_sync(fn, limiter=self.s3),
                           on_retry=lambda e: self.stats.count("retries"))

    def _check_content(self, fetch: Fetch, info: ObjectInfo, sha: str,
                       etag_ok: bool | None) -> None:
        expected = expected_sha256(info.metadata) or fetch.expected_sha
        if expected and expected != sha:
            raise ChecksumMismatch(f"{fetch.key}: SHA-256 {sha[:16]}… does not match the "
                                   f"recorded {expected[:16]}…")
        if etag_ok is False and not expected:
            raise EtagMismatch(f"{fetch.key}: content does not match ETag {fetch.etag}", sha)

    def _checks_etag(self, info: ObjectInfo) -> bool:
        """ETags are MD5s of the content except for objects encrypted with SSE-KMS or SSE-C
        (and on stores configured otherwise: --etag-check off)."""
        return self.etag_is_md5 and not info.encrypted

    async def _small(self, fetch: Fetch, progress: Progress) -> None:

        def work() -> tuple[ObjectInfo, str, int, array, bool | None]:
            with self.store.open_read(fetch.key, etag=fetch.etag or None) as stream:
                chunks = []
                while chunk := stream.read(CHUNK):
                    chunks.append(chunk)
                info = stream.info
            data = b"".join(chunks)
            if len(data) != info.size:
                raise StoreUnavailable(f"{fetch.key}: got {len(data)} of {info.size} bytes")
            if zobject.is_compressed(info.metadata):
                sha, size, crcs = self._unpack_small(data, info)
                return info, sha, size, crcs, None
            builder = DigestBuilder()
            builder.update(data)
            sha, crcs = builder.finish()
            etag_ok = None
            if self._checks_etag(info):
                etag_check = EtagCheck(info.etag, info.size)
                if etag_check.possible:
                    etag_check.update(data)
                    etag_ok = etag_check.matches()
            expected = expected_sha256(info.metadata)
            if not self.blobs.has(sha) and expected in (None, sha):
                self._place_blob(sha, data)  # a mismatch is never kept (checked below)
            return info, sha, info.size, crcs, etag_ok

        try:
            info, sha, size, crcs, etag_ok = await self._retrying(f"GET {fetch.key}", work)
        except OSError as e:
            if e.errno != 28:  # ENOSPC: evict and try once more, else it is a real ENOSPC
                raise
            await self.blobs.make_room(max(fetch.size, 1 << 20))
            info, sha, size, crcs, etag_ok = await self._retrying(f"GET {fetch.key}", work)
        fetch.info = info
        self.events.object_info(info)
        self._check_content(fetch, info, sha, etag_ok)
        fetch.size = size
        self.blobs.register(sha, size, crcs)
        self.blobs.bind(fetch.key, fetch.etag, sha)
        await self.blobs.evict()
        fetch.finish(sha)

    def _unpack_small(self, data: bytes, info: ObjectInfo) -> tuple[str, int, array]:
        """A small compressed object, decompressed frame by frame into the blob tier."""
        location = zobject.index_location(info.metadata)
        if location is None:
            raise ChecksumMismatch(f"{info.key}: compressed object without an index")
        index = zobject.ZIndex.decode(data[location[0]:location[0] + location[1]])
        temp = self.blobs.new_temp_path("small")
        builder = DigestBuilder()
        with open(temp, "wb") as out:
            for number, (at, size) in enumerate(index.frames):
                plain = zobject.decompress_frame(data[at:at + size], index, number)
                builder.update(plain)
                out.write(plain)
        sha, crcs = builder.finish()
        if expected_sha256(info.metadata) not in (None, sha):
            temp.unlink()  # a mismatch is never kept (the caller reports it)
            return sha, builder.size, crcs
        dest = self.blobs.path(sha)
        dest.parent.mkdir(exist_ok=True, mode=0o700)
        os.chmod(temp, 0o600)
        os.replace(temp, dest)
        return sha, builder.size, crcs

    def _place_blob(self, sha: str, data: bytes) -> None:
        """Write a verified small blob into the tier (worker thread). No fsync: the per-block
        CRCs catch a torn file after a crash, and it can be fetched again."""
        dest = self.blobs.path(sha)
        dest.parent.mkdir(exist_ok=True, mode=0o700)
        temp = self.blobs.new_temp_path("small")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(temp, dest)

    async def _large(self, fetch: Fetch, progress: Progress) -> None:
        if fetch.path is None:
            fetch.path = self.blobs.new_temp_path("fetch")
            fetch.fd = os.open(fetch.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        # The first GET starts at 0 whatever the reader wants: it tells how the object is
        # stored (a compressed one is shorter than the file it holds), and the start is
        # wanted anyway.
        first = (0, min(fetch.size, MIN_PART))
        fetch.requested.add(*first)
        if fetch.cursor < first[1]:
            fetch.cursor, fetch.part = first[1], MIN_PART * 2
        info, head = await self._retrying(f"GET {fetch.key}",
                                          lambda: self._get_bytes(fetch, *first))
        fetch.info = info
        self.events.object_info(info)
        if zobject.is_compressed(info.metadata):
            await self._compressed(fetch, info, head, progress)
            return
        if info.size != fetch.size or len(head) != first[1] - first[0]:
            raise ObjectChanged(f"{fetch.key}: size changed from {fetch.size} to {info.size}")
        sha = expected_sha256(info.metadata) or fetch.expected_sha
        if sha and self.blobs.has(sha):  # same content already here under another key
            self.blobs.bind(fetch.key, fetch.etag, sha)
            fetch.via_blob = True
            fetch.finish(sha)
            return
        await trio.to_thread.run_sync(_pwrite_all, fetch.fd, head, first[0], limiter=self.disk)
        fetch.unit_crcs = decode_crcs(info.metadata.get("cachefs-crc"))
        can_check = bool(sha) or (self._checks_etag(info) and
                                  EtagCheck(info.etag, info.size).possible)
        fetch.hold_tail = fetch.unit_crcs is None and can_check
        await self._after_part(fetch, *first)
        check = EtagCheck(info.etag, info.size) if self._checks_etag(info) else None
        if check is not None and check.aligned_part and check.aligned_part <= 64 << 20:
            fetch.align = check.aligned_part  # each part's MD5 is taken as it downloads
        builder = DigestBuilder()
        await self._parallel(fetch, builder, None if fetch.align else check,
                             lambda: fetch.next_range(),
                             lambda part: self._part_task(fetch, part, progress))
        digest, crcs = builder.finish()
        etag_ok = None
        if check is not None and check.possible:
            if fetch.align:
                etag_ok = await trio.to_thread.run_sync(
                    check.matches_parts, fetch.size, fetch.range_md5,
                    lambda lo, hi: os.pread(fetch.fd, hi - lo, lo), limiter=self.cpu)
            else:
                etag_ok = check.matches()
        self._check_content(fetch, info, digest, etag_ok)
        await self.blobs.commit(fetch.path, digest, fetch.size, crcs,
                                bindings=[(fetch.key, fetch.etag)])
        fetch.finish(digest)

    async def _parallel(self, fetch: Fetch, builder: DigestBuilder, check: EtagCheck | None,
                        pick: Callable[[], tuple[int, int] | None],
                        task: Callable[[tuple[int, int]], Awaitable[None]]) -> None:
        """Run ``task`` for each range ``pick`` gives, several at once, hashing in order."""
        slots = trio.Semaphore(self.parallel)

        async def run(part: tuple[int, int]) -> None:
            try:
                await task(part)
            finally:
                slots.release()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._hash, fetch, builder, check)
                while True:
                    await slots.acquire()
                    part = pick()
                    if part is None:
                        slots.release()
                        break
                    nursery.start_soon(run, part)
        except BaseExceptionGroup as group:
            raise unwrap_group(group) from None

    def _get_bytes(self, fetch: Fetch, start: int, end: int) -> tuple[ObjectInfo, bytes]:
        """[start, end) of the object in memory (at most a part); shorter if the object is."""
        with self.store.open_read(fetch.key, start, end - start,
                                  etag=fetch.etag or None) as stream:
            chunks = []
            while chunk := stream.read(CHUNK):
                chunks.append(chunk)
            info = stream.info
        data = b"".join(chunks)
        if len(data) != min(end, info.size) - start:
            raise StoreUnavailable(f"{fetch.key}: got {len(data)} bytes of [{start}, {end})")
        return info, data

    async def _compressed(self, fetch: Fetch, info: ObjectInfo, head: bytes,
                          progress: Progress) -> None:
        """An object cachefs stored compressed: fetch its index, then the frames readers need
        first; the blob tier keeps the plain bytes."""
        location = zobject.index_location(info.metadata)
        if location is None:
            raise ChecksumMismatch(f"{fetch.key}: compressed object without an index")
        offset, length = location
        if offset + length <= len(head):
            raw = head[offset:offset + length]
        else:
            _, raw = await self._retrying(f"GET {fetch.key} index", lambda: self._get_bytes(
                fetch, offset, offset + length))
        index = zobject.ZIndex.decode(raw)
        assert fetch.path is not None
        self._reset(fetch)
        fetch.size = index.size
        fetch.unit_crcs = decode_crcs(info.metadata.get("cachefs-crc"))
        fetch.hold_tail = fetch.unit_crcs is None
        progress.total = index.size

        def pick() -> tuple[int, int] | None:
            count = len(index.frames)
            first = min(fetch.cursor // index.frame, max(count - 1, 0))
            for number in [*range(first, count), *range(0, first)]:
                start, end = index.frame_range(number)
                if not fetch.requested.covers(start, end):
                    fetch.requested.add(start, end)
                    fetch.cursor = end
                    return number, number
            return None

        async def frame_task(pair: tuple[int, int]) -> None:
            number = pair[0]
            at, size = index.frames[number]
            if at + size <= len(head):
                data = head[at:at + size]
            else:
                _, data = await self._retrying(f"GET {fetch.key} frame {number}",
                                               lambda: self._get_bytes(fetch, at, at + size))
            start, end = index.frame_range(number)

            def unpack() -> None:
                _pwrite_all(fetch.fd, zobject.decompress_frame(data, index, number), start)

            await trio.to_thread.run_sync(unpack, limiter=self.cpu)
            await self._after_part(fetch, start, end)
            progress.done = fetch.received.total()

        builder = DigestBuilder()
        await self._parallel(fetch, builder, None, pick, frame_task)
        digest, crcs = builder.finish()
        self._check_content(fetch, info, digest, None)
        await self.blobs.commit(fetch.path, digest, fetch.size, crcs,
                                bindings=[(fetch.key, fetch.etag)])
        fetch.finish(digest)

    async def _part_task(self, fetch: Fetch, part: tuple[int, int], progress: Progress) -> None:
        await self._part(fetch, *part)
        await self._after_part(fetch, *part)
        progress.done = fetch.received.total()

    async def _after_part(self, fetch: Fetch, start: int, end: int) -> None:
        fetch.received.add(start, end)
        if fetch.unit_crcs is not None:
            await self._check_units(fetch, start, end)
        fetch.release_received()

    async def _check_units(self, fetch: Fetch, start: int, end: int) -> None:
        assert fetch.unit_crcs is not None
        unit, crcs = fetch.unit_crcs
        todo = []
        for u in range(start // unit, (end - 1) // unit + 1):
            lo, hi = u * unit, min(fetch.size, (u + 1) * unit)
            if u not in fetch.verified_units and fetch.received.covers(lo, hi):
                todo.append((u, lo, hi))

        def check() -> None:
            for u, lo, hi in todo:
                if u >= len(crcs) or zlib.crc32(os.pread(fetch.fd, hi - lo, lo)) != crcs[u]:
                    raise ChecksumMismatch(f"{fetch.key}: bytes {lo}-{hi} fail their CRC")

        await trio.to_thread.run_sync(check, limiter=self.cpu)
        fetch.verified_units.update(u for u, _, _ in todo)

    async def _part(self, fetch: Fetch, start: int, end: int) -> ObjectInfo:
        """Download [start, end) into the fetch's file, resuming within the part on retry.

        With ``fetch.align`` set, the part's MD5 is taken here, as the bytes stream by, so
        the multipart ETag check costs no second pass and runs on several cores."""
        done = [start]
        digest: list[bytes] = []

        def work() -> ObjectInfo:
            md5 = hashlib.md5(usedforsecurity=False) if fetch.align and done[0] == start \
                else None
            with self.store.open_read(fetch.key, done[0], end - done[0],
                                      etag=fetch.etag or None) as stream:
                while done[0] < end:
                    chunk = stream.read(min(CHUNK, end - done[0]))
                    if not chunk:
                        raise StoreUnavailable(f"{fetch.key}: body ended at {done[0]} "
                                               f"of {end}")
                    _pwrite_all(fetch.fd, chunk, done[0])
                    if md5 is not None:
                        md5.update(chunk)
                    done[0] += len(chunk)
                if md5 is not None:
                    digest.append(md5.digest())
                return stream.info

        while True:
            try:
                info = await self._retrying(f"GET {fetch.key} [{start}-{end})", work)
                if digest:  # a part resumed after a failure has no MD5 of its own
                    fetch.range_md5[(start, end)] = digest[0]
                return info
            except OSError as e:
                if e.errno != 28:
                    raise
                await self.blobs.make_room(end - start)

    async def _hash(self, fetch: Fetch, builder: DigestBuilder, check: EtagCheck | None) -> None:
        pos = 0
        while pos < fetch.size:
            avail = fetch.received.end_of(pos)
            if avail <= pos:
                await fetch._changed.wait()
                if fetch.error is not None:
                    return
                continue
            def digest(at: int, stop: int) -> None:
                while at < stop:
                    data = os.pread(fetch.fd, min(BLOCK, stop - at), at)
                    builder.update(data)
                    if check is not None and check.possible:
                        check.update(data)
                    at += len(data)

            await trio.to_thread.run_sync(digest, pos, avail, limiter=self.cpu)
            pos = avail


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n

