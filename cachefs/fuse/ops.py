"""The FUSE adapter: each handler finds its nodes, calls the core, and builds the reply.

This is the only module (with daemon/run.py) that imports pyfuse3. Errors are translated here, once:
nothing but FUSEError may leave a handler, or pyfuse3 takes the whole mount down.

On a read-only mount, files are served without OPEN and RELEASE ("no-open"): the first open is
answered ENOSYS, after which the kernel opens files by itself, keeps their pages, and sends a
READ (handle 0, with the inode) only for pages it does not have. That needs pyfuse3 built with
scripts/pyfuse3-3.5.0-inode.patch, which passes the inode; without it every open is answered as
before. See docs/PERFORMANCE.md.

"""

from __future__ import annotations

import collections
import errno
import functools
import logging
import math
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3
import trio

from ..core.fs import CacheFS
from ..errors import CacheFSError, errno_for
from ..names import name_from_fuse, name_to_fuse
from ..nodes import Kind, Node
from .xattrs import Xattrs

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

#: errors that are a normal answer, not worth more than a debug line
_QUIET = {errno.ENOENT, errno.ENODATA, errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR,
          errno.ENOTDIR}
#: block size reported to programs: cp and tar size their buffers by it
BLKSIZE = 1 << 20
#: whether this pyfuse3 hands handlers the inode (scripts/pyfuse3-3.5.0-inode.patch)
INODE_ARGS = hasattr(pyfuse3.Operations, "pass_inode")
#: and whether an open may ask the kernel not to send FLUSH at close
NOFLUSH = hasattr(pyfuse3.FileInfo(), "noflush")
#: directories whose listing the kernel is known to keep (the names are remembered here)
KERNEL_LISTINGS = 65536


class _RateLimitedLog:
    """Log each distinct refusal once per minute at most (on the trio clock), with a count of
    repeats."""

    def __init__(self, clock: Callable[[], float] = trio.current_time) -> None:
        self.last: dict[str, tuple[float, int]] = {}
        self.clock = clock

    def __call__(self, level: int, key: str, message: str) -> None:
        now = self.clock()
        seen, repeats = self.last.get(key, (-math.inf, 0))
        if now - seen < 60:
            self.last[key] = (seen, repeats + 1)
            return
        suffix = f" ({repeats} similar since)" if repeats else ""
        self.last[key] = (now, 0)
        log.log(level, "%s%s", message, suffix)


_refusals = _RateLimitedLog()


def translated(fn: F) -> F:
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: FuseOps, *args: Any) -> Any:
        self.requests[name] += 1
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except CacheFSError as e:
            code = errno_for(e)
            level = logging.DEBUG if code in _QUIET else logging.WARNING
            _refusals(level, f"{fn.__name__}:{type(e).__name__}",
                      f"{fn.__name__}: {os.strerror(code)}: {e}")
            raise pyfuse3.FUSEError(code) from None
        except OSError as e:
            code = errno_for(e)
            _refusals(logging.WARNING, f"{fn.__name__}:{code}",
                      f"{fn.__name__}: {os.strerror(code)}: {e}")
            raise pyfuse3.FUSEError(code) from None
        except trio.TooSlowError:
            log.warning("%s: timed out", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("%s failed unexpectedly", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


class KernelNotifier:
    """Queues cache invalidations and sends them from a worker thread, outside any request
    (invalidating from inside a request handler can deadlock the kernel)."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[tuple[Any, ...]](10_000)

    def inode_changed(self, ino: int) -> None:
        self._queue(("inode", ino))

    def entry_removed(self, parent_ino: int, name: str, ino: int) -> None:
        self._queue(("entry", parent_ino, name_to_fuse(name), ino))

    def _queue(self, item: tuple[Any, ...]) -> None:
        try:
            self.send.send_nowait(item)
        except trio.WouldBlock:
            log.debug("invalidation queue full; the kernel cache expires by itself")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for item in self.receive:
            await trio.to_thread.run_sync(self._send, item)

    @staticmethod
    def _send(item: tuple[Any, ...]) -> None:
        try:
            if item[0] == "inode":
                pyfuse3.invalidate_inode(item[1])
            else:
                pyfuse3.invalidate_entry(item[1], item[2])
        except (OSError, pyfuse3.FUSEError):
            pass  # the kernel did not have it cached


class FuseOps(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    #: read/write/flush/fsync/readdir are also given the inode (a patched pyfuse3 only)
    pass_inode = True

    def __init__(self, fs: CacheFS, xattrs: Xattrs, ttl: float, *,
                 no_open: bool = False) -> None:
        super().__init__()
        self.fs = fs
        self.xattrs = xattrs
        self.ttl = ttl
        #: serve files and directories without OPEN/RELEASE (a read-only mount)
        self.no_open = no_open and INODE_ARGS
        #: requests by kind, for `cachefs stats` and the benchmarks' requests-per-file
        self.requests: collections.Counter[str] = collections.Counter()
        #: each directory's entries as the kernel was last given them (it keeps listings)
        self.kernel_listings: dict[int, tuple[tuple[str, int, Kind], ...]] = {}
        self.dirs: dict[int, list[tuple[str, Node]] | None] = {}
        self.dir_nodes: dict[int, Node] = {}
        self._next_dir = 1

    # -- helpers -------------------------------------------------------------------------------

    def attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.ino
        e.generation = 0
        e.entry_timeout = self.ttl
        e.attr_timeout = self.ttl
        e.st_mode = node.st_mode
        # An unlinked (or renamed-over) node kept alive by an open descriptor has no name.
        linked = self.fs.table.reachable(node)
        e.st_nlink = (2 if node.kind is Kind.DIR else 1) if linked else 0
        e.st_uid = node.uid
        e.st_gid = node.gid
        e.st_rdev = 0
        size = 0 if node.kind is Kind.DIR else node.size
        e.st_size = size
        e.st_blksize = BLKSIZE
        e.st_blocks = (size + 511) // 512
        e.st_mtime_ns = node.mtime_ns
        e.st_ctime_ns = node.ctime_ns
        e.st_atime_ns = node.mtime_ns if node.atime_ns is None else node.atime_ns
        return e

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        node.lookups += 1
        return self.attrs(node)

    # -- lookups -------------------------------------------------------------------------------

    @translated
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        parent = self.fs.node(parent_inode)
        text = name.decode("utf-8", "surrogateescape") if name in (b".", b"..") \
            else name_from_fuse(name)
        node = await self.fs.lookup(parent, text)
        if node is None:
            e = pyfuse3.EntryAttributes()
            e.st_ino = 0
            e.entry_timeout = self.ttl
            return e
        return self._entry(node)

    async def forget(self, inode_list: Any) -> None:
        for ino, count in inode_list:
            self.fs.table.forget(ino, count)

    @translated
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self.attrs(self.fs.node(inode))

    @translated
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None,
                      ctx: Any) -> pyfuse3.EntryAttributes:
        node = self.fs.node(inode)
        await self.fs.setattr(
            node,
            size=attr.st_size if fields.update_size else None,
            mode=stat.S_IMODE(attr.st_mode) if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            fh=fh, caller_uid=ctx.uid)
        return self.attrs(node)

    @translated
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        return name_to_fuse(await self.fs.readlink(self.fs.node(inode)))

    # -- directories ---------------------------------------------------------------------------

    @translated
    async def opendir(self, inode: int, ctx: Any) -> int | pyfuse3.FileInfo:
        """Directories are always opened here: an open is where a listing older than
        --metadata-ttl is read again. With the patched pyfuse3 the kernel keeps each listing
        (cache_readdir) and, while the names are those it was last given, lists from it
        (keep_cache): no READDIR."""
        node = self.fs.node(inode)
        if node.kind is not Kind.DIR:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self._next_dir
        self._next_dir += 1
        self.dir_nodes[fh] = node
        if not INODE_ARGS:
            self.dirs[fh] = None  # listed at the first READDIR
            return fh
        entries = self.dirs[fh] = await self.fs.readdir(node)
        # what a kept listing holds: names, inode numbers and types
        listing = tuple((name, child.ino, child.kind) for name, child in entries)
        kept = self.kernel_listings.get(node.ino) == listing
        if not kept:  # the kernel reads it anew, and keeps it
            self.kernel_listings[node.ino] = listing
            while len(self.kernel_listings) > KERNEL_LISTINGS:
                del self.kernel_listings[next(iter(self.kernel_listings))]
        return pyfuse3.FileInfo(fh=fh, keep_cache=kept, cache_readdir=True)

    @translated
    async def readdir(self, fh: int, start_id: int, token: Any, inode: int | None = None) -> None:
        if fh == 0 and inode is not None:  # not opened (no-open): the listing as it is now
            entries = await self.fs.readdir(self.fs.node(inode))
        else:
            kept = self.dirs.get(fh)
            if kept is None:
                kept = self.dirs[fh] = await self.fs.readdir(self.dir_nodes[fh])
            entries = kept

        for index in range(start_id, len(entries)):
            name, node = entries[index]
            if not pyfuse3.readdir_reply(token, name_to_fuse(name), self.attrs(node), index + 1):
                return
            node.lookups += 1

    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)
        self.dir_nodes.pop(fh, None)

    @translated
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self.fs.manifests.flush()

    @translated
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: Any) -> pyfuse3.EntryAttributes:
        node = await self.fs.mkdir(self.fs.node(parent_inode), name_from_fuse(name),
                                   mode & ~ctx.umask, ctx.uid, ctx.gid)
        return self._entry(node)

    @translated
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        await self.fs.rmdir(self.fs.node(parent_inode), name_from_fuse(name))

    @translated
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        await self.fs.unlink(self.fs.node(parent_inode), name_from_fuse(name))

    @translated
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: Any) -> pyfuse3.EntryAttributes:
        try:
            text = target.decode("utf-8")
        except UnicodeDecodeError:
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        node = await self.fs.symlink(self.fs.node(parent_inode), name_from_fuse(name), text,
                                     ctx.uid, ctx.gid)
        return self._entry(node)

    @translated
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: Any) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        await self.fs.rename(self.fs.node(parent_inode_old), name_from_fuse(name_old),
                             self.fs.node(parent_inode_new), name_from_fuse(name_new),
                             noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE))

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: Any) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)  # hard links: see docs/SEMANTICS.md

    @translated
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: Any) -> pyfuse3.EntryAttributes:
        node = await self.fs.mknod(self.fs.node(parent_inode), name_from_fuse(name),
                                   mode & ~ctx.umask, ctx.uid, ctx.gid)
        return self._entry(node)

    # -- files ---------------------------------------------------------------------------------

    @translated
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        node = self.fs.node(inode)
        reading = (flags & os.O_ACCMODE) == os.O_RDONLY and not flags & os.O_TRUNC
        if self.no_open and reading and node.kind is not Kind.DIR:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # no OPEN, READ (as needed), RELEASE again
        fh, keep = await self.fs.open(node, flags)
        handle = self.fs.files.get(fh)
        info = pyfuse3.FileInfo(fh=fh, keep_cache=keep,
                                direct_io=getattr(handle, "direct_io", False))
        if reading and NOFLUSH:
            info.noflush = True  # closing a reader saves nothing: no FLUSH round trip
        return info

    @translated
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        node, fh = await self.fs.create(self.fs.node(parent_inode), name_from_fuse(name),
                                        mode & ~ctx.umask, flags, ctx.uid, ctx.gid)
        return pyfuse3.FileInfo(fh=fh), self._entry(node)

    @translated
    async def read(self, fh: int, off: int, size: int, inode: int | None = None) -> bytes:
        if fh == 0 and inode is not None:  # opened by the kernel alone (no-open)
            return await self.fs.read_unopened(self.fs.node(inode), off, size)
        return await self.fs.read(fh, off, size)

    @translated
    async def write(self, fh: int, off: int, buf: bytes, inode: int | None = None) -> int:
        if fh == 0:  # no-open mounts are read-only: the kernel refuses writes before this
            raise pyfuse3.FUSEError(errno.EBADF)
        return await self.fs.write(fh, off, buf)

    @translated
    async def flush(self, fh: int, inode: int | None = None) -> None:
        if fh == 0 and self.no_open:  # nothing to save at close: no FLUSH from now on
            raise pyfuse3.FUSEError(errno.ENOSYS)
        await self.fs.flush(fh)

    @translated
    async def fsync(self, fh: int, datasync: bool, inode: int | None = None) -> None:
        if fh != 0:
            await self.fs.fsync(fh)

    @translated
    async def release(self, fh: int) -> None:
        await self.fs.release(fh)

    # -- extended attributes -------------------------------------------------------------------

    @translated
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        return await self.xattrs.get(self.fs.node(inode), name.decode("utf-8", "replace"))

    @translated
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:  # kept as JSON text, like file names
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        await self.xattrs.set(self.fs.node(inode), text, value)

    @translated
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return [n.encode() for n in self.xattrs.list(self.fs.node(inode))]

    @translated
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        await self.xattrs.remove(self.fs.node(inode), name.decode("utf-8", "replace"))

    # -- the filesystem ------------------------------------------------------------------------

    @translated
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        blobs = self.fs.blobs
        s.f_bsize = BLKSIZE
        s.f_frsize = 4096
        s.f_blocks = blobs.capacity // 4096
        s.f_bfree = s.f_bavail = max(0, blobs.capacity - blobs.usage) // 4096
        s.f_files = 1 << 24
        s.f_ffree = s.f_favail = max(0, (1 << 24) - len(blobs.entries))
        s.f_namemax = 255
        return s
