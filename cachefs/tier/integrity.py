"""What we can check downloaded bytes against, and how.

* ``cachefs-sha256`` metadata (objects cachefs writes) or an origin pin: the whole content.
* ``cachefs-crc`` metadata (objects cachefs writes): a CRC-32 per unit, so each part of a large
  object is checked before any reader sees it.
* The ETag, when it is an MD5 (single-part upload) or an MD5 of part MD5s (``...-N``, multipart):
  the part size is not recorded anywhere, so the likely sizes (whole MiB) are tried at once.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import zlib
from array import array
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

MIB = 1 << 20
#: at most this many CRCs go into object metadata (S3 allows 2 KB of user metadata)
MAX_UNITS = 256
_ETAG = re.compile(r'^"?([0-9a-fA-F]{32})(?:-([0-9]+))?"?$')


def crc_unit(size: int) -> int:
    """Smallest power-of-two multiple of 1 MiB giving at most MAX_UNITS units for ``size``."""
    unit = MIB
    while (size + unit - 1) // unit > MAX_UNITS:
        unit *= 2
    return unit


def encode_crcs(unit: int, crcs: array) -> str:
    return f"{unit}:{base64.b64encode(crcs.tobytes()).decode()}"


def decode_crcs(value: str | None) -> tuple[int, array] | None:
    if not value or ":" not in value:
        return None
    unit_text, data = value.split(":", 1)
    try:
        unit = int(unit_text)
        crcs = array("I")
        crcs.frombytes(base64.b64decode(data))
    except ValueError:
        return None
    if unit < MIB or unit % MIB:
        return None
    return unit, crcs


def _times(matrix: list[int], vector: int) -> int:
    result, row = 0, 0
    while vector:
        if vector & 1:
            result ^= matrix[row]
        vector >>= 1
        row += 1
    return result


def _square(matrix: list[int]) -> list[int]:
    return [_times(matrix, matrix[n]) for n in range(32)]


@functools.lru_cache(maxsize=16)
def _zeros(length: int) -> tuple[int, ...]:
    """The GF(2) operator that appends ``length`` zero bytes to a CRC-32 (zlib's method)."""
    power = [0xEDB88320] + [1 << n for n in range(31)]  # one zero bit
    power = _square(_square(power))  # four zero bits
    result: list[int] | None = None
    while length:
        power = _square(power)  # 1, 2, 4, ... zero bytes
        if length & 1:
            result = power if result is None else [_times(power, r) for r in result]
        length >>= 1
    assert result is not None
    return tuple(result)


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """CRC-32 of A+B from CRC(A), CRC(B) and len(B): no second pass over the bytes."""
    if length2 <= 0:
        return crc1
    return _times(list(_zeros(length2)), crc1) ^ crc2


def combine_units(block_crcs: array, block: int, size: int, unit: int) -> array:
    """Per-``unit`` CRCs from per-``block`` CRCs (``unit`` a multiple of ``block``)."""
    per_unit = unit // block
    out = array("I")
    for first in range(0, len(block_crcs), per_unit):
        crc = block_crcs[first]
        for i in range(first + 1, min(first + per_unit, len(block_crcs))):
            length = min(block, size - i * block)
            crc = crc32_combine(crc, block_crcs[i], length)
        out.append(crc)
    return out


def file_crcs(path: Path, unit: int) -> array:
    """CRC-32 of each ``unit`` bytes of a file (worker thread)."""
    crcs = array("I")
    with open(path, "rb") as f:
        while chunk := f.read(unit):
            crcs.append(zlib.crc32(chunk))
    if not crcs:
        crcs.append(0)
    return crcs


class EtagCheck:
    """Checks bytes fed in order against an MD5-style ETag, trying plausible part sizes."""

    def __init__(self, etag: str, size: int) -> None:
        self.etag = etag
        m = _ETAG.match(etag or "")
        self.expected = m.group(1).lower() if m else None
        self.parts = int(m.group(2)) if m and m.group(2) else 0
        self.candidates: list[int] = []
        if self.expected and self.parts:
            self.candidates = _part_sizes(size, self.parts)
        self.whole = hashlib.md5(usedforsecurity=False) if self.expected and not self.parts \
            else None
        self.state: dict[int, tuple[list[bytes], Any, int]] = {
            p: ([], hashlib.md5(usedforsecurity=False), 0) for p in self.candidates}
        self.pos = 0

    @property
    def possible(self) -> bool:
        """Whether this ETag can be checked at all."""
        return self.whole is not None or bool(self.candidates)

    def update(self, data: bytes | memoryview) -> None:
        if self.whole is not None:
            self.whole.update(data)
        for part_size in self.candidates:
            digests, md5, filled = self.state[part_size]
            view = memoryview(data)
            while view:
                room = part_size - filled
                piece, view = view[:room], view[room:]
                md5.update(piece)
                filled += len(piece)
                if filled == part_size:
                    digests.append(md5.digest())
                    md5, filled = hashlib.md5(usedforsecurity=False), 0
            self.state[part_size] = (digests, md5, filled)
        self.pos += len(data)

    @property
    def aligned_part(self) -> int | None:
        """The upload part size, when the ETag says multipart and only one size fits: then
        each part's MD5 can be taken where that part is downloaded, in parallel."""
        if self.parts and len(self.candidates) == 1:
            return self.candidates[0]
        return None

    def matches_parts(self, size: int, digests: Mapping[tuple[int, int], bytes],
                      read: Callable[[int, int], bytes]) -> bool:
        """Multipart check from per-range MD5s; parts nobody hashed are read and hashed
        (worker thread)."""
        part = self.aligned_part
        assert part is not None
        collected = []
        for number in range(self.parts):
            lo, hi = number * part, min(size, (number + 1) * part)
            digest = digests.get((lo, hi))
            if digest is None:
                digest = hashlib.md5(read(lo, hi), usedforsecurity=False).digest()
            collected.append(digest)
        combined = hashlib.md5(b"".join(collected), usedforsecurity=False).hexdigest()
        return combined == self.expected

    def matches(self) -> bool:
        if self.whole is not None:
            return self.whole.hexdigest() == self.expected
        for part_size in self.candidates:
            digests, md5, filled = self.state[part_size]
            all_digests = digests + ([md5.digest()] if filled else [])
            if len(all_digests) != self.parts:
                continue
            combined = hashlib.md5(b"".join(all_digests), usedforsecurity=False).hexdigest()
            if combined == self.expected:
                return True
        return False


def _part_sizes(size: int, parts: int) -> list[int]:
    """Whole-MiB part sizes P with (parts-1)*P < size <= parts*P (at most three tried)."""
    if parts == 1:
        return [max(size, 1)]
    low = -(-size // parts)
    high = (size - 1) // (parts - 1)
    first = -(-low // MIB) * MIB
    return [p for p in range(first, high + 1, MIB)][:3]


def expected_sha256(metadata: Mapping[str, str]) -> str | None:
    value = metadata.get("cachefs-sha256")
    if value and re.fullmatch(r"[0-9a-f]{64}", value):
        return value
    return None
