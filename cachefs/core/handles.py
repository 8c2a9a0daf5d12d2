"""Open files: readers of a blob or of a fetch in progress, and writers of a staging file.

A reader is bound to the content the file had when it was opened, so a rewrite in progress never
mixes old and new bytes. Writers of one file share one staging file in the cache dir's ``tmp/``;
closing it seals the staging file into the blob tier and hands it to write-back. A reader opened
while a writer has the file open reads the staging file instead: the bytes written so far, as
programs on one machine expect (``tail -f``, a build step reading what another just wrote).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from ..errors import ChecksumMismatch
from ..nodes import Node
from ..remote.fetch import Fetch, ReadTheBlob
from ..tier.blobs import BlobReader, DigestBuilder


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
    #: the blob this staging file started as a copy of (None: it started empty)
    base: str | None = None
    #: the blob it was last sealed into
    digest: str | None = None
    #: readers following this content (ReadHandle.follow): the fd stays open while they read
    readers: int = 0
    #: opened without O_TRUNC and not changed yet: the content is still this blob's, not
    #: copied in (a blobs.BlobReader; see WriteOps._materialize)
    lazy: Any = None
    #: the last writer let go; the fd closes when the last reader does
    retired: bool = False

    def close(self) -> None:
        """The last writer let go: nothing writes here again (a new writer starts a new one)."""
        self.retired = True
        if not self.sealed:
            with contextlib.suppress(OSError):
                self.path.unlink()  # readers still holding the fd read on
        if self.readers <= 0:
            self._close_fd()

    @property
    def shows(self) -> str | None:
        """The blob this content is known to equal: what it was sealed into, or, until the
        first change, the blob it starts from."""
        if self.sealed:
            return self.digest
        return self.base if self.lazy is not None else None

    def unpin(self) -> None:
        self.readers -= 1
        if self.retired and self.readers <= 0:
            self._close_fd()

    async def pread(self, size: int, offset: int, disk: trio.CapacityLimiter) -> bytes:
        """Read the current content (the caller holds the lock: no fd swap, no half write)."""
        if self.lazy is not None:
            data: bytes = await self.lazy.read(offset, min(size, max(0, self.size - offset)))
            return data
        return await trio.to_thread.run_sync(os.pread, self.fd, size, offset, limiter=disk)

    def _close_fd(self) -> None:
        if self.lazy is not None:
            self.lazy.close()
            self.lazy = None
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


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
        #: the content this handle reads (fs.content_token at open): handles of one node that
        #: read different versions must not share the kernel's page cache
        self.version: object = None
        #: opened while another version is being read or written: bypass the page cache
        self.direct_io = False

    def follow(self, staging: Staging) -> None:
        """Read the file's staging file, and the next one, while this handle is open."""
        if self.staging is not None:
            self.staging.unpin()
        staging.readers += 1
        self.staging = staging

    async def _read_staging(self, staging: Staging, offset: int, size: int) -> bytes:
        current = self.node.staging
        if current is not None and current is not staging and not current.broken and \
                current.base is not None and current.base == staging.shows:
            # Opened for writing again after a close, starting from what this reader read
            # (an append, an edit in place): read on in it. A rewrite from empty (O_TRUNC)
            # is another version, not mixed into what this reader has read so far.
            self.follow(current)
            staging = current
        if staging.broken:
            raise OSError(errno.EIO, f"{staging.broken} (this reader saw it being written)")
        assert self.disk is not None
        # Under the writers' lock: an unseal swaps the fd, and no read sees half a write.
        async with staging.lock:
            return await staging.pread(size, offset, self.disk)

    async def read(self, offset: int, size: int) -> bytes:
        if self.staging is not None:
            return await self._read_staging(self.staging, offset, size)
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
            return b""
        raise ChecksumMismatch(f"{self.node.name}: content kept failing verification")

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        self.fetch = None
        if self.staging is not None:
            self.staging.unpin()
            self.staging = None


class WriteHandle:
    """A file opened for writing (and maybe reading) through its node's staging file."""

    def __init__(self, node: Node, staging: Staging, readable: bool,
                 disk: trio.CapacityLimiter) -> None:
        self.node = node
        self.staging = staging
        self.readable = readable
        self.disk = disk
        self.dirty = False

    async def read(self, offset: int, size: int) -> bytes:
        async with self.staging.lock:
            return await self.staging.pread(size, offset, self.disk)

    def close(self) -> None:
        pass
