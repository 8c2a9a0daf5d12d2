"""What the two stores on a local file system (plain.py, local.py) share: their multipart
uploads, how their disk errors become the project's own, how they make ETags, and reading a
range of an object file.

Each upload is a directory of part files under the store's ``uploads`` directory; completing
it streams the parts, in order, through the store's own ``_write``, which decides where and
how the object lands. One mechanism for both layouts, so they cannot drift apart.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from ..errors import (
    AccessDenied,
    CacheFSError,
    NameTooLong,
    NoSpace,
    NotFound,
    ObjectChanged,
    StoreUnavailable,
)
from .base import ObjectInfo, ReadStream


class FileReadStream(ReadStream):
    """A range of an object's file; the stream owns (and closes) the file."""

    def __init__(self, f: BinaryIO, remaining: int, info: ObjectInfo) -> None:
        self.f = f
        self.remaining = remaining
        self.info = info

    @classmethod
    def of(cls, f: BinaryIO, info: ObjectInfo, offset: int, start: int, length: int | None,
           etag: str | None) -> FileReadStream:
        """``length`` bytes from ``start`` of an object whose content begins at ``offset`` of
        ``f``, if it is still the version ``etag`` (ObjectChanged otherwise)."""
        if etag and etag != info.etag:
            raise ObjectChanged(f"{info.key}: object changed while it was read")
        f.seek(offset + start)
        remaining = info.size - start if length is None else min(length, info.size - start)
        return cls(f, max(0, remaining), info)

    def read(self, n: int) -> bytes:
        if self.remaining <= 0:
            return b""
        data = self.f.read(min(n, self.remaining))
        self.remaining -= len(data)
        return data

    def close(self) -> None:
        self.f.close()


OS_ERRORS: dict[int, type[CacheFSError]] = {
    errno.ENAMETOOLONG: NameTooLong,
    errno.EACCES: AccessDenied,
    errno.EPERM: AccessDenied,
    errno.EROFS: AccessDenied,
    errno.ENOSPC: NoSpace,
    errno.EDQUOT: NoSpace,
}


@contextlib.contextmanager
def os_errors(what: str) -> Iterator[None]:
    """Disk errors of a write as the project's own (the store raises nothing else)."""
    try:
        yield
    except CacheFSError:
        raise
    except OSError as e:
        cls = OS_ERRORS.get(e.errno or 0, StoreUnavailable)
        raise cls(f"{what}: {e.strerror or e}") from e


def md5_etag(data_md5: str, parts: int = 0) -> str:
    return f'"{data_md5}-{parts}"' if parts else f'"{data_md5}"'


class StagedMultipart:
    """Mixed into a Store that defines ``uploads`` and ``_write``."""

    uploads: Path

    def _write(self, key: str, chunks: Iterator[bytes], etag: str, metadata: Mapping[str, str],
               size: int, replace: bool = True) -> ObjectInfo:
        raise NotImplementedError

    def _check_upload_key(self, key: str) -> None:
        """Refuse a key before any part is sent, not after every part was."""
        self.check_key(key)  # type: ignore[attr-defined]

    def create_multipart(self, key: str, metadata: Mapping[str, str]) -> str:
        self._check_upload_key(key)
        upload_id = uuid.uuid4().hex
        d = self.uploads / upload_id
        with os_errors(f"starting an upload of {key}"):
            d.mkdir(parents=True)
            (d / "meta.json").write_text(json.dumps({"key": key, "metadata": dict(metadata)}))
        return upload_id

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        d = self.uploads / upload_id
        if not d.is_dir():
            raise NotFound(f"upload {upload_id} of {key}: not found")
        tmp = d / f"{number}.tmp"
        with os_errors(f"part {number} of {key}"):
            tmp.write_bytes(data)
            os.replace(tmp, d / str(number))
        return md5_etag(hashlib.md5(data, usedforsecurity=False).hexdigest())

    def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]], size: int
    ) -> ObjectInfo:
        return self._complete(key, upload_id, parts, size)

    def complete_multipart_new(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]], size: int
    ) -> ObjectInfo:
        return self._complete(key, upload_id, parts, size, replace=False)

    def _complete(self, key: str, upload_id: str, parts: Sequence[tuple[int, str]], size: int,
                  replace: bool = True) -> ObjectInfo:
        d = self.uploads / upload_id
        try:
            meta = json.loads((d / "meta.json").read_text())
        except FileNotFoundError:
            raise NotFound(f"upload {upload_id} of {key}: not found") from None
        digests = b"".join(bytes.fromhex(e.strip('"')) for _, e in parts)
        etag = md5_etag(hashlib.md5(digests, usedforsecurity=False).hexdigest(), len(parts))

        def chunks() -> Iterator[bytes]:
            for number, _ in parts:
                with (d / str(number)).open("rb") as f:
                    while chunk := f.read(1 << 20):
                        yield chunk

        info = self._write(key, chunks(), etag, meta["metadata"], size, replace)
        shutil.rmtree(d, ignore_errors=True)
        return info

    def abort_multipart(self, key: str, upload_id: str) -> None:
        shutil.rmtree(self.uploads / upload_id, ignore_errors=True)
