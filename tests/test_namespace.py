"""Listings against local changes, driven on the core: what the mount changed while a listing
was on its way must survive the listing, and keys come only from nodes under the root."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from cachefs.errors import Detached
from cachefs.store import ListPage

from .harness import Core, running_core
from .memstore import MemoryStore


class SlowTreeListings(MemoryStore):
    """Listings of a whole subtree are taken at once but answered only when ``gate`` opens."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.taken = threading.Event()

    def list_page(self, prefix: str, delimiter: str | None = "/",
                  token: str | None = None) -> tuple[ListPage, str | None]:
        result = super().list_page(prefix, delimiter, token)
        if delimiter is None:
            self.taken.set()
            self.gate.wait(30)
        return result


async def _walk_started(core: Core, store: SlowTreeListings) -> None:
    """``ls`` of the root, then of a directory in it: the walk lists the whole tree."""
    await core.ls("")
    await core.ls("w")
    with trio.fail_after(10):
        while not store.taken.is_set():
            await trio.sleep(0.01)


async def test_a_listing_that_began_earlier_never_undoes_local_changes(tmp_path: Path) -> None:
    store = SlowTreeListings()
    store.add("w/keep.txt", b"k")
    store.add("gone.txt", b"g")
    async with running_core(store, tmp_path / "c") as core:
        w = await core.node("w")
        await _walk_started(core, store)
        # Meanwhile: a new directory, a file in it, a removal, all in the store already.
        fresh = await core.fs.mkdir(core.fs.ns.root, "fresh", 0o755, 0, 0)
        await core.write("fresh/f.txt", b"new")
        await core.fs.unlink(core.fs.ns.root, "gone.txt")
        store.gate.set()
        with trio.fail_after(10):
            while core.fs.ns._flat:
                await trio.sleep(0.01)
        assert sorted(await core.ls("")) == ["fresh", "w"]  # nothing dropped, nothing back
        assert await core.node("fresh") is fresh
        assert await core.node("w") is w
        assert core.fs.ns.key(await core.node("fresh/f.txt")) == "fresh/f.txt"
    assert store.objects["fresh/f.txt"][0] == b"new"
    assert "gone.txt" not in store.objects


async def test_a_detached_node_has_no_key(tmp_path: Path) -> None:
    store = MemoryStore()
    store.add("d/f.txt", b"old")
    store.add("d/g.txt", b"other")
    async with running_core(store, tmp_path / "c") as core:
        d = await core.node("d")
        f = await core.node("d/f.txt")
        fh, _ = await core.fs.open(f, os.O_WRONLY | os.O_TRUNC)
        await core.fs.write(fh, 0, b"written to a file then replaced")
        await core.fs.rename(d, "g.txt", d, "f.txt")  # replaces the open file
        with pytest.raises(Detached):
            f.path()
        await core.fs.flush(fh)
        await core.fs.release(fh)
    # The replaced file's bytes are nowhere: not at its old key, not at a shorter one.
    assert store.objects["d/f.txt"][0] == b"other"
    assert all(data[0] != b"written to a file then replaced" for data in store.objects.values())


async def test_a_remount_does_not_list_the_roots_own_attributes_as_a_child(tmp_path: Path) -> None:
    """The listing cache keeps the root's attributes as an entry named '.' beside its
    children; a remount must not show it as a directory (a subtree listing kept it, and the
    next flush of the listings failed on a duplicate row)."""
    store = MemoryStore()
    store.add("a/f.txt", b"1")
    async with running_core(store, tmp_path / "c") as core:
        await core.daemon.xattrs.set(core.fs.ns.root, "user.note", b"root")  # saves SELF
        assert await core.ls("") == ["a"]
        await core.fs.sync()
    async with running_core(store, tmp_path / "c", metadata_ttl=0) as core:
        assert await core.ls("") == ["a"]
        assert await core.ls("a") == ["f.txt"]  # a walk: the whole tree is listed too
        with trio.fail_after(10):
            while core.fs.ns._flat:
                await trio.sleep(0.01)
        assert "." not in (core.fs.ns.root.children or {})
        await core.fs.sync()  # flushes the listings


async def test_a_remount_lists_from_the_cache_dir_and_starts_no_walk(tmp_path: Path) -> None:
    """Listings kept in the cache dir and still fresh are a remount's listings: walking the
    tree again (a warm `find`, `cp -r`) asks the store nothing. (It used to take them for a
    walk through the store and list the whole subtree again, which readers waited for.)"""
    store = MemoryStore()
    for i in range(3):
        store.add(f"m{i}@v1/pkg/f.go", b"package pkg\n")
    async with running_core(store, tmp_path / "c") as core:
        for path in ("", "m0@v1", "m0@v1/pkg", "m1@v1", "m1@v1/pkg"):
            await core.ls(path)
        await core.fs.sync()  # flushes the listings
    async with running_core(store, tmp_path / "c") as core:
        store.requests.clear()
        assert await core.ls("") == ["m0@v1", "m1@v1", "m2@v1"]
        assert await core.ls("m0@v1") == ["pkg"]
        assert await core.ls("m0@v1/pkg") == ["f.go"]
        assert await core.ls("m1@v1/pkg") == ["f.go"]
        await trio.lowlevel.checkpoint()  # a walk would have started by now
        assert not core.fs.ns._flat
        assert [r for r in store.requests if r[0] == "list"] == []
