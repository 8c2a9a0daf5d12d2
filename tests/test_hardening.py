"""Offline mode, bounds, integrity of the cache dir, security defaults, observability."""

from __future__ import annotations

import concurrent.futures
import errno
import json
import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .conftest import Mounter, cli, new_bucket
from .servers import KEY_ID, SeaweedFS

pytestmark = [pytest.mark.fuse, pytest.mark.s3]


def test_offline_mount_is_a_read_only_view_and_recovers(private_seaweed: SeaweedFS,
                                                        mounter: Mounter) -> None:
    bucket = new_bucket(private_seaweed)
    client = private_seaweed.client()
    client.put_object(Bucket=bucket, Key="d/cached.txt", Body=b"cached")
    client.put_object(Bucket=bucket, Key="d/cold.txt", Body=b"cold")
    first = mounter("--timeout", "2", server=private_seaweed, bucket=bucket)
    assert (first.path / "d/cached.txt").read_bytes() == b"cached"
    os.listdir(first.path / "d")
    first.umount()
    private_seaweed.stop()
    offline = mounter("--timeout", "2", server=private_seaweed, bucket=bucket,
                      cache_dir=first.cache_dir)
    assert "mounting offline" in offline.log()
    assert offline.control("stats")["offline"] is True
    assert sorted(os.listdir(offline.path / "d")) == ["cached.txt", "cold.txt"]
    assert (offline.path / "d/cached.txt").read_bytes() == b"cached"
    with pytest.raises(OSError) as info:
        (offline.path / "d/cold.txt").read_bytes()
    assert info.value.errno == errno.EIO
    with pytest.raises(OSError) as info:
        (offline.path / "d/new.txt").write_bytes(b"x")
    assert info.value.errno == errno.EROFS
    private_seaweed.start()
    deadline = time.monotonic() + 30
    while offline.control("stats")["offline"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert offline.control("stats")["offline"] is False
    (offline.path / "d/new.txt").write_bytes(b"after")
    assert client.get_object(Bucket=bucket, Key="d/new.txt")["Body"].read() == b"after"


def _modes(root: Path) -> list[tuple[str, int]]:
    out = []
    for path in [root, *root.rglob("*")]:
        st = os.lstat(path)
        if stat.S_ISSOCK(st.st_mode):
            continue
        out.append((str(path.relative_to(root)), stat.S_IMODE(st.st_mode)))
    return out


def test_cache_dir_is_private_and_secrets_are_never_written(seaweed: SeaweedFS, bucket: str,
                                                            mounter: Mounter,
                                                            tmp_path: Path) -> None:
    secret = "cachefs-test-secret-0123456789"  # tests/servers.py SECRET
    seaweed.client().put_object(Bucket=bucket, Key="a/b.txt", Body=b"data")
    m = mounter("--log-level", "debug", server=seaweed, bucket=bucket)
    (m.path / "a/b.txt").read_bytes()
    (m.path / "a/new.bin").write_bytes(os.urandom(20 << 20))
    outputs = [cli("stats", "--json", str(m.path), env=m.env).stdout,
               cli("status", "--json", str(m.path), env=m.env).stdout,
               cli("doctor", "--store", f"s3://{bucket}", env=m.env).stdout,
               cli("doctor", "--store", f"s3://{bucket}",
                   env={**m.env, "CACHEFS_S3_SECRET": "wrong-" + secret[:8]}).stdout,
               json.dumps(m.control("config"))]
    m.umount()
    for rel, mode in _modes(m.cache_dir):
        assert mode & 0o077 == 0, f"{rel} is {oct(mode)}: group or others can read it"
    written = b"".join(p.read_bytes() for p in m.cache_dir.rglob("*")
                       if p.is_file() and not p.parent.name.startswith(("blobs", "tmp")) and
                       p.parent.parent.name != "blobs")
    assert secret.encode() not in written
    for text in outputs:
        assert secret not in text and secret[:12] not in text
    assert KEY_ID in outputs[2] or "characters" in outputs[2]


def test_allow_other_brings_kernel_permission_checks(seaweed: SeaweedFS, bucket: str,
                                                     mounter: Mounter) -> None:
    plain = mounter(server=seaweed, bucket=bucket)
    shared = mounter("--allow-other", server=seaweed, bucket=bucket)
    mounts = Path("/proc/mounts").read_text().splitlines()

    def options(path: Path) -> str:
        return next(line for line in mounts if f" {path} " in line).split()[3]

    assert "allow_other" not in options(plain.path)
    assert "allow_other" in options(shared.path)
    assert "default_permissions" in options(shared.path)


def test_lost_or_damaged_index_is_rebuilt(seaweed: SeaweedFS, bucket: str,
                                          mounter: Mounter) -> None:
    m = mounter(server=seaweed, bucket=bucket)
    payload = os.urandom(5 << 20)
    (m.path / "f.bin").write_bytes(payload)  # written here: carries its SHA-256
    m.umount()
    (m.cache_dir / "index.db").unlink()
    (m.cache_dir / "tmp" / "leftover.partial").write_bytes(b"junk of a crash")
    again = mounter(server=seaweed, bucket=bucket, cache_dir=m.cache_dir)
    assert not (again.cache_dir / "tmp" / "leftover.partial").exists()
    assert (again.path / "f.bin").read_bytes() == payload
    counters = again.control("stats")["counters"]
    assert counters.get("bytes_from_store", 0) < len(payload)  # the blob was found again
    again.umount()
    (m.cache_dir / "index.db").write_bytes(b"this is not a database" * 100)
    third = mounter(server=seaweed, bucket=bucket, cache_dir=m.cache_dir)
    assert (third.path / "f.bin").read_bytes() == payload
    assert list(m.cache_dir.glob("index.db.damaged-*"))


def test_verify_and_clear(seaweed: SeaweedFS, bucket: str, mounter: Mounter) -> None:
    seaweed.client().put_object(Bucket=bucket, Key="k", Body=os.urandom(100_000))
    m = mounter(server=seaweed, bucket=bucket)
    (m.path / "k").read_bytes()
    busy = cli("clear", "--cache-dir", str(m.cache_dir), env=m.env)
    assert busy.returncode == 2 and "in use" in busy.stderr
    m.umount()
    blob = next(p for p in (m.cache_dir / "blobs").rglob("*") if p.is_file())
    blob.write_bytes(b"X" + blob.read_bytes()[1:])
    found = cli("verify", "--cache-dir", str(m.cache_dir))
    assert found.returncode == 1 and "1 bad" in found.stdout
    assert cli("verify", "--repair", "--cache-dir", str(m.cache_dir)).returncode == 0
    assert cli("verify", "--cache-dir", str(m.cache_dir)).returncode == 0
    cleared = cli("clear", "--cache-dir", str(m.cache_dir))
    assert cleared.returncode == 0, cleared.stderr
    assert not [p for p in (m.cache_dir / "blobs").rglob("*") if p.is_file()]


def test_prometheus_text(seaweed: SeaweedFS, bucket: str, mounter: Mounter) -> None:
    m = mounter(server=seaweed, bucket=bucket)
    (m.path / "x").write_bytes(b"1")
    text = cli("stats", "--prometheus", str(m.path), env=m.env).stdout
    assert "# TYPE cachefs_cache_bytes gauge" in text
    assert f'cachefs_pending_uploads{{mountpoint="{m.path}"}} 0' in text


@pytest.mark.slow
def test_64_concurrent_readers_stay_bounded(seaweed: SeaweedFS, bucket: str,
                                            mounter: Mounter) -> None:
    client = seaweed.client()
    files = {f"r/{i:02d}.bin": os.urandom(2 << 20) for i in range(64)}
    shared = os.urandom(24 << 20)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]),
                      files.items()))
    client.put_object(Bucket=bucket, Key="r/shared.bin", Body=shared)
    m = mounter(server=seaweed, bucket=bucket)
    assert m.pid is not None
    peak = {"fds": 0, "rss": 0, "fetches": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["fds"] = max(peak["fds"], len(os.listdir(f"/proc/{m.pid}/fd")))
            rss = next(int(line.split()[1]) for line in
                       Path(f"/proc/{m.pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS"))
            peak["rss"] = max(peak["rss"], rss // 1024)
            peak["fetches"] = max(peak["fetches"], m.control("stats")["fetches_in_flight"])
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(128) as pool:
            own = pool.map(lambda k: (m.path / k).read_bytes() == files[k], files)
            same = pool.map(lambda _: (m.path / "r/shared.bin").read_bytes() == shared,
                            range(64))
            assert all(own) and all(same)
    finally:
        done.set()
        sampler.join()
    print(f"64+64 concurrent readers: peak {peak['fds']} open fds, {peak['rss']} MiB RSS, "
          f"{peak['fetches']} fetches in flight")
    assert peak["fds"] < 400
    assert peak["rss"] < 512
    assert peak["fetches"] <= 65
    subprocess.run(["true"])


def test_index_cursors_never_escape_its_lock(tmp_path: Path) -> None:
    """A cursor returned from a transaction would be freed later on another thread, resetting
    its statement while a worker uses the connection (SQLITE_MISUSE took a mount down in the
    go mod download benchmark): the index closes it inside its lock."""
    from cachefs.tier.db import Database

    db = Database(tmp_path / "index.db")
    db.script("CREATE TABLE t (x INTEGER)")
    assert db.call(lambda c: c.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])) is None
    assert db.call(lambda c: c.execute("SELECT count(*) FROM t").fetchone())[0] == 2
    db.close()
