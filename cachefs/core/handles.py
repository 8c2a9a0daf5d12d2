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
from pathlib import Path
from typing import Any

import trio

from ..nodes import Node
from ..pack.mounted import PackFileReader
from ..remote.fetch import Fetch
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
    #: copied in (a blobs.BlobReader; see Writes._materialize)
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
    """One version of a file being read: from a verified blob (or a pack file), from a fetch
    until it completes, or, while a writer has the file open, from its staging file.

    It holds where the bytes are; core/read.py decides what to do when that changes (a fetch
    completes, a blob fails its check).
    """

    def __init__(self, node: Node, disk: trio.CapacityLimiter) -> None:
        self.node = node
        self.disk = disk
        self.reader: BlobReader | PackFileReader | None = None
        self.fetch: Fetch | None = None
        self.staging: Staging | None = None
        #: the content this handle reads (Reads.content_token at open): handles of one node
        #: that read different versions must not share the kernel's page cache
        self.version: object = None
        #: opened while another version is being read or written: bypass the page cache
        self.direct_io = False
        #: the kernel may keep (and use) the pages read through this handle
        self.keep_cache = False
        #: READs served, and whether one reached the end of the file (at close, the kernel
        #: then holds all of it: remote/prefetch.KernelPages)
        self.reads = 0
        self.read_to_end = False

    def follow(self, staging: Staging) -> None:
        """Read the file's staging file, and the next one, while this handle is open."""
        if self.staging is not None:
            self.staging.unpin()
        staging.readers += 1
        self.staging = staging

    async def read_staging(self, offset: int, size: int) -> bytes:
        """What writers of the file have written so far."""
        staging = self.staging
        assert staging is not None
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
        # Under the writers' lock: an unseal swaps the fd, and no read sees half a write.
        async with staging.lock:
            return await staging.pread(size, offset, self.disk)

    def drop_reader(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    def close(self) -> None:
        self.drop_reader()
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


class OpenFiles:
    """The open handles by number (the ``fh`` the kernel passes back), and their counts."""

    def __init__(self) -> None:
        self.handles: dict[int, ReadHandle | WriteHandle] = {}
        self._next = 1

    def add(self, handle: ReadHandle | WriteHandle) -> int:
        fh = self._next
        self._next += 1
        self.handles[fh] = handle
        if isinstance(handle, ReadHandle):
            handle.node.readers += 1
        return fh

    def get(self, fh: int) -> ReadHandle | WriteHandle | None:
        return self.handles.get(fh)

    def pop(self, fh: int) -> ReadHandle | WriteHandle | None:
        return self.handles.pop(fh, None)

    def writers(self) -> list[WriteHandle]:
        return [h for h in self.handles.values() if isinstance(h, WriteHandle)]

    def reads_other_version(self, node: Node, version: object) -> bool:
        """Whether a handle reads another version of ``node`` than ``version``."""
        return any(isinstance(h, ReadHandle) and h.node is node and h.version != version
                   for h in self.handles.values())

    def __len__(self) -> int:
        return len(self.handles)
