"""Statements of docs/SEMANTICS.md that no other test shows, each through a real mount: ESTALE
when an object changes while it is read, refused names, hard links and special files, the
rename flag cachefs cannot honour, and the early upload of a file written in order (sync mode).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import os
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from .conftest import Mount, Mounter
from .faultproxy import Fault, FaultProxy
from .servers import SeaweedFS

pytestmark = [pytest.mark.fuse, pytest.mark.s3]

MiB = 1 << 20
RENAME_EXCHANGE = 2  # linux/fs.h


def keys(seaweed: SeaweedFS, bucket: str) -> set[str]:
    listing = seaweed.client().list_objects_v2(Bucket=bucket)
    return {o["Key"] for o in listing.get("Contents", [])
            if not o["Key"].endswith(".cachefs.dir")}


def errno_of(fn: Callable[[], Any]) -> int:
    try:
        fn()
    except OSError as e:
        return int(e.errno or 0)
    return 0


def wait_for(what: str, check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.05)


def assert_serving(m: Mount) -> None:
    assert m.pid is not None
    os.kill(m.pid, 0)
    (m.path / ".probe").write_bytes(b"alive")
    assert (m.path / ".probe").read_bytes() == b"alive"
    (m.path / ".probe").unlink()


# -- reading: the object changed while it was read ------------------------------------------------

@pytest.fixture
def proxy(seaweed: SeaweedFS) -> Iterator[FaultProxy]:
    with FaultProxy(seaweed.endpoint) as p:
        yield p


def test_an_object_changed_while_it_is_read_gives_estale_never_its_bytes(
        seaweed: SeaweedFS, bucket: str, proxy: FaultProxy, mounter: Mounter) -> None:
    old, new = os.urandom(4 * MiB), os.urandom(4 * MiB)  # same size: only the ETag differs
    s3 = seaweed.client()
    s3.put_object(Bucket=bucket, Key="big.bin", Body=old)
    m = mounter("--timeout", "10", "--metadata-ttl", "1", server=seaweed, bucket=bucket,
                env={"CACHEFS_ENDPOINT": proxy.url})
    assert os.stat(m.path / "big.bin").st_size == len(old)
    # The first GET (the first part) passes; the others wait long enough for the object to be
    # replaced behind the mount's back before they reach the store.
    slow = proxy.add(Fault(method="GET", path=r"/big\.bin(\?|$)", after=1, delay=1.0))
    fd = os.open(m.path / "big.bin", os.O_RDONLY)
    try:
        assert os.pread(fd, 64 << 10, 0) == old[:64 << 10]
        s3.put_object(Bucket=bucket, Key="big.bin", Body=new)
        code = errno_of(lambda: os.pread(fd, 64 << 10, 3 * MiB))
        assert code == errno.ESTALE, f"{errno.errorcode.get(code)}\n{m.log()[-3000:]}"
        assert slow.applied >= 1
        # Whatever else is read through this descriptor is the old object's, or an error.
        for offset in range(0, len(old), MiB):
            try:
                got = os.pread(fd, 64 << 10, offset)
            except OSError as e:
                assert e.errno in (errno.ESTALE, errno.EIO), e
            else:
                assert got == old[offset:offset + len(got)], f"WRONG BYTES at {offset}"
    finally:
        os.close(fd)
    # Once the listing is stale (--metadata-ttl), the new object is read, whole and exact.
    time.sleep(1.5)
    proxy.clear()
    assert (m.path / "big.bin").read_bytes() == new
    assert "changed" in m.log()  # the refusal is logged with its reason


# -- names the mount refuses ---------------------------------------------------------------------

def test_bad_names_are_refused_and_nothing_is_stored(seaweed: SeaweedFS, bucket: str,
                                                     mounter: Mounter) -> None:
    m = mounter(server=seaweed, bucket=bucket)
    root = os.fsencode(m.path)
    (m.path / "good").write_bytes(b"good")
    longest = b"n" * 255
    with open(os.path.join(root, longest), "wb") as f:  # exactly 255 bytes is a name
        f.write(b"x")
    refused = {
        b"\xff\xfe-not-utf8": errno.EINVAL,
        b".cachefs.dir": errno.EINVAL,  # a directory manifest's name
        b"good.cachefs-used": errno.EINVAL,  # a last-use marker's name
        b"n" * 256: errno.ENAMETOOLONG,
    }
    for name, code in refused.items():
        path = os.path.join(root, name)
        ops: dict[str, Callable[[], Any]] = {
            "create": lambda p=path: os.close(os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)),
            "mkdir": lambda p=path: os.mkdir(p),
            "symlink": lambda p=path: os.symlink("good", p),
            "rename": lambda p=path: os.rename(os.path.join(root, b"good"), p),
        }
        for op, fn in ops.items():
            assert errno_of(fn) == code, f"{op} {name[:20]!r}: expected {errno.errorcode[code]}"
    assert sorted(os.listdir(root)) == sorted([b"good", longest])
    assert (m.path / "good").read_bytes() == b"good"
    assert keys(seaweed, bucket) == {"good", longest.decode()}
    assert m.control("status")["refused"] == []  # refused up front, nothing queued
    assert_serving(m)


# -- links, special files, rename flags ----------------------------------------------------------

def test_hard_links_and_special_files_are_refused_mknod_makes_a_file(
        seaweed: SeaweedFS, bucket: str, mounter: Mounter,
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = mounter(server=seaweed, bucket=bucket)
    (m.path / "a").write_bytes(b"a")
    assert errno_of(lambda: os.link(m.path / "a", m.path / "hard")) == errno.EPERM
    if os.geteuid() == 0:  # else the kernel refuses a device before cachefs is asked
        assert errno_of(lambda: os.mknod(m.path / "null", stat.S_IFCHR | 0o600,
                                         os.makedev(1, 3))) == errno.EPERM
        assert errno_of(lambda: os.mknod(m.path / "blk", stat.S_IFBLK | 0o600,
                                         os.makedev(7, 0))) == errno.EPERM
    monkeypatch.chdir(m.path)  # a relative name: socket paths are short
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        assert errno_of(lambda: sock.bind("sock")) == errno.EPERM
    # mknod of a regular file makes an empty one, in the store at once (sync mode).
    os.mknod(m.path / "plain", stat.S_IFREG | 0o640)
    assert (m.path / "plain").read_bytes() == b""
    assert stat.S_IMODE(os.stat(m.path / "plain").st_mode) == 0o640
    assert sorted(os.listdir(m.path)) == ["a", "plain"]
    assert keys(seaweed, bucket) == {"a", "plain"}
    body = seaweed.client().get_object(Bucket=bucket, Key="plain")["Body"].read()
    assert body == b""
    assert_serving(m)


def renameat2(src: Path, dst: Path, flags: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    at_fdcwd = -100
    libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                               ctypes.c_uint]
    if libc.renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(src))


def test_rename_exchange_is_refused_with_einval_and_nothing_moves(
        seaweed: SeaweedFS, bucket: str, mounter: Mounter) -> None:
    m = mounter(server=seaweed, bucket=bucket)
    (m.path / "a").write_bytes(b"content of a")
    (m.path / "b").write_bytes(b"content of b")
    assert errno_of(lambda: renameat2(m.path / "a", m.path / "b",
                                      RENAME_EXCHANGE)) == errno.EINVAL
    assert (m.path / "a").read_bytes() == b"content of a"
    assert (m.path / "b").read_bytes() == b"content of b"
    s3 = seaweed.client()
    for key in ("a", "b"):
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == f"content of {key}".encode()
    renameat2(m.path / "a", m.path / "b", 0)  # a plain renameat2 still works
    assert os.listdir(m.path) == ["b"] and (m.path / "b").read_bytes() == b"content of a"
    assert_serving(m)


# -- writing: the early upload of a large file written in order (sync mode) ----------------------

def uploads_of(seaweed: SeaweedFS, bucket: str, key: str) -> list[str]:
    listing = seaweed.client().list_multipart_uploads(Bucket=bucket, Prefix=key)
    return [u["UploadId"] for u in listing.get("Uploads", []) if u["Key"] == key]


def parts_of(seaweed: SeaweedFS, bucket: str, key: str, upload_id: str) -> int:
    listing = seaweed.client().list_parts(Bucket=bucket, Key=key, UploadId=upload_id)
    return len(listing.get("Parts", []))


def write_in_order(fd: int, data: bytes) -> None:
    for i in range(0, len(data), MiB):
        os.write(fd, data[i:i + MiB])


def head(seaweed: SeaweedFS, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        return dict(seaweed.client().head_object(Bucket=bucket, Key=key))
    except ClientError as e:
        if e.response["Error"]["Code"] in ("404", "NoSuchKey"):
            return None
        raise


def test_a_file_written_in_order_is_uploaded_while_it_is_written(
        seaweed: SeaweedFS, bucket: str, mounter: Mounter, tmp_path: Path) -> None:
    m = mounter("--writeback", "sync", server=seaweed, bucket=bucket)
    data = os.urandom(25 * MiB + 10)
    fd = os.open(m.path / "big", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_in_order(fd, data[:24 * MiB])
        # Past 16 MiB: a multipart upload is under way, and its parts are in the store...
        wait_for("an early upload", lambda: len(uploads_of(seaweed, bucket, "big")) == 1)
        [upload] = uploads_of(seaweed, bucket, "big")
        wait_for("its parts", lambda: parts_of(seaweed, bucket, "big", upload) >= 3)
        # ...but no object is: it stays invisible until close.
        assert head(seaweed, bucket, "big") is None
        write_in_order(fd, data[24 * MiB:])
    finally:
        os.close(fd)
    info = head(seaweed, bucket, "big")
    assert info is not None and info["ContentLength"] == len(data)
    assert uploads_of(seaweed, bucket, "big") == []  # that upload was completed, not redone
    # It was uploaded while written, so its SHA-256 is in the manifest, not in its metadata.
    assert "cachefs-sha256" not in info["Metadata"]
    assert info["ETag"].endswith('-4"')  # 3 parts of 8 MiB and the rest
    body = seaweed.client().get_object(Bucket=bucket, Key="big")["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    # Another mount, with an empty cache dir, reads and checks it.
    other = mounter(server=seaweed, bucket=bucket, cache_dir=tmp_path / "other-cache")
    assert hashlib.sha256((other.path / "big").read_bytes()).digest() == \
        hashlib.sha256(data).digest()


def test_an_early_upload_is_dropped_when_the_file_is_written_out_of_order(
        seaweed: SeaweedFS, bucket: str, mounter: Mounter) -> None:
    m = mounter("--writeback", "sync", server=seaweed, bucket=bucket)
    data = bytearray(os.urandom(20 * MiB))
    fd = os.open(m.path / "big", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_in_order(fd, bytes(data))
        wait_for("an early upload", lambda: len(uploads_of(seaweed, bucket, "big")) == 1)
        os.pwrite(fd, b"X" * 100, 1000)  # back into what was sent
        data[1000:1100] = b"X" * 100
        wait_for("the upload's abort", lambda: uploads_of(seaweed, bucket, "big") == [])
        assert head(seaweed, bucket, "big") is None
    finally:
        os.close(fd)
    info = head(seaweed, bucket, "big")
    assert info is not None
    # Uploaded whole at close: its own metadata carries its SHA-256.
    assert info["Metadata"].get("cachefs-sha256") == hashlib.sha256(data).hexdigest()
    body = seaweed.client().get_object(Bucket=bucket, Key="big")["Body"].read()
    assert body == bytes(data)
    assert uploads_of(seaweed, bucket, "big") == []
