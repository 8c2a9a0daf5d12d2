"""The benchmark's data: a tree shaped like a Go module cache, big random files, the tree as
one tar.zst, a file to write. Deterministic (one seed), generated locally (the local copy is the
``local`` baseline), then put into the bucket.
"""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import zstandard
from benchlib import UPLOAD_WORKERS, BenchError, KiB, MiB, kill_group, list_keys

TREE = "gomod"           # key prefix (and local dir) of the small-file tree
ARCHIVE_KEY = "archives/gomod.tar.zst"
PACK_KEY = "packs/gomod"  # the tree as one cachefs pack; appears as the directory PACK_KEY/
PART_EVERY = 10           # read_part reads every PART_EVERY-th module: what one build needs
BIG_DIR = "big"
SEED = 20240611          # one seed: the same workload on every run and every machine


@dataclass
class BigFile:
    key: str        # also the path below the local root and the mount root
    size: int


@dataclass
class Workload:
    """What was generated locally and put into the bucket; the local copy is the baseline."""

    local: Path                 # holds TREE/ and BIG_DIR/, laid out like the bucket
    tree_files: int = 0
    tree_bytes: int = 0
    tree_dirs: int = 0
    big: list[BigFile] = field(default_factory=list)
    archive: Path = Path()
    archive_bytes: int = 0
    write_src: Path = Path()
    write_bytes: int = 0
    pack_src: Path = Path()     # holds only TREE/ (hard links): what `cachefs pack` is given
    part: list[str] = field(default_factory=list)   # paths below TREE/ that read_part reads
    part_bytes: int = 0

    def describe(self) -> str:
        big = f"{len(self.big)} x {self.big[0].size // MiB} MiB" if self.big else "none"
        return (f"tree: {self.tree_files:,} files, {self.tree_dirs:,} dirs, "
                f"{self.tree_bytes / 1e6:.0f} MB; big files: {big}; tar.zst: "
                f"{self.archive_bytes / 1e6:.0f} MB; write: {self.write_bytes // MiB} MiB")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("part")
        d["part_files"] = len(self.part)
        for k in ("local", "archive", "write_src", "pack_src"):
            d[k] = str(d[k])
        return d


_SYLLABLES = ("ba", "co", "de", "fi", "go", "hu", "ja", "ke", "li", "mo", "nu", "pa", "qu", "ri",
              "se", "ta", "vi", "wo", "xe", "zu", "an", "er", "in", "on", "ul", "st", "tr", "ch")
_TYPES = ("int", "string", "[]byte", "error", "bool", "uint64", "time.Duration", "*Config",
          "context.Context", "map[string]int", "io.Reader", "float64")
_TEMPLATES = (
    "func ({r} *{T}) {F}({a} {t}, {b} {u}) ({t}, error) {{\n",
    "\tif {a} == nil {{\n\t\treturn nil, fmt.Errorf(\"{w} {x}: %w\", err)\n\t}}\n",
    "\t{a} := {r}.{F}({b}, {n})\n",
    "\t// {W} {w} {x} {y} the {z} of {w} {y}.\n",
    "\tfor i := 0; i < len({a}); i++ {{\n\t\t{b}[i] += {a}[i] * {n}\n\t}}\n",
    "\treturn {a}, nil\n}}\n\n",
    "type {T} struct {{\n\t{F} {t}\n\t{W} []{u}\n\tmu sync.Mutex\n}}\n\n",
    "const {F}{W} = \"{w}-{x}-{n}\"\n",
    "\tcase {n}:\n\t\t{a}.{F}({b})\n",
)


class TreeMaker:
    """A deterministic tree shaped like a Go module cache (``GOMODCACHE``).

    ``<host>/<org>/<module>@vX.Y.Z/<package dirs>/*.go`` plus ``cache/download/.../@v/``
    with .mod/.info for every module and .zip/.ziphash for some. Sizes: mostly 1-20 KiB,
    a few percent up to 256 KiB, a handful up to 2 MiB. The text is Go-like and compresses
    about as well as real source; it is cut from a corpus larger than zstd's level-3 window
    so the tar.zst is not unrealistically small.
    """

    def __init__(self, rng: random.Random, corpus_bytes: int) -> None:
        self.rng = rng
        self.words = sorted({"".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))
                             for _ in range(3000)})
        self.corpus = self._corpus(corpus_bytes)

    def _corpus(self, size: int) -> bytes:
        rng, words, out, total = self.rng, self.words, io.StringIO(), 0
        while total < size:
            w = rng.sample(words, 9)
            text = rng.choice(_TEMPLATES).format(
                r=w[0][0], T=w[1].title(), F=w[2].title(), W=w[3].title(), a=w[4], b=w[5],
                w=w[6], x=w[7], y=w[8], z=rng.choice(words), t=rng.choice(_TYPES),
                u=rng.choice(_TYPES), n=rng.randint(0, 4096))
            out.write(text)
            total += len(text)
        return out.getvalue().encode()

    def text(self, header: str, size: int) -> bytes:
        head = header.encode()
        want = max(0, size - len(head))
        start = self.rng.randrange(0, len(self.corpus) - want - 1)
        start = self.corpus.find(b"\n", start) + 1
        return head + self.corpus[start:start + want]

    def size(self) -> int:
        roll = self.rng.random()
        lo, hi = ((1 * KiB, 20 * KiB) if roll < 0.97 else
                  (20 * KiB, 256 * KiB) if roll < 0.995 else (256 * KiB, 2 * MiB))
        return int(lo * (hi / lo) ** self.rng.random())   # log-uniform within the band

    def build(self, root: Path, n_files: int) -> tuple[int, int, int]:
        """Write about ``n_files`` files under root; returns (files, bytes, dirs)."""
        rng, made = self.rng, 0
        orgs: list[tuple[str, str]] = []
        modules: list[tuple[str, str, str]] = []
        index = 0
        while made < n_files:
            if modules and rng.random() < 0.15:
                host, org, name = rng.choice(modules)       # another version of a module
            else:
                if not orgs or rng.random() < 0.35:
                    host = rng.choices(("github.com", "gitlab.com", "golang.org",
                                        "go.opentelemetry.io"), (80, 8, 8, 4))[0]
                    orgs.append((host, "x" if host == "golang.org" else rng.choice(self.words)))
                host, org = rng.choice(orgs)
                name = rng.choice(self.words)
                modules.append((host, org, name))
            version = f"v1.{rng.randint(0, 30)}.{rng.randint(0, 12)}"
            made += self._module(root, host, org, name, version, with_zip=index % 20 == 7)
            index += 1
        files = size = 0
        dirs = 0
        for dirpath, _, names in os.walk(root):
            dirs += 1
            files += len(names)
            size += sum(os.lstat(os.path.join(dirpath, n)).st_size for n in names)
        return files, size, dirs

    def _module(self, root: Path, host: str, org: str, name: str, version: str,
                with_zip: bool) -> int:
        rng, path = self.rng, f"{host}/{org}/{name}"
        base = root / f"{path}@{version}"
        packages = [""] + [rng.choice(("", "internal/", "pkg/", "cmd/")) + rng.choice(self.words)
                           for _ in range(rng.choice((0, 1, 1, 2, 2, 3, 4, 6)))]
        files: dict[str, bytes] = {
            "go.mod": self.text(f"module {path}\n\ngo 1.21\n\nrequire (\n", rng.randint(80, 2000)),
            "LICENSE": self.text("Copyright (c) the authors.\n\n", rng.randint(1 * KiB, 11 * KiB)),
            "README.md": self.text(f"# {name}\n\n", rng.randint(1 * KiB, 8 * KiB)),
        }
        for pkg in packages:
            pkg_name = pkg.rsplit("/", 1)[-1] or name
            for _ in range(rng.randint(4, 24)):
                stem = rng.choice(self.words)
                suffix = "_test.go" if rng.random() < 0.3 else ".go"
                header = f"// Package {pkg_name} {stem}.\npackage {pkg_name}\n\nimport (\n" \
                         "\t\"fmt\"\n\t\"sync\"\n)\n\n"
                files[f"{pkg}/{stem}{suffix}".lstrip("/")] = self.text(header, self.size())
        for rel, data in files.items():
            target = base / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        dl = root / "cache" / "download" / path / "@v"
        dl.mkdir(parents=True, exist_ok=True)
        (dl / f"{version}.mod").write_bytes(files["go.mod"])
        (dl / f"{version}.info").write_text(json.dumps(
            {"Version": version, "Time": f"2024-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}"
                                         "T12:00:00Z"}))
        count = len(files) + 2
        if with_zip:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
                for rel, data in files.items():
                    z.writestr(zipfile.ZipInfo(f"{path}@{version}/{rel}", (2024, 1, 1, 0, 0, 0)),
                               data)
            (dl / f"{version}.zip").write_bytes(buf.getvalue())
            (dl / f"{version}.ziphash").write_text("h1:" + rng.randbytes(32).hex() + "\n")
            count += 2
        return count


def write_random(path: Path, size: int, rng: random.Random) -> None:
    """Incompressible, deterministic bytes (a toolchain tarball, a zip)."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(rng.randbytes(n))
            left -= n


def make_archive(local: Path, out: Path, tree: str = TREE) -> int:
    """``tar -cf - TREE | zstd -T0 -3``, what CLI cache tools upload; returns its size."""
    proc = subprocess.Popen(["tar", "-C", str(local), "-cf", "-", tree], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    with open(out, "wb") as f:
        zstandard.ZstdCompressor(level=3, threads=-1).copy_stream(proc.stdout, f)
    if proc.wait() != 0:
        raise BenchError("tar of the tree failed")
    return out.stat().st_size


def build_workload(work: Path, n_files: int, n_big: int, big_size: int,
                   write_size: int) -> Workload:
    rng = random.Random(SEED)
    wl = Workload(local=work / "local")
    tree = wl.local / TREE
    tree.mkdir(parents=True)
    maker = TreeMaker(rng, corpus_bytes=24 * MiB if n_files > 5000 else 6 * MiB)
    wl.tree_files, wl.tree_bytes, wl.tree_dirs = maker.build(tree, n_files)
    (wl.local / BIG_DIR).mkdir()
    for i in range(n_big):
        key = f"{BIG_DIR}/big-{i}.bin"
        write_random(wl.local / key, big_size, rng)
        wl.big.append(BigFile(key, big_size))
    wl.archive = work / "gomod.tar.zst"
    wl.archive_bytes = make_archive(wl.local, wl.archive)
    wl.write_src = work / "write-src.bin"
    write_random(wl.write_src, write_size, rng)
    wl.write_bytes = write_size
    wl.pack_src = work / "pack-src"
    wl.pack_src.mkdir()
    subprocess.run(["cp", "-al", str(tree), str(wl.pack_src / TREE)], check=True)
    wl.part, wl.part_bytes = part_of_tree(tree)
    return wl


def part_of_tree(tree: Path) -> tuple[list[str], int]:
    """Every file of every PART_EVERY-th extracted module (``host/org/name@version/``), in
    sorted order: the slice of a module cache one build reads. Returns (paths, bytes)."""
    modules: dict[str, list[str]] = {}
    for dirpath, _, names in os.walk(tree):
        rel = Path(dirpath).relative_to(tree).parts
        at = next((i for i, p in enumerate(rel) if "@" in p and not p.startswith("@")), None)
        if at is None or rel[0] == "cache":
            continue
        module = "/".join(rel[:at + 1])
        modules.setdefault(module, []).extend("/".join((*rel, n)) for n in names)
    chosen = sorted(modules)[::PART_EVERY]
    paths = sorted(p for m in chosen for p in modules[m])
    return paths, sum((tree / p).stat().st_size for p in paths)


def upload_workload(client: Any, bucket: str, wl: Workload) -> None:
    """Parallel puts of the tree; multipart uploads for the big files and the archive."""
    tree = wl.local / TREE
    paths = [Path(d) / n for d, _, names in os.walk(tree) for n in names]

    def put(path: Path) -> None:
        key = str(path.relative_to(wl.local))
        client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())

    with ThreadPoolExecutor(UPLOAD_WORKERS) as pool:
        for _ in pool.map(put, paths):
            pass
    for big in wl.big:
        client.upload_file(str(wl.local / big.key), bucket, big.key)
    client.upload_file(str(wl.archive), bucket, ARCHIVE_KEY)
    stored = len(list_keys(client, bucket, TREE + "/"))
    if stored != wl.tree_files:
        raise BenchError(f"bucket holds {stored} tree objects, expected {wl.tree_files}")


def extract_archive(client: Any, bucket: str, dest: Path, key: str = ARCHIVE_KEY) -> None:
    """Stream the tar.zst: GET -> zstd -> ``tar -x``, each stage overlapping the next."""
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    tar = subprocess.Popen(["tar", "-x", "-C", str(dest)], stdin=subprocess.PIPE,
                           stderr=subprocess.PIPE, start_new_session=True)
    assert tar.stdin is not None
    try:
        zstandard.ZstdDecompressor().copy_stream(body, tar.stdin, read_size=MiB,
                                                 write_size=MiB)
        tar.stdin.close()
        if tar.wait() != 0:
            raise BenchError("tar -x failed: " + (tar.stderr.read() if tar.stderr else b"")
                             .decode(errors="replace")[-200:])
    finally:
        if tar.poll() is None:
            kill_group(tar)
