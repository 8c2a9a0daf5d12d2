"""The blob tier (tier/blobs.py) under its size cap: least recently used blobs go first, blobs
held open or pinned by a pending upload are never evicted, and the cap holds once they are
let go."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import trio

from cachefs.tier.blobs import BlobTier, digest_path
from cachefs.tier.db import Database

SIZE = 1000


def make_tier(tmp_path: Path, capacity: int) -> BlobTier:
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    tier = BlobTier(cache, Database(cache / "index.db"), capacity,
                    disk=trio.CapacityLimiter(2), cpu=trio.CapacityLimiter(2))
    tier.start()
    return tier


async def add(tier: BlobTier, data: bytes, key: str) -> str:
    """Commit ``data`` as a blob bound to (key, "etag-" + key); returns its digest."""
    temp = tier.new_temp_path("t")
    temp.write_bytes(data)
    digest, size, crcs = digest_path(temp)
    assert digest == hashlib.sha256(data).hexdigest()
    await tier.commit(temp, digest, size, crcs, bindings=[(key, "etag-" + key)])
    return digest


def blob(n: int) -> bytes:
    return bytes([n]) * SIZE


def kept(tier: BlobTier, digests: dict[str, str]) -> list[str]:
    """Names of the blobs still in the tier, checked against the disk and the bindings."""
    names = []
    for name, digest in digests.items():
        on_disk = tier.path(digest).exists()
        assert tier.has(digest) == on_disk, f"{name}: index and disk disagree"
        assert (tier.lookup(name, "etag-" + name) == digest) == on_disk, name
        if on_disk:
            names.append(name)
    return names


async def test_least_recently_used_go_first_and_the_cap_holds(tmp_path: Path) -> None:
    tier = make_tier(tmp_path, capacity=3 * SIZE)
    digests = {}
    for i, name in enumerate("abc"):
        digests[name] = await add(tier, blob(i), name)
    assert kept(tier, digests) == ["a", "b", "c"] and tier.usage == 3 * SIZE
    # Reading "a" makes it the most recently used: "b" is now the oldest.
    reader = tier.open_reader(digests["a"])
    assert await reader.read(0, SIZE) == blob(0)
    reader.close()
    digests["d"] = await add(tier, blob(3), "d")
    assert kept(tier, digests) == ["a", "c", "d"]
    assert tier.usage == 3 * SIZE and tier.evictions == 1
    digests["e"] = await add(tier, blob(4), "e")
    assert kept(tier, digests) == ["a", "d", "e"]  # "c" was next
    assert tier.usage <= tier.capacity
    # Nothing of what was evicted is left in the temp directory either.
    assert list(tier.tmp.iterdir()) == []


async def test_open_and_pinned_blobs_are_never_evicted(tmp_path: Path) -> None:
    tier = make_tier(tmp_path, capacity=3 * SIZE)
    digests = {"open": await add(tier, blob(1), "open"),
               "pinned": await add(tier, blob(2), "pinned")}
    reader = tier.open_reader(digests["open"])  # a file held open
    tier.pin(digests["pinned"])  # a pending upload's content
    digests["old"] = await add(tier, blob(3), "old")  # the two held ones are older
    # The two oldest are held: the oldest blob nobody holds goes instead.
    digests["new"] = await add(tier, blob(4), "new")
    assert kept(tier, digests) == ["open", "pinned", "new"]
    assert tier.usage == 3 * SIZE
    digests["newer"] = await add(tier, blob(5), "newer")
    assert kept(tier, digests) == ["open", "pinned", "newer"]
    assert await reader.read(0, SIZE) == blob(1)  # the open reader still reads its blob
    # With the cap full of held blobs, the cap still holds: an unheld blob cannot stay.
    tier.pin(digests["newer"])
    digests["extra"] = await add(tier, blob(6), "extra")
    assert kept(tier, digests) == ["open", "pinned", "newer"]
    assert tier.usage == 3 * SIZE
    # Let go: what is least recently used goes first when room is needed.
    reader.close()
    tier.unpin(digests["pinned"])
    tier.unpin(digests["newer"])
    await tier.evict(need=SIZE)
    assert tier.usage <= tier.capacity - SIZE
    assert kept(tier, digests) == ["open", "newer"]  # "pinned" was the least recent


async def test_a_pin_per_holder(tmp_path: Path) -> None:
    """Two holders pin one blob: it stays until both let go."""
    tier = make_tier(tmp_path, capacity=SIZE)
    digest = await add(tier, blob(1), "x")
    first = tier.open_reader(digest)
    second = tier.open_reader(digest)
    first.close()
    await tier.evict(need=SIZE)
    assert tier.has(digest)
    second.close()
    await tier.evict(need=SIZE)
    assert not tier.has(digest) and not tier.path(digest).exists()


async def test_a_blob_larger_than_the_cap_is_not_kept_once_let_go(tmp_path: Path) -> None:
    tier = make_tier(tmp_path, capacity=SIZE // 2)
    small = await add(tier, os.urandom(10), "small")
    big = await add(tier, blob(9), "big")  # evicted at once: it alone breaks the cap
    assert not tier.has(big) and not tier.has(small)
    assert tier.usage == 0
