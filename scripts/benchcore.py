"""The frame of ``scripts/bench.py``: the run context, the operations on a directory, and the
base classes of systems (with the cold/warm/hot mount cycle and the daemon handling).

To add an operation: write ``fs_<name>(target, ctx) -> list[Sample]``, list it in ``FS_OPS``
and ``OP_INFO``, and give ``BASELINES`` a rule if it has one. A system that does it by other
means (a client) maps the name to a method in its ``ops``.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from benchdata import TREE, Workload
from benchlib import (
    TTFB_BYTES,
    BenchError,
    RssPeak,
    Sample,
    Scratch,
    call_with_timeout,
    drop_caches,
    kill_group,
    measure,
    run,
    tree_totals,
    warm_page_cache,
)
from benchreport import OpInfo

from tests.servers import SeaweedFS

ROOT = Path(__file__).resolve().parent.parent
STATES = ("cold", "warm", "hot")
MOUNT_WAIT = 60.0        # seconds a FUSE daemon may take to show its mount

# Operations in the order they run and are reported: what each does, and which rates apply.
OP_INFO: dict[str, OpInfo] = {
    "cp_tree": OpInfo("cp -r of the whole tree to a fresh dir on disk", mb=True, files=True),
    "ls_tree": OpInfo("ls -lR of the tree", mb=False, files=True),
    "find_tree": OpInfo("find -type f of the tree", mb=False, files=True),
    "read_big": OpInfo("sequential read of each big file (cp to tmpfs)", mb=True, files=False),
    "ttfb_big": OpInfo(f"open + first {TTFB_BYTES // 1024} KiB of each big file", mb=False,
                       files=False),
    "write_big": OpInfo("cp of a local file into the store (close returns once stored)",
                        mb=True, files=False),
    "read_part": OpInfo("read every file of every 10th module (4 readers), what a build reads",
                        mb=True, files=True),
    "save_tree": OpInfo("put the whole tree into the store (pack / one PUT per file / tar.zst)",
                        mb=True, files=True),
}

# (operation, state) -> baselines, each (system, state) from the same run. The ratio is
# median seconds / baseline median seconds: below 1 is faster than the baseline.
BASELINES: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    ("cp_tree", "cold"): (("tar.zst", "cold"), ("boto3", "cold"), ("s3fs", "cold"),
                          ("rclone", "cold")),
    ("ls_tree", "cold"): (("boto3", "cold"),),
    ("find_tree", "cold"): (("boto3", "cold"),),
    ("read_big", "cold"): (("boto3", "cold"),),
    ("ttfb_big", "cold"): (("boto3", "cold"),),
    ("write_big", "cold"): (("boto3", "cold"),),
    ("read_part", "cold"): (("tar.zst", "cold"), ("cachefs", "cold")),
    ("save_tree", "cold"): (("boto3", "cold"), ("tar.zst", "cold")),
    **{(op, state): (("local", state),) for op in OP_INFO for state in ("warm", "hot")},
}


# -- the run context ------------------------------------------------------------------------


@dataclass
class Ctx:
    """Everything a measurement needs; built once in main, passed down, never global."""

    work: Path
    server: SeaweedFS
    endpoint: str         # what the measured systems talk to: the server, or the shaped proxy
    bucket: str
    s3: Any
    wl: Workload
    scratch: Scratch
    repeat: int
    peer_repeat: int
    timeout: float
    started: float = field(default_factory=time.monotonic)
    dropped: bool = True

    def say(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f}s] {msg}", file=sys.stderr, flush=True)

    def drop_caches(self) -> None:
        self.dropped = drop_caches() and self.dropped

    def s3_env(self) -> dict[str, str]:
        """The server's keys, with the endpoint the measured systems are to use."""
        return self.server.env() | {"CACHEFS_ENDPOINT": self.endpoint}

    def child_env(self) -> dict[str, str]:
        """The environment for daemons: no developer config, only the bench server's keys."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CACHEFS_", "AWS_", "RCLONE_"))}
        home = self.work / "home"
        env.update(XDG_CONFIG_HOME=str(home / "config"), XDG_CACHE_HOME=str(home / "cache"),
                   XDG_DATA_HOME=str(home / "data"), AWS_EC2_METADATA_DISABLED="true")
        return env


@dataclass
class Target:
    """A directory where the bucket's keys appear as files, and who serves it."""

    root: Path
    pids: list[int]


# -- operations on a directory (local disk or a FUSE mount) ---------------------------------


def check_tree(sample: Sample, dest: Path, wl: Workload) -> Sample:
    """A copy that silently missed files would look fast: count them, outside the timing."""
    if sample.ok:
        files, size = tree_totals(dest)
        if (files, size) != (wl.tree_files, wl.tree_bytes):
            sample.error = (f"incomplete copy: {files} files / {size} bytes, expected "
                            f"{wl.tree_files} / {wl.tree_bytes}")
    return sample


def fs_cp_tree(t: Target, ctx: Ctx) -> list[Sample]:
    dest = ctx.scratch.disk_dir("cp") / TREE
    s = measure(lambda: run(["cp", "-r", t.root / TREE, dest], ctx.timeout), t.pids,
                files=ctx.wl.tree_files, nbytes=ctx.wl.tree_bytes)
    check_tree(s, dest, ctx.wl)
    ctx.scratch.discard(dest.parent)
    return [s]


def fs_ls_tree(t: Target, ctx: Ctx) -> list[Sample]:
    out: list[str] = []
    s = measure(lambda: out.append(run(["ls", "-lR", t.root / TREE], ctx.timeout, capture=True)),
                t.pids, files=ctx.wl.tree_files)
    if s.ok and out[0].count("\n") < ctx.wl.tree_files:
        s.error = f"ls -lR printed {out[0].count(chr(10))} lines for {ctx.wl.tree_files} files"
    return [s]


def fs_find_tree(t: Target, ctx: Ctx) -> list[Sample]:
    out: list[str] = []
    s = measure(lambda: out.append(run(["find", t.root / TREE, "-type", "f"], ctx.timeout,
                                       capture=True)), t.pids, files=ctx.wl.tree_files)
    if s.ok and out[0].count("\n") != ctx.wl.tree_files:
        s.error = f"find saw {out[0].count(chr(10))} files, expected {ctx.wl.tree_files}"
    return [s]


def fs_read_big(t: Target, ctx: Ctx) -> list[Sample]:
    samples = []
    for big in ctx.wl.big:
        dest = ctx.scratch.mem_dir("big")
        s = measure(functools.partial(run, ["cp", t.root / big.key, dest / "f"], ctx.timeout),
                    t.pids, nbytes=big.size)
        if s.ok and (dest / "f").stat().st_size != big.size:
            s.error = f"read {(dest / 'f').stat().st_size} bytes of {big.size}"
        ctx.scratch.discard(dest)
        samples.append(s)
        if not s.ok:
            break
    return samples


def first_bytes(path: Path, n: int = TTFB_BYTES) -> float:
    """Seconds from open() until ``n`` bytes have been read (close is not counted)."""
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        got = 0
        while got < n:
            chunk = os.read(fd, n - got)
            if not chunk:
                raise BenchError(f"{path}: only {got} bytes")
            got += len(chunk)
        return time.perf_counter() - start
    finally:
        os.close(fd)


def fs_ttfb_big(t: Target, ctx: Ctx) -> list[Sample]:
    samples = []
    for big in ctx.wl.big:
        with RssPeak(t.pids) as rss:
            try:
                seconds = call_with_timeout(functools.partial(first_bytes, t.root / big.key),
                                            ctx.timeout)
            except BenchError as e:
                samples.append(Sample(error=str(e)))
                break
        samples.append(Sample(seconds=seconds, nbytes=TTFB_BYTES, rss_kib=rss.peak_kib))
    return samples


def fs_write_big(t: Target, ctx: Ctx) -> list[Sample]:
    key = f"bench-write-{uuid.uuid4().hex[:8]}.bin"
    warm_page_cache(ctx.wl.write_src)
    s = measure(lambda: run(["cp", ctx.wl.write_src, t.root / key], ctx.timeout), t.pids,
                nbytes=ctx.wl.write_bytes)
    if s.ok:
        stored = ctx.s3.head_object(Bucket=ctx.bucket, Key=key)["ContentLength"]
        if stored != ctx.wl.write_bytes:
            s.error = f"store holds {stored} bytes of {ctx.wl.write_bytes} after close"
    ctx.s3.delete_object(Bucket=ctx.bucket, Key=key)
    return [s]


def fs_read_part(t: Target, ctx: Ctx) -> list[Sample]:
    """``xargs -P4 cat`` over the chosen files: a build reading what it needs, in parallel."""
    listing = ctx.scratch.disk_dir("part") / "files"
    listing.write_bytes(b"".join(os.fsencode(t.root / TREE / p) + b"\0" for p in ctx.wl.part))
    out: list[str] = []
    s = measure(lambda: out.append(run(["xargs", "-0", "-P4", "-n64", "-a", listing, "cat"],
                                       ctx.timeout, capture=True)),
                t.pids, files=len(ctx.wl.part), nbytes=ctx.wl.part_bytes)
    if s.ok and len(out[0].encode(errors="surrogateescape")) < ctx.wl.part_bytes // 2:
        s.error = f"read {len(out[0])} characters of {ctx.wl.part_bytes} bytes"
    say_downloaded(t.root, ctx)
    ctx.scratch.discard(listing.parent)
    return [s]


def say_downloaded(path: Path, ctx: Ctx) -> None:
    """Log how many bytes a cachefs mount has fetched from the store so far (its counters)."""
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    try:
        stats = json.loads(os.getxattr(path, "user.cachefs.stats"))
    except OSError:
        return          # not a cachefs mount
    counters = stats.get("counters", stats)
    ctx.say(f"  {path.name}: {counters.get('bytes_from_store', 0) / 1e6:.1f} MB downloaded from "
            "the store since mounting")


@dataclass(frozen=True)
class FsOp:
    fn: Callable[[Target, Ctx], list[Sample]]
    states: tuple[str, ...] = STATES
    writes: bool = False


FS_OPS: dict[str, FsOp] = {
    "cp_tree": FsOp(fs_cp_tree),
    "ls_tree": FsOp(fs_ls_tree),
    "find_tree": FsOp(fs_find_tree),
    "read_big": FsOp(fs_read_big),
    "ttfb_big": FsOp(fs_ttfb_big),
    "write_big": FsOp(fs_write_big, states=("cold",), writes=True),
    "read_part": FsOp(fs_read_part),
}

Record = Callable[[str, Sample], None]


# -- systems --------------------------------------------------------------------------------


class System:
    """Something that can perform some operations; knows how to run them and clean up."""

    name: ClassVar[str] = ""
    # Peers (other FUSE filesystems) are reference points that take minutes per sample on the
    # full tree: they get --peer-repeat samples, cachefs and the baselines get --repeat.
    peer: ClassVar[bool] = False

    def repeats(self, ctx: Ctx) -> int:
        return ctx.peer_repeat if self.peer else ctx.repeat

    def unavailable(self) -> str | None:
        """Why this system cannot run here, or None."""
        return None

    def states(self, op: str) -> tuple[str, ...]:
        return ()

    def run(self, op: str, ctx: Ctx, record: Record) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Force-stop whatever is still running (on errors and Ctrl-C); idempotent."""


class FsSystem(System):
    """A directory view of the bucket. Cold: fresh cache dir, mounted, page cache dropped.
    Warm: remounted on that same cache dir, page cache dropped. Hot: same mount, cache kept."""

    supported: ClassVar[tuple[str, ...]] = STATES
    writable: ClassVar[bool] = False

    def start(self, ctx: Ctx, cache: Path, state: str) -> Target:
        raise NotImplementedError

    def stop(self, ctx: Ctx) -> None:
        """Unmount and wait for the daemon; must raise BenchError on an unclean stop."""

    def fetched(self) -> int | None:
        """Bytes fetched from the store since the mount, if the system says (None: it does
        not)."""
        return None

    def states(self, op: str) -> tuple[str, ...]:
        fsop = FS_OPS.get(op)
        if fsop is None or (fsop.writes and not self.writable):
            return ()
        return tuple(s for s in self.supported if s in fsop.states)

    def run(self, op: str, ctx: Ctx, record: Record) -> None:
        states = self.states(op)
        phases = [[s] for s in states if s == "cold"] + [[s for s in states if s != "cold"]]
        for _ in range(self.repeats(ctx)):
            cache = ctx.scratch.disk_dir(f"cache-{self.name}")
            try:
                if not self._repeat(op, ctx, cache, [p for p in phases if p], record):
                    return
            finally:
                ctx.scratch.discard(cache)

    def _repeat(self, op: str, ctx: Ctx, cache: Path, phases: list[list[str]],
                record: Record) -> bool:
        """One cold mount, then one warm mount; False once something failed (stop repeating:
        a failure is usually not noise, and a timeout would only cost the same again)."""
        for phase in phases:
            try:
                target = self.start(ctx, cache, phase[0])
            except BenchError as e:
                record(phase[0], Sample(error=f"mount: {e}"))
                self.close()
                return False
            ok = True
            try:
                for state in phase:
                    if state != "hot":
                        ctx.drop_caches()
                    before = self.fetched()
                    for sample in FS_OPS[op].fn(target, ctx):
                        after = self.fetched()
                        if before is not None and after is not None:
                            sample.fetched, before = after - before, after
                        record(state, sample)
                        ok = ok and sample.ok
                    if not ok:
                        break
            finally:
                try:
                    self.stop(ctx)
                except BenchError as e:
                    record(phase[-1], Sample(error=f"unmount: {e}"))
                    self.close()
                    ok = False
            if not ok:
                return False
        return True


def fuse_unmount(path: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, check=False)


def wait_gone(pid: int, timeout: float) -> bool:
    """True once ``pid`` has exited (or is a zombie nobody reaps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def kill_pid(pid: int) -> None:
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_gone(pid, grace):
            return


class CliMount:
    """One ``cachefs mount`` at a time on one mount point, as a user runs it (for the scripts
    that time one feature, not the system table): the CLI daemonizes and the daemon's PID comes
    from its xattr; ``stop`` unmounts and waits for it, ``close`` forces (errors, Ctrl-C)."""

    def __init__(self, path: Path, env: dict[str, str]) -> None:
        self.path, self.env, self.cache = path, env, path
        self.pid: int | None = None
        path.mkdir(parents=True, exist_ok=True)

    def cli(self, *args: str, timeout: float) -> str:
        """Run ``cachefs ARGS``; a failure becomes a BenchError with the daemon's last words."""
        try:
            r = subprocess.run([sys.executable, "-m", "cachefs", *args], env=self.env,
                               cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                               start_new_session=True, check=False)
        except subprocess.TimeoutExpired:
            raise BenchError(f"cachefs {args[0]} took over {timeout:.0f}s") from None
        if r.returncode != 0:
            log = self.cache / "cachefs.log"
            tail = log.read_text(errors="replace").splitlines()[-3:] if log.exists() else []
            raise BenchError(f"cachefs {args[0]} exited {r.returncode}: {r.stderr.strip()} "
                             f"{' | '.join(tail)}".strip())
        return r.stdout

    def start(self, bucket: str, cache: Path, *flags: str) -> None:
        self.cache = cache
        self.cli("mount", "--store", f"s3://{bucket}", "--cache-dir", str(cache), *flags,
                 str(self.path), timeout=MOUNT_WAIT + 60)
        self.pid = int(os.getxattr(self.path, "user.cachefs.pid"))

    def stop(self) -> None:
        """``cachefs umount``: waits for pending uploads, then for the daemon."""
        if self.pid is not None:
            self.cli("umount", str(self.path), timeout=330)
            if not wait_gone(self.pid, 30):
                raise BenchError(f"daemon {self.pid} still running 30s after umount")
            self.pid = None

    def close(self) -> None:
        if os.path.ismount(self.path):
            fuse_unmount(self.path)
        if self.pid is not None:
            kill_pid(self.pid)
            self.pid = None


class ProcMountSystem(FsSystem):
    """A FUSE daemon we run in the foreground ourselves, so we hold its PID from the start."""

    def __init__(self) -> None:
        self.mnt: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: Path | None = None

    def command(self, ctx: Ctx, cache: Path, mnt: Path) -> list[str]:
        raise NotImplementedError

    def env(self, ctx: Ctx) -> dict[str, str]:
        return ctx.child_env()

    def start(self, ctx: Ctx, cache: Path, state: str) -> Target:
        self.mnt = ctx.work / "mnt" / self.name
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.log = ctx.work / "logs" / f"{self.name}.log"
        self.log.parent.mkdir(exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(ctx, cache, self.mnt), env=self.env(ctx),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        deadline = time.monotonic() + MOUNT_WAIT
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise BenchError(f"{self.name} did not mount: {self.log_tail()}")
            time.sleep(0.05)
        return Target(self.mnt, [self.proc.pid])

    def log_tail(self) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-3:])

    def stop(self, ctx: Ctx) -> None:
        if self.proc is None or self.mnt is None:
            return
        result = subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True,
                                text=True, check=False)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.close()
            raise BenchError(f"{self.name} did not exit after unmount") from None
        if result.returncode != 0:
            self.close()
            raise BenchError(f"fusermount3 -u: {result.stderr.strip()}")
        self.proc = None

    def close(self) -> None:
        if self.mnt is not None and os.path.ismount(self.mnt):
            fuse_unmount(self.mnt)
        if self.proc is not None:
            kill_group(self.proc)
            self.proc = None


class ApiSystem(System):
    """A client doing an operation by itself (no mount): cold only, page cache dropped first.

    Subclasses map operation names to methods in ``ops``.
    """

    ops: ClassVar[dict[str, str]] = {}

    def states(self, op: str) -> tuple[str, ...]:
        return ("cold",) if op in self.ops else ()

    def run(self, op: str, ctx: Ctx, record: Record) -> None:
        fn: Callable[[Ctx], list[Sample]] = getattr(self, self.ops[op])
        for _ in range(self.repeats(ctx)):
            ctx.drop_caches()
            samples = fn(ctx)
            for sample in samples:
                record("cold", sample)
            if not all(s.ok for s in samples):
                return


