"""What fetches tell the tree (remote.fetch.FetchEvents): attributes from a GET's headers, a
failed fetch whose unchecked bytes must leave the page cache, and a fill from an origin, which
is uploaded so the next runner finds it in the store.
"""

from __future__ import annotations

import logging

from .. import attrs as attrs_mod
from ..metrics import Stats
from ..remote.fetch import Fetch
from ..remote.namespace import Namespace
from ..remote.origin import OriginInfo
from ..remote.writeback import Op
from ..store import ObjectInfo
from .options import Options
from .uploads import Uploads

log = logging.getLogger(__name__)


class Arrivals:
    def __init__(self, *, ns: Namespace, uploads: Uploads, stats: Stats, opts: Options) -> None:
        self.ns = ns
        self.uploads = uploads
        self.stats = stats
        self.opts = opts
        #: the upload each origin fill queued, by key (`cachefs fetch` waits for it)
        self.origin_uploads: dict[str, Op] = {}

    def object_info(self, info: ObjectInfo) -> None:
        """Attributes from a GET's headers (cachefs's or s3fs-fuse's metadata)."""
        node = self.ns.find_key(info.key)
        if node is not None and node.etag == info.etag:
            size = node.size
            attrs_mod.apply_object_metadata(node, info.metadata)
            if node.size != size:
                self.ns.notifier.inode_changed(node.ino)

    def fetch_failed(self, key: str) -> None:
        """Whatever a reader saw of a failed fetch must leave the kernel's page cache."""
        node = self.ns.find_key(key)
        if node is not None:
            self.ns.notifier.inode_changed(node.ino)

    async def origin_fetched(self, fetch: Fetch, info: OriginInfo) -> None:
        """An origin fetch is in the blob tier: upload it so the next runner hits the store."""
        node = self.ns.find_key(fetch.key)
        if node is None or node.origin_url is None or fetch.digest is None:
            return
        node.digest = fetch.digest
        self.stats.key_event(fetch.key, "miss_origin")
        if self.opts.read_only:
            return
        meta = attrs_mod.object_metadata(node, fetch.digest)
        meta["cachefs-origin-url"] = node.origin_url.split("?", 1)[0]
        meta["cachefs-crc"] = await self.uploads.crc_meta(fetch.digest, fetch.size)
        op = await self.uploads.submit(node, "put", fetch.key, digest=fetch.digest,
                                       size=fetch.size, meta=meta, wait=False)
        self.origin_uploads[fetch.key] = op
