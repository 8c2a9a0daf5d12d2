"""Origin fallback: names a directory's origin has and the store lacks.

A directory with ``user.cachefs.origin`` (or a mount's ``--origin PATH=URL``) extends to
everything below it; the nearest such directory wins. A name the store lacks under it is probed
at the origin (URL + the path relative to that directory) and, if there, appears with the
origin's size. Reading it streams it from the origin into the blob tier; once complete (and
matching its pin, if any) it is uploaded under its key, so the next runner gets a store hit.

In ``curate`` mode a miss is only recorded: readers get ENOENT until `cachefs fetch` approves it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import trio

from ..errors import InvalidArgument, NotFound
from ..metrics import Stats
from ..nodes import InodeTable, Kind, Node
from ..tier.listings import MetadataCache
from .namespace import Namespace
from .origin import OriginClient, OriginInfo, url_for, validate_url

log = logging.getLogger(__name__)

ORIGIN = "user.cachefs.origin"
MODE = "user.cachefs.origin-fetch"
CHECKSUMS = "user.cachefs.checksums"
PIN = "user.cachefs.sha256"
MODES = ("auto", "curate")


def parse_origin_options(values: list[str]) -> dict[str, str]:
    """``--origin PATH=URL`` values as {mount-relative dir path: URL}."""
    result = {}
    for value in values:
        path, sep, url = value.partition("=")
        if not sep:
            raise InvalidArgument(f"--origin {value!r}: use KEYPREFIX=URL")
        result[path.strip("/")] = validate_url(url)
    return result


def parse_checksums(text: str) -> dict[str, str]:
    """A ``sha256sum`` listing: {relative path: hex digest}; bad lines are skipped."""
    result = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) != 2 or len(parts[0]) != 64:
            continue
        digest, name = parts[0].lower(), parts[1].lstrip("*").removeprefix("./")
        if all(c in "0123456789abcdef" for c in digest):
            result[name] = digest
    return result


def validate_setting(node: Node, short: str, value: str) -> None:
    """Checks for ``setfattr -n user.cachefs.<short>`` on a directory."""
    if short == "origin":
        validate_url(value)
    elif short == "origin-fetch" and value not in MODES:
        raise InvalidArgument(f"user.cachefs.origin-fetch must be one of {', '.join(MODES)}")
    elif short == "checksums" and value.strip() and not parse_checksums(value):
        raise InvalidArgument("user.cachefs.checksums must be in sha256sum format")


class OriginFallback:
    def __init__(self, client: OriginClient, ns: Namespace, table: InodeTable,
                 metadata: MetadataCache, stats: Stats, *, mount_origins: dict[str, str],
                 default_mode: str, ttl: float,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.client = client
        self.ns = ns
        self.table = table
        self.metadata = metadata
        self.stats = stats
        self.mount_origins = mount_origins
        self.default_mode = default_mode
        self.ttl = ttl
        #: TTLs read the trio clock (a MockClock in tests), never the wall clock
        self.clock = clock
        self._absent: dict[str, float] = {}  # url -> when the origin said 404 (or 410)
        self._infos: dict[str, OriginInfo] = {}  # url -> what the last probe said

    def origin_for(self, directory: Node) -> tuple[str, str] | None:
        """(base URL, path of ``directory`` relative to the origin's directory)."""
        if not directory.attached:
            return None  # it went away: nothing to fetch into
        parts: list[str] = []
        node: Node | None = directory
        while node is not None:
            base = node.xattrs.get(ORIGIN) or self.mount_origins.get(node.path())
            if base:
                return base, "/".join(reversed(parts))
            parts.append(node.name)
            node = node.parent
        return None

    def mode_for(self, directory: Node) -> str:
        for node in (directory, *directory.ancestors()):
            mode = node.xattrs.get(MODE)
            if mode in MODES:
                return mode
        return self.default_mode

    def pin_for(self, node: Node) -> str | None:
        """The digest a file must have: its own pin, else the nearest checksums list."""
        pin = node.xattrs.get(PIN)
        if pin:
            return pin
        parts = [node.name]
        for directory in node.ancestors():
            listing = directory.xattrs.get(CHECKSUMS)
            if listing:
                digest = parse_checksums(listing).get("/".join(reversed(parts)))
                if digest:
                    return digest
            parts.append(directory.name)
        return None

    def url(self, parent: Node, name: str) -> str | None:
        found = self.origin_for(parent)
        if found is None:
            return None
        base, rel = found
        return url_for(base, f"{rel}/{name}" if rel else name)

    async def probe(self, parent: Node, name: str, approve: bool = False) -> Node | None:
        """The node for ``name`` if the origin has it (None: no origin, or not there)."""
        url = self.url(parent, name)
        if url is None:
            return None
        key = self.ns.dir_prefix(parent) + name
        if self.mode_for(parent) == "curate" and not approve:
            self.stats.miss(key, url, fetched=False)
            self.stats.count("origin_misses_held")
            log.info("origin miss held for approval (curate mode): %s (cachefs fetch it)", url)
            return None
        seen = self._absent.get(url)
        if seen is not None and self.clock() - seen < self.ttl and not approve:
            return None
        info = await self._probe(url)
        if info is None and not await self.client.probe_dir(url + "/"):
            return None
        children = parent.children
        if children is None:  # listing vanished meanwhile (re-listed): look again
            children = await self.ns.children(parent)
        existing = children.get(name)
        if existing is not None:
            return existing
        if info is None:  # a directory at the origin: names below it are probed in turn
            node = self.table.new(Kind.DIR, name, parent, origin_url=url + "/", source="origin")
            children[name] = node
            self.metadata.mark(parent)
            return node
        node = self.make_node(parent, name, url, info)
        children[name] = node
        self.metadata.mark(parent)
        self.stats.miss(key, url, fetched=True)
        self.stats.count("origin_misses")
        return node

    def make_node(self, parent: Node, name: str, url: str, info: OriginInfo) -> Node:
        mtime = int((info.mtime or time.time()) * 1e9)
        return self.table.new(Kind.FILE, name, parent, size=info.size, origin_url=url,
                              source="origin", mtime_ns=mtime, ctime_ns=mtime)

    async def _probe(self, url: str) -> OriginInfo | None:
        info = await self.client.probe(url)
        if info is None:
            self._absent[url] = self.clock()
            _bound(self._absent)
            return None
        self._infos[url] = info
        _bound(self._infos)
        return info

    async def info(self, node: Node) -> OriginInfo:
        """What the origin said about ``node`` (probed again after a remount)."""
        assert node.origin_url is not None
        info = self._infos.get(node.origin_url) or await self._probe(node.origin_url)
        if info is None:
            raise NotFound(f"{node.origin_url}: the origin no longer has it")
        return info


def _bound(cache: dict[str, Any], limit: int = 10_000) -> None:
    while len(cache) > limit:
        cache.pop(next(iter(cache)))
