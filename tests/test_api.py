"""The Python API: mount, unmount, sync, stats and `mounted()`, on real mounts of a real S3."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import pytest

import cachefs
from cachefs.api import settings_argv
from cachefs.daemon.control import ControlError, NoSuchControl, NotACachefsMount, read_control

from .conftest import wait_gone
from .servers import SeaweedFS


def test_settings_become_flags() -> None:
    assert settings_argv({"store": "s3://b", "read_only": True, "allow_other": False,
                          "cache_size": 1 << 20, "restore_key": ["a/", "b/"],
                          "origin": "dl=http://o/", "cache_dir": Path("/c"),
                          "endpoint": None}) == [
        "--store", "s3://b", "--read-only", "--no-allow-other", "--cache-size", "1048576",
        "--restore-key", "a/", "--restore-key", "b/", "--origin", "dl=http://o/",
        "--cache-dir", "/c"]
    with pytest.raises(TypeError, match="unknown cachefs setting 'cache_sise'"):
        settings_argv({"cache_sise": "1G"})


def test_the_package_exports_the_api() -> None:
    import cachefs.daemon.run

    assert callable(cachefs.stats) and cachefs.stats is cachefs.api.stats
    assert {"mounted", "mount", "unmount", "sync", "stats"} <= set(cachefs.__all__)


def test_not_a_mount(tmp_path: Path) -> None:
    with pytest.raises(cachefs.MountError, match="is not a cachefs mount"):
        cachefs.stats(tmp_path)
    with pytest.raises(NotACachefsMount, match="is not a cachefs mount"):
        read_control(tmp_path, "stats")
    with pytest.raises(ControlError, match="No such file or directory") as missing:
        read_control(tmp_path / "gone", "pid")
    assert type(missing.value) is ControlError and missing.value.os_errno == errno.ENOENT


@pytest.mark.fuse
@pytest.mark.s3
def test_mounted_writes_reads_syncs_and_cleans_up(seaweed: SeaweedFS, bucket: str,
                                                 tmp_path: Path) -> None:
    seaweed.client().put_object(Bucket=bucket, Key="p/in.txt", Body=b"from the bucket")
    with cachefs.mounted(f"s3://{bucket}/p", tmp_path / "mnt", cache_dir=tmp_path / "cache",
                         writeback="async", env=seaweed.env()) as m:
        assert os.path.ismount(m.path) and m.path == tmp_path / "mnt"
        assert (m.path / "in.txt").read_bytes() == b"from the bucket"
        (m.path / "out.txt").write_bytes(b"written")
        report = m.sync()
        assert report.get("failed") in (None, [])
        body = seaweed.client().get_object(Bucket=bucket, Key="p/out.txt")["Body"].read()
        assert body == b"written"
        stats = cachefs.stats(m.path)
        assert stats["counters"]["bytes_to_store"] >= len(b"written")
        assert read_control(m.path, "pid") == m.pid
        with pytest.raises(NoSuchControl, match=r"does not answer user\.cachefs\.nosuch"):
            read_control(m.path, "nosuch")
        pid = m.pid
    assert not os.path.ismount(tmp_path / "mnt")
    assert wait_gone(pid, 1)


@pytest.mark.fuse
@pytest.mark.s3
def test_mounted_cleans_up_when_the_block_raises_even_if_busy(seaweed: SeaweedFS, bucket: str,
                                                              tmp_path: Path) -> None:
    class Boom(Exception):
        pass

    held = None
    with pytest.raises(Boom), cachefs.mounted(f"s3://{bucket}", tmp_path / "mnt",
                                              cache_dir=tmp_path / "cache",
                                              env=seaweed.env()) as m:
        pid = m.pid
        (m.path / "kept.txt").write_bytes(b"closed before the error")
        held = open(m.path / "kept.txt", "rb")  # noqa: SIM115 - kept open: umount refuses
        raise Boom
    assert held is not None
    with contextlib.suppress(OSError):  # ENOTCONN: the daemon it talked to is gone
        held.close()
    assert not os.path.ismount(tmp_path / "mnt")
    assert wait_gone(pid, 1)
    body = seaweed.client().get_object(Bucket=bucket, Key="kept.txt")["Body"].read()
    assert body == b"closed before the error"


@pytest.mark.fuse
@pytest.mark.s3
def test_mount_errors_carry_the_exit_code(seaweed: SeaweedFS, bucket: str,
                                          tmp_path: Path) -> None:
    with pytest.raises(cachefs.CacheMiss, match="no key 'go-mod/abc'") as miss:
        cachefs.mount(f"s3://{bucket}", tmp_path / "a", subtree="go-mod/abc",
                      restore_key=["go-mod/"], cache_dir=tmp_path / "c1", env=seaweed.env())
    assert miss.value.code == 1
    with pytest.raises(cachefs.MountError, match="not a size") as bad:
        cachefs.mount(f"s3://{bucket}", tmp_path / "b", cache_size="lots")
    assert bad.value.code == 2 and "\n" not in str(bad.value)
    m = cachefs.mount(f"s3://{bucket}", tmp_path / "c", cache_dir=tmp_path / "c3",
                      env=seaweed.env())
    try:
        with pytest.raises(cachefs.MountError, match="already a mount point"):
            cachefs.mount(f"s3://{bucket}", m.path, cache_dir=tmp_path / "c4",
                          env=seaweed.env())
    finally:
        m.unmount()
    assert not os.path.ismount(m.path) and wait_gone(m.pid, 1)
