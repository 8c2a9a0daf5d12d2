"""ETag checks of a fetch (remote/fetch.py), driven directly over local stores: an object whose
ETag changed since it was listed is detected (ESTALE), also between the parts of one download,
and content that does not match its MD5 ETag is never kept."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from cachefs.errors import ChecksumMismatch, ObjectChanged
from cachefs.metrics import Stats
from cachefs.remote.fetch import CHECK_ATTEMPTS, SMALL, Fetcher
from cachefs.store import ReadStream, Store
from cachefs.store.plain import PlainDirStore
from cachefs.tier.blobs import BlobTier
from cachefs.tier.db import Database

from .memstore import MemoryStore

GUARD = 20
LARGE = 3 << 20  # fetched in ranged parts


class ChangedMidway(PlainDirStore):
    """A local store whose object is replaced (with a put, as another runner would) just
    before the second GET of it: after the first part of a download, before the rest. That
    GET waits until the test lets it go, so the test can read what arrived before."""

    def __init__(self, root: Path, key: str, replacement: bytes) -> None:
        super().__init__(root)
        self.key = key
        self.replacement = replacement
        self.gets = 0
        self.gate = threading.Event()
        self.replaced = threading.Event()
        self._lock = threading.Lock()

    def open_read(self, key: str, start: int = 0, length: int | None = None,
                  etag: str | None = None) -> ReadStream:
        if key == self.key:
            with self._lock:
                self.gets += 1
                number = self.gets
            if number == 2:
                assert self.gate.wait(GUARD), "the test never let the second GET go"
                self.put(key, self.replacement, {})
                self.replaced.set()
            elif number > 2:
                self.replaced.wait(GUARD)  # the other parts come after the change too
        return super().open_read(key, start, length, etag)


@pytest.fixture
async def tier(tmp_path: Path) -> AsyncIterator[BlobTier]:
    cache = tmp_path / "cache"
    cache.mkdir()
    blobs = BlobTier(cache, Database(cache / "index.db"), 1 << 30,
                     disk=trio.CapacityLimiter(2), cpu=trio.CapacityLimiter(2))
    blobs.start()
    yield blobs


def fetcher_for(store: Store, tier: BlobTier, etag_check: bool = True) -> Fetcher:
    return Fetcher(store, tier, s3=trio.CapacityLimiter(8), disk=trio.CapacityLimiter(2),
                   cpu=trio.CapacityLimiter(2), stats=Stats(), etag_check=etag_check)


def assert_nothing_kept(tier: BlobTier, key: str, etag: str, *contents: bytes) -> None:
    assert tier.lookup(key, etag) is None
    for data in contents:
        assert not tier.has(hashlib.sha256(data).hexdigest())
    assert list(tier.tmp.iterdir()) == []  # the partial download is gone too


async def test_an_object_replaced_since_it_was_listed_is_detected(tmp_path: Path,
                                                                   tier: BlobTier) -> None:
    store = PlainDirStore(tmp_path / "store")
    old, new = b"old content", b"new content, longer"
    listed = store.put("k", old, {})
    store.put("k", new, {})  # replaced behind the listing's back
    fetcher = fetcher_for(store, tier)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            await nursery.start(fetcher.run)
            fetch = fetcher.fetch("k", listed.etag, listed.size)
            with pytest.raises(ObjectChanged) as info:
                await fetcher.wait(fetch)
            nursery.cancel_scope.cancel()
    assert info.value.errno == errno.ESTALE
    assert_nothing_kept(tier, "k", listed.etag, old, new)
    # Under the ETag it has now, the object is fetched as usual.
    current = store.head("k")
    async with trio.open_nursery() as nursery:
        await nursery.start(fetcher.run)
        digest = await fetcher.fetch_whole("k", current.etag, current.size)
        nursery.cancel_scope.cancel()
    assert digest == hashlib.sha256(new).hexdigest() == tier.lookup("k", current.etag)


async def test_an_object_replaced_between_parts_fails_the_read_with_estale(
        tmp_path: Path, tier: BlobTier) -> None:
    old, new = os.urandom(LARGE), os.urandom(LARGE)  # same size: only the ETag tells
    store = ChangedMidway(tmp_path / "store", "big", new)
    listed = store.put("big", old, {})
    fetcher = fetcher_for(store, tier)
    disk = trio.CapacityLimiter(2)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            await nursery.start(fetcher.run)
            try:
                fetch = fetcher.fetch("big", listed.etag, listed.size)
                # The first part arrived: its bytes are the old object's.
                assert await fetch.read(0, 4096, GUARD, disk) == old[:4096]
                store.gate.set()
                with pytest.raises(ObjectChanged) as info:
                    await fetch.read(LARGE - 4096, 4096, GUARD, disk)
                with pytest.raises(ObjectChanged):
                    await fetcher.wait(fetch)
            finally:
                store.gate.set()
            nursery.cancel_scope.cancel()
    assert store.replaced.is_set() and info.value.errno == errno.ESTALE
    assert_nothing_kept(tier, "big", listed.etag, old, new)


async def test_content_that_does_not_match_its_md5_etag_is_never_kept(tier: BlobTier) -> None:
    data = os.urandom(SMALL // 2)
    wrong = f'"{hashlib.md5(b"other bytes").hexdigest()}"'
    store = MemoryStore()
    store._store("k", data, {}, wrong)  # an object whose bytes changed under its ETag
    fetcher = fetcher_for(store, tier)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            await nursery.start(fetcher.run)
            with pytest.raises(ChecksumMismatch, match="ETag"):
                await fetcher.fetch_whole("k", wrong, len(data))
            nursery.cancel_scope.cancel()
    assert store.requests.count(("get", "k")) == CHECK_ATTEMPTS  # downloaded again, then given up
    assert tier.lookup("k", wrong) is None
    # A store whose ETags are not MD5s (--no-etag-check): the same bytes are taken as they are.
    lenient = fetcher_for(store, tier, etag_check=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(lenient.run)
        digest = await lenient.fetch_whole("k", wrong, len(data))
        nursery.cancel_scope.cancel()
    assert digest == hashlib.sha256(data).hexdigest() == tier.lookup("k", wrong)
