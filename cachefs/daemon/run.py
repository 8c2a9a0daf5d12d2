"""The mount daemon: builds every part once, mounts, serves, and shuts down cleanly.

Construction happens here and nowhere else: the store, blob tier, namespace, fetcher, write-back
and core are created and handed their collaborators, so tests can build the same graph with a
different store. ``run`` is what `cachefs mount --foreground` executes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from .. import __version__
from ..attrs import manifest_entry
from ..config import Config
from ..core.access import Access
from ..core.arrivals import Arrivals
from ..core.content import Contents
from ..core.entries import Entries
from ..core.fs import CacheFS, Rooms
from ..core.handles import OpenFiles
from ..core.options import Limiters, Options
from ..core.packdir import Layers
from ..core.read import Reads, content_token
from ..core.seal import Sealer
from ..core.tree import Tree
from ..core.uploads import Uploads
from ..core.write import Writes
from ..errors import (
    AccessDenied,
    BucketNotFound,
    CacheFSError,
    ConfigError,
    InvalidArgument,
    NotFound,
    StoreUnavailable,
)
from ..fuse.ops import FuseOps, KernelNotifier
from ..fuse.xattrs import Xattrs
from ..metrics import Stats
from ..names import component_problem
from ..nodes import InodeTable, PackDir
from ..pack import build as packbuild
from ..pack import codec
from ..pack.mounted import Packs
from ..pack.usage import UseRecorder
from ..remote import subtree
from ..remote.fallback import OriginFallback, parse_origin_options, validate_setting
from ..remote.fetch import Fetcher
from ..remote.manifest import ManifestWriter
from ..remote.namespace import Namespace
from ..remote.origin import OriginClient
from ..remote.prefetch import KernelPages, Prefetcher, warm
from ..remote.writeback import WriteBack
from ..store import Store, open_store, parse_store_url
from ..tier.blobs import BlobTier
from ..tier.db import Database
from ..tier.listings import MetadataCache
from . import mountrec
from .lock import MountError, mount_lock

log = logging.getLogger(__name__)

#: seconds between index flushes (listings, blob access times)
FLUSH_INTERVAL = 2.0
#: how long shutdown waits for pending uploads before leaving them to the next mount
DRAIN_GRACE = 60.0
#: seconds between checks of an unreachable store
OFFLINE_PROBE = 5.0


def check_mountpoint(mountpoint: Path) -> None:
    if not Path("/dev/fuse").exists():
        raise MountError("/dev/fuse is missing: install fuse3, or run the container with "
                         "--device /dev/fuse --cap-add SYS_ADMIN")
    try:
        os.stat(mountpoint)
    except FileNotFoundError:
        raise MountError(f"mount point {mountpoint} does not exist (mkdir -p it first)") \
            from None
    except OSError as e:
        hint = " (a dead mount: `cachefs umount` it)" if e.errno in mountrec.DEAD_ERRNOS else ""
        raise MountError(f"mount point {mountpoint}: {e.strerror}{hint}") from None
    if not mountpoint.is_dir():
        raise MountError(f"mount point {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise MountError(f"{mountpoint} is already a mount point (cachefs umount it first)")


def check_store(store: Store, has_cache: bool) -> bool:
    """Make sure the store can be used. Returns False when it is unreachable but a cached
    listing lets the mount come up offline."""
    try:
        store.check()
        return True
    except BucketNotFound as e:
        raise MountError(f"{e}") from None
    except AccessDenied as e:
        raise MountError(f"store refused our credentials: {e}") from None
    except StoreUnavailable as e:
        if has_cache:
            log.warning("store unreachable (%s): mounting offline from the cache dir", e)
            return False
        raise MountError(f"store unreachable: {e}") from None


class Daemon:
    """Everything one mount needs, wired together."""

    def __init__(self, config: Config, mountpoint: Path, store: Store, prefix: str, *,
                 online: bool = True, chosen: subtree.Subtree | None = None) -> None:
        self.config = config
        self.mountpoint = mountpoint
        self.store = store
        self.prefix = prefix
        self.cache_dir = Path(config.cache_dir)
        self.subtree = chosen
        self.stats = Stats()
        self.limiters = Limiters(
            s3=trio.CapacityLimiter(config.connections),
            disk=trio.CapacityLimiter(8),
            cpu=trio.CapacityLimiter(max(2, os.cpu_count() or 2)),
        )
        self._build_tiers()
        self._build_remote()
        self.ns.offline = not online
        self.fs = self._build_core(online)

        self.last_warm: dict[str, int] = {}
        self.last_pack: dict[str, Any] = {}
        self.last_verify: dict[str, Any] = {}
        self.xattrs = Xattrs(self.fs, self.control, validate_setting=validate_setting,
                             actions={"fetch": self._approve, "warm": self._warm,
                                      "pack": self._pack_from_mount,
                                      "verify": self._verify})
        # A read-only mount serves files without OPEN/RELEASE: nothing it shows can change
        # under an open file but what the store changes, which drops the kernel's pages.
        self.ops = FuseOps(self.fs, self.xattrs, config.metadata_ttl,
                           no_open=config.read_only)

    def _build_tiers(self) -> None:
        """What lives in the cache dir: the index, the blob tier, listings, the tree."""
        self.db = Database(self.cache_dir / "index.db")
        self.blobs = BlobTier(self.cache_dir, self.db, self.config.cache_size,
                              self.limiters.disk, self.limiters.cpu)
        self.metadata = MetadataCache(self.db)
        self.table = InodeTable()
        if self.subtree is not None and self.subtree.pack is not None:
            root = self.table.root  # the mount shows one pack (or archive): --subtree
            tar = self.subtree.prefix.endswith(".tar.zst")
            root.pack_dir = PackDir.TARZST if tar else PackDir.PACK
            root.etag, root.size = self.subtree.pack.etag, self.subtree.pack.size

    def _build_remote(self) -> None:
        """The store's side: write-back, manifests, the namespace, packs, origins."""
        config, store, lim = self.config, self.store, self.limiters
        try:
            level = codec.parse_level(config.compress)
        except ValueError as e:
            raise ConfigError(f"compress: {e}") from None
        self.writeback = WriteBack(store, self.blobs, self.cache_dir, s3=lim.s3, disk=lim.disk,
                                   cpu=lim.cpu, stats=self.stats, compress_level=level,
                                   timeout=config.timeout)
        self.notifier = KernelNotifier()
        self.manifests = ManifestWriter(store, self.prefix, self.metadata, lim.s3,
                                        entries_for=self._manifest_entries,
                                        on_written=self._manifest_written)
        self.packs = Packs(store, self.blobs, self.table, self.stats, s3=lim.s3, cpu=lim.cpu,
                           disk=lim.disk, usage=UseRecorder(store, self.cache_dir))
        wb = self.writeback
        self.ns = Namespace(store, self.prefix, self.table, self.metadata, s3=lim.s3,
                            ttl=config.metadata_ttl, notifier=self.notifier,
                            pending_kind=wb.pending_kind, pending_put=wb.pending_put,
                            pending_under=wb.pending_under,
                            manifest_pending=self.manifests.pending,
                            pack_loader=self.packs.load_dir)
        self.origin_client = OriginClient(config.timeout)
        self.origins = OriginFallback(self.origin_client, self.ns, self.table, self.metadata,
                                      self.stats, mount_origins=parse_origin_options(config.origin),
                                      default_mode=config.origin_fetch, ttl=config.metadata_ttl)

    def _build_core(self, online: bool) -> CacheFS:
        """The core's rooms, each handed what it works with (see core/fs.py)."""
        config, lim = self.config, self.limiters
        opts = Options(read_only=config.read_only, sync_writes=config.writeback == "sync",
                       timeout=config.timeout, ttl=config.metadata_ttl,
                       pack_idle=config.pack_idle)
        shared: dict[str, Any] = dict(ns=self.ns, limits=lim, opts=opts)
        uploads = Uploads(wb=self.writeback, table=self.table, blobs=self.blobs,
                          manifests=self.manifests, metadata=self.metadata, stats=self.stats,
                          **shared)
        arrivals = Arrivals(ns=self.ns, uploads=uploads, stats=self.stats, opts=opts)
        self.fetcher = Fetcher(self.store, self.blobs, s3=lim.s3, disk=lim.disk, cpu=lim.cpu,
                               stats=self.stats, origin=self.origin_client,
                               etag_check=config.etag_check, events=arrivals)
        contents = Contents(blobs=self.blobs, fetcher=self.fetcher, packs=self.packs,
                            origins=self.origins, arrivals=arrivals, stats=self.stats, **shared)
        pages = KernelPages()
        self.prefetcher = Prefetcher(self.ns, cached_paths=contents.cached_paths,
                                     start_fetch=contents.start_fetch, disk=lim.disk,
                                     stats=self.stats, pages=pages, token=content_token,
                                     unit=contents.unit)
        overlay = self.table.root.pack_dir is PackDir.PACK and not config.read_only
        layers = Layers(table=self.table, blobs=self.blobs, overlay_root=overlay,
                        build_dir=self.cache_dir / packbuild.LOG_DIR, **shared)
        access = Access(opts, layers, offline_at_start=not online)
        entries = Entries(ns=self.ns, table=self.table, layers=layers,
                          manifests=self.manifests, metadata=self.metadata)
        files = OpenFiles()
        writes = Writes(table=self.table, blobs=self.blobs, contents=contents, uploads=uploads,
                        wb=self.writeback, layers=layers, access=access, entries=entries,
                        stats=self.stats, **shared)
        rooms = Rooms(
            tree=Tree(table=self.table, layers=layers, entries=entries, access=access,
                      writes=writes, uploads=uploads, files=files, manifests=self.manifests,
                      metadata=self.metadata, origins=self.origins, **shared),
            reads=Reads(table=self.table, contents=contents, files=files,
                        on_open=self.prefetcher.opened, pages=pages, **shared),
            writes=writes,
            sealer=Sealer(layers=layers, writes=writes, uploads=uploads, blobs=self.blobs,
                          manifests=self.manifests, stats=self.stats, **shared),
            layers=layers, contents=contents, uploads=uploads, entries=entries, access=access,
            files=files)
        return CacheFS(rooms, ns=self.ns, table=self.table, blobs=self.blobs,
                       wb=self.writeback, manifests=self.manifests, metadata=self.metadata,
                       opts=opts)

    def start(self) -> None:
        """Blocking start-up work, before the mount answers."""
        self.blobs.start()
        self.metadata.start()
        self.writeback.start(on_done=self.fs.rooms.uploads.replayed_done)

    # -- callbacks -----------------------------------------------------------------------------

    async def _manifest_entries(self, path: str, names: set[str]) -> dict[str, Any] | None:
        directory = await self.ns.resolve(path)
        if directory is None or directory.children is None:
            return None
        result: dict[str, Any] = {}
        for name in names:
            node = directory if (name == "." and directory is self.table.root) \
                else directory.children.get(name)
            result[name] = manifest_entry(node) if node is not None else None
        return result

    def _manifest_written(self, path: str, etag: str | None) -> None:
        node = self.ns.find(path)
        if node is not None:
            node.manifest_etag = etag
            self.metadata.mark(node)

    def mount_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"pid": os.getpid()}
        if self.subtree is not None:
            info.update(key=self.subtree.key, exact=self.subtree.exact,
                        pack=self.subtree.pack is not None)
        return info

    async def _approve(self, path: str) -> None:
        await self.fs.approve(path)

    async def _verify(self, mode: str) -> None:
        bad = []
        digests = list(self.blobs.entries)
        for digest in digests:
            if not await self.blobs.verify(digest, discard=mode == "repair"):
                bad.append(digest)
        self.last_verify = {"checked": len(digests), "bad": bad, "repaired": mode == "repair",
                            "bytes": self.blobs.usage, "pending_uploads_damaged": sorted(
                                op.digest for op in self.writeback.queue
                                if op.digest and op.digest in bad)}

    async def _pack_from_mount(self, request: str) -> None:
        """``cachefs pack --from-mount``: save a mounted pack and its layer as a new pack."""
        try:
            doc = json.loads(request)
            path, key = str(doc["path"]), str(doc["key"]).strip("/")
        except (ValueError, KeyError, TypeError):
            raise InvalidArgument('expected {"path": ..., "key": ...}') from None
        problems = [p for p in map(component_problem, key.split("/")) if p]
        if not key or problems:
            why = problems[0] if problems else "empty"
            raise InvalidArgument(f"{key!r} is not a usable key ({why})")
        node = await self.ns.resolve(path)
        if node is None:
            raise NotFound(f"{path or '/'}: no such directory")
        base = parse_store_url(self.config.store).prefix.strip("/")
        full = f"{base}/{key}" if base else key
        self.last_pack = {}
        started = trio.current_time()
        summary = await self.fs.save_as(node, full)
        self.last_pack = {"key": full, "seconds": round(trio.current_time() - started, 2),
                          **summary}

    async def _warm(self, path: str) -> None:
        node = await self.ns.resolve(path)
        if node is None:
            raise NotFound(f"{path}: no such file or directory")
        contents = self.fs.contents
        result = await warm(self.ns, node, cached_paths=contents.cached_paths,
                            start_fetch=contents.start_fetch, stats=self.stats)
        self.last_warm = result
        if result["failed"]:
            raise CacheFSError(f"{result['failed']} file(s) could not be fetched (see the log)")

    async def control(self, name: str) -> dict[str, Any] | str:
        """Answers to the root's control attributes (see fuse/xattrs.py)."""
        if name == "pid":
            return str(os.getpid())
        if name == "version":
            return __version__
        if name == "store":
            return self.store.url + ("/" + self.prefix if self.prefix else "")
        if name == "config":
            return {k: v for k, v in vars(self.config).items() if k != "sources"}
        if name == "status":
            return self.fs.status()
        if name == "sync":
            return await self.fs.sync()
        if name == "subtree":
            return self.mount_info()
        if name == "warmed":
            return self.last_warm
        if name == "packed":
            return self.last_pack
        if name == "verified":
            return self.last_verify
        if name == "keys":
            return {"keys": self.stats.key_report(300)}
        return self.stats_snapshot()

    def stats_snapshot(self) -> dict[str, Any]:
        snap = self.stats.snapshot()
        snap.update({
            "pid": os.getpid(),
            "store": self.store.url + ("/" + self.prefix if self.prefix else ""),
            "mountpoint": str(self.mountpoint),
            "offline": self.ns.offline,
            "cache": {"bytes": self.blobs.usage, "capacity": self.blobs.capacity,
                      "blobs": len(self.blobs.entries), "evictions": self.blobs.evictions},
            "pending_uploads": len(self.writeback.queue),
            "fetches_in_flight": len(self.fetcher.active),
            "open_handles": len(self.fs.files),
            "inodes": len(self.table.nodes),
            # FUSE requests by kind: what a file costs in round trips
            "requests": dict(sorted(self.ops.requests.items())),
            "no_open": self.ops.no_open,
        })

        return snap

    # -- running -------------------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        while True:
            await trio.sleep(FLUSH_INTERVAL)
            try:
                await self.fs.sealer.seal_idle()
                await self.fs.flush_index()
            except Exception:
                log.exception("writing the cache index failed")

    async def _watch_store(self) -> None:
        """While offline, ask the store every few seconds whether it is back."""
        while True:
            await trio.sleep(OFFLINE_PROBE)
            if not (self.ns.offline or self.fs.access.offline_at_start):
                continue
            try:
                await trio.to_thread.run_sync(self.store.check, limiter=self.limiters.s3)
            except CacheFSError as e:
                log.debug("store still unreachable: %s", e)
                continue
            log.warning("store reachable again%s",
                        ": the mount is writable" if self.fs.access.offline_at_start else "")
            self.ns.offline = False
            self.fs.access.offline_at_start = False
            self.ns.invalidate_all()

    async def _signals(self, nursery: trio.Nursery) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            async for signum in sigs:
                log.info("%s: draining uploads, then unmounting",
                         signal.Signals(signum).name)
                with trio.move_on_after(DRAIN_GRACE):
                    await self.fs.sync()
                pyfuse3.terminate()
                return

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[trio.Nursery]:
        """The background services (fetches, uploads, manifests, index flushes) while open."""
        await self.ns.load_root()
        await self.manifests.start()
        async with trio.open_nursery() as services:
            await services.start(self.notifier.run)
            await services.start(self.ns.run)
            await services.start(self.fetcher.run)
            await services.start(self.writeback.run)
            await services.start(self.manifests.run)
            await services.start(self.prefetcher.run)
            services.start_soon(self._housekeeping)
            services.start_soon(self.fs.sealer.recover_builds)
            services.start_soon(self._watch_store)
            try:
                yield services
            finally:
                services.cancel_scope.cancel()
                with trio.CancelScope(shield=True):
                    await self.origin_client.aclose()

    async def finish(self) -> None:
        """After the mount is gone: let fills from an origin finish (their uploads are queued
        when they complete), seal NAME.pack directories, give pending uploads a last chance,
        save the index."""
        # Outside the grace period: a fill is bounded by its progress (--timeout without a
        # byte), and the uploads it queues still get all of DRAIN_GRACE.
        await self.fs.contents.finish_origin_fills()
        with trio.move_on_after(DRAIN_GRACE):
            for error in await self.fs.sealer.seal_all():
                log.error("not sealed: %s (its files stay in the cache dir, sealed at the "
                          "next mount)", error)
            if any(b.overlay for b in self.fs.layers.building.values()):
                log.warning("the changes made over the mounted pack were not saved with "
                            "cachefs pack --from-mount: they are discarded")
            failed = await self.writeback.drain(attempts=2)
            if failed:
                log.warning("%d upload(s) left for the next mount with this cache dir",
                            len(failed))
        with trio.move_on_after(10), contextlib.suppress(CacheFSError):
            await self.manifests.flush()
        await self.fs.flush_index()

    async def main(self, ready_fd: int | None) -> None:
        async with self.running() as services:
            services.start_soon(self._signals, services)
            if ready_fd is not None:
                _report(ready_fd, "ok " + json.dumps(self.mount_info()))
            log.info("mounted %s at %s", self.store.url + "/" + self.prefix, self.mountpoint)
            if self.config.read_only and not self.ops.no_open:
                log.warning("this pyfuse3 does not pass inodes (scripts/setup.sh builds one "
                            "that does): every file is opened through the daemon")

            await pyfuse3.main(min_tasks=4, max_tasks=64)
            log.info("unmounted; finishing pending uploads")
            await self.finish()

    def close(self) -> None:
        self.writeback.close()
        self.db.close()


def _write_record(mountpoint: Path, cache_dir: Path, store_url: str) -> None:
    """Say who serves this mount, for `cachefs umount` should this process be killed."""
    record = mountrec.MountRecord(mountpoint=str(mountpoint), pid=os.getpid(),
                                  cache_dir=str(cache_dir.absolute()), store=store_url)
    try:
        mountrec.write(record)
    except OSError as e:
        log.warning("cannot write the mount record %s (%s): if this daemon is killed, "
                    "`cachefs umount` cannot say what was pending", mountrec.record_path(
                        mountpoint), e.strerror)


def _report(fd: int, message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, (message + "\n").encode())
        os.close(fd)


def fuse_options(config: Config, store_url: str) -> set[str]:
    opts = {"fsname=" + store_url.replace(",", "%2C"), "subtype=cachefs", "noatime"}
    if config.allow_other:
        opts |= {"allow_other", "default_permissions"}
    if config.read_only:
        opts.add("ro")
    return opts


def setup_logging(level: str, stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # boto's debug output includes request headers; it never gets more than warnings.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(config: Config, mountpoint: str, ready_fd: int | None = None) -> int:
    """Mount and serve until unmounted. Returns the process exit code."""
    path = Path(mountpoint).absolute()
    # Worker threads (HTTP, hashing) hold the GIL in bursts; the default 5 ms switch interval
    # then delays the FUSE loop's replies by milliseconds. A shorter one keeps it responsive.
    sys.setswitchinterval(float(os.environ.get("CACHEFS_SWITCH_INTERVAL", "0.0005")))
    try:
        check_mountpoint(path)
        store, prefix = open_store(config)
        store.ensure()
        cache_dir = Path(config.cache_dir)
        with mount_lock(cache_dir):
            online = check_store(store, has_cache=(cache_dir / "index.db").exists())
            chosen = None
            if config.subtree:
                chosen = subtree.resolve(store, prefix, config.subtree, config.restore_key)
                prefix = chosen.prefix
            daemon = Daemon(config, path, store, prefix, online=online, chosen=chosen)
            daemon.start()
            store_url = store.url + ("/" + prefix.rstrip("/") if prefix else "")
            try:
                pyfuse3.init(daemon.ops, str(path), fuse_options(config, store_url))
            except RuntimeError as e:
                raise MountError(f"mounting {path} failed: {e} (is /dev/fuse usable and "
                                 "the mount point empty?)") from None
            _write_record(path, cache_dir, store_url)
            try:
                trio.run(daemon.main, ready_fd)
            finally:
                pyfuse3.close(unmount=True)
                mountrec.remove(path, os.getpid())
                daemon.close()
        log.info("cachefs exited cleanly")
        return 0
    except subtree.SubtreeMissing as e:
        log.error("%s", e)
        if ready_fd is not None:
            _report(ready_fd, "miss: " + str(e))
        return 1
    except (MountError, ConfigError, CacheFSError) as e:
        log.error("%s", e)
        if ready_fd is not None:
            _report(ready_fd, "error: " + str(e))
        return 2
