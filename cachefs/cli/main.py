"""The `cachefs` command.

Exit codes, for shell scripts to branch on: 0 ok; 1 "not there" where a command asks whether
something is there (a miss); 2 an operational error (bad flag, store unreachable, mount failed);
3 unmounted, but closed files are still pending in the write-back journal; 4 a dead mount of
another file system is in the way. A user mistake is reported as one line on stderr, never a
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import FIELDS, Config
from ..daemon.control import wait_mounted
from ..errors import CacheFSError, ConfigError
from .bucket import add_commands as add_bucket_commands
from .commands import (
    apply_template,
    cmd_clear,
    cmd_completion,
    cmd_doctor,
    cmd_fetch,
    cmd_key,
    cmd_migrate_store,
    cmd_pack,
    cmd_stats,
    cmd_status,
    cmd_sync,
    cmd_verify,
    cmd_warm,
)
from .util import (
    FAIL,
    MISS,
    NOT_OURS,
    OK,
    PENDING,
    STORE_FLAGS,
    ClearedMount,
    Command,
    Failure,
    clear_dead_mount,
    config_flags,
    describe_op,
    help_text,
    load_config,
    mount_control,
)

__all__ = ["FAIL", "MISS", "NOT_OURS", "OK", "PENDING", "apply_template", "build_parser", "main"]


def _fork_daemon(config: Config, mountpoint: str, log_fd: int, ready_fd: int) -> int:
    """Start the mount daemon in the background: a fork of this process, which has imported
    what the daemon needs (a new interpreter would import it all again: ~0.3 s of every
    mount). The child keeps only the log (as stdout and stderr) and ``ready_fd``, like a
    spawned process with close_fds. Returns its PID."""
    from ..daemon import run as daemon

    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setsid()
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.closerange(3, ready_fd)  # (the pipe was made after stdin/out/err: ready_fd > 2)
        os.closerange(ready_fd + 1, os.sysconf("SC_OPEN_MAX"))
        daemon.setup_logging(config.log_level)
        code = daemon.run(config, mountpoint, ready_fd=ready_fd)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def cmd_mount(args: argparse.Namespace) -> int:
    config = load_config(args)
    cleared = clear_dead_mount(Path(args.mountpoint).absolute())
    if cleared is not None:
        _say_cleared_before_mount(cleared, Path(config.cache_dir))
    from ..daemon import run as daemon

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
        sys.stdout.flush()
        sys.stderr.flush()
        pid = _fork_daemon(config, mountpoint, log_file.fileno(), write_end)
    os.close(write_end)
    message = _read_line(read_end, timeout=120)
    os.close(read_end)
    if message.startswith("ok") and wait_mounted(Path(mountpoint), pid):
        info = json.loads(message[2:].strip() or "{}")
        what = config.store
        if "key" in info:
            kind = "pack" if info["pack"] else "prefix"
            hit = "exact hit" if info["exact"] else "restored from a restore key, not an exact hit"
            what = f"{kind} {info['key']} ({hit})"
        print(f"cachefs: mounted {what} at {mountpoint} (pid {pid}, log {log_path})")
        return OK
    if message.startswith("miss: "):
        raise Failure(message[len("miss: "):], MISS)
    if message.startswith("error: "):
        raise Failure(message[len("error: "):])
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
    raise Failure("the mount daemon exited before the mount answered" +
                  (": " + " | ".join(tail) if tail else f" (see {log_path})"))


def _say_cleared_before_mount(cleared: ClearedMount, cache_dir: Path) -> None:
    message = f"cachefs: {cleared.path} was a dead cachefs mount ({cleared.daemon()}): cleared it"
    if cleared.record is not None and cleared.pending:
        same = Path(cleared.record.cache_dir) == cache_dir.absolute()
        message += (f"; its {len(cleared.pending)} pending change(s) are replayed by this mount"
                    if same else f"; {len(cleared.pending)} change(s) pending in "
                    f"{cleared.record.cache_dir} wait for a mount with that --cache-dir")
    print(message, file=sys.stderr)


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
    cleared = clear_dead_mount(mountpoint)
    if cleared is not None:
        return _report_cleared(cleared)
    if not os.path.ismount(mountpoint):
        raise Failure(f"{mountpoint} is not mounted")
    pid = int(mount_control(str(mountpoint), "pid"))
    report: dict[str, Any] = {}
    if not args.no_sync:
        report = mount_control(str(mountpoint), "sync")
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
                      "are kept in the cache dir and resume at the next mount that uses it",
                      PENDING)
    stalled = report.get("origin_fills_unfinished") or []
    if stalled:
        raise Failure(f"unmounted, but {len(stalled)} download(s) from an origin stalled and "
                      f"were not stored ({', '.join(stalled[:3])}): the next runner fetches "
                      "them from the origin again")
    print(f"cachefs: unmounted {mountpoint}")
    return OK


def _report_cleared(cleared: ClearedMount) -> int:
    """`cachefs umount` of a dead mount: what its journal still holds decides the exit code."""
    head = f"cachefs: cleared the dead cachefs mount at {cleared.path} ({cleared.daemon()})"
    if cleared.record is None or cleared.pending is None:
        print(f"{head}; it left no mount record, so which changes are pending is unknown: "
              "any are kept in its cache dir and resume at the next mount that uses it",
              file=sys.stderr)
        return OK
    if not cleared.pending:
        print(f"{head}; nothing was pending: everything written before it died is in the store")
        return OK
    print(f"{head}; {len(cleared.pending)} change(s) made before it died are not in the store "
          f"yet: they are kept in {cleared.record.cache_dir} and resume at the next mount that "
          "uses it:", file=sys.stderr)
    for record in cleared.pending:
        print(f"  {describe_op(record)}", file=sys.stderr)
    return PENDING


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


MOUNT_FIELDS = [f.name for f in FIELDS]


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, one adder per group of commands; the order of the calls is the
    order `cachefs --help` lists them in."""
    parser = _top_parser()
    command = _command_adder(parser.add_subparsers(dest="command", metavar="COMMAND"))
    _add_mount(command)
    _add_umount(command)
    _add_mount_queries(command)  # sync, status, stats
    _add_fetch_and_warm(command)
    _add_cache_dir_commands(command)  # verify, clear
    _add_doctor(command)
    _add_pack(command)
    _add_migrate_store(command)
    _add_key(command)
    add_bucket_commands(command)  # ls, du, prune, verify-store (cli/bucket.py)
    _add_completion(command, parser)
    return parser


def _top_parser() -> argparse.ArgumentParser:
    """`cachefs` itself: what it is, a first example, the exit codes and the fstab form, for
    someone who has only typed `cachefs --help`."""
    parser = argparse.ArgumentParser(
        prog="cachefs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=help_text("""
            A read-through cache filesystem over S3 for CI machines: the keys of a bucket
            appear as files, fetched on first read into a verified local cache, and files
            written into the mount go back to the bucket when they are closed."""),
        epilog=help_text("""
            examples:
              cachefs mount ~/cache                       # local store, no S3 needed
              cachefs mount --store s3://ci-cache/proj --endpoint http://127.0.0.1:8333 /cache
              cp -r /cache/node/abcd ./node_modules
              cachefs umount /cache

            exit codes: 0 ok, 1 not found / miss, 2 error, 3 unmounted but changes
            still pending, 4 a dead mount of another file system is in the way.
            `cachefs SOURCE MOUNTPOINT [-o OPTIONS]` (SOURCE s3://... or file://...) is the
            form mount.fuse3 runs for `mount -t fuse.cachefs` and fstab: options as for
            mount.fuse.cachefs (docs/DEPLOY.md).
            settings come from flags, then CACHEFS_<SETTING> variables, then
            ~/.config/cachefs/config.toml; see `cachefs mount --help`."""))
    parser.add_argument("--version", action="version", version=f"cachefs {__version__}")
    return parser


def _command_adder(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> Command:
    """The one way a subcommand is made, so every one has its summary as both the line in
    `cachefs --help` and its own description, and an epilog kept as written."""

    def command(name: str, func: Callable[[argparse.Namespace], int], summary: str,
                epilog: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=summary, description=summary,
                           epilog=help_text(epilog),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        return p

    return command


def _add_mount(command: Command) -> None:
    """`cachefs mount` takes every setting as a flag: the background daemon is started with
    the resolved settings (the daemon is a fork of the CLI; `--foreground` runs it here)."""
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
        missing bucket).

        A dead cachefs mount at MOUNTPOINT (its daemon was killed: "Transport endpoint is
        not connected") is cleared first, with a note on stderr; its journal is replayed
        by this mount if it uses the same cache dir. A dead mount of another file system
        is left alone: exit 4, naming the command that clears it.""")
    config_flags(p, MOUNT_FIELDS)
    p.add_argument("--foreground", "-f", action="store_true",
                   help="stay in the foreground and log to stderr")
    p.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("mountpoint", metavar="MOUNTPOINT")


def _add_umount(command: Command) -> None:
    """`cachefs umount`: its exit codes are spelled out, since CI scripts branch on 3 (changes
    still pending) and 4 (someone else's dead mount)."""
    p = command("umount", cmd_umount, "unmount, after everything written is in the store", """
        examples:
          cachefs umount /cache
          cachefs umount --lazy /cache     # detach now even if something still uses it

        Waits until pending uploads are in the store and the daemon has exited. Changes
        that cannot be stored stay in the cache dir and resume at the next mount.

        A dead mount (the daemon was killed: "Transport endpoint is not connected") is
        cleared with a lazy unmount, and the changes its journal still holds are listed.
        A dead mount of another file system is left alone.

        exit codes: 0 unmounted, nothing pending; 2 not mounted, or the unmount failed;
        3 unmounted (or the dead mount cleared), but changes are still pending in the
        journal (kept in the cache dir; the next mount that uses it stores them); 4 a dead
        mount of another file system, with the command that clears it.""")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--lazy", action="store_true", help="detach even if the mount is busy")
    p.add_argument("--no-sync", action="store_true",
                   help="do not wait for pending uploads first (they resume next mount)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds to wait for the daemon to exit (default 300)")


def _add_mount_queries(command: Command) -> None:
    """`sync`, `status` and `stats` ask a running mount through its control xattrs: each takes
    the MOUNTPOINT, then --json for scripts."""

    def query(name: str, func: Callable[[argparse.Namespace], int], summary: str,
              epilog: str, json_help: str) -> argparse.ArgumentParser:
        p = command(name, func, summary, epilog)
        p.add_argument("mountpoint", metavar="MOUNTPOINT")
        p.add_argument("--json", action="store_true", help=json_help)
        return p

    query("sync", cmd_sync, "wait until everything written is in the store", """
        examples:
          cachefs sync /cache && echo "saved"

        Exit 0 once every closed file, rename and delete is in the store; 2 if some kept
        failing (they stay queued and are retried).""", "print the report as JSON")
    query("status", cmd_status, "show changes not yet in the store", """
        examples:
          cachefs status /cache
          cachefs status --json /cache | jq '.pending | length'""", "print JSON")
    p = query("stats", cmd_stats, "hits, misses, bytes and transfers of a mount", """
        examples:
          cachefs stats /cache
          cachefs stats --json /cache
          cachefs stats --watch /cache
          cachefs stats --prometheus /cache > /var/lib/node_exporter/cachefs.prom""",
              "print JSON")
    p.add_argument("--watch", action="store_true", help="refresh until interrupted")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    p.add_argument("--keys", action="store_true",
                   help="hits and misses per key (the 300 most recently used)")
    p.add_argument("--prometheus", action="store_true",
                   help="print the Prometheus text format (for a textfile collector)")


def _add_fetch_and_warm(command: Command) -> None:
    """`fetch` and `warm` bring files into the cache ahead of a reader, for one or more PATHs
    inside a mount."""
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


def _add_cache_dir_commands(command: Command) -> None:
    """`verify` and `clear` work on a cache dir rather than a store: the dir (for verify, or
    a mount) is the positional, else --cache-dir."""
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
    config_flags(p, ["cache_dir"])

    p = command("clear", cmd_clear, "empty a cache dir's blob tier", """
        examples:
          cachefs clear
          cachefs clear --cache-dir /ci/cache

        Refuses while a mount uses the cache dir. Keeps the blobs that pending uploads
        still need, so nothing written is lost.""")
    p.add_argument("target", nargs="?", metavar="CACHE_DIR")
    config_flags(p, ["cache_dir"])


def _add_doctor(command: Command) -> None:
    """`cachefs doctor` takes the store and its connection flags only: it checks a store, not
    a mount, so the cache settings would be noise."""
    p = command("doctor", cmd_doctor, "check that a store works: reach, write, read, delete", """
        examples:
          cachefs doctor --store s3://ci-cache/myproj --endpoint https://minio.example:9000

        Prints where each credential came from and its length (never its value), then
        writes a 1-byte canary object, reads it back and deletes it. Exit 0 if all of it
        worked, 2 if not.""")
    config_flags(p, ["store", *STORE_FLAGS])


def _add_pack(command: Command) -> None:
    """`cachefs pack` writes straight to a store, so it takes the store flags; its help
    carries the rules a saved key lives by (never replaced, --from-mount uploads the new)."""
    p = command("pack", cmd_pack, "save a directory tree as one pack object", """
        examples:
          KEY=$(cachefs key "go-mod/{hash}" --hash-from go.sum)
          cachefs pack ~/go/pkg/mod s3://ci-cache/myproj/$KEY
          cachefs pack --store s3://ci-cache/myproj ~/go/pkg/mod $KEY
          cachefs mount --store s3://ci-cache/myproj --subtree $KEY ~/go/pkg/mod
          go mod download                  # new modules land in a local layer over the pack
          cachefs pack --from-mount ~/go/pkg/mod go-mod/$NEW_KEY   # uploads only what is new

        With --from-mount, DIR is a pack in a running mount (the mount point of a --subtree
        mount, or a pack directory in a bucket mount) and KEY is within that mount's --store:
        the tree as the mount shows it, changes included, becomes a new pack whose unchanged
        files point at the frames already stored, so only new content is uploaded.

        A pack holds a whole tree (files, directories, symlinks, modes, mtimes) in one
        object of independently compressed frames with a table of contents, so a mount
        shows it at once and fetches only the frames that are read. Identical files are
        stored once. See docs/PACK-FORMAT.md.

        Packs are immutable: a KEY that exists is not replaced unless --force. The store
        refuses it atomically where it honours If-None-Match (AWS S3, SeaweedFS, moto,
        a local store); elsewhere a HEAD check comes first, with a warning. Of two runners
        saving one KEY at once one wins; the other exits 1 and leaves its object intact.

        exit codes: 0 saved; 1 KEY already exists (not replaced); 2 any other error.""")
    config_flags(p, ["store", *STORE_FLAGS])
    p.add_argument("directory", metavar="DIR")
    p.add_argument("key", metavar="KEY", help="s3://BUCKET/KEY, or KEY within --store")
    p.add_argument("--from-mount", action="store_true",
                   help="DIR is a mounted pack: save it, with its changes, as a new pack KEY")
    p.add_argument("--force", action="store_true",
                   help="replace KEY if it exists (packs are otherwise never replaced)")
    p.add_argument("--level", type=int, default=3, help="zstd level 1-22 (default 3)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _add_migrate_store(command: Command) -> None:
    """`cachefs migrate-store`: a one-off for stores made before 0.2, so its help says what
    the old encoding was and what is kept."""
    p = command("migrate-store", cmd_migrate_store,
                "turn a local store of the old encoding into a plain directory", """
        examples:
          cachefs umount ~/cache && cachefs migrate-store && cachefs mount ~/cache
          cachefs migrate-store --store file:///srv/cachefs-store

        Local stores (--store file:///DIR, and the default one) are plain directories since
        0.2: key a/b is the file DIR/a/b. A store made by an earlier version keeps its own
        encoding (NAME.o files, NAME.d directories) and is still read and written as it is;
        this converts it, keeping every object's ETag and metadata, so caches stay valid.
        The new tree is built beside it and swapped in; the old one is kept as
        DIR.old-encoding. Run it with no mount using the store.

        exit codes: 0 converted (or plain already); 2 error, among them keys a directory
        tree cannot hold (both a and a/b): the store is then left as it was.""")
    config_flags(p, ["store"])


def _add_key(command: Command) -> None:
    """`cachefs key` needs no store or mount: it only hashes local files, so a CI step can
    compute a key before anything is mounted."""
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


def _add_completion(command: Command, parser: argparse.ArgumentParser) -> None:
    """`cachefs completion` is handed the parser itself: the script is made from it when the
    command runs, so it never lags behind the commands and flags."""
    p = command("completion", cmd_completion, "print a shell completion script", """
        examples:
          source <(cachefs completion bash)                  # in ~/.bashrc
          cachefs completion zsh > "${fpath[1]}/_cachefs"
          cachefs completion fish > ~/.config/fish/completions/cachefs.fish

        Generated from the commands and flags of this version of cachefs.""")
    p.add_argument("shell", choices=["bash", "zsh", "fish"])
    p.set_defaults(parser=parser)


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
