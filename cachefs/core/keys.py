"""The filesystem core, key limits: refuse up front a name whose store key would be too long.

Every operation that creates or moves a key asks the store (``Store.check_key``) before it
changes anything, so a name the store can never hold fails at once with ENAMETOOLONG instead of
as an upload that fails in the background, where no caller can be told (see docs/SEMANTICS.md).
A directory needs room for its marker (``dir/``) and for its manifest (``dir/.cachefs.dir``),
the longest key cachefs itself puts in it; a directory rename checks every key below it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import trio

from ..names import MANIFEST_NAME
from ..nodes import Kind, Node
from ..remote.namespace import Namespace
from ..store import key_bytes
from .options import Limiters
from .packdir import Layers


class KeyChecks:
    def __init__(self, *, ns: Namespace, layers: Layers, limits: Limiters) -> None:
        self.ns = ns
        self.layers = layers
        self.limits = limits

    def _check_keys(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.ns.store.check_key(key)

    def check_new_entry(self, parent: Node, name: str, kind: Kind) -> None:
        """NameTooLong if a new ``kind`` named ``name`` in ``parent`` could not be stored.
        Below a NAME.pack being built nothing becomes a key: the pack holds it."""
        if self.layers.building_of(parent) is not None:
            return
        self._check_keys(entry_keys(self.ns.dir_prefix(parent) + name, kind))

    async def check_rename_keys(self, old_parent: Node, old_name: str, new_parent: Node,
                                new_name: str) -> None:
        """NameTooLong, before anything moves, if any key the rename makes would be too long:
        the new name's own, and for a directory every key below it after the move."""
        node = await self.ns.lookup(old_parent, old_name)
        building = self.layers.building_of
        if node is None or new_parent is node or node in new_parent.ancestors() or \
                building(node) is not None or building(new_parent) is not None:

            return  # not found, into itself, or inside a NAME.pack: the rename itself answers
        new_base = self.ns.dir_prefix(new_parent) + new_name
        self._check_keys(entry_keys(new_base, node.kind))
        if node.kind is not Kind.DIR:
            return
        old_prefix, new_prefix = self.ns.dir_prefix(node), new_base + "/"
        if not may_grow(old_prefix, new_prefix):
            return  # every key below was storable, and none gets longer or deeper
        listing = await trio.to_thread.run_sync(self.ns.store.list_all, old_prefix, None,
                                                limiter=self.limits.s3)
        below = {obj.key[len(old_prefix):] for obj in listing.objects}
        below.update(local_keys_below(node))
        self._check_keys(new_prefix + rest for rest in sorted(below, key=len, reverse=True))


def entry_keys(base: str, kind: Kind) -> tuple[str, ...]:
    """The keys a ``kind`` whose key is ``base`` needs (for a directory: marker, manifest)."""
    if kind is Kind.DIR:
        return base + "/", f"{base}/{MANIFEST_NAME}"
    return (base,)


def may_grow(old_prefix: str, new_prefix: str) -> bool:
    """Could a key below ``old_prefix`` become too long when moved below ``new_prefix``?
    Stores limit a key's bytes and, on a local disk, its depth (one suffix per component)."""
    return len(key_bytes(new_prefix)) > len(key_bytes(old_prefix)) or \
        new_prefix.count("/") > old_prefix.count("/")


def local_keys_below(node: Node) -> Iterator[str]:
    """Keys, relative to ``node``'s prefix, of what is known here below it (including what is
    not in the store yet)."""
    stack: list[tuple[str, Node]] = [("", node)]
    while stack:
        rel, n = stack.pop()
        for name, child in (n.children or {}).items():
            yield from entry_keys(rel + name, child.kind)
            if child.kind is Kind.DIR:
                stack.append((rel + name + "/", child))
