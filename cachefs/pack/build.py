"""Pack-building directories: a ``NAME.pack/`` directory written in the mount becomes one pack.

A program (``cp -a``, ``go mod download``, ``npm ci``) writes a tree into ``MOUNT/KEY.pack/``. The
files land in the blob tier like any closed file, but nothing is uploaded per file: when the
directory is sealed (idle, ``cachefs sync``, unmount; see docs/SEMANTICS.md) its tree is written
as one pack (docs/PACK-FORMAT.md) and that single object goes to the store as ``KEY.pack``.

This module holds the parts that need no event loop: the build log that keeps a closed file safe
until the seal (so a daemon killed mid-build loses nothing: the next mount seals what was
logged), the tree walk, and writing the pack from blobs. The mount's side is core/packdir.py
and core/seal.py.

"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import posixpath
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..nodes import Kind, Node
from . import codec
from .format import FRAME_TARGET, PackBuilder
from .mounted import PackFile

log = logging.getLogger(__name__)

#: a directory made with this suffix builds a pack
SUFFIX = ".pack"
#: the build logs, in the cache dir
LOG_DIR = "building"


def is_pack_name(name: str) -> bool:
    return name.endswith(SUFFIX) and len(name) > len(SUFFIX)


@dataclasses.dataclass
class Item:
    """One path of a building tree: what the pack will hold for it."""

    path: str                  # relative to the pack root
    kind: str                  # f | d | l
    mode: int
    mtime_ns: int
    digest: str = ""           # files: SHA-256 of the content (a blob in the blob tier)
    size: int = 0
    target: str = ""           # symlinks
    #: files unchanged from the pack below an overlay (not logged: overlays have no log)
    stored: PackFile | None = None


    def record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"p": self.path, "t": self.kind, "m": self.mode,
                               "mt": self.mtime_ns}
        if self.kind == "f":
            rec.update(h=self.digest, s=self.size)
        if self.kind == "l":
            rec["l"] = self.target
        return rec

    @staticmethod
    def from_record(rec: dict[str, Any]) -> Item:
        return Item(str(rec["p"]), str(rec["t"]), int(rec["m"]), int(rec["mt"]),
                    str(rec.get("h", "")), int(rec.get("s", 0)), str(rec.get("l", "")))


class BuildLog:
    """Append-only log of one building directory: a header naming the pack key, then one line
    per change (the path's new state, or its removal). Replaying it gives the tree to seal."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        if os.fstat(self.fd).st_size == 0:
            self._write({"key": key}, durable=True)

    @staticmethod
    def path_for(directory: Path, key: str) -> Path:
        return directory / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".log")

    def _write(self, rec: dict[str, Any], durable: bool) -> None:
        os.write(self.fd, json.dumps(rec, separators=(",", ":")).encode() + b"\n")
        if durable:
            os.fdatasync(self.fd)

    def put(self, item: Item, durable: bool = True) -> None:
        self._write(item.record(), durable)

    def remove(self, path: str, durable: bool = True) -> None:
        self._write({"p": path, "t": "-"}, durable)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    @staticmethod
    def replay(path: Path) -> tuple[str, list[Item]]:
        """(pack key, items in tree order) from a log; a torn last line is ignored."""
        key = ""
        items: dict[str, Item] = {}
        for line in path.read_bytes().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if "key" in rec:
                key = str(rec["key"])
            elif rec.get("t") == "-":
                gone = str(rec["p"])
                for p in [p for p in items if p == gone or p.startswith(gone + "/")]:
                    del items[p]
            elif rec.get("t") in ("f", "d", "l"):
                item = Item.from_record(rec)
                items[item.path] = item
        # a path whose parent was removed later is gone too
        kept = {p: i for p, i in items.items()
                if all(a in items for a in _ancestors(p))}
        return key, [kept[p] for p in sorted(kept, key=tree_order)]


def _ancestors(path: str) -> Iterator[str]:
    head = posixpath.dirname(path)
    while head:
        yield head
        head = posixpath.dirname(head)


def tree_order(path: str) -> list[bytes]:
    """Sort key: names bytewise, a directory's contents right after it (how cp -r reads)."""
    return [os.fsencode(p) for p in path.split("/")]


def items_of(top: Node) -> list[Item]:
    """The tree below a building directory node, in tree order."""
    out: list[Item] = []

    def walk(node: Node, rel: str) -> None:
        for name in sorted((node.children or {}), key=os.fsencode):
            child = (node.children or {})[name]
            path = f"{rel}/{name}" if rel else name
            if child.kind is Kind.DIR:
                out.append(Item(path, "d", child.mode, child.mtime_ns))
                walk(child, path)
            elif child.kind is Kind.LINK:
                out.append(Item(path, "l", child.mode, child.mtime_ns, target=child.target or ""))
            else:
                stored = child.pack_file if isinstance(child.pack_file, PackFile) else None

                out.append(Item(path, "f", child.mode, child.mtime_ns, child.digest or "",
                                child.size, stored=stored))

    walk(top, "")
    return out


def write_pack(items: list[Item], blob_path: Callable[[str], Path], out: Path,
               level: int = codec.DEFAULT_LEVEL) -> dict[str, int]:
    """Write the pack of ``items`` to ``out`` from their blobs (a file unchanged from a stored
    pack points at that pack's frames); returns counts of files and frames.

    Runs in a worker thread. A file's blob is checked against its digest as it is read: a
    pack never holds bytes other than the ones that were closed.
    """
    files = 0
    with open(out, "wb") as f, concurrent.futures.ThreadPoolExecutor(2) as pool:
        def sink(data: bytes) -> None:
            f.write(data)

        builder = PackBuilder(sink, level, pool)
        for item in items:
            if item.kind == "d":
                builder.add_dir(item.path, item.mode, item.mtime_ns)
            elif item.kind == "l":
                builder.add_symlink(item.path, item.target, item.mode, item.mtime_ns)
            elif item.stored is not None:
                files += 1
                pack = item.stored.pack
                builder.add_stored_file(item.path, item.mode, item.mtime_ns, item.size,
                                        item.digest, item.stored.entry.extents, pack.toc,
                                        (pack.ref.key, pack.ref.etag))
            else:
                files += 1
                if item.size == 0:
                    builder.add_file(item.path, item.mode, item.mtime_ns, b"")
                    continue
                src = blob_path(item.digest)
                if item.size <= FRAME_TARGET:
                    data = src.read_bytes()
                    if len(data) != item.size or hashlib.sha256(data).hexdigest() != item.digest:
                        raise ValueError(f"{item.path}: its blob does not match what was closed")
                    builder.add_file(item.path, item.mode, item.mtime_ns, data)
                else:
                    with open(src, "rb") as blob:
                        checked = _Checked(blob)
                        builder.add_large_file(item.path, item.mode, item.mtime_ns, item.digest,
                                               item.size, checked)
                        if checked.seen == item.size and checked.sha.hexdigest() != item.digest:
                            raise ValueError(f"{item.path}: its blob does not match what was "
                                             "closed")
        toc = builder.finish()
        f.flush()
        os.fsync(f.fileno())
    return {"files": files, "frames_new": len(toc.frames) - builder.reused,
            "frames_reused": builder.reused, "bytes_in": builder.bytes_in}


class _Checked:
    """A reader that hashes what passes through it."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.seen = 0  # stays 0 when the builder already holds the content (stored once)

    def read(self, n: int) -> bytes:
        data: bytes = self.f.read(n)
        self.sha.update(data)
        self.seen += len(data)
        return data
