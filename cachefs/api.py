"""Mount, unmount, sync and read stats from Python: for installers and test harnesses.

    import cachefs

    with cachefs.mounted("s3://ci-cache/proj", "/cache", endpoint="http://127.0.0.1:8333") as m:
        shutil.copytree(m.path / "toolchains/go", "/opt/go")
        print(m.stats()["counters"])

Settings are the keyword arguments, named as in the config file (``cache_dir``, ``cache_size``,
``read_only``…); what is not given comes from ``CACHEFS_*`` variables and the config file, as
for the command. The FUSE daemon must outlive the caller's stack and own its FUSE session, so
``mount`` starts it the way ``cachefs mount`` does, through that command in a child process
(``python -m cachefs mount``) that returns once the mount answers; that keeps the daemon out of
the caller's process tree and its exit codes (0 mounted, 1 a ``subtree`` miss, 2 an error) map
onto the exceptions below. ``sync`` and ``stats`` talk to the mount directly, through the
control attributes on its root.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .cli.util import mount_entry
from .config import flag_argv
from .daemon.control import ControlError, read_control
from .errors import CacheFSError

StrPath = str | os.PathLike[str]

#: settings naming local files: made absolute here, since the daemon runs with cwd "/"
PATH_SETTINGS = ("cache_dir", "key_file", "secret_file")


class MountError(CacheFSError):
    """A cachefs command failed; ``str()`` is its one-line reason, ``code`` its exit code."""

    code = 2


class CacheMiss(MountError):
    """``subtree`` named a key that is not in the store, and no ``restore_key`` matched."""

    code = 1


class SyncError(MountError):
    """Some changes kept failing to reach the store; ``report`` says which."""

    def __init__(self, message: str, report: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.report = dict(report)


@dataclasses.dataclass(frozen=True)
class Mount:
    """A running mount: where it is and which process serves it."""

    path: Path
    pid: int

    def stats(self) -> dict[str, Any]:
        return stats(self.path)

    def sync(self) -> dict[str, Any]:
        return sync(self.path)

    def unmount(self, *, lazy: bool = False, timeout: float = 300.0) -> None:
        unmount(self.path, lazy=lazy, timeout=timeout)


def settings_argv(settings: Mapping[str, Any]) -> list[str]:
    """The command-line flags for settings given as Python values (None means not given)."""
    return flag_argv(settings)


def mount(store: str | None, path: StrPath, *, config: StrPath | None = None,
          env: Mapping[str, str] | None = None, **settings: Any) -> Mount:
    """Mount ``store`` (``s3://BUCKET[/PREFIX]``, ``file:///DIR``, or None for the configured
    one) at ``path``, creating the directory; returns once the mount answers.

    ``env`` adds variables for the daemon (``CACHEFS_S3_KEY_ID``, ``CACHEFS_S3_SECRET``…)
    without changing this process's environment. Raises CacheMiss or MountError.
    """
    mountpoint = Path(path).absolute()
    mountpoint.mkdir(parents=True, exist_ok=True)
    for name in PATH_SETTINGS:
        if settings.get(name) is not None:
            settings[name] = Path(settings[name]).expanduser().absolute()
    argv = ["mount", *settings_argv({"store": store, **settings})]
    if config is not None:
        argv += ["--config", str(Path(config).absolute())]
    result = _run_cli([*argv, str(mountpoint)], env)
    if result.returncode == CacheMiss.code:
        raise CacheMiss(_reason(result))
    if result.returncode != 0:
        raise MountError(_reason(result))
    return Mount(mountpoint, int(_control(mountpoint, "pid")))


def unmount(path: StrPath, *, lazy: bool = False, timeout: float = 300.0) -> None:
    """Wait for pending uploads, unmount, and wait for the daemon to exit."""
    argv = ["umount", "--timeout", str(timeout), *(["--lazy"] if lazy else []),
            str(Path(path).absolute())]
    result = _run_cli(argv, None)
    if result.returncode != 0:
        raise MountError(_reason(result))


def sync(path: StrPath) -> dict[str, Any]:
    """Block until everything written is in the store; the report, or SyncError."""
    report = _control(Path(path), "sync")
    failed = report.get("failed") or []
    if failed or report.get("manifest_error"):
        raise SyncError(f"{len(failed)} change(s) are not in the store yet (they are retried)",
                        report)
    return dict(report)


def stats(path: StrPath) -> dict[str, Any]:
    """Hits, misses, bytes, transfers in flight and cache use, as `cachefs stats --json`."""
    return dict(_control(Path(path), "stats"))


@contextlib.contextmanager
def mounted(store: str | None, path: StrPath, **kwargs: Any) -> Iterator[Mount]:
    """``mount`` for the length of a ``with`` block; always unmounted and the daemon waited
    for, even when the block raises. An unmount failure is raised only if the block did not."""
    m = mount(store, path, **kwargs)
    try:
        yield m
    except BaseException:
        _stop(m, quiet=True)
        raise
    _stop(m, quiet=False)


# -- helpers --------------------------------------------------------------------------------


def _run_cli(argv: list[str], env: Mapping[str, str] | None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "cachefs", *argv], env=full_env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)


def _reason(result: subprocess.CompletedProcess[str]) -> str:
    lines = [x for x in result.stderr.strip().splitlines() if x.strip()]
    if not lines:
        return f"cachefs exited {result.returncode}"
    # the last message, not a detail line under it (such as the pending keys of a dead mount)
    messages = [x for x in lines if x.startswith("cachefs: ")] or lines
    return messages[-1].removeprefix("cachefs: ")


def _control(path: Path, name: str) -> Any:
    try:
        return read_control(path, name)
    except ControlError as e:
        raise MountError(str(e)) from None


def _stop(m: Mount, quiet: bool) -> None:
    """Unmount cleanly; if that fails, detach and stop the daemon so nothing is left behind."""
    try:
        unmount(m.path)
    except MountError:
        _force_stop(m)
        if not quiet:
            raise


def _force_stop(m: Mount) -> None:
    if mount_entry(m.path) is not None:  # answering or dead (ismount fails on a dead one)
        subprocess.run(["fusermount3", "-u", "-z", str(m.path)], capture_output=True)
    if not _is_daemon(m.pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(m.pid, signal.SIGTERM)  # the daemon drains uploads, then exits
    if not _wait_gone(m.pid, 60.0) and _is_daemon(m.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(m.pid, signal.SIGKILL)
        _wait_gone(m.pid, 10.0)


def _is_daemon(pid: int) -> bool:
    """Still our daemon (not gone, not a zombie, not a reused PID)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            alive = b"cachefs" in f.read()
        with open(f"/proc/{pid}/stat") as f:
            return alive and f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _is_daemon(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
