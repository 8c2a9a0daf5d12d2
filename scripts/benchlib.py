"""Building blocks of ``scripts/bench.py``: processes, timing, memory, scratch space, S3.

Kept apart so that ``bench.py`` reads as the list of systems and operations. Nothing here knows
which systems exist; everything that runs or lives longer than a call is owned by an object the
caller holds and closes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import boto3
from botocore.config import Config

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
TTFB_BYTES = 128 * KiB   # "first byte" = open + the first read a program typically issues
UPLOAD_WORKERS = 32      # parallel puts when seeding; also the boto3 tree-download baseline
T = TypeVar("T")


class BenchError(Exception):
    """A measurement failed: recorded as that sample's error, the run goes on."""


class BenchTimeout(BenchError):
    """A measurement took longer than --timeout: recorded as "timeout" rather than hanging."""


# -- samples and timing ---------------------------------------------------------------------


@dataclass
class Sample:
    """One timed run. ``error`` set means the numbers are not to be used."""

    seconds: float = 0.0
    nbytes: int = 0
    files: int = 0
    rss_kib: int | None = None
    error: str | None = None
    note: str = ""
    #: bytes the mount fetched from the store during the sample (cachefs systems only)
    fetched: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run(cmd: Sequence[str | Path], timeout: float, capture: bool = False,
        stdin: int | None = subprocess.DEVNULL) -> str:
    """Run a command; a non-zero exit or an overrun becomes a BenchError with the stderr tail.

    The child gets its own process group so a timeout kills everything it started (a ``cp``
    stuck in a FUSE read included, once the mount is torn down).
    """
    argv = [str(c) for c in cmd]
    proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE if capture
                            else subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise BenchTimeout(f"timeout after {timeout:.0f}s: {' '.join(argv[:3])}") from None
    except BaseException:
        kill_group(proc)
        raise
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        raise BenchError(f"{' '.join(argv[:2])} exited {proc.returncode}: {' | '.join(tail)}")
    return out.decode(errors="replace") if capture else ""


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL a child started with start_new_session, and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def call_with_timeout(fn: Callable[[], T], timeout: float) -> T:
    """Run an in-process call (a read, a boto3 transfer) with a bound on how long we wait.

    The call runs in a daemon thread: on timeout it is abandoned, not stopped; tearing down the
    mount afterwards is what unblocks a thread stuck in a FUSE request.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise BenchTimeout(f"timeout after {timeout:.0f}s")
    if "error" in box:
        error = box["error"]
        if isinstance(error, BenchError):
            raise error
        raise BenchError(f"{type(error).__name__}: {error}")
    return box["value"]


def measure(fn: Callable[[], object], pids: Sequence[int] = (), files: int = 0,
            nbytes: int = 0, timeout: float | None = None) -> Sample:
    """Time ``fn`` and the peak RSS of ``pids`` meanwhile; failures become the sample's error."""
    with RssPeak(pids) as rss:
        start = time.perf_counter()
        try:
            if timeout is None:
                fn()
            else:
                call_with_timeout(fn, timeout)
        except BenchTimeout as e:
            return Sample(seconds=time.perf_counter() - start, error=str(e))
        except BenchError as e:
            return Sample(error=str(e))
        seconds = time.perf_counter() - start
    return Sample(seconds=seconds, nbytes=nbytes, files=files, rss_kib=rss.peak_kib)


def drop_caches() -> bool:
    """``sync; echo 3 > drop_caches``: page cache, dentries and inodes (also the FUSE ones)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def warm_page_cache(path: Path) -> None:
    """Read a file once so a timed copy *from* it measures the destination, not our disk."""
    with open(path, "rb") as f:
        while f.read(8 * MiB):
            pass


# -- memory of the FUSE daemons -------------------------------------------------------------


def process_tree(pids: Sequence[int]) -> list[int]:
    """The given processes and all their descendants (a daemon may fork helpers)."""
    found: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return found


def _status_kib(pid: int, field_name: str) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


class RssPeak:
    """Peak resident memory of some processes during a ``with`` block, in KiB.

    Exact where the kernel lets us reset the high-water mark (``echo 5 > clear_refs``, root,
    Linux >= 4.0): VmHWM then covers exactly the block. Otherwise VmRSS is sampled every 50 ms.
    """

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = process_tree(pids) if pids else []
        self.peak_kib: int | None = None
        self._sampled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RssPeak:
        if not self.pids:
            return self
        reset = True
        for pid in self.pids:
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                reset = False
        if not reset:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self._sampled = max(self._sampled, sum(_status_kib(p, "VmRSS") for p in self.pids))

    def __exit__(self, *exc: object) -> None:
        if not self.pids:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.peak_kib = self._sampled
        else:
            self.peak_kib = sum(_status_kib(p, "VmHWM") for p in self.pids)


# -- scratch space --------------------------------------------------------------------------


class Scratch:
    """Fresh destination directories, and deletion kept out of the timed part.

    The disk is mounted with ``discard``: deleting 20k files right before creating 20k makes
    the next copy ~10x slower for a while. So deletions of on-disk scratch are deferred until
    free space runs low (then followed by a pause) or the run ends. Big-file destinations live
    in tmpfs when there is one: a 256 MiB sequential read then measures the filesystem being
    read, not our disk's writeback, and deleting them costs nothing.
    """

    def __init__(self, disk: Path, mem: Path | None, min_free: int = 20 * GiB) -> None:
        self.disk = disk
        self.mem = mem
        self.min_free = min_free
        self.pending: list[Path] = []
        self._n = 0
        for d in (disk, mem):
            if d is not None:
                d.mkdir(parents=True, exist_ok=True)

    def _new(self, base: Path, tag: str) -> Path:
        self._n += 1
        path = base / f"{self._n:04d}-{tag}"
        path.mkdir(parents=True)
        return path

    def disk_dir(self, tag: str) -> Path:
        return self._new(self.disk, tag)

    def mem_dir(self, tag: str) -> Path:
        return self._new(self.mem or self.disk, tag)

    def discard(self, path: Path) -> None:
        if self.mem is not None and path.is_relative_to(self.mem):
            shutil.rmtree(path, ignore_errors=True)
        else:
            self.pending.append(path)

    def settle(self, say: Callable[[str], None]) -> None:
        """Between measurements: free disk space if it runs low, then let discards finish."""
        if shutil.disk_usage(self.disk).free >= self.min_free or not self.pending:
            return
        say(f"freeing scratch space ({len(self.pending)} dirs), then pausing for discards")
        self.empty()
        os.sync()
        time.sleep(10)

    def empty(self) -> None:
        for path in self.pending:
            shutil.rmtree(path, ignore_errors=True)
        self.pending.clear()


def tree_totals(root: Path) -> tuple[int, int]:
    """(files, bytes) under root: checks that a copy is complete, outside the timed part."""
    files = size = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            files += 1
            size += os.lstat(os.path.join(dirpath, name)).st_size
    return files, size


# -- S3 -------------------------------------------------------------------------------------


def s3_client(endpoint: str, key_id: str, secret: str, pool: int = UPLOAD_WORKERS) -> Any:
    """A boto3 client sized for ``pool`` threads; checksums only where S3 requires them, like
    cachefs, so the baseline does no extra hashing work."""
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=key_id, aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                      max_pool_connections=pool,
                      request_checksum_calculation="when_required",
                      response_checksum_validation="when_required",
                      retries={"max_attempts": 3, "mode": "standard"}))


def get_latency(endpoint: str, key_id: str, secret: str, bucket: str, key: str,
                rounds: int = 20) -> float:
    """Median seconds of one small GET at a time on a kept-alive connection (the connect is
    not counted): what a request costs on the path to ``endpoint``."""
    client = s3_client(endpoint, key_id, secret, 1)
    client.get_object(Bucket=bucket, Key=key)["Body"].read()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        client.get_object(Bucket=bucket, Key=key)["Body"].read()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def list_keys(client: Any, bucket: str, prefix: str) -> list[tuple[str, int]]:
    keys: list[tuple[str, int]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [(o["Key"], o["Size"]) for o in page.get("Contents", ())]
    return keys


# -- environment ----------------------------------------------------------------------------


def version_of(cmd: Sequence[str]) -> str:
    """First line of ``cmd --version``-like output, for the JSON report."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return ((out.stdout or out.stderr).strip().splitlines() or ["?"])[0]


@contextlib.contextmanager
def cleanup_on_signals() -> Iterator[None]:
    """SIGTERM/SIGHUP become KeyboardInterrupt so every ``finally`` runs and mounts go away."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)

