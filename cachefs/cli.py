"""The `cachefs` command.

Exit codes, for shell scripts to branch on: 0 ok; 1 "not there" where a command asks whether
something is there (a miss); 2 an operational error (bad flag, store unreachable, mount failed).
A user mistake is reported as one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import select
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import FIELDS, Config, flag_argv, load
from .errors import CacheFSError, ConfigError

OK, MISS, FAIL = 0, 1, 2


class Failure(Exception):
    """A one-line error for the user, with an exit code."""

    def __init__(self, message: str, code: int = FAIL) -> None:
        super().__init__(message)
        self.code = code


def _help(text: str) -> str:
    return textwrap.dedent(text).strip() + "\n"


# -- shared helpers -------------------------------------------------------------------------


def _config_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
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


def _load_config(args: argparse.Namespace) -> Config:
    flags = {f.name: getattr(args, f.name, None) for f in FIELDS}
    return load(flags, config_file=getattr(args, "config", None))


def _mount_control(mountpoint: str, name: str) -> Any:
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


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# -- mount / umount -------------------------------------------------------------------------


def _daemon_argv(config: Config, mountpoint: str) -> list[str]:
    settings = {field.name: getattr(config, field.name) for field in FIELDS}
    return [sys.executable, "-m", "cachefs", "mount", "--foreground", *flag_argv(settings),
            mountpoint]


def cmd_mount(args: argparse.Namespace) -> int:
    config = _load_config(args)
    from . import daemon

    if args.foreground:
        daemon.setup_logging(config.log_level)
        return daemon.run(config, args.mountpoint, ready_fd=args.ready_fd)
    mountpoint = str(Path(args.mountpoint).absolute())
    cache_dir = Path(config.cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_path = cache_dir / "cachefs.log"
    read_end, write_end = os.pipe()
    with open(log_path, "ab") as log_file:
        os.chmod(log_path, 0o600)
        proc = subprocess.Popen(
            [*_daemon_argv(config, mountpoint)[:-1], "--ready-fd", str(write_end), mountpoint],
            pass_fds=(write_end,), stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            start_new_session=True, cwd="/")
    os.close(write_end)
    message = _read_line(read_end, timeout=120)
    os.close(read_end)
    if message.startswith("ok") and daemon.wait_mounted(Path(mountpoint), proc.pid):
        info = json.loads(message[2:].strip() or "{}")
        what = config.store
        if "key" in info:
            kind = "pack" if info["pack"] else "prefix"
            hit = "exact hit" if info["exact"] else "restored from a restore key, not an exact hit"
            what = f"{kind} {info['key']} ({hit})"
        print(f"cachefs: mounted {what} at {mountpoint} (pid {proc.pid}, log {log_path})")
        return OK
    if message.startswith("miss: "):
        raise Failure(message[len("miss: "):], MISS)
    if message.startswith("error: "):
        raise Failure(message[len("error: "):])
    proc.poll()
    tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
    raise Failure("the mount daemon exited before the mount answered" +
                  (": " + " | ".join(tail) if tail else f" (see {log_path})"))


def _read_line(fd: int, timeout: float) -> str:
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def cmd_umount(args: argparse.Namespace) -> int:
    mountpoint = Path(args.mountpoint).absolute()
    if not os.path.ismount(mountpoint):
        raise Failure(f"{mountpoint} is not mounted")
    pid = int(_mount_control(str(mountpoint), "pid"))
    report: dict[str, Any] = {}
    if not args.no_sync:
        report = _mount_control(str(mountpoint), "sync")
    command = ["fusermount3", "-u", *(["-z"] if args.lazy else []), str(mountpoint)]
    if shutil.which("fusermount3") is None:
        command = ["umount", *(["-l"] if args.lazy else []), str(mountpoint)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        reason = result.stderr.strip() or f"{command[0]} failed"
        raise Failure(f"cannot unmount {mountpoint}: {reason}"
                      + (" (close what uses it, or use --lazy)" if "busy" in reason else ""))
    deadline = time.monotonic() + args.timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise Failure(f"unmounted, but the daemon (pid {pid}) is still finishing after "
                          f"{args.timeout:g}s; its log says why")
        time.sleep(0.05)
    failed = report.get("failed") or []
    if failed:
        raise Failure(f"unmounted, but {len(failed)} change(s) are not in the store yet: they "
                      "are kept in the cache dir and resume at the next mount that uses it")
    print(f"cachefs: unmounted {mountpoint}")
    return OK


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# -- talking to a running mount -------------------------------------------------------------


def cmd_sync(args: argparse.Namespace) -> int:
    report = _mount_control(args.mountpoint, "sync")
    if args.json:
        print(json.dumps(report, indent=2))
    failed = report.get("failed") or []
    for op in failed:
        print(f"cachefs: not stored: {op['op']} {op['key']}: {op['error']}", file=sys.stderr)
    if failed or report.get("manifest_error"):
        return FAIL
    if not args.json:
        print("cachefs: everything written is in the store")
    return OK


def cmd_status(args: argparse.Namespace) -> int:
    status = _mount_control(args.mountpoint, "status")
    if args.json:
        print(json.dumps(status, indent=2))
        return OK
    pending = status.get("pending", [])
    if not pending:
        print("nothing pending: everything written is in the store")
    for op in pending:
        err = f"  (failed {op['attempts']}x: {op['error']})" if op["error"] else ""
        print(f"{op['op']:6} {op['key']}  {_human(op['size'])}  {op['age']:.0f}s{err}")
    return OK


def _print_stats(stats: dict[str, Any]) -> None:
    counters = stats.get("counters", {})
    cache = stats.get("cache", {})
    print(f"store      {stats.get('store')}  {'(OFFLINE)' if stats.get('offline') else ''}")
    print(f"cache      {_human(cache.get('bytes', 0))} of {_human(cache.get('capacity', 0))} "
          f"in {cache.get('blobs', 0)} blobs, {cache.get('evictions', 0)} evicted")
    print(f"hits       local {counters.get('hits_local', 0)}  "
          f"store {counters.get('hits_store', 0)}  "
          f"origin misses {counters.get('origin_misses', 0)} "
          f"(held for approval {counters.get('origin_misses_held', 0)})")
    print(f"bytes      from store {_human(counters.get('bytes_from_store', 0))}  "
          f"from origin {_human(counters.get('bytes_from_origin', 0))}  "
          f"to store {_human(counters.get('bytes_to_store', 0))}")
    print(f"pending    {stats.get('pending_uploads', 0)} upload(s), "
          f"{stats.get('fetches_in_flight', 0)} fetch(es) in flight")
    for item in stats.get("in_flight", []):
        pct = 100 * item["done"] / item["total"] if item["total"] else 100
        print(f"  {item['what']:7} {item['key']}  {pct:5.1f}% of {_human(item['total'])}")
    errors = stats.get("errors", {})
    if errors:
        print("errors     " + "  ".join(f"{k} {v}" for k, v in errors.items()))


def prometheus_text(stats: dict[str, Any], mountpoint: str) -> str:
    """`cachefs stats --prometheus`: the text exposition format, e.g. for node_exporter's
    textfile collector."""
    label = f'mountpoint="{mountpoint}"'
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP cachefs_{name} {help_text}")
        lines.append(f"# TYPE cachefs_{name} {kind}")
        for labels, value in samples:
            joined = ",".join(filter(None, [label, labels]))
            lines.append(f"cachefs_{name}{{{joined}}} {value}")

    counters = stats.get("counters", {})
    cache = stats.get("cache", {})
    metric("events_total", "counter", "Counted events (hits, fetches, bytes, retries...).",
           [(f'event="{k}"', v) for k, v in sorted(counters.items())])
    metric("errors_total", "counter", "Errors by kind.",
           [(f'kind="{k}"', v) for k, v in sorted(stats.get("errors", {}).items())])
    metric("cache_bytes", "gauge", "Bytes in the blob tier.", [("", cache.get("bytes", 0))])
    metric("cache_capacity_bytes", "gauge", "The blob tier's cap.",
           [("", cache.get("capacity", 0))])
    metric("cache_blobs", "gauge", "Blobs in the blob tier.", [("", cache.get("blobs", 0))])
    metric("evictions_total", "counter", "Blobs evicted.", [("", cache.get("evictions", 0))])
    metric("pending_uploads", "gauge", "Changes not yet in the store.",
           [("", stats.get("pending_uploads", 0))])
    metric("fetches_in_flight", "gauge", "Objects being fetched.",
           [("", stats.get("fetches_in_flight", 0))])
    metric("offline", "gauge", "1 while the store is unreachable.",
           [("", 1 if stats.get("offline") else 0)])
    return "\n".join(lines) + "\n"


def cmd_stats(args: argparse.Namespace) -> int:
    if args.keys:
        report = _mount_control(args.mountpoint, "keys")
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            for item in report["keys"]:
                counts = "  ".join(f"{k} {v}" for k, v in item.items() if k != "key")
                print(f"{item['key']}  {counts}")
        return OK
    while True:
        stats = _mount_control(args.mountpoint, "stats")
        if args.prometheus:
            print(prometheus_text(stats, str(Path(args.mountpoint).absolute())), end="",
                  flush=True)
        elif args.json:
            print(json.dumps(stats, indent=2 if not args.watch else None), flush=True)
        else:
            if args.watch and sys.stdout.isatty():
                print("\033[H\033[J", end="")
            _print_stats(stats)
        if not args.watch:
            return OK
        time.sleep(args.interval)


def find_mount(path: Path) -> tuple[Path, str]:
    """The cachefs mount containing ``path`` (which may not exist yet) and the relative path."""
    path = Path(os.path.abspath(path))
    probe = path.parent
    while not os.path.ismount(probe):
        if probe == probe.parent:
            raise Failure(f"{path} is not inside a mount")
        probe = probe.parent
    _mount_control(str(probe), "pid")  # a cachefs mount, or Failure
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
        print(f"\r{self.label} [{bar}] {_human(done)}/{_human(total)}", end="",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def _watch_transfer(mountpoint: Path, key_suffix: str, progress: Progress,
                    done: threading.Event, what: str | None = None) -> None:
    while not done.wait(0.2):
        with contextlib.suppress(Failure, OSError):
            for item in _mount_control(str(mountpoint), "stats").get("in_flight", []):
                if item["key"].endswith(key_suffix) and what in (None, item["what"]):
                    progress.update(item["done"], item["total"])


def cmd_fetch(args: argparse.Namespace) -> int:
    code = OK
    for text in args.paths:
        mountpoint, rel = find_mount(Path(text))
        progress = Progress(rel)
        done = threading.Event()
        watcher = threading.Thread(target=_watch_transfer, args=(mountpoint, rel, progress, done),
                                   daemon=True)
        watcher.start()
        try:
            os.setxattr(mountpoint, "user.cachefs.fetch", rel.encode())
        except OSError as e:
            done.set()
            progress.close()
            if e.errno == errno.ENOENT:
                print(f"cachefs: {text}: not at the origin", file=sys.stderr)
                code = max(code, MISS)
            else:
                print(f"cachefs: {text}: {e.strerror} (see the mount's log)", file=sys.stderr)
                code = FAIL
            continue
        done.set()
        watcher.join()
        progress.close()
        print(f"fetched {text}")
    return code


def cmd_warm(args: argparse.Namespace) -> int:
    code = OK
    for text in args.paths:
        mountpoint, rel = find_mount(Path(text)) if not os.path.ismount(text) \
            else (Path(text).absolute(), "")
        progress = Progress(f"warming {rel or '/'}")
        done = threading.Event()
        watcher = threading.Thread(target=_watch_transfer,
                                   args=(mountpoint, "", progress, done, "warm"), daemon=True)
        watcher.start()
        try:
            os.setxattr(mountpoint, "user.cachefs.warm", rel.encode())
            failed = False
        except OSError as e:
            failed = True
            message = e.strerror
        done.set()
        watcher.join()
        progress.close()
        result = _mount_control(str(mountpoint), "warmed")
        summary = (f"{result.get('files', 0)} files: {result.get('cached', 0)} already cached, "
                   f"{result.get('fetched', 0)} fetched, {result.get('failed', 0)} failed")
        if failed:
            print(f"cachefs: {text}: {message}; {summary}", file=sys.stderr)
            code = FAIL
        else:
            print(f"cachefs: warmed {text}: {summary}")
    return code


# -- commands without a mount ---------------------------------------------------------------


def _store_and_key(args: argparse.Namespace, dest: str) -> tuple[Any, str, Config]:
    """``s3://BUCKET/KEY`` or a key relative to the configured store."""
    from .store import open_store, parse_store_url

    config = _load_config(args)
    if "://" in dest:
        location = parse_store_url(dest)
        if location.scheme != "s3" or not location.prefix:
            raise Failure(f"{dest}: give s3://BUCKET/KEY, or KEY with --store")
        config = config.replace(store=f"s3://{location.bucket}")
        key = location.prefix.rstrip("/")
        store, _ = open_store(config)
        return store, key, config
    store, prefix = open_store(config)
    return store, prefix + dest.strip("/"), config


def cmd_pack(args: argparse.Namespace) -> int:
    from . import codec, packcmd
    from .store.local import LocalStore

    root = Path(args.directory)
    if not root.is_dir():
        raise Failure(f"{root} is not a directory")
    store, key, _ = _store_and_key(args, args.key)
    if isinstance(store, LocalStore):
        store.ensure()
    store.check()
    files, total = packcmd.tree_size(root)
    bar = Progress(f"packing {files} files")
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        bar.update(done[0], total)

    level = codec.parse_level(f"zstd:{args.level}") or codec.DEFAULT_LEVEL
    summary = packcmd.pack_directory(root, store, key, level, progress)
    bar.close()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"cachefs: packed {summary['files']} files ({_human(summary['bytes_in'])}) into "
              f"{key}: {_human(summary['bytes_stored'])} in {summary['frames']} frames, "
              f"{summary['seconds']}s")
    return OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import run_doctor

    return run_doctor(_load_config(args))


def _cache_dir_or_mount(args: argparse.Namespace) -> tuple[Path | None, Path]:
    """(mount point, cache dir): a running mount is asked to do the work itself."""
    if args.target and os.path.ismount(args.target):
        return Path(args.target).absolute(), Path()
    config = _load_config(args)
    return None, Path(args.target or config.cache_dir)


def cmd_verify(args: argparse.Namespace) -> int:
    from . import maintenance
    from .daemon import CacheDirBusy

    mountpoint, cache_dir = _cache_dir_or_mount(args)
    if mountpoint is not None:
        os.setxattr(mountpoint, "user.cachefs.verify", b"repair" if args.repair else b"check")
        report = _mount_control(str(mountpoint), "verified")
    else:
        if not (cache_dir / "blobs").is_dir():
            raise Failure(f"{cache_dir} is not a cachefs cache dir")
        try:
            report = maintenance.verify(cache_dir, args.repair)
        except CacheDirBusy as e:
            raise Failure(f"{e}: run `cachefs verify MOUNTPOINT` instead") from None
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"cachefs: checked {report['checked']} blobs ({_human(report['bytes'])}): "
              f"{len(report['bad'])} bad" + (", removed (they are fetched again when read)"
                                             if report["bad"] and report["repaired"] else ""))
        for digest in report["bad"]:
            print(f"  bad blob {digest}")
        for digest in report["pending_uploads_damaged"]:
            print(f"  a pending upload lost its content: {digest}", file=sys.stderr)
    return MISS if report["bad"] and not report["repaired"] else OK


def cmd_clear(args: argparse.Namespace) -> int:
    from . import maintenance
    from .daemon import CacheDirBusy

    mountpoint, cache_dir = _cache_dir_or_mount(args)
    if mountpoint is not None:
        raise Failure(f"{mountpoint} is mounted: unmount it before clearing its cache dir")
    if not (cache_dir / "blobs").is_dir():
        raise Failure(f"{cache_dir} is not a cachefs cache dir")
    try:
        report = maintenance.clear(cache_dir)
    except CacheDirBusy as e:
        raise Failure(f"{e}: unmount it first") from None
    print(f"cachefs: removed {report['removed']} blobs ({_human(report['bytes'])}) from "
          f"{cache_dir}; kept {report['kept_for_uploads']} that pending uploads need")
    return OK


def hash_paths(paths: Sequence[str]) -> str:
    """SHA-256 over the contents of files; directories walked in sorted relative-path order."""
    sha = hashlib.sha256()
    for text in paths:
        path = Path(text)
        if path.is_dir():
            files = sorted(
                (p for p in path.rglob("*") if p.is_file()),
                key=lambda p: p.relative_to(path).as_posix())
        elif path.is_file():
            files = [path]
        else:
            raise Failure(f"cannot hash {text}: no such file or directory")
        for f in files:
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    sha.update(chunk)
    return sha.hexdigest()


def apply_template(template: str, digest: str) -> str:
    if "{hash}" in template:
        return template.replace("{hash}", digest)
    head, _, base = template.rpartition("/")
    dot = base.find(".", 1)
    stem, ext = (base, "") if dot < 0 else (base[:dot], base[dot:])
    return (head + "/" if head else "") + f"{stem}-{digest}{ext}"


def cmd_key(args: argparse.Namespace) -> int:
    if args.hash_length < 1 or args.hash_length > 64:
        raise Failure("--hash-length must be between 1 and 64")
    digest = hash_paths(args.hash_from)[: args.hash_length]
    print(apply_template(args.template, digest))
    return OK


def cmd_completion(args: argparse.Namespace) -> int:
    from .completion import script

    print(script(args.shell, build_parser()), end="")
    return OK


# -- the parser -----------------------------------------------------------------------------

MOUNT_FIELDS = [f.name for f in FIELDS]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cachefs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_help("""
            A read-through cache filesystem over S3 for CI machines: the keys of a bucket
            appear as files, fetched on first read into a verified local cache, and files
            written into the mount go back to the bucket when they are closed."""),
        epilog=_help("""
            examples:
              cachefs mount ~/cache                       # local store, no S3 needed
              cachefs mount --store s3://ci-cache/proj --endpoint http://127.0.0.1:8333 /cache
              cp -r /cache/node/abcd ./node_modules
              cachefs umount /cache

            exit codes: 0 ok, 1 not found / miss, 2 error.
            settings come from flags, then CACHEFS_<SETTING> variables, then
            ~/.config/cachefs/config.toml; see `cachefs mount --help`."""))
    parser.add_argument("--version", action="version", version=f"cachefs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], summary: str,
                epilog: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=summary, description=summary,
                           epilog=_help(epilog),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        return p

    p = command("mount", cmd_mount, "mount a store at MOUNTPOINT", """
        examples:
          cachefs mount ~/cache
              the embedded default: a store in ~/.local/share/cachefs/store, no S3 needed
          cachefs mount --store s3://ci-cache/p --subtree go-mod/$KEY --restore-key go-mod/ \
              ~/go/pkg/mod
              one pack (or prefix) as the whole mount; exit 1 if neither the key nor a
              restore key exists (a cache miss)
          cachefs mount --store s3://ci-cache/myproj --endpoint http://127.0.0.1:8333 /cache
              keys under myproj/ in bucket ci-cache appear under /cache
          CACHEFS_S3_KEY_ID=... CACHEFS_S3_SECRET=... cachefs mount --read-only /cache
          cachefs mount --writeback async --cache-size 20G /cache

        Without --foreground the command returns once the mount answers; the daemon keeps
        running and logs to CACHE_DIR/cachefs.log. It exits 2 with one line saying why if
        the mount cannot be made (no /dev/fuse, mount point missing or busy, bad credentials,
        missing bucket).""")
    _config_flags(p, MOUNT_FIELDS)
    p.add_argument("--foreground", "-f", action="store_true",
                   help="stay in the foreground and log to stderr")
    p.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("mountpoint", metavar="MOUNTPOINT")

    p = command("umount", cmd_umount, "unmount, after everything written is in the store", """
        examples:
          cachefs umount /cache
          cachefs umount --lazy /cache     # detach now even if something still uses it

        Waits until pending uploads are in the store and the daemon has exited. Changes
        that cannot be stored stay in the cache dir and resume at the next mount.""")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--lazy", action="store_true", help="detach even if the mount is busy")
    p.add_argument("--no-sync", action="store_true",
                   help="do not wait for pending uploads first (they resume next mount)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds to wait for the daemon to exit (default 300)")

    p = command("sync", cmd_sync, "wait until everything written is in the store", """
        examples:
          cachefs sync /cache && echo "saved"

        Exit 0 once every closed file, rename and delete is in the store; 2 if some kept
        failing (they stay queued and are retried).""")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = command("status", cmd_status, "show changes not yet in the store", """
        examples:
          cachefs status /cache
          cachefs status --json /cache | jq '.pending | length'""")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command("stats", cmd_stats, "hits, misses, bytes and transfers of a mount", """
        examples:
          cachefs stats /cache
          cachefs stats --json /cache
          cachefs stats --watch /cache
          cachefs stats --prometheus /cache > /var/lib/node_exporter/cachefs.prom""")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--watch", action="store_true", help="refresh until interrupted")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    p.add_argument("--keys", action="store_true",
                   help="hits and misses per key (the 300 most recently used)")
    p.add_argument("--prometheus", action="store_true",
                   help="print the Prometheus text format (for a textfile collector)")

    p = command("fetch", cmd_fetch, "fetch files from their origin into the cache and store", """
        examples:
          cachefs fetch /cache/go-dl/go1.26.3.linux-amd64.tar.gz
          cachefs fetch /cache/vendor/a.tgz /cache/vendor/b.tgz

        For directories with an origin (user.cachefs.origin). In curate mode
        (--origin-fetch curate, or user.cachefs.origin-fetch=curate) a miss is only
        recorded and readers get ENOENT until this command approves it. Downloads, checks
        the pinned SHA-256 if any, uploads to the store, with a progress bar on a terminal.
        Exit 0 if all were fetched, 1 if one was not at the origin, 2 on errors.""")
    p.add_argument("paths", nargs="+", metavar="PATH")

    p = command("warm", cmd_warm, "fetch whole subtrees into the cache ahead of use", """
        examples:
          cachefs warm /cache/go-mod/$KEY
          cachefs warm /cache/toolchains /cache/node/abcd

        Fetches every file below each PATH (store objects, or pack frames) into the blob
        tier, 32 at a time, with a progress bar on a terminal. Exit 0 when all of it is
        cached, 2 if some files could not be fetched.""")
    p.add_argument("paths", nargs="+", metavar="PATH")

    p = command("verify", cmd_verify, "check every cached blob against its digest", """
        examples:
          cachefs verify                     # the default cache dir (not mounted)
          cachefs verify --cache-dir /ci/cache --repair
          cachefs verify /cache              # a running mount checks its own cache

        Re-hashes every blob in the blob tier. Exit 0 if all are good (or were repaired),
        1 if bad blobs were found and left alone, 2 on errors. --repair removes bad blobs;
        they are fetched again when next read. Reads never serve a bad blob either way.""")
    p.add_argument("target", nargs="?", metavar="MOUNTPOINT|CACHE_DIR")
    p.add_argument("--repair", action="store_true", help="remove the blobs that fail")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _config_flags(p, ["cache_dir"])

    p = command("clear", cmd_clear, "empty a cache dir's blob tier", """
        examples:
          cachefs clear
          cachefs clear --cache-dir /ci/cache

        Refuses while a mount uses the cache dir. Keeps the blobs that pending uploads
        still need, so nothing written is lost.""")
    p.add_argument("target", nargs="?", metavar="CACHE_DIR")
    _config_flags(p, ["cache_dir"])

    p = command("doctor", cmd_doctor, "check that a store works: reach, write, read, delete", """
        examples:
          cachefs doctor --store s3://ci-cache/myproj --endpoint https://minio.example:9000

        Prints where each credential came from and its length (never its value), then
        writes a 1-byte canary object, reads it back and deletes it. Exit 0 if all of it
        worked, 2 if not.""")
    _config_flags(p, ["store", "endpoint", "region", "key_file", "secret_file", "timeout",
                      "connections"])

    p = command("pack", cmd_pack, "save a directory tree as one pack object", """
        examples:
          KEY=$(cachefs key "go-mod/{hash}" --hash-from go.sum)
          cachefs pack ~/go/pkg/mod s3://ci-cache/myproj/$KEY
          cachefs pack --store s3://ci-cache/myproj ~/go/pkg/mod $KEY
          cachefs mount --store s3://ci-cache/myproj --subtree $KEY ~/go/pkg/mod

        A pack holds a whole tree (files, directories, symlinks, modes, mtimes) in one
        object of independently compressed frames with a table of contents, so a mount
        shows it at once and fetches only the frames that are read. Identical files are
        stored once. See docs/PACK-FORMAT.md.""")
    _config_flags(p, ["store", "endpoint", "region", "key_file", "secret_file", "timeout",
                      "connections"])
    p.add_argument("directory", metavar="DIR")
    p.add_argument("key", metavar="KEY", help="s3://BUCKET/KEY, or KEY within --store")
    p.add_argument("--level", type=int, default=3, help="zstd level 1-22 (default 3)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    p = command("key", cmd_key, "compute a cache key from file contents", """
        examples:
          cachefs key "go-mod/{hash}" --hash-from go.sum
          cachefs key img/build.tar.zst --hash-from Dockerfile --hash-from src/
              -> img/build-<hash>.tar.zst  (no {hash}: it goes before the extension)

        The hash is SHA-256 over the contents of the files (directories walked in sorted
        relative-path order), cut to --hash-length hex digits. For one file it equals
        `sha256sum FILE | cut -c1-16`.""")
    p.add_argument("template", metavar="TEMPLATE")
    p.add_argument("--hash-from", action="append", required=True, metavar="PATH",
                   help="file or directory to hash (repeatable, in order)")
    p.add_argument("--hash-length", type=int, default=16, metavar="N",
                   help="hex digits of the hash to use (default 16)")

    p = command("completion", cmd_completion, "print a shell completion script", """
        examples:
          source <(cachefs completion bash)                  # in ~/.bashrc
          cachefs completion zsh > "${fpath[1]}/_cachefs"
          cachefs completion fish > ~/.config/fish/completions/cachefs.fish

        Generated from the commands and flags of this version of cachefs.""")
    p.add_argument("shell", choices=["bash", "zsh", "fish"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return FAIL
    try:
        return int(args.func(args))
    except Failure as e:
        print(f"cachefs: {e}", file=sys.stderr)
        return e.code
    except (ConfigError, CacheFSError) as e:
        print(f"cachefs: {e}", file=sys.stderr)
        return FAIL
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return OK
