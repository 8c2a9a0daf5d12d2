"""Whether a change may be made here: the mount is writable, the store answered when it came up,
and the node is not inside a read-only pack (a change below a pack mounted with --subtree opens a
writable layer over it first)."""

from __future__ import annotations

from ..errors import ReadOnly
from ..nodes import Node
from .options import Options
from .packdir import Layers, in_pack


class Access:
    def __init__(self, opts: Options, layers: Layers, *, offline_at_start: bool = False) -> None:
        self.opts = opts
        self.layers = layers
        #: mounted while the store was unreachable: refuse changes until it answers
        self.offline_at_start = offline_at_start

    def check_writable(self, *nodes: Node) -> None:
        if self.opts.read_only:
            raise ReadOnly("the mount is read-only")
        if self.offline_at_start:
            raise ReadOnly("the store was unreachable when this mount started: it is a "
                           "read-only view of what is cached until the store comes back")
        for node in nodes:
            self.layers.open_overlay(node)
            if in_pack(node):
                raise ReadOnly(f"{node.describe()} is inside a pack, which is read-only")

    def may_change_attrs(self, node: Node) -> bool:
        """Whether user xattrs of ``node`` may change (not on a read-only mount or pack)."""
        return not self.opts.read_only and not in_pack(node)
