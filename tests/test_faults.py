"""The fault suite: a proxy that misbehaves on command between cachefs and its servers, and
process faults. After every scenario: each read returned the right bytes or an error, never
wrong bytes; no read hung past its bound; what was closed is in the store after recovery; the
blob tier holds nothing partial or corrupt; the mount unmounts.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Mount, Mounter, cli, new_bucket, wait_gone
from .faultproxy import Fault, FaultProxy
from .origin_server import Origin
from .servers import SeaweedFS

pytestmark = [pytest.mark.faults, pytest.mark.fuse, pytest.mark.s3]

TIMEOUT = 3  # --timeout for these mounts
BOUND = 30  # no read may take longer than this, whatever the fault


@pytest.fixture
def data(seaweed: SeaweedFS, bucket: str) -> dict[str, bytes]:
    client = seaweed.client()
    files = {"small.txt": os.urandom(30_000), "medium.bin": os.urandom(3 << 20)}
    for key, body in files.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    big = os.urandom(20 << 20)
    client.upload_fileobj(_Reader(big), bucket, "big.bin")  # multipart: an "-N" ETag
    files["big.bin"] = big
    return files


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        n = len(self.data) - self.pos if n < 0 else n
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk


@pytest.fixture
def proxy(seaweed: SeaweedFS) -> Iterator[FaultProxy]:
    with FaultProxy(seaweed.endpoint) as p:
        yield p


def proxied(mounter: Mounter, seaweed: SeaweedFS, bucket: str, proxy: FaultProxy,
            *args: str) -> Mount:
    return mounter("--timeout", str(TIMEOUT), *args, server=seaweed, bucket=bucket,
                   env={"CACHEFS_ENDPOINT": proxy.url})


def read_or_error(path: Path) -> tuple[bytes | None, int | None, float]:
    started = time.monotonic()
    try:
        return path.read_bytes(), None, time.monotonic() - started
    except OSError as e:
        return None, e.errno, time.monotonic() - started


def assert_invariants(m: Mount, files: dict[str, bytes]) -> None:
    """Right bytes or EIO/ENOENT within the bound; nothing corrupt kept; it unmounts."""
    for name, expected in files.items():
        data, err, took = read_or_error(m.path / name)
        assert took < BOUND, f"{name}: read took {took:.1f}s"
        if data is not None:
            assert data == expected, f"{name}: WRONG BYTES served"
        else:
            assert err in (errno.EIO, errno.ENOENT, errno.ESTALE), f"{name}: errno {err}"
    report = cli("verify", "--json", str(m.path), env=m.env)
    assert report.returncode == 0 and '"bad": []' in report.stdout, report.stdout
    m.umount()


@pytest.mark.parametrize("fault", [
    Fault(method="GET", drop_after=100_000, times=2),
    Fault(method="GET", truncate=50_000, times=2),
    Fault(method="GET", status=500, times=3),
    Fault(method="GET", status=503, code="SlowDown", times=3),
    Fault(method="GET", reset=True, times=2),
    Fault(method="GET", delay=1.0, times=2),
    Fault(method="GET", corrupt_at=1234, times=1),
], ids=["drop", "truncate", "500", "slowdown", "reset", "delay", "corrupt-once"])
def test_transient_store_faults_still_give_the_right_bytes(
        fault: Fault, seaweed: SeaweedFS, bucket: str, data: dict[str, bytes],
        proxy: FaultProxy, mounter: Mounter) -> None:
    m = proxied(mounter, seaweed, bucket, proxy)
    proxy.add(fault)
    for name, expected in data.items():
        assert (m.path / name).read_bytes() == expected, name
    assert fault.applied >= 1
    assert_invariants(m, data)


@pytest.mark.parametrize("fault", [
    Fault(method="GET", status=500),
    Fault(method="GET", corrupt_at=1234),
    Fault(method="GET", stall=True),
], ids=["500-forever", "corrupt-forever", "stall"])
def test_lasting_store_faults_give_errors_never_wrong_bytes(
        fault: Fault, seaweed: SeaweedFS, bucket: str, data: dict[str, bytes],
        proxy: FaultProxy, mounter: Mounter) -> None:
    m = proxied(mounter, seaweed, bucket, proxy)
    os.listdir(m.path)  # listings are not what this is about
    proxy.add(fault)
    for name in data:
        got, err, took = read_or_error(m.path / name)
        assert got is None or got == data[name], f"{name}: WRONG BYTES served"
        assert err == errno.EIO or got is not None
        assert took < BOUND, f"{name}: {took:.1f}s"
    proxy.clear()
    for name, expected in data.items():  # once the fault is gone, reads recover
        assert (m.path / name).read_bytes() == expected
    assert_invariants(m, data)


def test_corruption_in_a_multipart_object_is_caught(seaweed: SeaweedFS, bucket: str,
                                                    data: dict[str, bytes],
                                                    proxy: FaultProxy,
                                                    mounter: Mounter) -> None:
    # Corrupt a byte deep inside big.bin, in whichever ranged GET covers it first.
    proxy.add(Fault(method="GET", path=r"/big\.bin", corrupt_at=5_000_000, times=2))
    m = proxied(mounter, seaweed, bucket, proxy)
    got, _, _ = read_or_error(m.path / "big.bin")
    assert got is None or got == data["big.bin"]
    assert_invariants(m, data)


@pytest.fixture
def origin() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.close()


@pytest.mark.parametrize("fault, pin, outcome", [
    (Fault(method="GET", drop_after=300_000, times=1), False, "ok"),
    (Fault(method="GET", status=503, times=2), False, "ok"),
    (Fault(method="GET", truncate=10_000, times=1), False, "ok"),
    (Fault(method="GET", corrupt_at=777), True, "eio"),
    (Fault(method="GET", stall=True), False, "eio"),
], ids=["drop", "503", "truncate", "corrupt-pinned", "stall"])
def test_origin_faults(fault: Fault, pin: bool, outcome: str, seaweed: SeaweedFS,
                       bucket: str, origin: Origin, mounter: Mounter) -> None:
    payload = os.urandom(2 << 20)
    origin.files["/dl/tool.tgz"] = payload
    with FaultProxy(origin.url) as front:
        m = mounter("--timeout", str(TIMEOUT), server=seaweed, bucket=bucket)
        (m.path / "dl").mkdir()
        os.setxattr(m.path / "dl", "user.cachefs.origin", f"{front.url}/dl/".encode())
        os.stat(m.path / "dl/tool.tgz")
        if pin:
            os.setxattr(m.path / "dl/tool.tgz", "user.cachefs.sha256",
                        hashlib.sha256(payload).hexdigest().encode())
        front.add(fault)
        got, err, took = read_or_error(m.path / "dl/tool.tgz")
        assert took < BOUND
        if outcome == "ok":
            assert got == payload
        else:
            assert got is None and err == errno.EIO
        front.clear()
        assert_invariants(m, {})


def test_kill_9_during_a_fetch(seaweed: SeaweedFS, bucket: str, data: dict[str, bytes],
                               proxy: FaultProxy, mounter: Mounter) -> None:
    proxy.add(Fault(method="GET", path=r"/big\.bin", delay=0.5))  # slow enough to be caught
    m = proxied(mounter, seaweed, bucket, proxy)
    reader = subprocess.Popen(["cat", str(m.path / "big.bin")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    m.kill()
    reader.wait(30)
    proxy.clear()
    again = proxied(mounter, seaweed, bucket, proxy, "--cache-dir", str(m.cache_dir))
    assert not list((m.cache_dir / "tmp").iterdir())  # nothing partial left behind
    assert_invariants(again, data)


def test_kill_9_during_an_upload(seaweed: SeaweedFS, bucket: str, proxy: FaultProxy,
                                 mounter: Mounter) -> None:
    payload = os.urandom(30 << 20)
    proxy.add(Fault(method="PUT", delay=0.5))  # every part crawls
    m = proxied(mounter, seaweed, bucket, proxy, "--writeback", "async")
    (m.path / "out.bin").write_bytes(payload)  # closed: journaled
    time.sleep(1.0)  # the upload is under way
    m.kill()
    proxy.clear()
    again = proxied(mounter, seaweed, bucket, proxy, "--writeback", "async",
                    "--cache-dir", str(m.cache_dir))
    assert cli("sync", str(again.path), env=again.env).returncode == 0
    stored = seaweed.client().get_object(Bucket=bucket, Key="out.bin")["Body"].read()
    assert stored == payload
    assert_invariants(again, {"out.bin": payload})


def test_store_restarted(private_seaweed: SeaweedFS, mounter: Mounter) -> None:
    bucket = new_bucket(private_seaweed)
    client = private_seaweed.client()
    client.put_object(Bucket=bucket, Key="a.txt", Body=b"before")
    m = mounter("--timeout", str(TIMEOUT), "--writeback", "async", server=private_seaweed,
                bucket=bucket)
    assert (m.path / "a.txt").read_bytes() == b"before"
    private_seaweed.stop()
    (m.path / "written-while-down.txt").write_bytes(b"kept")  # journaled, waits
    private_seaweed.start()
    assert cli("sync", str(m.path), env=m.env).returncode == 0
    assert client.get_object(Bucket=bucket, Key="written-while-down.txt")["Body"].read() == \
        b"kept"
    client.put_object(Bucket=bucket, Key="b.txt", Body=b"after")
    assert_invariants(m, {"a.txt": b"before", "written-while-down.txt": b"kept"})
    pid = m.pid
    assert pid is None or wait_gone(pid)
