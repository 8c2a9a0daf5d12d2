"""`cachefs pack DIR KEY`: save a directory tree as one pack object.

The tree is walked in the order readers walk it (sorted names, directories entered where they
come), files are read once (large ones twice: hashed first so duplicates are stored once), frames
are compressed on every core while the next fills, and compressed bytes stream into a parallel
multipart upload. Memory stays at a few frames and parts whatever the tree's size.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import CacheFSError, Exists, InvalidArgument
from ..store import MIN_PART_SIZE, ObjectInfo, Store
from .format import FRAME_TARGET, PackBuilder, Toc

log = logging.getLogger(__name__)

PART_SIZE = 16 << 20


class SavedMeanwhile(Exists):
    """The key was absent when the pack was begun, and stored by another writer before the
    pack's own write could create it: the race was lost at the last, atomic step."""

PARTS_IN_FLIGHT = 4


class MultipartSink:
    """Bytes in order -> one object: parts uploaded in parallel as they fill."""

    def __init__(self, store: Store, key: str, metadata: Mapping[str, str],
                 part_size: int = PART_SIZE, replace: bool = True) -> None:
        self.store = store
        #: False: the last request refuses an existing key (Exists), atomically where the
        #: store can (Store.put_new)
        self.replace = replace
        self.key = key
        self.metadata = dict(metadata)
        self.part_size = max(part_size, MIN_PART_SIZE)
        self.buffer = bytearray()
        self.size = 0
        self.upload_id: str | None = None
        self.parts: dict[int, concurrent.futures.Future[str]] = {}
        self.pool = concurrent.futures.ThreadPoolExecutor(PARTS_IN_FLIGHT)
        self.slots = threading.BoundedSemaphore(PARTS_IN_FLIGHT)

    def write(self, data: bytes) -> None:
        self.buffer += data
        self.size += len(data)
        while len(self.buffer) >= self.part_size:
            self._send(bytes(self.buffer[:self.part_size]))
            del self.buffer[:self.part_size]

    def _send(self, part: bytes) -> None:
        if self.upload_id is None:
            self.upload_id = self.store.create_multipart(self.key, self.metadata)
        self.slots.acquire()  # at most PARTS_IN_FLIGHT parts in memory
        number = len(self.parts) + 1

        def upload() -> str:
            try:
                assert self.upload_id is not None
                return self.store.upload_part(self.key, self.upload_id, number, part)
            finally:
                self.slots.release()

        self.parts[number] = self.pool.submit(upload)

    def finish(self) -> ObjectInfo:
        try:
            if self.upload_id is None:
                put = self.store.put if self.replace else self.store.put_new
                return put(self.key, bytes(self.buffer), self.metadata)
            if self.buffer:
                self._send(bytes(self.buffer))
                self.buffer.clear()
            done = [(n, f.result()) for n, f in sorted(self.parts.items())]
            complete = (self.store.complete_multipart if self.replace
                        else self.store.complete_multipart_new)
            return complete(self.key, self.upload_id, done, self.size)
        finally:
            self.pool.shutdown()

    def abort(self) -> None:
        self.pool.shutdown(cancel_futures=True)
        if self.upload_id is not None:
            with contextlib.suppress(CacheFSError):
                self.store.abort_multipart(self.key, self.upload_id)


def walk(directory: Path, rel: str = "") -> Iterator[tuple[str, os.stat_result, Path]]:
    """(relative path, lstat, path) in tree order: sorted names, directories entered where
    they come, which is the order `cp -r` and `tar c` read them."""
    with os.scandir(directory) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        path = f"{rel}/{entry.name}" if rel else entry.name
        st = entry.stat(follow_symlinks=False)
        yield path, st, Path(entry.path)
        if stat.S_ISDIR(st.st_mode):
            yield from walk(Path(entry.path), path)


def tree_size(root: Path) -> tuple[int, int]:
    files = total = 0
    for _, st, _ in walk(root):
        if stat.S_ISREG(st.st_mode):
            files += 1
            total += st.st_size
    return files, total


def build(root: Path, sink: Callable[[bytes], None], level: int,
          progress: Callable[[int], None] = lambda n: None) -> Toc:
    """Pack the tree at ``root`` into ``sink``."""
    with concurrent.futures.ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
        builder = PackBuilder(sink, level, pool)
        for rel, st, path in walk(root):
            mode, mtime = stat.S_IMODE(st.st_mode), st.st_mtime_ns
            if stat.S_ISDIR(st.st_mode):
                builder.add_dir(rel, mode, mtime)
            elif stat.S_ISLNK(st.st_mode):
                builder.add_symlink(rel, os.readlink(path), mode, mtime)
            elif stat.S_ISREG(st.st_mode):
                if st.st_size <= FRAME_TARGET:
                    builder.add_file(rel, mode, mtime, path.read_bytes())
                else:
                    digest = _sha256(path)
                    with open(path, "rb") as f:
                        builder.add_large_file(rel, mode, mtime, digest, st.st_size, f)
                progress(st.st_size)
            else:
                log.warning("%s: not a file, directory or symlink: left out of the pack", path)
        return builder.finish()


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def pack_directory(root: Path, store: Store, key: str, level: int,
                   progress: Callable[[int], None] = lambda n: None,
                   force: bool = False) -> dict[str, Any]:
    """Pack ``root`` into ``key``; returns a summary for the CLI (``info``: the stored object,
    for the caller to list in its directory's manifest).

    Packs are immutable: unless ``force``, an existing ``key`` raises Exists, checked before
    any work (to fail fast) and again by the write that creates the object (atomically where
    the store supports conditional writes), so of two runners saving one key one wins and
    the other's upload is aborted, leaving the winner's object intact."""
    if not root.is_dir():
        raise InvalidArgument(f"{root} is not a directory")
    started = time.monotonic()
    if not force:
        store.conditional_writes(key)  # probed now, so a warning comes before the work
        store.refuse_existing(key)
    sink = MultipartSink(store, key, {"cachefs-pack": "1"}, replace=force)
    try:
        toc = build(root, sink.write, level, progress)
        try:
            info = sink.finish()
        except Exists:
            raise SavedMeanwhile(f"{key} was stored by another writer while this pack was "
                                 "being made") from None
    except BaseException:
        sink.abort()
        raise
    files = [e for e in toc.entries if e.kind == "f"]
    return {
        "info": info, "key": key, "etag": info.etag, "files": len(files),
        "entries": len(toc.entries), "frames": len(toc.frames),
        "bytes_in": sum(e.size for e in files), "bytes_stored": sink.size,
        "unique_files": len({e.sha256 for e in files}),
        "seconds": round(time.monotonic() - started, 2),
    }
