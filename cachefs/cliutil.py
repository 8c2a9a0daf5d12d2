"""Pieces every `cachefs` subcommand shares: exit codes, the one-line Failure, config flags,
the mount's xattr control channel and a terminal progress bar."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import FIELDS, Config, load

OK, MISS, FAIL = 0, 1, 2


class Failure(Exception):
    """A one-line error for the user, with an exit code."""

    def __init__(self, message: str, code: int = FAIL) -> None:
        super().__init__(message)
        self.code = code


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
    path = Path(mountpoint).absolute()
    try:
        raw = os.getxattr(path, "user.cachefs." + name)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP):
            raise Failure(f"{path} is not a cachefs mount") from None
        raise Failure(f"{path}: {e.strerror}") from None
    text = raw.decode()
    with contextlib.suppress(ValueError):
        return json.loads(text)
    return text


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
