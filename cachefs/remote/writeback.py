"""Write-back: getting closed files (and renames, deletes, directories) into the store.

Every change is first appended to a journal (``journal.log`` in the cache dir, fsynced) that names
the blob holding the content, then applied to the store by background workers, in order per key.
An operation leaves the journal only once the store has it, so nothing a program closed is lost
if the daemon dies: the next mount with the same cache dir replays what is left.

In ``sync`` mode the caller waits for its operation (close() returns once the object is in the
store, or fails with EIO); in ``async`` mode it returns once the journal has it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from ..errors import (
    AccessDenied,
    CacheFSError,
    Exists,
    InvalidArgument,
    InvalidName,
    NameTooLong,
    NotFound,
    TimedOut,
)
from ..metrics import Stats
from ..pack import zobject
from ..store import ObjectInfo, Store
from ..store.multipart import PART_SIZE, PARTS_IN_FLIGHT, upload_file
from ..store.retry import BACKGROUND
from ..tier.blobs import BlobTier, digest_path
from .journal import Journal, Op
from .streamup import StreamUpload

#: what the core holds of an operation (its record and the journal are in journal.py)
__all__ = ["Op", "WriteBack"]

log = logging.getLogger(__name__)

#: objects larger than this are uploaded in parts, several at once (store/multipart.py)
MULTIPART_THRESHOLD = PART_SIZE
#: smaller files are stored plain even with --compress: the index would outweigh the gain
COMPRESS_MIN = 4096
#: a caller waiting on its operation (sync mode) gives up after this many failed attempts
WAIT_ATTEMPTS = 3
#: refused operations kept for `cachefs status`
REFUSED_KEPT = 100

#: Store answers that no retry can change: after this many attempts the operation is dropped
#: from the journal (logged, and counted as refused). A key that is too long or a request the
#: store calls invalid fails the same way every time; access denied gets a few attempts, as
#: credentials may be renewed meanwhile.
REFUSED_AFTER: dict[type[CacheFSError], int] = {
    NameTooLong: 1,
    InvalidName: 1,
    InvalidArgument: 1,
    Exists: 1,  # a pack key another runner stored first: packs never replace each other
    AccessDenied: WAIT_ATTEMPTS,
}

class CorruptUpload(CacheFSError):
    """The content to upload no longer matches its digest: it is dropped, never stored."""


class WriteBack:
    def __init__(self, store: Store, blobs: BlobTier, cache_dir: Path, *,
                 s3: trio.CapacityLimiter, disk: trio.CapacityLimiter,
                 cpu: trio.CapacityLimiter | None = None, stats: Stats, workers: int = 8,
                 compress_level: int | None = None, timeout: float = 30.0) -> None:
        self.store = store
        self.blobs = blobs
        self.journal = Journal(cache_dir / Journal.NAME)
        self.s3 = s3
        self.disk = disk
        self.cpu = cpu or trio.CapacityLimiter(2)
        self.stats = stats
        self.workers = workers
        #: zstd level for objects written here (``--compress``), None to store them plain
        self.compress_level = compress_level
        #: a waiter gives up once nothing it waits for has moved for this long (``--timeout``)
        self.timeout = timeout
        self.queue: list[Op] = []
        self.by_key: dict[str, deque[Op]] = {}
        #: operations the store refused for good, newest last (for `cachefs status`)
        self.refused: deque[dict[str, Any]] = deque(maxlen=REFUSED_KEPT)
        self._seq = 0
        self._changed = trio.Event()
        self._running = 0
        #: called on the trio thread when an operation is in the store

        self._journal_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None

    # -- start-up ------------------------------------------------------------------------------

    def start(self, on_done: Callable[[Op], None] | None = None) -> list[Op]:
        """Load what a previous run left in the journal (blocking, before the mount answers);
        ``on_done`` is told as each of those operations finishes."""
        ops = []
        for rec in self.journal.load():
            op = Op(seq=rec["seq"], kind=rec["kind"], key=rec["key"], src=rec.get("src"),
                    digest=rec.get("digest"), size=rec.get("size", 0),
                    meta=dict(rec.get("meta") or {}), created=rec.get("created", time.time()),
                    replayed=True, on_done=on_done)
            if op.digest and not self.blobs.has(op.digest):
                log.error("journal: content of %s (%s) is missing from the blob tier; this "
                          "upload cannot be finished", op.key, op.digest[:16])
                self.journal.append({"done": op.seq}, durable=True)
                continue
            self._enqueue(op)
            ops.append(op)
            self._seq = max(self._seq, op.seq)
        if ops:
            log.info("resuming %d pending store operation(s) from the journal", len(ops))
        return ops

    # -- submitting ----------------------------------------------------------------------------

    def start_stream(self, key: str, meta: dict[str, str], fd: int) -> StreamUpload | None:
        """A multipart upload to feed while a file is written (None before ``run``)."""
        if self._nursery is None:
            return None
        return StreamUpload(self.store, key, meta, fd, part_size=PART_SIZE,
                            in_flight=PARTS_IN_FLIGHT, s3=self.s3, disk=self.disk,
                            nursery=self._nursery, stats=self.stats)

    def abort_stream(self, stream: StreamUpload) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(stream.abort)

    async def submit(self, kind: str, key: str, *, src: str | None = None,
                     digest: str | None = None, size: int = 0,
                     meta: dict[str, str] | None = None, stream: Any = None,
                     on_done: Callable[[Op], None] | None = None) -> Op:
        """Journal an operation (durably) and queue it. Returns at once; ``on_done`` is told
        when it leaves the queue."""
        self._seq += 1
        op = Op(self._seq, kind, key, src=src, digest=digest, size=size, meta=dict(meta or {}),
                stream=stream, on_done=on_done)
        if kind in ("put", "delete"):
            self._supersede(key)
        async with self._journal_lock:
            await trio.to_thread.run_sync(self.journal.append, op.record(), True,
                                          limiter=self.disk)
        self._enqueue(op)
        self.stats.count(f"writeback_{kind}")
        return op

    async def wait(self, op: Op, attempts: int = WAIT_ATTEMPTS) -> None:
        """Wait until ``op`` is in the store; raise its error after ``attempts`` failures.

        Also raise (EIO) once an operation ahead of it on the same key failed ``attempts``
        times, and TimedOut once nothing it waits for has made progress for ``timeout``
        seconds (everything ahead waits out a backoff): no store error holds a caller longer.
        The operation stays queued after such a failure and is retried in the background.
        """
        idle_since = trio.current_time()
        while not op.done.is_set():
            if op.attempts >= attempts and op.last_error:
                raise CacheFSError(f"{op.kind} {op.key}: {op.last_error}")
            ahead = self._ahead(op)
            failed = next((o for o in ahead if o.attempts >= attempts and o.last_error), None)
            if failed is not None:
                raise CacheFSError(f"{op.kind} {op.key}: waits for {failed.kind} {failed.key}, "
                                   f"which keeps failing: {failed.last_error}")
            now = trio.current_time()
            if self._moving(op, ahead):
                idle_since = now
            elif now - idle_since >= self.timeout:
                raise TimedOut(f"{op.kind} {op.key}: no progress for {self.timeout:.0f}s "
                               f"({op.last_error or 'waiting for earlier changes'})")
            with trio.move_on_after(max(0.0, idle_since + self.timeout - now)):
                await op.progress.wait()
        if op.error is not None:
            raise type(op.error)(str(op.error))

    def _ahead(self, op: Op) -> list[Op]:
        """The queued operations that must reach the store before ``op`` can start."""
        ahead: list[Op] = []
        for key in op.keys:
            for other in self.by_key.get(key, ()):
                if other is op:
                    break
                ahead.append(other)
        return ahead

    def _moving(self, op: Op, ahead: list[Op]) -> bool:
        """Is the store working towards ``op``: it or an operation ahead of it is running, or
        it only waits for a free worker (not for a retry after a failure)."""
        if op.started or any(o.started for o in ahead):
            return True
        now = trio.current_time()
        backing_off = any(o.not_before > now for o in (op, *ahead))
        return self._running > 0 and not backing_off

    def _enqueue(self, op: Op) -> None:
        if op.digest:
            self.blobs.pin(op.digest)
        self.queue.append(op)
        for key in op.keys:
            self.by_key.setdefault(key, deque()).append(op)
        self._kick()

    def withdraw(self, op: Op) -> bool:
        """Take back an operation that has not started (a sync caller gave up on it)."""
        if op.started or op.done.is_set():
            return False
        op.superseded = True
        self._finish(op)
        return True

    def _supersede(self, key: str) -> None:
        """A queued, not yet started put of ``key`` is moot once a newer put or delete comes."""
        for op in list(self.by_key.get(key, ())):
            if op.kind == "put" and not op.started and op.key == key:
                op.superseded = True
                self._finish(op)

    def _kick(self) -> None:
        event, self._changed = self._changed, trio.Event()
        event.set()

    # -- state for the core --------------------------------------------------------------------

    def pending_put(self, key: str) -> Op | None:
        """The newest pending operation that writes ``key`` (a put or a copy's target)."""
        ops = self.by_key.get(key)
        if ops and self.pending_kind(key) == "put":
            return ops[-1]
        return None

    def pending_under(self, prefix: str) -> dict[str, Op | None]:
        """Names directly below ``prefix`` that pending operations write: a file's newest put,
        or None for a directory that a pending key lies in. After a crash these exist only in
        the journal until they are uploaded, and a listing must still show them. (A scan of
        the pending keys: the journal is short next to the listings that ask.)"""
        found: dict[str, Op | None] = {}
        for key in self.by_key:
            if not key.startswith(prefix) or key == prefix or self.pending_kind(key) != "put":
                continue
            name, slash, _ = key[len(prefix):].partition("/")
            if slash:
                found.setdefault(name, None)
            else:
                found[name] = self.pending_put(key)
        return found

    def pending_kind(self, key: str) -> str | None:
        """'put' if the newest pending operation on ``key`` writes it, 'delete' if it removes it."""
        ops = self.by_key.get(key)
        if not ops:
            return None
        last = ops[-1]
        if last.kind == "delete" or (last.kind == "move" and last.src == key):
            return "delete"
        return "put"

    def pending(self) -> list[Op]:
        return list(self.queue)

    # -- workers -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        slots = trio.Semaphore(self.workers)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                op = self._next_ready()
                if op is None:
                    delay = self._next_retry_delay()
                    with trio.move_on_after(delay if delay is not None else float("inf")):
                        await self._changed.wait()
                    continue
                await slots.acquire()
                op.started = True
                self._running += 1
                nursery.start_soon(self._work, op, slots)

    def _next_ready(self) -> Op | None:
        now = trio.current_time()
        for op in self.queue:
            if op.started or op.not_before > now:
                continue
            if all(self.by_key[k][0] is op for k in op.keys):
                return op
        return None

    def _next_retry_delay(self) -> float | None:
        waiting = [op.not_before for op in self.queue if not op.started and op.not_before]
        if not waiting:
            return None
        return max(0.0, min(waiting) - trio.current_time())

    async def _work(self, op: Op, slots: trio.Semaphore) -> None:
        try:
            op.attempts += 1
            await self._apply(op)
        except CorruptUpload as e:
            log.error("%s", e)
            self.stats.error("upload_CorruptUpload")
            op.superseded = True
            self._finish(op)
        except CacheFSError as e:
            self._failed(op, e)
        except Exception as e:
            op.last_error = f"{type(e).__name__}: {e}"
            op.last_errno = errno.EIO
            log.exception("%s %s failed unexpectedly", op.kind, op.key)
            op.not_before = trio.current_time() + BACKGROUND.cap
            op.started = False
        else:
            self.stats.count(f"stored_{op.kind}")
            self._finish(op)
        finally:
            self._running -= 1
            slots.release()
            self._wake_waiters(op)
            self._kick()

    def _failed(self, op: Op, e: CacheFSError) -> None:
        """An attempt failed: retry after a backoff, or drop an operation the store refuses."""
        op.last_error, op.last_errno = str(e), e.errno
        self.stats.error("upload_" + type(e).__name__)
        refuse_after = next((n for cls, n in REFUSED_AFTER.items() if isinstance(e, cls)), None)
        if op.kind in ("copy", "move") and isinstance(e, NotFound):
            refuse_after = WAIT_ATTEMPTS  # its source is gone: nothing ahead will bring it back
        if refuse_after is not None and op.attempts >= refuse_after:
            self._refuse(op, e)
            return
        delay = BACKGROUND.delay(op.attempts - op.backoff_from)
        op.not_before = trio.current_time() + delay
        log.warning("%s %s failed (attempt %d, retrying in %.0fs): %s: %s", op.kind, op.key,
                    op.attempts, delay, errno.errorcode.get(e.errno, e.errno), e)
        op.started = False

    def _refuse(self, op: Op, e: CacheFSError) -> None:
        log.error("%s %s: the store refuses it (%s), so it is dropped from the journal and "
                  "never stored: %s", op.kind, op.key, errno.errorcode.get(e.errno, e.errno), e)
        self.stats.count("refused")
        self.refused.append(op.describe())
        op.error = e
        self._finish(op)

    def _wake_waiters(self, op: Op) -> None:
        """An attempt of ``op`` ended: its waiters, and those of everything queued behind it,
        look again (a failure ahead may be theirs to report)."""
        behind = {op}
        for key in op.keys:
            behind.update(self.by_key.get(key, ()))
        for other in behind:
            event, other.progress = other.progress, trio.Event()
            event.set()

    def _finish(self, op: Op) -> None:
        with contextlib.suppress(ValueError):
            self.queue.remove(op)
        for key in op.keys:
            ops = self.by_key.get(key)
            if ops is not None:
                with contextlib.suppress(ValueError):
                    ops.remove(op)
                if not ops:
                    del self.by_key[key]
        if op.digest:
            self.blobs.unpin(op.digest)
        if op.stream is not None and (op.superseded or op.error is not None):
            self.abort_stream(op.stream)
        op.stream = None
        self.journal.append({"done": op.seq}, durable=False)
        op.done.set()
        op.progress.set()
        self._kick()
        if op.on_done is not None:
            op.on_done(op)

    async def _apply(self, op: Op) -> None:
        # The core checked the key when it made the operation; one journaled by an older
        # version is refused here before any request. (A key too long to exist needs no delete.)
        if op.kind != "delete":
            self.store.check_key(op.key)
        if op.kind == "put" and "cachefs-pack" in op.meta:
            op.info = await self._put_pack(op)
        elif op.kind == "put":
            op.info = await self._put(op)
        elif op.kind == "delete":
            await trio.to_thread.run_sync(self.store.delete, op.key, limiter=self.s3)
        elif op.kind in ("copy", "move"):
            assert op.src is not None
            try:
                op.info = await trio.to_thread.run_sync(
                    self.store.copy, op.src, op.key, op.meta or None, limiter=self.s3)
            except NotFound:
                if op.kind == "copy":
                    raise
                # A retried move whose copy already happened and whose source is gone.
                op.info = await trio.to_thread.run_sync(self.store.head, op.key,
                                                        limiter=self.s3)
            if op.kind == "move":
                await trio.to_thread.run_sync(self.store.delete, op.src, limiter=self.s3)

    async def _put_pack(self, op: Op) -> ObjectInfo:
        """A pack is immutable: its key is written only if absent. Finding the same pack there
        (its SHA-256 in the metadata: an earlier attempt of this very op that succeeded though
        its answer was lost, or a crash before the journal said done) is success."""
        try:
            return await self._put(op, replace=False)
        except Exists:
            there = await trio.to_thread.run_sync(self.store.head, op.key, limiter=self.s3)
            if op.digest and there.metadata.get("cachefs-sha256") == op.digest:
                return ObjectInfo(op.key, op.size, there.etag, time.time(), dict(op.meta))
            raise

    async def _put(self, op: Op, replace: bool = True) -> ObjectInfo:
        if op.digest is None:  # directory marker, or a symlink whose target is its body
            meta = dict(op.meta)
            body = meta.pop("cachefs-body", "").encode()
            return await trio.to_thread.run_sync(self.store.put, op.key, body, meta,
                                                 limiter=self.s3)
        if op.stream is not None:
            stream, op.stream = op.stream, None
            try:
                info = await stream.complete(op.size)
                return ObjectInfo(op.key, op.size, info.etag, time.time(), stream.meta)
            except CacheFSError as e:
                log.info("%s: uploading it whole (%s)", op.key, e)
        path, size, meta = self.blobs.path(op.digest), op.size, dict(op.meta)
        if op.replayed:
            # A blob written before a crash may be torn: never upload what does not match.
            actual, _, _ = await trio.to_thread.run_sync(digest_path, path, limiter=self.cpu)
            if actual != op.digest:
                raise CorruptUpload(f"{op.key}: its content was damaged on local disk before "
                                    "it could be uploaded (the file is lost)")
            op.replayed = False
        temp = None
        if self.compress_level is not None and op.size >= COMPRESS_MIN and \
                "cachefs-pack" not in meta:  # a pack's frames are compressed already
            temp = self.blobs.new_temp_path("z")
            extra, size = await trio.to_thread.run_sync(self._compress, path, temp, op.size,
                                                        limiter=self.cpu)
            meta.update(extra)
            path = temp
        progress = self.stats.begin("upload", op.key, size)
        try:
            if size <= MULTIPART_THRESHOLD:
                data = await trio.to_thread.run_sync(path.read_bytes, limiter=self.disk)
                put = self.store.put if replace else self.store.put_new
                info = await trio.to_thread.run_sync(put, op.key, data, meta,
                                                     limiter=self.s3)
                progress.done = size
            else:
                info = await self._put_multipart(op.key, path, size, meta, progress, replace)
        finally:
            self.stats.end(progress)
            if temp is not None:
                await self.blobs.remove_file(temp)
        self.stats.count("bytes_to_store", size)
        return ObjectInfo(op.key, op.size, info.etag, time.time(), meta)

    def _compress(self, path: Path, temp: Path, size: int) -> tuple[dict[str, str], int]:
        assert self.compress_level is not None
        src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            dest = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                return zobject.compress_file(src, size, dest, self.compress_level)
            finally:
                os.close(dest)
        finally:
            os.close(src)

    async def _put_multipart(self, key: str, path: Path, size: int, meta: dict[str, str],
                             progress: Any, replace: bool = True) -> ObjectInfo:
        def sent(n: int) -> None:
            progress.done += n

        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return await upload_file(self.store, key, fd, size, meta, s3=self.s3,
                                     disk=self.disk, on_sent=sent, replace=replace)
        finally:
            os.close(fd)

    # -- draining ------------------------------------------------------------------------------

    async def drain(self, attempts: int = WAIT_ATTEMPTS) -> list[Op]:
        """Retry everything queued now, without waiting out its backoff (the store may be back:
        that is why someone asked), and wait for it; returns the operations that failed
        ``attempts`` more times."""
        targets = list(self.queue)
        limits = {op.seq: op.attempts + attempts for op in targets}
        for op in targets:
            op.not_before, op.backoff_from = 0.0, op.attempts
        self._kick()
        failed = []
        for op in targets:
            try:
                await self.wait(op, limits[op.seq])
            except CacheFSError:
                failed.append(op)
        return failed

    def close(self) -> None:
        self.journal.close()
