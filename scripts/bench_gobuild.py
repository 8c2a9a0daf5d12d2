#!/usr/bin/env python3
"""Benchmark the job users run: ``go build`` of a real program, with a cold GOCACHE, from its
module cache restored as a tar.zst vs. mounted from a cold cachefs pack.

    sudo .venv/bin/python scripts/bench_gobuild.py [--repeat N] [--network lo|ci|far]

The program is real code: a main package that imports every public package of the modules the
Go toolchain vendors in ``$GOROOT/src/cmd/vendor`` (pprof's driver, golang.org/x/tools'
analyzers, x/mod, x/arch, x/sys, x/term, x/crypto, x/sync, demangle), served by a file://
GOPROXY made from those sources, each at the version ``modules.txt`` names. Untimed: ``go mod
download`` fills a module cache on local disk; ``cachefs pack`` stores it as one pack and ``tar
| zstd -3`` as one tar.zst object, in a SeaweedFS bucket on 127.0.0.1 (behind a shaped link
with ``--network ci|far``, as in scripts/bench.py).

Each round, every row starts with the page cache dropped and an empty GOCACHE, and times
everything a CI job would do, GOPROXY=off (nothing may be downloaded):

- ``local``: the module cache already on local disk; the build alone (the floor);
- ``tar.zst``: GET | zstd -d | tar -x into a fresh directory, then the build;
- ``pack``: ``cachefs mount`` with an empty cache dir, then the build from the mounted pack;
- ``pack-ro``: the same with ``--read-only`` (no-open: the kernel opens files by itself).

The built program must run and print its line. Medians are quoted; ratios are over tar.zst's
median from the same run; RSS MiB is the cachefs daemon's peak. Needs root (for dropping the
page cache, and tc for ``--network``) and ``go``; the scratch dir is removed, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gomod import rm_tree, run, walk  # noqa: E402
from benchcore import CliMount  # noqa: E402
from benchdata import extract_archive, make_archive  # noqa: E402
from benchlib import (  # noqa: E402
    BenchError,
    Sample,
    cleanup_on_signals,
    drop_caches,
    measure,
    s3_client,
)
from benchnet import NETWORKS, Network  # noqa: E402

from tests.goproxy import _module  # noqa: E402
from tests.servers import KEY_ID, SECRET, SeaweedFS  # noqa: E402

ROWS = ("local", "tar.zst", "pack", "pack-ro")
PACK_KEY = "packs/modcache"
ARCHIVE_KEY = "archives/modcache.tar.zst"
#: what the program prints: it ran, so it was built whole
BUILT = "built from real modules"


def vendored_modules(goroot: Path) -> list[tuple[str, str, str, list[str]]]:
    """(module path, version, go version, packages) of each module in cmd/vendor."""
    mods: list[tuple[str, str, str, list[str]]] = []
    for line in (goroot / "src/cmd/vendor/modules.txt").read_text().splitlines():
        if line.startswith("# "):
            path, version = line[2:].split()[:2]
            mods.append((path, version, "1.17", []))
        elif line.startswith("## ") and mods:
            for part in line[3:].split(";"):
                if part.strip().startswith("go "):
                    mods[-1] = (*mods[-1][:2], part.strip()[3:], mods[-1][3])
        elif line.strip() and mods:
            mods[-1][3].append(line.strip())
    return mods


def make_program(goroot: Path, proxy: Path, app: Path) -> int:
    """The GOPROXY of the vendored modules and the program importing them; the number of
    packages it imports."""
    vendor = goroot / "src/cmd/vendor"
    mods = vendored_modules(goroot)
    for path, version, go, _ in mods:
        files = {f.relative_to(vendor / path).as_posix(): f.read_bytes()
                 for f in sorted((vendor / path).rglob("*")) if f.is_file()}
        _module(proxy, path, version, files, go=f"go {go}\n")
    # Public packages only; x/sys's windows and plan9 have no file for this system.
    imports = [p for *_, pkgs in mods for p in pkgs
               if "internal" not in p.split("/") and p.rsplit("/", 1)[-1] not in
               ("windows", "plan9")]
    app.mkdir(parents=True, exist_ok=True)
    (app / "go.mod").write_text("module example.com/realapp\n\ngo 1.19\n\nrequire (\n" + "".join(
        f"\t{path} {version}\n" for path, version, _, _ in mods) + ")\n")
    (app / "main.go").write_text("package main\n\nimport (\n\t\"fmt\"\n" + "".join(
        f'\t_ "{p}"\n' for p in imports) + f')\n\nfunc main() {{ fmt.Println("{BUILT}") }}\n')
    return len(imports)


def go_env(proxy: str, modcache: Path, gocache: Path, home: Path) -> dict[str, str]:
    return {**os.environ, "GOPROXY": proxy, "GOSUMDB": "off", "GOFLAGS": "-mod=mod",
            "GOMODCACHE": str(modcache), "GOCACHE": str(gocache), "HOME": str(home),
            "GOPATH": str(home / "gopath"), "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}


class Bench:
    def __init__(self, work: Path, bucket: str, s3: Any, mount: CliMount, timeout: float) -> None:
        self.work, self.bucket, self.s3, self.mount = work, bucket, s3, mount
        self.timeout = timeout
        self.app, self.home = work / "app", work / "home"
        self.modcache = work / "modcache"
        self.record: dict[str, list[Sample]] = {row: [] for row in ROWS}
        #: the daemon's peak RSS (KiB) in the last sample: it started inside the timing
        self.rss_kib = 0

    def build(self, modcache: Path, tag: str) -> None:
        """The build with an empty GOCACHE; the program must run."""
        out = self.work / f"bin-{tag}"
        env = go_env("off", modcache, self.work / f"gocache-{tag}", self.home)
        run(["go", "build", "-o", str(out), "."], self.timeout, env, cwd=self.app)
        said = run([str(out)], 30, env).strip()
        if said != BUILT:
            raise BenchError(f"the program printed {said!r}")

    def one(self, row: str, i: int) -> None:
        tag = f"r{i}-{row}-{uuid.uuid4().hex[:6]}"
        steps: dict[str, Callable[[], None]] = {
            "local": lambda: self.build(self.modcache, tag),
            "tar.zst": lambda: self._tarzst(tag),
            "pack": lambda: self._pack(tag),
            "pack-ro": lambda: self._pack(tag, "--read-only"),
        }
        drop_caches()
        s, self.rss_kib = Sample(), 0
        try:
            s = measure(steps[row])
            s.rss_kib = self.rss_kib
            self.mount.stop()
        except (BenchError, OSError) as e:
            s.error = str(e) if s.ok else f"{s.error}; then {e}"
        finally:
            self.record[row].append(s)
            self.mount.close()
            for d in self.work.glob(f"*-{tag}"):
                rm_tree(d)

    def _tarzst(self, tag: str) -> None:
        dest = self.work / f"restore-{tag}"
        dest.mkdir()
        extract_archive(self.s3, self.bucket, dest, key=ARCHIVE_KEY)
        self.build(dest / "modcache", tag)

    def _pack(self, tag: str, *flags: str) -> None:
        self.mount.start(self.bucket, self.work / f"cache-{tag}", *flags)
        self.build(self.mount.path / PACK_KEY, tag)
        assert self.mount.pid is not None
        with open(f"/proc/{self.mount.pid}/status") as f:
            self.rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))


def table(record: dict[str, list[Sample]]) -> str:
    ok = {r: [s for s in ss if s.ok] for r, ss in record.items()}
    base = statistics.median(s.seconds for s in ok["tar.zst"]) if ok["tar.zst"] else 0
    rows = [("row", "n", "median s", "min s", "max s", "vs tar.zst", "RSS MiB")]
    for r, good in ok.items():
        secs = [s.seconds for s in good]
        rss = [s.rss_kib for s in good if s.rss_kib]
        rows.append((r, f"{len(good)}/{len(record[r])}", *((
            f"{statistics.median(secs):.2f}", f"{min(secs):.2f}", f"{max(secs):.2f}",
            f"{statistics.median(secs) / base:.2f}x" if base else "-",
            f"{max(rss) / 1024:.0f}" if rss else "-") if good else "-" * 5)))
    return "\n".join(f"{c[0]:<10}" + "".join(f"{x:>11}" for x in c[1:]) for c in rows)


def prepare(work: Path, goroot: Path, s3: Any, bucket: str, mount: CliMount,
            timeout: float) -> str:
    """Program, proxy, module cache, pack and tar.zst (untimed); a line describing them."""
    imports = make_program(goroot, work / "proxy", work / "app")
    env = go_env((work / "proxy").as_uri(), work / "modcache", work / "gocache-first",
                 work / "home")
    run(["go", "mod", "download"], timeout, env, cwd=work / "app")
    run(["go", "build", "-o", os.devnull, "."], timeout, env, cwd=work / "app")  # go.sum
    rm_tree(work / "gocache-first")
    files = walk(work / "modcache")
    mount.cli("pack", str(work / "modcache"), f"s3://{bucket}/{PACK_KEY}", timeout=timeout)
    size = make_archive(work, work / "modcache.tar.zst", tree="modcache")
    s3.upload_file(str(work / "modcache.tar.zst"), bucket, ARCHIVE_KEY)
    return (f"{imports} packages of {len(vendored_modules(goroot))} modules; module cache "
            f"{len(files)} files, {sum(files.values()) / 1e6:.1f} MB; tar.zst {size / 1e6:.1f} MB")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--repeat", type=int, default=3, help="rounds; medians quoted (default 3)")
    p.add_argument("--network", choices=list(NETWORKS), default="lo",
                   help="put S3 behind a shaped link, as scripts/bench.py does (default lo)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per step (600)")
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp"),
                   help="where the scratch dir is made (default /var/tmp)")
    args = p.parse_args()
    try:
        goroot = Path(subprocess.run(["go", "env", "GOROOT"], capture_output=True, text=True,
                                     check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        p.error("the Go toolchain is missing: scripts/setup.sh installs golang-go")
    network = Network(args.network)
    if why := network.unavailable():
        p.error(f"--network {args.network}: {why}")
    work = Path(tempfile.mkdtemp(prefix="cachefs-bench-gobuild-", dir=args.workdir))
    server, mount = SeaweedFS(work / "seaweed"), CliMount(work / "mnt", dict(os.environ))
    bench: Bench | None = None
    try:
        with cleanup_on_signals():
            server.start()
            home = work / "home"
            mount.env = {k: v for k, v in os.environ.items()  # no developer config or keys
                         if not k.startswith(("CACHEFS_", "AWS_"))} | server.env() | {
                "AWS_EC2_METADATA_DISABLED": "true",
                **{f"XDG_{v.upper()}_HOME": str(home / v) for v in ("config", "cache", "data")}}
            bucket = f"gobuild-{uuid.uuid4().hex[:8]}"
            s3_client(server.endpoint, KEY_ID, SECRET).create_bucket(Bucket=bucket)
            said = prepare(work, goroot, s3_client(server.endpoint, KEY_ID, SECRET), bucket,
                           mount, args.timeout)
            endpoint = network.start(server.endpoint)
            mount.env = mount.env | {"CACHEFS_ENDPOINT": endpoint}
            bench = Bench(work, bucket, s3_client(endpoint, KEY_ID, SECRET), mount, args.timeout)
            print(f"{said}; {args.repeat} round(s); network {args.network}; work dir {work}",
                  file=sys.stderr)
            for line in network.header:
                print(line, file=sys.stderr)
            for i in range(args.repeat):
                for row in ROWS:
                    bench.one(row, i)
                print(f"round {i + 1}: " + ", ".join(
                    f"{r} {ss[-1].seconds:.2f}s" if ss[-1].ok else f"{r} failed"
                    for r, ss in bench.record.items()), file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted: unmounting and stopping what this run started", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        try:
            mount.close()
        finally:
            network.close()  # loopback must never stay shaped
        server.stop()
        print(f"removing {work} ...", file=sys.stderr)
        rm_tree(work)
    if bench is None:
        return 1
    print(f"\ngo build (empty GOCACHE, GOPROXY=off) of {said}; network {args.network}; "
          f"median of {args.repeat}")
    print(table(bench.record))
    failed = [f"error {r} round {n + 1}: {x.error}" for r, ss in bench.record.items()
              for n, x in enumerate(ss) if not x.ok]
    print("\n".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
