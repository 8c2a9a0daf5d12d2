"""The CI recipes in docs/ci run as written: their shell steps, against a real S3 server.

Each recipe is read as its CI system would read it, and its steps are run with bash the way
that system runs them (GitHub Actions: one `bash -eo pipefail` per step, with GITHUB_ENV and
GITHUB_PATH carried between steps; GitLab: the script in one shell, after_script in another;
builds.sr.ht: one shell per task after sourcing ~/.buildenv, with `set -x -e`). Only the
values a real job would take from its settings are replaced: the store, the endpoint and
credentials point at the session's SeaweedFS, GO_DOWNLOAD_URL at a local origin serving a
stand-in Go tarball (a `go` script that logs and runs the real go), GOPROXY at a local module
proxy. Steps that install packages are not run; this machine has them.

Three runs on fresh "machines" (new HOME, cache dirs and temp dirs; only the bucket carries
over): a cold miss that downloads, builds and saves; a changed go.sum that is seeded from the
older pack by the restore key and fetches only the new module; and an exact hit that builds
with GOPROXY=off. The toolchain is fetched from the origin once, then served from the bucket.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # PyYAML, installed with moto (a test dependency)

from .conftest import wait_gone
from .goproxy import make_app, make_proxy
from .origin_server import Origin
from .servers import KEY_ID, SECRET, SeaweedFS

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "docs" / "ci"
GO_VERSION = "9.9.9"
TARBALL = f"go{GO_VERSION}.linux-amd64.tar.gz"
STEP_TIMEOUT = 300


# -- the Go side: a module proxy, two versions of an app, a stand-in toolchain ---------------


@dataclasses.dataclass(frozen=True)
class GoWorld:
    proxy_full: str
    proxy_new_only: str  # only the module app v2 adds
    app_v1: Path
    app_v2: Path
    tarball: bytes


def _go(args: list[str], cwd: Path, home: Path, proxy: str) -> None:
    env = {**os.environ, "HOME": str(home), "GOPROXY": proxy, "GOSUMDB": "off",
           "GOTOOLCHAIN": "local", "CGO_ENABLED": "0",
           "GOPATH": str(home / "go"), "GOCACHE": str(home / "gocache")}
    subprocess.run(["go", *args], cwd=cwd, env=env, check=True, capture_output=True,
                   timeout=STEP_TIMEOUT)


def _stand_in_toolchain(real_go: str) -> bytes:
    """A go$VERSION tarball whose go/bin/go logs its arguments and runs the real go."""
    script = (f'#!/bin/sh\necho "$*" >> "$(dirname "$0")/../invocations.log"\n'
              f'exec {real_go} "$@"\n').encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data, mode in (("go/VERSION", f"go{GO_VERSION}\n".encode(), 0o644),
                                 ("go/bin/go", script, 0o755)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def go_world(tmp_path_factory: pytest.TempPathFactory) -> GoWorld:
    real_go = shutil.which("go")
    if real_go is None:
        pytest.fail("the Go toolchain is missing: scripts/setup.sh installs golang-go")
    base = tmp_path_factory.mktemp("go-world")
    make_proxy(base / "proxy")
    new_only = base / "proxy-new" / "example.com"
    new_only.mkdir(parents=True)
    shutil.copytree(base / "proxy/example.com/unused", new_only / "unused")
    app_v1, app_v2 = base / "app-v1", base / "app-v2"
    make_app(app_v1)
    _go(["mod", "tidy"], app_v1, base / "home", (base / "proxy").as_uri())
    shutil.copytree(app_v1, app_v2)
    main = (app_v2 / "main.go").read_text()
    (app_v2 / "main.go").write_text(main.replace('"example.com/greet"',
                                                 '"example.com/greet"\n\t_ "example.com/unused"'))
    _go(["mod", "tidy"], app_v2, base / "home", (base / "proxy").as_uri())
    assert "example.com/unused" in (app_v2 / "go.sum").read_text()
    return GoWorld((base / "proxy").as_uri(), (base / "proxy-new").as_uri(), app_v1, app_v2,
                   _stand_in_toolchain(str(Path(real_go).resolve())))


# -- one CI "machine" --------------------------------------------------------------------------


@dataclasses.dataclass
class Machine:
    """A fresh runner: its own HOME and temp dir; what it mounts is cleaned up by the test."""

    root: Path
    app: Path
    proxy: str
    overrides: dict[str, str]
    log: list[str] = dataclasses.field(default_factory=list)

    @property
    def home(self) -> Path:
        return self.root / "home"

    def base_env(self) -> dict[str, str]:
        """What the runner's environment has before the recipe adds its own."""
        path = f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
        return {"PATH": path, "HOME": str(self.home), "LANG": "C.UTF-8",
                "AWS_EC2_METADATA_DISABLED": "true", "GOPROXY": self.proxy, "GOSUMDB": "off",
                "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}

    def bash(self, script: str, env: dict[str, str], cwd: Path, what: str,
             options: tuple[str, ...] = ("-eo", "pipefail")) -> bool:
        path = self.root / f"step-{len(self.log)}.sh"
        path.write_text(script)
        result = subprocess.run(["bash", "--noprofile", "--norc", *options, str(path)],
                                cwd=cwd, env=env, capture_output=True, text=True,
                                timeout=STEP_TIMEOUT, stdin=subprocess.DEVNULL)
        self.log.append(f"--- {what}: exit {result.returncode}\n{result.stdout}{result.stderr}")
        return result.returncode == 0

    def resolve(self, env: dict[str, Any]) -> dict[str, str]:
        """The recipe's variables with the test's replacements; nothing left for CI to fill."""
        values = {k: str(v) for k, v in env.items()}
        values.update({k: v for k, v in self.overrides.items() if k in values})
        unresolved = {k: v for k, v in values.items() if "${{" in v}
        assert not unresolved, f"no value for {unresolved}"
        return values


# -- the three CI systems ----------------------------------------------------------------------


INSTALL_COMMANDS = ("sudo apt-get", "pipx install", "sudo modprobe", "echo 'export PATH=")


def _is_install_step(script: str) -> bool:
    lines = [x.strip() for x in script.splitlines() if x.strip()]
    return all(line.startswith(INSTALL_COMMANDS) for line in lines)


def run_github(doc: dict[str, Any], m: Machine) -> bool:
    job = doc["jobs"]["build"]
    assert doc["defaults"]["run"]["shell"] == "bash"  # bash --noprofile --norc -eo pipefail
    env = m.resolve({**doc.get("env", {}), **job.get("env", {})})
    temp = m.root / "runner-temp"
    temp.mkdir()
    github_env, github_path = temp / "github_env", temp / "github_path"
    github_env.touch()
    github_path.touch()
    ok = True
    for step in job["steps"]:
        if "uses" in step:
            continue  # actions/checkout: the app is already in the workspace
        if step["name"].startswith("Install"):
            assert _is_install_step(step["run"]), step["name"]
            continue
        assert step.get("if") in (None, "always()"), step
        if not ok and step.get("if") != "always()":
            continue
        assert "${{" not in step["run"], f"{step['name']}: expressions belong in env:"
        added = dict(line.split("=", 1) for line in github_env.read_text().splitlines())
        paths = github_path.read_text().split()[::-1]
        base = m.base_env()
        step_env = {**base, **env, **added, "GITHUB_ENV": str(github_env),
                    "GITHUB_PATH": str(github_path), "RUNNER_TEMP": str(temp),
                    "GITHUB_WORKSPACE": str(m.app), "GITHUB_SHA": m.overrides["COMMIT"],
                    "PATH": ":".join([*paths, base["PATH"]])}
        ok = m.bash(step["run"], step_env, m.app, step["name"]) and ok
    return ok


def run_gitlab(doc: dict[str, Any], m: Machine) -> bool:
    job = doc["build"]
    assert "before_script" not in job  # the image has cachefs; nothing to install
    env = {**m.base_env(), **m.resolve({**doc.get("variables", {}), **job.get("variables", {})}),
           "CI_PROJECT_DIR": str(m.app), "CI_COMMIT_SHA": m.overrides["COMMIT"],
           "CACHEFS_S3_KEY_ID": KEY_ID, "CACHEFS_S3_SECRET": SECRET}  # masked CI/CD variables
    ok = m.bash("\n".join(job["script"]), env, m.app, "script")
    after = m.bash("\n".join(job["after_script"]), env, m.app, "after_script")
    return ok and after


def run_srht(doc: dict[str, Any], m: Machine) -> bool:
    secrets = m.home / ".cachefs"
    secrets.mkdir(parents=True)
    (secrets / "key-id").write_text(KEY_ID + "\n")
    (secrets / "secret").write_text(SECRET + "\n")
    source = doc["sources"][0].rstrip("/").rsplit("/", 1)[-1]
    shutil.copytree(m.app, m.home / source)
    env = {**m.resolve(doc["environment"]), "JOB_ID": m.overrides["COMMIT"][:8]}
    (m.home / ".buildenv").write_text(
        "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
    for task in doc["tasks"]:
        ((name, body),) = task.items()
        if name == "install":
            assert _is_install_step(body)
            continue
        script = "#!/usr/bin/env bash\n. ~/.buildenv\nset -x\nset -e\n" + body
        if not m.bash(script, m.base_env(), m.home, name, options=()):
            return False
    return True


RUNNERS = {"github-actions.yml": run_github, "gitlab-ci.yml": run_gitlab,
           "builds.sr.ht.yml": run_srht}


# -- the test ----------------------------------------------------------------------------------


def _mounts_under(root: Path) -> list[Path]:
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if target.startswith(str(root) + "/"):
            found.append(Path(target))
    return found


@contextlib.contextmanager
def unmount_leftovers(root: Path) -> Iterator[None]:
    """Whatever a failed recipe left mounted is unmounted and its daemon stopped."""
    try:
        yield
    finally:
        for path in _mounts_under(root):
            pid = None
            with contextlib.suppress(OSError, ValueError):
                pid = int(os.getxattr(path, "user.cachefs.pid"))
            subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)
            if pid is not None and not wait_gone(pid, 15):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)


def _keys(seaweed: SeaweedFS, bucket: str) -> set[str]:
    pages = seaweed.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def _gomod_key(app: Path) -> str:
    return "go-mod/" + hashlib.sha256((app / "go.sum").read_bytes()).hexdigest()[:16]


@pytest.mark.fuse
@pytest.mark.s3
@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RUNNERS))
def test_recipe_runs_as_written(recipe: str, seaweed: SeaweedFS, bucket: str,
                                go_world: GoWorld, tmp_path: Path) -> None:
    doc = yaml.safe_load((RECIPES / recipe).read_text())
    origin = Origin()
    origin.files[f"/dl/{TARBALL}"] = go_world.tarball
    runs = [("cold", go_world.app_v1, go_world.proxy_full),
            ("restore-key", go_world.app_v2, go_world.proxy_new_only),
            ("hit", go_world.app_v2, "off")]
    try:
        for index, (label, app, proxy) in enumerate(runs):
            root = tmp_path / f"run{index}-{label}"
            shutil.copytree(app, root / "app")
            commit = uuid.uuid4().hex + "0" * 8
            overrides = {"CACHEFS_STORE": f"s3://{bucket}/ci",
                         "CACHEFS_ENDPOINT": seaweed.endpoint,
                         "CACHEFS_S3_KEY_ID": KEY_ID, "CACHEFS_S3_SECRET": SECRET,
                         "GO_VERSION": GO_VERSION,
                         "GO_SHA256": hashlib.sha256(go_world.tarball).hexdigest(),
                         "GO_DOWNLOAD_URL": origin.url + "/dl/", "COMMIT": commit}
            m = Machine(root, root / "app", proxy, overrides)
            with unmount_leftovers(root):
                ok = RUNNERS[recipe](doc, m)
                leftovers = _mounts_under(root)
            transcript = "\n".join(m.log)
            assert ok, f"{recipe}, run {label} failed:\n{transcript}"
            assert not leftovers, f"the recipe left {leftovers} mounted:\n{transcript}"
            check_run(recipe, label, m, app, seaweed, bucket, origin, transcript)
    finally:
        origin.close()


def check_run(recipe: str, label: str, m: Machine, app: Path, seaweed: SeaweedFS,
              bucket: str, origin: Origin, transcript: str) -> None:
    keys = _keys(seaweed, bucket)
    assert f"ci/{_gomod_key(app)}" in keys, transcript  # saved on a miss, or already there
    artifact_id = m.overrides["COMMIT"][:8] if recipe == "builds.sr.ht.yml" \
        else m.overrides["COMMIT"]
    assert f"ci/artifacts/{artifact_id}/app" in keys, transcript
    assert f"ci/toolchains/go/{TARBALL}" in keys, transcript
    assert origin.gets(f"/dl/{TARBALL}") == 1, "the toolchain comes from the bucket after run 1"
    calls = next(m.root.rglob("invocations.log")).read_text()
    assert "build -o app ." in calls, "the build used the toolchain from the origin dir"
    hit = "Go modules restored from" in transcript
    assert hit == (label == "hit"), transcript
