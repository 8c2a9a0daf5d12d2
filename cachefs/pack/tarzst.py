"""`.tar.zst` archives (what cacher and actions/cache store) opened as directories.

Such an archive is one zstd stream: nothing in it can be read before everything before it is
decompressed. So it is downloaded and decompressed once into the blob tier (the plain tar is one
blob), its members are indexed, and each file is then a slice of that blob, served by the same
reader as a pack's files. The index is kept in the blob tier under the archive's (key, ETag).
"""

from __future__ import annotations

import logging
import os
import posixpath
import tarfile
from array import array
from pathlib import Path

from ..tier.blobs import DigestBuilder
from . import codec
from .format import Entry, Frame, Toc

log = logging.getLogger(__name__)

SUFFIX = ".tar.zst"
#: the name under which an archive shows as a directory, next to the archive itself
DIR_SUFFIX = ".tar.zst.d"


def decompress_to(source: object, dest: Path) -> tuple[str, int, array]:
    """Decompress a zstd stream (``source.read``) into ``dest`` (worker thread)."""
    builder = DigestBuilder()
    with open(dest, "wb") as out:
        for chunk in codec.stream_decompress(source):  # type: ignore[arg-type]
            builder.update(chunk)
            out.write(chunk)
    digest, crcs = builder.finish()
    os.chmod(dest, 0o600)
    return digest, builder.size, crcs


def index(tar_path: Path, digest: str, size: int) -> Toc:
    """A table of contents for the tar at ``tar_path``: one frame (the whole tar), each file a
    slice of it. Hard links point at their target's bytes; missing parent directories are added
    (worker thread)."""
    entries: dict[str, Entry] = {}
    with tarfile.open(tar_path, mode="r:") as tar:
        for member in tar:
            path = posixpath.normpath(member.name.lstrip("/")).removeprefix("./")
            if path in (".", "") or path.startswith("../"):
                continue
            mtime = int(member.mtime * 1_000_000_000)
            mode = member.mode & 0o7777
            if member.isdir():
                entries[path] = Entry(path, "d", mode, mtime)
            elif member.issym():
                entries[path] = Entry(path, "l", mode or 0o777, mtime,
                                      size=len(member.linkname.encode()), target=member.linkname)
            elif member.islnk():
                target = entries.get(posixpath.normpath(member.linkname).removeprefix("./"))
                if target is not None and target.kind == "f":
                    entries[path] = Entry(path, "f", mode, mtime, target.size, None,
                                          list(target.extents))
            elif member.isreg():
                extents = [(0, member.offset_data, member.size)] if member.size else []
                entries[path] = Entry(path, "f", mode, mtime, member.size, None, extents)
            else:
                log.info("%s: %s is not a file, directory or link: left out", tar_path,
                         member.name)
    for path in list(entries):
        parent = posixpath.dirname(path)
        while parent and parent not in entries:
            entries[parent] = Entry(parent, "d", 0o755, 0)
            parent = posixpath.dirname(parent)
    ordered = sorted(entries.values(), key=lambda e: e.path.split("/"))
    return Toc([Frame(0, size, size, digest)], ordered)
