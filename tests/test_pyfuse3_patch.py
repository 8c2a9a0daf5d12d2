"""The patch cachefs applies to pyfuse3 (scripts/pyfuse3-3.5.0-inode.patch), tested on its own
through a real mount of a tiny file system (tests/pyfuse3_fs.py): handlers get the inode, a
file system that declines open is read without OPEN/RELEASE, and ``noflush`` stops FLUSH."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyfuse3
import pytest

from .conftest import wait_gone

ROOT = Path(__file__).resolve().parent.parent


def test_the_installed_pyfuse3_has_the_patch() -> None:
    assert pyfuse3.Operations.pass_inode is False  # off unless a file system asks
    info = pyfuse3.FileInfo(fh=1, noflush=True, cache_readdir=True)
    assert info.noflush and info.cache_readdir


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(mode: str) -> Path:
        mnt = tmp_path / f"mnt-{mode}"
        mnt.mkdir()
        log = tmp_path / f"{mode}.log"
        with open(log, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "tests.pyfuse3_fs", str(mnt), mode],
                                    cwd=ROOT, stderr=err)
        procs.append((proc, mnt))
        deadline = time.monotonic() + 10
        while not os.path.ismount(mnt):
            assert proc.poll() is None, log.read_text()

            assert time.monotonic() < deadline, "the test file system did not mount"
            time.sleep(0.05)
        return mnt

    yield start
    for proc, mnt in procs:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        if not wait_gone(proc.pid, 10):
            proc.kill()
        proc.wait(10)


def requests(mnt: Path) -> dict[str, int]:
    doc = json.loads(os.getxattr(mnt, "user.requests"))
    assert doc.pop("bad") == [], "a handler got the wrong handle or inode"
    return doc


def read_all(mnt: Path) -> dict[str, bytes]:
    return {name: (mnt / name).read_bytes() for name in sorted(os.listdir(mnt))}


def expected() -> dict[str, bytes]:
    from .pyfuse3_fs import FILES, content

    return {f"f{ino}": content(ino) for ino in sorted(range(2, FILES + 2), key=lambda i: f"f{i}")}


def test_declined_open_reads_by_inode_and_sends_no_open_or_release(serve) -> None:  # type: ignore[no-untyped-def]
    mnt = serve("no-open")
    assert read_all(mnt) == expected()
    first = requests(mnt)
    # one open and one opendir were declined; the kernel opened everything else itself
    assert first["open"] == 1 and first["opendir"] == 1, first
    assert "release" not in first and first.get("flush", 0) <= 1, first
    assert first["read"] >= len(expected()), first
    assert read_all(mnt) == expected()
    again = requests(mnt)
    # the second pass is served by the kernel: its pages, its listing, its entries
    assert again == first, (first, again)


def test_noflush_opens_send_no_flush_at_close(serve) -> None:  # type: ignore[no-untyped-def]
    mnt = serve("noflush")
    assert read_all(mnt) == expected()
    counts = requests(mnt)
    assert counts["open"] == len(expected()) and "flush" not in counts, counts


def test_plain_opens_still_get_their_handle_and_flush(serve) -> None:  # type: ignore[no-untyped-def]
    mnt = serve("plain")
    assert read_all(mnt) == expected()
    counts = requests(mnt)
    assert counts["open"] == len(expected()) and counts["flush"] == len(expected()), counts


def test_opendir_may_return_a_file_info_that_keeps_the_listing(serve) -> None:  # type: ignore[no-untyped-def]
    mnt = serve("cache-dir")
    assert sorted(os.listdir(mnt)) == sorted(expected())
    first = requests(mnt)
    assert sorted(os.listdir(mnt)) == sorted(expected())
    again = requests(mnt)
    # opened again, but the kernel lists from the listing it kept: no READDIR
    assert again["opendir"] == first["opendir"] + 1, (first, again)
    assert again["readdir"] == first["readdir"], (first, again)


def test_opendir_returning_a_handle_still_lists_every_time(serve) -> None:  # type: ignore[no-untyped-def]
    mnt = serve("plain")
    os.listdir(mnt)
    first = requests(mnt)
    os.listdir(mnt)
    assert requests(mnt)["readdir"] > first["readdir"]
