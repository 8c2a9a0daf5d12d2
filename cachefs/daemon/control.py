"""The mount's control channel read from outside: the ``user.cachefs.*`` attributes its root
answers (``pid``, ``status``, ``stats``, ``sync``…, see fuse/xattrs.py). The one reader that the
CLI, the Python API and the daemon's own start-up wait share, so each failure reads the same
everywhere. No pyfuse3 here: the CLI uses it where FUSE is absent.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from pathlib import Path
from typing import Any

from ..errors import CacheFSError
from ..fuse.xattrs import NS
from .mountrec import DEAD_ERRNOS

#: errnos of a path that is not (yet) a cachefs mount root: no such attribute there, or no
#: extended attributes at all
_NOT_OURS = frozenset({errno.ENODATA, errno.ENOTSUP})


class ControlError(CacheFSError):
    """A control attribute could not be read; ``str()`` is one line for the user, ``os_errno``
    the errno getxattr failed with."""

    def __init__(self, message: str, os_errno: int) -> None:
        super().__init__(message)
        self.os_errno = os_errno


class NotACachefsMount(ControlError):
    """The path is not the root of a cachefs mount."""


class DeadMount(ControlError):
    """A mount whose daemon is gone: every request fails with ENOTCONN."""


class NoSuchControl(ControlError):
    """A cachefs mount that does not answer this name (a daemon of another version, say)."""


def read_control(mountpoint: str | os.PathLike[str], name: str) -> Any:
    """The value of ``user.cachefs.NAME`` on the mount root: parsed JSON if it is JSON, else
    the text. Raises NotACachefsMount, DeadMount, NoSuchControl, or ControlError."""
    path = Path(mountpoint).absolute()
    try:
        raw = os.getxattr(path, NS + name)
    except OSError as e:
        raise _error(path, name, e) from None
    text = raw.decode(errors="replace")
    with contextlib.suppress(ValueError):
        return json.loads(text)
    return text


def _error(path: Path, name: str, e: OSError) -> ControlError:
    code = e.errno or errno.EIO
    if code in DEAD_ERRNOS:
        return DeadMount(f"{path}: {e.strerror}: its daemon is gone; `cachefs umount {path}` "
                         "clears the mount and lists what was pending", code)
    if code in _NOT_OURS:
        if name != "pid" and _answers(path):
            return NoSuchControl(f"{path}: this cachefs mount does not answer {NS}{name}", code)
        return NotACachefsMount(f"{path} is not a cachefs mount", code)
    return ControlError(f"{path}: {e.strerror}", code)


def _answers(path: Path) -> bool:
    try:
        return bool(os.getxattr(path, NS + "pid"))
    except OSError:
        return False


#: a mount that is not up yet, or still starting: wait_mounted keeps waiting through these
_STARTING = frozenset({errno.ENODATA, errno.ENOTCONN, errno.ENOENT, errno.EIO})


def wait_mounted(mountpoint: Path, pid: int | None, timeout: float = 30.0) -> bool:
    """True once ``mountpoint`` answers as a cachefs mount; False after ``timeout`` seconds or
    once the daemon ``pid`` (a child of this process) has exited. Used by `cachefs mount`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.path.ismount(mountpoint) and read_control(mountpoint, "pid"):
                return True
        except ControlError as e:
            if e.os_errno not in _STARTING:
                raise
        if pid is not None:
            with contextlib.suppress(ChildProcessError):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    return False
        time.sleep(0.05)
    return False
