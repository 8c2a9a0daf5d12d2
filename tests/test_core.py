"""The core driven directly over the in-memory store: fast checks of read and write rules."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
import trio
import trio.testing

from cachefs.errors import (
    AccessDenied,
    CacheFSError,
    Exists,
    InvalidArgument,
    IsADirectory,
    NotEmpty,
    ReadOnly,
    StoreUnavailable,
)
from cachefs.metrics import Stats
from cachefs.nodes import InodeTable, Kind
from cachefs.remote import manifest
from cachefs.remote.fallback import ORIGIN, OriginFallback
from cachefs.remote.namespace import Namespace, NullNotifier
from cachefs.remote.origin import OriginInfo
from cachefs.store import ObjectInfo
from cachefs.tier.db import Database
from cachefs.tier.listings import MetadataCache

from .harness import running_core
from .memstore import MemoryStore
from .origin_server import Origin


def gets(store: MemoryStore, key: str) -> int:
    return sum(1 for what, k in store.requests if what == "get" and k == key)


async def test_small_file_is_fetched_once_then_served_locally(tmp_path: Path) -> None:
    store = MemoryStore()
    store.add("tools/a.txt", b"hello world")
    async with running_core(store, tmp_path / "c") as core:
        assert await core.ls("") == ["tools"]
        assert await core.cat("tools/a.txt") == b"hello world"
        assert await core.cat("tools/a.txt") == b"hello world"
        assert gets(store, "tools/a.txt") == 1
    # A new process with the same cache dir: served from the blob tier.
    async with running_core(store, tmp_path / "c") as core:
        assert await core.cat("tools/a.txt") == b"hello world"
        assert gets(store, "tools/a.txt") == 1


async def test_large_file_in_ranged_parts(tmp_path: Path) -> None:
    store = MemoryStore()
    payload = os.urandom(21 << 20)
    store.add("big.bin", payload)
    async with running_core(store, tmp_path / "c") as core:
        assert await core.cat("big.bin") == payload
        assert gets(store, "big.bin") > 3  # 1 + 2 + 4 + 8 + ... MiB parts
        node = await core.node("big.bin")
        assert node.digest == hashlib.sha256(payload).hexdigest()
        assert core.daemon.blobs.has(node.digest)


async def test_corrupt_blob_is_refetched_not_served(tmp_path: Path) -> None:
    store = MemoryStore()
    payload = os.urandom(300_000)
    store.add("f", payload)
    async with running_core(store, tmp_path / "c") as core:
        assert await core.cat("f") == payload
        digest = (await core.node("f")).digest
        assert digest is not None
        path = core.daemon.blobs.path(digest)
        data = bytearray(path.read_bytes())
        data[1000] ^= 0xFF
        path.write_bytes(bytes(data))
        core.daemon.blobs.blocks.clear()  # verified blocks kept in memory would still serve
        assert await core.cat("f") == payload
        assert gets(store, "f") == 2


async def test_content_mismatch_with_recorded_digest_fails(tmp_path: Path) -> None:
    store = MemoryStore()
    store.add("f", b"actual bytes", **{"cachefs-sha256": "0" * 64})
    async with running_core(store, tmp_path / "c") as core:
        with pytest.raises(CacheFSError) as info:
            await core.cat("f")
        assert info.value.errno == errno.EIO
        assert not core.daemon.blobs.entries


async def test_write_then_read_back_without_download(tmp_path: Path) -> None:
    store = MemoryStore()
    async with running_core(store, tmp_path / "c") as core:
        await core.write("out.txt", b"built")
        data, info = store.objects["out.txt"]
        assert data == b"built"
        assert info.metadata["cachefs-sha256"] == hashlib.sha256(b"built").hexdigest()
        assert info.metadata["mode"] == str(0o100644)
        assert await core.cat("out.txt") == b"built"
        assert gets(store, "out.txt") == 0


async def test_multipart_upload_for_large_files(tmp_path: Path) -> None:
    store = MemoryStore()
    payload = os.urandom(20 << 20)
    async with running_core(store, tmp_path / "c") as core:
        await core.write("big", payload)
    assert store.objects["big"][0] == payload
    assert store.objects["big"][1].etag.endswith('-3"')


async def test_overwrite_keeps_old_content_for_open_readers(tmp_path: Path) -> None:
    store = MemoryStore()
    store.add("k", b"old content")
    async with running_core(store, tmp_path / "c") as core:
        node = await core.node("k")
        reader, _ = await core.fs.open(node, os.O_RDONLY)
        await core.write("k", b"new content!")
        assert await core.fs.read(reader, 0, 100) == b"old content"
        await core.fs.release(reader)
        assert await core.cat("k") == b"new content!"


async def test_open_with_o_trunc_while_the_last_other_writer_closes(tmp_path: Path) -> None:
    """An open that waits for the shared staging file (a close or a write of another writer
    holds it) while that other writer lets go still gets a staging file that is the node's and
    stays open: it once got the retired one, and failed with EBADF (test_parallel_writers)."""
    store = MemoryStore()
    store.add("k", b"old content")
    async with running_core(store, tmp_path / "c") as core:
        node = await core.node("k")
        first, _ = await core.fs.open(node, os.O_WRONLY | os.O_TRUNC)
        await core.fs.write(first, 0, b"first")
        await core.fs.flush(first)
        staging = node.staging
        assert staging is not None and staging.sealed
        opened: list[int] = []

        async def open_second() -> None:
            opened.append((await core.fs.open(node, os.O_WRONLY | os.O_TRUNC))[0])

        # The lock is held as a commit or a write of the first writer would hold it.
        async with trio.open_nursery() as nursery, staging.lock:
            nursery.start_soon(open_second)
            while not staging.lock.statistics().tasks_waiting:
                await trio.lowlevel.checkpoint()
            await core.fs.release(first)  # the last writer counted so far lets go
        [second] = opened
        assert node.staging is staging and not staging.retired
        await core.fs.write(second, 0, b"second")
        await core.fs.flush(second)
        await core.fs.release(second)
        assert store.objects["k"][0] == b"second"
        assert await core.cat("k") == b"second"


async def test_namespace_operations(tmp_path: Path) -> None:
    store = MemoryStore()
    async with running_core(store, tmp_path / "c") as core:
        root = await core.node("")
        d = await core.fs.mkdir(root, "d", 0o755, 0, 0)
        assert "d/" in store.objects
        await core.write("d/f", b"1")
        with pytest.raises(NotEmpty):
            await core.fs.rmdir(root, "d")
        with pytest.raises(Exists):
            await core.fs.mkdir(root, "d", 0o755, 0, 0)
        with pytest.raises(IsADirectory):
            await core.fs.unlink(root, "d")
        await core.fs.symlink(d, "link", "f", 0, 0)
        assert store.objects["d/link"][0] == b"f"
        await core.fs.rename(d, "f", d, "g")
        assert "d/f" not in store.objects and store.objects["d/g"][0] == b"1"
        await core.fs.rename(root, "d", root, "e")
        assert sorted(k for k in store.objects if not k.endswith(".cachefs.dir")) == \
            ["e/", "e/g", "e/link"]
        assert await core.cat("e/g") == b"1"
        e = await core.node("e")
        await core.fs.unlink(e, "g")
        await core.fs.unlink(e, "link")
        await core.fs.rmdir(root, "e")
        assert not [k for k in store.objects if k.startswith("e/")]


async def test_attributes_survive_in_the_manifest(tmp_path: Path) -> None:
    store = MemoryStore()
    async with running_core(store, tmp_path / "a") as core:
        node = await core.write("x", b"data")
        await core.fs.setattr(node, mode=0o555, mtime_ns=1_000_000_000_000)
        root = await core.node("")
        await core.fs.symlink(root, "l", "x", 0, 0)
        await core.fs.sync()
    async with running_core(store, tmp_path / "b") as core:
        node = await core.node("x")
        assert node.mode == 0o555 and node.mtime_ns == 1_000_000_000_000
        link = await core.node("l")
        assert link.kind is Kind.LINK and link.target == "x"


async def test_s3fs_metadata_is_read(tmp_path: Path) -> None:
    store = MemoryStore()
    store.add("tool", b"#!/bin/sh\n", mode=str(0o100755), mtime="1600000000", uid="1000")
    async with running_core(store, tmp_path / "c") as core:
        await core.cat("tool")
        node = await core.node("tool")
        assert node.mode == 0o755 and node.mtime_ns == 1_600_000_000 * 10**9
        assert node.uid == 1000


async def test_changed_object_seen_after_ttl(tmp_path: Path) -> None:
    store = MemoryStore()
    store.add("k", b"version 1")
    async with running_core(store, tmp_path / "c", metadata_ttl=0.2) as core:
        assert await core.cat("k") == b"version 1"
        store.add("k", b"version two")
        store.add("new", b"n")
        await trio.sleep(0.25)
        assert await core.cat("k") == b"version two"
        assert "new" in await core.ls("")
        store.delete("new")
        await trio.sleep(0.25)
        assert "new" not in await core.ls("")


async def test_keys_that_cannot_be_paths_are_skipped(tmp_path: Path) -> None:
    store = MemoryStore()
    for key in ("ok.txt", "a//b", "./x", "dir/../y", "z" * 300, "both", "both/child"):
        store.add(key, b"1")
    async with running_core(store, tmp_path / "c") as core:
        names = await core.ls("")
        assert names == ["a", "both", "dir", "ok.txt"]
        assert await core.ls("a") == []  # 'a//b' has an empty component
        assert (await core.node("both")).kind is Kind.DIR
        assert await core.ls("dir") == []


async def test_read_only_refuses_changes(tmp_path: Path) -> None:
    store = MemoryStore()
    store.add("k", b"1")
    async with running_core(store, tmp_path / "c", read_only=True) as core:
        root = await core.node("")
        with pytest.raises(ReadOnly):
            await core.fs.mkdir(root, "d", 0o755, 0, 0)
        with pytest.raises(ReadOnly):
            await core.fs.open(await core.node("k"), os.O_WRONLY)
        with pytest.raises(ReadOnly):
            await core.fs.unlink(root, "k")
        assert await core.cat("k") == b"1"


async def test_cached_files_readable_while_store_down(tmp_path: Path) -> None:
    store = MemoryStore()
    store.add("d/cached", b"here")
    store.add("d/not-cached", b"there")
    async with running_core(store, tmp_path / "c", metadata_ttl=0.1, timeout=2) as core:
        assert await core.cat("d/cached") == b"here"
        store.down = True
        await trio.sleep(0.15)
        assert await core.cat("d/cached") == b"here"
        with pytest.raises(CacheFSError) as info:
            await core.cat("d/not-cached")
        assert info.value.errno == errno.EIO


async def test_async_writeback_replays_after_crash(tmp_path: Path) -> None:
    store = MemoryStore()
    async with running_core(store, tmp_path / "c", writeback="async") as core:
        await core.ls("")
        store.down = True
        await core.write("saved", b"closed before the crash")
        assert "saved" not in store.objects
        core.daemon.writeback.journal.close()  # what a kill -9 leaves: the journal on disk
    store.down = False
    async with running_core(store, tmp_path / "c", writeback="async") as core:
        await core.fs.sync()
        assert store.objects["saved"][0] == b"closed before the crash"


async def test_compression_at_rest(tmp_path: Path) -> None:
    store = MemoryStore()
    text = b"".join(b"line %d of a compressible file\n" % i for i in range(200_000))
    async with running_core(store, tmp_path / "w", compress="zstd:3") as core:
        await core.write("big.txt", text)
        await core.write("small.txt", text[:20_000])
        await core.write("tiny.txt", b"tiny")
        await core.fs.sync()
    big, meta = store.objects["big.txt"][0], store.objects["big.txt"][1].metadata
    assert meta["cachefs-compression"] == "zstd" and int(meta["cachefs-size"]) == len(text)
    assert len(big) < len(text) // 4
    assert store.objects["small.txt"][1].metadata["cachefs-compression"] == "zstd"
    assert "cachefs-compression" not in store.objects["tiny.txt"][1].metadata
    store.add("foreign.txt", b"written by another tool")
    async with running_core(store, tmp_path / "r") as core:
        assert (await core.node("big.txt")).size == len(text)  # from the manifest
        node = await core.node("big.txt")
        fh, _ = await core.fs.open(node, os.O_RDONLY)
        middle = len(text) // 2
        assert await core.fs.read(fh, middle, 1000) == text[middle:middle + 1000]
        await core.fs.release(fh)
        assert await core.cat("big.txt") == text
        assert await core.cat("small.txt") == text[:20_000]
        assert await core.cat("tiny.txt") == b"tiny"
        assert await core.cat("foreign.txt") == b"written by another tool"


class EmptyOrigin:
    """An origin that has nothing (404 for every URL) and counts what it is asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def probe(self, url: str) -> OriginInfo | None:
        self.asked.append(url)
        return None

    async def probe_dir(self, url: str) -> bool:
        self.asked.append(url)
        return False


async def test_origin_404_is_remembered_for_the_ttl_on_the_trio_clock(
        tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    table = InodeTable()
    metadata = MetadataCache(Database(tmp_path / "index.db"))
    ns = Namespace(MemoryStore(), "", table, metadata, s3=trio.CapacityLimiter(1), ttl=60,
                   notifier=NullNotifier(), pending_kind=lambda key: None)
    dl = table.new(Kind.DIR, "dl", table.root, children={},
                   xattrs={ORIGIN: "http://origin.invalid/files/"})
    client = EmptyOrigin()
    fallback = OriginFallback(client, ns, table, metadata, Stats(),  # type: ignore[arg-type]
                              mount_origins={}, default_mode="auto", ttl=60)
    assert await fallback.probe(dl, "absent.bin") is None
    assert client.asked == ["http://origin.invalid/files/absent.bin",
                            "http://origin.invalid/files/absent.bin/"]
    mock_clock.jump(59)
    assert await fallback.probe(dl, "absent.bin") is None
    assert len(client.asked) == 2  # remembered: the origin is not asked again
    assert await fallback.probe(dl, "other.bin") is None
    assert len(client.asked) == 4  # a 404 is remembered for its own URL only
    mock_clock.jump(2)
    assert await fallback.probe(dl, "absent.bin") is None
    assert len(client.asked) == 6  # the TTL ran out on the trio clock: asked again


async def test_refusals_are_logged_once_a_minute_on_the_trio_clock(
        mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    from cachefs.fuse.ops import _RateLimitedLog

    refused = _RateLimitedLog()
    with caplog.at_level(logging.INFO, logger="cachefs.fuse.ops"):
        refused(logging.INFO, "open:ReadOnly", "open: read-only")  # at 0 on a MockClock
        mock_clock.jump(59)
        refused(logging.INFO, "open:ReadOnly", "open: read-only")
        mock_clock.jump(2)
        refused(logging.INFO, "open:ReadOnly", "open: read-only")
    assert [r.getMessage() for r in caplog.records] == [
        "open: read-only", "open: read-only (1 similar since)"]


async def test_a_listing_is_fresh_for_the_ttl_on_the_trio_clock_and_keeps_its_age(
        tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    store.add("d/a.txt", b"a")
    db = Database(tmp_path / "index.db")
    wall = [1_000_000.0]

    def namespace() -> Namespace:
        metadata = MetadataCache(db, wall=lambda: wall[0])
        metadata.start()
        return Namespace(store, "", InodeTable(), metadata, s3=trio.CapacityLimiter(1), ttl=60,
                         notifier=NullNotifier(), pending_kind=lambda key: None)

    def lists() -> int:
        return sum(1 for what, _ in store.requests if what == "list")

    ns = namespace()
    assert set(await ns.children(ns.root)) == {"d"}
    assert lists() == 1
    mock_clock.jump(59)
    wall[0] += 59
    await ns.children(ns.root)
    assert lists() == 1  # younger than the TTL on the trio clock: not listed again
    mock_clock.jump(2)
    wall[0] += 2
    await ns.children(ns.root)
    assert lists() == 2  # the TTL ran out
    await ns.metadata.flush(ns.root)
    # The next mount, whose trio clock counts from elsewhere, knows how old the kept listing is.
    mock_clock.jump(10_000)
    wall[0] += 30
    again = namespace()
    assert set(await again.children(again.root)) == {"d"}
    assert lists() == 2  # 30 s old: served from the cache dir
    mock_clock.jump(31)
    wall[0] += 31
    after = namespace()
    await after.children(after.root)
    assert lists() == 3  # 61 s old: listed again


async def test_listing_keeps_directory_settings_not_yet_in_the_manifest(tmp_path: Path) -> None:
    """An origin set on a directory lives in the parent's manifest once it is written (about
    a second later). A listing meanwhile that reads an older manifest (an earlier runner's)
    must not undo it: the names below would be ENOENT without asking the origin."""
    origin = Origin()
    origin.files["/files/other.bin"] = b"at the origin"
    store = MemoryStore()
    try:
        async with running_core(store, tmp_path / "c", metadata_ttl=0.2) as core:
            dl = await core.fs.mkdir(await core.node(""), "dl", 0o755, 0, 0)
            await core.daemon.xattrs.set(dl, ORIGIN, (origin.url + "/files/").encode())
            store.add(".cachefs.dir", manifest.render(
                {"dl": {"type": "d", "mode": 0o700, "xattrs": {"user.note": "earlier"}}}))
            # Blocks the trio loop on purpose: the root's listing expires (the trio clock moves
            # on) while the manifest writer, a task on that loop, cannot run.
            time.sleep(0.25)  # noqa: ASYNC251
            assert "dl" in await core.ls("")
            assert dl.xattrs == {ORIGIN: origin.url + "/files/"}
            assert dl.mode == 0o755
            assert await core.fs.lookup(dl, "other.bin") is not None
            assert await core.cat("dl/other.bin") == b"at the origin"
    finally:
        origin.close()


async def test_sync_reports_a_fill_from_the_origin_that_stalled(tmp_path: Path) -> None:
    origin = Origin()
    origin.files["/files/slow.bin"] = os.urandom(3 << 20)
    try:
        async with running_core(MemoryStore(), tmp_path / "c", timeout=1) as core:
            dl = await core.fs.mkdir(await core.node(""), "dl", 0o755, 0, 0)
            await core.daemon.xattrs.set(dl, ORIGIN, (origin.url + "/files/").encode())
            node = await core.fs.lookup(dl, "slow.bin")
            assert node is not None
            origin.stall["/files/slow.bin"] = 30  # the GET gets no answer
            fh, _ = await core.fs.open(node, os.O_RDONLY)
            started = time.monotonic()
            report = await core.fs.sync()
            assert report["origin_fills_unfinished"] == ["dl/slow.bin"]
            assert 1 <= time.monotonic() - started < 10
            await core.fs.release(fh)
    finally:
        origin.close()


class FlakyStore(MemoryStore):
    """Fails chosen (request, key) pairs with a chosen error, until told otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.failing: dict[tuple[str, str], Exception] = {}

    def _fail(self, what: str, key: str) -> None:
        exc = self.failing.get((what, key))
        if exc is not None:
            raise type(exc)(str(exc))

    def put(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        self._fail("put", key)
        return super().put(key, data, metadata)

    def copy(self, src: str, dst: str, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        self._fail("copy", dst)
        return super().copy(src, dst, metadata)


async def test_refused_upload_is_dropped_reported_and_answers_its_errno(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyStore()
    store.failing[("put", "bad.txt")] = InvalidArgument("the store says no (test)")
    store.failing[("put", "denied.txt")] = AccessDenied("access denied (test)")
    async with running_core(store, tmp_path / "c", timeout=2) as core:
        with trio.fail_after(20):
            with pytest.raises(CacheFSError) as info:
                await core.write("bad.txt", b"x")
            assert info.value.errno == errno.EINVAL
            with pytest.raises(CacheFSError) as info:
                await core.write("denied.txt", b"x")
            assert info.value.errno == errno.EACCES
            await core.write("good.txt", b"fine")  # nothing else is held up
        wb = core.daemon.writeback
        assert wb.pending() == []  # dropped: not retried forever
        refused = core.fs.status()["refused"]
        assert [(r["key"], r["errno"]) for r in refused] == \
            [("bad.txt", "EINVAL"), ("denied.txt", "EACCES")]
        assert [r["attempts"] for r in refused] == [1, 3]  # credentials may come back
        assert core.daemon.stats.snapshot()["counters"]["refused"] == 2
        assert store.objects["good.txt"][0] == b"fine"
    assert "EINVAL" in caplog.text and "dropped from the journal" in caplog.text
    # Nothing refused comes back from the journal.
    async with running_core(store, tmp_path / "c") as core:
        assert core.daemon.writeback.pending() == []


async def test_failing_op_does_not_hold_unrelated_ops_and_its_waiters_wake(
        tmp_path: Path) -> None:
    store = FlakyStore()
    store.add("a.txt", b"stored")
    store.failing[("copy", "b.txt")] = StoreUnavailable("b.txt: store is failing (test)")
    async with running_core(store, tmp_path / "c", timeout=2) as core:
        root = await core.node("")
        with trio.fail_after(20):
            await core.cat("a.txt")
            with pytest.raises(CacheFSError) as info:
                await core.fs.rename(root, "a.txt", root, "b.txt")
            assert info.value.errno == errno.EIO
            pending = core.fs.status()["pending"]
            assert [(p["op"], p["key"], p["errno"]) for p in pending] == \
                [("move", "b.txt", "EIO")]
            assert "store is failing" in pending[0]["error"]
            # Unrelated changes go through while it keeps failing.
            await core.write("other.txt", b"1")
            await core.fs.mkdir(root, "d", 0o755, 0, 0)
            # An unlink of the same key waits behind the failing move: it is told, not held.
            with pytest.raises(CacheFSError) as info:
                await core.fs.unlink(root, "a.txt")
            assert info.value.errno == errno.EIO
        assert store.objects["other.txt"][0] == b"1" and "d/" in store.objects
        store.failing.clear()
        with trio.fail_after(20):
            assert await core.daemon.writeback.drain() == []
        assert store.objects["b.txt"][0] == b"stored"


async def test_waiter_gives_up_after_the_timeout_when_nothing_moves(tmp_path: Path) -> None:
    store = FlakyStore()
    store.add("a.txt", b"stored")
    # An unexpected error is retried a minute later: the caller must not wait that long.
    store.failing[("copy", "b.txt")] = RuntimeError("a bug (test)")
    async with running_core(store, tmp_path / "c", timeout=2) as core:
        root = await core.node("")
        await core.cat("a.txt")
        start = trio.current_time()
        with trio.fail_after(20), pytest.raises(CacheFSError) as info:
            await core.fs.rename(root, "a.txt", root, "b.txt")
        assert info.value.errno == errno.EIO
        assert trio.current_time() - start < 10
        store.failing.clear()
        with trio.fail_after(20):
            assert await core.daemon.writeback.drain() == []


async def test_too_long_keys_are_refused_before_anything_changes(tmp_path: Path) -> None:
    store = MemoryStore()
    d = "/".join(["d" * 255] * 3 + ["e" * 200])  # 968 bytes: room for 55-byte names below it
    store.add(f"{d}/kept", b"1")
    store.add("tree/" + "t" * 50 + "/leaf", b"2")
    store.add("small/x/leaf", b"3")
    async with running_core(store, tmp_path / "c") as core:
        deep, root = await core.node(d), await core.node("")
        before = len(store.requests)
        for attempt in (
                core.fs.mkdir(deep, "n" * 43, 0o755, 0, 0),  # its manifest would not fit
                core.fs.create(deep, "n" * 56, 0o644, os.O_WRONLY, 0, 0),
                core.fs.symlink(deep, "n" * 56, "target", 0, 0),
                core.fs.mknod(deep, "n" * 56, stat.S_IFIFO | 0o644, 0, 0),
                core.fs.rename(deep, "kept", deep, "n" * 56),
                # every key below a directory, as it would be after the move
                core.fs.rename(root, "tree", deep, "m" * 10)):
            with pytest.raises(CacheFSError) as info:
                await attempt
            assert info.value.errno == errno.ENAMETOOLONG
        writes = {"put", "copy", "delete", "create_multipart"}
        assert not [r for r in store.requests[before:] if r[0] in writes]
        assert await core.ls(d) == ["kept"]
        with pytest.raises(CacheFSError) as info:
            await core.fs.mknod(deep, "fifo", stat.S_IFIFO | 0o644, 0, 0)
        assert info.value.errno == errno.EPERM
        await core.fs.mkdir(deep, "n" * 42, 0o755, 0, 0)  # the manifest just fits
        await core.write(f"{d}/" + "f" * 55, b"fits")
        await core.fs.rename(root, "small", deep, "m")
        assert store.objects[d + "/m/x/leaf"][0] == b"3"


async def test_journaled_op_with_a_key_too_long_is_refused_without_a_request(
        tmp_path: Path) -> None:
    store = MemoryStore()
    async with running_core(store, tmp_path / "c") as core:
        wb = core.daemon.writeback
        key = "/".join(["k" * 255] * 5) + "/"  # as an older version could have journaled it
        op = await wb.submit("put", key, meta={})
        with trio.fail_after(10), pytest.raises(CacheFSError) as info:
            await wb.wait(op)
        assert info.value.errno == errno.ENAMETOOLONG
        assert ("put", key) not in store.requests and wb.pending() == []
        assert [r["errno"] for r in wb.refused] == ["ENAMETOOLONG"]
