"""One SQLite connection for the cache dir's index, used from worker threads one call at a time.

The index only holds what can be rebuilt (blob digests, listings); pending uploads live in the
journal directory instead, so a damaged index never loses data. A damaged or foreign database file
is moved aside and a new one created.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 1


class Database:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.limiter = trio.CapacityLimiter(1)
        self.conn = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            conn = self._connect()
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            conn.execute("PRAGMA quick_check").fetchone()
            if version not in (0, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"schema version {version}, expected {SCHEMA_VERSION}")
            if version == 0:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            return conn
        except sqlite3.DatabaseError as e:
            aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
            log.warning("cache index %s is unusable (%s): moved to %s, rebuilding",
                        self.path, e, aside.name)
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    src.rename(str(aside) + suffix)
            conn = self._connect()
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            return conn

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.path.chmod(0o600)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in one transaction, here (startup, or inside a worker thread)."""
        with self._lock:
            self.conn.execute("BEGIN")
            try:
                result = fn(self.conn, *args)
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
            if isinstance(result, sqlite3.Cursor):
                # A cursor must not outlive the lock: freed later on another thread, it resets
                # its statement while a worker uses the connection (SQLITE_MISUSE).
                result.close()
                return None  # type: ignore[return-value]
            return result

    def script(self, sql: str) -> None:
        """Run schema statements (outside a transaction: executescript commits on its own)."""
        with self._lock:
            self.conn.executescript(sql)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in one transaction in a worker thread."""
        return await trio.to_thread.run_sync(self.call, fn, *args, limiter=self.limiter)

    def close(self) -> None:
        with self._lock:
            self.conn.close()
