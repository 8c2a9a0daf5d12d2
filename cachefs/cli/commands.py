"""The `cachefs` subcommands that talk to a running mount, a store or a cache directory.

Each ``cmd_*`` takes parsed arguments and returns an exit code (see cliutil); `cli` wires
them into the parser.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import Exists
from .util import (
    EXISTS,
    FAIL,
    MISS,
    OK,
    Failure,
    Progress,
    find_mount,
    human,
    load_config,
    mount_control,
    watch_transfer,
)


def cmd_sync(args: argparse.Namespace) -> int:
    report = mount_control(args.mountpoint, "sync")
    if args.json:
        print(json.dumps(report, indent=2))
    failed = report.get("failed") or []
    for op in failed:
        print(f"cachefs: not stored: {op['op']} {op['key']}: {op['error']}", file=sys.stderr)
    stalled = report.get("origin_fills_unfinished") or []
    for key in stalled:
        print(f"cachefs: not stored: {key}: its download from the origin stalled",
              file=sys.stderr)
    if failed or stalled or report.get("manifest_error"):
        return FAIL
    if not args.json:
        print("cachefs: everything written is in the store")
    return OK


def cmd_status(args: argparse.Namespace) -> int:
    status = mount_control(args.mountpoint, "status")
    if args.json:
        print(json.dumps(status, indent=2))
        return OK
    pending = status.get("pending", [])
    refused = status.get("refused", [])
    if not pending:
        print("nothing pending" + (": everything written is in the store" if not refused
                                   else ""))
    for op in pending:
        err = f"  (failed {op['attempts']}x: {_errno(op)}{op['error']})" if op["error"] else ""
        print(f"{op['op']:6} {op['key']}  {human(op['size'])}  {op['age']:.0f}s{err}")
    for op in refused:
        print(f"refused {op['op']} {op['key']}: {_errno(op)}{op['error']} (not stored)")
    return OK


def _errno(op: dict[str, Any]) -> str:
    return f"{op['errno']}: " if op.get("errno") else ""


def _print_stats(stats: dict[str, Any]) -> None:
    counters = stats.get("counters", {})
    cache = stats.get("cache", {})
    print(f"store      {stats.get('store')}  {'(OFFLINE)' if stats.get('offline') else ''}")
    print(f"cache      {human(cache.get('bytes', 0))} of {human(cache.get('capacity', 0))} "
          f"in {cache.get('blobs', 0)} blobs, {cache.get('evictions', 0)} evicted")
    print(f"hits       local {counters.get('hits_local', 0)}  "
          f"store {counters.get('hits_store', 0)}  "
          f"origin misses {counters.get('origin_misses', 0)} "
          f"(held for approval {counters.get('origin_misses_held', 0)})")
    print(f"bytes      from store {human(counters.get('bytes_from_store', 0))}  "
          f"from origin {human(counters.get('bytes_from_origin', 0))}  "
          f"to store {human(counters.get('bytes_to_store', 0))}")
    print(f"pending    {stats.get('pending_uploads', 0)} upload(s), "
          f"{stats.get('fetches_in_flight', 0)} fetch(es) in flight"
          + (f", {counters['refused']} change(s) refused by the store (cachefs status)"
             if counters.get("refused") else ""))
    for item in stats.get("in_flight", []):
        pct = 100 * item["done"] / item["total"] if item["total"] else 100
        print(f"  {item['what']:7} {item['key']}  {pct:5.1f}% of {human(item['total'])}")
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
        report = mount_control(args.mountpoint, "keys")
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            for item in report["keys"]:
                counts = "  ".join(f"{k} {v}" for k, v in item.items() if k != "key")
                print(f"{item['key']}  {counts}")
        return OK
    while True:
        stats = mount_control(args.mountpoint, "stats")
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


def cmd_fetch(args: argparse.Namespace) -> int:
    code = OK
    for text in args.paths:
        mountpoint, rel = find_mount(Path(text))
        progress = Progress(rel)
        done = threading.Event()
        watcher = threading.Thread(target=watch_transfer, args=(mountpoint, rel, progress, done),
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
        watcher = threading.Thread(target=watch_transfer,
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
        result = mount_control(str(mountpoint), "warmed")
        summary = (f"{result.get('files', 0)} files: {result.get('cached', 0)} already cached, "
                   f"{result.get('fetched', 0)} fetched, {result.get('failed', 0)} failed")
        if failed:
            print(f"cachefs: {text}: {message}; {summary}", file=sys.stderr)
            code = FAIL
        else:
            print(f"cachefs: warmed {text}: {summary}")
    return code


def _store_and_key(args: argparse.Namespace, dest: str) -> tuple[Any, str, Config]:
    """``s3://BUCKET/KEY`` or a key relative to the configured store."""
    from ..store import open_store, parse_store_url

    config = load_config(args)
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
    from ..pack import codec, save
    from ..remote.manifest import add_pack_entry

    root = Path(args.directory)
    if not root.is_dir():
        raise Failure(f"{root} is not a directory")
    if args.from_mount:
        return _pack_from_mount(root, args.key, args.json)
    store, key, _ = _store_and_key(args, args.key)
    store.ensure()
    store.check()
    files, total = save.tree_size(root)
    bar = Progress(f"packing {files} files")
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        bar.update(done[0], total)

    level = codec.parse_level(f"zstd:{args.level}") or codec.DEFAULT_LEVEL
    try:
        summary = save.pack_directory(root, store, key, level, progress, force=args.force)
    except Exists as e:
        bar.close()
        when = (" (another runner stored it while this one was packing)"
                if isinstance(e, save.SavedMeanwhile) else "")
        raise Failure(f"{key} already exists{when}; packs are immutable, so it was not "
                      "replaced (--force replaces it)", EXISTS) from None
    add_pack_entry(store, key, summary.pop("info"))
    bar.close()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"cachefs: packed {summary['files']} files ({human(summary['bytes_in'])}) into "
              f"{key}: {human(summary['bytes_stored'])} in {summary['frames']} frames, "
              f"{summary['seconds']}s")
    return OK


def _pack_from_mount(root: Path, key: str, as_json: bool) -> int:
    """Ask the mount holding ``root`` to save it as pack ``key`` (it knows the frames)."""
    if "://" in key:
        raise Failure(f"{key}: with --from-mount give a KEY within the mount's store (frames "
                      "are shared within one bucket)")
    mountpoint, rel = (root.absolute(), "") if os.path.ismount(root) else find_mount(root)
    bar = Progress(f"saving {root} as {key}")
    done = threading.Event()
    watcher = threading.Thread(target=watch_transfer, args=(mountpoint, key, bar, done, "upload"),
                               daemon=True)
    watcher.start()
    try:
        os.setxattr(mountpoint, "user.cachefs.pack",
                    json.dumps({"path": rel, "key": key}).encode())
    except OSError as e:
        if e.errno == errno.EEXIST:
            raise Failure(f"{key} already exists; packs are immutable, so it was not replaced "
                          "(another runner may have saved it first)", EXISTS) from None
        raise Failure(f"{root}: not saved as {key}: {e.strerror}") from None
    finally:
        done.set()
        watcher.join()
        bar.close()
    summary = mount_control(str(mountpoint), "packed")
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"cachefs: saved {root} as {summary['key']}: {summary['files']} files, "
              f"{summary['frames_new']} new frames ({human(summary['bytes_stored'])} uploaded), "
              f"{summary['frames_reused']} frames reused from stored packs, "
              f"{summary['seconds']}s")
    return OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import run_doctor

    return run_doctor(load_config(args))


def _cache_dir_or_mount(args: argparse.Namespace) -> tuple[Path | None, Path]:
    """(mount point, cache dir): a running mount is asked to do the work itself."""
    if args.target and os.path.ismount(args.target):
        return Path(args.target).absolute(), Path()
    config = load_config(args)
    return None, Path(args.target or config.cache_dir)


def cmd_verify(args: argparse.Namespace) -> int:
    from ..daemon.lock import CacheDirBusy
    from . import maintenance

    mountpoint, cache_dir = _cache_dir_or_mount(args)
    if mountpoint is not None:
        os.setxattr(mountpoint, "user.cachefs.verify", b"repair" if args.repair else b"check")
        report = mount_control(str(mountpoint), "verified")
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
        print(f"cachefs: checked {report['checked']} blobs ({human(report['bytes'])}): "
              f"{len(report['bad'])} bad" + (", removed (they are fetched again when read)"
                                             if report["bad"] and report["repaired"] else ""))
        for digest in report["bad"]:
            print(f"  bad blob {digest}")
        for digest in report["pending_uploads_damaged"]:
            print(f"  a pending upload lost its content: {digest}", file=sys.stderr)
    return MISS if report["bad"] and not report["repaired"] else OK


def cmd_clear(args: argparse.Namespace) -> int:
    from ..daemon.lock import CacheDirBusy
    from . import maintenance

    mountpoint, cache_dir = _cache_dir_or_mount(args)
    if mountpoint is not None:
        raise Failure(f"{mountpoint} is mounted: unmount it before clearing its cache dir")
    if not (cache_dir / "blobs").is_dir():
        raise Failure(f"{cache_dir} is not a cachefs cache dir")
    try:
        report = maintenance.clear(cache_dir)
    except CacheDirBusy as e:
        raise Failure(f"{e}: unmount it first") from None
    print(f"cachefs: removed {report['removed']} blobs ({human(report['bytes'])}) from "
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

    print(script(args.shell, args.parser), end="")
    return OK


def cmd_migrate_store(args: argparse.Namespace) -> int:
    """Convert a local store of the old encoding into a plain directory."""
    from ..store import parse_store_url
    from ..store.local import is_legacy
    from ..store.plain import migrate

    location = parse_store_url(load_config(args).store)
    if location.scheme != "file":
        raise Failure(f"{location.url} is not a local store (file:///DIR): nothing to migrate")
    root = Path(location.bucket)
    if not is_legacy(root):
        print(f"cachefs: {root} is a plain directory already: nothing to do")
        return OK
    summary = migrate(root)
    print(f"cachefs: {root} is a plain directory now: {summary['objects']} objects "
          f"({human(summary['bytes'])}); the old tree is kept in {summary['old']} "
          "(remove it once the store works)")
    return OK
