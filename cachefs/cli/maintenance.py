"""`cachefs verify` and `cachefs clear`: looking after a cache dir.

Both take the cache dir's lock, so they never race a mount: with a mount running, `verify` goes
through the mount instead (which scrubs its own blob tier) and `clear` refuses.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import trio

from ..daemon.lock import cache_dir_lock
from ..remote.journal import JOURNAL, pending_records
from ..tier.blobs import BlobTier, digest_path
from ..tier.db import Database

log = logging.getLogger(__name__)


def _tier(cache_dir: Path) -> tuple[Database, BlobTier]:
    db = Database(cache_dir / "index.db")
    tier = BlobTier(cache_dir, db, capacity=1 << 62, disk=trio.CapacityLimiter(1),
                    cpu=trio.CapacityLimiter(1))
    tier.start()  # also re-indexes blobs the index lost, and cleans interrupted writes
    return db, tier


def pending_digests(cache_dir: Path) -> set[str]:
    """Blobs the journal still needs (content not yet in the store)."""
    return {r["digest"] for r in pending_records(cache_dir / JOURNAL) if r.get("digest")}


def verify(cache_dir: Path, repair: bool) -> dict[str, Any]:
    """Re-hash every blob; with ``repair``, drop the bad ones (they are fetched again)."""
    with cache_dir_lock(cache_dir):
        db, tier = _tier(cache_dir)
        try:
            bad, checked, size = [], 0, 0
            for digest in list(tier.entries):
                checked += 1
                size += tier.entries[digest].size
                try:
                    actual, _, _ = digest_path(tier.path(digest))
                except FileNotFoundError:
                    actual = "missing"
                if actual != digest:
                    bad.append(digest)
            needed = pending_digests(cache_dir)
            lost = sorted(d for d in needed if d in bad or d not in tier.entries)
            if repair and bad:
                trio.run(_discard, tier, bad)
            return {"checked": checked, "bytes": size, "bad": bad, "repaired": repair,
                    "pending_uploads_damaged": lost}
        finally:
            db.close()


async def _discard(tier: BlobTier, digests: list[str]) -> None:
    for digest in digests:
        await tier.discard(digest, "failed `cachefs verify`")
    await tier.flush()


def clear(cache_dir: Path) -> dict[str, Any]:
    """Empty the blob tier, keeping only what pending uploads still need."""
    with cache_dir_lock(cache_dir):
        keep = pending_digests(cache_dir)
        db, tier = _tier(cache_dir)
        try:
            drop = [d for d in tier.entries if d not in keep]
            freed = sum(tier.entries[d].size for d in drop)
            trio.run(_discard_quietly, tier, drop)
        finally:
            db.close()
        for sub in (cache_dir / "blobs").iterdir():
            if sub.is_dir() and not any(sub.iterdir()):
                shutil.rmtree(sub, ignore_errors=True)
        return {"removed": len(drop), "bytes": freed, "kept_for_uploads": len(keep)}


async def _discard_quietly(tier: BlobTier, digests: list[str]) -> None:
    logging.getLogger("cachefs.tier.blobs").setLevel(logging.ERROR)
    for digest in digests:
        await tier.discard(digest, "cleared")
    await tier.flush()
