"""A local store in the encoding of versions before 0.2 (new stores are plain directories,
plain.py): still read and written, so an existing store (the embedded default among them) keeps
working across the upgrade; ``cachefs migrate-store DIR`` converts it.

Any S3 key can be stored, including a key that is also a prefix (``a`` and ``a/b``) and dir
markers (``a/``): every key component becomes a directory named ``<component>.d`` and the last one
a file named ``<component>.o``, so files and directories never collide. An object file holds a
small JSON header (ETag, mtime, user metadata) followed by the bytes; it is written to a temp file
and renamed, so readers see the old object or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from ..errors import (
    BucketNotFound,
    CacheFSError,
    Exists,
    NameTooLong,
    NotFound,
)
from .base import ListPage, ObjectInfo, ReadStream, Store, key_bytes
from .staged import FileReadStream, StagedMultipart, md5_etag, os_errors

MAGIC = b"CFSOBJ1\n"
_HEADER = struct.Struct(">I")
PAGE = 1000
#: what the kernel allows for one path component, and for a whole path (with its NUL)
NAME_MAX = 255
PATH_MAX = 4096
#: every component gets one of these two suffixes on disk (``.d`` directory, ``.o`` object)
SUFFIX_BYTES = 2


#: the names an old-encoding store has in its top directory
_LEGACY_DIRS = (".tmp", ".uploads")


def is_legacy(root: Path) -> bool:
    """Whether ``root`` is a store in this encoding: its ``.tmp``/``.uploads`` directories and
    only ``*.o``/``*.d`` names. One holding no object at all is not (it is empty: a new store
    starts plain), and neither is a directory with other names (a plain store)."""
    try:
        names = os.listdir(root)
    except OSError:
        return False
    if not any((root / d).is_dir() for d in _LEGACY_DIRS):
        return False
    rest = [n for n in names if n not in _LEGACY_DIRS]
    return bool(rest) and all(n.endswith((".o", ".d")) for n in rest)


class LocalStore(StagedMultipart, Store):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()
        self.tmp = root / ".tmp"
        self.uploads = root / ".uploads"

    def ensure(self) -> None:
        """Create the store directory (the embedded default must work on a fresh machine)."""
        for d in (self.root, self.tmp, self.uploads):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)

    def check(self) -> None:
        if not self.root.is_dir():
            raise BucketNotFound(f"store directory {self.root} does not exist")
        self.tmp.mkdir(exist_ok=True)
        self.uploads.mkdir(exist_ok=True)

    # -- paths ---------------------------------------------------------------------------------

    def check_key(self, key: str) -> None:
        """Each component, with its suffix, must fit NAME_MAX and the whole file path PATH_MAX
        (temp files live in ``.tmp`` under short names, so the object's own path is the
        longest one a write needs)."""
        parts = key.split("/")
        for part in parts:
            if len(key_bytes(part)) + SUFFIX_BYTES > NAME_MAX:
                raise NameTooLong(f"a key component longer than {NAME_MAX - SUFFIX_BYTES} "
                                  f"bytes cannot be kept in a local store: {part[:40]}...")
        size = len(os.fsencode(self.root)) + len(key_bytes(key)) + 1 + \
            SUFFIX_BYTES * len(parts)
        if size >= PATH_MAX:
            raise NameTooLong(f"the local store path would be {size} bytes, more than "
                              f"PATH_MAX ({PATH_MAX - 1}): {key[:60]}...")

    def _path(self, key: str) -> Path:
        self.check_key(key)
        parts = key.split("/")
        return self.root.joinpath(*(p + ".d" for p in parts[:-1]), parts[-1] + ".o")

    def _found_path(self, key: str) -> Path:
        """The path of a key to read: one too long to be stored is simply not there."""
        try:
            return self._path(key)
        except NameTooLong:
            raise NotFound(f"{key[:60]}...: not found") from None

    def _read_header(self, f: BinaryIO, key: str) -> tuple[dict[str, object], int]:
        magic = f.read(len(MAGIC))
        if magic != MAGIC:
            raise CacheFSError(f"local store object {key} is damaged (bad header)")
        (length,) = _HEADER.unpack(f.read(_HEADER.size))
        header = json.loads(f.read(length))
        return header, len(MAGIC) + _HEADER.size + length

    def _info(self, key: str, path: Path) -> tuple[ObjectInfo, int]:
        try:
            with path.open("rb") as f:
                header, offset = self._read_header(f, key)
                size = os.fstat(f.fileno()).st_size - offset
        except FileNotFoundError:
            raise NotFound(f"{key}: not found") from None
        return ObjectInfo(key, size, str(header["etag"]), float(header["mtime"]),  # type: ignore[arg-type]
                          dict(header.get("metadata") or {})), offset  # type: ignore[call-overload]

    # -- reading -------------------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo:
        return self._info(key, self._found_path(key))[0]

    def open_read(
        self, key: str, start: int = 0, length: int | None = None, etag: str | None = None
    ) -> ReadStream:
        path = self._found_path(key)
        try:
            f = path.open("rb")
        except FileNotFoundError:
            raise NotFound(f"{key}: not found") from None
        try:
            header, offset = self._read_header(f, key)
            size = os.fstat(f.fileno()).st_size - offset
            info = ObjectInfo(key, size, str(header["etag"]), float(header["mtime"]),  # type: ignore[arg-type]
                              dict(header.get("metadata") or {}))  # type: ignore[call-overload]
            return FileReadStream.of(f, info, offset, start, length, etag)
        except BaseException:
            f.close()
            raise

    def list_page(self, prefix: str, delimiter: str | None = "/",
                  token: str | None = None) -> tuple[ListPage, str | None]:
        head, _, start = prefix.rpartition("/")
        base = self.root.joinpath(*(p + ".d" for p in head.split("/"))) if head else self.root
        base_key = head + "/" if head else ""
        entries = sorted(e for e in self._walk(base, base_key, start, delimiter)
                         if token is None or e[0] > token)
        page = ListPage([], [])
        for key, path, is_dir in entries[:PAGE]:
            if is_dir:
                page.prefixes.append(key)
            else:
                with contextlib.suppress(NotFound):
                    page.objects.append(self._info(key, path)[0])
        return page, (entries[PAGE - 1][0] if len(entries) > PAGE else None)

    def _walk(
        self, directory: Path, key_prefix: str, start: str, delimiter: str | None
    ) -> Iterator[tuple[str, Path, bool]]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.name.endswith(".o"):
                name = entry.name[:-2]
                if name.startswith(start):
                    yield key_prefix + name, Path(entry.path), False
            elif entry.name.endswith(".d") and entry.name[:-2].startswith(start):
                sub_key = key_prefix + entry.name[:-2] + "/"
                if delimiter == "/":
                    # Empty directories are pruned on delete, so any entry means a key below.
                    with os.scandir(entry.path) as it:
                        if any(True for _ in it):
                            yield sub_key, Path(entry.path), True
                else:
                    yield from self._walk(Path(entry.path), sub_key, "", None)

    # -- writing -------------------------------------------------------------------------------

    def _write(self, key: str, chunks: Iterator[bytes], etag: str, metadata: Mapping[str, str],
               size: int, replace: bool = True) -> ObjectInfo:
        path = self._path(key)
        now = time.time()
        header = json.dumps({"etag": etag, "mtime": now, "metadata": dict(metadata)}).encode()
        tmp = self.tmp / uuid.uuid4().hex
        with os_errors(f"writing {key}"):
            self.tmp.mkdir(parents=True, exist_ok=True)
            try:
                with tmp.open("wb") as f:
                    f.write(MAGIC + _HEADER.pack(len(header)) + header)
                    for chunk in chunks:
                        f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
                path.parent.mkdir(parents=True, exist_ok=True)
                if replace:
                    os.replace(tmp, path)
                else:  # link(2) never replaces: of two writers exactly one gets the name
                    try:
                        os.link(tmp, path)
                    except FileExistsError:
                        raise Exists(f"{key} already exists (another writer stored it "
                                     "first)") from None
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        return ObjectInfo(key, size, etag, now, dict(metadata))

    def put(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        return self._put(key, data, metadata)

    def _put(self, key: str, data: bytes, metadata: Mapping[str, str],
             replace: bool = True) -> ObjectInfo:
        etag = md5_etag(hashlib.md5(data, usedforsecurity=False).hexdigest())
        return self._write(key, iter([data]), etag, metadata, len(data), replace)

    def conditional_writes(self, near: str = "") -> bool:
        return True

    def put_new(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        return self._put(key, data, metadata, replace=False)

    def copy(self, src: str, dst: str, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        with self.open_read(src) as stream:
            info = stream.info

            def chunks() -> Iterator[bytes]:
                while chunk := stream.read(1 << 20):
                    yield chunk

            return self._write(dst, chunks(), info.etag,
                               info.metadata if metadata is None else metadata, info.size)

    def delete(self, key: str) -> None:
        try:
            path = self._found_path(key)
        except NotFound:
            return  # deleting what is not there is fine
        with os_errors(f"deleting {key}"), contextlib.suppress(FileNotFoundError):
            path.unlink()
        # Prune directories left empty, so the prefix disappears from listings as in S3.
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
