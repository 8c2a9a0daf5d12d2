#!/usr/bin/env python3
"""Benchmark origin fallback: a file fetched through cachefs from an HTTP origin vs. curl.

    sudo .venv/bin/python scripts/bench_origin.py [--size-mib N] [--repeat N] [--json FILE]

Starts SeaweedFS and an HTTP origin (``tests/origin_server.py``) on 127.0.0.1, serves one random
file of --size-mib MiB and times, each of --repeat rounds, with the page cache dropped first:

- ``http download``: ``curl`` of the file from the origin to local disk (the baseline);
- ``origin miss``: fresh cache dir and empty bucket, ``user.cachefs.origin`` set on ``dl/``,
  ``cp MOUNT/dl/FILE DEST`` (the store lacks it: it streams from the origin). Then, untimed, the
  copy's SHA-256 is checked and S3 polled: ``upload after read`` is how long after the copy
  ended the object appeared there;
- ``store hit``: a second runner (new cache dir, new mount of that bucket), the same cp;
- ``blob-tier hit``: that runner remounted on its cache dir, the same cp.

Medians are quoted; ratios are median seconds over the HTTP download's median from the same run
(below 1 is faster). Needs root. The scratch dir under --workdir is removed, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchcore import CliMount  # noqa: E402
from benchlib import (  # noqa: E402
    BenchError,
    MiB,
    Sample,
    cleanup_on_signals,
    drop_caches,
    measure,
    run,
    s3_client,
)

from tests.origin_server import Origin  # noqa: E402
from tests.servers import KEY_ID, SECRET, SeaweedFS  # noqa: E402

ORIGIN_DIR, NAME, ORIGIN_PATH = "dl", "payload.bin", "/files/"
ROWS = ("http download", "origin miss", "upload after read", "store hit", "blob-tier hit")


def start_with_origin(mount: CliMount, bucket: str, cache: Path, url: str) -> Path:
    """Mount, set the origin on ``dl/`` (as a user would); returns the file's path."""
    mount.start(bucket, cache)
    (mount.path / ORIGIN_DIR).mkdir(exist_ok=True)
    os.setxattr(mount.path / ORIGIN_DIR, "user.cachefs.origin", url.encode())
    return mount.path / ORIGIN_DIR / NAME


def timed(argv: list[str | Path], pid: int | None, timeout: float) -> Sample:
    """Drop the page cache, then time ``argv`` (and the daemon's peak RSS)."""
    drop_caches()
    return measure(lambda: run(argv, timeout), pids=[pid] if pid else [])


def verified(s: Sample, dest: Path, digest: str) -> Sample:
    """Check the copy's size and SHA-256 (outside the timing), then delete it."""
    if s.ok:
        s.nbytes = dest.stat().st_size
        with open(dest, "rb") as f:
            if hashlib.file_digest(f, "sha256").hexdigest() != digest:
                s.error = f"wrong content ({s.nbytes} bytes)"
    dest.unlink(missing_ok=True)
    return s


def upload_time(s3: Any, bucket: str, key: str, size: int, since: float,
                timeout: float) -> Sample:
    """Poll S3 until the object is there: seconds from ``since`` (the read's end)."""
    while time.perf_counter() < since + timeout:
        with contextlib.suppress(s3.exceptions.ClientError):
            if s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == size:
                return Sample(time.perf_counter() - since, nbytes=size)
        time.sleep(0.05)
    return Sample(error=f"s3://{bucket}/{key} not there {timeout:.0f}s after the read")


def one_round(i: int, work: Path, origin: Origin, s3: Any, mount: CliMount, digest: str,
              size: int, timeout: float, record: dict[str, list[Sample]]) -> None:
    """One sample of every row; a failed step records its error and ends the round."""
    url, dest, key = origin.url + ORIGIN_PATH, work / "dest.bin", f"{ORIGIN_DIR}/{NAME}"

    def keep(row: str, s: Sample) -> None:
        record[row].append(s)
        if not s.ok:
            raise BenchError(f"{row}: {s.error}")

    gets_before = origin.gets(ORIGIN_PATH + NAME)
    keep("http download", verified(timed(["curl", "-sSf", "-o", dest, url + NAME], None,
                                         timeout), dest, digest))
    bucket = f"origin-{i}-{uuid.uuid4().hex[:8]}"  # empty: the first mount's read is a miss
    s3.create_bucket(Bucket=bucket)
    caches = [work / f"cache-{i}-a", work / f"cache-{i}-b"]
    try:
        path = start_with_origin(mount, bucket, caches[0], url)
        s = timed(["cp", path, dest], mount.pid, timeout)
        read_end = time.perf_counter()
        up = upload_time(s3, bucket, key, size, read_end, timeout) if s.ok else Sample(error="-")
        keep("origin miss", verified(s, dest, digest))
        keep("upload after read", up)
        stored = s3.head_object(Bucket=bucket, Key=key)["Metadata"].get("cachefs-sha256")
        if stored != digest:
            raise BenchError(f"uploaded object has cachefs-sha256 {stored}")
        mount.stop()
        for row in ("store hit", "blob-tier hit"):  # a second runner, then its remount
            path = start_with_origin(mount, bucket, caches[1], url)
            s = verified(timed(["cp", path, dest], mount.pid, timeout), dest, digest)
            source = os.getxattr(path, "user.cachefs.source").decode()
            if s.ok and source != "store":
                s.error = f"user.cachefs.source is {source!r}, not 'store'"
            mount.stop()
            keep(row, s)
        gets = origin.gets(ORIGIN_PATH + NAME) - gets_before
        if gets != 2:  # curl's and the miss's: the hits must not ask the origin
            raise BenchError(f"the origin saw {gets} GETs of the file this round, expected 2")
    finally:
        mount.close()
        for c in caches:
            shutil.rmtree(c, ignore_errors=True)


def medians(samples: list[Sample]) -> tuple[float | None, float | None]:
    good = [s for s in samples if s.ok]
    if not good:
        return None, None
    return (statistics.median(s.seconds for s in good),
            statistics.median(s.nbytes / s.seconds / 1e6 for s in good))


def table(record: dict[str, list[Sample]]) -> str:
    base = medians(record["http download"])[0]
    lines = [f"{'measurement':<18} {'n':>4} {'median s':>9} {'MB/s':>8} {'vs http':>8} "
             f"{'daemon peak RSS MiB':>19}"]
    for row, samples in record.items():
        seconds, mbps = medians(samples)
        ratio = f"{seconds / base:.2f}x" if seconds and base and row != ROWS[2] else "-"
        rss = [s.rss_kib for s in samples if s.ok and s.rss_kib]
        lines.append(f"{row:<18} {sum(s.ok for s in samples)}/{len(samples):<2} "
                     f"{f'{seconds:.3f}' if seconds is not None else '-':>9} "
                     f"{f'{mbps:.1f}' if mbps is not None else '-':>8} {ratio:>8} "
                     f"{f'{max(rss) / 1024:.0f}' if rss else '-':>19}")
    return "\n".join(lines)


def child_env(work: Path, server: SeaweedFS) -> dict[str, str]:
    """No developer config or keys: only the bench server's, and XDG dirs in the scratch dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CACHEFS_", "AWS_"))}
    env |= {f"XDG_{v.upper()}_HOME": str(work / "home" / v) for v in ("config", "cache", "data")}
    return env | server.env() | {"AWS_EC2_METADATA_DISABLED": "true"}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--size-mib", type=int, default=256, help="size of the file (default 256)")
    p.add_argument("--repeat", type=int, default=3, help="rounds; medians quoted (default 3)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every raw sample here")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per step (default 300)")
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp"),
                   help="where the scratch dir is made (default /var/tmp)")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cachefs-bench-origin-", dir=args.workdir))
    server, origin, mount = SeaweedFS(work / "seaweed"), Origin(), CliMount(work / "mnt", {})
    record: dict[str, list[Sample]] = {row: [] for row in ROWS}
    errors: list[str] = []
    begun, dropped = time.monotonic(), False
    try:
        with cleanup_on_signals():
            print(f"{args.size_mib} MiB file, {args.repeat} round(s), work dir {work}",
                  file=sys.stderr)
            server.start()
            mount.env = child_env(work, server)
            s3 = s3_client(server.endpoint, KEY_ID, SECRET)
            payload = os.urandom(args.size_mib * MiB)
            digest = hashlib.sha256(payload).hexdigest()
            origin.files[ORIGIN_PATH + NAME] = payload
            dropped = drop_caches()
            for i in range(args.repeat):
                before = {r: len(record[r]) for r in ROWS}
                try:
                    one_round(i, work, origin, s3, mount, digest, len(payload), args.timeout,
                              record)
                except (BenchError, OSError) as e:
                    errors.append(f"round {i + 1}: {e}")
                done = [f"{r} {s.seconds:.3f}s" for r in ROWS for s in record[r][before[r]:]
                        if s.ok]
                print(f"[{time.monotonic() - begun:6.1f}s] round {i + 1}: {', '.join(done)}",
                      file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted: unmounting and stopping what this run started", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        mount.close()
        origin.close()
        server.stop()
        print(f"removing {work} ...", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ncachefs origin fallback: one {args.size_mib} MiB random file, median of "
          f"{args.repeat}; {(time.monotonic() - begun) / 60:.1f} min")
    print(table(record))
    if not dropped:
        print("warning: could not drop the page cache (not root?): reads are not cold")
    for err in errors:
        print(f"error {err}")
    if args.json:
        rows = {row: {"median_s": medians(ss)[0], "mb_per_s": medians(ss)[1],
                      "samples": [s.as_dict() for s in ss]} for row, ss in record.items()}
        args.json.write_text(json.dumps({"size_mib": args.size_mib, "repeat": args.repeat,
                                         "page_cache_dropped": dropped, "rows": rows,
                                         "errors": errors}, indent=1))
        print(f"JSON written to {args.json}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
