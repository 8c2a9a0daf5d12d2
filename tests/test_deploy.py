"""deploy/: the systemd unit (checked by systemd-analyze, and its commands run through a start,
a crash and restart, and a stop), the fstab example, the Containerfile, and the command lines
in docs/DEPLOY.md."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachefs.cli.main import build_parser
from cachefs.cli.mounthelper import Invocation, mount_argv, parse_argv, split_options

from .conftest import ROOT, wait_gone
from .servers import KEY_ID, SECRET, SeaweedFS

UNIT = ROOT / "deploy" / "cachefs@.service"
CACHEFS = str(Path(sys.executable).parent / "cachefs")
INSTALLED_CACHEFS = "/usr/local/bin/cachefs"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file; a key may repeat (ExecStartPre=…)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def escape_path(path: Path) -> str:
    return subprocess.run(["systemd-escape", "--path", str(path)], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_unit_shape() -> None:
    unit = parse_unit(UNIT.read_text())
    service = unit["Service"]
    assert service["Type"] == ["forking"]  # ready only once `cachefs mount` has returned
    assert service["Restart"] == ["on-failure"]
    assert service["ExecStart"] == [f"{INSTALLED_CACHEFS} mount %f"]
    assert service["ExecStop"][0].startswith(f"{INSTALLED_CACHEFS} umount ")
    assert "network-online.target" in unit["Unit"]["After"]
    timeout = int(service["ExecStop"][0].split("--timeout ")[1].split()[0])
    assert int(service["TimeoutStopSec"][0]) > timeout  # systemd waits for the drain
    parser = build_parser()
    for command in service["ExecStart"] + service["ExecStop"]:
        parser.parse_args(shlex.split(command.replace("%f", "/srv/cache"))[1:])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """The unit as an instance, with cachefs where this machine has it."""
    instance = tmp_path / f"cachefs@{escape_path(tmp_path / 'mnt')}.service"
    instance.write_text(UNIT.read_text().replace(INSTALLED_CACHEFS, CACHEFS))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(instance)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr


class UnitRunner:
    """Runs the unit's commands for one instance the way systemd would, minus the cgroup."""

    def __init__(self, mountpoint: Path, cache_root: Path, env_file: Path) -> None:
        self.service = parse_unit(UNIT.read_text())["Service"]
        self.instance = escape_path(mountpoint)
        self.specifiers = {"%i": self.instance, "%f": str(mountpoint), "%C": str(cache_root)}
        self.env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8",
                    **{k: v for k, v in os.environ.items() if k.startswith("XDG_")}}
        for assignment in self.service.get("Environment", []):
            key, _, value = self.expand(assignment).partition("=")
            self.env[key] = value
        for line in env_file.read_text().splitlines():  # EnvironmentFile overrides Environment
            if line.strip() and not line.startswith("#"):
                key, _, value = line.partition("=")
                self.env[key] = value

    def expand(self, text: str) -> str:
        for spec, value in self.specifiers.items():
            text = text.replace(spec, value)
        return text

    def run(self, key: str) -> list[subprocess.CompletedProcess[str]]:
        results = []
        for line in self.service.get(key, []):
            ignore = line.startswith("-")
            argv = shlex.split(self.expand(line.lstrip("-")))
            argv[0] = CACHEFS if argv[0] == INSTALLED_CACHEFS else argv[0]
            result = subprocess.run(argv, env=self.env, capture_output=True, text=True,
                                    timeout=300)
            assert ignore or result.returncode == 0, f"{key}: {argv}: {result.stderr}"
            results.append(result)
        return results

    def start(self) -> None:
        self.run("ExecStartPre")
        self.run("ExecStart")

    def stop(self) -> None:
        self.run("ExecStop")
        self.run("ExecStopPost")


@contextlib.contextmanager
def stopped_at_the_end(mountpoint: Path) -> Iterator[None]:
    try:
        yield
    finally:
        pid = None
        with contextlib.suppress(OSError, ValueError):
            pid = int(os.getxattr(mountpoint, "user.cachefs.pid"))
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
        if pid is not None and not wait_gone(pid, 15):
            os.kill(pid, signal.SIGKILL)


def daemon_pid(mountpoint: Path) -> int:
    return int(os.getxattr(mountpoint, "user.cachefs.pid"))


@pytest.mark.fuse
@pytest.mark.s3
@pytest.mark.skipif(shutil.which("systemd-escape") is None, reason="no systemd-escape")
def test_unit_starts_restarts_and_stops(seaweed: SeaweedFS, bucket: str,
                                        tmp_path: Path) -> None:
    env_file = tmp_path / "instance.env"
    example = (ROOT / "deploy" / "cachefs.env.example").read_text()
    env_file.write_text(example.replace("s3://ci-cache/ci", f"s3://{bucket}/ci")
                        .replace("https://s3.example.com", seaweed.endpoint)
                        .replace("replace-with-the-access-key-id", KEY_ID)
                        .replace("replace-with-the-secret-key", SECRET))
    mountpoint = tmp_path / "srv" / "cache"  # ExecStartPre creates it
    unit = UnitRunner(mountpoint, tmp_path / "var-cache", env_file)
    with stopped_at_the_end(mountpoint):
        unit.start()  # returns only once the mount answers: Type=forking's "ready"
        first = daemon_pid(mountpoint)
        assert (tmp_path / "var-cache" / "cachefs" / unit.instance / "cachefs.log").exists()
        (mountpoint / "before-crash").write_text("1")
        # A crash: the daemon dies, the mount is dead; Restart=on-failure runs the stop-post
        # and start commands again, and the mount comes back.
        os.kill(first, signal.SIGKILL)
        assert wait_gone(first)
        unit.run("ExecStopPost")
        unit.start()
        second = daemon_pid(mountpoint)
        assert second != first
        assert (mountpoint / "before-crash").read_text() == "1"
        (mountpoint / "artifact").write_text("2")
        unit.stop()
        assert not os.path.ismount(mountpoint) and wait_gone(second, 1)
    body = seaweed.client().get_object(Bucket=bucket, Key="ci/artifact")["Body"].read()
    assert body == b"2"


def test_fstab_example_lines_map_to_cachefs_flags() -> None:
    lines = [line.lstrip("# ") for line in (ROOT / "deploy/fstab.example").read_text()
             .splitlines() if re.match(r"^#? ?s3://\S+ \S+ fuse\.cachefs ", line)]
    assert len(lines) == 2
    parser = build_parser()
    for line in lines:
        source, target, fstype, options, dump, passno = line.split()
        assert fstype == "fuse.cachefs" and (dump, passno) == ("0", "0")
        argv, ignored = mount_argv(Invocation(source, target, split_options(options)))
        assert "_netdev" in ignored
        args = parser.parse_args(argv)
        assert args.store == source and args.mountpoint == target


def test_containerfile_copies_what_exists() -> None:
    text = (ROOT / "deploy" / "Containerfile").read_text()
    stages = re.findall(r"^FROM \S+:\S+(?: AS (\w+))?$", text, re.MULTILINE)
    assert len(stages) == 2 and stages[0] == "build"  # pinned base tags, a build stage
    for line in re.findall(r"^COPY (.+)$", text, re.MULTILINE):
        parts = line.split()
        if parts[0].startswith("--from="):
            assert parts[0] == "--from=build"
            continue
        for source in parts[:-1]:
            assert (ROOT / source).exists(), source
    assert 'ENTRYPOINT ["/usr/bin/tini", "--"]' in text
    assert "/sbin/mount.fuse.cachefs" in text


def _doc_commands(program: str) -> list[list[str]]:
    """The ``program …`` commands in docs/DEPLOY.md's shell blocks (at the start of a line,
    after ``&&``, ``;``, ``(`` or a quote, or after the image name), as words."""
    doc = (ROOT / "docs" / "DEPLOY.md").read_text()
    blocks = re.findall(r"```(?:sh|console)\n(.*?)```", doc, re.DOTALL)
    start = r"(?:^|&&|\|\||;|\(|'|\bcachefs)\s*"  # the last: `docker run … IMAGE command`
    found = re.compile(start + re.escape(program) + r"\s+([^&|;)'#>\n]*)")
    return [shlex.split(match) for block in blocks
            for line in block.replace("\\\n", " ").splitlines()
            for match in found.findall(line.strip())]


def test_deploy_doc_commands_parse() -> None:
    """Every `cachefs …` and `mount -t fuse.cachefs …` line in docs/DEPLOY.md is real."""
    commands = _doc_commands("cachefs")
    assert len(commands) >= 5
    parser = build_parser()
    for words in commands:
        try:
            parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"docs/DEPLOY.md: cachefs {' '.join(words)!r} does not parse")
    mounts = [w for w in _doc_commands("mount") if w[:2] == ["-t", "fuse.cachefs"]]
    assert mounts
    for words in mounts:
        parser.parse_args(mount_argv(parse_argv(words[2:]))[0])
