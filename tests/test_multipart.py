"""The one multipart uploader (store/multipart.py) and its three users: write-back of a closed
file, parts sent while a file is written (streamup) and `cachefs pack` (pack/save.py)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest
import trio

from cachefs.errors import CacheFSError, StoreUnavailable
from cachefs.metrics import Stats
from cachefs.pack.save import MultipartSink
from cachefs.remote.streamup import StreamUpload
from cachefs.store import MIN_PART_SIZE
from cachefs.store.multipart import MultipartUpload, part_size_for, upload_file

from .memstore import MemoryStore

MiB = 1 << 20


class PartStore(MemoryStore):
    """Counts parts in flight at once, and fails the parts it is told to."""

    def __init__(self, fail: set[int] | None = None) -> None:
        super().__init__()
        self.fail = fail or set()
        self.in_flight = self.most_in_flight = self.tried = 0
        self.count_lock = threading.Lock()

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        with self.count_lock:
            self.in_flight += 1
            self.tried += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            threading.Event().wait(0.01)  # long enough for the others to start
            if number in self.fail:
                raise StoreUnavailable(f"part {number}: 503 (test)")
            return super().upload_part(key, upload_id, number, data)
        finally:
            with self.count_lock:
                self.in_flight -= 1

    def calls(self, what: str) -> int:
        return sum(1 for w, _ in self.requests if w == what)


def limiters() -> dict[str, trio.CapacityLimiter]:
    return {"s3": trio.CapacityLimiter(16), "disk": trio.CapacityLimiter(8)}


def test_part_size_grows_to_fit_the_store_part_limit() -> None:
    assert part_size_for(1) == 8 * MiB
    assert part_size_for(200_000 * MiB) == 20 * MiB
    assert part_size_for(1, preferred=1) == MIN_PART_SIZE


def write_file(tmp_path: Path, data: bytes) -> int:
    path = tmp_path / "f"
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


async def test_a_file_goes_up_in_parallel_parts_in_order(tmp_path: Path) -> None:
    store = PartStore()
    data = os.urandom(5 * MIN_PART_SIZE + 123)
    fd = write_file(tmp_path, data)
    sent: list[int] = []
    info = await upload_file(store, "k", fd, len(data), {"m": "1"}, part_size=MIN_PART_SIZE,
                             in_flight=3, on_sent=sent.append, **limiters())
    os.close(fd)
    assert store.objects["k"][0] == data
    assert info.etag == store.objects["k"][1].etag and info.etag.endswith('-6"')
    assert info.size == len(data) and info.metadata == {"m": "1"}
    assert sum(sent) == len(data) and len(sent) == 6
    assert store.most_in_flight == 3  # parallel, and never more than asked
    assert store.calls("create_multipart") == 1


async def test_a_failed_part_aborts_the_upload_and_is_raised(tmp_path: Path) -> None:
    store = PartStore(fail={1, 2, 3, 4})
    data = os.urandom(4 * MIN_PART_SIZE)
    fd = write_file(tmp_path, data)
    with pytest.raises(StoreUnavailable, match="503"):
        await upload_file(store, "k", fd, len(data), {}, part_size=MIN_PART_SIZE, in_flight=1,
                          **limiters())
    os.close(fd)
    assert "k" not in store.objects
    assert store.calls("abort_multipart") == 1 and store.uploads == {}
    assert store.tried == 1  # the parts queued behind the failure never went


async def test_a_missing_part_is_never_completed() -> None:
    store = PartStore()
    async with trio.open_nursery() as nursery:
        upload = MultipartUpload(store, "k", {}, nursery=nursery, **limiters())
        upload.start(1, b"a" * MIN_PART_SIZE)
        upload.start(3, b"c")
        with pytest.raises(CacheFSError, match="parts missing"):
            await upload.complete(MIN_PART_SIZE + 1)
    assert "k" not in store.objects and store.calls("abort_multipart") == 1


async def test_send_holds_the_producer_and_stops_it_after_a_failure() -> None:
    store = PartStore(fail={1})
    async with trio.open_nursery() as nursery:
        upload = MultipartUpload(store, "k", {}, nursery=nursery, in_flight=1, **limiters())
        await upload.send(1, b"x" * MIN_PART_SIZE)
        with pytest.raises(StoreUnavailable):  # waited for part 1's slot, saw it fail
            await upload.send(2, b"y")
        await upload.abort()
    assert store.tried == 1 and store.uploads == {}


async def test_cancelled_upload_discards_its_parts(tmp_path: Path) -> None:
    store = PartStore()
    data = os.urandom(3 * MIN_PART_SIZE)
    fd = write_file(tmp_path, data)
    with trio.move_on_after(0.005):
        await upload_file(store, "k", fd, len(data), {}, part_size=MIN_PART_SIZE,
                          **limiters())
    os.close(fd)
    assert "k" not in store.objects and store.uploads == {}


async def test_stream_upload_sends_parts_while_written_and_the_rest_at_close(
        tmp_path: Path) -> None:
    store = PartStore()
    data = os.urandom(2 * MIN_PART_SIZE + 10)
    fd = write_file(tmp_path, data)
    stats = Stats()
    async with trio.open_nursery() as nursery:
        stream = StreamUpload(store, "k", {"m": "1"}, fd, part_size=MIN_PART_SIZE, in_flight=8,
                              nursery=nursery, stats=stats, **limiters())
        os.close(fd)  # the stream has its own descriptor
        stream.feed(MIN_PART_SIZE + 5)
        await stream.upload.wait()
        assert store.calls("upload_part") == 1
        info = await stream.complete(len(data))
    assert store.objects["k"][0] == data and info.etag.endswith('-2"')  # the rest in one
    assert stream.fd == -1


async def test_stream_upload_that_failed_is_aborted_at_close(tmp_path: Path) -> None:
    store = PartStore(fail={1})
    data = os.urandom(MIN_PART_SIZE + 10)
    fd = write_file(tmp_path, data)
    async with trio.open_nursery() as nursery:
        stream = StreamUpload(store, "k", {}, fd, part_size=MIN_PART_SIZE, in_flight=8,
                              nursery=nursery, stats=Stats(), **limiters())
        os.close(fd)
        stream.feed(len(data))
        with pytest.raises(CacheFSError, match="part 1"):
            await stream.complete(len(data))
    assert "k" not in store.objects and store.uploads == {} and stream.fd == -1


@pytest.mark.parametrize("size", [1000, 3 * MIN_PART_SIZE + 7])
async def test_pack_sink_writes_from_a_thread_as_one_object(size: int) -> None:
    store = PartStore()
    data = os.urandom(size)
    async with trio.open_nursery() as nursery:
        sink = MultipartSink(store, "p", {"cachefs-pack": "1"}, nursery=nursery,
                             s3=trio.CapacityLimiter(4), part_size=MIN_PART_SIZE)

        def produce() -> None:
            for i in range(0, size, 999_999):
                sink.write(data[i:i + 999_999])

        await trio.to_thread.run_sync(produce)
        info = await sink.finish()
    stored, stored_info = store.objects["p"]
    assert hashlib.sha256(stored).digest() == hashlib.sha256(data).digest()
    assert info.etag == stored_info.etag and stored_info.metadata == {"cachefs-pack": "1"}
    assert store.calls("put") == (1 if size < MIN_PART_SIZE else 0)
