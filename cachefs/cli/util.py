"""Pieces every `cachefs` subcommand shares: exit codes, the one-line Failure, config flags,
the mount's xattr control channel, dead-mount detection and a terminal progress bar."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config import FIELDS, Config, load
from ..daemon import mountrec
from ..daemon.control import ControlError, read_control

OK, MISS, FAIL = 0, 1, 2
#: `cachefs pack` to a key that exists: "it is there already", the other answer to a question
#: a shell asks (the same code as a miss, as `mkdir` without -p has one code for both)
EXISTS = 1
#: unmounted (or a dead mount cleared), but closed files are still in the write-back journal
PENDING = 3
#: a dead mount of another file system is in the way; cachefs leaves it alone
NOT_OURS = 4

#: the file system type our mounts show in /proc/self/mountinfo (fuse, subtype=cachefs)
FSTYPE = "fuse.cachefs"
MOUNTINFO = Path("/proc/self/mountinfo")


class Failure(Exception):
    """A one-line error for the user, with an exit code."""

    def __init__(self, message: str, code: int = FAIL) -> None:
        super().__init__(message)
        self.code = code


#: how to reach a store, besides its URL (--store, or a command's STORE target)
STORE_FLAGS = ["endpoint", "region", "key_file", "secret_file", "timeout", "connections"]
#: ``command(name, func, summary, epilog)``: adds one subcommand to the parser (cli/main.py)
Command = Callable[[str, Callable[[argparse.Namespace], int], str, str], argparse.ArgumentParser]


def help_text(text: str) -> str:
    return textwrap.dedent(text).strip() + "\n"


def config_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    for field in FIELDS:
        if field.name not in names:
            continue
        flag = "--" + field.name.replace("_", "-")
        if field.parse.__name__ == "parse_bool":
            parser.add_argument(flag, action="store_const", const=True, default=None,
                                help=field.help)
            parser.add_argument("--no-" + flag[2:], dest=field.name, action="store_const",
                                const=False, help=argparse.SUPPRESS)
        elif field.parse.__name__ == "parse_list":
            parser.add_argument(flag, action="append", default=None, metavar="VALUE",
                                help=field.help + " (repeatable)")
        else:
            parser.add_argument(flag, default=None, metavar=field.name.upper(), help=field.help)
    parser.add_argument("--config", metavar="FILE",
                        help="TOML config file (default: ~/.config/cachefs/config.toml)")


def load_config(args: argparse.Namespace) -> Config:
    flags = {f.name: getattr(args, f.name, None) for f in FIELDS}
    return load(flags, config_file=getattr(args, "config", None))


def mount_control(mountpoint: str, name: str) -> Any:
    """``user.cachefs.NAME`` of the mount at ``mountpoint``, or Failure (daemon/control.py)."""
    try:
        return read_control(mountpoint, name)
    except ControlError as e:
        raise Failure(str(e)) from None


@dataclasses.dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo."""

    mountpoint: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \040, \011, \012, \134
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_entry(path: Path) -> MountEntry | None:
    """The mount at ``path`` (the topmost, if several are stacked), from the mount table
    rather than stat(), which fails at a dead mount."""
    target = os.path.abspath(path)
    try:
        lines = MOUNTINFO.read_text().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        fields = line.split(" ")
        # id parent major:minor root MOUNTPOINT options [optional fields...] - FSTYPE SOURCE ...
        if len(fields) < 10 or "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        if len(fields) > sep + 2 and _unescape(fields[4]) == target:
            found = MountEntry(target, fields[sep + 1], _unescape(fields[sep + 2]))
    return found


def dead_mount(path: Path) -> MountEntry | None:
    """The mount at ``path`` if it is a FUSE mount whose daemon is gone, else None."""
    entry = mount_entry(path)
    if entry is None or not entry.fstype.startswith("fuse"):
        return None
    # statfs always goes to the daemon; stat() may be answered from the kernel's attribute
    # cache for a while after the daemon died.
    try:
        os.statvfs(path)
    except OSError as e:
        if e.errno in mountrec.DEAD_ERRNOS:
            return entry
    return None


def detach_command(path: Path) -> list[str]:
    """A lazy unmount, which is what clears a dead FUSE mount (the daemon cannot answer)."""
    if shutil.which("fusermount3"):
        return ["fusermount3", "-u", "-z", str(path)]
    return ["umount", "-l", str(path)]


@dataclasses.dataclass(frozen=True)
class ClearedMount:
    """A dead cachefs mount that was cleared, and what its journal still holds."""

    path: Path
    record: mountrec.MountRecord | None
    #: journal records added and not done; None when no record says which cache dir it used
    pending: list[dict[str, Any]] | None

    def daemon(self) -> str:
        return f"its daemon, pid {self.record.pid}, had died" if self.record \
            else "its daemon had died"


def clear_dead_mount(path: Path) -> ClearedMount | None:
    """If ``path`` is a dead mount: a cachefs one is detached (its journal and blob tier are
    kept for the next mount), another file system's is refused with the command that clears
    it (Failure, exit NOT_OURS). None if nothing dead is mounted there."""
    entry = dead_mount(path)
    if entry is None:
        return None
    command = shlex.join(detach_command(path))
    if entry.fstype != FSTYPE:
        raise Failure(f"{path} is a dead {entry.fstype} mount of {entry.source}, not cachefs, so "
                      f"cachefs leaves it alone: clear it with `{command}`", NOT_OURS)
    result = subprocess.run(detach_command(path), capture_output=True, text=True)
    if dead_mount(path) is not None:
        reason = result.stderr.strip() or f"{command} exited {result.returncode}"
        raise Failure(f"{path} is a dead cachefs mount and `{command}` did not clear it: "
                      f"{reason}")
    record = mountrec.read(path)
    pending = None
    if record is not None:
        from ..remote.journal import JOURNAL, pending_records

        pending = pending_records(Path(record.cache_dir) / JOURNAL)
        mountrec.remove(path)
    return ClearedMount(path, record, pending)


def describe_op(record: dict[str, Any]) -> str:
    """A journal record as one line: ``put KEY``, ``move SRC -> KEY``."""
    src = record.get("src")
    return f"{record['kind']:6} {src} -> {record['key']}" if src else \
        f"{record['kind']:6} {record['key']}"


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def find_mount(path: Path) -> tuple[Path, str]:
    """The cachefs mount containing ``path`` (which may not exist yet) and the relative path."""
    path = Path(os.path.abspath(path))
    probe = path.parent
    while not os.path.ismount(probe):
        if probe == probe.parent:
            raise Failure(f"{path} is not inside a mount")
        probe = probe.parent
    mount_control(str(probe), "pid")  # a cachefs mount, or Failure
    return probe, path.relative_to(probe).as_posix()


class Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty()
        self.color = self.enabled and not os.environ.get("NO_COLOR")

    def update(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        width = 30
        filled = int(width * done / total)
        bar = "#" * filled + "-" * (width - filled)
        if self.color:
            bar = f"\033[32m{bar[:filled]}\033[0m{bar[filled:]}"
        print(f"\r{self.label} [{bar}] {human(done)}/{human(total)}", end="",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def watch_transfer(mountpoint: Path, key_suffix: str, progress: Progress,
                    done: threading.Event, what: str | None = None) -> None:
    while not done.wait(0.2):
        with contextlib.suppress(Failure, OSError):
            for item in mount_control(str(mountpoint), "stats").get("in_flight", []):
                if item["key"].endswith(key_suffix) and what in (None, item["what"]):
                    progress.update(item["done"], item["total"])
