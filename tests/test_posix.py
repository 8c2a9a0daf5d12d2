"""POSIX answers on a read-write mount: link counts, times, same-mount readers, user xattrs,
RLIMIT_FSIZE (issue 14). Each test ends by checking the daemon is still alive and serving."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from cachefs.fuse.xattrs import BINARY, decode_value, encode_value

from .conftest import Mount, Mounter, cli
from .servers import SeaweedFS

pytestmark = [pytest.mark.fuse, pytest.mark.s3]

NOW = (1 << 30) - 1  # UTIME_NOW
OMIT = (1 << 30) - 2  # UTIME_OMIT


def assert_serving(m: Mount) -> None:
    """The daemon survived: its process is alive and the mount answers a write and a read."""
    assert m.pid is not None
    os.kill(m.pid, 0)
    probe = m.path / ".alive-probe"
    probe.write_bytes(b"alive")
    assert probe.read_bytes() == b"alive"
    probe.unlink()
    assert m.control("pid") == m.pid


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def utimensat(path: os.PathLike[str] | str, atime: tuple[int, int],
              mtime: tuple[int, int]) -> None:
    """utimensat(2) itself, for UTIME_NOW and UTIME_OMIT (os.utime cannot say them)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p,
                               ctypes.POINTER(_Timespec), ctypes.c_int]
    times = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    at_fdcwd = -100
    if libc.utimensat(at_fdcwd, os.fsencode(path), times, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(path))


# -- 1. link counts ------------------------------------------------------------------------------

def test_fstat_of_an_unlinked_open_file_reports_no_links(seaweed: SeaweedFS, bucket: str,
                                                          mounter: Mounter) -> None:
    m = mounter(server=seaweed, bucket=bucket)
    (m.path / "stored").write_bytes(b"kept in the store")
    assert os.stat(m.path / "stored").st_nlink == 1
    fd_stored = os.open(m.path / "stored", os.O_RDONLY)
    fd_new = os.open(m.path / "new", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd_new, b"never closed before unlink")
        os.unlink(m.path / "stored")
        os.unlink(m.path / "new")
        assert os.fstat(fd_stored).st_nlink == 0
        assert os.fstat(fd_new).st_nlink == 0
        assert os.pread(fd_stored, 100, 0) == b"kept in the store"  # still readable
        assert os.pread(fd_new, 100, 0) == b"never closed before unlink"
    finally:
        os.close(fd_stored)
        os.close(fd_new)
    # Replaced by a rename: the old file's open descriptor has no name left either.
    (m.path / "a").write_bytes(b"a")
    (m.path / "b").write_bytes(b"b")
    fd = os.open(m.path / "b", os.O_RDONLY)
    try:
        os.rename(m.path / "a", m.path / "b")
        assert os.fstat(fd).st_nlink == 0
        assert os.stat(m.path / "b").st_nlink == 1
    finally:
        os.close(fd)
    assert_serving(m)


# -- 2. times ------------------------------------------------------------------------------------

def test_explicit_atime_is_kept(seaweed: SeaweedFS, bucket: str, mounter: Mounter) -> None:
    m = mounter(server=seaweed, bucket=bucket)
    f = m.path / "f"
    f.write_bytes(b"x" * 100)
    os.utime(f, ns=(1_500_000_000_123_456_789, 1_600_000_000_987_654_321))
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_500_000_000_123_456_789,
                                                1_600_000_000_987_654_321)
    f.read_bytes()  # noatime: a read does not move it
    assert os.stat(f).st_atime_ns == 1_500_000_000_123_456_789
    assert cli("sync", str(m.path), env=m.env).returncode == 0
    m.umount()
    fresh = mounter(server=seaweed, bucket=bucket)
    st = os.stat(fresh.path / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_500_000_000_123_456_789,
                                                1_600_000_000_987_654_321)
    assert_serving(fresh)


def test_futimens_on_an_open_descriptor(seaweed: SeaweedFS, bucket: str,
                                        mounter: Mounter) -> None:
    m = mounter(server=seaweed, bucket=bucket)
    (m.path / "stored").write_bytes(b"stored")
    with open(m.path / "stored", "rb") as f:  # read-only descriptor: times may still change
        os.utime(f.fileno(), ns=(1_000_000_000, 2_000_000_000))
        st = os.fstat(f.fileno())
        assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000, 2_000_000_000)
    with open(m.path / "written", "wb") as f:  # while it is being written
        f.write(b"data")
        f.flush()
        os.utime(f.fileno(), ns=(3_000_000_000, 4_000_000_000))
        st = os.fstat(f.fileno())
        assert (st.st_atime_ns, st.st_mtime_ns) == (3_000_000_000, 4_000_000_000)
    with open(m.path / "stored", "r+b") as f:
        os.utime(f.fileno())  # futimens(fd, NULL): both now
        st = os.fstat(f.fileno())
        assert st.st_atime_ns == st.st_mtime_ns and st.st_mtime_ns > 4_000_000_000
    assert (m.path / "written").read_bytes() == b"data"
    # An unlinked file still open: its times change, and closing it stores nothing (its key
    # is gone). This is the call that hung the reporter's run: close() retried an upload to
    # the empty key (the bucket itself), then failed with EIO and left it queued forever.
    fd = os.open(m.path / "gone", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"unlinked")
        os.unlink(m.path / "gone")
        os.utime(fd, ns=(5_000_000_000, 6_000_000_000))
        st = os.fstat(fd)
        assert (st.st_atime_ns, st.st_mtime_ns, st.st_nlink) == (5_000_000_000, 6_000_000_000, 0)
    finally:
        os.close(fd)
    assert m.control("status")["pending"] == []
    assert cli("sync", str(m.path), env=m.env).returncode == 0
    assert_serving(m)


def test_utime_now_and_omit(seaweed: SeaweedFS, bucket: str, mounter: Mounter) -> None:
    m = mounter(server=seaweed, bucket=bucket)
    f = m.path / "f"
    f.write_bytes(b"x")
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))
    utimensat(f, (5, OMIT), (0, OMIT))  # both omitted: nothing changes
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000, 2_000_000_000)
    utimensat(f, (7, 0), (0, OMIT))  # only atime
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (7_000_000_000, 2_000_000_000)
    utimensat(f, (0, OMIT), (9, 0))  # only mtime: atime stays
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (7_000_000_000, 9_000_000_000)
    utimensat(f, (0, NOW), (0, OMIT))  # atime now, mtime stays
    st = os.stat(f)
    assert st.st_atime_ns > 1_700_000_000 * 10**9 and st.st_mtime_ns == 9_000_000_000
    utimensat(f, (0, OMIT), (0, NOW))
    st2 = os.stat(f)
    assert st2.st_atime_ns == st.st_atime_ns and st2.st_mtime_ns > 1_700_000_000 * 10**9
    assert_serving(m)


# -- 3. same-mount readers of a file being written -----------------------------------------------

def test_reader_opened_while_a_new_file_is_written_sees_its_bytes(
        seaweed: SeaweedFS, bucket: str, mounter: Mounter) -> None:
    m = mounter(server=seaweed, bucket=bucket)
    with open(m.path / "log", "wb", buffering=0) as writer:
        writer.write(b"line 1\n")
        with open(m.path / "log", "rb", buffering=0) as reader:  # tail -f
            assert reader.read() == b"line 1\n"
            writer.write(b"line 2\n")
            assert reader.read() == b"line 2\n"
            writer.write(b"line 3\n")
        # The writer closes while a reader still reads: it goes on to the stored bytes.
        reader = open(m.path / "log", "rb", buffering=0)  # noqa: SIM115
    try:
        assert reader.read() == b"line 1\nline 2\nline 3\n"
        with open(m.path / "log", "ab", buffering=0) as appender:  # a logger reopening it
            appender.write(b"line 4\n")
            assert reader.read() == b"line 4\n"  # tail -f reads on
        with open(m.path / "log", "wb", buffering=0) as rewriter:
            rewriter.write(b"another version")
            reader.seek(0)  # a rewrite from empty is another version: not mixed in
            assert reader.read() == b"line 1\nline 2\nline 3\nline 4\n"
    finally:
        reader.close()
    assert (m.path / "log").read_bytes() == b"another version"
    assert_serving(m)


def test_reader_opened_while_a_file_is_rewritten_in_place_sees_the_new_bytes(
        seaweed: SeaweedFS, bucket: str, mounter: Mounter) -> None:
    m = mounter(server=seaweed, bucket=bucket)
    (m.path / "k").write_bytes(b"old" * 1000)
    with open(m.path / "k", "r+b", buffering=0) as writer:
        writer.seek(3)
        writer.write(b"NEW")
        with open(m.path / "k", "rb", buffering=0) as reader:
            assert reader.read(9) == b"oldNEWold"
            writer.seek(0, os.SEEK_END)
            writer.write(b"tail")
            reader.seek(3000)
            assert reader.read() == b"tail"
            # and a reader from another process (a build step reading what was just written)
            out = subprocess.run(["cat", m.path / "k"], capture_output=True, check=True).stdout
            assert out == b"oldNEW" + b"old" * 998 + b"tail"
        with open(m.path / "k", "rb") as late:  # still open for writing: the current bytes
            writer.truncate(6)
            assert late.read() == b"oldNEW"
    assert (m.path / "k").read_bytes() == b"oldNEW"
    assert_serving(m)


def test_opening_read_write_copies_nothing_until_the_first_write(
        seaweed: SeaweedFS, bucket: str, mounter: Mounter) -> None:
    m = mounter(server=seaweed, bucket=bucket)
    payload = os.urandom(3 << 20)
    (m.path / "db").write_bytes(payload)
    etag = seaweed.client().head_object(Bucket=bucket, Key="db")["ETag"]

    def staged() -> list[int]:
        return [p.stat().st_size for p in (m.cache_dir / "tmp").glob("stage.*")]

    with open(m.path / "db", "r+b", buffering=0) as f:  # SQLite opens its database so
        assert staged() == [0]
        assert f.read(10) == payload[:10]
        f.seek(len(payload) - 5)
        assert f.read() == payload[-5:]
        with open(m.path / "db", "rb") as reader:
            assert reader.read() == payload
    assert seaweed.client().head_object(Bucket=bucket, Key="db")["ETag"] == etag  # not stored
    with open(m.path / "db", "r+b", buffering=0) as f:
        f.seek(1 << 20)
        f.write(b"X")
        assert staged() == [len(payload)]  # copied at the first write
        f.seek(0)
        assert f.read() == payload[:1 << 20] + b"X" + payload[(1 << 20) + 1:]
    assert (m.path / "db").read_bytes() == payload[:1 << 20] + b"X" + payload[(1 << 20) + 1:]
    with open(m.path / "db", "r+b") as f:
        f.truncate(100)
    assert (m.path / "db").read_bytes() == payload[:100]
    assert_serving(m)


# -- 4. user extended attributes -----------------------------------------------------------------

def test_user_xattrs_on_files(seaweed: SeaweedFS, bucket: str, mounter: Mounter) -> None:
    m = mounter(server=seaweed, bucket=bucket)
    f = m.path / "f"
    f.write_bytes(b"content")
    run = subprocess.run
    assert run(["setfattr", "-n", "user.note", "-v", "x", f], capture_output=True).returncode == 0
    got = run(["getfattr", "-n", "user.note", "--only-values", f], capture_output=True)
    assert got.returncode == 0 and got.stdout == b"x", got.stderr
    dump = run(["getfattr", "-d", f], capture_output=True, text=True)
    assert dump.returncode == 0 and 'user.note="x"' in dump.stdout, dump.stderr
    assert "user.note" in os.listxattr(f)
    os.setxattr(f, "user.bin", b"\x00\xff\x80binary")  # values are bytes, not only text
    assert os.getxattr(f, "user.bin") == b"\x00\xff\x80binary"
    os.setxattr(f, "user.empty", b"")
    assert os.getxattr(f, "user.empty") == b""
    with pytest.raises(OSError) as info:
        os.setxattr(f, "user.note", b"y", os.XATTR_CREATE)
    assert info.value.errno == errno.EEXIST
    with pytest.raises(OSError) as info:
        os.setxattr(f, "user.other", b"y", os.XATTR_REPLACE)
    assert info.value.errno == errno.ENODATA
    with pytest.raises(OSError) as info:
        os.getxattr(f, "user.missing")
    assert info.value.errno == errno.ENODATA
    with pytest.raises(OSError) as info:
        os.removexattr(f, "user.missing")
    assert info.value.errno == errno.ENODATA
    with pytest.raises(OSError) as info:
        os.setxattr(f, "user.big", b"v" * ((16 << 10) + 1))
    assert info.value.errno == errno.E2BIG
    os.setxattr(f, "user.max", b"v" * (16 << 10))  # exactly the limit is fine
    with pytest.raises(OSError) as info:
        os.setxattr(f, "user.more", b"v" * (16 << 10))  # past 32 KiB for the file
    assert info.value.errno == errno.ENOSPC
    os.removexattr(f, "user.max")
    os.setxattr(f, "user.more", b"v" * 100)
    with pytest.raises(OSError) as info:
        os.setxattr(f, b"user.\xff", b"v")
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        os.setxattr(f, "trusted.x", b"v")
    assert info.value.errno in (errno.EPERM, errno.EOPNOTSUPP)
    # cachefs's own names keep their meaning
    assert os.getxattr(f, "user.cachefs.key") == b"f"
    with pytest.raises(OSError) as info:
        os.setxattr(f, "user.cachefs.key", b"other")
    assert info.value.errno == errno.EINVAL
    # while the file is open for writing, and after a rename
    with open(m.path / "g", "wb") as g:
        g.write(b"g")
        os.setxattr(m.path / "g", "user.while-open", b"1")
    os.rename(m.path / "g", m.path / "h")
    assert os.getxattr(m.path / "h", "user.while-open") == b"1"
    os.removexattr(f, "user.note")
    assert "user.note" not in os.listxattr(f)
    assert cli("sync", str(m.path), env=m.env).returncode == 0
    m.umount()
    fresh = mounter(server=seaweed, bucket=bucket)
    names = os.listxattr(fresh.path / "f")
    assert {"user.bin", "user.empty", "user.more"} <= set(names) and "user.note" not in names
    assert os.getxattr(fresh.path / "f", "user.bin") == b"\x00\xff\x80binary"
    assert os.getxattr(fresh.path / "f", "user.empty") == b""
    assert os.getxattr(fresh.path / "h", "user.while-open") == b"1"
    assert_serving(fresh)


def test_xattr_values_read_back_exactly() -> None:
    for value in (b"", b"text", "\u00e9t\u00e9".encode(), b"\xff\x00", BINARY.encode(),
                  BINARY.encode() + b"not base64", b"\x00plain"):
        stored = encode_value(value)
        stored.encode("utf-8")  # manifests and the cache dir hold it as JSON text
        assert decode_value(stored) == value


# -- 5. RLIMIT_FSIZE -----------------------------------------------------------------------------

def test_write_past_rlimit_fsize_fails_with_efbig(seaweed: SeaweedFS, bucket: str,
                                                  mounter: Mounter) -> None:
    m = mounter(server=seaweed, bucket=bucket)
    script = textwrap.dedent("""
        import errno, os, resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        assert os.write(fd, b"a" * 4096) == 4096
        try:
            os.write(fd, b"b")
        except OSError as e:
            print(errno.errorcode[e.errno])
        else:
            print("written")
        try:
            os.pwrite(fd, b"c", 10_000)
        except OSError as e:
            print(errno.errorcode[e.errno])
        os.close(fd)
    """)
    out = subprocess.run([sys.executable, "-c", script, m.path / "capped"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["EFBIG", "EFBIG"]
    assert os.path.getsize(m.path / "capped") == 4096
    # With the default action (Python itself ignores SIGXFSZ) the writer dies of SIGXFSZ.
    killed = subprocess.run([sys.executable, "-c", script.replace(
        "signal.SIG_IGN", "signal.SIG_DFL"), m.path / "capped2"],
        capture_output=True, text=True, timeout=60)
    assert killed.returncode == -signal.SIGXFSZ, killed.stderr
    assert_serving(m)
