"""Packs in the mount: a pack object shows as a read-only directory tree.

Its table of contents is fetched once (trailer, then table: two ranged GETs), kept in the blob tier
under the pack's (key, ETag), and turned into nodes in one go: listings and `stat` below a pack
never touch the store. A file's bytes live in frames; a frame is fetched with one ranged GET,
decompressed, checked against its SHA-256 and kept (decompressed) in the blob tier, so reading a
file is a slice of a verified local blob. A corrupted frame is discarded and fetched again.

Neighbouring frames go in one GET (a run, up to RUN_BYTES): a reader's run stays inside the
frame's unit (format.unit_of: its module), so a build reading some modules fetches only them;
the prefetcher's, behind a reader going through the whole tree, runs on across units.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import posixpath
from array import array
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import trio

from ..errors import CacheFSError, ChecksumMismatch, InvalidArgument, StoreUnavailable
from ..metrics import Stats
from ..nodes import InodeTable, Kind, Node, PackDir, PackEntry
from ..store import Store
from ..store.retry import REQUEST, retry
from ..tier.blobs import BlobReader, BlobTier, DigestBuilder
from . import codec
from . import tarzst as tarpack
from .format import TRAILER, Entry, Toc, decode_toc, decode_trailer, unit_of
from .usage import UseRecorder

log = logging.getLogger(__name__)

T = TypeVar("T")

#: a damaged range (bad trailer or table) is fetched again like a failed one
PACK_REQUEST = dataclasses.replace(REQUEST, retryable=(StoreUnavailable, ChecksumMismatch))
#: compressed bytes fetched with one ranged GET at most (neighbouring frames coalesced); with
#: the prefetcher's 16 fetches at once, what a mount holds in flight stays under 64 MiB
RUN_BYTES = 4 << 20


@dataclasses.dataclass(frozen=True)
class PackRef:
    """A pack object (or a .tar.zst archive), by the version the listing showed."""

    key: str
    etag: str
    size: int
    kind: str = "pack"  # pack | tar.zst


@dataclasses.dataclass(eq=False)
class LoadedPack:
    ref: PackRef
    toc: Toc
    #: frame index -> the unit (format.unit_of) of the first file stored in it (filled by
    #: Packs.populate, in the pass that makes the nodes)
    units: dict[int, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(eq=False)
class PackFile(PackEntry):
    """A file of a loaded pack: its entry in the table, whose extents point at frames."""

    pack: LoadedPack
    entry: Entry


class Packs:
    def __init__(self, store: Store, blobs: BlobTier, table: InodeTable, stats: Stats, *,
                 s3: trio.CapacityLimiter, cpu: trio.CapacityLimiter,
                 disk: trio.CapacityLimiter, usage: UseRecorder | None = None) -> None:
        self.store = store
        #: records the last use of each pack loaded (at most once a day per key)
        self.usage = usage
        self.blobs = blobs
        self.table = table
        self.stats = stats
        self.s3 = s3
        self.cpu = cpu
        self.disk = disk
        self._frames: dict[str, trio.Event] = {}  # frame fetches in flight, by digest
        self._tocs: dict[tuple[str, str], trio.Event] = {}

    # -- the table of contents -----------------------------------------------------------------

    async def load(self, ref: PackRef) -> Toc:
        """The pack's table of contents: from the blob tier, or fetched once. The first load of
        a pack each day also records its use (pack/usage.py), alongside, not before."""
        if self.usage is None or not self.usage.claim(ref.key):
            return await self._load(ref)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(trio.to_thread.run_sync, self.usage.write, ref.key,
                                       dict(self.usage.days), limiter=self.s3))
            return await self._load(ref)

    async def _load(self, ref: PackRef) -> Toc:
        toc_key = ref.key + ("#toc" if ref.kind == "pack" else "#tar-index")
        while (ref.key, ref.etag) in self._tocs:
            await self._tocs[(ref.key, ref.etag)].wait()
        digest = self.blobs.lookup(toc_key, ref.etag)
        if digest is not None:
            try:
                data = await trio.to_thread.run_sync(self.blobs.path(digest).read_bytes,
                                                     limiter=self.disk)
                return Toc.decode(data)
            except (OSError, ChecksumMismatch) as e:
                await self.blobs.discard(digest, f"stored table of contents unusable: {e}")
        event = self._tocs[(ref.key, ref.etag)] = trio.Event()
        try:
            if ref.kind == "tar.zst":
                raw, toc = await self._fetch_tar(ref)
            else:
                raw, toc = await self._fetch_toc(ref)
            await self._keep(raw, [(toc_key, ref.etag)])
            self.stats.count("pack_tocs_fetched")
            return toc
        finally:
            del self._tocs[(ref.key, ref.etag)]
            event.set()

    async def _fetch_toc(self, ref: PackRef) -> tuple[bytes, Toc]:
        def fetch() -> tuple[bytes, Toc]:
            tail = min(ref.size, TRAILER.size)
            trailer = self._range(ref, ref.size - tail, tail)
            try:
                offset, clen, ulen, sha = decode_trailer(trailer)
            except InvalidArgument as e:  # damaged in transit, or not a pack: try again
                raise ChecksumMismatch(f"{ref.key}: {e}") from None
            compressed = self._range(ref, offset, clen)
            toc = decode_toc(compressed, ulen, sha)
            return toc.encode(), toc

        return await self._retrying(f"table of contents of {ref.key}", fetch)

    async def _fetch_tar(self, ref: PackRef) -> tuple[bytes, Toc]:
        """Download and decompress a .tar.zst once; the plain tar becomes one blob."""
        temp = self.blobs.new_temp_path("tar")
        progress = self.stats.begin("archive", ref.key, ref.size)

        def fetch() -> tuple[str, int, array]:
            with self.store.open_read(ref.key, etag=ref.etag) as stream:
                return tarpack.decompress_to(stream, temp)

        try:
            digest, size, crcs = await self._retrying(f"archive {ref.key}", fetch)
            await self.blobs.commit(temp, digest, size, crcs)
            toc = await trio.to_thread.run_sync(tarpack.index, self.blobs.path(digest), digest,
                                                size, limiter=self.cpu)
        finally:
            self.stats.end(progress)
            await self.blobs.remove_file(temp)
        self.stats.count("archives_fetched")
        self.stats.count("bytes_from_store", ref.size)
        return toc.encode(), toc

    def _range(self, ref: PackRef, start: int, length: int) -> bytes:
        with self.store.open_read(ref.key, start, length, etag=ref.etag) as stream:
            chunks = []
            while chunk := stream.read(1 << 20):
                chunks.append(chunk)
        data = b"".join(chunks)
        if len(data) != length:
            raise StoreUnavailable(f"{ref.key}: got {len(data)} of {length} bytes")
        return data

    async def _retrying(self, what: str, fn: Callable[[], T]) -> T:
        """``fn`` (blocking) in a worker thread, retried by the request policy; a damaged
        range is fetched again like a failed one."""
        return await retry(PACK_REQUEST, what,
                           lambda: trio.to_thread.run_sync(fn, limiter=self.s3))

    async def _keep(self, data: bytes, bindings: list[tuple[str, str]]) -> str:
        def digest_of() -> tuple[str, array]:
            builder = DigestBuilder()
            builder.update(data)
            return builder.finish()

        def place(temp: Path, dest: Path) -> None:
            temp.write_bytes(data)
            dest.parent.mkdir(exist_ok=True, mode=0o700)
            os.chmod(temp, 0o600)
            os.replace(temp, dest)

        # hashing is CPU work, writing disk work: each under its own limiter; the blob index
        # is looked at here, on the trio thread
        digest, crcs = await trio.to_thread.run_sync(digest_of, limiter=self.cpu)
        if not self.blobs.has(digest):
            await trio.to_thread.run_sync(place, self.blobs.new_temp_path("pack"),
                                          self.blobs.path(digest), limiter=self.disk)
        self.blobs.register(digest, len(data), crcs)
        for key, etag in bindings:
            self.blobs.bind(key, etag, digest)
        await self.blobs.evict()
        return digest

    # -- nodes ---------------------------------------------------------------------------------

    async def load_dir(self, directory: Node, key: str) -> None:
        """Show the tree of a pack (or archive) directory whose key is ``key``."""
        tar = directory.pack_dir is PackDir.TARZST
        if tar and key.endswith(tarpack.DIR_SUFFIX):
            key = key[:-2]  # X.tar.zst.d shows the archive X.tar.zst
        ref = PackRef(key, directory.etag or "", directory.size, "tar.zst" if tar else "pack")
        self.populate(directory, ref, await self.load(ref))

    def populate(self, top: Node, ref: PackRef, toc: Toc) -> None:

        """Build the read-only tree of ``top`` (a pack directory) from its table of contents."""
        loaded = LoadedPack(ref, toc)
        top.children = {}
        top.listed_at = float("inf")  # immutable: never listed again while the ETag holds
        dirs = {"": top}
        for entry in toc.entries:
            parent_path, name = posixpath.split(entry.path)
            parent = dirs.get(parent_path)
            if parent is None or parent.children is None or not name:
                log.warning("pack %s: entry %r has no parent directory: skipped", ref.key,
                            entry.path)
                continue
            kind = {"f": Kind.FILE, "d": Kind.DIR, "l": Kind.LINK}.get(entry.kind)
            if kind is None:
                continue
            node = self.table.new(kind, name, parent, mode=entry.mode & 0o7777,
                                  mtime_ns=entry.mtime_ns, ctime_ns=entry.mtime_ns,
                                  size=entry.size, digest=entry.sha256, target=entry.target,
                                  source="store", attrs_from="manifest")
            if kind is Kind.DIR:
                node.children = {}
                node.listed_at = float("inf")
                dirs[entry.path] = node
            elif kind is Kind.FILE:
                node.pack_file = PackFile(loaded, entry)
                for index, _, _ in entry.extents:
                    if index not in loaded.units:
                        loaded.units[index] = unit_of(entry.path)

            parent.children[name] = node

    # -- frames --------------------------------------------------------------------------------

    def frame_paths(self, file: PackFile) -> list[Path] | None:
        """Blob paths of the file's frames if all are cached."""
        digests = [file.pack.toc.frames[i].sha256 for i, _, _ in file.entry.extents]
        if all(self.blobs.has(d) for d in digests):
            return [self.blobs.path(d) for d in digests]
        return None

    async def ensure(self, file: PackFile, ahead: bool = False) -> None:
        """Every frame of the file in the blob tier (fetched in parallel if needed);
        ``ahead``: for a reader going through the whole tree, runs may cross units."""
        indexes = sorted({i for i, _, _ in file.entry.extents})
        async with trio.open_nursery() as nursery:
            for index in indexes:
                nursery.start_soon(self.ensure_frame, file.pack, index, ahead)

    async def ensure_frame(self, pack: LoadedPack, index: int, ahead: bool = False) -> str:
        """The frame in the blob tier: there already, on its way, or fetched now, with the
        missing frames after it in the same GET (``_run``)."""
        digest = pack.toc.frames[index].sha256
        while not self.blobs.has(digest):
            busy = self._frames.get(digest)
            if busy is not None:
                await busy.wait()
                continue
            run = self._run(pack, index, ahead)
            events = {pack.toc.frames[i].sha256: trio.Event() for i in run}
            self._frames.update(events)
            try:
                await self._fetch_run(pack, run)
            finally:
                for d, event in events.items():
                    del self._frames[d]
                    event.set()
        return digest

    def _run(self, pack: LoadedPack, index: int, ahead: bool) -> list[int]:
        """``index`` and the frames after it that are missing, stored next to it (same object,
        contiguous) and, unless ``ahead``, of its unit: up to RUN_BYTES. ``ahead`` (the
        prefetcher's many fetches at once, which start in no set order) takes the missing
        frames right before it too, so whichever starts first fetches the whole stretch."""
        if pack.ref.kind == "tar.zst":
            return [index]
        frames = pack.toc.frames
        seen = {frames[index].sha256}
        budget = [RUN_BYTES - frames[index].clen]

        def joins(i: int, neighbour: int) -> bool:
            frame, other = frames[i], frames[neighbour]
            first, second = (frame, other) if i < neighbour else (other, frame)
            ok = frame.source == other.source and first.offset + first.clen == second.offset \
                and (ahead or pack.units.get(i) == pack.units.get(index)) \
                and frame.sha256 not in seen and frame.sha256 not in self._frames \
                and not self.blobs.has(frame.sha256) and frame.clen <= budget[0]
            if ok:
                seen.add(frame.sha256)
                budget[0] -= frame.clen
            return ok

        before = index
        while ahead and before > 0 and joins(before - 1, before):
            before -= 1
        after = index
        while after + 1 < len(frames) and joins(after + 1, after):
            after += 1
        return list(range(before, after + 1))

    async def _fetch_run(self, pack: LoadedPack, run: list[int]) -> None:
        """Fetch frames ``run`` (neighbours in one object) with one ranged GET; each is
        decompressed, checked and kept on its own."""
        frames = [pack.toc.frames[i] for i in run]
        if pack.ref.kind == "tar.zst":  # the archive's only frame is the whole tar
            _, toc = await self._fetch_tar(pack.ref)
            if toc.frames[0].sha256 != frames[0].sha256:
                raise ChecksumMismatch(f"{pack.ref.key}: the archive decompresses to "
                                       "different bytes than when it was indexed")
            return
        holder = pack.ref
        if frames[0].source:  # stored in an earlier pack this one builds on
            key, etag = pack.toc.sources[frames[0].source - 1]
            holder = PackRef(key, etag, 0)
        start = frames[0].offset
        length = frames[-1].offset + frames[-1].clen - start
        what = f"frames {run[0]}-{run[-1]} of {pack.ref.key}"
        compressed = memoryview(  # (sliced without copies, on the trio thread)
            await self._retrying(what, lambda: self._range(holder, start, length)))
        self.stats.count("pack_gets")
        for index, frame in zip(run, frames, strict=True):
            part = compressed[frame.offset - start:frame.offset - start + frame.clen]
            await self._keep_frame(pack, index, holder, part)

    async def _keep_frame(self, pack: LoadedPack, index: int, holder: PackRef,
                          compressed: bytes | memoryview) -> None:
        """Decompress, check and keep one frame; one that fails is fetched again, once."""
        frame = pack.toc.frames[index]
        for attempt in range(2):
            data = await trio.to_thread.run_sync(codec.decompress, compressed, frame.ulen,
                                                 limiter=self.cpu)
            digest = await self._keep(data, [])
            if digest == frame.sha256:
                break
            await self.blobs.discard(digest, "frame content does not match the pack's table")
            self.stats.error("corrupt_frame")
            if attempt == 1:
                raise ChecksumMismatch(f"{pack.ref.key}: frame {index} fails its checksum")
            compressed = await self._retrying(
                f"frame {index} of {pack.ref.key}",
                lambda: self._range(holder, frame.offset, frame.clen))
        self.stats.count("pack_frames_fetched")
        self.stats.count("bytes_from_store", frame.clen)


class PackFileReader:
    """Reads one file of a pack: slices of its frames' blobs, each checked as it is read."""

    def __init__(self, packs: Packs, file: PackFile) -> None:
        self.packs = packs
        self.file = file
        self.size = file.entry.size
        self.digest = ""
        self._readers: dict[int, BlobReader] = {}

    async def read(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self.size)
        out = []
        position = 0
        for index, start, length in self.file.entry.extents:
            lo, hi = max(offset, position), min(end, position + length)
            if lo < hi:
                out.append(await self._slice(index, start + lo - position, hi - lo))
            position += length
            if position >= end:
                break
        return b"".join(out)

    async def _slice(self, index: int, offset: int, size: int) -> bytes:
        for attempt in range(2):
            reader = await self._reader(index)
            try:
                return await reader.read(offset, size)
            except ChecksumMismatch:
                # Bad on disk: drop the frame and fetch it again; never serve it.
                reader.close()
                del self._readers[index]
                self.packs.stats.error("corrupt_blob")
                await self.packs.blobs.discard(reader.digest, "a frame block failed its "
                                               "checksum when read back")
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    async def _reader(self, index: int) -> BlobReader:
        reader = self._readers.get(index)
        for _ in range(3):
            if reader is not None:
                return reader
            digest = await self.packs.ensure_frame(self.file.pack, index)
            self.digest = digest
            try:  # a tight cache may evict the frame before we get to open it
                reader = self._readers[index] = self.packs.blobs.open_reader(digest)
            except FileNotFoundError:
                log.info("pack frame %d evicted before it was opened; fetching again", index)
        if reader is None:
            raise CacheFSError("the blob tier is too small to hold a pack frame open")
        return reader

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
