"""Frames that match how builds read: a frame never spans two units (Go modules, else top-level
directories), a reader fetches a unit's frames with one ranged GET, and the prefetcher does not
read past the reader's unit until the reader does."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cachefs.pack import save
from cachefs.pack.format import FRAME_TARGET, TRAILER, decode_toc, decode_trailer, unit_of

from .conftest import Mounter, cli
from .memstore import MemoryStore
from .servers import SeaweedFS

#: incompressible, so that bytes fetched (compressed) compare with bytes read
MODULES = {f"example.com/m{i:02d}@v1.0.{i}": 12 for i in range(12)}
BIG = "example.com/big@v2.0.0"


def make_modules(root: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for module, count in MODULES.items():
        for j in range(count):
            files[f"{module}/pkg{j % 3}/f{j:02d}.go"] = os.urandom(40_000 + 997 * j)
    for j in range(3):  # a module of three frames (two files never fit in one)
        files[f"{BIG}/data/part{j}.bin"] = os.urandom(FRAME_TARGET * 6 // 10)
    files["cache/download/example.com/m00/@v/v1.0.0.mod"] = b"module example.com/m00\n"
    files["cache/download/example.com/m00/@v/v1.0.0.info"] = b'{"Version":"v1.0.0"}\n'
    files["README"] = b"top\n"
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_unit_of() -> None:
    assert unit_of("example.com/m@v1.2.0/pkg/x.go") == "example.com/m@v1.2.0"
    assert unit_of("cache/download/example.com/m/@v/v1.2.0.zip") == \
        "cache/download/example.com/m/@v"
    assert unit_of("node_modules/left-pad/index.js") == "node_modules"
    assert unit_of("README") == ""
    assert unit_of("weird@dir") == ""  # a file, not a module directory


def test_no_frame_holds_two_units(tmp_path: Path) -> None:
    make_modules(tmp_path / "src")
    (tmp_path / "src/other").mkdir()
    for i in range(5):
        (tmp_path / f"src/other/t{i}.txt").write_text(f"tiny {i}\n")
    store = MemoryStore()
    save.pack_directory(tmp_path / "src", store, "p/k", 3)
    data = store.objects["p/k"][0]
    offset, clen, ulen, sha = decode_trailer(data[-TRAILER.size:])
    toc = decode_toc(data[offset:offset + clen], ulen, sha)
    units: dict[int, set[str]] = {}
    for entry in toc.entries:
        for index, _, _ in entry.extents:
            units.setdefault(index, set()).add(unit_of(entry.path))
    assert all(len(u) == 1 for u in units.values()), units
    # small files of one unit still share frames: one frame per module here
    per_module = [i for i, u in units.items() if u == {"example.com/m03@v1.0.3"}]
    assert len(per_module) == 1
    assert len([i for i, u in units.items() if u == {"other"}]) == 1


def counters(m: Any) -> dict[str, int]:
    return dict(m.control("stats")["counters"])


def mounted_pack(seaweed: SeaweedFS, bucket: str, mounter: Mounter,
                 tmp_path: Path) -> tuple[dict[str, bytes], Any, Path]:
    """The modules packed as packs/mods, and a fresh mount of the bucket: (files, mount, the
    pack's directory in it)."""
    files = make_modules(tmp_path / "src")
    assert cli("pack", str(tmp_path / "src"), f"s3://{bucket}/packs/mods",
               env=seaweed.env()).returncode == 0
    m = mounter(server=seaweed, bucket=bucket)
    return files, m, m.path / "packs/mods"


@pytest.mark.fuse
@pytest.mark.s3
def test_reading_some_modules_fetches_those_modules(seaweed: SeaweedFS, bucket: str,
                                                    mounter: Mounter, tmp_path: Path) -> None:
    files, m, root = mounted_pack(seaweed, bucket, mounter, tmp_path)
    read = 0
    chosen = [*list(MODULES)[::4], BIG]  # every 4th module, and the one of several frames
    for module in chosen:
        names = sorted(k for k in files if k.startswith(module + "/"))
        out = subprocess.run(["cat", *[str(root / k) for k in names]], capture_output=True,
                             check=True).stdout
        assert out == b"".join(files[k] for k in names)
        read += len(out)
    c = counters(m)
    fetched = c["bytes_from_store"]
    # the table of contents is fetched too; nothing of the modules in between
    assert fetched <= read * 1.1, (fetched, read)
    assert c["pack_gets"] == len(chosen), c  # each module's frames in one GET
    assert c["pack_frames_fetched"] == len(chosen) - 1 + 3, c


@pytest.mark.fuse
@pytest.mark.s3
def test_a_whole_tree_copy_coalesces_across_modules(seaweed: SeaweedFS, bucket: str,
                                                    mounter: Mounter, tmp_path: Path) -> None:
    files, m, root = mounted_pack(seaweed, bucket, mounter, tmp_path)
    subprocess.run(["cp", "-r", str(root), str(tmp_path / "copy")], check=True)
    for rel, data in files.items():
        assert (tmp_path / "copy" / rel).read_bytes() == data, rel
    c = counters(m)
    frames = c["pack_frames_fetched"]
    assert frames == len(MODULES) + 3 + 2  # every module, `cache`, and the top-level file
    assert c["pack_gets"] < frames / 2, c  # behind cp -r, a GET runs on into the next units


@pytest.mark.fuse
@pytest.mark.s3
def test_the_prefetcher_stays_in_the_module_being_read(seaweed: SeaweedFS, bucket: str,
                                                       mounter: Mounter) -> None:
    """Objects, one per file: reading every 4th module in tree order fetches those modules'
    files (read ahead within each), not the modules in between."""
    client = seaweed.client()
    files = {f"mods/example.com/m{i:02d}@v1.0.0/pkg/f{j:02d}.go": os.urandom(20_000 + 31 * j)
             for i in range(12) for j in range(12)}
    for key, data in files.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)
    m = mounter(server=seaweed, bucket=bucket)
    read = 0
    for i in range(0, 12, 4):
        names = sorted(k for k in files if k.startswith(f"mods/example.com/m{i:02d}@"))
        out = subprocess.run(["cat", *[str(m.path / k) for k in names]], capture_output=True,
                             check=True).stdout
        assert out == b"".join(files[k] for k in names)
        read += len(out)
    c = counters(m)
    assert c.get("prefetch_store", 0) > 0, c  # it did read ahead, inside each module
    assert c["bytes_from_store"] <= read * 1.2, (c["bytes_from_store"], read)
