"""What the mount changed here, so that a listing never undoes it (see remote/namespace.py).

Every local change gets a sequence number (``local_change``); a listing remembers the number it
began at (``listing_from``) and never replaces or drops a node changed after that, nor brings
back a name removed after that (``undone_locally``). Names being created or moved are reserved
(``reserving``/``moving``) and a listing leaves them alone until the change is done. Changed on
the trio thread only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..nodes import Node


class LocalChanges:
    def __init__(self) -> None:
        #: sequence number of the last local change
        self.seq = 0
        #: names removed here: directory inode -> name -> seq of the removal
        self._removed: dict[int, dict[str, int]] = {}
        #: (directory inode, name) pairs a create or rename is working on
        self._reserved: dict[tuple[int, str], int] = {}
        #: directories being renamed (their subtree's listings are not merged meanwhile)
        self._moving: dict[int, int] = {}
        #: listings in progress, by the sequence number they began at
        self._active: dict[int, int] = {}

    def local_change(self, directory: Node, name: str | None = None) -> None:
        """``directory`` (its entry ``name``, if given) changed here: listings that began
        before now must not undo it."""
        self.seq += 1
        if name is not None:
            child = (directory.children or {}).get(name)
            if child is None:
                self._removed.setdefault(directory.ino, {})[name] = self.seq
            else:
                child.changed_seq = self.seq
                self._removed.get(directory.ino, {}).pop(name, None)
        for node in (directory, *directory.ancestors()):
            node.changed_seq = self.seq

    @contextlib.contextmanager
    def reserving(self, *entries: tuple[Node, str]) -> Iterator[None]:
        """Listings leave these (directory, name) entries alone until the block ends."""
        keys = [(d.ino, n) for d, n in entries]
        for key in keys:
            self._reserved[key] = self._reserved.get(key, 0) + 1
        try:
            yield
        finally:
            for key in keys:
                if self._reserved[key] <= 1:
                    del self._reserved[key]
                else:
                    self._reserved[key] -= 1
            for directory, name in entries:
                self.local_change(directory, name)

    @contextlib.contextmanager
    def moving(self, node: Node, old: tuple[Node, str], new: tuple[Node, str]) \
            -> Iterator[None]:
        """``node`` moves from entry ``old`` to entry ``new``: both entries are reserved, and
        listings of its subtree (which see the store half moved) are not merged."""
        with self.reserving(old, new):
            self._moving[node.ino] = self._moving.get(node.ino, 0) + 1
            try:
                yield
            finally:
                if self._moving[node.ino] <= 1:
                    del self._moving[node.ino]
                else:
                    self._moving[node.ino] -= 1

    def in_move(self, directory: Node) -> bool:
        return bool(self._moving) and any(
            n.ino in self._moving for n in (directory, *directory.ancestors()))

    def undone_locally(self, directory: Node, name: str, since: int) -> bool:
        """Whether a listing that began at ``since`` would undo a change made here to the
        entry ``name`` of ``directory``."""
        if (directory.ino, name) in self._reserved:
            return True
        node = (directory.children or {}).get(name)
        if node is not None and node.changed_seq > since:
            return True
        return self._removed.get(directory.ino, {}).get(name, 0) > since

    @contextlib.contextmanager
    def listing_from(self) -> Iterator[int]:
        """A listing in progress, from the current sequence number on; what it must not undo
        is remembered until no listing that began earlier is left."""
        since = self.seq
        self._active[since] = self._active.get(since, 0) + 1
        try:
            yield since
        finally:
            if self._active[since] <= 1:
                del self._active[since]
            else:
                self._active[since] -= 1
            oldest = min(self._active, default=self.seq)
            for directory in [d for d, names in self._removed.items()
                              if all(s <= oldest for s in names.values())]:
                del self._removed[directory]


__all__ = ["LocalChanges"]
