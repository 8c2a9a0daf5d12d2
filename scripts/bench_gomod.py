#!/usr/bin/env python3
"""Benchmark ``go mod download`` into a GOMODCACHE on local disk vs. inside a cachefs mount.

    sudo .venv/bin/python scripts/bench_gomod.py [--repeat N] [--modules N]

A file:// GOPROXY serves ``tests/goproxy.py``'s modules (util has ~125 files) plus --modules
generated ones (made with its ``_module``), all required by its app; SeaweedFS runs on
127.0.0.1. Each of --repeat rounds times, into a fresh directory or key prefix: ``local disk``
(the baseline), ``cachefs sync`` (GOMODCACHE in a new ``cachefs mount``, ``--writeback sync``,
the default) and ``cachefs async`` (``--writeback async``, then ``cachefs sync MOUNT``, its
Python start-up included, inside the timing).

Untimed: a first local download writes go.sum; after each mount run, before the unmount, every
file under GOMODCACHE must be an object of its size in S3 ("in S3"); in round 1 a second mount
with an empty cache dir runs ``go mod verify`` (GOPROXY=off) on it. Medians are quoted; ratios
are over local disk's median from the same run; RSS MiB is the cachefs daemon's peak resident
memory during the timing. Needs root and ``go``; the scratch dir under --workdir is removed,
also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchcore import CliMount  # noqa: E402
from benchlib import (  # noqa: E402
    BenchError,
    Sample,
    cleanup_on_signals,
    list_keys,
    measure,
    s3_client,
)

from tests.goproxy import _module, go_env, make_app, make_proxy  # noqa: E402
from tests.servers import KEY_ID, SECRET, SeaweedFS  # noqa: E402

ROWS = {"local disk": None, "cachefs sync": "sync", "cachefs async": "async"}


def run(argv: list[str], timeout: float, env: dict[str, str], cwd: Path = ROOT) -> str:
    """Run a command (killed on timeout or Ctrl-C); a failure becomes a BenchError."""
    try:
        r = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout, start_new_session=True, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(argv[:4])}: timeout after {timeout:.0f}s") from None
    if r.returncode != 0:
        tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
        raise BenchError(f"{' '.join(argv[:4])} exited {r.returncode}: {tail}")
    return r.stdout


def make_modules(proxy: Path, app: Path, n: int, files: int) -> None:
    """The test proxy and app, plus ``n`` generated modules the app requires."""
    make_proxy(proxy)
    make_app(app)
    for i in range(n):
        _module(proxy, f"example.com/dep{i:03d}", "v1.0.0", {
            f"f{j:02d}.go": f"package dep{i:03d}\n\nconst C{j} = {i * 1000 + j}\n" * 20
            for j in range(files)})
    with open(app / "go.mod", "a") as f:
        f.writelines(f"\nrequire example.com/dep{i:03d} v1.0.0\n" for i in range(n))


def rm_tree(path: Path) -> None:
    """Go makes its module cache read-only; make it writable, then delete it."""
    subprocess.run(["chmod", "-R", "u+w", str(path)], capture_output=True, check=False)
    shutil.rmtree(path, ignore_errors=True)


def walk(root: Path) -> dict[str, int]:
    """Every file under root: relative path -> size."""
    return {os.path.relpath(os.path.join(d, n), root): os.lstat(os.path.join(d, n)).st_size
            for d, _, names in os.walk(root) for n in names}


def one_round(i: int, work: Path, bucket: str, s3: Any, mount: CliMount, timeout: float,
              record: dict[str, list[Sample]], notes: list[str]) -> None:
    app, home = work / "app", work / "home"
    for row, mode in ROWS.items():
        tag = f"r{i}-{mode or 'local'}-{uuid.uuid4().hex[:6]}"
        modcache, s = work / f"modcache-{tag}", Sample()
        try:
            if mode is not None:
                mount.start(bucket, work / f"cache-{tag}", "--writeback", mode)
                modcache = mount.path / "gomod" / tag
            env = {**os.environ, **go_env((work / "proxy").as_uri(), modcache, home)}

            def download(env: dict[str, str] = env, mode: str | None = mode) -> None:
                run(["go", "mod", "download"], timeout, env, cwd=app)
                if mode == "async":
                    mount.cli("sync", str(mount.path), timeout=timeout)

            os.sync()
            s = measure(download, pids=[mount.pid] if mount.pid else [])
            files = walk(modcache) if s.ok else {}
            s.files, s.nbytes = len(files), sum(files.values())
            if mode is not None and s.ok:  # before the unmount: what the timing put in S3
                keys = dict(list_keys(s3, bucket, f"gomod/{tag}/"))
                there = sum(keys.get(f"gomod/{tag}/{f}") == n for f, n in files.items())
                s.note = f"{there}/{len(files)}"
                if there != len(files):
                    s.error = f"only {there} of {len(files)} files in S3 after the timing"
            mount.stop()
            if mode is not None and i == 0 and s.ok:
                mount.start(bucket, work / f"cache-{tag}-verify", "--writeback", mode)
                env |= go_env("off", mount.path / "gomod" / tag, home)
                out = run(["go", "mod", "verify"], timeout, env, cwd=app).strip()
                notes.append(f"check {row}: go mod verify on a second mount: {out}")
                mount.stop()
        except (BenchError, OSError) as e:
            s.error = str(e) if s.ok else f"{s.error}; then {e}"
        finally:
            record[row].append(s)
            mount.close()
            for d in [*work.glob(f"cache-{tag}*"), *work.glob(f"modcache-{tag}")]:
                rm_tree(d)


def table(record: dict[str, list[Sample]]) -> str:
    ok = {r: [s for s in ss if s.ok] for r, ss in record.items()}
    base = statistics.median(s.seconds for s in ok["local disk"]) if ok["local disk"] else 0
    rows = [("measurement", "n", "median s", "files", "MB", "vs local", "in S3", "RSS MiB")]
    for r, good in ok.items():
        sec = statistics.median(s.seconds for s in good) if good else 0
        rss = [s.rss_kib for s in good if s.rss_kib]
        rows.append((r, f"{len(good)}/{len(record[r])}", *((
            f"{sec:.3f}", f"{statistics.median(s.files for s in good):.0f}",
            f"{statistics.median(s.nbytes for s in good) / 1e6:.2f}",
            f"{sec / base:.2f}x" if base else "-", good[-1].note or "-",
            f"{max(rss) / 1024:.0f}" if rss else "-") if good else "-" * 6)))
    return "\n".join(f"{c[0]:<14}" + "".join(f"{x:>9}" for x in c[1:]) for c in rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--repeat", type=int, default=5, help="rounds; medians quoted (default 5)")
    p.add_argument("--modules", type=int, default=20, help="generated modules (default 20)")
    p.add_argument("--files-per-module", type=int, default=10, help=".go files each (10)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per step (default 300)")
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp"),
                   help="where the scratch dir is made (default /var/tmp)")
    args = p.parse_args()
    if shutil.which("go") is None:
        p.error("the Go toolchain is missing: scripts/setup.sh installs golang-go")
    work = Path(tempfile.mkdtemp(prefix="cachefs-bench-gomod-", dir=args.workdir))
    server, mount = SeaweedFS(work / "seaweed"), CliMount(work / "mnt", dict(os.environ))
    record: dict[str, list[Sample]] = {row: [] for row in ROWS}
    notes: list[str] = []
    try:
        with cleanup_on_signals():
            home = work / "home"
            make_modules(work / "proxy", work / "app", args.modules, args.files_per_module)
            warm = work / "modcache-warmup"  # writes go.sum; warms the proxy files and go
            run(["go", "mod", "download"], args.timeout, cwd=work / "app",
                env={**os.environ, **go_env((work / "proxy").as_uri(), warm, home)})
            rm_tree(warm)
            server.start()
            mount.env = {k: v for k, v in os.environ.items()  # no developer config or keys
                         if not k.startswith(("CACHEFS_", "AWS_"))} | server.env() | {
                "AWS_EC2_METADATA_DISABLED": "true",
                **{f"XDG_{v.upper()}_HOME": str(home / v) for v in ("config", "cache", "data")}}
            s3 = s3_client(server.endpoint, KEY_ID, SECRET)
            bucket = f"gomod-{uuid.uuid4().hex[:8]}"
            s3.create_bucket(Bucket=bucket)
            print(f"{args.modules + 3} modules, {args.repeat} round(s), work dir {work}",
                  file=sys.stderr)
            for i in range(args.repeat):
                one_round(i, work, bucket, s3, mount, args.timeout, record, notes)
                print(f"round {i + 1}: " + ", ".join(
                    f"{r} {ss[-1].seconds:.3f}s" if ss[-1].ok else f"{r} failed"
                    for r, ss in record.items()), file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted: unmounting and stopping what this run started", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        mount.close()
        server.stop()
        print(f"removing {work} ...", file=sys.stderr)
        rm_tree(work)
    print(f"\ngo mod download of {args.modules + 3} modules from a file:// proxy, "
          f"median of {args.repeat}")
    print(table(record))
    failed = [f"error {r} round {n + 1}: {x.error}" for r, ss in record.items()
              for n, x in enumerate(ss) if not x.ok]
    print("\n".join(notes + failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
