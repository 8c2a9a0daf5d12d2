"""Mount records: which daemon serves a mount point, from which cache dir and store.

A daemon killed with SIGKILL (or by the OOM killer) cannot say anything; the kernel then answers
"Transport endpoint is not connected" at its mount point. The record it wrote when it mounted is
what lets `cachefs umount` / `cachefs mount` clear that dead mount and say which changes its
journal still holds. One small JSON file per mount point under
``$XDG_STATE_HOME/cachefs/mounts/`` (default ``~/.local/state``), written when the mount is made
and removed when it is cleanly unmounted; a record whose mount is gone is harmless, and is
replaced by the next mount at that point.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
from pathlib import Path

from ..config import default_state_dir

#: what the kernel answers at a FUSE mount point whose daemon is gone (ECONNABORTED once the
#: connection was aborted through /sys/fs/fuse/connections)
DEAD_ERRNOS = frozenset({errno.ENOTCONN, errno.ECONNABORTED})


@dataclasses.dataclass(frozen=True)
class MountRecord:
    mountpoint: str
    pid: int
    cache_dir: str
    store: str


def records_dir() -> Path:
    return default_state_dir() / "mounts"


def record_path(mountpoint: Path) -> Path:
    # A digest, not the path itself: mount points can be long or contain any byte.
    name = hashlib.sha256(os.fsencode(mountpoint)).hexdigest()[:32]
    return records_dir() / f"{name}.json"


def write(record: MountRecord) -> None:
    """Write atomically (temp file, fsync, rename): a reader sees the old record or the new."""
    path = record_path(Path(record.mountpoint))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps(dataclasses.asdict(record), indent=1).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read(mountpoint: Path) -> MountRecord | None:
    """The record for ``mountpoint``, or None if there is none (or it is unreadable)."""
    try:
        doc = json.loads(record_path(mountpoint).read_text())
        record = MountRecord(mountpoint=str(doc["mountpoint"]), pid=int(doc["pid"]),
                             cache_dir=str(doc["cache_dir"]), store=str(doc["store"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if record.mountpoint == str(mountpoint) else None


def remove(mountpoint: Path, pid: int | None = None) -> None:
    """Remove the record (only if daemon ``pid`` wrote it, when given)."""
    if pid is not None:
        record = read(mountpoint)
        if record is None or record.pid != pid:
            return
    with contextlib.suppress(FileNotFoundError):
        record_path(mountpoint).unlink()
