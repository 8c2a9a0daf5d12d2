"""Listings and attributes kept in the cache dir, so a remount starts from what it knew.

A directory's row records when it was last listed from the store; its entries hold what the mount
shows for each name. Rows are written in batches (``flush``) from the trio side's dirty set; a
crash loses at most the last few seconds of listings, which the next listing restores.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import Any

import trio

from ..nodes import Kind, Node, PackDir
from .db import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS dirs (
    path TEXT PRIMARY KEY, listed_at REAL NOT NULL, manifest_etag TEXT);
CREATE TABLE IF NOT EXISTS entries (
    dir TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (dir, name));
CREATE TABLE IF NOT EXISTS manifest_dirty (
    dir TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY (dir, name));
"""

#: the root's own attributes are kept as this name in the root's entries
SELF = "."


def encode_entry(node: Node) -> str:
    data: dict[str, Any] = {
        "k": node.kind.letter, "s": node.size, "m": node.mode, "u": node.uid, "g": node.gid,
        "t": node.mtime_ns, "src": node.source,
    }
    if node.atime_ns is not None:
        data["at"] = node.atime_ns
    if node.etag is not None:
        data["e"] = node.etag
    if node.digest:
        data["d"] = node.digest
    if node.target is not None:
        data["l"] = node.target
    if node.xattrs:
        data["x"] = node.xattrs
    if node.origin_url:
        data["o"] = node.origin_url
    if node.attrs_from != "default":
        data["a"] = node.attrs_from
    if node.pack_dir is PackDir.PACK:
        data["pk"] = 1
    elif node.pack_dir is PackDir.TARZST:
        data["pk"] = "tar.zst"
    return json.dumps(data, separators=(",", ":"))


def decode_entry(text: str) -> dict[str, Any]:
    data = json.loads(text)
    return {
        "kind": Kind.from_letter(data["k"]), "size": data.get("s", 0), "mode": data["m"],
        "uid": data["u"], "gid": data["g"], "mtime_ns": data["t"], "ctime_ns": data["t"],
        "atime_ns": data.get("at"),
        "etag": data.get("e"), "digest": data.get("d"), "target": data.get("l"),
        "xattrs": dict(data.get("x") or {}), "source": data.get("src", "store"),
        "origin_url": data.get("o"), "attrs_from": data.get("a", "default"),
        "pack_dir": {1: PackDir.PACK, "tar.zst": PackDir.TARZST}.get(data.get("pk")),

    }


class MetadataCache:
    """Listings kept in the cache dir for the next mount. A node's ``listed_at`` is on the trio
    clock, which starts anew with each process; the rows keep wall-clock time, converted here,
    so a remount knows how old each listing is."""

    def __init__(self, db: Database, clock: Callable[[], float] = trio.current_time,
                 wall: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        self.wall = wall
        self.dirty: dict[str, Node] = {}  # dir path -> dir node whose rows must be rewritten
        self.dropped: set[str] = set()  # dir paths (and below) whose rows must go

    def start(self) -> None:
        self.db.script(SCHEMA)

    async def load(self, path: str) -> tuple[float, str | None, list[tuple[str, dict[str, Any]]]] \
            | None:
        """The stored listing of ``path``: (listed_at, manifest_etag, [(name, attrs)])."""

        def read(conn: sqlite3.Connection) -> Any:
            row = conn.execute("SELECT listed_at, manifest_etag FROM dirs WHERE path = ?",
                               (path,)).fetchone()
            if row is None:
                return None
            # The root's own attributes are kept as its entry SELF: not a child.
            entries = conn.execute("SELECT name, data FROM entries WHERE dir = ? AND name != ?",
                                   (path, SELF)).fetchall()
            return row[0], row[1], entries

        found = await self.db.run(read)
        if found is None:
            return None
        listed_at, manifest_etag, rows = found
        entries = [(name, decode_entry(data)) for name, data in rows]
        return self._from_wall(listed_at), manifest_etag, entries

    async def load_self(self) -> dict[str, Any] | None:
        row = await self.db.run(lambda c: c.execute(
            "SELECT data FROM entries WHERE dir = '' AND name = ?", (SELF,)).fetchone())
        return decode_entry(row[0]) if row else None

    def _to_wall(self, listed_at: float) -> float:
        return listed_at + (self.wall() - self.clock())  # NEVER (-inf) stays NEVER

    def _from_wall(self, stored: float) -> float:
        return stored - (self.wall() - self.clock())

    def mark(self, directory: Node) -> None:
        """Rewrite this directory's rows at the next flush (not inside packs: their tables
        of contents are kept instead)."""
        if directory.children is not None and directory.listed_at != float("inf") and \
                directory.attached:
            self.dirty[directory.path()] = directory

    def drop(self, path: str) -> None:
        """Forget a directory and everything below it (rmdir, rename away)."""
        self.dropped.add(path)
        for p in [p for p in self.dirty if p == path or p.startswith(path + "/")]:
            del self.dirty[p]

    async def flush(self, root: Node) -> None:
        dropped = sorted(self.dropped)
        self.dropped.clear()
        rows = []
        for node in list(self.dirty.values()):
            if node.children is None or not node.attached:
                continue
            rows.append((node.path(), self._to_wall(node.listed_at), node.manifest_etag,
                         [(name, encode_entry(c)) for name, c in node.children.items()]))
        self.dirty.clear()
        root_row = encode_entry(root)
        if not (dropped or rows):
            return

        def write(conn: sqlite3.Connection) -> None:
            for path in dropped:
                like = _like_prefix(path)
                conn.execute("DELETE FROM dirs WHERE path = ? OR path LIKE ? ESCAPE '\\'",
                             (path, like))
                conn.execute("DELETE FROM entries WHERE dir = ? OR dir LIKE ? ESCAPE '\\'",
                             (path, like))
            for path, listed_at, manifest_etag, entries in rows:
                conn.execute("INSERT OR REPLACE INTO dirs VALUES (?, ?, ?)",
                             (path, listed_at, manifest_etag))
                conn.execute("DELETE FROM entries WHERE dir = ? AND name != ?", (path, SELF))
                conn.executemany("INSERT INTO entries VALUES (?, ?, ?)",
                                 [(path, name, data) for name, data in entries])
            conn.execute("INSERT OR REPLACE INTO entries VALUES ('', ?, ?)", (SELF, root_row))

        await self.db.run(write)

    # -- manifest bookkeeping (names whose attributes the store's manifest lacks) --------------

    async def save_manifest_dirty(self, pairs: Iterable[tuple[str, str]]) -> None:
        items = list(pairs)
        if items:
            await self.db.run(lambda c: c.executemany(
                "INSERT OR IGNORE INTO manifest_dirty VALUES (?, ?)", items))

    async def clear_manifest_dirty(self, directory: str, names: Iterable[str]) -> None:
        items = [(directory, n) for n in names]
        await self.db.run(lambda c: c.executemany(
            "DELETE FROM manifest_dirty WHERE dir = ? AND name = ?", items))

    async def load_manifest_dirty(self) -> dict[str, set[str]]:
        rows = await self.db.run(lambda c: c.execute(
            "SELECT dir, name FROM manifest_dirty").fetchall())
        result: dict[str, set[str]] = {}
        for directory, name in rows:
            result.setdefault(directory, set()).add(name)
        return result


def _like_prefix(path: str) -> str:
    escaped = path.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "/%" if path else "%"
