"""The mount(8) helper: option mapping, and real `mount -t fuse.cachefs` / fstab mounts."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachefs.cli.mounthelper import Invocation, UsageError, mount_argv, parse_argv, run

from .conftest import cli, wait_gone
from .servers import KEY_ID, SECRET, SeaweedFS

#: util-linux looks for mount.<type> only in /sbin, /sbin/fs.d and /sbin/fs, never on PATH
HELPER_LINK = Path("/sbin/mount.fuse.cachefs")
HELPER = Path(sys.executable).parent / "mount.fuse.cachefs"
#: where mount.fuse3 finds ``cachefs`` for a ``fuse.cachefs`` mount with no /sbin helper: its
#: PATH is reset to the system directories, of which this is the first
SYSTEM_CACHEFS = Path("/usr/local/sbin/cachefs")
PROGRAM = Path(sys.executable).parent / "cachefs"
HELPER_LOCK = "/tmp/cachefs-test-mount-helper.lock"


def argv_for(options: str, source: str = "s3://b/p") -> list[str]:
    return mount_argv(Invocation(source, "/mnt", parse_argv(["x", "y", "-o", options]).options))[0]


def test_options_map_to_flags() -> None:
    argv = argv_for("rw,cache_dir=/var/cache/c,cache_size=20G,ro,_netdev,nofail,"
                    "x-systemd.automount,comment=hi,restore_key=a,restore_key=b,allow_other,"
                    "metadata-ttl=5,config=/etc/cachefs.toml")
    assert argv == ["mount", "--cache-dir", "/var/cache/c", "--cache-size", "20G",
                    "--read-only", "--restore-key", "a", "--restore-key", "b", "--allow-other",
                    "--metadata-ttl", "5", "--store", "s3://b/p", "--config",
                    "/etc/cachefs.toml", "/mnt"]
    assert argv_for("read_only=false,allow_other=yes") == [
        "mount", "--no-read-only", "--allow-other", "--store", "s3://b/p", "/mnt"]
    assert argv_for("endpoint=http://h:1", source="cachefs") == [
        "mount", "--endpoint", "http://h:1", "/mnt"]


def test_mount_passes_flags_anywhere_and_quotes_keep_commas() -> None:
    inv = parse_argv(["s3://b", "/mnt", "-n", "-v", "-o", "rw", "-o",
                      'origin="dl=http://o/a,b",ro', "-t", "fuse.cachefs"])
    assert inv.verbose and not inv.fake and inv.options == ["rw", "origin=dl=http://o/a,b", "ro"]
    assert parse_argv(["a", "b", "-sfv"]).sloppy


@pytest.mark.parametrize("argv, message", [
    (["s3://b", "/m", "-o", "bogus=1"], "unknown option 'bogus=1'"),
    (["s3://b", "/m", "-o", "cache_size"], "option cache_size needs a value"),
    (["s3://b", "/m", "-o", "ro=perhaps"], "unknown option 'ro=perhaps'"),
    (["s3://b", "/m", "-o", "read_only=perhaps"], "option read_only: not a boolean"),
    (["/dev/sda1", "/m"], "is not a store URL"),
    (["s3://b", "/m", "-o", "store=s3://c"], "the store is given twice"),
    (["s3://b"], "usage: mount.fuse.cachefs SOURCE MOUNTPOINT"),
    (["s3://b", "/m", "-x"], "unknown flag -x"),
    (["s3://b", "/m", "-N", "/proc/1/ns/mnt"], "namespace"),
])
def test_mistakes_are_one_line_and_exit_2(argv: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("mount.fuse.cachefs: ")


def test_sloppy_ignores_unknown_options_and_fake_only_checks() -> None:
    with pytest.raises(UsageError):
        argv_for("bogus")
    inv = parse_argv(["s3://b", "/m", "-s", "-o", "bogus,cache_size=1G"])
    assert mount_argv(inv)[1] == ["bogus"]
    assert run(["s3://b", "/nonexistent", "-f", "-o", "cache_size=1G"]) == 0
    assert run(["s3://b", "/nonexistent", "-f", "-o", "cache_size=lots"]) == 2


def test_the_helper_answers_to_either_name(tmp_path: Path) -> None:
    for name in ("mount.fuse.cachefs", "mount.cachefs"):
        (tmp_path / name).symlink_to(HELPER)
        fake = subprocess.run([str(tmp_path / name), "s3://b/p", "/nonexistent", "-f", "-v",
                               "-o", "rw,cache_size=1G,_netdev"], capture_output=True, text=True)
        assert fake.returncode == 0, fake.stderr
        assert "cachefs mount --cache-size 1G --store s3://b/p /nonexistent" in fake.stderr


@pytest.fixture
def helper_on_mount_path() -> Iterator[Path]:
    """The console script linked where util-linux looks, for this test only; a lock keeps
    parallel test runs from removing it under each other."""
    assert HELPER.exists(), f"{HELPER} is missing: pip install -e . installs it"
    with open(HELPER_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        created = False
        if HELPER_LINK.is_symlink() or HELPER_LINK.exists():
            assert HELPER_LINK.resolve() == HELPER.resolve(), \
                f"{HELPER_LINK} is another program; not replacing it"
        else:
            HELPER_LINK.symlink_to(HELPER)
            created = True
        try:
            yield HELPER_LINK
        finally:
            if created:
                HELPER_LINK.unlink()


def mount_entry(path: Path) -> tuple[str, str, str] | None:
    """(source, type, options) of the mount at ``path`` in /proc/self/mounts."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        source, target, fstype, options = line.split()[:4]
        if target == str(path):
            return source, fstype, options
    return None


@contextlib.contextmanager
def cleanup_mount(path: Path) -> Iterator[None]:
    try:
        yield
    finally:
        pid = None
        with contextlib.suppress(OSError, ValueError):
            pid = int(os.getxattr(path, "user.cachefs.pid"))
        if os.path.ismount(path):
            subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)
        if pid is not None and not wait_gone(pid, 10):
            os.kill(pid, 9)


@pytest.mark.fuse
@pytest.mark.s3
def test_mount_t_fuse_cachefs(helper_on_mount_path: Path, seaweed: SeaweedFS, bucket: str,
                              tmp_path: Path) -> None:
    seaweed.client().put_object(Bucket=bucket, Key="data/hello.txt", Body=b"hello\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    options = (f"cache_dir={tmp_path / 'cache'},cache_size=20M,endpoint={seaweed.endpoint},"
               "ro,_netdev,nofail,x-systemd.automount,noauto,metadata_ttl=5")
    env = {**os.environ, "CACHEFS_S3_KEY_ID": KEY_ID, "CACHEFS_S3_SECRET": SECRET}
    with cleanup_mount(mnt):
        result = subprocess.run(["mount", "-t", "fuse.cachefs", f"s3://{bucket}/data", str(mnt),
                                 "-o", options], env=env, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "" and result.stderr == ""  # silent, like mount(8)
        entry = mount_entry(mnt)
        assert entry is not None
        source, fstype, flags = entry
        assert (source, fstype) == (f"s3://{bucket}/data", "fuse.cachefs")
        assert "ro" in flags.split(",")
        assert (mnt / "hello.txt").read_bytes() == b"hello\n"
        with pytest.raises(OSError) as info:
            (mnt / "new").write_text("x")
        assert info.value.errno == errno.EROFS
        # Plain umount(8), as systemd does for a .mount unit: the daemon finishes and exits.
        pid = int(os.getxattr(mnt, "user.cachefs.pid"))
        assert subprocess.run(["umount", str(mnt)]).returncode == 0
        assert wait_gone(pid, 30)


@pytest.mark.fuse
@pytest.mark.s3
def test_fstab_line_with_credential_files(helper_on_mount_path: Path, seaweed: SeaweedFS,
                                          bucket: str, tmp_path: Path) -> None:
    """The example line from deploy/fstab.example, pointed at the test server; fstab cannot
    carry environment variables, so the credentials come from key_file/secret_file."""
    root = Path(__file__).resolve().parent.parent
    example = next(line for line in (root / "deploy/fstab.example").read_text().splitlines()
                   if line.startswith("s3://"))
    (tmp_path / "key").write_text(KEY_ID + "\n")
    (tmp_path / "secret").write_text(SECRET + "\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    source, _target, fstype, options, *rest = example.split()
    assert fstype == "fuse.cachefs" and rest == ["0", "0"]
    options = (options.replace("/etc/cachefs/key-id", str(tmp_path / "key"))
               .replace("/etc/cachefs/secret", str(tmp_path / "secret"))
               .replace("/var/cache/cachefs/ci", str(tmp_path / "cache"))
               .replace("https://s3.example.com", seaweed.endpoint))
    source = f"s3://{bucket}/ci"
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{source} {mnt} {fstype} {options} 0 0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEFS_")}
    with cleanup_mount(mnt):
        result = subprocess.run(["mount", "--fstab", str(fstab), str(mnt)], env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        entry = mount_entry(mnt)
        assert entry is not None and entry[:2] == (source, "fuse.cachefs")
        (mnt / "artifact.bin").write_bytes(b"built")
        assert cli("umount", str(mnt)).returncode == 0
    body = seaweed.client().get_object(Bucket=bucket, Key="ci/artifact.bin")["Body"].read()
    assert body == b"built"


@pytest.mark.fuse
def test_unknown_option_through_mount_exits_2(helper_on_mount_path: Path,
                                              tmp_path: Path) -> None:
    result = subprocess.run(["mount", "-t", "fuse.cachefs", "s3://b", str(tmp_path), "-o",
                             "cache_size=1G,frobnicate"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown option 'frobnicate'" in result.stderr
    assert not os.path.ismount(tmp_path)


@pytest.fixture
def cachefs_on_system_path() -> Iterator[Path]:
    """Only ``cachefs`` where mount.fuse3 looks, no /sbin/mount.fuse.cachefs, for this test
    only (the same lock as the helper fixture keeps them apart)."""
    assert PROGRAM.exists(), f"{PROGRAM} is missing: pip install -e . installs it"
    with open(HELPER_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert not (HELPER_LINK.is_symlink() or HELPER_LINK.exists()), \
            f"{HELPER_LINK} exists: mount(8) would run it instead of mount.fuse3"
        assert not (SYSTEM_CACHEFS.is_symlink() or SYSTEM_CACHEFS.exists()), \
            f"{SYSTEM_CACHEFS} is another program; not replacing it"
        SYSTEM_CACHEFS.symlink_to(PROGRAM)
        try:
            yield SYSTEM_CACHEFS
        finally:
            SYSTEM_CACHEFS.unlink()


def test_cachefs_takes_the_mount_fuse3_form(capsys: pytest.CaptureFixture[str]) -> None:
    """``cachefs SOURCE MNT -o OPTS`` (what mount.fuse3 runs) maps options like the helper,
    including the ``dev,suid`` mount.fuse3 adds as root; a mistake is one line, exit 2."""
    from cachefs.cli.entry import main

    assert main(["s3://b/p", "/nonexistent", "-f", "-v", "-o", "rw,cache_size=1G,dev,suid"]) == 0
    err = capsys.readouterr().err
    assert "cachefs: cachefs mount --cache-size 1G --store s3://b/p /nonexistent" in err
    assert main(["s3://b/p", "/m", "-o", "cache_size=1G,frobnicate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cachefs: unknown option 'frobnicate'") and err.count("\n") == 1
    assert main(["none", "/m", "-f", "-o", "cache_size=lots"]) == 2
    with pytest.raises(SystemExit):  # a mistyped command is still argparse's to report
        main(["mount-it", "/m"])


@pytest.mark.fuse
@pytest.mark.s3
def test_mount_t_fuse_cachefs_with_only_cachefs_on_path(cachefs_on_system_path: Path,
                                                        seaweed: SeaweedFS, bucket: str,
                                                        tmp_path: Path) -> None:
    """No /sbin helper: mount(8) runs mount.fuse3, which runs ``cachefs SOURCE MNT -o ...``
    from the system PATH; the environment's PATH does not even hold the venv."""
    seaweed.client().put_object(Bucket=bucket, Key="data/hello.txt", Body=b"hello\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    options = (f"cache_dir={tmp_path / 'cache'},cache_size=20M,endpoint={seaweed.endpoint},"
               "_netdev,nofail,metadata_ttl=5")
    env = {"PATH": "/usr/bin:/bin", "CACHEFS_S3_KEY_ID": KEY_ID, "CACHEFS_S3_SECRET": SECRET}
    with cleanup_mount(mnt):
        result = subprocess.run(["mount", "-t", "fuse.cachefs", f"s3://{bucket}/data", str(mnt),
                                 "-o", options], env=env, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "" and result.stderr == ""
        entry = mount_entry(mnt)
        assert entry is not None and entry[:2] == (f"s3://{bucket}/data", "fuse.cachefs")
        assert (mnt / "hello.txt").read_bytes() == b"hello\n"
        (mnt / "out.txt").write_bytes(b"written")
        assert cli("umount", str(mnt)).returncode == 0
    body = seaweed.client().get_object(Bucket=bucket, Key="data/out.txt")["Body"].read()
    assert body == b"written"
    bad = subprocess.run(["mount", "-t", "fuse.cachefs", f"s3://{bucket}/data", str(mnt),
                          "-o", "frobnicate"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "cachefs: unknown option 'frobnicate'" in bad.stderr
