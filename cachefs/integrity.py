"""What we can check downloaded bytes against, and how.

* ``cachefs-sha256`` metadata (objects cachefs writes) or an origin pin: the whole content.
* ``cachefs-crc`` metadata (objects cachefs writes): a CRC-32 per unit, so each part of a large
  object is checked before any reader sees it.
* The ETag, when it is an MD5 (single-part upload) or an MD5 of part MD5s (``...-N``, multipart):
  the part size is not recorded anywhere, so the likely sizes (whole MiB) are tried at once.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zlib
from array import array
from collections.abc import Mapping
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
