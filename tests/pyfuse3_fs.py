"""A tiny file system on the patched pyfuse3, run as its own process by test_pyfuse3_patch.py
(one FUSE session per process): N read-only files whose content is made from their inode, and a
count of the requests the kernel sent, read back through the xattr ``user.requests``.

``python -m tests.pyfuse3_fs MOUNTPOINT MODE``: MODE ``no-open`` answers open/opendir/flush with
ENOSYS (the kernel then opens by itself and sends READ with handle 0 and the inode);
``noflush`` opens files with FileInfo(noflush=True); ``cache-dir`` opens the directory with
FileInfo(cache_readdir=True, keep_cache=True).
"""

from __future__ import annotations

import collections
import errno
import json
import stat
import sys
from typing import Any

import pyfuse3
import trio

FILES = 200


def content(ino: int) -> bytes:
    return (b"file %d\n" % ino) * (ino * 7 % 300 + 1)


class Ops(pyfuse3.Operations):
    pass_inode = True

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.requests: collections.Counter[str] = collections.Counter()
        self.bad: list[str] = []

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.entry_timeout = a.attr_timeout = 300
        if inode == pyfuse3.ROOT_INODE:
            a.st_mode, a.st_nlink = stat.S_IFDIR | 0o755, 2
        else:
            a.st_mode, a.st_nlink, a.st_size = stat.S_IFREG | 0o644, 1, len(content(inode))
        return a

    async def lookup(self, parent: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        self.requests["lookup"] += 1
        if parent == pyfuse3.ROOT_INODE and name.startswith(b"f") and name[1:].isdigit():
            ino = int(name[1:])
            if 2 <= ino < FILES + 2:
                return await self.getattr(ino)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def opendir(self, inode: int, ctx: Any) -> int | pyfuse3.FileInfo:
        self.requests["opendir"] += 1
        if self.mode == "no-open":
            raise pyfuse3.FUSEError(errno.ENOSYS)
        if self.mode == "cache-dir":
            return pyfuse3.FileInfo(fh=7, cache_readdir=True, keep_cache=True)
        return 7

    async def readdir(self, fh: int, start_id: int, token: Any, inode: int) -> None:
        self.requests["readdir"] += 1
        if inode != pyfuse3.ROOT_INODE or fh != (0 if self.mode == "no-open" else 7):
            self.bad.append(f"readdir fh={fh} inode={inode}")
        for i, ino in enumerate(range(2 + start_id, FILES + 2), start_id + 1):
            if not pyfuse3.readdir_reply(token, b"f%d" % ino, await self.getattr(ino), i):
                return

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        self.requests["open"] += 1
        if self.mode == "no-open":
            raise pyfuse3.FUSEError(errno.ENOSYS)
        return pyfuse3.FileInfo(fh=inode + 1000, noflush=self.mode == "noflush")

    async def read(self, fh: int, off: int, size: int, inode: int) -> bytes:
        self.requests["read"] += 1
        if fh != (0 if self.mode == "no-open" else inode + 1000):
            self.bad.append(f"read fh={fh} inode={inode}")
        return content(inode)[off:off + size]

    async def flush(self, fh: int, inode: int) -> None:
        self.requests["flush"] += 1
        if self.mode == "no-open":
            raise pyfuse3.FUSEError(errno.ENOSYS)

    async def release(self, fh: int) -> None:
        self.requests["release"] += 1

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        if name == b"user.requests":
            return json.dumps({**self.requests, "bad": self.bad}).encode()
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)


async def serve(mountpoint: str, mode: str) -> None:
    pyfuse3.init(Ops(mode), mountpoint, {"fsname=pyfuse3-patch-test", "ro"})
    try:
        await pyfuse3.main()
    finally:
        pyfuse3.close()


if __name__ == "__main__":
    trio.run(serve, sys.argv[1], sys.argv[2])
