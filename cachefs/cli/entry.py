"""The ``cachefs`` program: a command (``cachefs mount ...``), or the form mount.fuse3 uses.

``mount -t fuse.cachefs SOURCE MNT -o OPTS`` without ``/sbin/mount.fuse.cachefs`` runs
mount.fuse3, which runs ``cachefs SOURCE MNT -o OPTS`` with PATH reset to the system
directories; that form goes to the mount helper, whose option mapping it shares, and
everything else to the command parser. This module is the console script so that neither of
the two has to import the other's caller.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import main as commands
from . import mounthelper


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if mounthelper.is_mount_form(args):
        return mounthelper.run(args, prog="cachefs")
    return commands.main(args)
