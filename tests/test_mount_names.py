"""Names whose store key would be too long, through a real mount on a local store and on S3.

Each operation runs in a child process under a deadline, walking the tree with directory file
descriptors (the paths are longer than the kernel's PATH_MAX): a hang fails the test instead of
stalling the suite, and the daemon's log is kept for the failure message.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import Mount, Mounter
from .servers import SeaweedFS

pytestmark = [pytest.mark.fuse]

#: the mount's --timeout: every operation must answer within a few of these
TIMEOUT = 5
#: a child process gets this long per operation before the test calls it a hang
DEADLINE = float(os.environ.get("CACHEFS_TEST_OP_DEADLINE", 4 * TIMEOUT))

_CHILD = r"""
import json, os, sys
req = json.loads(sys.argv[1])

def walk(parts):
    fd = os.open(req["root"], os.O_RDONLY | os.O_DIRECTORY)
    for part in parts:
        sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = sub
    return fd

try:
    d = walk(req["dir"])
    op, name = req["op"], req.get("name")
    out = None
    if op == "mkdir":
        os.mkdir(name, dir_fd=d)
    elif op == "create":
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=d)
        os.write(fd, b"data")
        os.close(fd)
    elif op == "symlink":
        os.symlink("target", name, dir_fd=d)
    elif op == "mkfifo":
        os.mkfifo(name, dir_fd=d)
    elif op == "unlink":
        os.unlink(name, dir_fd=d)
    elif op == "rmdir":
        os.rmdir(name, dir_fd=d)
    elif op == "ls":
        out = sorted(os.listdir(d))
    elif op == "rename":
        os.rename(name, req["to_name"], src_dir_fd=d, dst_dir_fd=walk(req["to_dir"]))
    print(json.dumps({"errno": 0, "out": out}))
except OSError as e:
    print(json.dumps({"errno": e.errno, "out": str(e)}))
"""


class Tree:
    """Operations on one mount, by lists of path components, each bounded by DEADLINE."""

    def __init__(self, mount: Mount) -> None:
        self.mount = mount

    def run(self, op: str, dir: list[str], name: str | None = None, **extra: Any) -> Any:
        request = {"root": str(self.mount.path), "op": op, "dir": dir, "name": name, **extra}
        started = time.monotonic()
        child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(request)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = child.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            # A request the daemon has read cannot be interrupted, not even by SIGKILL: do not
            # wait for the child; the mount's cleanup ends the daemon, and that frees it.
            child.kill()
            pytest.fail(f"{op} in a {len(dir)}-deep dir hung for more than {DEADLINE}s\n"
                        f"{self.log()}")
        assert child.returncode == 0, stderr
        answer = json.loads(stdout)
        took = time.monotonic() - started
        if took > TIMEOUT:
            print(f"slow: {op} in a {len(dir)}-deep dir took {took:.0f}s "
                  f"(errno {answer['errno']})", file=sys.stderr)
        return answer

    def log(self) -> str:
        """The daemon's last log lines, each cut short (they quote very long paths)."""
        lines = self.mount.log().splitlines()[-30:]
        return "\n".join(line if len(line) < 400 else line[:200] + " ... " + line[-150:]
                         for line in lines)

    def ok(self, op: str, dir: list[str], name: str | None = None, **extra: Any) -> Any:
        answer = self.run(op, dir, name, **extra)
        assert answer["errno"] == 0, f"{op}: {answer['out'][:300]}\n{self.log()}"
        return answer["out"]

    def refused(self, op: str, dir: list[str], name: str | None = None, **extra: Any) -> int:
        code = self.run(op, dir, name, **extra)["errno"]
        assert code != 0, f"{op} was expected to fail"
        return int(code)

    def alive(self) -> None:
        assert self.mount.pid is not None
        os.kill(self.mount.pid, 0)
        assert os.path.ismount(self.mount.path)


def name(letter: str, size: int) -> str:
    return letter * size


@pytest.fixture(params=["local", "s3"])
def setup(request: pytest.FixtureRequest, mounter: Mounter,
          tmp_path: Path) -> tuple[Tree, list[str], int]:
    """A mount and the deepest directory that can still hold a short name; returns the tree,
    that directory's components and the component size used."""
    if request.param == "local":
        store = tmp_path / "store"
        store.mkdir()
        m = mounter("--store", store.as_uri(), "--timeout", str(TIMEOUT))
        # 250-byte components (a file name each in the store's plain directory) below a first
        # one sized so that the deepest still holds its manifest (13 bytes) and a short name,
        # but not a 250-byte one: the paths end just short of PATH_MAX (4096).
        size, depth = 250, 16
        first = max(1, 3850 - 15 * 251 - 1 - len(os.fsencode(store)))
    else:
        pytest.importorskip("boto3")
        server: SeaweedFS = request.getfixturevalue("seaweed")
        bucket = request.getfixturevalue("bucket")
        m = mounter("--timeout", str(TIMEOUT), server=server, bucket=bucket)
        # 255-byte components: keys are at most 1024 bytes, so 3 levels and a bit.
        size, depth = 255, 3
        first = size
    tree = Tree(m)
    dirs: list[str] = []
    for i in range(depth):
        length = first if i == 0 else size
        tree.ok("mkdir", dirs, name(chr(ord("a") + i), length))
        dirs.append(name(chr(ord("a") + i), length))
    if request.param == "s3":
        tree.ok("mkdir", dirs, name("m", 200))  # room left below it for 55-byte names
        dirs.append(name("m", 200))
    return tree, dirs, size


def test_too_long_names_are_refused_and_the_tree_stays_usable(
        setup: tuple[Tree, list[str], int]) -> None:
    tree, deep, size = setup
    long = name("z", size)
    for op in ("mkdir", "create", "symlink", "mkfifo"):
        code = tree.refused(op, deep, long)
        assert code == errno.ENAMETOOLONG, f"{op}: {os.strerror(code)}"
        tree.alive()
    # A FIFO has no object to be stored as, whatever its name.
    assert tree.refused("mkfifo", deep, "fifo") == errno.EPERM
    # The tree is still usable, within the timeout: short names fit, and go away again.
    tree.ok("mkdir", deep, "ok")
    tree.ok("create", deep, "f")
    assert tree.ok("ls", deep) == ["f", "ok"]
    tree.ok("unlink", deep, "f")
    tree.ok("rmdir", deep, "ok")
    assert tree.ok("ls", deep) == []
    tree.alive()
    status = tree.mount.control("status")  # refused up front: nothing queued, nothing dropped
    assert status["pending"] == [] and status["refused"] == []


def test_renames_past_the_limit_are_refused_before_anything_moves(
        setup: tuple[Tree, list[str], int]) -> None:
    tree, deep, size = setup
    long = name("z", size)
    tree.ok("create", [], "top")
    assert tree.refused("rename", [], "top", to_dir=deep, to_name=long) == errno.ENAMETOOLONG
    # Nothing is left behind to hold up what comes next on the same key.
    tree.ok("create", [], "gone")
    assert tree.refused("rename", [], "gone", to_dir=deep, to_name=long) == errno.ENAMETOOLONG
    tree.ok("unlink", [], "gone")
    # A directory whose deepest key would be too long after the move: nothing moves.
    tree.ok("mkdir", [], "d")
    tree.ok("mkdir", ["d"], name("y", size))
    tree.ok("create", ["d", name("y", size)], "file")
    assert tree.refused("rename", [], "d", to_dir=deep, to_name=name("x", size)) == \
        errno.ENAMETOOLONG
    assert tree.ok("ls", ["d", name("y", size)]) == ["file"]
    assert tree.ok("ls", deep) == []
    # Short enough, it moves.
    tree.ok("rename", [], "top", to_dir=deep, to_name="top")
    assert tree.ok("ls", deep) == ["top"]
    tree.ok("unlink", deep, "top")
    tree.ok("mkdir", deep, "after")
    assert tree.ok("ls", []) == sorted([deep[0], "d"])
    tree.alive()
