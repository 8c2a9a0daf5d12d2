"""Origin fallback through a real mount, with a real HTTP origin that can misbehave."""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Mount, Mounter, cli
from .origin_server import Origin
from .servers import SeaweedFS

pytestmark = [pytest.mark.fuse, pytest.mark.s3]


@pytest.fixture
def origin() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.close()


def s3_meta(seaweed: SeaweedFS, bucket: str, key: str) -> dict[str, str]:
    return seaweed.client().head_object(Bucket=bucket, Key=key)["Metadata"]


def wait_for_key(seaweed: SeaweedFS, bucket: str, key: str, timeout: float = 30) -> bytes:
    client = seaweed.client()
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def with_origin(m: Mount, origin: Origin, directory: str = "dl", path: str = "/files/") -> Path:
    d = m.path / directory
    d.mkdir(exist_ok=True)
    os.setxattr(d, "user.cachefs.origin", (origin.url + path).encode())
    return d


def test_origin_xattr_is_validated_stored_and_shared(seaweed: SeaweedFS, bucket: str,
                                                     mounter: Mounter, origin: Origin) -> None:
    a = mounter(server=seaweed, bucket=bucket)
    d = with_origin(a, origin)
    assert os.getxattr(d, "user.cachefs.origin") == (origin.url + "/files/").encode()
    with pytest.raises(OSError) as info:
        os.setxattr(d, "user.cachefs.origin", b"ftp://example.com/")
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        os.setxattr(d, "user.cachefs.origin", b"file:///etc/")
    assert info.value.errno == errno.EINVAL
    assert cli("sync", str(a.path), env=a.env).returncode == 0
    b = mounter(server=seaweed, bucket=bucket)
    assert os.getxattr(b.path / "dl", "user.cachefs.origin") == (origin.url + "/files/").encode()
    os.removexattr(b.path / "dl", "user.cachefs.origin")
    with pytest.raises(OSError) as info:
        os.getxattr(b.path / "dl", "user.cachefs.origin")
    assert info.value.errno == errno.ENODATA


def test_miss_is_fetched_served_kept_and_uploaded(seaweed: SeaweedFS, bucket: str,
                                                  mounter: Mounter, origin: Origin) -> None:
    payload = os.urandom(5 << 20)
    origin.files["/files/go1.26.3.linux-amd64.tar.gz"] = payload
    origin.files["/files/sub/dir/x.txt"] = b"nested"
    a = mounter(server=seaweed, bucket=bucket)
    d = with_origin(a, origin)
    f = d / "go1.26.3.linux-amd64.tar.gz"
    assert os.stat(f).st_size == len(payload)
    assert f.read_bytes() == payload
    assert os.getxattr(f, "user.cachefs.source") == b"origin"
    digest = hashlib.sha256(payload).hexdigest()
    assert os.getxattr(f, "user.cachefs.sha256") == digest.encode()
    assert (d / "sub/dir/x.txt").read_bytes() == b"nested"
    assert wait_for_key(seaweed, bucket, "dl/go1.26.3.linux-amd64.tar.gz") == payload
    meta = s3_meta(seaweed, bucket, "dl/go1.26.3.linux-amd64.tar.gz")
    assert meta["cachefs-origin-url"] == origin.url + "/files/go1.26.3.linux-amd64.tar.gz"
    assert meta["cachefs-sha256"] == digest
    assert f.read_bytes() == payload
    assert origin.gets("/files/go1.26.3.linux-amd64.tar.gz") == 1
    assert cli("sync", str(a.path), env=a.env).returncode == 0
    # The next runner: a store hit, the origin is not asked again.
    b = mounter(server=seaweed, bucket=bucket)
    assert (b.path / "dl/go1.26.3.linux-amd64.tar.gz").read_bytes() == payload
    assert os.getxattr(b.path / "dl/go1.26.3.linux-amd64.tar.gz",
                       "user.cachefs.source") == b"store"
    assert origin.gets("/files/go1.26.3.linux-amd64.tar.gz") == 1
    keys = cli("stats", "--keys", "--json", str(a.path), env=a.env)
    assert '"miss_origin": 1' in keys.stdout


def test_readers_do_not_wait_for_the_whole_file(seaweed: SeaweedFS, bucket: str,
                                                mounter: Mounter, origin: Origin) -> None:
    origin.files["/files/slow.bin"] = os.urandom(24 << 20)
    origin.rate = 8 << 20  # three seconds for the whole file
    m = mounter(server=seaweed, bucket=bucket)
    d = with_origin(m, origin)
    started = time.monotonic()
    with open(d / "slow.bin", "rb") as f:
        first = f.read(65536)
        first_at = time.monotonic() - started
        rest = f.read()
    assert first + rest == origin.files["/files/slow.bin"]
    assert first_at < 1.5, first_at
    assert time.monotonic() - started > 2.0


def test_pins_refuse_wrong_content(seaweed: SeaweedFS, bucket: str, mounter: Mounter,
                                   origin: Origin) -> None:
    good, bad = b"the real thing\n", b"tampered\n"
    origin.files["/files/a.tgz"] = good
    origin.files["/files/b.tgz"] = bad
    origin.files["/files/c.tgz"] = bad
    m = mounter(server=seaweed, bucket=bucket)
    d = with_origin(m, origin)
    sha = {n: hashlib.sha256(good).hexdigest() for n in ("a.tgz", "b.tgz")}
    os.setxattr(d, "user.cachefs.checksums",
                "".join(f"{v}  {k}\n" for k, v in sha.items()).encode())
    assert (d / "a.tgz").read_bytes() == good
    with pytest.raises(OSError) as info:
        (d / "b.tgz").read_bytes()
    assert info.value.errno == errno.EIO
    os.stat(d / "c.tgz")
    os.setxattr(d / "c.tgz", "user.cachefs.sha256", hashlib.sha256(good).hexdigest().encode())
    with pytest.raises(OSError) as info:
        (d / "c.tgz").read_bytes()
    assert info.value.errno == errno.EIO
    assert cli("sync", str(m.path), env=m.env).returncode == 0
    keys = [o["Key"] for o in seaweed.client().list_objects_v2(Bucket=bucket)
            .get("Contents", [])]
    assert "dl/a.tgz" in keys and "dl/b.tgz" not in keys and "dl/c.tgz" not in keys
    blobs = {p.name for p in (m.cache_dir / "blobs").rglob("*") if p.is_file()}
    assert hashlib.sha256(bad).hexdigest() not in blobs
    log = m.log()
    line = next(x for x in log.splitlines() if "b.tgz" in x and "expected" in x)
    assert hashlib.sha256(bad).hexdigest() in line and sha["b.tgz"] in line
    assert origin.url + "/files/b.tgz" in line


def test_http_behaviour(seaweed: SeaweedFS, bucket: str, mounter: Mounter,
                        origin: Origin) -> None:
    big = os.urandom(6 << 20)
    origin.files.update({"/files/real.bin": b"redirected", "/files/flaky": b"second try",
                         "/files/cut.bin": big, "/files/stalls": b"x"})
    origin.redirects["/files/moved.bin"] = "/files/real.bin"
    origin.gone["/files/gone"] = 410
    origin.fail["/files/broken"] = [500] * 100
    origin.fail["/files/flaky"] = [503]
    origin.cut["/files/cut.bin"] = [1 << 20]
    m = mounter("--timeout", "3", server=seaweed, bucket=bucket)
    d = with_origin(m, origin)
    assert (d / "moved.bin").read_bytes() == b"redirected"
    for name in ("missing", "gone"):
        with pytest.raises(FileNotFoundError):
            os.stat(d / name)
    with pytest.raises(OSError) as info:
        os.stat(d / "broken")
    assert info.value.errno == errno.EIO
    assert (d / "flaky").read_bytes() == b"second try"
    assert (d / "cut.bin").read_bytes() == big
    resumed = [r for m_, p_, r in origin.requests if p_ == "/files/cut.bin" and r]
    assert resumed and resumed[0].startswith("bytes=") and resumed[0] != "bytes=0-"
    origin.stall["/files/stalls"] = 60
    started = time.monotonic()
    with pytest.raises(OSError) as info:
        os.stat(d / "stalls")
    assert info.value.errno == errno.EIO
    assert time.monotonic() - started < 45


def test_interrupted_download_without_ranges_restarts(seaweed: SeaweedFS, bucket: str,
                                                      mounter: Mounter, origin: Origin) -> None:
    data = os.urandom(3 << 20)
    origin.ranges = False
    origin.files["/files/f"] = data
    origin.cut["/files/f"] = [100_000]
    m = mounter(server=seaweed, bucket=bucket)
    d = with_origin(m, origin)
    assert (d / "f").read_bytes() == data
    assert origin.gets("/files/f") == 2


def test_eight_readers_one_download(seaweed: SeaweedFS, bucket: str, mounter: Mounter,
                                    origin: Origin) -> None:
    data = os.urandom(8 << 20)
    origin.files["/files/shared.bin"] = data
    origin.rate = 16 << 20
    m = mounter(server=seaweed, bucket=bucket)
    d = with_origin(m, origin)
    os.stat(d / "shared.bin")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: (d / "shared.bin").read_bytes(), range(8)))
    assert all(r == data for r in results)
    assert origin.gets("/files/shared.bin") == 1


def test_curated_mode(seaweed: SeaweedFS, bucket: str, mounter: Mounter,
                      origin: Origin) -> None:
    origin.files["/files/vendor.tgz"] = b"approved bytes"
    m = mounter("--origin-fetch", "curate", server=seaweed, bucket=bucket)
    d = with_origin(m, origin)
    with pytest.raises(FileNotFoundError):
        (d / "vendor.tgz").read_bytes()
    assert origin.requests == []
    misses = m.control("stats")["recent_misses"]
    assert misses[-1]["key"] == "dl/vendor.tgz" and misses[-1]["fetched"] is False
    result = cli("fetch", str(d / "vendor.tgz"), env=m.env)
    assert result.returncode == 0, result.stderr
    assert seaweed.client().get_object(Bucket=bucket, Key="dl/vendor.tgz")["Body"].read() == \
        b"approved bytes"
    time.sleep(1.1)  # the kernel's negative entry for the name expires
    m2 = mounter("--origin-fetch", "curate", server=seaweed, bucket=bucket)
    assert (m2.path / "dl/vendor.tgz").read_bytes() == b"approved bytes"
    missing = cli("fetch", str(d / "not-there.tgz"), env=m.env)
    assert missing.returncode == 1 and "not at the origin" in missing.stderr


def test_origin_mount_option(seaweed: SeaweedFS, bucket: str, mounter: Mounter,
                             origin: Origin) -> None:
    origin.files["/mirror/tools/t.sh"] = b"#!/bin/sh\n"
    m = mounter("--origin", f"vendor={origin.url}/mirror/", server=seaweed, bucket=bucket)
    os.mkdir(m.path / "vendor")
    assert (m.path / "vendor/tools/t.sh").read_bytes() == b"#!/bin/sh\n"


def fill_then_refuse(seaweed: SeaweedFS, bucket: str, mounter: Mounter,
                     origin: Origin) -> None:
    """Issue 14: a 12 MiB fill, a 404, then a pinned file that fails its pin; after umount
    the fill is in the store."""
    tool = os.urandom(12 << 20)
    origin.files["/files/tool.tar.gz"] = tool
    origin.files["/files/other.bin"] = b"not what the checksums list says\n"
    m = mounter(server=seaweed, bucket=bucket)
    d = with_origin(m, origin)
    assert (d / "tool.tar.gz").read_bytes() == tool
    with pytest.raises(FileNotFoundError):
        open(d / "absent.bin", "rb")  # noqa: SIM115 (it never opens)
    wrong = hashlib.sha256(b"something else").hexdigest()
    os.setxattr(d, "user.cachefs.checksums", f"{wrong}  other.bin\n".encode())
    with pytest.raises(OSError) as info:
        (d / "other.bin").read_bytes()
    assert info.value.errno == errno.EIO, m.log()
    assert origin.gets("/files/other.bin") >= 1, m.log()
    m.umount()
    client = seaweed.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert "dl/tool.tar.gz" in keys, (keys, m.log())
    assert "dl/other.bin" not in keys
    assert client.get_object(Bucket=bucket, Key="dl/tool.tar.gz")["Body"].read() == tool


def test_fill_then_refuse_idle(seaweed: SeaweedFS, bucket: str, mounter: Mounter,
                               origin: Origin) -> None:
    fill_then_refuse(seaweed, bucket, mounter, origin)


def test_fill_then_refuse_under_load(seaweed: SeaweedFS, bucket: str, mounter: Mounter,
                                     origin: Origin, cpu_load: None) -> None:
    fill_then_refuse(seaweed, bucket, mounter, origin)


def test_sync_and_umount_wait_for_fills_in_progress(seaweed: SeaweedFS, bucket: str,
                                                    mounter: Mounter, origin: Origin) -> None:
    """A reader that stops early leaves the fill running: sync and umount wait for it (and
    so for the upload it queues), as they wait for uploads."""
    first, second = os.urandom(12 << 20), os.urandom(12 << 20)
    origin.files.update({"/files/first.tgz": first, "/files/second.tgz": second})
    m = mounter(server=seaweed, bucket=bucket)
    d = with_origin(m, origin)
    client = seaweed.client()
    for name, data in (("first.tgz", first), ("second.tgz", second)):
        held = origin.hold[f"/files/{name}"] = threading.Event()
        with open(d / name, "rb") as f:
            assert f.read(65536) == data[:65536]
        # The rest of the body comes a few seconds after sync/umount started.
        threading.Timer(4.0, held.set).start()
        if name == "first.tgz":
            result = cli("sync", str(m.path), env=m.env)
            assert result.returncode == 0, result.stderr
        else:
            m.umount()
        assert held.is_set(), f"{name}: sync/umount returned before the fill could end"
        obj = client.get_object(Bucket=bucket, Key=f"dl/{name}")
        assert obj["Body"].read() == data, m.log()
    assert origin.gets("/files/first.tgz") == origin.gets("/files/second.tgz") == 1
