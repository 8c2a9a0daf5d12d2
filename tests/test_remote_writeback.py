"""Write-back (remote/writeback.py) driven directly over the in-memory store: a later change of a
key supersedes a queued earlier put of it, changes of one key reach the store in the order they
were made, and a key held up in the store does not hold up other keys."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

import trio

from cachefs.metrics import Stats
from cachefs.remote.journal import JOURNAL, Op, pending_records
from cachefs.remote.writeback import WriteBack
from cachefs.store import ObjectInfo
from cachefs.tier.blobs import BlobTier, digest_path
from cachefs.tier.db import Database

from .memstore import MemoryStore

#: no test here may take longer than this (a blocked store thread would otherwise hang it)
GUARD = 20


class GatedStore(MemoryStore):
    """A store whose put of one key blocks (in its worker thread) until the test opens the
    gate, and says on the trio thread when it began."""

    def __init__(self, gated_key: str) -> None:
        super().__init__()
        self.gated_key = gated_key
        self.gate = threading.Event()
        self.entered = trio.Event()

    def put(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        if key == self.gated_key and not self.gate.is_set():
            trio.from_thread.run_sync(self.entered.set)
            assert self.gate.wait(GUARD), "the test never opened the gate"
        return super().put(key, data, metadata)


class Setup:
    def __init__(self, tmp_path: Path, store: MemoryStore) -> None:
        cache = tmp_path / "cache"
        cache.mkdir()
        self.cache = cache
        self.store = store
        self.blobs = BlobTier(cache, Database(cache / "index.db"), 1 << 30,
                              disk=trio.CapacityLimiter(2), cpu=trio.CapacityLimiter(2))
        self.blobs.start()
        self.wb = WriteBack(store, self.blobs, cache, s3=trio.CapacityLimiter(8),
                            disk=trio.CapacityLimiter(2), stats=Stats(), timeout=GUARD)
        self.wb.start()

    async def put(self, key: str, data: bytes) -> Op:
        temp = self.blobs.new_temp_path("t")
        temp.write_bytes(data)
        digest, size, crcs = digest_path(temp)
        await self.blobs.commit(temp, digest, size, crcs, durable=True)
        return await self.wb.submit("put", key, digest=digest, size=size)

    def pins(self, op: Op) -> int:
        assert op.digest is not None
        entry = self.blobs.entry(op.digest)
        assert entry is not None
        return entry.pins

    def puts(self, key: str) -> int:
        return sum(1 for what, k in self.store.requests if what == "put" and k == key)

    def pending(self) -> list[dict[str, object]]:
        return pending_records(self.cache / JOURNAL)


async def test_a_later_put_supersedes_a_queued_one(tmp_path: Path) -> None:
    s = Setup(tmp_path, MemoryStore())
    with trio.fail_after(GUARD):
        first = await s.put("k", b"first")
        second = await s.put("k", b"second")
        # The first never started: it is done at once, without a request, its blob let go.
        assert first.done.is_set() and first.superseded
        assert s.wb.pending() == [second]
        assert (s.pins(first), s.pins(second)) == (0, 1)
        assert [r["seq"] for r in s.pending()] == [second.seq]  # the journal agrees
        async with trio.open_nursery() as nursery:
            await nursery.start(s.wb.run)
            await s.wb.wait(second)
            nursery.cancel_scope.cancel()
    assert s.store.objects["k"][0] == b"second"
    assert s.puts("k") == 1  # the superseded content was never sent
    assert s.pending() == []


async def test_a_delete_supersedes_a_queued_put(tmp_path: Path) -> None:
    s = Setup(tmp_path, MemoryStore())
    s.store.add("k", b"in the store")
    with trio.fail_after(GUARD):
        put = await s.put("k", b"never sent")
        delete = await s.wb.submit("delete", "k")
        assert put.superseded and s.wb.pending() == [delete]
        async with trio.open_nursery() as nursery:
            await nursery.start(s.wb.run)
            await s.wb.wait(delete)
            nursery.cancel_scope.cancel()
    assert "k" not in s.store.objects and s.puts("k") == 0


async def test_changes_of_one_key_run_in_order_and_other_keys_go_on(tmp_path: Path) -> None:
    store = GatedStore("k")
    s = Setup(tmp_path, store)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            await nursery.start(s.wb.run)
            try:
                first = await s.put("k", b"first")
                await store.entered.wait()  # the first put of k is in the store's hands
                # A started put is not superseded: what comes next on k waits behind it.
                delete = await s.wb.submit("delete", "k")
                second = await s.put("k", b"second")
                assert not first.superseded and not delete.superseded
                assert [op.seq for op in s.wb.pending()] == [first.seq, delete.seq, second.seq]
                # Another key is stored meanwhile, with eight workers free.
                other = await s.put("other", b"other")
                await s.wb.wait(other)
                assert not delete.started and not second.started
                assert store.requests == [("put", "other")]  # nothing of k got through yet
                store.gate.set()
                await s.wb.wait(second)
                assert delete.done.is_set() and first.done.is_set()
                nursery.cancel_scope.cancel()
            finally:
                store.gate.set()  # a failure must not leave the thread blocked
    of_k = [what for what, key in store.requests if key == "k"]
    assert of_k == ["put", "delete", "put"]
    assert store.objects["k"][0] == b"second"
    assert s.pending() == []
