"""The tree pack format (docs/PACK-FORMAT.md): a whole directory tree as one seekable object.

    [frame 0][frame 1]...[frame N-1][table of contents][trailer]

Frames are independent zstd frames of at most FRAME_TARGET bytes of file data; small files are
grouped (in tree order, so a directory's files sit together) and large files are split. A frame
never holds files of two units (unit_of: a Go module, else a top-level directory), so a build
that reads some modules fetches those modules and nothing of their neighbours. Identical
files are stored once. The table of contents (zstd-compressed JSON) lists every entry and where
its bytes lie; the fixed-size trailer at the very end says where the table is. A reader fetches
the trailer and the table once, then single frames with ranged GETs.

This module knows the format only: building (PackBuilder, fed in tree order) and parsing.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import struct
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import ChecksumMismatch, InvalidArgument
from . import codec

MAGIC = b"CFSPACK\x00"
#: 1: every frame is in the pack itself; 2: frames may live in other packs ("sources"), so a
#: new version of a tree uploads only the frames that changed. Readers accept both; a pack with
#: no outside frames is still written as version 1.
VERSION = 2
VERSIONS = (1, 2)
#: magic, version, flags, toc offset, toc compressed size, toc size, toc SHA-256
TRAILER = struct.Struct(">8sIIQQQ32s")
#: bytes of file data per frame: small enough that reading one file fetches little, large
#: enough that a tree of 20,000 files is a few hundred requests
FRAME_TARGET = 2 << 20
FORMAT = "cachefs-pack"


def unit_of(path: str) -> str:
    """The part of a tree that is read as one: a Go module (the path up to its first component
    holding an ``@``: ``<module>@<version>``, or ``<module>/@v`` in the download cache), else
    the top-level directory ('' for a file at the top). Frames never span two."""
    parts = path.split("/")
    for i, part in enumerate(parts[:-1]):
        if "@" in part:
            return "/".join(parts[:i + 1])
    return parts[0] if len(parts) > 1 else ""


@dataclasses.dataclass
class Frame:
    offset: int
    clen: int
    ulen: int
    sha256: str
    #: 0: in this pack; n > 0: in the pack ``Toc.sources[n - 1]`` (at offset, clen there)
    source: int = 0


@dataclasses.dataclass
class Entry:
    path: str
    kind: str  # f | d | l
    mode: int
    mtime_ns: int
    size: int = 0
    sha256: str | None = None
    #: (frame index, offset in the frame's data, length) in file order
    extents: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)
    target: str | None = None


@dataclasses.dataclass
class Toc:
    frames: list[Frame]
    entries: list[Entry]
    #: other pack objects holding some of the frames: (key, ETag) — version 2 only
    sources: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def version(self) -> int:
        return 2 if self.sources else 1

    def encode(self) -> bytes:
        doc: dict[str, Any] = {
            "format": FORMAT, "version": self.version,
            "frames": [[f.offset, f.clen, f.ulen, f.sha256] + ([f.source] if f.source else [])
                       for f in self.frames],
            "entries": [_entry_json(e) for e in self.entries],
        }
        if self.sources:
            doc["sources"] = [list(s) for s in self.sources]
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Toc:
        try:
            doc = json.loads(data)
            if doc.get("format") != FORMAT or doc.get("version") not in VERSIONS:
                raise InvalidArgument(f"pack version {doc.get('version')} is not supported "
                                      f"(this reads {', '.join(map(str, VERSIONS))})")
            frames = [Frame(*f) for f in doc["frames"]]
            entries = [_entry_from_json(e) for e in doc["entries"]]
            sources = [(str(k), str(e)) for k, e in doc.get("sources", [])]
            if any(not 0 <= f.source <= len(sources) for f in frames):
                raise ValueError("a frame names a source pack that is not listed")
        except (ValueError, KeyError, TypeError) as e:
            raise ChecksumMismatch(f"pack table of contents is damaged: {e}") from None
        return cls(frames, entries, sources)


def _entry_json(e: Entry) -> dict[str, Any]:
    doc: dict[str, Any] = {"p": e.path, "t": e.kind, "m": e.mode, "mt": e.mtime_ns}
    if e.kind == "f":
        doc.update(s=e.size, h=e.sha256, x=e.extents)
    elif e.kind == "l":
        doc["l"] = e.target
    return doc


def _entry_from_json(doc: dict[str, Any]) -> Entry:
    return Entry(doc["p"], doc["t"], int(doc["m"]), int(doc["mt"]), int(doc.get("s", 0)),
                 doc.get("h"), [(int(x[0]), int(x[1]), int(x[2])) for x in doc.get("x", [])],
                 doc.get("l"))


def encode_trailer(toc_offset: int, toc_clen: int, toc_ulen: int, toc_sha: str,
                   version: int = 1) -> bytes:
    return TRAILER.pack(MAGIC, version, 0, toc_offset, toc_clen, toc_ulen,
                        bytes.fromhex(toc_sha))


def decode_trailer(data: bytes) -> tuple[int, int, int, str]:
    """(toc offset, compressed size, size, SHA-256) from the last TRAILER.size bytes."""
    if len(data) < TRAILER.size:
        raise InvalidArgument("too short to be a pack")
    magic, version, _flags, offset, clen, ulen, sha = TRAILER.unpack(data[-TRAILER.size:])
    if magic != MAGIC:
        raise InvalidArgument("not a cachefs pack (no trailer)")
    if version not in VERSIONS:
        raise InvalidArgument(f"pack version {version} is not supported (this reads "
                              f"{', '.join(map(str, VERSIONS))})")
    return offset, clen, ulen, sha.hex()


def decode_toc(compressed: bytes, ulen: int, sha: str) -> Toc:
    data = codec.decompress(compressed, ulen)
    if hashlib.sha256(data).hexdigest() != sha:
        raise ChecksumMismatch("pack table of contents does not match its digest")
    return Toc.decode(data)


class Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


class PackBuilder:
    """Writes a pack to ``sink`` (bytes in order) from entries added in tree order.

    Frames are compressed by ``pool`` while the next one fills; at most a few frames are held
    in memory whatever the size of the tree.
    """

    def __init__(self, sink: Callable[[bytes], None], level: int = codec.DEFAULT_LEVEL,
                 pool: concurrent.futures.Executor | None = None, in_flight: int = 4) -> None:
        self.sink = sink
        self.level = level
        self.pool = pool
        self.in_flight = in_flight
        self.frames: list[Frame] = []
        self.entries: list[Entry] = []
        self.offset = 0
        self.bytes_in = 0
        self._buffer = bytearray()
        self._unit = ""  # of the files in the open frame
        self._pending: collections.deque[tuple[int, concurrent.futures.Future[bytes]]] = \
            collections.deque()
        self._by_digest: dict[str, list[tuple[int, int, int]]] = {}
        #: frames of other packs: (source number, frame index there) -> index here
        self._sources: dict[tuple[str, str], int] = {}
        self._outside: dict[tuple[int, int], int] = {}
        self.reused = 0  # frames of other packs pointed at

    # -- entries -------------------------------------------------------------------------------

    def add_dir(self, path: str, mode: int, mtime_ns: int) -> None:
        self.entries.append(Entry(path, "d", mode, mtime_ns))

    def add_symlink(self, path: str, target: str, mode: int, mtime_ns: int) -> None:
        self.entries.append(Entry(path, "l", mode, mtime_ns, size=len(target.encode()),
                                  target=target))

    def add_file(self, path: str, mode: int, mtime_ns: int, data: bytes) -> None:
        """A file that fits in memory (at most FRAME_TARGET bytes: read it whole)."""
        digest = hashlib.sha256(data).hexdigest()
        entry = self._file_entry(path, mode, mtime_ns, len(data), digest)
        if entry is None:
            return
        unit = unit_of(path)
        if data and (len(self._buffer) + len(data) > FRAME_TARGET or unit != self._unit):
            self._close_frame()
        if data:
            self._unit = unit
            entry.extents = [(len(self.frames), len(self._buffer), len(data))]
            self._buffer += data
        self._by_digest[digest] = entry.extents

    def add_large_file(self, path: str, mode: int, mtime_ns: int, digest: str, size: int,
                       source: Readable) -> None:
        """A file read in FRAME_TARGET pieces, each its own frame (``digest`` known before)."""
        entry = self._file_entry(path, mode, mtime_ns, size, digest)
        if entry is None:
            return
        self._close_frame()
        remaining = size
        while remaining > 0:
            chunk = source.read(min(FRAME_TARGET, remaining))
            if not chunk:
                raise InvalidArgument(f"{path} shrank while it was packed")
            entry.extents.append((len(self.frames), 0, len(chunk)))
            self._buffer += chunk
            self._close_frame()
            remaining -= len(chunk)
        self._by_digest[digest] = entry.extents

    def add_stored_file(self, path: str, mode: int, mtime_ns: int, size: int, digest: str,
                        extents: list[tuple[int, int, int]], toc: Toc,
                        holder: tuple[str, str]) -> None:
        """A file whose bytes are already stored in the pack ``holder`` (key, ETag) with table
        ``toc``: the new pack points at those frames (where they really live, for a pack that
        itself points elsewhere) instead of holding them again."""
        entry = self._file_entry(path, mode, mtime_ns, size, digest)
        if entry is None:
            return
        for index, start, length in extents:
            old = toc.frames[index]
            source = holder if old.source == 0 else toc.sources[old.source - 1]
            if source not in self._sources:
                self._sources[source] = len(self._sources) + 1
            src = self._sources[source]
            mapped = self._outside.get((src, old.offset))
            if mapped is None:
                self._close_frame()  # the open frame's index is taken by files already added
                mapped = self._outside[(src, old.offset)] = len(self.frames)
                self.frames.append(Frame(old.offset, old.clen, old.ulen, old.sha256, src))
                self.reused += 1
            entry.extents.append((mapped, start, length))
        self._by_digest[digest] = entry.extents

    def _file_entry(self, path: str, mode: int, mtime_ns: int, size: int,
                    digest: str) -> Entry | None:
        """Add a file's entry; None when identical content is in already (the entry then
        points at it, and the caller adds no bytes)."""
        entry = Entry(path, "f", mode, mtime_ns, size, digest)
        self.entries.append(entry)
        self.bytes_in += size
        if digest in self._by_digest:
            entry.extents = list(self._by_digest[digest])
            return None
        return entry

    # -- frames --------------------------------------------------------------------------------

    def _close_frame(self) -> None:
        if not self._buffer:
            return
        data = bytes(self._buffer)
        self._buffer.clear()
        index = len(self.frames)
        self.frames.append(Frame(0, 0, len(data), hashlib.sha256(data).hexdigest()))
        if self.pool is None:
            future: concurrent.futures.Future[bytes] = concurrent.futures.Future()
            future.set_result(codec.compress(data, self.level))
        else:
            future = self.pool.submit(codec.compress, data, self.level)
        self._pending.append((index, future))
        while len(self._pending) > self.in_flight:
            self._write_oldest()

    def _write_oldest(self) -> None:
        index, future = self._pending.popleft()
        compressed = future.result()
        frame = self.frames[index]
        frame.offset, frame.clen = self.offset, len(compressed)
        self.sink(compressed)
        self.offset += len(compressed)

    def finish(self) -> Toc:
        """Write what is left, the table of contents and the trailer."""
        self._close_frame()
        while self._pending:
            self._write_oldest()
        toc = Toc(self.frames, self.entries, sorted(self._sources, key=self._sources.__getitem__))
        raw = toc.encode()
        compressed = codec.compress(raw, self.level)
        toc_offset = self.offset
        self.sink(compressed)
        self.sink(encode_trailer(toc_offset, len(compressed), len(raw),
                                 hashlib.sha256(raw).hexdigest(), toc.version))
        self.offset += len(compressed) + TRAILER.size
        return toc
