"""The read-through mount, for real: the CLI mounts over FUSE, a real S3 server behind it."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import Mounter, cli, new_bucket, wait_gone
from .servers import S3Server, SeaweedFS

pytestmark = [pytest.mark.fuse, pytest.mark.s3]


def seed(server: S3Server, bucket: str, files: dict[str, bytes]) -> None:
    client = server.client()
    for key, data in files.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)


def tree(count: int, seed_bytes: int = 0) -> dict[str, bytes]:
    return {f"node/abcd/pkg{i % 7}/file{i}.js": os.urandom(200 + (i * 37) % 3000)
            for i in range(count)}


def test_ls_stat_find_du_never_download(seaweed: SeaweedFS, bucket: str,
                                        mounter: Mounter) -> None:
    files = tree(60)
    files["toolchains/go.tar.gz"] = os.urandom(3 << 20)
    seed(seaweed, bucket, files)
    m = mounter(server=seaweed, bucket=bucket)
    listing = subprocess.run(["ls", "-l", m.path / "toolchains"], capture_output=True,
                             text=True, check=True).stdout
    assert "go.tar.gz" in listing and str(3 << 20) in listing
    assert os.stat(m.path / "toolchains/go.tar.gz").st_size == 3 << 20
    found = subprocess.run(["find", m.path, "-type", "f"], capture_output=True, text=True,
                           check=True).stdout.split()
    assert len(found) == len(files)
    du = subprocess.run(["du", "-sb", m.path], capture_output=True, text=True, check=True)
    assert int(du.stdout.split()[0]) >= sum(len(v) for v in files.values())
    stats = m.control("stats")
    assert stats["counters"].get("bytes_from_store", 0) == 0
    assert stats["cache"]["blobs"] == 0


def test_cat_cp_and_cp_r(seaweed: SeaweedFS, bucket: str, mounter: Mounter,
                         tmp_path: Path) -> None:
    files = tree(80)
    big = os.urandom(40 << 20)
    files["toolchains/go1.26.3.tar.gz"] = big
    seed(seaweed, bucket, files)
    m = mounter(server=seaweed, bucket=bucket)
    key = "node/abcd/pkg3/file3.js"
    assert subprocess.run(["cat", m.path / key], capture_output=True,
                          check=True).stdout == files[key]
    shutil.copy(m.path / "toolchains/go1.26.3.tar.gz", tmp_path / "go.tgz")
    assert (tmp_path / "go.tgz").read_bytes() == big
    subprocess.run(["cp", "-r", m.path / "node/abcd", tmp_path / "node_modules"], check=True)
    for k, data in files.items():
        if k.startswith("node/abcd/"):
            assert (tmp_path / "node_modules" / k[len("node/abcd/"):]).read_bytes() == data


def test_remount_serves_from_the_blob_tier(seaweed: SeaweedFS, bucket: str,
                                           mounter: Mounter) -> None:
    files = tree(30)
    seed(seaweed, bucket, files)
    m = mounter(server=seaweed, bucket=bucket)
    subprocess.run(["cat", *[m.path / k for k in files]], capture_output=True, check=True)
    assert m.control("stats")["counters"]["fetched_objects"] == 30
    m.umount()
    again = mounter(server=seaweed, bucket=bucket, cache_dir=m.cache_dir)
    for k, data in files.items():
        assert (again.path / k).read_bytes() == data
    counters = again.control("stats")["counters"]
    assert counters.get("fetched_objects", 0) == 0
    assert counters["hits_local"] == 30


def test_two_mounts_with_separate_cache_dirs(seaweed: SeaweedFS, bucket: str,
                                             mounter: Mounter) -> None:
    a = mounter("--metadata-ttl", "1", server=seaweed, bucket=bucket)
    b = mounter("--metadata-ttl", "1", server=seaweed, bucket=bucket)
    assert os.listdir(b.path) == []
    (a.path / "from-a.txt").write_bytes(b"written by a")
    time.sleep(1.2)
    assert (b.path / "from-a.txt").read_bytes() == b"written by a"


def test_eviction_keeps_the_cache_under_its_cap(seaweed: SeaweedFS, bucket: str,
                                                mounter: Mounter) -> None:
    files = {f"blob{i}": os.urandom(1 << 20) for i in range(12)}
    seed(seaweed, bucket, files)
    m = mounter("--cache-size", "4M", server=seaweed, bucket=bucket)
    for k, data in files.items():
        assert (m.path / k).read_bytes() == data
    deadline = time.monotonic() + 10  # prefetches may still be landing
    while m.control("stats")["fetches_in_flight"] and time.monotonic() < deadline:
        time.sleep(0.1)
    stats = m.control("stats")
    assert stats["cache"]["bytes"] <= 4 << 20
    assert stats["cache"]["evictions"] >= 8
    blobs = [p for p in (m.cache_dir / "blobs").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in blobs) <= 4 << 20


def test_corrupted_blob_is_refetched_not_served(seaweed: SeaweedFS, bucket: str,
                                                mounter: Mounter) -> None:
    data = os.urandom(500_000)
    seed(seaweed, bucket, {"f.bin": data})
    m = mounter(server=seaweed, bucket=bucket)
    assert (m.path / "f.bin").read_bytes() == data
    m.umount()
    blob = m.cache_dir / "blobs" / hashlib.sha256(data).hexdigest()[:2] / \
        hashlib.sha256(data).hexdigest()
    damaged = bytearray(blob.read_bytes())
    damaged[12345] ^= 0x55
    blob.write_bytes(bytes(damaged))
    again = mounter(server=seaweed, bucket=bucket, cache_dir=m.cache_dir)
    assert (again.path / "f.bin").read_bytes() == data
    stats = again.control("stats")
    assert stats["errors"]["corrupt_blob"] == 1
    assert stats["counters"]["fetched_objects"] == 1


def test_replaced_object_is_seen_after_the_ttl(seaweed: SeaweedFS, bucket: str,
                                               mounter: Mounter) -> None:
    seed(seaweed, bucket, {"dir/k.txt": b"version one"})
    m = mounter("--metadata-ttl", "1", server=seaweed, bucket=bucket)
    assert (m.path / "dir/k.txt").read_bytes() == b"version one"
    seed(seaweed, bucket, {"dir/k.txt": b"the second version", "dir/new.txt": b"n"})
    time.sleep(1.3)
    assert (m.path / "dir/k.txt").read_bytes() == b"the second version"
    assert sorted(os.listdir(m.path / "dir")) == ["k.txt", "new.txt"]
    seaweed.client().delete_object(Bucket=bucket, Key="dir/new.txt")
    time.sleep(1.3)
    assert os.listdir(m.path / "dir") == ["k.txt"]


def test_cached_files_readable_with_the_server_stopped(private_seaweed: SeaweedFS,
                                                       mounter: Mounter) -> None:
    bucket = new_bucket(private_seaweed)
    seed(private_seaweed, bucket, {"d/cached.txt": b"cached", "d/cold.txt": b"cold"})
    m = mounter("--metadata-ttl", "1", "--timeout", "3", server=private_seaweed,
                bucket=bucket)
    assert (m.path / "d/cached.txt").read_bytes() == b"cached"
    private_seaweed.stop()
    time.sleep(1.2)
    started = time.monotonic()
    assert (m.path / "d/cached.txt").read_bytes() == b"cached"
    assert sorted(os.listdir(m.path / "d")) == ["cached.txt", "cold.txt"]
    with pytest.raises(OSError) as info:
        (m.path / "d/cold.txt").read_bytes()
    assert info.value.errno == errno.EIO
    assert time.monotonic() - started < 60
    assert "store unreachable" in m.log() or "GET d/cold.txt" in m.log()


def test_keys_that_cannot_be_paths(moto: S3Server, mounter: Mounter) -> None:
    bucket = new_bucket(moto)
    seed(moto, bucket, {"ok.txt": b"1", "a//b": b"2", "x/./y": b"3", "n" * 300: b"4",
                        "both": b"5", "both/child": b"6"})
    m = mounter(server=moto, bucket=bucket)
    assert sorted(os.listdir(m.path)) == ["a", "both", "ok.txt", "x"]
    assert os.listdir(m.path / "a") == []
    assert os.listdir(m.path / "x") == []
    assert (m.path / "both/child").read_bytes() == b"6"
    log = m.log()
    assert "cannot be shown as a path" in log and "both an object and a prefix" in log


def test_prefix_is_the_mount_root(seaweed: SeaweedFS, bucket: str, mounter: Mounter) -> None:
    seed(seaweed, bucket, {"proj/a/x": b"x", "other/y": b"y"})
    m = mounter(server=seaweed, name="m", start=False)
    m.args = ["--store", f"s3://{bucket}/proj"]
    m.start()
    assert os.listdir(m.path) == ["a"]
    assert (m.path / "a/x").read_bytes() == b"x"


def test_read_only_mount_refuses_writes(seaweed: SeaweedFS, bucket: str,
                                        mounter: Mounter) -> None:
    seed(seaweed, bucket, {"k": b"1"})
    m = mounter("--read-only", server=seaweed, bucket=bucket)
    for action in (lambda: (m.path / "new").write_bytes(b"x"),
                   lambda: os.mkdir(m.path / "d"),
                   lambda: os.unlink(m.path / "k"),
                   lambda: (m.path / "k").write_bytes(b"2")):
        with pytest.raises(OSError) as info:
            action()
        assert info.value.errno == errno.EROFS
    assert (m.path / "k").read_bytes() == b"1"


def test_mount_failures_exit_2_with_one_line(seaweed: SeaweedFS, bucket: str,
                                             mounter: Mounter, tmp_path: Path) -> None:
    missing = mounter(server=seaweed, bucket=bucket, start=False)
    result = cli("mount", "--store", f"s3://{bucket}", str(tmp_path / "nope"), env=missing.env)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and len(result.stderr.strip().splitlines()) == 1

    no_bucket = mounter(server=seaweed, bucket="no-such-bucket-x", start=False)
    result = no_bucket.start(expect_ok=False)
    assert result.returncode == 2 and "bucket" in result.stderr and "does not exist" in \
        result.stderr

    bad = mounter(server=seaweed, bucket=bucket, start=False,
                  env={"CACHEFS_S3_SECRET": "wrong"})
    result = bad.start(expect_ok=False)
    assert result.returncode == 2 and "credentials" in result.stderr
    assert "wrong" not in result.stderr

    ok = mounter(server=seaweed, bucket=bucket)
    busy = mounter(server=seaweed, bucket=bucket, start=False, name=ok.path.name)
    result = busy.start(expect_ok=False)
    assert result.returncode == 2 and "already a mount point" in result.stderr


def test_umount_waits_for_the_daemon(seaweed: SeaweedFS, bucket: str,
                                     mounter: Mounter) -> None:
    m = mounter(server=seaweed, bucket=bucket)
    pid = m.pid
    assert pid is not None
    m.umount()
    assert not os.path.ismount(m.path)
    assert wait_gone(pid, timeout=0.5)
