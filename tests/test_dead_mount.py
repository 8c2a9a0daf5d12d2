"""Dead mounts: what `cachefs umount` and `cachefs mount` do with a mount point whose daemon died
(kill -9, OOM), which the kernel answers with "Transport endpoint is not connected"."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import cachefs
from cachefs.daemon.control import DeadMount, read_control

from .conftest import Mount, Mounter, cli, mounted_at, wait_gone
from .faultproxy import Fault, FaultProxy
from .servers import SeaweedFS

pytestmark = [pytest.mark.fuse]

#: the exit codes the CLI documents for these cases
PENDING, NOT_OURS = 3, 4


@pytest.fixture
def proxy(seaweed: SeaweedFS) -> Iterator[FaultProxy]:
    with FaultProxy(seaweed.endpoint) as p:
        yield p


def assert_dead(path: Path) -> None:
    with pytest.raises(OSError) as info:
        os.statvfs(path)  # stat() may still be answered from the kernel's attribute cache
    assert info.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    with pytest.raises(OSError) as info:
        os.listdir(path)
    assert info.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    assert mounted_at(path)


def kill_9(m: Mount) -> None:
    """Crash the daemon right after a stat() of the root, so the kernel still holds its
    attributes (os.path.ismount then says True, although nothing answers)."""
    os.stat(m.path)
    m.kill(clear=False)
    assert_dead(m.path)


def crash_with_a_pending_write(mounter: Mounter, seaweed: SeaweedFS, bucket: str,
                               proxy: FaultProxy, payload: bytes) -> Mount:
    """An async mount whose uploads all fail, a file closed into it (journaled, not stored),
    then kill -9: the dead mount point is left behind."""
    proxy.add(Fault(method="PUT", status=503, code="SlowDown"))
    m = mounter("--writeback", "async", "--timeout", "3", server=seaweed, bucket=bucket,
                env={"CACHEFS_ENDPOINT": proxy.url})
    os.mkdir(m.path / "out")
    (m.path / "out" / "precious.bin").write_bytes(payload)
    assert "out/precious.bin" in [p["key"] for p in m.control("status")["pending"]]
    kill_9(m)
    return m


@pytest.mark.s3
def test_umount_clears_a_dead_mount_and_names_pending_writes(
        seaweed: SeaweedFS, bucket: str, proxy: FaultProxy, mounter: Mounter) -> None:
    m = crash_with_a_pending_write(mounter, seaweed, bucket, proxy, b"closed before the crash")
    result = cli("umount", str(m.path), env=m.env)
    assert result.returncode == PENDING, result.stdout + result.stderr
    assert "out/precious.bin" in result.stderr and "dead" in result.stderr
    assert not mounted_at(m.path)
    assert os.listdir(m.path) == []  # the empty directory under the mount, usable again
    # The journal was kept: the next mount with the same cache dir stores the file.
    proxy.clear()
    m.start()
    assert cli("sync", str(m.path), env=m.env).returncode == 0
    body = seaweed.client().get_object(Bucket=bucket, Key="out/precious.bin")["Body"].read()
    assert body == b"closed before the crash"
    m.umount()


@pytest.mark.s3
def test_umount_of_a_dead_mount_with_nothing_pending_exits_0(
        seaweed: SeaweedFS, bucket: str, mounter: Mounter) -> None:
    m = mounter(server=seaweed, bucket=bucket)  # sync write-back: close() waits for the store
    (m.path / "stored.txt").write_bytes(b"in the store before the crash")
    kill_9(m)
    status = cli("status", str(m.path), env=m.env)
    assert status.returncode == 2 and f"`cachefs umount {m.path}`" in status.stderr
    with pytest.raises(DeadMount) as dead:  # one reader: the CLI and the API say the same
        read_control(m.path, "stats")
    assert str(dead.value) in status.stderr and dead.value.os_errno == errno.ENOTCONN
    with pytest.raises(cachefs.MountError, match="its daemon is gone"):
        cachefs.stats(m.path)
    result = cli("umount", str(m.path), env=m.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nothing was pending" in result.stdout
    assert not mounted_at(m.path) and os.listdir(m.path) == []
    m.start()
    assert (m.path / "stored.txt").read_bytes() == b"in the store before the crash"
    m.umount()


def records() -> list[Path]:
    return sorted((Path(os.environ["XDG_STATE_HOME"]) / "cachefs" / "mounts").glob("*.json"))


def test_mount_record_kept_while_mounted_and_dead_mount_without_one(mounter: Mounter) -> None:
    m = mounter()  # the embedded default store: a local directory
    assert len(records()) == 1 and str(m.path) in records()[0].read_text()
    m.umount()
    assert records() == []  # removed by a clean unmount
    m.start()
    kill_9(m)
    records()[0].unlink()  # e.g. the mount was made by another user
    result = cli("umount", str(m.path), env=m.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "unknown" in result.stderr and not mounted_at(m.path)


@pytest.mark.s3
def test_clean_umount_leaving_changes_pending_exits_3(
        seaweed: SeaweedFS, bucket: str, proxy: FaultProxy, mounter: Mounter) -> None:
    proxy.add(Fault(method="PUT", status=503, code="SlowDown"))
    m = mounter("--writeback", "async", "--timeout", "3", server=seaweed, bucket=bucket,
                env={"CACHEFS_ENDPOINT": proxy.url})
    (m.path / "later.txt").write_bytes(b"stored by the next mount")
    result = cli("umount", str(m.path), env=m.env)
    assert result.returncode == PENDING, result.stdout + result.stderr
    assert "not in the store yet" in result.stderr and not mounted_at(m.path)
    m.pid = None
    proxy.clear()
    m.start()
    assert cli("sync", str(m.path), env=m.env).returncode == 0
    body = seaweed.client().get_object(Bucket=bucket, Key="later.txt")["Body"].read()
    assert body == b"stored by the next mount"
    m.umount()


@pytest.mark.s3
def test_mount_on_a_dead_mount_point_clears_it_and_replays_the_journal(
        seaweed: SeaweedFS, bucket: str, proxy: FaultProxy, mounter: Mounter) -> None:
    payload = os.urandom(3 << 20)
    m = crash_with_a_pending_write(mounter, seaweed, bucket, proxy, payload)
    proxy.clear()
    result = m.start()
    assert "dead" in result.stderr and "cleared" in result.stderr, result.stderr
    assert cli("sync", str(m.path), env=m.env).returncode == 0  # the journal is replayed
    assert (m.path / "out" / "precious.bin").read_bytes() == payload
    body = seaweed.client().get_object(Bucket=bucket, Key="out/precious.bin")["Body"].read()
    assert body == payload
    m.umount()


@pytest.mark.s3
def test_files_only_in_the_journal_are_shown_after_the_crash(
        seaweed: SeaweedFS, bucket: str, proxy: FaultProxy, mounter: Mounter) -> None:
    """Closed before the crash, not stored yet, and the store still refuses uploads: the next
    mount shows the file (from the journal and the blob tier) before it is uploaded."""
    payload = os.urandom(1 << 20)
    m = crash_with_a_pending_write(mounter, seaweed, bucket, proxy, payload)
    m.start()  # uploads still fail
    assert os.listdir(m.path) == ["out"]
    assert os.listdir(m.path / "out") == ["precious.bin"]
    assert (m.path / "out" / "precious.bin").read_bytes() == payload
    assert "out/precious.bin" in [p["key"] for p in m.control("status")["pending"]]
    proxy.clear()
    assert cli("sync", str(m.path), env=m.env).returncode == 0
    body = seaweed.client().get_object(Bucket=bucket, Key="out/precious.bin")["Body"].read()
    assert body == payload
    m.umount()


FOREIGN_FS = """
import sys, pyfuse3, trio
pyfuse3.init(pyfuse3.Operations(), sys.argv[1], {"fsname=otherfs", "subtype=otherfs"})
trio.run(pyfuse3.main)
"""


@contextlib.contextmanager
def dead_foreign_mount(path: Path) -> Iterator[None]:
    """A FUSE file system that is not cachefs, mounted at ``path`` and then killed."""
    path.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", FOREIGN_FS, str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not mounted_at(path):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the foreign file system did not mount"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert_dead(path)
        yield
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            wait_gone(proc.pid)
            proc.wait(10)
        if proc.stderr:
            proc.stderr.close()
        if mounted_at(path):
            subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)


def test_a_dead_mount_of_another_file_system_is_refused(tmp_path: Path) -> None:
    mnt = tmp_path / "other"
    with dead_foreign_mount(mnt):
        for args in (["umount", str(mnt)],
                     ["mount", "--cache-dir", str(tmp_path / "cache"), str(mnt)]):
            result = cli(*args)
            assert result.returncode == NOT_OURS, (args, result.stdout, result.stderr)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1, result.stderr
            assert f"`fusermount3 -u -z {mnt}`" in lines[0] and "otherfs" in lines[0]
            assert_dead(mnt)  # left alone: it is not ours to clear
