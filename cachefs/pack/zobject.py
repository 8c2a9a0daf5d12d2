"""Compressed objects (``--compress zstd``): one file as independent zstd frames and an index.

    [frame 0][frame 1]...[frame N-1][index]

Every frame holds FRAME plain bytes (the last one fewer), so the frame holding any plain offset
is known without reading anything; the index (JSON) gives each frame's place in the object. The
object's metadata marks it (``cachefs-compression: zstd``), gives the plain size
(``cachefs-size``) and where the index is (``cachefs-index: OFFSET:LENGTH``), so a reader fetches
the index with one ranged GET and then only the frames it needs. Objects other tools wrote carry
no such mark and are read as they are.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping

from ..errors import ChecksumMismatch
from . import codec

FRAME = 1 << 20
KIND = "zstd"


@dataclasses.dataclass(frozen=True)
class ZIndex:
    size: int  # plain bytes
    frame: int  # plain bytes per frame
    frames: list[tuple[int, int]]  # (offset, compressed length) per frame

    def frame_range(self, index: int) -> tuple[int, int]:
        """Plain [start, end) of frame ``index``."""
        start = index * self.frame
        return start, min(self.size, start + self.frame)

    def encode(self) -> bytes:
        return json.dumps({"format": "cachefs-zstd", "version": 1, "size": self.size,
                           "frame": self.frame, "frames": self.frames},
                          separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> ZIndex:
        try:
            doc = json.loads(data)
            if doc.get("format") != "cachefs-zstd" or doc.get("version") != 1:
                raise ValueError("unknown format")
            frames = [(int(o), int(n)) for o, n in doc["frames"]]
            index = cls(int(doc["size"]), int(doc["frame"]), frames)
        except (ValueError, KeyError, TypeError) as e:
            raise ChecksumMismatch(f"compressed object index is damaged: {e}") from None
        expected = -(-index.size // index.frame) if index.size else 0
        if len(frames) != expected:
            raise ChecksumMismatch("compressed object index lists the wrong number of frames")
        return index


def is_compressed(metadata: Mapping[str, str]) -> bool:
    return metadata.get("cachefs-compression") == KIND


def index_location(metadata: Mapping[str, str]) -> tuple[int, int] | None:
    value = metadata.get("cachefs-index", "")
    offset, _, length = value.partition(":")
    if offset.isdigit() and length.isdigit():
        return int(offset), int(length)
    return None


def compress_file(src: int, size: int, dest: int, level: int) -> tuple[dict[str, str], int]:
    """Write the compressed form of ``size`` bytes from fd ``src`` to fd ``dest`` (worker
    thread). Returns the metadata to store with it and the compressed object's size."""
    frames = []
    offset = 0
    for start in range(0, size, FRAME):
        plain = os.pread(src, min(FRAME, size - start), start)
        packed = codec.compress(plain, level)
        os.write(dest, packed)
        frames.append((offset, len(packed)))
        offset += len(packed)
    index = ZIndex(size, FRAME, frames).encode()
    os.write(dest, index)
    meta = {"cachefs-compression": KIND, "cachefs-size": str(size),
            "cachefs-index": f"{offset}:{len(index)}"}
    return meta, offset + len(index)


def decompress_frame(data: bytes, index: ZIndex, number: int) -> bytes:
    start, end = index.frame_range(number)
    return codec.decompress(data, end - start)
