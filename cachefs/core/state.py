"""What the parts of the filesystem core share: its state and its options.

The core is one class (core.fs.CacheFS) written in three modules: fs.py (lookups, reading, origins,
packs, maintenance), write.py (open for writing, staging, close, upload) and tree.py
(create, mkdir, symlink, unlink, rmdir, rename). CoreState declares what all three use, so each
can be read, and type-checked, on its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from ..metrics import Stats
from ..nodes import InodeTable, Node
from ..pack.mounted import Packs
from ..remote.fallback import OriginFallback
from ..remote.fetch import Fetcher
from ..remote.manifest import ManifestWriter
from ..remote.namespace import Namespace
from ..remote.writeback import Op, WriteBack
from ..tier.blobs import BlobTier
from ..tier.listings import MetadataCache
from .handles import ReadHandle, Staging, WriteHandle

#: files written in order past this size start uploading before they are closed (sync mode)
STREAM_THRESHOLD = 16 << 20


@dataclasses.dataclass(frozen=True)
class Options:
    read_only: bool = False
    sync_writes: bool = True
    timeout: float = 30.0
    ttl: float = 60.0
    #: seconds a NAME.pack directory may sit idle before it is sealed (0: only at sync/unmount)
    pack_idle: float = 5.0


@dataclasses.dataclass(frozen=True)
class Limiters:
    s3: trio.CapacityLimiter
    disk: trio.CapacityLimiter
    cpu: trio.CapacityLimiter


class CoreState:
    ns: Namespace
    table: InodeTable
    blobs: BlobTier
    fetcher: Fetcher
    wb: WriteBack
    manifests: ManifestWriter
    metadata: MetadataCache
    stats: Stats
    limits: Limiters
    opts: Options
    handles: dict[int, ReadHandle | WriteHandle]
    origins: OriginFallback | None
    packs: Packs | None
    offline_at_start: bool
    on_read_open: Callable[[Node], None]
    _next_fh: int
    _op_nodes: dict[int, Node]
    _origin_uploads: dict[str, Op]

    if TYPE_CHECKING:  # defined by one part, used by the others
        def local_digest(self, node: Node) -> str | None: ...
        async def _fetch_whole(self, node: Node) -> str: ...
        def _check_writable(self, *nodes: Node) -> None: ...
        @staticmethod
        def in_pack(node: Node) -> bool: ...
        @staticmethod
        def content_token(node: Node) -> object: ...
        def _add_handle(self, handle: ReadHandle | WriteHandle) -> int: ...
        async def release(self, fh: int) -> None: ...
        async def _commit(self, node: Node, wait: bool | None = None) -> None: ...
        async def _submit_and_wait(self, node: Node | None, kind: str, key: str, *,
                                   wait: bool | None = None, keep: bool = False,
                                   **kwargs: Any) -> Op: ...
        def _attrs_changed(self, node: Node) -> None: ...
        def _attach(self, parent: Node, node: Node) -> None: ...
        def _remove(self, parent: Node, name: str, node: Node) -> None: ...
        async def _open_write(self, node: Node, truncate: bool,
                              readable: bool) -> WriteHandle: ...
        async def _new_staging(self, node: Node, copy: bool) -> Staging: ...
        async def _truncate(self, node: Node, staging: Staging, size: int) -> None: ...
        async def _crc_meta(self, digest: str, size: int) -> str: ...
