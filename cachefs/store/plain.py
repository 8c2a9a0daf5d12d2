"""A store that is a plain directory: key ``a/b/c`` is the file ``DIR/a/b/c``, nothing else.

What a person sees in DIR is what the mount shows, and a file written through the mount is an
ordinary file there: its mode and mtime are the file's own (set from the object's metadata when
it is written, read back from the file), so ``ls -l``, ``rsync`` and ``cp -a`` work on the store
directly, and a file put there by hand is an object at once.

The rest of an object's metadata (user metadata, the ETag) is kept in one extended attribute,
``user.cachefs``, rather than a sidecar file: it travels with the file (rename, ``cp -a``,
``rsync -X``), adds no names to the directory, and cannot be left behind by a crash between two
writes. With it go the file's size, mtime and inode at the time of writing: a file changed by
hand no longer matches them, so its old ETag (and metadata) is never served for new content;
it gets an ETag made from its stat, flagged as not an MD5 (``ObjectInfo.encrypted``), so a
reader does not check content against it. On a file system without user xattrs only mode and
mtime survive, and ETags come from stat.

A directory tree cannot hold both ``a`` and ``a/b``: writing one while the other exists is
refused with InvalidArgument, one clear line, never retried. A key ending in ``/`` (a directory
marker) is a directory; one made through the store is marked in its xattr so that it stays when
the files below it go (other directories are pruned once empty, as S3 prefixes vanish), and an
empty directory made by hand is listed as a marker too.

The store's own files (temp files, multipart parts) live in ``DIR/.cachefs-store``, on the same
file system so that a finished object is renamed into place (readers see the old file or the
new one, never a mix); that name is not a key.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import (
    BucketNotFound,
    Exists,
    InvalidArgument,
    NameTooLong,
    NotFound,
)
from .base import ListPage, ObjectInfo, ReadStream, Store, key_bytes
from .local import NAME_MAX, PAGE, PATH_MAX
from .staged import FileReadStream, StagedMultipart, md5_etag, os_errors

log = logging.getLogger(__name__)

#: the store's own directory inside DIR; never a key
INTERNAL = ".cachefs-store"
#: the extended attribute holding an object's ETag and metadata, with the stat it belongs to
XATTR = "user.cachefs"
#: the ETag of an empty body (directory markers)
EMPTY_ETAG = md5_etag(hashlib.md5(b"", usedforsecurity=False).hexdigest())


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _read_record(path: Path | int) -> dict[str, Any] | None:
    try:
        raw = os.getxattr(path, XATTR)
    except OSError:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _regular_mode(value: str | None) -> bool:
    """Whether metadata ``mode`` is a regular file's (the only kind the file's mode stands for:
    a symlink's object is a file here, but its mode says symlink)."""
    try:
        return value is not None and stat.S_ISREG(int(value))
    except ValueError:
        return False


class PlainDirStore(StagedMultipart, Store):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()
        self.internal = root / INTERNAL
        self.tmp = self.internal / "tmp"
        self.uploads = self.internal / "uploads"
        self._xattrs_warned = False

    def ensure(self) -> None:
        for d in (self.root, self.tmp, self.uploads):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._drop_old_dirs()

    def check(self) -> None:
        if not self.root.is_dir():
            raise BucketNotFound(f"store directory {self.root} does not exist")
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.uploads.mkdir(parents=True, exist_ok=True)
        self._drop_old_dirs()

    def _drop_old_dirs(self) -> None:
        """An old-encoding store that never held an object is a plain one, once the empty work
        directories of the old encoding are gone."""
        for name in (".tmp", ".uploads"):
            with contextlib.suppress(OSError):
                (self.root / name).rmdir()

    def conditional_writes(self, near: str = "") -> bool:
        return True  # link(2) never replaces

    # -- paths ---------------------------------------------------------------------------------

    def check_key(self, key: str) -> None:
        parts = key.rstrip("/").split("/")
        for part in parts:
            if len(key_bytes(part)) > NAME_MAX:
                raise NameTooLong(f"a key component longer than {NAME_MAX} bytes cannot be a "
                                  f"file name in a local store: {part[:40]}...")
        size = len(os.fsencode(self.root)) + 1 + len(key_bytes(key.rstrip("/")))
        if size >= PATH_MAX:
            raise NameTooLong(f"the local store path would be {size} bytes, more than "
                              f"PATH_MAX ({PATH_MAX - 1}): {key[:60]}...")

    def _parts(self, key: str) -> list[str]:
        self.check_key(key)
        parts = key.rstrip("/").split("/")
        if any(p in ("", ".", "..") for p in parts) or parts[0] == INTERNAL:
            raise InvalidArgument(f"{key!r} cannot be a path in a local store directory")
        return parts

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*self._parts(key))

    def _found_path(self, key: str) -> Path:
        try:
            return self._path(key)
        except (NameTooLong, InvalidArgument):
            raise NotFound(f"{key[:60]}: not found") from None

    # -- reading -------------------------------------------------------------------------------

    def _info(self, key: str, st: os.stat_result, record: dict[str, Any] | None) -> ObjectInfo:
        if stat.S_ISDIR(st.st_mode):
            meta = dict((record or {}).get("meta") or {})
            return ObjectInfo(key, 0, EMPTY_ETAG, st.st_mtime, meta)
        if record is not None and record.get("stamp") == _stamp(st):
            meta = dict(record.get("meta") or {})
            etag, synthetic = str(record["etag"]), False
        else:  # put here by hand, or changed by hand since: the file's stat says what it is
            meta = {}
            etag = f'"{st.st_ino:x}.{st.st_size:x}.{st.st_mtime_ns:x}"'
            synthetic = True
        own = {"mode": str(st.st_mode), "mtime": str(st.st_mtime_ns // 1_000_000_000),
               "cachefs-mtime": str(st.st_mtime_ns)}
        if synthetic:
            meta = own
        elif _regular_mode(meta.get("mode")):  # the file's own, as changed by hand since
            meta.update({k: v for k, v in own.items() if k in meta})
        return ObjectInfo(key, st.st_size, etag, st.st_mtime, meta, encrypted=synthetic)

    def _stat_info(self, key: str, path: Path, directory: bool) -> ObjectInfo:
        """The object at ``path``: a regular file, or for a marker (``dir/``) a directory."""
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{key}: not found") from None
        if stat.S_ISDIR(st.st_mode) != directory or not (directory or stat.S_ISREG(st.st_mode)):
            raise NotFound(f"{key}: not found" + ("" if directory else " (a directory)"))
        return self._info(key, st, _read_record(path))

    def _marker(self, key: str, path: Path) -> ObjectInfo:
        return self._stat_info(key, path, directory=True)

    def head(self, key: str) -> ObjectInfo:
        path = self._found_path(key)
        return self._stat_info(key, path, directory=key.endswith("/"))

    def open_read(
        self, key: str, start: int = 0, length: int | None = None, etag: str | None = None
    ) -> ReadStream:
        path = self._found_path(key)
        if key.endswith("/"):
            info = self._marker(key, path)
            return FileReadStream(open(os.devnull, "rb"), 0, info)
        try:
            f: BinaryIO = open(path, "rb")  # noqa: SIM115 (the stream closes it)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(f"{key}: not found") from None
        try:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise NotFound(f"{key}: not found (a directory)")
            info = self._info(key, st, _read_record(f.fileno()))
            return FileReadStream.of(f, info, 0, start, length, etag)
        except BaseException:
            f.close()
            raise

    def list_page(self, prefix: str, delimiter: str | None = "/",
                  token: str | None = None) -> tuple[ListPage, str | None]:
        head, _, start = prefix.rpartition("/")
        base_key = head + "/" if head else ""
        try:
            base = self.root.joinpath(*self._parts(head)) if head else self.root
        except (NameTooLong, InvalidArgument):
            return ListPage([], []), None
        entries: list[tuple[str, Path, bool]] = []
        if head and not start and self._is_marker(base):
            entries.append((base_key, base, False))  # the marker itself, as S3 lists it
        entries += self._walk(base, base_key, start, delimiter)
        entries = sorted(e for e in entries if token is None or e[0] > token)
        page = ListPage([], [])
        for key, path, is_prefix in entries[:PAGE]:
            if is_prefix:
                page.prefixes.append(key)
                continue
            with contextlib.suppress(OSError):
                st = os.stat(path)
                page.objects.append(self._info(key, st, _read_record(path)))
        return page, (entries[PAGE - 1][0] if len(entries) > PAGE else None)

    def _is_marker(self, path: Path) -> bool:
        if not path.is_dir():
            return False
        if _read_record(path) is not None:
            return True
        with os.scandir(path) as it:
            return not any(True for _ in it)

    def _walk(self, directory: Path, key_prefix: str, start: str,
              delimiter: str | None) -> Iterator[tuple[str, Path, bool]]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if not entry.name.startswith(start) or (directory == self.root and
                                                    entry.name == INTERNAL):
                continue
            key = key_prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                if delimiter == "/":
                    yield key + "/", Path(entry.path), True
                else:
                    if self._is_marker(Path(entry.path)):
                        yield key + "/", Path(entry.path), False
                    yield from self._walk(Path(entry.path), key + "/", "", None)
            elif entry.is_file(follow_symlinks=False):
                yield key, Path(entry.path), False

    # -- writing -------------------------------------------------------------------------------

    def _conflict(self, key: str, what: str) -> InvalidArgument:
        return InvalidArgument(f"cannot store {key} in the local store directory {self.root}: "
                               f"{what} (a directory tree cannot hold both a and a/b)")

    def _make_parents(self, key: str, parts: list[str]) -> None:
        path = self.root
        for i, part in enumerate(parts[:-1]):
            path = path / part
            try:
                os.mkdir(path)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(path).st_mode):  # gone meanwhile: FileNotFound
                    raise self._conflict(key, f"{'/'.join(parts[:i + 1])} is a file") from None
            except NotADirectoryError:
                raise self._conflict(key, f"{'/'.join(parts[:i])} is a file") from None

    def _set_record(self, fd_or_path: int | Path, record: dict[str, Any]) -> None:
        try:
            os.setxattr(fd_or_path, XATTR, json.dumps(record).encode())
        except OSError as e:
            if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.E2BIG, errno.ENOSPC):
                raise
            if not self._xattrs_warned:
                self._xattrs_warned = True
                log.warning("%s: no user xattrs here (%s): object metadata other than mode "
                            "and mtime is not kept, ETags come from the files' stat",
                            self.root, e.strerror)

    def _write_marker(self, key: str, metadata: Mapping[str, str]) -> ObjectInfo:
        parts = self._parts(key)
        with os_errors(f"writing {key}"):
            self._make_parents(key, parts)
            path = self.root.joinpath(*parts)
            try:
                os.mkdir(path)
            except FileExistsError:
                if not path.is_dir():
                    raise self._conflict(key, f"{key.rstrip('/')} is a file") from None
            self._set_record(path, {"meta": dict(metadata)})
        return ObjectInfo(key, 0, EMPTY_ETAG, time.time(), dict(metadata))

    def _check_upload_key(self, key: str) -> None:
        self._parts(key)  # also refuses a key that a file or directory in the way blocks

    def _write(self, key: str, chunks: Iterator[bytes], etag: str | None,
               metadata: Mapping[str, str], size: int, replace: bool = True) -> ObjectInfo:
        """``etag`` None: the MD5 of the bytes written."""
        if key.endswith("/"):
            if not replace and self._is_marker(self._path(key)):
                raise Exists(f"{key} already exists")
            for _ in chunks:
                pass
            return self._write_marker(key, metadata)
        parts = self._parts(key)
        path = self.root.joinpath(*parts)
        tmp = self.tmp / uuid.uuid4().hex
        with os_errors(f"writing {key}"):
            self.tmp.mkdir(parents=True, exist_ok=True)
            try:
                md5 = hashlib.md5(usedforsecurity=False) if etag is None else None
                with tmp.open("wb") as f:
                    for chunk in chunks:
                        f.write(chunk)
                        if md5 is not None:
                            md5.update(chunk)
                    f.flush()
                    if md5 is not None:
                        etag = md5_etag(md5.hexdigest())
                    self._apply_attrs(f.fileno(), metadata)
                    os.fsync(f.fileno())
                    st = os.fstat(f.fileno())
                    self._set_record(f.fileno(), {"etag": etag, "meta": dict(metadata),
                                                  "stamp": _stamp(st)})
                for attempt in range(10):  # a delete beside it may prune a new parent away
                    try:
                        self._make_parents(key, parts)
                        self._place(key, tmp, path, replace)
                        break
                    except FileNotFoundError:
                        if attempt == 9:
                            raise
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        assert etag is not None
        return ObjectInfo(key, size, etag, st.st_mtime, dict(metadata))

    @staticmethod
    def _apply_attrs(fd: int, metadata: Mapping[str, str]) -> None:
        """The object's mode and mtime become the file's own (a symlink's object, whose body
        is its target, is an ordinary 0644 file here)."""
        with contextlib.suppress(ValueError, KeyError):
            mode = int(metadata["mode"])
            os.fchmod(fd, mode & 0o7777 if stat.S_IFMT(mode) in (0, stat.S_IFREG) else 0o644)
        with contextlib.suppress(ValueError, KeyError):
            mtime_ns = int(metadata["cachefs-mtime"]) if "cachefs-mtime" in metadata else \
                int(metadata["mtime"]) * 1_000_000_000
            os.utime(fd, ns=(mtime_ns, mtime_ns))

    def _place(self, key: str, tmp: Path, path: Path, replace: bool) -> None:
        if path.is_dir():
            raise self._conflict(key, f"{key} is a directory")
        if replace:
            try:
                os.replace(tmp, path)
            except IsADirectoryError:
                raise self._conflict(key, f"{key} is a directory") from None
            return
        try:  # link(2) never replaces: of two writers exactly one gets the name
            os.link(tmp, path)
        except FileExistsError:
            raise Exists(f"{key} already exists (another writer stored it first)") from None

    def put(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        return self._put(key, data, metadata)

    def put_new(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        return self._put(key, data, metadata, replace=False)

    def _put(self, key: str, data: bytes, metadata: Mapping[str, str],
             replace: bool = True) -> ObjectInfo:
        etag = md5_etag(hashlib.md5(data, usedforsecurity=False).hexdigest())
        return self._write(key, iter([data]), etag, metadata, len(data), replace)

    def import_object(self, key: str, chunks: Iterator[bytes], info: ObjectInfo) -> None:
        """Store an object read from another store with its ETag and metadata kept
        (``cachefs migrate-store``: caches keyed by ETag stay valid)."""
        self._write(key, chunks, info.etag, info.metadata, info.size, replace=False)

    def copy(self, src: str, dst: str, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        with self.open_read(src) as stream:
            info = stream.info

            def chunks() -> Iterator[bytes]:
                while chunk := stream.read(1 << 20):
                    yield chunk

            # a stat-made ETag belongs to the source file only: the copy gets its MD5
            etag = None if info.encrypted else info.etag
            return self._write(dst, chunks(), etag,
                               info.metadata if metadata is None else metadata, info.size)

    def delete(self, key: str) -> None:
        try:
            path = self._found_path(key)
        except NotFound:
            return
        with os_errors(f"deleting {key}"):
            if key.endswith("/"):
                with contextlib.suppress(OSError):
                    os.removexattr(path, XATTR)
                with contextlib.suppress(OSError):
                    path.rmdir()
            else:
                if path.is_dir():
                    return  # a directory is not the object ``key``
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    path.unlink()
        self._prune(path.parent)

    def _prune(self, parent: Path) -> None:
        """Directories left empty go, unless made as markers, as prefixes vanish in S3."""
        while parent != self.root and parent.is_relative_to(self.root):
            if _read_record(parent) is not None:
                return
            try:
                parent.rmdir()
            except OSError:
                return
            parent = parent.parent


def migrate(root: Path) -> dict[str, Any]:
    """Convert a store in the old encoding (local.py) at ``root`` into a plain directory,
    keeping every object's ETag and metadata (so blob tiers and listings keyed by ETag stay
    valid). Built beside it, then swapped in with two renames; the old tree is kept as
    ``ROOT.old-encoding``. Keys a directory tree cannot hold (``a`` and ``a/b``) leave the store
    as it was: InvalidArgument, naming one."""
    from .local import LocalStore, is_legacy

    if not is_legacy(root):
        raise InvalidArgument(f"{root} is not a store in the old encoding")
    legacy = LocalStore(root)
    target = root.with_name(root.name + ".migrating")
    old = root.with_name(root.name + ".old-encoding")
    if old.exists():
        raise Exists(f"{old} exists (an earlier migration's old tree): move it away first")
    shutil.rmtree(target, ignore_errors=True)  # left by an interrupted run
    plain = PlainDirStore(target)
    plain.ensure()
    objects = size = 0
    conflicts: list[str] = []
    for page in legacy.list_pages("", None):
        for info in page.objects:
            with legacy.open_read(info.key) as stream:
                chunks = iter(lambda s=stream: s.read(1 << 20), b"")  # type: ignore[misc]
                try:
                    plain.import_object(info.key, chunks, stream.info)
                except InvalidArgument:
                    conflicts.append(info.key)
                    continue
            objects += 1
            size += info.size
    if conflicts:
        shutil.rmtree(target, ignore_errors=True)
        raise InvalidArgument(f"{len(conflicts)} key(s) cannot be files in a directory tree "
                              f"beside others (first: {conflicts[0]}); {root} is left in the "
                              "old encoding, which holds them")
    os.rename(root, old)
    os.rename(target, root)
    return {"objects": objects, "bytes": size, "old": str(old)}
