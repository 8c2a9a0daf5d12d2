"""Where a node's attributes are written in the store, and read back from.

Object metadata follows s3fs-fuse's names (``mode`` is the full st_mode in decimal, ``mtime`` whole
seconds, ``uid``, ``gid``), so either tool reads the other's files; cachefs adds ``cachefs-*``
names for what s3fs has no field for (nanoseconds, content digest, symlink type).
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from typing import Any

from .nodes import Kind, Node, PackDir

SYMLINK = "symlink"


def object_metadata(node: Node, digest: str | None = None) -> dict[str, str]:
    meta = {
        "mode": str(node.st_mode),
        "mtime": str(node.mtime_ns // 1_000_000_000),
        "uid": str(node.uid),
        "gid": str(node.gid),
        "cachefs-mtime": str(node.mtime_ns),
    }
    if digest:
        meta["cachefs-sha256"] = digest
    if node.kind is Kind.LINK:
        meta["cachefs-type"] = SYMLINK
    return meta


def attrs_from_metadata(meta: Mapping[str, str]) -> dict[str, Any]:
    """Attributes found in object metadata (cachefs's or s3fs-fuse's); unparsable ones ignored."""
    attrs: dict[str, Any] = {}
    mode = _int(meta.get("mode"))
    if mode is not None:
        attrs["mode"] = mode & 0o7777
        if stat.S_ISLNK(mode):
            attrs["kind"] = Kind.LINK
    if meta.get("cachefs-type") == SYMLINK:
        attrs["kind"] = Kind.LINK
    mtime_ns = _int(meta.get("cachefs-mtime"))
    if mtime_ns is None:
        seconds = _float(meta.get("mtime"))
        if seconds is not None:
            mtime_ns = int(seconds * 1_000_000_000)
    if mtime_ns is not None:
        attrs["mtime_ns"] = mtime_ns
    for name in ("uid", "gid"):
        value = _int(meta.get(name))
        if value is not None:
            attrs[name] = value
    return attrs


def manifest_entry(node: Node) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": node.kind.letter, "mode": node.mode, "uid": node.uid, "gid": node.gid,
        "mtime_ns": node.mtime_ns,
    }
    if node.atime_ns is not None:
        entry["atime_ns"] = node.atime_ns
    if node.pack_dir is PackDir.PACK:  # a pack object, shown as a directory
        entry.update(type="p", etag=node.etag, size=node.size)
    elif node.kind is not Kind.DIR:
        entry["etag"] = node.etag
        entry["size"] = node.size  # the plain size, also for objects stored compressed
    if node.digest:
        entry["sha256"] = node.digest
    if node.target is not None:
        entry["target"] = node.target
    if node.xattrs:
        entry["xattrs"] = dict(node.xattrs)
    return entry


def apply_manifest_entry(node: Node, entry: Mapping[str, Any]) -> bool:
    """Apply a manifest entry if it describes this version of the node. Returns whether it did."""
    kind = entry.get("type")
    if kind == "p":  # a pack object: shown as a read-only directory
        if node.pack_dir is not PackDir.PACK and \
                (node.kind is Kind.DIR or entry.get("etag") != node.etag):
            return False
        node.kind, node.pack_dir, node.children = Kind.DIR, PackDir.PACK, None

    elif node.kind is Kind.DIR:
        if kind != "d":
            return False
    elif kind not in ("f", "l") or entry.get("etag") != node.etag:
        return False
    try:
        node.mode = int(entry.get("mode", node.mode)) & 0o7777
        node.uid = int(entry.get("uid", node.uid))
        node.gid = int(entry.get("gid", node.gid))
        node.mtime_ns = node.ctime_ns = int(entry.get("mtime_ns", node.mtime_ns))
        atime = entry.get("atime_ns")
        node.atime_ns = int(atime) if atime is not None else None
    except (TypeError, ValueError):
        return False
    if kind == "l" and isinstance(entry.get("target"), str):
        node.kind = Kind.LINK
        node.target = entry["target"]
    sha = entry.get("sha256")
    if isinstance(sha, str) and len(sha) == 64:
        node.digest = sha
    if kind == "f" and isinstance(entry.get("size"), int):
        node.size = entry["size"]
    xattrs = entry.get("xattrs")
    if isinstance(xattrs, dict):
        node.xattrs = {str(k): str(v) for k, v in xattrs.items()}
    node.attrs_from = "manifest"
    return True


def apply_object_metadata(node: Node, meta: Mapping[str, str]) -> None:
    """Attributes from an object's own metadata, unless the manifest already said more."""
    if node.attrs_from in ("manifest", "local"):
        return
    attrs = attrs_from_metadata(meta)
    attrs.pop("kind", None)  # a file seen as a file stays one until the next listing
    for name, value in attrs.items():
        setattr(node, name, value)
    if "mtime_ns" in attrs:
        node.ctime_ns = attrs["mtime_ns"]
    sha = meta.get("cachefs-sha256")
    if sha and len(sha) == 64:
        node.digest = sha
    plain = meta.get("cachefs-size")
    if plain and plain.isdigit():
        node.size = int(plain)  # stored compressed: the listing showed the stored size
    if attrs:
        node.attrs_from = "headers"


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
