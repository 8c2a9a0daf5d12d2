"""The write-back journal: each store operation is one line, appended (fsynced) before it is
queued, and a ``done`` line once the store has it. What a mount left in it is replayed by the next
mount with the same cache dir; `cachefs umount` of a dead mount reads it to say what was pending.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from ..errors import CacheFSError
from ..store import ObjectInfo

#: what an operation does: put, delete, copy, or move (copy to key, then delete src)
KINDS = ("put", "delete", "copy", "move")
#: the journal's file name in the cache dir
JOURNAL = "journal.log"


@dataclasses.dataclass(eq=False)
class Op:
    seq: int
    kind: str  # put | delete | copy | move (copy to key, then delete src)
    key: str
    src: str | None = None
    digest: str | None = None
    size: int = 0
    meta: dict[str, str] = dataclasses.field(default_factory=dict)
    created: float = dataclasses.field(default_factory=time.time)
    # runtime
    attempts: int = 0
    started: bool = False
    superseded: bool = False
    last_error: str = ""
    last_errno: int = 0
    #: why the store refused it for good (it left the queue without being stored)
    error: CacheFSError | None = None
    not_before: float = 0.0
    #: attempts made before the last `sync`: backoff starts over from there
    backoff_from: int = 0
    info: ObjectInfo | None = None
    #: loaded from the journal at start: its blob is checked before it is uploaded
    replayed: bool = False
    #: parts already sent while the file was written (streamup.StreamUpload), not journaled
    stream: Any = None
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    progress: trio.Event = dataclasses.field(default_factory=trio.Event)
    #: told once the operation left the queue: stored, superseded or refused (not journaled:
    #: the submitter's; for an operation replayed from the journal, the one given to start)
    on_done: Callable[[Op], None] | None = dataclasses.field(default=None, repr=False)

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key, self.src) if self.src else (self.key,)

    def record(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind, "key": self.key, "src": self.src,
                "digest": self.digest, "size": self.size, "meta": self.meta,
                "created": self.created}

    def describe(self) -> dict[str, Any]:
        return {"op": self.kind, "key": self.key, "src": self.src, "size": self.size,
                "attempts": self.attempts, "error": self.last_error,
                "errno": errno.errorcode.get(self.last_errno, "") if self.last_errno else "",
                "age": round(time.time() - self.created, 1)}


def pending_records(path: Path) -> list[dict[str, Any]]:
    """The operations a journal file holds that are added and not done, oldest first; it is
    only read (`cachefs umount` lists them for a mount whose daemon died). A torn last line
    was never acknowledged to the writer, so it is skipped."""
    pending: dict[int, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_bytes().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("done") is not None:
                pending.pop(int(rec["done"]), None)
            elif rec.get("kind") in KINDS:
                pending[int(rec["seq"])] = rec
    return sorted(pending.values(), key=lambda r: r["seq"])


class Journal:
    """Append-only log of operations: ``add`` lines, then ``done`` lines once applied."""

    NAME = JOURNAL

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def load(self) -> list[dict[str, Any]]:
        """Operations added and not done, and the journal opened for appending."""
        records = pending_records(self.path)
        # Rewrite compactly so the log does not grow across runs.
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for rec in records:
                f.write(json.dumps(rec, separators=(",", ":")).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        os.chmod(self.path, 0o600)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        return records

    def append(self, record: dict[str, Any], durable: bool) -> None:
        os.write(self.fd, json.dumps(record, separators=(",", ":")).encode() + b"\n")
        if durable:
            os.fdatasync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
