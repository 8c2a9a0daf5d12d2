"""Open files: readers of a blob or of a fetch in progress, and writers of a staging file.

A reader is bound to the content the file had when it was opened, so a rewrite in progress never
mixes old and new bytes. Writers of one file share one staging file in the cache dir's ``tmp/``;
closing it seals the staging file into the blob tier and hands it to write-back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from .blobs import BlobReader, DigestBuilder
from .errors import ChecksumMismatch
from .fetch import Fetch, ReadTheBlob
from .nodes import Node


@dataclasses.dataclass(eq=False)
class Staging:
    """The content of a file being written, shared by all its writers."""

    path: Path
    fd: int
    size: int
    writers: int = 0
    dirty: bool = False
    #: set once the file has been moved into the blob tier; a later write copies it first
    sealed: bool = False
    lock: trio.Lock = dataclasses.field(default_factory=trio.Lock)
    error: str = ""
    #: a write failed (disk full): this content must never be stored
    broken: str = ""
    broken_errno: int = 0
    #: size of the content the staging file started from, restored if it breaks
    base_size: int = 0
    #: digest of [0, hashed) kept up to date while writes come in order (cp, tar x): then
    #: closing needs no second pass over the file. None once a write lands out of order.
    hasher: DigestBuilder | None = None
    hashed: int = 0
    #: parts sent while the file is written in order (sync mode), a streamup.StreamUpload
    stream: Any = None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        if not self.sealed:
            with contextlib.suppress(OSError):
                self.path.unlink()


class ReadHandle:
    """Reads one version of a file: from a verified blob, or from a fetch until it completes."""

    def __init__(self, node: Node, *, reader: BlobReader | None = None,
                 fetch: Fetch | None = None, staging: Staging | None = None,
                 reopen: Callable[[], Awaitable[ReadHandle]] | None = None,
                 open_blob: Callable[[str], BlobReader] | None = None,
                 on_corrupt: Callable[[str], Awaitable[None]] | None = None,
                 timeout: float = 30.0, disk: trio.CapacityLimiter | None = None) -> None:
        self.node = node
        self.reader = reader
        self.fetch = fetch
        self.staging = staging
        self.reopen = reopen
        self.open_blob = open_blob
        self.on_corrupt = on_corrupt
        self.timeout = timeout
        self.disk = disk
        self.writable = False
        #: the content this handle reads (fs.content_token at open): handles of one node that
        #: read different versions must not share the kernel's page cache
        self.version: object = None
        #: opened while another version is being read or written: bypass the page cache
        self.direct_io = False

    async def read(self, offset: int, size: int) -> bytes:
        for _ in range(3):
            if self.fetch is not None and self.fetch.digest is not None and self.open_blob:
                # The fetch finished: read the verified blob from now on.
                with contextlib.suppress(OSError, KeyError):
                    self.reader = self.open_blob(self.fetch.digest)
                    if self.node.etag == self.fetch.etag:
                        self.node.digest = self.fetch.digest
                    self.fetch = None
            if self.reader is not None:
                try:
                    return await self.reader.read(offset, size)
                except ChecksumMismatch as e:
                    digest = self.reader.digest
                    self.reader.close()
                    self.reader = None
                    if self.on_corrupt:
                        await self.on_corrupt(digest)
                    if self.reopen is None:
                        raise
                    fresh = await self.reopen()
                    if fresh.reader is None and fresh.fetch is None:
                        raise e
                    self.reader, self.fetch = fresh.reader, fresh.fetch
                    continue
            if self.fetch is not None:
                if self.fetch.closed and self.fetch.digest is None:
                    raise self.fetch.error or ChecksumMismatch(f"{self.fetch.key}: fetch failed")
                if not self.fetch.closed:
                    assert self.disk is not None
                    try:
                        return await self.fetch.read(offset, size, self.timeout, self.disk)
                    except ReadTheBlob:
                        continue  # the fetch has its digest now: the blob is read instead
                continue
            if self.staging is not None:
                assert self.disk is not None
                return await trio.to_thread.run_sync(os.pread, self.staging.fd, size, offset,
                                                     limiter=self.disk)
            return b""
        raise ChecksumMismatch(f"{self.node.name}: content kept failing verification")

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        self.fetch = None


class WriteHandle:
    """A file opened for writing (and maybe reading) through its node's staging file."""

    def __init__(self, node: Node, staging: Staging, readable: bool,
                 disk: trio.CapacityLimiter) -> None:
        self.node = node
        self.staging = staging
        self.readable = readable
        self.disk = disk
        self.writable = True
        self.dirty = False

    async def read(self, offset: int, size: int) -> bytes:
        return await trio.to_thread.run_sync(os.pread, self.node.staging.fd, size, offset,
                                             limiter=self.disk)

    def close(self) -> None:
        pass
