"""The filesystem core: what each operation does, independent of FUSE.

``CacheFS`` is the face the FUSE layer and the daemon see: each operation is handed to the room
that does it, and every room is built once by the daemon and given its collaborators.

- tree.py: lookups, create, mkdir, symlink, mknod, unlink, rmdir, rename;
- read.py: open for reading and reads (content.py: where the bytes are and how to bring them);
- write.py: open for writing, staging, close, truncate, attributes (uploads.py: to write-back);
- packdir.py and seal.py: NAME.pack directories being built, and sealing them;
- entries.py, access.py, handles.py, arrivals.py: what those share.

Every method takes and returns plain values (nodes, bytes, handle numbers) and raises
cachefs.errors exceptions; fuse/ops.py is the only place that turns them into FUSE replies. State
changes happen on the trio thread; anything that blocks runs in a worker thread under one of the
limiters (store, disk, CPU).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from ..errors import CacheFSError, IsADirectory, NotFound
from ..nodes import InodeTable, Kind, Node
from ..remote.manifest import ManifestWriter
from ..remote.namespace import Namespace
from ..remote.writeback import WriteBack
from ..tier.blobs import BlobTier
from ..tier.listings import MetadataCache
from .access import Access
from .content import Contents
from .entries import Entries
from .handles import OpenFiles, ReadHandle, WriteHandle
from .options import Limiters, Options
from .packdir import Layers
from .read import Reads
from .seal import Sealer
from .tree import Tree
from .uploads import Uploads
from .write import Writes

log = logging.getLogger(__name__)

__all__ = ["CacheFS", "Limiters", "Options", "Rooms"]


@dataclasses.dataclass(frozen=True)
class Rooms:
    """The parts of the core, built by the daemon (daemon/run.py)."""

    tree: Tree
    reads: Reads
    writes: Writes
    sealer: Sealer
    layers: Layers
    contents: Contents
    uploads: Uploads
    entries: Entries
    access: Access
    files: OpenFiles


class CacheFS:
    def __init__(self, rooms: Rooms, *, ns: Namespace, table: InodeTable, blobs: BlobTier,
                 wb: WriteBack, manifests: ManifestWriter, metadata: MetadataCache,
                 opts: Options) -> None:
        self.rooms = rooms
        self.tree, self.reads, self.writes = rooms.tree, rooms.reads, rooms.writes
        self.sealer, self.layers, self.contents = rooms.sealer, rooms.layers, rooms.contents
        self.access, self.entries, self.files = rooms.access, rooms.entries, rooms.files
        self.ns = ns
        self.table = table
        self.blobs = blobs
        self.wb = wb
        self.manifests = manifests
        self.metadata = metadata
        self.opts = opts
        # the tree's operations, as they are
        tree = rooms.tree
        self.lookup, self.readdir, self.readlink = tree.lookup, tree.readdir, tree.readlink

        self.create, self.mkdir, self.symlink = tree.create, tree.mkdir, tree.symlink
        self.mknod, self.unlink, self.rmdir = tree.mknod, tree.unlink, tree.rmdir
        self.rename = tree.rename
        self.approve = rooms.contents.approve
        self.save_as = rooms.sealer.save_as

    def node(self, ino: int) -> Node:
        node = self.table.get(ino)
        if node is None:
            raise NotFound(f"inode {ino} is gone")
        return node

    # -- open files ----------------------------------------------------------------------------

    async def open(self, node: Node, flags: int) -> tuple[int, bool]:
        """Open a file; returns (handle, keep_cache)."""
        if node.kind is Kind.DIR:
            raise IsADirectory(node.describe())
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC
        if writing:
            self.access.check_writable(node)
            handle: ReadHandle | WriteHandle = await self.writes.open(
                node, truncate=bool(flags & os.O_TRUNC),
                readable=(flags & os.O_ACCMODE) == os.O_RDWR)
            keep = False
        else:
            handle = await self.reads.open(node)
            keep = handle.keep_cache
        return self.files.add(handle), keep

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self.files.get(fh)
        if isinstance(handle, ReadHandle):
            return await self.reads.read(handle, offset, size)
        if handle is None or not handle.readable:
            raise CacheFSError("file is open write-only")
        return await handle.read(offset, size)

    async def read_unopened(self, node: Node, offset: int, size: int) -> bytes:
        """A READ without an OPEN (no-open mounts: the kernel opened the file by itself)."""
        if node.kind is Kind.DIR:
            raise IsADirectory(node.describe())
        return await self.reads.read_unopened(node, offset, size)

    def _writer(self, fh: int) -> WriteHandle:
        handle = self.files.get(fh)
        if not isinstance(handle, WriteHandle):
            raise CacheFSError("file is not open for writing")
        return handle

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        return await self.writes.write(self._writer(fh), offset, data)

    async def flush(self, fh: int) -> None:
        """close(2): in sync mode, returns once the content is in the store."""
        handle = self.files.get(fh)
        if isinstance(handle, WriteHandle):
            await self.writes.flush(handle)

    async def fsync(self, fh: int) -> None:
        handle = self.files.get(fh)
        if isinstance(handle, WriteHandle):
            await self.writes.fsync(handle)

    async def release(self, fh: int) -> None:
        handle = self.files.pop(fh)
        if isinstance(handle, WriteHandle):
            await self.writes.release(handle)
        elif handle is not None:
            self.reads.release(handle)

    async def setattr(self, node: Node, *, fh: int | None = None, **changes: Any) -> Node:
        handle = self.files.get(fh) if fh is not None else None
        return await self.writes.setattr(
            node, handle=handle if isinstance(handle, WriteHandle) else None, **changes)

    # -- maintenance ---------------------------------------------------------------------------

    async def sync(self) -> dict[str, Any]:
        """Seal NAME.pack directories, let fills from an origin finish (they queue their
        upload when complete), wait until everything written is in the store; report what
        kept failing."""
        stalled_fills = await self.contents.finish_origin_fills()
        seal_errors = await self.sealer.seal_all()
        for handle in self.files.writers():
            if handle.staging.dirty:
                try:
                    await self.writes.commit(handle.node, wait=False)
                except CacheFSError as e:
                    log.warning("sync: %s", e)
        failed = await self.wb.drain()
        manifest_error = ""
        try:
            await self.manifests.flush()
        except CacheFSError as e:
            manifest_error = str(e)
        await self.flush_index()
        return {
            "pending": len(self.wb.queue),
            "failed": [op.describe() for op in failed],
            "manifest_error": manifest_error,
            "seal_errors": seal_errors,
            "origin_fills_unfinished": stalled_fills,
        }

    async def flush_index(self) -> None:
        await self.metadata.flush(self.table.root)
        await self.blobs.flush()

    def status(self) -> dict[str, Any]:
        return {"pending": [op.describe() for op in self.wb.pending()],
                "refused": list(self.wb.refused)}
