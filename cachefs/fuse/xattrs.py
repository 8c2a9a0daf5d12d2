"""Extended attributes: per-file facts, settings on directories, and the daemon's control channel.

``user.cachefs.*`` names are cachefs's own; other ``user.*`` attributes are kept with the file
(in its directory's manifest, so every mount sees them). The mount root also answers a few
names that the CLI uses to talk to the daemon: no socket to find, and it works wherever the
mount is visible (a sibling container included).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

from ..core.fs import CacheFS
from ..errors import InvalidArgument, NoSpace, NotFound, ReadOnly, TooBig, Unsupported
from ..nodes import Kind, Node

NS = "user.cachefs."
#: control names answered by the mount root
CONTROL = ("pid", "stats", "sync", "status", "store", "version", "config", "keys", "subtree",
           "warmed", "verified", "packed")
#: actions that work on read-only mounts and mounted packs too (fetch approves origin uploads)
READ_ACTIONS = ("warm", "verify", "pack")
#: settings a directory carries for everything below it (issue: origin fallback)
DIR_SETTINGS = ("origin", "origin-fetch", "checksums")
#: one value (E2BIG past it), and all names and values of one file (ENOSPC past it): a file's
#: attributes live in its directory's manifest, which every listing downloads whole
MAX_VALUE = 16 << 10
MAX_TOTAL = 32 << 10
#: how a value that is not UTF-8 text is kept (manifests and the cache dir hold JSON text); a text
#: value that happens to start with it is kept the same way, so every value reads back exactly
BINARY = "\x00base64:"


def encode_value(value: bytes) -> str:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = BINARY
    if text.startswith(BINARY):
        return BINARY + base64.b64encode(value).decode("ascii")
    return text


def decode_value(text: str) -> bytes:
    if text.startswith(BINARY):
        try:
            return base64.b64decode(text[len(BINARY):], validate=True)
        except ValueError:
            pass  # written by hand into a manifest: shown as it is
    return text.encode("utf-8", "surrogateescape")


def _stored_size(xattrs: dict[str, str], skip: str) -> int:
    """Bytes of names and values a file holds, as programs gave them (``skip`` is replaced)."""
    return sum(len(k.encode("utf-8", "surrogateescape")) + len(decode_value(v))
               for k, v in xattrs.items() if k != skip)


class NoAttr(NotFound):
    """The attribute does not exist (ENODATA)."""

    errno = 61  # ENODATA


class Xattrs:
    def __init__(self, fs: CacheFS, control: Callable[[str], Awaitable[dict[str, Any] | str]],
                 validate_setting: Callable[[Node, str, str], None] | None = None,
                 actions: dict[str, Callable[[str], Awaitable[None]]] | None = None) -> None:
        self.fs = fs
        self.control = control
        self.validate_setting = validate_setting or (lambda node, name, value: None)
        #: root attributes that are commands: setfattr -n user.cachefs.fetch -v PATH MOUNT
        self.actions = actions or {}

    def _sha256(self, node: Node) -> str | None:
        return node.digest or node.xattrs.get(NS + "sha256")

    async def get(self, node: Node, name: str) -> bytes:
        if name.startswith(NS):
            short = name[len(NS):]
            if node is self.fs.table.root and short in CONTROL:
                value = await self.control(short)
                return (value if isinstance(value, str) else json.dumps(value)).encode()
            attr = self._cachefs_attr(node, short)
            if attr is None:
                raise NoAttr(name)
            return attr.encode()
        if name in node.xattrs:
            return decode_value(node.xattrs[name])
        raise NoAttr(name)

    def _cachefs_attr(self, node: Node, short: str) -> str | None:
        if short == "source" and node.kind is not Kind.DIR:
            return "origin" if node.origin_url and node.etag is None else node.source
        if short == "sha256" and node.kind is Kind.FILE:
            return self._sha256(node)
        if short == "key":
            return self.fs.ns.key(node) if node.kind is not Kind.DIR \
                else self.fs.ns.dir_prefix(node)
        if short == "url" and node.origin_url:
            return node.origin_url
        return node.xattrs.get(NS + short)

    def list(self, node: Node) -> list[str]:
        names = [n for n in node.xattrs if n.startswith("user.")]
        if node.kind is not Kind.DIR:
            names.append(NS + "source")
            names.append(NS + "key")
            if self._sha256(node) and NS + "sha256" not in names:
                names.append(NS + "sha256")
        return sorted(set(names))

    async def set(self, node: Node, name: str, value: bytes) -> None:
        if not name.startswith("user."):
            raise Unsupported(f"only user.* extended attributes are kept ({name})")
        short = name[len(NS):] if name.startswith(NS) else ""
        if node is self.fs.table.root and short in self.actions and short in READ_ACTIONS:
            if len(value) > MAX_VALUE:  # these change nothing the mount shows
                raise InvalidArgument(f"{name}: value longer than {MAX_VALUE} bytes")
            await self.actions[short](value.decode("utf-8", "replace"))
            return
        if not self.fs.access.may_change_attrs(node):
            raise ReadOnly("the mount (or this pack) is read-only")
        if len(value) > MAX_VALUE:
            raise TooBig(f"{name}: value longer than {MAX_VALUE} bytes")
        if not name.startswith(NS):
            text = encode_value(value)
        else:
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidArgument(f"{name}: values must be UTF-8 text") from None
        if name.startswith(NS):
            short = name[len(NS):]
            if node is self.fs.table.root and short in self.actions:
                await self.actions[short](text)
                return
            if node is self.fs.table.root and short in CONTROL:
                raise InvalidArgument(f"{name} is read-only")
            if short in ("source", "key", "url"):
                raise InvalidArgument(f"{name} is read-only")
            if short in DIR_SETTINGS and node.kind is not Kind.DIR:
                raise InvalidArgument(f"{name} can only be set on a directory")
            if short == "sha256":
                text = text.strip().lower()
                if node.kind is not Kind.FILE or len(text) != 64 or \
                        any(c not in "0123456789abcdef" for c in text):
                    raise InvalidArgument(f"{name} must be a 64-digit hex SHA-256")
            self.validate_setting(node, short, text)
        total = _stored_size(node.xattrs, name) + len(name.encode("utf-8", "surrogateescape")) \
            + len(value)
        if total > MAX_TOTAL:
            raise NoSpace(f"{node.path() or '/'}: extended attributes would take {total} bytes, "
                          f"more than {MAX_TOTAL} per file")
        node.xattrs[name] = text
        self.fs.entries.attrs_changed(node)

    async def remove(self, node: Node, name: str) -> None:
        if not self.fs.access.may_change_attrs(node):
            raise ReadOnly("the mount (or this pack) is read-only")
        if name not in node.xattrs:
            raise NoAttr(name)
        del node.xattrs[name]
        self.fs.entries.attrs_changed(node)

