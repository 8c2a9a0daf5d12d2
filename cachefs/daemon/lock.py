"""One process per cache dir: the lock every user of a cache dir takes, and its errors.

Kept apart from the daemon so the CLI (`cachefs clear`, `verify`) takes the same lock without
importing pyfuse3, which a machine without FUSE may lack.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import CacheFSError

#: written into the cache dir; a cache dir with another layout is refused, never reused
LAYOUT = "cachefs cache dir, layout 1\n"


class MountError(CacheFSError):
    """Mounting failed for a reason the user can fix; the message is the one line we print."""


class CacheDirBusy(MountError):
    """Another cachefs process holds the cache dir."""


@contextlib.contextmanager
def cache_dir_lock(cache_dir: Path) -> Iterator[None]:
    """One daemon per cache dir: the blob tier and journal are not shared between processes."""
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(cache_dir, 0o700)
    version = cache_dir / "LAYOUT"
    if version.exists() and version.read_text() != LAYOUT:
        raise MountError(f"cache dir {cache_dir} has an unknown layout "
                         f"({version.read_text().strip()!r}); use another --cache-dir")
    if not version.exists():
        version.write_text(LAYOUT)
        version.chmod(0o600)
    lock_path = cache_dir / "lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        os.close(fd)
        raise CacheDirBusy(f"cache dir {cache_dir} is in use by another cachefs ({holder})") \
            from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
    try:
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def mount_lock(cache_dir: Path) -> Iterator[None]:
    """The cache dir lock for a mount: a busy cache dir is a MountError with the fix in it."""
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(cache_dir_lock(cache_dir))
    except CacheDirBusy as e:
        raise MountError(f"{e}: give this mount its own --cache-dir") from None
    with stack:
        yield
