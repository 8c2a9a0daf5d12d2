"""The filesystem core, reading: opening a file for reading and serving its reads.

A reader is bound to the version the file had when it was opened (content.py says where its bytes
are). It reads a fetch in progress until the fetch completes, then the verified blob; a blob that
fails its check when read back is discarded and the read goes on from a fresh source. While a
writer has the file open, a reader opened then reads what was written so far (handles.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from ..errors import ChecksumMismatch
from ..nodes import InodeTable, Node
from ..remote.fetch import ReadTheBlob
from ..remote.namespace import Namespace
from ..tier.blobs import BlobReader
from .content import Contents
from .handles import OpenFiles, ReadHandle
from .options import Limiters, Options

#: sources tried for one read before it fails: a blob that fails its check is fetched again
READ_ATTEMPTS = 3


def content_token(node: Node) -> object:
    """Which content ``node`` shows now (changes when it is rewritten or replaced)."""
    pack = id(node.pack_file) if node.pack_file is not None else None
    return (node.etag or node.digest, pack)


class Reads:
    def __init__(self, *, ns: Namespace, table: InodeTable, contents: Contents,
                 files: OpenFiles, limits: Limiters, opts: Options,
                 on_open: Callable[[Node], None] = lambda node: None) -> None:
        self.ns = ns
        self.table = table
        self.contents = contents
        self.files = files
        self.limits = limits
        self.opts = opts
        #: told about every open for reading (the prefetcher's look-ahead)
        self.on_open = on_open

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
        self.on_open(node)
        return handle

    @staticmethod
    def keep_cache(handle: ReadHandle) -> bool:
        """Whether the kernel may keep the file's pages: only for verified content (bytes of
        a fetch still in progress could yet fail their check)."""
        return handle.reader is not None and not handle.direct_io

    async def read(self, handle: ReadHandle, offset: int, size: int) -> bytes:
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

    def release(self, handle: ReadHandle) -> None:
        node = handle.node
        try:
            handle.close()
            node.readers -= 1
            if handle.version is not None and handle.version != content_token(node):
                self.ns.notifier.inode_changed(node.ino)  # drop the old version's pages
        finally:
            self.table.release(node)
