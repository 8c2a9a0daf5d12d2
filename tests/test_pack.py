"""Tree packs: the format round trip, and packs mounted for real."""

from __future__ import annotations

import filecmp
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from cachefs.errors import ChecksumMismatch
from cachefs.pack import save
from cachefs.pack.format import FRAME_TARGET, TRAILER, Toc, decode_toc, decode_trailer
from cachefs.remote.manifest import add_pack_entry

from .conftest import Mounter, cli
from .faultproxy import Fault, FaultProxy
from .goproxy import go_env, make_app, make_proxy
from .memstore import MemoryStore
from .servers import SeaweedFS


def make_tree(root: Path) -> None:
    (root / "dir with spaces/ünïcødé").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "a.txt").write_text("hello\n")
    (root / "dir with spaces/ünïcødé/naïve file.go").write_text("package x\n" * 50)
    (root / "random.bin").write_bytes(os.urandom(3 * FRAME_TARGET + 12345))  # split, incompressible
    (root / "empty").write_bytes(b"")
    (root / "dup1").write_bytes(b"same bytes" * 1000)
    (root / "sub").mkdir()
    (root / "sub/dup2").write_bytes(b"same bytes" * 1000)
    (root / "sub/exec.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "sub/exec.sh", 0o755)
    os.chmod(root / "a.txt", 0o444)
    os.symlink("../a.txt", root / "sub/link")
    os.utime(root / "a.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    for i in range(300):
        (root / "sub" / f"many{i:03d}.txt").write_text(f"file {i}\n" * (i % 40 + 1))


def same_tree(a: Path, b: Path) -> None:
    """Names, kinds, modes, mtimes, symlink targets and bytes all equal."""
    left = sorted(p.relative_to(a).as_posix() for p in a.rglob("*"))
    right = sorted(p.relative_to(b).as_posix() for p in b.rglob("*"))
    assert left == right
    for rel in left:
        x, y = a / rel, b / rel
        sx, sy = os.lstat(x), os.lstat(y)
        assert sx.st_mode == sy.st_mode, rel
        if not x.is_dir():
            assert sx.st_mtime_ns == sy.st_mtime_ns, rel
        if x.is_symlink():
            assert os.readlink(x) == os.readlink(y)
        elif x.is_file():
            assert filecmp.cmp(x, y, shallow=False), rel


def test_format_round_trip_and_dedupe(tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    store = MemoryStore()
    summary = save.pack_directory(tmp_path / "src", store, "p/k", 3)
    add_pack_entry(store, "p/k", summary["info"])  # as `cachefs pack` does
    data = store.objects["p/k"][0]
    offset, clen, ulen, sha = decode_trailer(data[-TRAILER.size:])
    toc = decode_toc(data[offset:offset + clen], ulen, sha)
    files = {e.path: e for e in toc.entries if e.kind == "f"}
    assert files["dup1"].extents == files["sub/dup2"].extents
    assert len(files["random.bin"].extents) == 4
    assert files["empty"].extents == [] and files["empty"].size == 0
    assert summary["unique_files"] == summary["files"] - 1
    kinds = {e.path: e.kind for e in toc.entries}
    assert kinds["empty-dir"] == "d" and kinds["sub/link"] == "l"
    paths = [e.path for e in toc.entries]
    assert paths.index("dir with spaces") < paths.index("dir with spaces/ünïcødé/naïve file.go")
    assert store.objects["p/.cachefs.dir"][0].count(b'"type":"p"') == 1
    with pytest.raises(ChecksumMismatch):
        decode_toc(data[offset:offset + clen], ulen, "0" * 64)
    assert Toc.decode(toc.encode()).entries == toc.entries


@pytest.mark.fuse
@pytest.mark.s3
def test_pack_mounted_as_read_only_directory(seaweed: SeaweedFS, bucket: str,
                                             mounter: Mounter, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    result = cli("pack", str(src), f"s3://{bucket}/packs/k1", env=seaweed.env())
    assert result.returncode == 0, result.stderr
    m = mounter(server=seaweed, bucket=bucket)
    pack_dir = m.path / "packs/k1"
    assert pack_dir.is_dir()
    assert os.stat(pack_dir).st_mode & 0o777 == 0o555
    listing = os.listdir(pack_dir)
    assert m.control("stats")["counters"].get("pack_frames_fetched", 0) == 0  # stat is free
    assert sorted(listing) == sorted(os.listdir(src))
    same_tree(src, pack_dir)
    for action in (lambda: (pack_dir / "new").write_text("x"),
                   lambda: (pack_dir / "a.txt").write_text("x"),
                   lambda: os.unlink(pack_dir / "empty"),
                   lambda: os.mkdir(pack_dir / "d")):
        with pytest.raises(OSError) as info:
            action()
        assert info.value.errno == 30  # EROFS
    sub = mounter("--subtree", "packs/k1", server=seaweed, bucket=bucket)
    same_tree(src, sub.path)


@pytest.mark.fuse
@pytest.mark.s3
def test_restore_keys(seaweed: SeaweedFS, bucket: str, mounter: Mounter,
                      tmp_path: Path) -> None:
    for name in ("go-mod-aaa", "go-mod-bbb"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "which").write_text(name)
        assert cli("pack", str(tmp_path / name), f"s3://{bucket}/{name}",
                   env=seaweed.env()).returncode == 0
        time.sleep(1.1)  # distinct LastModified seconds
    exact = mounter("--subtree", "go-mod-aaa", "--restore-key", "go-mod-", server=seaweed,
                    bucket=bucket)
    assert (exact.path / "which").read_text() == "go-mod-aaa"
    newest = mounter("--subtree", "go-mod-zzz", "--restore-key", "other-", "--restore-key",
                     "go-mod-", server=seaweed, bucket=bucket, start=False)
    result = newest.start()
    assert "not an exact hit" in result.stdout and "go-mod-bbb" in result.stdout
    assert (newest.path / "which").read_text() == "go-mod-bbb"
    miss = mounter("--subtree", "go-mod-zzz", "--restore-key", "nothing-", server=seaweed,
                   bucket=bucket, start=False)
    result = miss.start(expect_ok=False)
    assert result.returncode == 1 and "no key" in result.stderr


@pytest.mark.fuse
@pytest.mark.s3
def test_corrupted_frames_are_refetched_never_served(seaweed: SeaweedFS, bucket: str,
                                                     mounter: Mounter, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    assert cli("pack", str(src), f"s3://{bucket}/k", env=seaweed.env()).returncode == 0
    with FaultProxy(seaweed.endpoint) as proxy:
        # The first GET of each range comes back with one byte flipped.
        proxy.add(Fault(method="GET", path=r"/k(\?|$)", corrupt_at=100, times=3))
        env = {**seaweed.env(), "CACHEFS_ENDPOINT": proxy.url}
        m = mounter("--subtree", "k", server=seaweed, bucket=bucket, env=env)
        same_tree(src, m.path)
    m.umount()
    # Damage a frame in the blob tier: the next mount refetches it.
    again = mounter("--subtree", "k", server=seaweed, bucket=bucket, cache_dir=m.cache_dir)
    blobs = sorted((m.cache_dir / "blobs").rglob("*"), key=lambda p: -p.stat().st_size)
    victim = next(p for p in blobs if p.is_file())
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 1
    victim.write_bytes(bytes(data))
    same_tree(src, again.path)
    assert again.control("stats")["errors"].get("corrupt_blob", 0) >= 1


@pytest.mark.fuse
@pytest.mark.s3
@pytest.mark.slow
def test_go_build_from_a_mounted_pack(seaweed: SeaweedFS, bucket: str, mounter: Mounter,
                                      tmp_path: Path) -> None:
    if shutil.which("go") is None:
        pytest.fail("the Go toolchain is missing: scripts/setup.sh installs golang-go")
    proxy, app, home = tmp_path / "proxy", tmp_path / "app", tmp_path / "home"
    make_proxy(proxy)
    make_app(app)
    local_cache = tmp_path / "gomodcache"
    env = {**os.environ, **go_env(proxy.as_uri(), local_cache, home)}
    subprocess.run(["go", "mod", "download"], cwd=app, env=env, check=True, timeout=300)
    key = cli("key", "go-mod/{hash}", "--hash-from", str(app / "go.sum"), check=True)
    key_text = key.stdout.strip()
    assert cli("pack", str(local_cache), f"s3://{bucket}/{key_text}",
               env=seaweed.env()).returncode == 0
    subprocess.run(["chmod", "-R", "u+w", local_cache])
    shutil.rmtree(local_cache)
    shutil.rmtree(home / "gocache", ignore_errors=True)
    m = mounter("--subtree", key_text, server=seaweed, bucket=bucket)
    env = {**os.environ, **go_env("off", m.path, home)}
    build = subprocess.run(["go", "build", "-o", str(tmp_path / "app.bin"), "."], cwd=app,
                           env=env, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    verify = subprocess.run(["go", "mod", "verify"], cwd=app, env=env, capture_output=True,
                            text=True, timeout=300)
    assert "all modules verified" in verify.stdout, verify.stderr
    stats = m.control("stats")["counters"]
    assert stats["pack_frames_fetched"] >= 1
    digest = hashlib.sha256((tmp_path / "app.bin").read_bytes()).hexdigest()
    assert digest


def make_tar_zst(src: Path, dest: Path) -> None:
    """What cacher and actions/cache do: tar the directory, compress with zstd."""
    import io
    import tarfile

    import zstandard

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(src, arcname=".")
    dest.write_bytes(zstandard.ZstdCompressor(level=3).compress(raw.getvalue()))


@pytest.mark.fuse
@pytest.mark.s3
def test_tar_zst_archives_open_as_directories(seaweed: SeaweedFS, bucket: str,
                                              mounter: Mounter, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    os.link(src / "a.txt", src / "hardlink.txt")
    archive = tmp_path / "build.tar.zst"
    make_tar_zst(src, archive)
    seaweed.client().put_object(Bucket=bucket, Key="cache/build.tar.zst",
                                Body=archive.read_bytes())
    m = mounter(server=seaweed, bucket=bucket)
    opened = m.path / "cache/build.tar.zst.d"
    assert opened.is_dir()
    assert sorted(os.listdir(opened)) == sorted(os.listdir(src))
    for rel in ("a.txt", "hardlink.txt", "random.bin", "sub/exec.sh",
                "dir with spaces/ünïcødé/naïve file.go"):
        assert (opened / rel).read_bytes() == (src / rel).read_bytes(), rel
    assert os.readlink(opened / "sub/link") == "../a.txt"
    assert os.stat(opened / "sub/exec.sh").st_mode & 0o777 == 0o755
    assert int(os.stat(opened / "a.txt").st_mtime) == int(os.stat(src / "a.txt").st_mtime)
    with pytest.raises(OSError) as info:
        (opened / "new").write_text("x")
    assert info.value.errno == 30
    assert m.control("stats")["counters"]["archives_fetched"] == 1
    m.umount()
    again = mounter("--subtree", "cache/build.tar.zst", server=seaweed, bucket=bucket,
                    cache_dir=m.cache_dir)
    assert (again.path / "random.bin").read_bytes() == (src / "random.bin").read_bytes()
    assert again.control("stats")["counters"].get("archives_fetched", 0) == 0  # kept locally
