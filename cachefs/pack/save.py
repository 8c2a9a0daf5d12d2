"""`cachefs pack DIR KEY`: save a directory tree as one pack object.

The tree is walked in the order readers walk it (sorted names, directories entered where they
come), files are read once (large ones twice: hashed first so duplicates are stored once), frames
are compressed on every core while the next fills, and compressed bytes stream into a parallel
multipart upload (store/multipart.py). Memory stays at a few frames and parts whatever the
tree's size.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import trio

from ..errors import Exists, InvalidArgument, unwrap_group
from ..store import MIN_PART_SIZE, ObjectInfo, Store
from ..store.multipart import MultipartUpload
from .format import FRAME_TARGET, PackBuilder, Toc

log = logging.getLogger(__name__)

#: A pack's size is not known before it is written: 16 MiB parts let one reach 160 GiB within
#: S3's 10,000 parts.
PART_SIZE = 16 << 20
#: Parts wait in memory for their upload: at most this many, 64 MiB.
PARTS_IN_FLIGHT = 4


class SavedMeanwhile(Exists):
    """The key was absent when the pack was begun, and stored by another writer before the
    pack's own write could create it: the race was lost at the last, atomic step."""


class MultipartSink:
    """Bytes in order (from the builder's thread) -> one object: each part that fills goes to
    the multipart uploader (store/multipart.py); a pack smaller than one part is one PUT."""

    def __init__(self, store: Store, key: str, metadata: Mapping[str, str], *,
                 nursery: trio.Nursery, s3: trio.CapacityLimiter,
                 part_size: int = PART_SIZE, replace: bool = True) -> None:
        self.store = store
        #: False: the last request refuses an existing key (Exists), atomically where the
        #: store can (Store.put_new)
        self.replace = replace
        self.key = key
        self.metadata = dict(metadata)
        self.nursery = nursery
        self.s3 = s3
        self.part_size = max(part_size, MIN_PART_SIZE)
        self.buffer = bytearray()
        self.size = 0
        self.upload: MultipartUpload | None = None
        self.parts = 0

    def write(self, data: bytes) -> None:
        """Called in the builder's worker thread; waits while every part slot is taken."""
        self.buffer += data
        self.size += len(data)
        while len(self.buffer) >= self.part_size:
            part = bytes(self.buffer[:self.part_size])
            del self.buffer[:self.part_size]
            trio.from_thread.run(self._send, part)

    async def _send(self, part: bytes) -> None:
        if self.upload is None:
            self.upload = MultipartUpload(self.store, self.key, self.metadata,
                                          nursery=self.nursery, s3=self.s3,
                                          in_flight=PARTS_IN_FLIGHT, replace=self.replace)
        self.parts += 1
        await self.upload.send(self.parts, part)

    async def finish(self) -> ObjectInfo:
        if self.upload is None:
            put = self.store.put if self.replace else self.store.put_new
            return await trio.to_thread.run_sync(put, self.key, bytes(self.buffer),
                                                 self.metadata, limiter=self.s3)
        if self.buffer:
            await self._send(bytes(self.buffer))
            self.buffer.clear()
        return await self.upload.complete(self.size)

    async def abort(self) -> None:
        if self.upload is not None:
            await self.upload.abort()


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
    if not force:
        store.conditional_writes(key)  # probed now, so a warning comes before the work
        store.refuse_existing(key)
    return trio.run(_pack_directory, root, store, key, level, progress, force)


async def _pack_directory(root: Path, store: Store, key: str, level: int,
                          progress: Callable[[int], None], force: bool) -> dict[str, Any]:
    started = time.monotonic()
    # The build walks, reads and compresses in a worker thread (and its own pool of them); the
    # parts go up from this trio thread. Nothing else uses the store meanwhile.
    s3 = trio.CapacityLimiter(PARTS_IN_FLIGHT)
    try:
        async with trio.open_nursery() as nursery:
            sink = MultipartSink(store, key, {"cachefs-pack": "1"}, nursery=nursery, s3=s3,
                                 replace=force)
            try:
                # abandon_on_cancel: Ctrl-C ends the command at once; the abandoned build
                # stops at its next part, as the run it would hand it to is gone.
                toc = await trio.to_thread.run_sync(build, root, sink.write, level, progress,
                                                    abandon_on_cancel=True)
                try:
                    info = await sink.finish()
                except Exists:
                    raise SavedMeanwhile(f"{key} was stored by another writer while this pack "
                                         "was being made") from None
            except BaseException:
                await sink.abort()
                raise
    except BaseExceptionGroup as group:
        raise unwrap_group(group) from None
    files = [e for e in toc.entries if e.kind == "f"]
    return {
        "info": info, "key": key, "etag": info.etag, "files": len(files),
        "entries": len(toc.entries), "frames": len(toc.frames),
        "bytes_in": sum(e.size for e in files), "bytes_stored": sink.size,
        "unique_files": len({e.sha256 for e in files}),
        "seconds": round(time.monotonic() - started, 2),
    }
