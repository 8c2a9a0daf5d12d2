#!/usr/bin/env python3
"""Benchmark cachefs against its baselines and peers, all measured in one run.

    python scripts/bench.py [--quick] [--json FILE] [--png FILE] [--repeat N] [--only NAMES]
                            [--network lo|ci|far]

Starts SeaweedFS on 127.0.0.1, puts a Go-module-cache-shaped tree, big random files and the
tree as one tar.zst into a bucket, then times each operation on each system cold (empty cache,
page cache dropped), warm (remounted on the same cache dir, page cache dropped) and hot (page
cache kept). Every number is a median of --repeat samples and every ratio is against a baseline
measured in the same run, so a noisy machine shifts both sides alike. ``--network ci|far`` puts
the server behind a delaying proxy and a rate limit (``benchnet.py``) that every system that
talks to S3 goes through. See docs/PERFORMANCE.md.

This file holds what is measured: the tunables (mount options), the systems and ``main``. To
add a system, subclass ``FsSystem`` (anything with a directory to read; ``CachefsSystem`` for a
cachefs variant, overriding ``mount_args``) or ``ApiSystem`` (a client doing the operation
itself) and list it in ``SYSTEMS``. Operations live in ``benchcore.py``; the data in
``benchdata.py``; the table in ``benchreport.py``; processes and timing in ``benchlib.py``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchcore import (  # noqa: E402
    BASELINES,
    MOUNT_WAIT,
    OP_INFO,
    STATES,
    ApiSystem,
    Ctx,
    FsSystem,
    ProcMountSystem,
    Record,
    System,
    Target,
    check_tree,
    fuse_unmount,
    kill_pid,
    wait_gone,
)
from benchdata import (  # noqa: E402
    ARCHIVE_KEY,
    PACK_KEY,
    TREE,
    build_workload,
    extract_archive,
    make_archive,
    upload_workload,
)
from benchlib import (  # noqa: E402
    TTFB_BYTES,
    UPLOAD_WORKERS,
    BenchError,
    GiB,
    MiB,
    Sample,
    Scratch,
    cleanup_on_signals,
    get_latency,
    list_keys,
    measure,
    s3_client,
    version_of,
    warm_page_cache,
)
from benchnet import NETWORKS, Network  # noqa: E402
from benchreport import Key, Row, summarize, table, write_png  # noqa: E402

from cachefs.daemon.control import read_control  # noqa: E402
from cachefs.errors import CacheFSError  # noqa: E402
from tests.servers import KEY_ID, SECRET, SeaweedFS  # noqa: E402

# -- what the maintainer tunes --------------------------------------------------------------

# Flags for every `cachefs mount` the benchmark makes (store, cache dir and mount point are
# added by CachefsSystem). Put new options here, e.g. ("--connections", "32").
CACHEFS_MOUNT_ARGS: tuple[str, ...] = ()
# s3fs: its default 5 parallel requests and 10 MB parts are tuned for the WAN; give it what
# cachefs gets (16 connections) so the comparison is of designs, not defaults.
S3FS_OPTIONS: tuple[str, ...] = ("parallel_count=16", "multipart_size=16", "multireq_max=16",
                                 "dbglevel=warn")
# rclone: the mode that caches file data on disk across remounts, like cachefs.
RCLONE_ARGS: tuple[str, ...] = ("--vfs-cache-mode", "full", "--transfers", "16",
                                "--log-level", "NOTICE")

FULL = {"files": 20_000, "big": 3, "big_mib": 256, "write_mib": 1024, "repeat": 3,
        "peer_repeat": 1, "timeout": 300.0}
QUICK = {"files": 2_000, "big": 1, "big_mib": 256, "write_mib": 256, "repeat": 1,
         "peer_repeat": 1, "timeout": 120.0}


# -- systems --------------------------------------------------------------------------------


class LocalSystem(FsSystem):
    """The same files on local disk: the baseline for warm and hot numbers."""

    name = "local"
    supported = ("warm", "hot")

    def start(self, ctx: Ctx, cache: Path, state: str) -> Target:
        return Target(ctx.wl.local, [])


class CachefsSystem(FsSystem):
    """``cachefs mount`` as a user runs it: the CLI daemonizes; its PID comes from the xattr.

    Variants (a pack, --prefetch on warm mounts) subclass this and override ``mount_args``.
    """

    name = "cachefs"
    writable = True

    def __init__(self) -> None:
        self.mnt: Path | None = None
        self.pid: int | None = None
        self.cache: Path | None = None

    def mount_args(self, ctx: Ctx, state: str) -> list[str]:
        return list(CACHEFS_MOUNT_ARGS)

    def cli(self, ctx: Ctx, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        env = ctx.child_env() | ctx.s3_env()
        try:
            return subprocess.run([sys.executable, "-m", "cachefs", *args], env=env, text=True,
                                  capture_output=True, timeout=timeout, cwd=ROOT, check=False)
        except subprocess.TimeoutExpired:
            raise BenchError(f"cachefs {args[0]} took over {timeout:.0f}s") from None

    def log_tail(self) -> str:
        log = (self.cache / "cachefs.log") if self.cache else None
        if log is None or not log.exists():
            return ""
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])

    def start(self, ctx: Ctx, cache: Path, state: str) -> Target:
        self.mnt = ctx.work / "mnt" / self.name
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.cache = cache
        result = self.cli(ctx, "mount", "--store", f"s3://{ctx.bucket}", "--cache-dir",
                          str(cache), *self.mount_args(ctx, state), str(self.mnt),
                          timeout=MOUNT_WAIT + 60)
        if result.returncode != 0:
            raise BenchError(f"{result.stderr.strip()} {self.log_tail()}".strip())
        self.pid = int(os.getxattr(self.mnt, "user.cachefs.pid"))
        return Target(self.mnt, [self.pid])

    def fetched(self) -> int | None:
        if self.mnt is None or self.pid is None:
            return None
        try:
            stats = read_control(self.mnt, "stats")
        except CacheFSError:
            return None
        return int(stats["counters"].get("bytes_from_store", 0))

    def stop(self, ctx: Ctx) -> None:
        if self.mnt is None or self.pid is None:
            return
        result = self.cli(ctx, "umount", str(self.mnt), timeout=300)
        if result.returncode != 0:
            raise BenchError(f"{result.stderr.strip()} {self.log_tail()}".strip())
        if not wait_gone(self.pid, 30):
            raise BenchError(f"daemon {self.pid} still running 30s after umount")
        self.pid = None

    def close(self) -> None:
        if self.mnt is not None and os.path.ismount(self.mnt):
            fuse_unmount(self.mnt)
        if self.pid is not None:
            kill_pid(self.pid)
            self.pid = None


class PackSystem(CachefsSystem):
    """The tree saved as one pack (``cachefs pack``) and read through a mount of the bucket,
    where the pack key is a directory: listings from its table, frames fetched on first read."""

    name = "pack"
    writable = False

    def __init__(self) -> None:
        super().__init__()
        self.packed = False

    def states(self, op: str) -> tuple[str, ...]:
        if op in ("read_big", "ttfb_big"):  # the pack holds the tree only
            return ()
        return ("cold",) if op == "save_tree" else super().states(op)

    def run(self, op: str, ctx: Ctx, record: Record) -> None:
        if op != "save_tree":
            super().run(op, ctx, record)
            return
        for _ in range(self.repeats(ctx)):
            ctx.drop_caches()
            s = self._pack(ctx, f"saves/gomod-{uuid.uuid4().hex[:8]}")
            record("cold", s)
            if not s.ok:
                return

    def _pack(self, ctx: Ctx, key: str) -> Sample:
        def pack() -> None:
            result = self.cli(ctx, "pack", str(ctx.wl.pack_src), f"s3://{ctx.bucket}/{key}",
                              timeout=ctx.timeout)
            if result.returncode != 0:
                raise BenchError(f"cachefs pack exited {result.returncode}: "
                                 f"{result.stderr.strip()[-300:]}")

        return measure(pack, files=ctx.wl.tree_files, nbytes=ctx.wl.tree_bytes)

    def start(self, ctx: Ctx, cache: Path, state: str) -> Target:
        if not self.packed and not _stored(ctx, PACK_KEY):  # (a variant may have made it)
            s = self._pack(ctx, PACK_KEY)
            if not s.ok:
                raise BenchError(s.error or "pack failed")
            self.packed = True
        target = super().start(ctx, cache, state)
        return Target(target.root / PACK_KEY, target.pids)


class CachefsReadOnlySystem(CachefsSystem):
    """A ``--read-only`` mount: files served without OPEN/RELEASE (no-open), pages kept by the
    kernel, READ only for pages it does not have (docs/PERFORMANCE.md)."""

    name = "cachefs-ro"
    writable = False

    def mount_args(self, ctx: Ctx, state: str) -> list[str]:
        return [*super().mount_args(ctx, state), "--read-only"]


class PackReadOnlySystem(PackSystem):
    """The pack through a ``--read-only`` mount (no-open), as a CI job restoring a cache reads
    it."""

    name = "pack-ro"

    def states(self, op: str) -> tuple[str, ...]:
        return () if op == "save_tree" else super().states(op)

    def mount_args(self, ctx: Ctx, state: str) -> list[str]:
        return [*super().mount_args(ctx, state), "--read-only"]


def _stored(ctx: Ctx, key: str) -> bool:
    try:
        ctx.server.client().head_object(Bucket=ctx.bucket, Key=key)
    except Exception:  # botocore's ClientError: not there (or not readable)
        return False
    return True


class S3fsSystem(ProcMountSystem):
    name = "s3fs"
    peer = True

    def unavailable(self) -> str | None:
        return None if shutil.which("s3fs") else "s3fs is not on PATH (apt-get install s3fs)"

    def command(self, ctx: Ctx, cache: Path, mnt: Path) -> list[str]:
        passwd = ctx.work / "s3fs.passwd"
        if not passwd.exists():
            passwd.write_text(f"{KEY_ID}:{SECRET}\n")
            passwd.chmod(0o600)
        options = [f"url={ctx.endpoint}", "use_path_request_style",
                   f"passwd_file={passwd}", f"use_cache={cache}", *S3FS_OPTIONS]
        return ["s3fs", ctx.bucket, str(mnt), "-f", *(a for o in options for a in ("-o", o))]


class RcloneSystem(ProcMountSystem):
    name = "rclone"
    peer = True

    def unavailable(self) -> str | None:
        return None if shutil.which("rclone") else "rclone is not on PATH (apt-get install rclone)"

    def env(self, ctx: Ctx) -> dict[str, str]:
        remote = {"TYPE": "s3", "PROVIDER": "SeaweedFS", "ENDPOINT": ctx.endpoint,
                  "ACCESS_KEY_ID": KEY_ID, "SECRET_ACCESS_KEY": SECRET, "REGION": "us-east-1",
                  "FORCE_PATH_STYLE": "true"}
        return ctx.child_env() | {f"RCLONE_CONFIG_BENCH_{k}": v for k, v in remote.items()}

    def command(self, ctx: Ctx, cache: Path, mnt: Path) -> list[str]:
        config = ctx.work / "rclone.conf"
        config.touch()
        return ["rclone", "mount", f"bench:{ctx.bucket}", str(mnt), "--config", str(config),
                "--cache-dir", str(cache), *RCLONE_ARGS]


class Boto3System(ApiSystem):
    """What a script would do with boto3: the floor for cold reads, listing and writes."""

    name = "boto3"
    ops = {"cp_tree": "download_tree", "ls_tree": "list_tree", "find_tree": "list_tree",
           "read_big": "download_big", "ttfb_big": "ranged_get", "write_big": "upload",
           "save_tree": "put_tree"}

    def __init__(self) -> None:
        self.client: Any = None

    def _client(self, ctx: Ctx) -> Any:
        if self.client is None:
            self.client = s3_client(ctx.endpoint, KEY_ID, SECRET, UPLOAD_WORKERS)
        return self.client

    def download_tree(self, ctx: Ctx) -> list[Sample]:
        """LIST, then GET -> write file with 32 threads (the listing is inside the timing)."""
        client, dest = self._client(ctx), ctx.scratch.disk_dir("boto3") / TREE

        def get(key: str) -> None:
            path = dest / key[len(TREE) + 1:]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(client.get_object(Bucket=ctx.bucket, Key=key)["Body"].read())

        def download() -> None:
            keys = list_keys(client, ctx.bucket, TREE + "/")
            with ThreadPoolExecutor(UPLOAD_WORKERS) as pool:
                futures = [pool.submit(get, k) for k, _ in keys]
                done, pending = wait_futures(futures, timeout=ctx.timeout)
                if pending:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise BenchError(f"timeout after {ctx.timeout:.0f}s")
                for f in done:
                    f.result()

        s = measure(download, files=ctx.wl.tree_files, nbytes=ctx.wl.tree_bytes)
        check_tree(s, dest, ctx.wl)
        ctx.scratch.discard(dest.parent)
        return [s]

    def list_tree(self, ctx: Ctx) -> list[Sample]:
        """One paginated LIST of the whole prefix: the least any listing can cost."""
        found: list[int] = []
        s = measure(lambda: found.append(len(list_keys(self._client(ctx), ctx.bucket,
                                                       TREE + "/"))),
                    files=ctx.wl.tree_files, timeout=ctx.timeout)
        if s.ok and found[0] != ctx.wl.tree_files:
            s.error = f"listed {found[0]} keys, expected {ctx.wl.tree_files}"
        return [s]

    def download_big(self, ctx: Ctx) -> list[Sample]:
        """``download_file`` to a real file (s3transfer's parallel ranged GETs)."""
        samples = []
        for big in ctx.wl.big:
            dest = ctx.scratch.mem_dir("boto3-big") / "f"
            s = measure(functools.partial(self._client(ctx).download_file, ctx.bucket, big.key,
                                          str(dest)), nbytes=big.size, timeout=ctx.timeout)
            ctx.scratch.discard(dest.parent)
            samples.append(s)
        return samples

    def ranged_get(self, ctx: Ctx) -> list[Sample]:
        """GET with ``Range: bytes=0-128KiB`` on a warm connection: the request round trip."""
        client = self._client(ctx)

        def first(key: str) -> bytes:
            return client.get_object(Bucket=ctx.bucket, Key=key,
                                     Range=f"bytes=0-{TTFB_BYTES - 1}")["Body"].read()

        return [measure(functools.partial(first, big.key), nbytes=TTFB_BYTES,
                        timeout=ctx.timeout) for big in ctx.wl.big]

    def put_tree(self, ctx: Ctx) -> list[Sample]:
        """One PUT per file, 32 threads: how a tree is saved as objects."""
        client, prefix = self._client(ctx), f"saves/objects-{uuid.uuid4().hex[:8]}"
        root = ctx.wl.pack_src
        paths = [Path(d) / n for d, _, names in os.walk(root) for n in names]

        def put(path: Path) -> None:
            client.put_object(Bucket=ctx.bucket, Key=f"{prefix}/{path.relative_to(root)}",
                              Body=path.read_bytes())

        def save() -> None:
            with ThreadPoolExecutor(UPLOAD_WORKERS) as pool:
                for _ in pool.map(put, paths):
                    pass

        return [measure(save, files=ctx.wl.tree_files, nbytes=ctx.wl.tree_bytes,
                        timeout=ctx.timeout)]

    def upload(self, ctx: Ctx) -> list[Sample]:
        key = f"bench-upload-{uuid.uuid4().hex[:8]}.bin"
        warm_page_cache(ctx.wl.write_src)
        s = measure(lambda: self._client(ctx).upload_file(str(ctx.wl.write_src), ctx.bucket, key),
                    nbytes=ctx.wl.write_bytes, timeout=ctx.timeout)
        self._client(ctx).delete_object(Bucket=ctx.bucket, Key=key)
        return [s]


class TarZstSystem(ApiSystem):
    """Restore the tree the way CLI cache tools do: one tar.zst object, GET | zstd -d | tar x."""

    name = "tar.zst"
    ops = {"cp_tree": "restore", "read_part": "restore", "save_tree": "save"}

    def save(self, ctx: Ctx) -> list[Sample]:
        """``tar c | zstd -T0 -3`` to a file, then one multipart upload: what cache tools do."""
        client = s3_client(ctx.endpoint, KEY_ID, SECRET, UPLOAD_WORKERS)
        out = ctx.scratch.disk_dir("tarzst-save") / "tree.tar.zst"

        def save() -> None:
            make_archive(ctx.wl.local, out)
            client.upload_file(str(out), ctx.bucket, f"saves/{uuid.uuid4().hex[:8]}.tar.zst")

        s = measure(save, files=ctx.wl.tree_files, nbytes=ctx.wl.tree_bytes, timeout=ctx.timeout)
        ctx.scratch.discard(out.parent)
        return [s]

    def restore(self, ctx: Ctx) -> list[Sample]:
        dest = ctx.scratch.disk_dir("tarzst")
        client = s3_client(ctx.endpoint, KEY_ID, SECRET, 4)
        s = measure(lambda: extract_archive(client, ctx.bucket, dest), files=ctx.wl.tree_files,
                    nbytes=ctx.wl.tree_bytes, timeout=ctx.timeout)
        check_tree(s, dest / TREE, ctx.wl)
        ctx.scratch.discard(dest)
        return [s]


# Systems in the order they run and appear in the table; add variants here.
SYSTEMS: tuple[type[System], ...] = (LocalSystem, CachefsSystem, CachefsReadOnlySystem,
                                     PackSystem, PackReadOnlySystem, Boto3System,
                                     TarZstSystem, S3fsSystem, RcloneSystem)


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true",
                   help="2,000 files, one big file, 256 MiB write, 1 repeat (< 5 minutes)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every raw sample here")
    p.add_argument("--png", type=Path, metavar="FILE", help="bar chart (needs matplotlib)")
    p.add_argument("--repeat", type=int, help="samples per measurement; medians are quoted "
                   "(default 3, --quick 1)")
    p.add_argument("--peer-repeat", type=int, help="samples for s3fs and rclone, which take "
                   "minutes each on the full tree (default 1)")
    p.add_argument("--only", metavar="NAMES", help="comma-separated systems and/or operations "
                   f"({', '.join(s.name for s in SYSTEMS)}; {', '.join(OP_INFO)}); baselines "
                   "are not added automatically")
    p.add_argument("--files", type=int, help="files in the tree (default 20000, quick 2000)")
    p.add_argument("--big-mib", type=int, help="size of each big file in MiB (default 256)")
    p.add_argument("--timeout", type=float, help="seconds one sample may take before it is "
                   "recorded as a timeout (default 300, quick 120)")
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp"),
                   help="where the scratch dir is made (default /var/tmp)")
    p.add_argument("--keep", action="store_true", help="keep the scratch dir (for debugging)")
    p.add_argument("--network", choices=list(NETWORKS), default="lo",
                   help="put S3 behind a shaped link: ci = 5 ms each way, 1 Gbit/s; far = 20 ms "
                   "each way, 200 Mbit/s; lo = loopback as is (default). Needs root and tc")
    return p.parse_args(argv)


def choose(args: argparse.Namespace) -> tuple[list[System], list[str]]:
    names = {n.strip() for n in (args.only or "").split(",") if n.strip()}
    known = {s.name for s in SYSTEMS} | set(OP_INFO)
    if names - known:
        raise SystemExit(f"--only: unknown {', '.join(sorted(names - known))}; "
                         f"known: {', '.join(sorted(known))}")
    want_systems = names & {s.name for s in SYSTEMS}
    want_ops = names & set(OP_INFO)
    systems = [s() for s in SYSTEMS if not want_systems or s.name in want_systems]
    return systems, [op for op in OP_INFO if not want_ops or op in want_ops]


def bench(ctx: Ctx, systems: list[System], ops: list[str],
          network: Network) -> tuple[dict[Key, list[Sample]], dict[str, float]]:
    """Every measurement; also the proxy's CPU seconds per (operation, system) when shaped."""
    results: dict[Key, list[Sample]] = {}
    proxy_cpu: dict[str, float] = {}
    for op in ops:
        for system in systems:
            if not system.states(op):
                continue
            ctx.scratch.settle(ctx.say)

            def record(state: str, s: Sample, op: str = op, name: str = system.name) -> None:
                results.setdefault((op, name, state), []).append(s)
                n = len(results[(op, name, state)])
                what = f"{s.seconds:.3f}s" if s.ok else f"FAILED: {s.error}"
                ctx.say(f"{op:<9} {name:<8} {state:<4} #{n}: {what}")

            network.cpu_since_mark()
            system.run(op, ctx, record)
            if network.proxy is not None:
                proxy_cpu[f"{op} {system.name}"] = spent = network.cpu_since_mark()
                ctx.say(f"{op:<9} {system.name:<8} the proxy used {spent:.1f} CPU s")
    return results, proxy_cpu


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    mode = QUICK if args.quick else FULL
    systems, ops = choose(args)
    network = Network(args.network)
    if why := network.unavailable():
        raise SystemExit(f"--network {args.network}: {why}")
    work = Path(tempfile.mkdtemp(prefix="cachefs-bench-", dir=args.workdir))
    shm = Path("/dev/shm")
    mem = Path(tempfile.mkdtemp(prefix="cachefs-bench-", dir=shm)) if shm.is_dir() else None
    server = SeaweedFS(work / "seaweed")
    begun = time.monotonic()
    try:
        with cleanup_on_signals():
            return _main(args, mode, systems, ops, work, mem, server, network, begun)
    except KeyboardInterrupt:
        print("\ninterrupted: unmounting and stopping what this run started", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # a second Ctrl-C must not skip cleanup
        try:
            for system in systems:
                system.close()
        finally:
            network.close()                            # loopback must never stay shaped
        server.stop()
        if mem is not None:
            shutil.rmtree(mem, ignore_errors=True)
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            print(f"removing {work} ...", file=sys.stderr)
            shutil.rmtree(work, ignore_errors=True)


def _main(args: argparse.Namespace, mode: dict[str, Any], systems: list[System], ops: list[str],
          work: Path, mem: Path | None, server: SeaweedFS, network: Network,
          begun: float) -> int:
    files = args.files or mode["files"]
    big_mib = args.big_mib or mode["big_mib"]
    repeat = args.repeat or mode["repeat"]
    peer_repeat = args.peer_repeat or mode["peer_repeat"]
    skipped = {s.name: why for s in systems if (why := s.unavailable())}
    systems = [s for s in systems if s.name not in skipped]
    for name, why in skipped.items():
        print(f"skipping {name}: {why}", file=sys.stderr)
    print(f"mode: {'quick' if args.quick else 'full'}; {files:,} files, {mode['big']} x "
          f"{big_mib} MiB big file(s), {mode['write_mib']} MiB write, repeat {repeat} "
          f"(peers {peer_repeat}); "
          f"work dir {work}", file=sys.stderr)
    server.start()
    s3 = s3_client(server.endpoint, KEY_ID, SECRET)
    bucket = "bench"
    s3.create_bucket(Bucket=bucket)
    print("making the workload and putting it into the bucket ...", file=sys.stderr)
    t0 = time.monotonic()
    wl = build_workload(work, files, mode["big"], big_mib * MiB, mode["write_mib"] * MiB)
    t1 = time.monotonic()
    upload_workload(s3, bucket, wl)
    t2 = time.monotonic()
    try:
        endpoint = network.start(server.endpoint)
    except RuntimeError as failure:
        print(f"--network {args.network}: {failure}", file=sys.stderr)
        return 2
    if endpoint != server.endpoint:
        direct, shaped = (get_latency(e, KEY_ID, SECRET, bucket, f"{TREE}/{wl.part[0]}")
                          for e in (server.endpoint, endpoint))
        network.header.append(f"  one small S3 GET at a time: {direct * 1e3:.1f} ms direct, "
                              f"{shaped * 1e3:.1f} ms through the link")
    for line in network.header:
        print(line, file=sys.stderr)
    ctx = Ctx(work=work, server=server, endpoint=endpoint, bucket=bucket, s3=s3, wl=wl,
              scratch=Scratch(work / "scratch", mem), repeat=repeat,
              peer_repeat=peer_repeat, timeout=args.timeout or mode["timeout"], started=begun)
    ctx.say(f"workload: {wl.describe()} (made in {t1 - t0:.0f}s, uploaded in "
            f"{t2 - t1:.0f}s)")
    results, proxy_cpu = bench(ctx, systems, ops, network)
    rows = summarize(results, OP_INFO, BASELINES, STATES, [s.name for s in systems])
    elapsed = time.monotonic() - begun
    print()
    print(f"cachefs benchmark, {'quick' if args.quick else 'full'} mode: {wl.describe()}; "
          f"median of {repeat} (s3fs, rclone: {peer_repeat}); {elapsed / 60:.1f} min")
    for line in network.header:
        print(line)
    if proxy_cpu:
        most = max(proxy_cpu, key=proxy_cpu.__getitem__)
        print(f"  the proxy used {sum(proxy_cpu.values()):.1f} CPU s during the measurements "
              f"(most in {most}: {proxy_cpu[most]:.1f} s)")
    print(table(rows))
    if not ctx.dropped:
        print("warning: could not drop the page cache (not root?): cold/warm are not cold")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    for r in rows:
        for e in dict.fromkeys(r.errors):
            print(f"error {r.op} {r.system} {r.state}: {e}")
    if args.json:
        args.json.write_text(json.dumps(report_json(args, ctx, rows, skipped, elapsed) | {
            "network": {"name": network.name, "link": network.link and vars(network.link),
                        "header": network.header, "proxy_cpu_s": proxy_cpu}}, indent=1))
        print(f"JSON written to {args.json}")
    if args.png:
        print(write_png(rows, OP_INFO, args.png))
    return 0 if all(not r.errors for r in rows) else 1


def report_json(args: argparse.Namespace, ctx: Ctx, rows: list[Row], skipped: dict[str, str],
                elapsed: float) -> dict[str, Any]:
    return {
        "mode": "quick" if args.quick else "full",
        "repeat": ctx.repeat,
        "peer_repeat": ctx.peer_repeat,
        "elapsed_s": round(elapsed, 1),
        "page_cache_dropped": ctx.dropped,
        "workload": ctx.wl.as_dict(),
        "archive_key": ARCHIVE_KEY,
        "cachefs_mount_args": list(CACHEFS_MOUNT_ARGS),
        "s3fs_options": list(S3FS_OPTIONS),
        "rclone_args": list(RCLONE_ARGS),
        "skipped": skipped,
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "s3fs": version_of(["s3fs", "--version"]),
                    "rclone": version_of(["rclone", "version"]),
                    "weed": version_of([shutil.which("weed") or
                                        str(Path(sys.executable).parent / "weed"), "version"]),
                    "mem_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
                                     / GiB, 1)},
        "results": [{"op": r.op, "system": r.system, "state": r.state,
                     "median_s": r.seconds, "mb_per_s": r.mbps, "files_per_s": r.files_ps,
                     "peak_rss_mib": r.rss_mib, "vs_baseline": r.ratios,
                     "samples": [s.as_dict() for s in r.samples]} for r in rows],
    }


if __name__ == "__main__":
    sys.exit(main())
