"""Fixtures: real S3 servers, buckets, and real FUSE mounts of the real CLI."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cachefs.daemon.control import read_control

from .servers import Moto, S3Server, SeaweedFS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the developer's config or writes to their cache."""
    home = tmp_path_factory.mktemp("home")
    for var, sub in (("XDG_CONFIG_HOME", "config"), ("XDG_CACHE_HOME", "cache"),
                     ("XDG_DATA_HOME", "data"), ("XDG_STATE_HOME", "state")):
        monkeypatch.setenv(var, str(home / sub))
    for var in list(os.environ):
        if var.startswith("CACHEFS_") or var.startswith("AWS_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    server = SeaweedFS(tmp_path_factory.mktemp("seaweed"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    server = Moto(tmp_path_factory.mktemp("moto"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_seaweed(tmp_path: Path) -> Iterator[SeaweedFS]:
    """A server of this test's own, for tests that stop or restart it."""
    server = SeaweedFS(tmp_path / "seaweed")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def cpu_load() -> Iterator[None]:
    """Both cores busy (``stress-ng --cpu 2``) for as long as the test runs: a loaded CI
    runner, where things may get slower but never wrong."""
    if shutil.which("stress-ng") is None:
        pytest.skip("stress-ng is not installed (scripts/setup.sh installs it)")
    proc = subprocess.Popen(["stress-ng", "--cpu", "2", "--quiet"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # its workers are running
    assert proc.poll() is None, "stress-ng exited at once"
    try:
        yield
    finally:
        # Its own session: the process group is stress-ng and the workers it forked.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def new_bucket(server: S3Server) -> str:
    name = f"t-{uuid.uuid4().hex[:16]}"
    server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def bucket(seaweed: SeaweedFS) -> str:
    return new_bucket(seaweed)


def cli(*args: str, env: dict[str, str] | None = None, check: bool = False,
        timeout: float = 120, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    result = subprocess.run([sys.executable, "-m", "cachefs", *args], env=full_env,
                            capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                            input=input.decode() if input else None)
    if check and result.returncode != 0:
        raise AssertionError(f"cachefs {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


class Mount:
    """A real `cachefs mount` in the background; always cleaned up by the fixture."""

    def __init__(self, path: Path, cache_dir: Path, env: dict[str, str], args: list[str]):
        self.path = path
        self.cache_dir = cache_dir
        self.env = env
        self.args = args
        self.pid: int | None = None

    def start(self, expect_ok: bool = True) -> subprocess.CompletedProcess[str]:
        if not mounted_at(self.path):  # a dead mount there is for `cachefs mount` to handle
            self.path.mkdir(parents=True, exist_ok=True)
        result = cli("mount", "--cache-dir", str(self.cache_dir), *self.args, str(self.path),
                     env=self.env)
        if expect_ok:
            assert result.returncode == 0, f"mount failed:\n{result.stderr}\n{self.log()}"
            self.pid = int(self.control("pid"))
        return result

    def control(self, name: str) -> Any:
        return read_control(self.path, name)

    def log(self) -> str:
        path = self.cache_dir / "cachefs.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def umount(self, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = cli("umount", str(self.path), env=self.env)
        if check:
            assert result.returncode == 0, f"umount failed:\n{result.stderr}\n{self.log()}"
        if result.returncode == 0:
            self.pid = None
        return result

    def kill(self, clear: bool = True) -> None:
        """kill -9 the daemon (a crash) and clear the dead mount it leaves, unless ``clear``
        is False: then the mount point stays "Transport endpoint is not connected"."""
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        wait_gone(self.pid)
        if clear:
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        self.pid = None

    def cleanup(self) -> None:
        if mounted_at(self.path):  # live or dead (os.path.ismount is False on a dead one)
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            if not wait_gone(self.pid, 10):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                wait_gone(self.pid, 5)


def mounted_at(path: Path) -> bool:
    """Whether /proc/self/mountinfo lists a mount at ``path``, answering or not."""
    target = os.path.abspath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4]
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point)
            if point == target:
                return True
    return False


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


class Mounter:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.mounts: list[Mount] = []

    def __call__(self, *args: str, server: S3Server | None = None, bucket: str | None = None,
                 cache_dir: Path | None = None, name: str | None = None,
                 env: dict[str, str] | None = None, start: bool = True) -> Mount:
        index = len(self.mounts)
        full_env = dict(server.env()) if server else {}
        full_env.update(env or {})
        store_args: list[str] = []
        if bucket is not None:
            store_args = ["--store", f"s3://{bucket}"]
        mount = Mount(self.tmp_path / (name or f"mnt{index}"),
                      cache_dir or self.tmp_path / f"cache{index}", full_env,
                      [*store_args, *args])
        self.mounts.append(mount)
        if start:
            mount.start()
        return mount

    def cleanup(self) -> None:
        for mount in self.mounts:
            mount.cleanup()


@pytest.fixture
def mounter(tmp_path: Path) -> Iterator[Mounter]:
    m = Mounter(tmp_path)
    yield m
    m.cleanup()
