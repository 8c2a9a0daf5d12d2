"""What a stored object is, and which other packs a pack needs (`cachefs ls`, `prune`,
`verify-store`).

A version 2 pack reads some of its frames from other pack objects (its ``sources``, each a key
and the ETag it had when the pack was made; docs/PACK-FORMAT.md). Deleting or replacing such a
source breaks every pack that points into it, and nothing in S3 says so: this module reads the
tables of contents and answers "who needs whom" and "which references no longer resolve".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from ..errors import CacheFSError, ChecksumMismatch, InvalidArgument, NotFound, ObjectChanged
from ..store import ObjectInfo, Store
from .format import MAGIC, TRAILER, Toc, decode_toc, decode_trailer
from .tarzst import SUFFIX as TAR_SUFFIX

OBJECT, PACK, TAR = "object", "pack", "tar.zst"
#: a table of contents larger than this is a damaged trailer, not a tree (a million files make
#: a table of about 200 MB): refused before anything is allocated for it
MAX_TOC = 1 << 30


@dataclasses.dataclass(frozen=True)
class PackInfo:
    """What a pack's table of contents says about it."""

    version: int
    files: int
    frames: int
    #: frames held in other packs
    outside_frames: int
    #: (key, ETag, the largest offset + length read from it) per source pack
    sources: tuple[tuple[str, str, int], ...]

    @property
    def needs(self) -> list[str]:
        return [key for key, _, _ in self.sources]


@dataclasses.dataclass(frozen=True)
class Inspected:
    kind: str  # object | pack | tar.zst
    pack: PackInfo | None = None
    #: the object looked like a pack but its table could not be read
    error: str | None = None


def pack_info(toc: Toc) -> PackInfo:
    reach: dict[int, int] = {}
    for frame in toc.frames:
        if frame.source:
            reach[frame.source] = max(reach.get(frame.source, 0), frame.offset + frame.clen)
    sources = tuple((key, etag, reach.get(n, 0)) for n, (key, etag) in
                    enumerate(toc.sources, start=1))
    return PackInfo(toc.version, sum(1 for e in toc.entries if e.kind == "f"),
                    len(toc.frames), sum(1 for f in toc.frames if f.source), sources)


def _range(store: Store, info: ObjectInfo, start: int, length: int) -> bytes:
    with store.open_read(info.key, start, length, etag=info.etag or None) as stream:
        chunks = []
        while chunk := stream.read(1 << 20):
            chunks.append(chunk)
    return b"".join(chunks)


def read_toc(store: Store, info: ObjectInfo) -> Toc | None:
    """The table of contents of ``info`` if it is a pack (two ranged GETs), None if it is not
    one (no trailer). Raises ChecksumMismatch for a damaged table, ObjectChanged/NotFound if
    the object changed or went away since it was listed. Blocks (worker thread)."""
    if info.size < TRAILER.size:
        return None
    trailer = _range(store, info, info.size - TRAILER.size, TRAILER.size)
    try:
        offset, clen, ulen, sha = decode_trailer(trailer)
    except InvalidArgument:
        if trailer.startswith(MAGIC):
            raise  # a pack, of a version this cachefs does not read
        return None
    if offset + clen > info.size:
        raise ChecksumMismatch(f"{info.key}: the trailer points past the end of the object")
    if ulen > MAX_TOC:
        raise ChecksumMismatch(f"{info.key}: the trailer gives an impossible table size, {ulen}")
    return decode_toc(_range(store, info, offset, clen), ulen, sha)


def inspect(store: Store, info: ObjectInfo) -> Inspected:
    """What ``info`` is: a pack (with what its table says), a .tar.zst archive or an object.
    Never raises for a damaged pack: the reason is in ``error``."""
    if info.key.endswith(TAR_SUFFIX):
        return Inspected(TAR)
    try:
        toc = read_toc(store, info)
    except (NotFound, ObjectChanged):
        raise
    except CacheFSError as e:
        return Inspected(PACK, error=str(e))
    if toc is None:
        return Inspected(OBJECT)
    return Inspected(PACK, pack_info(toc))


def _etag(text: str) -> str:
    return text.strip().strip('"')


def broken_references(packs: Mapping[str, PackInfo],
                      objects: Mapping[str, ObjectInfo]) -> dict[str, list[str]]:
    """For each pack with a reference that does not resolve, why: the source is gone, was
    replaced (another ETag), or is shorter than the frames read from it."""
    broken: dict[str, list[str]] = {}
    for key, pack in sorted(packs.items()):
        for source, etag, reach in pack.sources:
            found = objects.get(source)
            if found is None:
                why = f"{source} is gone"
            elif found.etag and _etag(found.etag) != _etag(etag):
                why = f"{source} was replaced (ETag {found.etag}, the pack needs {etag})"
            elif found.size < reach:
                why = f"{source} is {found.size} bytes, frames are read up to byte {reach}"
            else:
                continue
            broken.setdefault(key, []).append(why)
    return broken


def needed_by(packs: Mapping[str, PackInfo], kept: Iterable[str]) -> dict[str, str]:
    """Every key that a kept pack needs, directly or through packs kept for it: key -> the
    kept pack that needs it (the first one found). Frames name the pack that really holds
    them (there are no chains), but a source may be a version 2 pack itself, whose own
    sources must then stay as well."""
    needed: dict[str, str] = {}
    todo = sorted(set(kept))
    while todo:
        key = todo.pop()
        pack = packs.get(key)
        if pack is None:
            continue
        for source in pack.needs:
            if source not in needed:
                needed[source] = key
                todo.append(source)
    return needed


def dependents_first(keys: Iterable[str], packs: Mapping[str, PackInfo]) -> list[str]:
    """``keys`` ordered so that a pack comes before the packs it needs: deleting in this order,
    a prune stopped half-way never leaves a pack whose source it already deleted."""
    chosen = set(keys)
    dependents: dict[str, list[str]] = {}
    for key in sorted(chosen):
        pack = packs.get(key)
        for source in pack.needs if pack is not None else ():
            if source in chosen and source != key:
                dependents.setdefault(source, []).append(key)
    order: list[str] = []
    seen: set[str] = set()

    def visit(key: str) -> None:
        if key in seen:
            return
        seen.add(key)
        for other in dependents.get(key, ()):
            visit(other)
        order.append(key)

    for key in sorted(chosen):
        visit(key)
    return order
