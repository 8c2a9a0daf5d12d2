"""The in-memory tree: one Node per name the mount shows, and the inode table.

Nodes are changed only on the trio thread. A node's path is computed from its parents, so a
directory rename is one assignment. A node that left the tree stays in the table while the kernel
still holds a lookup count on it (open files keep working after unlink or rename-over).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import stat
import time
from collections.abc import Iterator
from typing import Any

from .errors import Detached

ROOT_INO = 1
#: ``Node.listed_at`` of a directory whose listing must be read again at its next access: older
#: than any time on any clock (a trio MockClock starts at 0)
NEVER = -math.inf


class PackDir(enum.Enum):
    """What a directory that is, or is becoming, a pack shows (``Node.pack_dir``)."""

    #: a pack object: its tree comes from the pack's table of contents (read-only)
    PACK = "pack"
    #: a .tar.zst archive shown as a read-only directory
    TARZST = "tar.zst"
    #: a NAME.pack being written here, or a writable layer over a mounted pack
    BUILDING = "building"
    #: being sealed into one pack and uploaded: read-only until the store has it
    SEALING = "sealing"


class PackEntry:
    """Where a file's bytes are inside a mounted pack (``Node.pack_file``). The base layer only
    needs to know that a file has one; pack.mounted.PackFile is the only kind."""

    __slots__ = ()


class Kind(enum.IntEnum):
    FILE = 1
    DIR = 2
    LINK = 3

    @property
    def type_bits(self) -> int:
        return {Kind.FILE: stat.S_IFREG, Kind.DIR: stat.S_IFDIR, Kind.LINK: stat.S_IFLNK}[self]

    @property
    def letter(self) -> str:
        return {Kind.FILE: "f", Kind.DIR: "d", Kind.LINK: "l"}[self]

    @staticmethod
    def from_letter(letter: str) -> Kind:
        return {"f": Kind.FILE, "d": Kind.DIR, "l": Kind.LINK}[letter]


DEFAULT_MODE = {Kind.FILE: 0o644, Kind.DIR: 0o755, Kind.LINK: 0o777}


def now_ns() -> int:
    return time.time_ns()


@dataclasses.dataclass(eq=False)
class Node:
    ino: int
    kind: Kind
    name: str
    parent: Node | None
    mode: int = 0o644  # permission bits only
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    #: set by utimensat; None: reads as mtime (the mount is noatime: reads never move it)
    atime_ns: int | None = None
    size: int = 0
    #: store version this node shows; None while its content exists only here
    etag: str | None = None
    #: SHA-256 of the content when known (blob tier, written here, manifest, metadata)
    digest: str | None = None
    target: str | None = None  # symlinks
    #: where the bytes came from: store | origin | local
    source: str = "store"
    xattrs: dict[str, str] = dataclasses.field(default_factory=dict)
    #: where mode/owner/mtime came from: default | headers | manifest | local
    attrs_from: str = "default"
    #: origin URL for a file the store lacks but an origin has
    origin_url: str | None = None
    #: set on a directory that is a pack, an archive, or a NAME.pack being built
    pack_dir: PackDir | None = None
    #: set on a file shown from a mounted pack (or archive) whose bytes are still the pack's
    pack_file: PackEntry | None = None
    # directories
    children: dict[str, Node] | None = None
    #: trio clock of the last listing: NEVER (list at the next access) or inf (never listed:
    #: the tree lives here). The cache dir keeps it as wall-clock time (tier/listings.py).
    listed_at: float = NEVER
    manifest_etag: str | None = None
    # runtime only
    lookups: int = 0
    staging: Any = None  # handles.Staging while open for writing
    pending: int = 0  # write-back operations not yet in the store
    readers: int = 0
    #: Namespace.seq of the last change made here to this node or below it: a listing that
    #: began before it must not replace or drop the node
    changed_seq: int = 0

    @property
    def is_dir(self) -> bool:
        return self.kind is Kind.DIR

    def path(self) -> str:
        """Path relative to the mount root ('' for the root).

        Raises Detached for a node no longer under the root: a key built from the part of the
        path that is left would put the content somewhere else.
        """
        parts = []
        node = self
        while node.parent is not None:
            parts.append(node.name)
            node = node.parent
        if node.ino != ROOT_INO:
            raise Detached(f"{'/'.join(reversed(parts))}: no longer in the tree")
        return "/".join(reversed(parts))

    def describe(self) -> str:
        """The path for messages: never raises, marks a detached node."""
        try:
            return self.path() or "/"
        except Detached:
            return f"(detached) {self.name}"

    @property
    def attached(self) -> bool:
        """Whether the root leads up to this node through parents (see also reachable)."""
        node = self
        while node.parent is not None:
            node = node.parent
        return node.ino == ROOT_INO

    def ancestors(self) -> Iterator[Node]:
        node = self.parent
        while node is not None:
            yield node
            node = node.parent

    @property
    def is_pack_dir(self) -> bool:
        return self.kind is Kind.DIR and self.pack_dir in (PackDir.PACK, PackDir.TARZST)


    @property
    def st_mode(self) -> int:
        return self.kind.type_bits | (self.mode & 0o7777)

    @property
    def has_local_state(self) -> bool:
        """True while the node holds changes the store does not have yet."""
        return self.pending > 0 or self.staging is not None or (
            self.kind is not Kind.DIR and self.etag is None and self.origin_url is None)

    def touch(self) -> None:
        self.mtime_ns = self.ctime_ns = now_ns()


class InodeTable:
    """Inode numbers for nodes; forgets a node once it left the tree and the kernel let go."""

    def __init__(self, uid: int | None = None, gid: int | None = None) -> None:
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.nodes: dict[int, Node] = {}
        self._next = ROOT_INO + 1
        started = now_ns()
        self.root = Node(ROOT_INO, Kind.DIR, "", None, mode=0o755, uid=self.uid, gid=self.gid,
                         mtime_ns=started, ctime_ns=started, children=None)
        self.nodes[ROOT_INO] = self.root
        self.started_ns = started

    def new(self, kind: Kind, name: str, parent: Node, **attrs: Any) -> Node:
        attrs.setdefault("mode", DEFAULT_MODE[kind])
        attrs.setdefault("uid", self.uid)
        attrs.setdefault("gid", self.gid)
        attrs.setdefault("mtime_ns", self.started_ns)
        attrs.setdefault("ctime_ns", attrs["mtime_ns"])
        node = Node(self._next, kind, name, parent, **attrs)
        self._next += 1
        self.nodes[node.ino] = node
        return node

    def get(self, ino: int) -> Node | None:
        return self.nodes.get(ino)

    def detach(self, node: Node) -> None:
        """Take ``node`` (and its subtree) out of the tree; drop what nothing holds any more."""
        node.parent = None
        stack = [node]
        while stack:
            n = stack.pop()
            if n.children:
                stack.extend(n.children.values())
            self._maybe_drop(n)

    def forget(self, ino: int, count: int) -> None:
        node = self.nodes.get(ino)
        if node is None or ino == ROOT_INO:
            return
        node.lookups = max(0, node.lookups - count)
        self._maybe_drop(node)

    def release(self, node: Node) -> None:
        """A handle on ``node`` closed: drop it if that was the last thing holding it."""
        self._maybe_drop(node)

    def _maybe_drop(self, node: Node) -> None:
        if node.ino == ROOT_INO or node.lookups > 0 or node.staging is not None or node.readers:
            return
        if not self.reachable(node):
            self.nodes.pop(node.ino, None)

    @staticmethod
    def reachable(node: Node) -> bool:
        """Whether the root still leads to ``node``."""
        while node.parent is not None:
            siblings = node.parent.children
            if siblings is None or siblings.get(node.name) is not node:
                return False
            node = node.parent
        return node.ino == ROOT_INO
