"""Reading ahead across files.

`cp -r`, `tar c` and builds open files one after another in tree order (sorted names, descending
into directories as they come). Once two opens in a row follow that order, the prefetcher keeps
a window of the next files (by count and bytes) on their way: files not yet cached are fetched
from the store with bounded parallelism, and cached ones are read into the page cache from the
blob tier in the background. A serial reader then never waits for one request's latency or one
disk seek at a time. An open out of order starts over; the window bounds what a wrong guess costs.

The window stops at the end of the reader's unit (a Go module, else a top-level directory:
pack/format.unit_of) until the reader goes on into the next unit in order: a build that reads
every tenth module gets those modules, not the nine between; `cp -r` crosses into the next unit
and from then on the window runs across units.

Files whose pages the kernel already holds (a hot `cp -r`: opened, closed, never a READ) are left
alone: reading their blobs from disk again would only cost a worker thread per file.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import trio

from ..errors import CacheFSError
from ..metrics import Stats
from ..nodes import Kind, Node
from .namespace import Namespace

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Window:
    files: int = 256
    bytes: int = 128 << 20
    #: larger files are left to the reader (they are fetched in parallel parts anyway)
    max_file: int = 16 << 20
    #: store fetches started by the prefetcher at once
    parallel: int = 16


class KernelPages:
    """Which files' pages the kernel is believed to hold: told by the core when a reader that
    kept its pages closes having read all of the file (or nothing: the pages were there).

    A belief, never a guarantee: the kernel drops pages under memory pressure or on
    ``drop_caches``. A READ of a file believed held shows that, and withdraws every belief
    (they were likely dropped together). Wrong costs speed, never correctness: a READ is
    always served.
    """

    def __init__(self, limit: int = 1 << 20) -> None:
        self.epoch = 0
        self.limit = limit
        #: inode -> (content token, epoch) of what the kernel was left holding
        self._held: dict[int, tuple[object, int]] = {}

    def held(self, node: Node, token: object) -> None:
        self._held[node.ino] = (token, self.epoch)
        if len(self._held) > self.limit:
            del self._held[next(iter(self._held))]

    def holds(self, node: Node, token: object) -> bool:
        return self._held.get(node.ino) == (token, self.epoch)

    def missed(self, node: Node, token: object) -> None:
        """The kernel asked for a page of ``node``: if it was believed held, none is."""
        if self.holds(node, token):
            self.epoch += 1
            self._held.clear()


class Prefetcher:
    def __init__(self, ns: Namespace, *,
                 cached_paths: Callable[[Node], list[Path] | None],
                 start_fetch: Callable[[Node, int, bool], Awaitable[object] | None],
                 disk: trio.CapacityLimiter, stats: Stats, window: Window | None = None,
                 pages: KernelPages | None = None,
                 token: Callable[[Node], object] = lambda node: None,
                 unit: Callable[[Node], object] = lambda node: None) -> None:
        self.ns = ns
        #: the unit a node belongs to (read past only once the reader is past it)
        self.unit = unit
        #: files the kernel holds need no read-ahead; ``token`` names a node's content
        self.pages = pages or KernelPages()
        self.token = token
        #: local files holding a node's content, if all of it is cached
        self.cached_paths = cached_paths
        #: starts bringing a node's content into the blob tier (the last argument: the
        #: reader goes through the whole tree); None if it cannot
        self.start_fetch = start_fetch
        self.disk = disk
        self.stats = stats
        self.window = window or Window()
        self.plan: collections.deque[Node] = collections.deque()
        self.active = False  # two opens in a row followed the plan
        #: the unit of the last file opened, and whether the reader went from one unit
        #: straight into the next (then the window runs across units)
        self._unit: object = None
        self.crossed = False
        self._units: dict[int, object] = {}  # of the planned nodes, by inode
        self._walk: AsyncIterator[Node] | None = None
        self._stale_walks: list[AsyncIterator[Node]] = []
        self._started: set[int] = set()  # inodes already fetched or warmed in this stream
        self._wake = trio.Event()
        self._slots = trio.Semaphore(self.window.parallel)
        self._nursery: trio.Nursery | None = None
        #: blob files to read into the page cache, by one worker at a time
        self._to_warm: list[Path] = []
        self._warming = False

    def opened(self, node: Node) -> None:
        """A file was opened for reading (called by the core, on the trio thread)."""
        if node in self.plan:
            skipped = []
            while self.plan and self.plan[0] is not node:
                skipped.append(self._units.pop(self.plan.popleft().ino, None))
            self.plan.popleft()
            unit = self._units.pop(node.ino, None)
            self.active = True
            if unit != self._unit:  # straight on from the last unit, or skipping some?
                self.crossed = all(u == self._unit for u in skipped)
                self._unit = unit
        else:
            self.plan.clear()
            self._units.clear()
            self._started.clear()
            self.active = False
            self.crossed = False
            self._unit = self.unit(node)
            if self._walk is not None:
                self._stale_walks.append(self._walk)
            self._walk = self._successors(node)
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                try:
                    await self._refill()
                except CacheFSError as e:
                    log.debug("prefetch stopped: %s", e)

    async def _refill(self) -> None:
        """Top the plan up to the window; start fetches and page-cache reads for new entries."""
        while self._stale_walks:
            await self._stale_walks.pop().aclose()  # type: ignore[attr-defined]
        walk = self._walk
        if walk is None:
            return
        planned_bytes = sum(n.size for n in self.plan)
        limit = self.window.files if self.active else 8
        while len(self.plan) < limit and planned_bytes < self.window.bytes:
            try:
                node = await walk.__anext__()
            except StopAsyncIteration:
                self._walk = None
                break
            if walk is not self._walk:  # a new stream started while we listed
                return
            self.plan.append(node)
            self._units[node.ino] = self.unit(node)
            planned_bytes += node.size
        if not self.active:
            return  # planned, but not acted on until the reader confirms the order
        warm: dict[Path, None] = {}  # ordered, without repeats (pack files share frames)
        for node in self.plan:
            if not self.crossed and self._units.get(node.ino) != self._unit:
                break  # not past the reader's unit until the reader is
            if node.ino in self._started:
                continue
            self._started.add(node.ino)
            if self.pages.holds(node, self.token(node)):
                continue
            paths = self.cached_paths(node)
            if paths is not None:
                warm.update(dict.fromkeys(paths))
            else:
                assert self._nursery is not None
                self._nursery.start_soon(self._fetch, node)
        if warm:
            self.stats.count("prefetch_local", len(warm))
            self._to_warm.extend(warm)
            if not self._warming:
                self._warming = True
                assert self._nursery is not None
                self._nursery.start_soon(self._warm)

    async def _fetch(self, node: Node) -> None:
        async with self._slots:
            if self.cached_paths(node) is not None:
                return
            waiting = self.start_fetch(node, self.window.max_file, self.crossed)
            if waiting is None:
                return
            self.stats.count("prefetch_store")
            try:
                await waiting
            except CacheFSError as e:
                log.debug("prefetch of %s failed: %s", node.describe(), e)

    async def _warm(self) -> None:
        """Read planned blobs into the page cache, in batches: a reader that opens a file at a
        time adds one at a time, and a thread hop per file would cost more than it saves."""
        try:
            while self._to_warm:
                paths, self._to_warm = self._to_warm, []
                await trio.to_thread.run_sync(_readahead, paths, limiter=self.disk)
        finally:
            self._warming = False

    async def _successors(self, node: Node) -> AsyncIterator[Node]:
        """Files after ``node`` in tree order: later siblings (and what is below them), then
        the parent's later siblings, and so on up."""
        current = node
        while current.parent is not None:
            parent = current.parent
            children = await self.ns.children(parent)
            later = sorted(name for name in children if name > current.name)
            async for file in _files_of(self.ns, children, later):
                yield file
            current = parent


def _readahead(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)


async def tree_files(ns: Namespace, directory: Node) -> AsyncIterator[Node]:
    """Every file below ``directory``, in tree order, listing directories as needed."""
    children = await ns.children(directory)
    async for file in _files_of(ns, children, sorted(children)):
        yield file


async def _files_of(ns: Namespace, children: dict[str, Node],
                    names: list[str]) -> AsyncIterator[Node]:
    """The files among ``names`` of ``children`` and below them, in tree order (a name that
    went away meanwhile is skipped)."""
    for name in names:
        child = children.get(name)
        if child is None:
            continue
        if child.kind is Kind.FILE:
            yield child
        elif child.kind is Kind.DIR:
            async for below in tree_files(ns, child):
                yield below


async def warm(ns: Namespace, top: Node, *, cached_paths: Callable[[Node], list[Path] | None],
               start_fetch: Callable[[Node, int, bool], Awaitable[object] | None], stats: Stats,
               parallel: int = 32) -> dict[str, int]:
    """`cachefs warm`: bring every file below ``top`` into the blob tier, many at a time."""
    files = [top] if top.kind is Kind.FILE else [n async for n in tree_files(ns, top)]
    progress = stats.begin("warm", ns.key(top) if top.kind is not Kind.DIR
                           else ns.dir_prefix(top), sum(n.size for n in files))
    slots = trio.Semaphore(parallel)
    result = {"files": len(files), "cached": 0, "fetched": 0, "failed": 0, "skipped": 0}

    async def one(node: Node) -> None:
        async with slots:
            if cached_paths(node) is not None:
                result["cached"] += 1
            else:
                waiting = start_fetch(node, 1 << 62, True)
                if waiting is None:
                    result["skipped"] += 1
                else:
                    try:
                        await waiting
                        result["fetched"] += 1
                    except CacheFSError as e:
                        log.warning("warm: %s: %s", node.describe(), e)
                        result["failed"] += 1
            progress.done += node.size

    try:
        async with trio.open_nursery() as nursery:
            for node in files:
                nursery.start_soon(one, node)
    finally:
        stats.end(progress)
    return result
