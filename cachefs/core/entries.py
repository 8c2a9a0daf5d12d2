"""Changes to directory entries, and what follows each: the manifest of the directory, the
listing kept in the cache dir, the kernel's cached entries, and the namespace's record that no
listing begun earlier may undo it. Below a NAME.pack being built only the tree here changes: that
tree is only ever stored as the pack.
"""

from __future__ import annotations

from ..nodes import InodeTable, Kind, Node
from ..remote.manifest import ManifestWriter
from ..remote.namespace import Namespace
from ..tier.listings import MetadataCache
from .packdir import Layers


class Entries:
    def __init__(self, *, ns: Namespace, table: InodeTable, layers: Layers,
                 manifests: ManifestWriter, metadata: MetadataCache) -> None:
        self.ns = ns
        self.table = table
        self.layers = layers
        self.manifests = manifests
        self.metadata = metadata

    def note(self, parent: Node, name: str) -> None:
        """``parent``'s entry ``name`` changed."""
        self.ns.local_change(parent, name)
        if self.layers.building_of(parent) is None:
            self.manifests.mark(parent.path(), name)
            self.metadata.mark(parent)

    def attach(self, parent: Node, node: Node) -> None:
        """``node`` is ``parent``'s entry of its name now (replacing what was there)."""
        assert parent.children is not None
        replaced = parent.children.get(node.name)
        parent.children[node.name] = node
        if replaced is not None and replaced is not node:  # one node per name, always
            self.table.detach(replaced)
            self.ns.notifier.entry_removed(parent.ino, node.name, replaced.ino)
        self.note(parent, node.name)
        parent.touch()

    def remove(self, parent: Node, name: str, node: Node) -> None:
        assert parent.children is not None
        if parent.children.get(name) is node:
            del parent.children[name]
        self.table.detach(node)
        self.note(parent, name)
        parent.touch()

    def detach_name(self, old_parent: Node, old_name: str, node: Node) -> None:
        """The first half of a move: ``old_parent`` no longer shows ``node`` as ``old_name``."""
        assert old_parent.children is not None
        if old_parent.children.get(old_name) is node:
            del old_parent.children[old_name]
        self.note(old_parent, old_name)
        old_parent.touch()

    def attrs_changed(self, node: Node) -> None:
        """Mode, owner, times or xattrs of ``node`` changed here."""
        node.attrs_from = "local"
        self.ns.local_change(node)
        parent = node.parent
        if parent is None:
            if node is self.table.root:
                self.manifests.mark("", ".")
            return
        self.manifests.mark(parent.path(), node.name)
        self.metadata.mark(parent)

    def mark_tree(self, node: Node) -> None:
        """Every directory below ``node`` moved: their listings are written again."""
        stack = [node]
        while stack:
            n = stack.pop()
            if n.children is not None:
                self.metadata.mark(n)
                stack.extend(c for c in n.children.values() if c.kind is Kind.DIR)
