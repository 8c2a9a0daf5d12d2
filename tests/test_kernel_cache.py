"""Serving from the kernel (docs/PERFORMANCE.md): a read-only mount is read without OPEN and
RELEASE, the kernel keeps pages and listings, and a page it no longer has is still served, and
verified, by inode; readers on a read-write mount send no FLUSH at close."""

from __future__ import annotations

import errno
import filecmp
import hashlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import Mounter
from .servers import SeaweedFS

FILES = {f"mods/m{i // 50}@v1.{i % 7}/pkg/f{i}.go": (b"package p // %d\n" % i) * (i % 90 + 1)
         for i in range(400)}


def seed(server: SeaweedFS, bucket: str, files: dict[str, bytes]) -> None:
    client = server.client()
    for key, data in files.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)


def requests(mount: Any) -> dict[str, int]:
    stats = mount.control("stats")
    assert isinstance(stats, dict)
    return dict(stats["requests"])


def copy(src: Path, dest: Path) -> None:
    subprocess.run(["cp", "-r", str(src), str(dest)], check=True)


def hot_copy(m: Any, src: Path, dest: Path, during: Any = lambda: None,
             attempts: int = 3) -> tuple[Any, Any]:
    """Copy ``src`` while the kernel holds all its pages: (what ``during()`` said before, and
    after). The kernel may reclaim a page at any moment, so a copy that needed a READ is not
    a hot one; one of ``attempts`` must be."""
    for attempt in range(attempts):
        reads, before = requests(m)["read"], during()
        copy(src, dest.with_name(f"{dest.name}-{attempt}"))
        after = during()
        if requests(m)["read"] == reads:
            assert filecmp.dircmp(src, dest.with_name(f"{dest.name}-{attempt}")).diff_files == []
            return before, after
    raise AssertionError(f"the kernel asked for pages in each of {attempts} hot copies")


def drop_caches() -> None:
    if os.geteuid() != 0:
        pytest.skip("dropping the page cache needs root")
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def test_read_only_mount_copies_without_open_and_serves_dropped_pages(
        seaweed: SeaweedFS, bucket: str, mounter: Mounter, tmp_path: Path) -> None:
    seed(seaweed, bucket, FILES)
    m = mounter("--read-only", server=seaweed, bucket=bucket)
    assert m.control("stats")["no_open"] is True
    copy(m.path / "mods", tmp_path / "c1")
    for key, data in FILES.items():
        assert (tmp_path / "c1" / key.removeprefix("mods/")).read_bytes() == data, key
    first = requests(m)
    # The first open was declined; the kernel opened every other file itself.
    assert first.get("open", 0) == 1, first
    assert first.get("release", 0) == 0 and first.get("flush", 0) <= 1, first
    assert first["read"] >= len(FILES), first

    hot_copy(m, m.path / "mods", tmp_path / "c2")  # pages, listings and entries all kept
    again = requests(m)
    assert again.get("open", 0) == 1, again

    drop_caches()  # pages gone: READs come again, without any OPEN, and are served by inode
    copy(m.path / "mods", tmp_path / "c3")
    third = requests(m)
    assert third["read"] >= first["read"] + len(FILES), (first, third)
    assert third.get("open", 0) == 1 and third.get("release", 0) == 0, third
    for key, data in FILES.items():
        assert (tmp_path / "c3" / key.removeprefix("mods/")).read_bytes() == data, key


def test_read_only_mount_shows_an_object_changed_in_the_store(
        seaweed: SeaweedFS, bucket: str, mounter: Mounter) -> None:
    """The kernel keeps pages of files it opened itself; when the store's object changes, the
    next listing drops them, and the new content is read (never a mix)."""
    seed(seaweed, bucket, {"d/k": b"old content\n" * 100})
    m = mounter("--read-only", "--metadata-ttl", "1", server=seaweed, bucket=bucket)
    assert (m.path / "d/k").read_bytes() == b"old content\n" * 100
    seed(seaweed, bucket, {"d/k": b"new!\n" * 300})
    deadline = time.monotonic() + 15
    while (data := (m.path / "d/k").read_bytes()) != b"new!\n" * 300:
        assert data == b"old content\n" * 100, data[:40]
        assert time.monotonic() < deadline, "the new content never showed"
        time.sleep(0.3)


def test_readers_on_a_read_write_mount_send_no_flush(
        seaweed: SeaweedFS, bucket: str, mounter: Mounter) -> None:
    files = dict(list(FILES.items())[:60])
    seed(seaweed, bucket, files)
    m = mounter(server=seaweed, bucket=bucket)
    assert m.control("stats")["no_open"] is False
    for key, data in files.items():
        assert (m.path / key).read_bytes() == data
    counts = requests(m)
    assert counts["open"] >= len(files) and counts.get("flush", 0) == 0, counts
    # a writer still flushes, and what it closed is in the store
    (m.path / "new.txt").write_bytes(b"written\n")
    assert requests(m).get("flush", 0) >= 1
    body = seaweed.client().get_object(Bucket=bucket, Key="new.txt")["Body"].read()
    assert body == b"written\n"


def test_a_hot_copy_reads_nothing_ahead_and_dropped_pages_bring_read_ahead_back(
        seaweed: SeaweedFS, bucket: str, mounter: Mounter, tmp_path: Path) -> None:
    """The prefetcher leaves alone the files whose pages the kernel holds (a hot `cp -r` costs
    no worker thread per file); a READ of one shows the belief wrong, and it reads ahead
    again. Either way every byte is right."""
    seed(seaweed, bucket, FILES)
    m = mounter(server=seaweed, bucket=bucket)

    def counters() -> dict[str, int]:
        return dict(m.control("stats")["counters"])

    def copied(dest: Path) -> None:
        copy(m.path / "mods", dest)
        for key, data in FILES.items():
            assert (dest / key.removeprefix("mods/")).read_bytes() == data, key

    copied(tmp_path / "cold")  # fetches everything
    copied(tmp_path / "first")  # all local: the blobs are read ahead for the kernel
    before, after = hot_copy(m, m.path / "mods", tmp_path / "hot", counters)
    assert after.get("prefetch_local", 0) == before.get("prefetch_local", 0), (before, after)
    reads = requests(m)["read"]
    drop_caches()  # the belief is now wrong: the first READ withdraws it
    copied(tmp_path / "dropped")
    assert requests(m)["read"] > reads
    assert counters().get("prefetch_local", 0) > after.get("prefetch_local", 0)


def test_read_only_mount_lists_names_added_to_the_store(
        seaweed: SeaweedFS, bucket: str, mounter: Mounter) -> None:
    """Listings of a no-open mount are still read through the daemon: a name the store gains
    shows once the listing is older than --metadata-ttl, a name it loses goes."""

    seed(seaweed, bucket, {"d/a": b"1", "d/b": b"2"})
    m = mounter("--read-only", "--metadata-ttl", "1", server=seaweed, bucket=bucket)
    assert sorted(os.listdir(m.path / "d")) == ["a", "b"]
    seed(seaweed, bucket, {"d/c": b"3"})
    seaweed.client().delete_object(Bucket=bucket, Key="d/a")
    deadline = time.monotonic() + 15
    while (names := sorted(os.listdir(m.path / "d"))) != ["b", "c"]:
        assert time.monotonic() < deadline, f"the listing stayed {names}"
        time.sleep(0.3)
    assert (m.path / "d/c").read_bytes() == b"3"


def test_read_only_mount_reader_of_a_replaced_object_gets_estale(
        seaweed: SeaweedFS, bucket: str, mounter: Mounter) -> None:
    """No open binds a reader to a version on a no-open mount: a reader that goes on past the
    start after the object was replaced gets ESTALE, not new bytes after old ones; a read from
    the start gets the new version whole. (With a second reader starting the new version in
    between, the first may read new bytes: see docs/SEMANTICS.md.)"""
    old, new = bytes(range(256)) * 4096, b"N" * ((1 << 20) + 4096)
    seed(seaweed, bucket, {"k": old})
    m = mounter("--read-only", "--metadata-ttl", "1", server=seaweed, bucket=bucket)
    fd = os.open(m.path / "k", os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 0) == old[:4096]
        seed(seaweed, bucket, {"k": new})
        deadline = time.monotonic() + 15
        while os.stat(m.path / "k").st_size != len(new):  # the listing saw the new object
            assert time.monotonic() < deadline, "the change never showed"
            time.sleep(0.3)
        with pytest.raises(OSError) as info:
            os.pread(fd, 4096, 512 << 10)

        assert info.value.errno == errno.ESTALE

    finally:
        os.close(fd)
    assert (m.path / "k").read_bytes() == new


def test_the_kernel_keeps_listings_while_the_names_stay(
        seaweed: SeaweedFS, bucket: str, mounter: Mounter) -> None:
    """A directory is opened through the daemon each time; while its entries are those the
    kernel was last given, it lists from what it kept (no READDIR). A name the store gains
    (after --metadata-ttl) or one made here shows at once after."""
    seed(seaweed, bucket, {"d/a": b"1", "d/b": b"2"})
    m = mounter("--metadata-ttl", "1", server=seaweed, bucket=bucket)
    assert sorted(os.listdir(m.path / "d")) == ["a", "b"]
    first = requests(m)
    assert sorted(os.listdir(m.path / "d")) == ["a", "b"]
    again = requests(m)
    assert again["opendir"] == first["opendir"] + 1 and again["readdir"] == first["readdir"]
    (m.path / "d" / "here").write_bytes(b"made here")
    assert sorted(os.listdir(m.path / "d")) == ["a", "b", "here"]
    seed(seaweed, bucket, {"d/c": b"3"})
    deadline = time.monotonic() + 15
    while (names := sorted(os.listdir(m.path / "d"))) != ["a", "b", "c", "here"]:
        assert time.monotonic() < deadline, f"the listing stayed {names}"
        time.sleep(0.3)


def test_read_only_mount_never_serves_a_corrupted_blob(
        seaweed: SeaweedFS, bucket: str, mounter: Mounter) -> None:
    """A READ without an open is checked like any other: a blob damaged on disk is caught,
    dropped and fetched again; its bad bytes never reach the reader."""
    data = os.urandom(500_000)
    seed(seaweed, bucket, {"f.bin": data})
    m = mounter("--read-only", server=seaweed, bucket=bucket)
    assert (m.path / "f.bin").read_bytes() == data
    m.umount()
    digest = hashlib.sha256(data).hexdigest()
    blob = m.cache_dir / "blobs" / digest[:2] / digest
    damaged = bytearray(blob.read_bytes())
    damaged[12345] ^= 0x55
    blob.write_bytes(bytes(damaged))
    drop_caches()
    again = mounter("--read-only", server=seaweed, bucket=bucket, cache_dir=m.cache_dir)
    assert (again.path / "f.bin").read_bytes() == data
    stats = again.control("stats")
    assert stats["no_open"] is True and stats["requests"].get("open", 0) == 1
    assert stats["errors"]["corrupt_blob"] == 1
    assert stats["counters"]["fetched_objects"] == 1
