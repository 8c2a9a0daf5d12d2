"""The filesystem core, reading: opening a file for reading and serving its reads.

A reader is bound to the version the file had when it was opened (content.py says where its bytes
are). It reads a fetch in progress until the fetch completes, then the verified blob; a blob that
fails its check when read back is discarded and the read goes on from a fresh source. While a
writer has the file open, a reader opened then reads what was written so far (handles.py).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable

from ..errors import ChecksumMismatch, ObjectChanged
from ..nodes import InodeTable, Node
from ..remote.fetch import ReadTheBlob
from ..remote.namespace import Namespace
from ..remote.prefetch import KernelPages
from ..tier.blobs import BlobReader
from .content import Contents
from .handles import OpenFiles, ReadHandle
from .options import Limiters, Options

#: sources tried for one read before it fails: a blob that fails its check is fetched again
READ_ATTEMPTS = 3
#: readers kept for READs the kernel sends without an OPEN (no-open mounts), most recent first:
#: each holds a file descriptor of the blob tier
UNOPENED_KEPT = 256


def content_token(node: Node) -> object:
    """Which content ``node`` shows now (changes when it is rewritten or replaced)."""
    pack = id(node.pack_file) if node.pack_file is not None else None
    return (node.etag or node.digest, pack)


class Reads:
    def __init__(self, *, ns: Namespace, table: InodeTable, contents: Contents,
                 files: OpenFiles, limits: Limiters, opts: Options,
                 on_open: Callable[[Node], None] = lambda node: None,
                 pages: KernelPages | None = None) -> None:
        self.ns = ns
        self.table = table
        self.contents = contents
        self.files = files
        self.limits = limits
        self.opts = opts
        #: told about every open for reading (the prefetcher's look-ahead)
        self.on_open = on_open
        #: which files the kernel holds whole (told at close; read by the prefetcher)
        self.pages = pages or KernelPages()
        #: readers of files the kernel opened by itself (no-open), by inode, oldest first
        self.unopened: OrderedDict[int, ReadHandle] = OrderedDict()
        #: inodes whose reader was of a version replaced mid-read: READs past the start fail
        #: (ESTALE) until one from the start begins the new version
        self.stale: dict[int, object] = {}


    async def open(self, node: Node) -> ReadHandle:
        """A reader of what ``node`` shows now, or of what a writer has written so far."""
        handle = ReadHandle(node, self.limits.disk)
        staging = node.staging
        if staging is not None and not staging.broken:
            handle.follow(staging)
        else:
            handle.reader, handle.fetch = await self.contents.source(node)
        handle.version = content_token(node)
        # The kernel's page cache is one per inode: while another version of the file is
        # being written or read here, its pages could mix with ours, so this handle goes
        # around the cache.
        handle.direct_io = node.staging is not None or \
            self.files.reads_other_version(node, handle.version)
        handle.keep_cache = self.keep_cache(handle)
        self.on_open(node)
        return handle

    @staticmethod
    def keep_cache(handle: ReadHandle) -> bool:
        """Whether the kernel may keep the file's pages: only for verified content (bytes of
        a fetch still in progress could yet fail their check)."""
        return handle.reader is not None and not handle.direct_io

    async def read(self, handle: ReadHandle, offset: int, size: int) -> bytes:
        self.pages.missed(handle.node, handle.version)
        handle.reads += 1
        if offset + size >= handle.node.size:
            handle.read_to_end = True
        if handle.staging is not None:
            return await handle.read_staging(offset, size)
        for _ in range(READ_ATTEMPTS):
            fetch = handle.fetch
            if fetch is not None and fetch.digest is not None:
                # The fetch finished: read the verified blob from now on.
                with contextlib.suppress(OSError, KeyError):
                    handle.reader = self.contents.blobs.open_reader(fetch.digest)
                    if handle.node.etag == fetch.etag:
                        handle.node.digest = fetch.digest
                    handle.fetch = fetch = None
            if handle.reader is not None:
                try:
                    return await handle.reader.read(offset, size)
                except ChecksumMismatch as e:
                    await self._reopen_after_corruption(handle, e)
                    continue
            if fetch is None:
                return b""
            if fetch.closed and fetch.digest is None:
                raise fetch.error or ChecksumMismatch(f"{fetch.key}: fetch failed")
            if not fetch.closed:
                with contextlib.suppress(ReadTheBlob):  # complete now: read the blob
                    return await fetch.read(offset, size, self.opts.timeout, self.limits.disk)
        raise ChecksumMismatch(f"{handle.node.name}: content kept failing verification")

    async def _reopen_after_corruption(self, handle: ReadHandle, error: ChecksumMismatch) \
            -> None:
        """The blob under ``handle`` failed its check: discard it and read from a fresh
        source (a fetch from the store); raise ``error`` if there is none."""
        reader = handle.reader
        assert reader is not None
        handle.drop_reader()
        if isinstance(reader, BlobReader):
            await self.contents.corrupt(reader.digest)
        handle.reader, handle.fetch = await self.contents.source(handle.node)
        if handle.reader is None and handle.fetch is None:
            raise error

    async def read_unopened(self, node: Node, offset: int, size: int) -> bytes:
        """A READ of a file the kernel opened without asking (a no-open mount): served by a
        reader of what the node shows now, kept for the next READ of it.

        Without an open there is no version to bind a reader to. When the node changed (its
        object was replaced in the store) since the last READ, one that continues past the
        start is taken as a reader of the old version: ESTALE, never the new bytes after
        the old ones. A READ from the start begins the new version."""
        token = content_token(node)
        handle = self.unopened.get(node.ino)
        if handle is not None and handle.version != token:
            self._let_go_unopened(node.ino)
            handle = None
            if offset > 0:  # (the kernel retries a failed READ: it fails the same way)
                self.stale[node.ino] = token
                while len(self.stale) > UNOPENED_KEPT:
                    del self.stale[next(iter(self.stale))]
        if offset == 0:
            self.stale.pop(node.ino, None)
        elif handle is None and self.stale.get(node.ino) == token:
            raise ObjectChanged(f"{node.describe()}: replaced in the store while it was read; "
                                "read it again")
        if handle is None:
            fresh = await self.open(node)
            handle = self.unopened.get(node.ino)  # another READ may have opened one meanwhile
            if handle is None:
                node.readers += 1
                handle = self.unopened[node.ino] = fresh
                while len(self.unopened) > UNOPENED_KEPT:
                    self._let_go_unopened(next(iter(self.unopened)))
            else:
                fresh.close()
        self.unopened.move_to_end(node.ino)
        return await self.read(handle, offset, size)

    def _let_go_unopened(self, ino: int) -> None:
        handle = self.unopened.pop(ino, None)
        if handle is not None:
            self.release(handle)

    def release(self, handle: ReadHandle) -> None:
        node = handle.node
        try:
            handle.close()
            node.readers -= 1
            if handle.keep_cache and (handle.reads == 0 or handle.read_to_end) and \
                    handle.version == content_token(node):
                self.pages.held(node, handle.version)
            if handle.version is not None and handle.version != content_token(node):
                self.ns.notifier.inode_changed(node.ino)  # drop the old version's pages
        finally:
            self.table.release(node)
