"""zstd, the only module that imports zstandard.

Contexts are not thread-safe, so each worker thread keeps its own (compression and decompression
run in worker threads under the CPU limiter; zstandard releases the GIL while it works).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import BinaryIO

import zstandard

from ..errors import ChecksumMismatch

_local = threading.local()

#: zstd level when none is asked for: fast, and still a good ratio on source trees
DEFAULT_LEVEL = 3


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    if level not in cache:
        # write_checksum: every frame carries a checksum the decompressor verifies.
        cache[level] = zstandard.ZstdCompressor(level=level, write_checksum=True,
                                                write_content_size=True)
    return cache[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


def compress(data: bytes, level: int = DEFAULT_LEVEL) -> bytes:
    """One independent zstd frame."""
    return _compressor(level).compress(data)


def decompress(frame: bytes | memoryview, size: int) -> bytes:
    """Decompress one frame of known size; a damaged frame raises ChecksumMismatch."""
    try:
        data = _decompressor().decompress(frame, max_output_size=size)
    except zstandard.ZstdError as e:
        raise ChecksumMismatch(f"zstd frame does not decompress: {e}") from None
    except OverflowError:  # a damaged size field, e.g. in a pack's trailer
        raise ChecksumMismatch(f"zstd frame size {size} is impossible") from None
    if len(data) != size:
        raise ChecksumMismatch(f"zstd frame gave {len(data)} bytes, expected {size}")
    return data


def parse_level(spec: str) -> int | None:
    """``--compress`` values: '' (off), 'zstd', 'zstd:LEVEL'."""
    if not spec:
        return None
    name, _, level = spec.partition(":")
    if name != "zstd":
        raise ValueError(f"unknown compression {spec!r} (use zstd or zstd:LEVEL)")
    value = int(level) if level else DEFAULT_LEVEL
    if not 1 <= value <= 22:
        raise ValueError(f"zstd level must be 1..22, not {value}")
    return value


def stream_decompress(source: BinaryIO, chunk: int = 1 << 20) -> Iterator[bytes]:
    """Decompress a (possibly multi-frame) zstd stream, e.g. a .tar.zst, in chunks."""
    reader = _decompressor().stream_reader(source, read_across_frames=True, closefd=False)
    try:
        while True:
            try:
                data = reader.read(chunk)
            except zstandard.ZstdError as e:
                raise ChecksumMismatch(f"zstd stream is damaged: {e}") from None
            if not data:
                return
            yield data
    finally:
        reader.close()
