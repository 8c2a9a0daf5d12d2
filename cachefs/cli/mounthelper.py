"""`mount.fuse.cachefs`: what mount(8) runs for `mount -t fuse.cachefs` and /etc/fstab lines.

mount(8) calls ``mount.fuse.cachefs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]``. Without that helper
in /sbin, mount(8) runs mount.fuse3, which runs ``cachefs SOURCE MOUNTPOINT -o OPTIONS`` (found on
the system PATH it resets to); ``cli/entry.py`` sends that form here too, so both read the
options the same way. SOURCE is the store
URL (``s3://BUCKET[/PREFIX]`` or ``file:///DIR``; ``cachefs`` or ``none`` means the configured
store). Each option ``name=value`` is the cachefs setting of that name, so ``cache_size=20G`` is
``--cache-size 20G`` and ``restore_key=a,restore_key=b`` repeats the flag; a bare ``name`` turns a
boolean setting on, ``ro`` is ``read_only``, ``config=FILE`` reads a config file. The options that
mount(8) and systemd keep for themselves (``_netdev``, ``noauto``, ``nofail``, ``x-systemd.*``…)
are ignored; anything else is refused, unless ``-s`` (sloppy) is given.

Exit codes are cachefs's, which mount(8) passes on: 0 mounted, 1 a ``subtree=`` miss, 2 anything
else (unknown option, bad value, mount failed), with one line on stderr saying why.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import sys
from collections.abc import Sequence
from typing import Any

from ..api import settings_argv
from ..config import FIELD_BY_NAME, load, parse_bool, parse_list
from ..errors import ConfigError
from . import main as cli

PROG = "mount.fuse.cachefs"
FAIL = 2

#: options of mount(8), libmount and systemd that are not cachefs's business: the kernel or
#: FUSE decides them (nosuid, nodev), or they only steer when and whether mount runs
IGNORED = frozenset({
    "rw", "defaults", "auto", "noauto", "nofail", "_netdev", "user", "nouser", "users", "owner",
    "group", "exec", "noexec", "suid", "nosuid", "dev", "nodev", "atime", "noatime", "relatime",
    "norelatime", "strictatime", "nostrictatime", "diratime", "nodiratime", "lazytime",
    "nolazytime", "sync", "async", "dirsync", "silent", "loud", "iversion", "noiversion",
    "mand", "nomand", "default_permissions",
})
IGNORED_PREFIXES = ("x-", "X-", "comment=")
#: store URL schemes cachefs opens
SCHEMES = ("s3://", "file://")
#: SOURCE values that mean "the store from the config file or environment"
PLACEHOLDERS = frozenset({"", "cachefs", "none"})


class UsageError(Exception):
    """A mistake in the command line or the options: one line, exit code 2."""


@dataclasses.dataclass
class Invocation:
    source: str
    mountpoint: str
    options: list[str]
    fake: bool = False
    sloppy: bool = False
    verbose: bool = False


def split_options(text: str) -> list[str]:
    """Split ``a,b=c,d="x,y"`` at commas outside double quotes, as libmount does."""
    items, current, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            items.append(current)
            current = ""
        else:
            current += ch
    items.append(current)
    return [item for item in items if item]


def parse_argv(argv: Sequence[str], prog: str = PROG) -> Invocation:
    positionals: list[str] = []
    options: list[str] = []
    flags: set[str] = set()
    args = iter(argv)
    for arg in args:
        if arg in ("-o", "-t", "-N"):
            value = next(args, None)
            if value is None:
                raise UsageError(f"{arg} needs a value")
            if arg == "-o":
                options += split_options(value)
            elif arg == "-N":
                raise UsageError("mounting in another namespace (-N) is not supported")
        elif arg.startswith("-o") and len(arg) > 2:
            options += split_options(arg[2:])
        elif arg.startswith("-") and len(arg) > 1:
            unknown = set(arg[1:]) - set("sfnv")
            if unknown:
                raise UsageError(f"unknown flag {arg} (usage: {prog} SOURCE MOUNTPOINT "
                                 "[-sfnv] [-o OPTIONS])")
            flags |= set(arg[1:])
        else:
            positionals.append(arg)
    if len(positionals) != 2:
        raise UsageError(f"usage: {prog} SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]")
    return Invocation(positionals[0], positionals[1], options, fake="f" in flags,
                      sloppy="s" in flags, verbose="v" in flags)


def _setting(settings: dict[str, Any], name: str, value: str | None) -> None:
    field = FIELD_BY_NAME[name]
    if field.parse is parse_bool:
        try:
            settings[name] = parse_bool(True if value is None else value)
        except ConfigError as e:
            raise UsageError(f"option {name}: {e}") from None
        return
    if value is None or value == "":
        raise UsageError(f"option {name} needs a value ({name}=...)")
    if field.parse is parse_list:
        settings.setdefault(name, []).append(value)
    else:
        settings[name] = value


def option_settings(options: Sequence[str], sloppy: bool) -> tuple[dict[str, Any], str | None,
                                                                    list[str]]:
    """(cachefs settings, config file, ignored options) for the ``-o`` options."""
    settings: dict[str, Any] = {}
    config: str | None = None
    ignored: list[str] = []
    for option in options:
        name, eq, value = option.partition("=")
        key = name.replace("-", "_")
        if name in IGNORED or option.startswith(IGNORED_PREFIXES):
            ignored.append(option)
        elif name == "ro" and not eq:
            settings["read_only"] = True
        elif key == "config" and eq:
            config = value
        elif key in FIELD_BY_NAME:
            _setting(settings, key, value if eq else None)
        elif sloppy:
            ignored.append(option)
        else:
            raise UsageError(f"unknown option {option!r}: cachefs takes "
                             f"{', '.join(FIELD_BY_NAME)}, config and ro (see docs/DEPLOY.md)")
    return settings, config, ignored


def mount_argv(inv: Invocation) -> tuple[list[str], list[str]]:
    """The ``cachefs`` arguments for an invocation, and the options it ignored."""
    settings, config, ignored = option_settings(inv.options, inv.sloppy)
    if inv.source.startswith(SCHEMES):
        if "store" in settings:
            raise UsageError("the store is given twice: as SOURCE and as store=")
        settings["store"] = inv.source
    elif inv.source not in PLACEHOLDERS:
        raise UsageError(f"SOURCE {inv.source!r} is not a store URL (s3://BUCKET[/PREFIX] or "
                         "file:///DIR; 'cachefs' for the configured store)")
    argv = ["mount", *settings_argv(settings)]
    if config is not None:
        argv += ["--config", config]
    return [*argv, inv.mountpoint], ignored


def is_mount_form(argv: Sequence[str]) -> bool:
    """Whether ``cachefs`` was called as ``cachefs SOURCE MOUNTPOINT [-o OPTIONS]``: the way
    mount.fuse3 runs the program named by the type ``fuse.cachefs`` when no
    ``/sbin/mount.fuse.cachefs`` exists. A store URL or placeholder is never a command name."""
    return len(argv) >= 2 and (argv[0].startswith(SCHEMES) or argv[0] in PLACEHOLDERS - {""})


def check_only(args: argparse.Namespace, prog: str = PROG) -> int:
    """``-f``: everything but the mount, so a bad value fails the same way."""
    try:
        load({name: getattr(args, name, None) for name in FIELD_BY_NAME}, config_file=args.config)
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return FAIL
    return 0


def run(argv: Sequence[str], prog: str = PROG) -> int:
    try:
        inv = parse_argv(argv, prog)
        cachefs_argv, ignored = mount_argv(inv)
    except UsageError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return FAIL
    if inv.verbose:
        if ignored:
            print(f"{prog}: ignoring {','.join(ignored)}", file=sys.stderr)
        print(f"{prog}: cachefs {' '.join(cachefs_argv)}", file=sys.stderr)
    if inv.fake:
        return check_only(cli.build_parser().parse_args(cachefs_argv), prog)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # mount(8) is silent when it works, unless -v
        code = cli.main(cachefs_argv)
    if inv.verbose:
        print(out.getvalue(), end="", file=sys.stderr)
    return code


def main() -> int:
    return run(sys.argv[1:])
