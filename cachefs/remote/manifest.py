"""Per-directory manifests: the attributes a listing cannot carry.

S3 listings give name, size, ETag and date only. Modes, owners, mtimes, symlink targets and
extended attributes (such as ``user.cachefs.origin``) of every entry in a directory are kept in one
hidden object, ``DIR/.cachefs.dir``, so a listing costs one LIST and one GET, never a HEAD per
object. An entry applies only while its ETag matches the object's: a manifest can lag behind the
objects, never contradict them. Each object also carries its own attributes in its metadata
(``x-amz-meta-mode`` and friends, as s3fs-fuse writes them), which is what a reader falls back on.

Changes are collected per directory and written at most once a second (and at sync/unmount),
merged with what other writers stored meanwhile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import trio

from ..errors import CacheFSError, NameTooLong, NotFound
from ..names import MANIFEST_NAME
from ..store import ObjectInfo, Store
from ..store.retry import BACKGROUND
from ..tier.listings import MetadataCache

log = logging.getLogger(__name__)

FORMAT = "cachefs-dir"
VERSION = 1
#: seconds between manifest writes for a busy directory
INTERVAL = 1.0
#: after a failed write: the background policy, from twice the interval (2 s, 4 s, … 60 s)
FLUSH_RETRY = dataclasses.replace(BACKGROUND, base=2 * INTERVAL)

Entry = dict[str, Any]


def manifest_key(prefix: str, dir_path: str) -> str:
    return f"{prefix}{dir_path}/{MANIFEST_NAME}" if dir_path else f"{prefix}{MANIFEST_NAME}"


def parse(data: bytes) -> dict[str, Entry]:
    """Entries of a manifest; anything unreadable counts as empty (it is only an accelerator)."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        return {}
    entries = doc.get("entries")
    return {str(k): v for k, v in entries.items() if isinstance(v, dict)} \
        if isinstance(entries, dict) else {}


def render(entries: Mapping[str, Entry]) -> bytes:
    return json.dumps({"format": FORMAT, "version": VERSION, "entries": dict(sorted(
        entries.items()))}, separators=(",", ":"), ensure_ascii=False).encode()


def add_pack_entry(store: Store, key: str, info: ObjectInfo, mode: int = 0o555) -> None:
    """Tell mounts that ``key`` is a pack: its directory's manifest gets a 'p' entry.

    A read-modify-write of the manifest: on a mount, call ``ManifestWriter.add_pack`` instead,
    which runs it under the writer's lock."""
    parent, _, name = key.rpartition("/")
    mkey = f"{parent}/{MANIFEST_NAME}" if parent else MANIFEST_NAME
    try:
        _, data = store.read_all(mkey)
        entries = parse(data)
    except NotFound:
        entries = {}
    now = time.time_ns()
    entries[name] = {"type": "p", "etag": info.etag, "mode": mode, "uid": os.getuid(),
                     "gid": os.getgid(), "mtime_ns": now}
    store.put(mkey, render(entries), {})


def _clobbers_pack(stored: Entry | None, name: str, entry: Entry) -> bool:
    """Whether ``entry`` (a NAME.pack directory still being built here) would hide a pack
    another runner has stored under that name: packs are immutable, and the store refuses
    this mount's own pack for that key (remote/writeback.py), so the stored one stays listed."""
    return (stored is not None and stored.get("type") == "p" and entry.get("type") == "d"
            and name.endswith(".pack"))


class ManifestWriter:
    """Writes changed attributes to each directory's manifest, batched and merged."""

    def __init__(self, store: Store, prefix: str, metadata: MetadataCache,
                 s3: trio.CapacityLimiter,
                 entries_for: Callable[[str, set[str]],
                                       Awaitable[dict[str, Entry | None] | None]],
                 on_written: Callable[[str, str | None], None]) -> None:
        self.store = store
        self.prefix = prefix
        self.metadata = metadata
        self.s3 = s3
        #: dir path -> names whose entry changed; ``entries_for`` gives their current state
        self.entries_for = entries_for
        self.on_written = on_written
        self.dirty: dict[str, set[str]] = {}
        #: what the flush in progress is writing
        self._flushing: dict[str, set[str]] = {}
        self.failures = 0
        self._wake = trio.Event()
        self._lock = trio.Lock()

    async def start(self) -> None:
        """Pick up changes a previous run did not get to write."""
        for directory, names in (await self.metadata.load_manifest_dirty()).items():
            self.dirty.setdefault(directory, set()).update(names)

    def mark(self, dir_path: str, name: str) -> None:
        self.dirty.setdefault(dir_path, set()).add(name)
        self._wake.set()

    def pending(self, dir_path: str, name: str) -> bool:
        """Whether the entry changed here and the stored manifest does not have it yet (a
        manifest read meanwhile is older than what the mount shows)."""
        return name in self.dirty.get(dir_path, ()) or name in self._flushing.get(dir_path, ())

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """No manifest is written inside the block (a rename moves the names it would write)."""
        async with self._lock:
            yield

    async def add_pack(self, key: str, info: ObjectInfo, mode: int = 0o555) -> None:
        """List pack ``key`` in its directory's manifest, under the lock every write takes."""
        async with self._lock:
            await trio.to_thread.run_sync(add_pack_entry, self.store, key, info, mode,
                                          limiter=self.s3)

    def moved(self, old_dir: str, new_dir: str) -> None:
        """A directory was renamed: its pending names follow it."""
        for path in [p for p in self.dirty if p == old_dir or p.startswith(old_dir + "/")]:
            self.dirty.setdefault(new_dir + path[len(old_dir):], set()).update(
                self.dirty.pop(path))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        delay, failures = INTERVAL, 0
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await trio.sleep(delay)
            try:
                await self.flush()
                delay, failures = INTERVAL, 0
            except CacheFSError as e:
                failures += 1
                delay = FLUSH_RETRY.delay(failures)
                log.warning("writing directory manifests failed (retry in %.0fs): %s", delay, e)
            except Exception:  # never take the mount down for a manifest
                failures += 1
                delay = FLUSH_RETRY.delay(failures)
                log.exception("writing directory manifests failed (retry in %.0fs)", delay)

    async def flush(self) -> None:
        """Write every pending change now."""
        async with self._lock:
            work, self.dirty = self.dirty, {}
            if not work:
                return
            self._flushing = work
            try:
                await self.metadata.save_manifest_dirty(
                    (d, n) for d, names in work.items() for n in names)
                errors: list[str] = []
                async with trio.open_nursery() as nursery:
                    for directory, names in work.items():
                        nursery.start_soon(self._flush_dir, directory, names, errors)
            finally:
                self._flushing = {}
            if errors:
                raise CacheFSError(f"{len(errors)} manifest(s) not written: {errors[0]}")

    async def _flush_dir(self, directory: str, names: set[str], errors: list[str]) -> None:
        changes = await self.entries_for(directory, names)
        if changes is None:  # the directory is gone
            await self.metadata.clear_manifest_dirty(directory, names)
            return
        # Entries still waiting for their upload have no ETag yet: they come back when it lands.
        waiting = {n for n, e in changes.items() if e is not None and e.get("type") != "d"
                   and not e.get("etag")}
        ready = {n: e for n, e in changes.items() if n not in waiting}
        key = manifest_key(self.prefix, directory)

        def write() -> str | None:
            try:
                _, data = self.store.read_all(key)
                entries = parse(data)
            except NotFound:
                entries = {}
            for name, entry in ready.items():
                if entry is None:
                    entries.pop(name, None)
                elif not _clobbers_pack(entries.get(name), name, entry):
                    entries[name] = entry
            if not entries:
                self.store.delete(key)
                return None
            return self.store.put(key, render(entries), {}).etag

        try:
            etag = await trio.to_thread.run_sync(write, limiter=self.s3)
        except NameTooLong as e:
            # A directory made elsewhere, too deep for its manifest: retrying cannot help. Its
            # files keep their attributes in their own metadata.
            log.error("the manifest of %s cannot be stored, dropped: %s", directory or "/", e)
            await self.metadata.clear_manifest_dirty(directory, names)
            return
        except CacheFSError as e:
            self.failures += 1
            errors.append(str(e))
            for name in names:
                self.mark(directory, name)
            return
        self.on_written(directory, etag)
        await self.metadata.clear_manifest_dirty(directory, set(ready))
