"""The blob tier: verified file contents on local disk, named by their SHA-256.

Layout under the cache dir (see ``LAYOUT_VERSION``)::

    blobs/ab/ab12...   complete blobs, named by the SHA-256 of their bytes, mode 0600
    tmp/               fetches and staged writes in progress; cleaned up at start

A blob is written to ``tmp/`` and renamed into ``blobs/`` only once it is complete and its digest
is known. The index (SQLite) records each blob's size, a CRC-32 per 1 MiB block and its last
access, and which (store key, ETag) it holds. Blocks are checked against their CRC when read back:
a blob that fails is discarded and the caller fetches it again; bad bytes are never served.

The cap (``--cache-size``) is kept by evicting least recently used blobs that no open file or
pending upload holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import shutil
import sqlite3
import time
import zlib
from array import array
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import trio

from ..errors import ChecksumMismatch, NoSpace
from .db import Database

log = logging.getLogger(__name__)

#: Unit of verification: each block's CRC-32 is checked when it is read back from disk.
BLOCK = 1 << 20
#: Verified blocks kept in memory: many small files share a block (pack frames), and a block
#: read and checked once then serves all of them without another disk read or CRC.
BLOCK_CACHE_BYTES = 64 << 20
#: Reads up to this size are tried on the event loop with RWF_NOWAIT, which never blocks: it
#: succeeds only when the bytes are already in the page cache (else a worker thread reads).
#: A thread hop costs ~1 ms when other threads are busy; this costs microseconds.
NOWAIT_MAX = 256 << 10
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)


def read_nowait(fd: int, size: int, offset: int) -> bytes | None:
    """``size`` bytes at ``offset`` if the page cache has them all, else None; never blocks."""
    if not _RWF_NOWAIT:
        return None
    buffer = bytearray(size)
    try:
        got = os.preadv(fd, [buffer], offset, _RWF_NOWAIT)
    except (BlockingIOError, OSError):
        return None
    return bytes(buffer[:got]) if got == size else None

SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY, size INTEGER NOT NULL, crcs BLOB NOT NULL, atime REAL NOT NULL);
CREATE TABLE IF NOT EXISTS bindings (
    key TEXT NOT NULL, etag TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (key, etag));
CREATE INDEX IF NOT EXISTS bindings_digest ON bindings (digest);
"""


@dataclasses.dataclass
class BlobEntry:
    size: int
    crcs: array
    atime: float
    pins: int = 0


class DigestBuilder:
    """SHA-256 and per-block CRCs of bytes fed in order (from a worker thread)."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.crcs = array("I")
        self.size = 0
        self._crc = 0

    def update(self, data: bytes | memoryview) -> None:
        self.sha.update(data)
        view = memoryview(data)
        while view:
            room = BLOCK - self.size % BLOCK
            piece, view = view[:room], view[room:]
            self._crc = zlib.crc32(piece, self._crc)
            self.size += len(piece)
            if self.size % BLOCK == 0:
                self.crcs.append(self._crc)
                self._crc = 0

    def finish(self) -> tuple[str, array]:
        crcs = array("I", self.crcs)
        if self.size % BLOCK or self.size == 0:
            crcs.append(self._crc)
        return self.sha.hexdigest(), crcs


def digest_fd(fd: int, size: int | None = None) -> tuple[str, int, array]:
    """Digest, size and block CRCs of an open file (worker thread)."""
    builder = DigestBuilder()
    pos = 0
    while size is None or pos < size:
        want = BLOCK if size is None else min(BLOCK, size - pos)
        data = os.pread(fd, want, pos)
        if not data:
            break
        builder.update(data)
        pos += len(data)
    digest, crcs = builder.finish()
    return digest, builder.size, crcs


def digest_path(path: Path) -> tuple[str, int, array]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return digest_fd(fd)
    finally:
        os.close(fd)


class BlobTier:
    def __init__(self, cache_dir: Path, db: Database, capacity: int,
                 disk: trio.CapacityLimiter, cpu: trio.CapacityLimiter) -> None:
        self.root = cache_dir / "blobs"
        self.tmp = cache_dir / "tmp"
        self.db = db
        self.capacity = capacity
        self.disk = disk
        self.cpu = cpu
        self.entries: OrderedDict[str, BlobEntry] = OrderedDict()  # LRU order, oldest first
        self.bindings: dict[tuple[str, str], str] = {}
        self.usage = 0
        self.evictions = 0
        self._dirty_atime: set[str] = set()
        # Index rows not yet written: flushed by flush() every few seconds and at unmount. A
        # crash loses at most these rows; the blobs themselves are re-indexed from disk.
        self._new_rows: set[str] = set()
        self._new_bindings: dict[tuple[str, str], str] = {}
        self.blocks: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._block_bytes = 0

    # -- start-up ------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the index and reconcile it with the disk (blocking; before the mount answers)."""
        for d in (self.root, self.tmp):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Leftovers of interrupted fetches and writes: the journal keeps what must survive.
        for leftover in self.tmp.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        self.db.script(SCHEMA)
        rows = self.db.call(lambda c: c.execute(
            "SELECT digest, size, crcs, atime FROM blobs ORDER BY atime").fetchall())
        missing = []
        for digest, size, crcs, atime in rows:
            path = self.path(digest)
            try:
                st = path.stat()
            except FileNotFoundError:
                missing.append(digest)
                continue
            if st.st_size != size:
                log.warning("blob %s has the wrong size on disk: discarded", digest[:16])
                path.unlink(missing_ok=True)
                missing.append(digest)
                continue
            self.entries[digest] = BlobEntry(size, array("I", crcs), atime)
            self.usage += size
        if missing:
            self.db.call(self._forget_rows, missing)
        self.bindings = {
            (k, e): d for k, e, d in self.db.call(
                lambda c: c.execute("SELECT key, etag, digest FROM bindings").fetchall())
            if d in self.entries
        }
        self._adopt_strays()

    def _adopt_strays(self) -> None:
        """Blobs on disk the index does not know (index lost, or a crash before the insert)."""
        adopted: list[str] = []
        for sub in self.root.iterdir():
            if not sub.is_dir():
                continue
            for path in sub.iterdir():
                name = path.name
                if name in self.entries:
                    continue
                digest, size, crcs = digest_path(path)
                if digest != name:
                    log.warning("blob %s does not match its name: discarded", name[:16])
                    path.unlink(missing_ok=True)
                    continue
                self._insert(digest, size, crcs)
                adopted.append(digest)
        if adopted:
            log.info("blob tier: re-indexed %d blob(s) found on disk", len(adopted))
            self.db.call(self._write_rows, [(d, self.entries[d]) for d in adopted])

    # -- queries -------------------------------------------------------------------------------

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def lookup(self, key: str, etag: str) -> str | None:
        digest = self.bindings.get((key, etag))
        return digest if digest in self.entries else None

    def has(self, digest: str) -> bool:
        return digest in self.entries

    def entry(self, digest: str) -> BlobEntry | None:
        return self.entries.get(digest)

    def pin(self, digest: str) -> None:
        self.entries[digest].pins += 1
        self.touch(digest)

    def unpin(self, digest: str) -> None:
        entry = self.entries.get(digest)
        if entry and entry.pins > 0:
            entry.pins -= 1

    def touch(self, digest: str) -> None:
        entry = self.entries.get(digest)
        if entry:
            entry.atime = time.time()
            self.entries.move_to_end(digest)
            self._dirty_atime.add(digest)

    def new_temp_path(self, label: str) -> Path:
        return self.tmp / f"{label}.{os.getpid()}.{time.monotonic_ns()}"

    async def remove_file(self, path: Path) -> None:
        """Delete a file of the cache dir (a temp file, a build log), if there, in a worker
        thread: unlinking a large file frees its extents, which takes a while. Shielded, so the
        ``finally`` of a cancelled caller still cleans up."""
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_unlink_if_there, path, limiter=self.disk)

    # -- adding --------------------------------------------------------------------------------

    async def commit(self, temp: Path, digest: str, size: int, crcs: array,
                     bindings: Iterable[tuple[str, str]] = (), durable: bool = False) -> None:
        """Move a complete, digested temp file into the tier and record it.

        ``durable`` fsyncs first: needed for content that exists nowhere else yet (a written
        file waiting for upload); fetched blobs are checked by their CRCs instead.
        """
        dest = self.path(digest)

        def move() -> None:
            if dest.exists():
                temp.unlink(missing_ok=True)
                return
            dest.parent.mkdir(exist_ok=True, mode=0o700)
            os.chmod(temp, 0o600)
            if durable:
                with open(temp, "rb") as f:
                    os.fsync(f.fileno())
            os.replace(temp, dest)
            if durable:
                fd = os.open(dest.parent, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

        await trio.to_thread.run_sync(move, limiter=self.disk)
        self.register(digest, size, crcs)
        for key, etag in bindings:
            self.bind(key, etag, digest)
        await self.evict()

    def register(self, digest: str, size: int, crcs: array) -> None:
        """Record a blob already placed at ``path(digest)``."""
        if digest not in self.entries:
            self._insert(digest, size, crcs)
            self._new_rows.add(digest)
        self.touch(digest)

    def _insert(self, digest: str, size: int, crcs: array) -> None:
        self.entries[digest] = BlobEntry(size, crcs, time.time())
        self.usage += size

    def bind(self, key: str, etag: str, digest: str) -> None:
        """Remember that (key, etag) holds ``digest``."""
        if self.bindings.get((key, etag)) != digest:
            self.bindings[(key, etag)] = digest
            self._new_bindings[(key, etag)] = digest

    async def flush(self) -> None:
        """Write new index rows, bindings and access times (batched, one transaction)."""
        rows = [(d, self.entries[d]) for d in self._new_rows if d in self.entries]
        bindings = [(k, e, d) for (k, e), d in self._new_bindings.items() if d in self.entries]
        atimes = [(self.entries[d].atime, d) for d in self._dirty_atime if d in self.entries]
        self._new_rows.clear()
        self._new_bindings.clear()
        self._dirty_atime.clear()
        if not (rows or bindings or atimes):
            return

        def write(conn: sqlite3.Connection) -> None:
            self._write_rows(conn, rows)
            conn.executemany("INSERT OR REPLACE INTO bindings VALUES (?, ?, ?)", bindings)
            conn.executemany("UPDATE blobs SET atime = ? WHERE digest = ?", atimes)

        await self.db.run(write)

    @staticmethod
    def _write_rows(conn: sqlite3.Connection, rows: list[tuple[str, BlobEntry]]) -> None:
        conn.executemany("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?, ?)",
                         [(d, e.size, e.crcs.tobytes(), e.atime) for d, e in rows])

    @staticmethod
    def _forget_rows(conn: sqlite3.Connection, digests: list[str]) -> None:
        conn.executemany("DELETE FROM blobs WHERE digest = ?", [(d,) for d in digests])
        conn.executemany("DELETE FROM bindings WHERE digest = ?", [(d,) for d in digests])

    # -- removing ------------------------------------------------------------------------------

    async def discard(self, digest: str, reason: str) -> None:
        """Drop a blob that failed verification (or is no longer wanted)."""
        entry = self.entries.pop(digest, None)
        if entry is None:
            return
        log.warning("blob %s discarded: %s", digest[:16], reason)
        self._forget_blocks({digest})
        self.usage -= entry.size
        self.bindings = {k: d for k, d in self.bindings.items() if d != digest}
        self._dirty_atime.discard(digest)
        self._new_rows.discard(digest)
        await trio.to_thread.run_sync(self._unlink, digest, limiter=self.disk)
        await self.db.run(self._forget_rows, [digest])

    def cached_block(self, digest: str, index: int) -> bytes | None:
        block = self.blocks.get((digest, index))
        if block is not None:
            self.blocks.move_to_end((digest, index))
        return block

    def cache_block(self, digest: str, index: int, data: bytes) -> None:
        key = (digest, index)
        if key in self.blocks:
            return
        self.blocks[key] = data
        self._block_bytes += len(data)
        while self._block_bytes > BLOCK_CACHE_BYTES:
            _, old = self.blocks.popitem(last=False)
            self._block_bytes -= len(old)

    def _forget_blocks(self, digests: set[str]) -> None:
        for key in [k for k in self.blocks if k[0] in digests]:
            self._block_bytes -= len(self.blocks.pop(key))

    def _unlink(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    async def evict(self, need: int = 0, limit: int | None = None) -> int:
        """Evict LRU unpinned blobs until usage + need fits ``limit`` (default: the cap).

        Returns the bytes freed.
        """
        limit = self.capacity if limit is None else limit
        victims = []
        freed = 0
        for digest, entry in self.entries.items():
            if self.usage - freed + need <= limit:
                break
            if entry.pins:
                continue
            victims.append(digest)
            freed += entry.size
        if not victims:
            return 0
        for digest in victims:
            entry = self.entries.pop(digest)
            self.usage -= entry.size
            self._dirty_atime.discard(digest)
            self._new_rows.discard(digest)
        victim_set = set(victims)
        self._forget_blocks(victim_set)
        self.bindings = {k: d for k, d in self.bindings.items() if d not in victim_set}
        self.evictions += len(victims)
        log.debug("evicted %d blob(s), %d bytes", len(victims), freed)

        def unlink_all() -> None:
            for digest in victims:
                self._unlink(digest)

        await trio.to_thread.run_sync(unlink_all, limiter=self.disk)
        await self.db.run(self._forget_rows, victims)
        return freed

    async def make_room(self, need: int) -> None:
        """After ENOSPC: free up to ``need`` bytes of unpinned blobs, even below the cap.

        Raises NoSpace only when there was nothing to evict, so the caller retries otherwise.
        """
        if await self.evict(need=need, limit=self.usage) == 0:
            raise NoSpace("disk full and nothing left in the blob tier to evict")

    # -- reading -------------------------------------------------------------------------------

    def open_reader(self, digest: str) -> BlobReader:
        """A verified reader; the caller must close it. Pins the blob while open.

        Raises FileNotFoundError for a blob evicted (or being evicted) since it was found.
        """
        if digest not in self.entries:
            raise FileNotFoundError(f"blob {digest[:12]} left the blob tier")
        fd = os.open(self.path(digest), os.O_RDONLY | os.O_CLOEXEC)
        self.pin(digest)
        return BlobReader(self, digest, fd)

    async def verify(self, digest: str, discard: bool = True) -> bool:
        """Re-hash a whole blob (``cachefs verify``); discards it if it is wrong."""
        path = self.path(digest)
        try:
            actual, _, _ = await trio.to_thread.run_sync(digest_path, path, limiter=self.cpu)
        except FileNotFoundError:
            actual = "missing"
        if actual != digest:
            if discard:
                await self.discard(digest, f"content does not match its digest ({actual[:16]})")
            return False
        return True


class BlobReader:
    """Reads one blob, checking each 1 MiB block against its CRC the first time it is read."""

    def __init__(self, tier: BlobTier, digest: str, fd: int) -> None:
        self.tier = tier
        self.digest = digest
        self.fd = fd
        entry = tier.entries[digest]
        self.size = entry.size
        self.crcs = entry.crcs

    async def read(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        first = offset // BLOCK
        last = (end - 1) // BLOCK
        if first == last:
            block = self.tier.cached_block(self.digest, first)
            if block is not None:
                start = offset - first * BLOCK
                return block[start:start + end - offset]
        span = min(self.size, (last + 1) * BLOCK) - first * BLOCK
        data = None
        if span <= NOWAIT_MAX:
            cached = read_nowait(self.fd, span, first * BLOCK)
            if cached is not None:
                data = self._check_blocks(cached, first, last)
        if data is None:
            data = await trio.to_thread.run_sync(self._read_blocks, first, last,
                                                 limiter=self.tier.disk)
        self.tier.touch(self.digest)
        for i in range(first, last + 1):
            self.tier.cache_block(self.digest, i, data[(i - first) * BLOCK:(i - first + 1) * BLOCK])
        start = offset - first * BLOCK
        return data[start:start + end - offset]

    def _read_blocks(self, first: int, last: int) -> bytes:
        start = first * BLOCK
        return self._check_blocks(
            os.pread(self.fd, min(self.size, (last + 1) * BLOCK) - start, start), first, last)

    def _check_blocks(self, data: bytes, first: int, last: int) -> bytes:
        view = memoryview(data)
        for i in range(first, last + 1):
            block = view[(i - first) * BLOCK:(i - first + 1) * BLOCK]
            if len(block) != min(BLOCK, self.size - i * BLOCK) or zlib.crc32(block) != self.crcs[i]:
                raise ChecksumMismatch(f"blob {self.digest[:16]} block {i} fails its checksum")
        return data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.tier.unpin(self.digest)


def _unlink_if_there(path: Path) -> None:
    path.unlink(missing_ok=True)
