"""Write-back through a real mount: what programs write reaches S3, durably and exactly."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import Mounter, cli, new_bucket
from .goproxy import go_env, make_app, make_proxy
from .servers import S3Server, SeaweedFS

pytestmark = [pytest.mark.fuse, pytest.mark.s3]


def get(server: S3Server, bucket: str, key: str) -> bytes:
    return server.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def head(server: S3Server, bucket: str, key: str) -> dict[str, str]:
    return server.client().head_object(Bucket=bucket, Key=key)["Metadata"]


def keys(server: S3Server, bucket: str) -> list[str]:
    resp = server.client().list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in resp.get("Contents", ()) if ".cachefs.dir" not in o["Key"])


def test_cp_returns_once_the_object_is_in_s3(seaweed: SeaweedFS, bucket: str,
                                              mounter: Mounter, tmp_path: Path) -> None:
    payload = os.urandom(30 << 20)
    src = tmp_path / "app.tar.zst"
    src.write_bytes(payload)
    m = mounter(server=seaweed, bucket=bucket)
    os.mkdir(m.path / "artifacts")
    subprocess.run(["cp", src, m.path / "artifacts/"], check=True)
    assert get(seaweed, bucket, "artifacts/app.tar.zst") == payload  # no sync needed
    meta = head(seaweed, bucket, "artifacts/app.tar.zst")
    assert int(meta["mode"]) & 0o777 == 0o644
    # Uploaded while it was written: the digest is in the directory manifest instead.
    assert cli("sync", str(m.path), env=m.env).returncode == 0
    manifest = get(seaweed, bucket, "artifacts/.cachefs.dir").decode()
    assert hashlib.sha256(payload).hexdigest() in manifest
    assert (m.path / "artifacts/app.tar.zst").read_bytes() == payload
    assert m.control("stats")["counters"].get("bytes_from_store", 0) == 0


def test_overwrite_append_modify_truncate(seaweed: SeaweedFS, bucket: str,
                                          mounter: Mounter) -> None:
    m = mounter(server=seaweed, bucket=bucket)
    f = m.path / "f.txt"
    f.write_bytes(b"first version")
    f.write_bytes(b"second")  # O_TRUNC
    assert get(seaweed, bucket, "f.txt") == b"second"
    with open(f, "ab") as out:
        out.write(b" appended")
    assert get(seaweed, bucket, "f.txt") == b"second appended"
    with open(f, "r+b") as out:
        out.seek(2)
        out.write(b"CO")
    assert get(seaweed, bucket, "f.txt") == b"seCOnd appended"
    os.truncate(f, 6)
    assert get(seaweed, bucket, "f.txt") == b"seCOnd"
    assert f.read_bytes() == b"seCOnd"
    f.unlink()
    assert keys(seaweed, bucket) == []


def test_directories_renames_symlinks(seaweed: SeaweedFS, bucket: str,
                                      mounter: Mounter) -> None:
    m = mounter(server=seaweed, bucket=bucket)
    os.makedirs(m.path / "a/b")
    (m.path / "a/b/one").write_bytes(b"1")
    (m.path / "a/two").write_bytes(b"2")
    with pytest.raises(OSError) as info:
        os.rmdir(m.path / "a")
    assert info.value.errno == errno.ENOTEMPTY
    os.symlink("b/one", m.path / "a/link")
    assert os.readlink(m.path / "a/link") == "b/one"
    assert (m.path / "a/link").read_bytes() == b"1"
    os.rename(m.path / "a/two", m.path / "a/b/one")  # replaces the target
    assert (m.path / "a/b/one").read_bytes() == b"2"
    os.rename(m.path / "a", m.path / "c")
    assert sorted(os.listdir(m.path / "c")) == ["b", "link"]
    stored = [k for k in keys(seaweed, bucket) if not k.endswith("/")]
    assert stored == ["c/b/one", "c/link"]
    assert get(seaweed, bucket, "c/b/one") == b"2"
    os.mkdir(m.path / "empty")
    os.rename(m.path / "empty", m.path / "still-empty")
    assert "still-empty/" in keys(seaweed, bucket)
    os.rmdir(m.path / "still-empty")
    assert not [k for k in keys(seaweed, bucket) if "empty" in k]


def test_modes_times_owners_seen_by_another_mount(seaweed: SeaweedFS, bucket: str,
                                                   mounter: Mounter) -> None:
    a = mounter(server=seaweed, bucket=bucket)
    (a.path / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(a.path / "tool", 0o755)
    os.utime(a.path / "tool", (1_600_000_000, 1_600_000_000))
    os.chown(a.path / "tool", 1234, 5678)
    os.makedirs(a.path / "ro")
    os.chmod(a.path / "ro", 0o555)
    os.symlink("tool", a.path / "alias")
    os.setxattr(a.path / "tool", "user.note", b"kept")
    assert cli("sync", str(a.path), env=a.env).returncode == 0
    b = mounter(server=seaweed, bucket=bucket)
    st = os.stat(b.path / "tool")
    assert (st.st_mode & 0o777, st.st_mtime, st.st_uid, st.st_gid) == \
        (0o755, 1_600_000_000, 1234, 5678)
    assert os.stat(b.path / "ro").st_mode & 0o777 == 0o555
    assert os.readlink(b.path / "alias") == "tool"
    assert os.getxattr(b.path / "tool", "user.note") == b"kept"
    assert subprocess.run([b.path / "alias"], capture_output=True, text=True).stdout == "hi\n"


def test_fsync_and_local_locks(seaweed: SeaweedFS, bucket: str, mounter: Mounter) -> None:
    m = mounter("--writeback", "async", server=seaweed, bucket=bucket)
    with open(m.path / "locked", "wb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(b"data")
        f.flush()
        os.fsync(f.fileno())
        assert get(seaweed, bucket, "locked") == b"data"  # fsync waits even in async mode
        holder = subprocess.run(
            ["python3", "-c", "import fcntl,sys; f=open(sys.argv[1],'rb');\n"
             "try:\n fcntl.flock(f, fcntl.LOCK_EX|fcntl.LOCK_NB); print('got')\n"
             "except BlockingIOError: print('busy')", m.path / "locked"],
            capture_output=True, text=True)
        assert holder.stdout.strip() == "busy"


def test_readers_see_the_old_content_until_the_new_is_stored(seaweed: SeaweedFS, bucket: str,
                                                              mounter: Mounter) -> None:
    m = mounter(server=seaweed, bucket=bucket)
    (m.path / "k").write_bytes(b"old" * 1000)
    with open(m.path / "k", "rb") as reader:
        with open(m.path / "k", "r+b") as writer:
            writer.write(b"NEW")
            assert reader.read(3) == b"old"
        assert reader.read() == (b"old" * 1000)[3:]
    assert (m.path / "k").read_bytes()[:6] == b"NEWold"


def test_async_status_sync_and_umount(seaweed: SeaweedFS, bucket: str,
                                      mounter: Mounter) -> None:
    m = mounter("--writeback", "async", server=seaweed, bucket=bucket)
    for i in range(20):
        (m.path / f"f{i}").write_bytes(os.urandom(10_000))
    status = cli("status", "--json", str(m.path), env=m.env)
    assert status.returncode == 0
    result = cli("sync", str(m.path), env=m.env)
    assert result.returncode == 0, result.stderr
    assert len(keys(seaweed, bucket)) == 20
    assert m.control("status")["pending"] == []
    (m.path / "last").write_bytes(b"written just before umount")
    m.umount()
    assert get(seaweed, bucket, "last") == b"written just before umount"


def test_kill_9_after_close_in_async_mode(seaweed: SeaweedFS, bucket: str,
                                          mounter: Mounter) -> None:
    m = mounter("--writeback", "async", server=seaweed, bucket=bucket)
    payload = os.urandom(12 << 20)
    (m.path / "precious.bin").write_bytes(payload)
    m.kill()
    again = mounter("--writeback", "async", server=seaweed, bucket=bucket,
                    cache_dir=m.cache_dir)
    assert cli("sync", str(again.path), env=again.env).returncode == 0
    assert get(seaweed, bucket, "precious.bin") == payload


def test_store_down_during_sync_close(private_seaweed: SeaweedFS, mounter: Mounter) -> None:
    bucket = new_bucket(private_seaweed)
    m = mounter("--timeout", "3", server=private_seaweed, bucket=bucket)
    (m.path / "before").write_bytes(b"ok")
    private_seaweed.stop()
    with pytest.raises(OSError) as info, open(m.path / "during", "wb") as f:
        f.write(b"not saved yet")
    assert info.value.errno == errno.EIO
    pending = m.control("status")["pending"]
    assert [p["key"] for p in pending] == ["during"] and pending[0]["error"]
    assert (m.path / "during").read_bytes() == b"not saved yet"  # kept locally, not lost
    private_seaweed.start()
    deadline = time.monotonic() + 90
    while m.control("status")["pending"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert get(private_seaweed, bucket, "during") == b"not saved yet"


def test_full_staging_disk_gives_enospc(seaweed: SeaweedFS, bucket: str, mounter: Mounter,
                                        tmp_path: Path) -> None:
    cache = tmp_path / "small-cache"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", cache], check=True)
    try:
        m = mounter(server=seaweed, bucket=bucket, cache_dir=cache)
        (m.path / "fits").write_bytes(b"small")
        with pytest.raises(OSError) as info, open(m.path / "too-big", "wb") as f:
            for _ in range(20):
                f.write(os.urandom(1 << 20))
        assert info.value.errno == errno.ENOSPC
        assert "too-big" not in keys(seaweed, bucket)
        deadline = time.monotonic() + 5  # release (which drops the file) follows close()
        while (m.path / "too-big").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not (m.path / "too-big").exists()
        assert (m.path / "fits").read_bytes() == b"small"
        (m.path / "after").write_bytes(b"still works")
        assert get(seaweed, bucket, "after") == b"still works"
        m.umount()
    finally:
        subprocess.run(["umount", "-l", cache], check=False)


def test_parallel_writers(seaweed: SeaweedFS, bucket: str, mounter: Mounter) -> None:
    m = mounter(server=seaweed, bucket=bucket)
    script = ("import os,sys\n"
              "p, n = sys.argv[1], int(sys.argv[2])\n"
              "data = bytes([n]) * (2 << 20)\n"
              "open(p, 'wb').write(data)\n")
    procs = [subprocess.Popen(["python3", "-c", script, m.path / f"distinct{i}", str(i)],
                              stderr=subprocess.PIPE, text=True) for i in range(8)]
    procs += [subprocess.Popen(["python3", "-c", script, m.path / "same", str(100 + i)],
                               stderr=subprocess.PIPE, text=True) for i in range(8)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    failed = [(i, p.returncode, e) for i, (p, e) in enumerate(zip(procs, errors, strict=True))
              if p.returncode != 0]
    assert not failed, f"writers that failed (index, exit code, stderr): {failed}\n{m.log()}"
    for i in range(8):
        assert get(seaweed, bucket, f"distinct{i}") == bytes([i]) * (2 << 20)
    stored = get(seaweed, bucket, "same")
    assert stored in [bytes([100 + i]) * (2 << 20) for i in range(8)]
    assert (m.path / "same").read_bytes() == stored


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_go_mod_download_into_the_mount(mode: str, seaweed: SeaweedFS, bucket: str,
                                        mounter: Mounter, tmp_path: Path) -> None:
    if shutil.which("go") is None:
        pytest.fail("the Go toolchain is missing: scripts/setup.sh installs golang-go")
    proxy, app, home = tmp_path / "proxy", tmp_path / "app", tmp_path / "home"
    make_proxy(proxy)
    make_app(app)
    m = mounter("--writeback", mode, server=seaweed, bucket=bucket)
    env = {**os.environ, **go_env(proxy.as_uri(), m.path / "go-mod/k1", home)}
    subprocess.run(["go", "mod", "download"], cwd=app, env=env, check=True, timeout=300)
    m.umount()
    fresh = mounter("--writeback", mode, server=seaweed, bucket=bucket)
    env = {**os.environ, **go_env("off", fresh.path / "go-mod/k1", home)}
    shutil.rmtree(home / "gocache", ignore_errors=True)
    build = subprocess.run(["go", "build", "-o", str(tmp_path / "app.bin"), "."], cwd=app,
                           env=env, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    verify = subprocess.run(["go", "mod", "verify"], cwd=app, env=env, capture_output=True,
                            text=True, timeout=300)
    assert verify.returncode == 0 and "all modules verified" in verify.stdout, verify.stderr
    assert subprocess.run([tmp_path / "app.bin"], capture_output=True,
                          text=True).stdout == "hihi\n"
    util = fresh.path / "go-mod/k1/example.com/util@v1.2.0"
    assert os.stat(util / "util.go").st_mode & 0o777 == 0o444
    assert os.stat(util).st_mode & 0o777 == 0o555
