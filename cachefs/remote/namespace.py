"""The directory tree as the store shows it: listing, caching, revalidation.

A directory is listed from the store (one LIST with delimiter '/', plus its manifest when present)
the first time it is needed and again once its listing is older than the metadata TTL. Listings
are kept in the cache dir, so a remount starts from them. A listing never overrides local state:
a file written here and not yet uploaded, or deleted here and not yet deleted in the store, stays
as the mount shows it until the store catches up.

A listing takes time, and the mount changes meanwhile. Every local change gets a sequence number
(``local_change``); a listing remembers the number it began at and never replaces or drops a node
changed after that, nor brings back a name removed after that. Names being created or moved are
reserved (``reserving``/``moving``) and a listing leaves them alone until the change is done, so a
directory made here over a listed one of the same name stays one node.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from ..attrs import apply_manifest_entry, attrs_from_metadata
from ..errors import CacheFSError, NotADirectory, NotFound, StoreUnavailable
from ..names import MANIFEST_NAME, component_problem, is_internal
from ..nodes import NEVER, InodeTable, Kind, Node, PackDir
from ..store import ListPage, ObjectInfo, Store
from ..tier.listings import MetadataCache
from . import manifest as manifest_mod
from .changes import LocalChanges

log = logging.getLogger(__name__)

#: while the store is unreachable, a stale listing is served and retried this often
OFFLINE_RETRY = 10.0
#: a whole-subtree listing stops after this many pages (1000 keys each) and keeps what is done
FLAT_MAX_PAGES = 100
#: a directory listed this recently, whose sub-directory is now being listed, is being walked
WALK_WINDOW = 30.0
#: one directory's share of a subtree listing: its objects, and the names of its subdirectories
_Group = tuple[list[ObjectInfo], set[str]]


class Notifier(Protocol):
    """Tells the kernel to drop what it cached (implemented by the FUSE adapter)."""

    def inode_changed(self, ino: int) -> None: ...

    def entry_removed(self, parent_ino: int, name: str, ino: int) -> None: ...


class NullNotifier:
    def inode_changed(self, ino: int) -> None:
        pass

    def entry_removed(self, parent_ino: int, name: str, ino: int) -> None:
        pass


class Namespace:
    def __init__(self, store: Store, prefix: str, table: InodeTable, metadata: MetadataCache, *,
                 s3: trio.CapacityLimiter, ttl: float, notifier: Notifier,
                 pending_kind: Callable[[str], str | None],
                 pending_put: Callable[[str], Any] = lambda key: None,
                 pending_under: Callable[[str], dict[str, Any]] = lambda prefix: {},
                 manifest_pending: Callable[[str, str], bool] = lambda path, name: False,
                 pack_loader: Callable[[Node, str], Awaitable[None]] | None = None,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.store = store
        self.prefix = prefix
        self.table = table
        self.metadata = metadata
        self.s3 = s3
        self.ttl = ttl
        self.notifier = notifier
        self.pending_kind = pending_kind
        #: the journaled write of a key, if any (its digest and size are what the mount shows)
        self.pending_put = pending_put
        #: names below a prefix that the journal writes (WriteBack.pending_under)
        self.pending_under = pending_under
        #: TTLs read the trio clock (a MockClock in tests); the cache dir keeps wall-clock times
        self.clock = clock
        self.root = table.root
        self.offline = False
        self._listing: dict[int, trio.Event] = {}
        self._warned: set[str] = set()
        self._flat: dict[int, trio.Event] = {}  # subtree listings in progress, by top inode
        self._nursery: trio.Nursery | None = None
        #: fills in a pack directory, given its key, from its table of contents (Packs.load_dir)
        self.pack_loader = pack_loader
        #: what changed here, which no listing may undo (see the module docstring)
        self.changes = LocalChanges()
        self.local_change = self.changes.local_change
        self.reserving = self.changes.reserving
        self.moving = self.changes.moving
        #: whether the manifest entry (dir path, name) changed here and is not written yet
        self.manifest_pending = manifest_pending

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background subtree listings live here."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # -- keys ----------------------------------------------------------------------------------

    def key(self, node: Node) -> str:
        """The object key of a file or symlink."""
        return self.prefix + node.path()

    def dir_prefix(self, node: Node) -> str:
        path = node.path()
        return self.prefix + path + "/" if path else self.prefix

    # -- local changes (remote/changes.py) -------------------------------------------------------

    @property
    def seq(self) -> int:
        return self.changes.seq

    def find(self, path: str) -> Node | None:
        """The node at ``path`` if it is in memory (no listing)."""
        node = self.root
        for part in filter(None, path.split("/")):
            if node.children is None or part not in node.children:
                return None
            node = node.children[part]
        return node

    async def resolve(self, path: str) -> Node | None:
        """The node at ``path``, listing directories on the way as needed."""
        node = self.root
        for part in filter(None, path.split("/")):
            if node.kind is not Kind.DIR:
                return None
            child = (await self.children(node)).get(part)
            if child is None:
                return None
            node = child
        return node

    def find_key(self, key: str) -> Node | None:
        if not key.startswith(self.prefix):
            return None
        return self.find(key[len(self.prefix):])

    def _warn_once(self, what: str, message: str, *args: Any) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning(message, *args)

    # -- listing -------------------------------------------------------------------------------

    def fresh(self, directory: Node) -> bool:
        return directory.children is not None and \
            self.clock() - directory.listed_at < self.ttl

    async def children(self, directory: Node) -> dict[str, Node]:
        """The entries of ``directory``, listed or revalidated if needed."""
        if directory.kind is not Kind.DIR:
            raise NotADirectory(directory.path())
        while not self.fresh(directory):
            busy = self._listing.get(directory.ino)
            if busy is not None:
                await busy.wait()
                if directory.children is not None:
                    break
                continue
            flat = self._covering_flat(directory)
            if flat is not None:  # a subtree listing above will fill this directory in
                await flat.wait()
                if self.fresh(directory):
                    break
                continue  # another task may have started listing it meanwhile
            event = self._listing[directory.ino] = trio.Event()
            try:
                from_store = await self._list(directory)
            finally:
                del self._listing[directory.ino]
                event.set()
            if from_store:  # (a listing kept in the cache dir is no sign of a walk)
                self._maybe_walk(directory)
            break
        assert directory.children is not None
        return directory.children

    def _covering_flat(self, directory: Node) -> trio.Event | None:
        for node in (directory, *directory.ancestors()):
            event = self._flat.get(node.ino)
            if event is not None:
                return event
        return None

    def _maybe_walk(self, directory: Node) -> None:
        """Someone is walking down a tree (find, ls -R, cp -r): list the rest of it in one go.

        Listing a directory whose parent was itself listed moments ago means the walk goes on
        below the parent; one paged listing of the parent's whole subtree then replaces a LIST
        per directory. Listing the root alone (`ls /mnt`) never starts one.
        """
        parent = directory.parent
        if parent is None or self._nursery is None or self._covering_flat(parent) is not None:
            return
        if self.clock() - parent.listed_at > WALK_WINDOW:
            return
        self._flat[parent.ino] = trio.Event()
        self._nursery.start_soon(self._list_subtree, parent)

    async def _list_subtree(self, top: Node) -> None:
        try:
            await self._flat_listing(top)
        except CacheFSError as e:
            log.info("listing the tree below %s failed (%s); listing per directory",
                     top.path() or "/", e)
        finally:
            self._flat.pop(top.ino).set()

    async def _flat_listing(self, top: Node) -> None:
        with self.changes.listing_from() as since:
            await self._flat_listing_since(top, since)

    async def _subtree_pages(self, prefix: str) -> tuple[dict[str, _Group], str]:
        """Up to FLAT_MAX_PAGES pages of every key below ``prefix``, grouped by directory
        (relative path -> its objects and subdirectory names), and the last key listed if the
        listing stopped before the end ("" if it is complete)."""
        groups: dict[str, _Group] = {"": ([], set())}
        token: str | None = None
        last = ""
        for _ in range(FLAT_MAX_PAGES):
            page, token = await trio.to_thread.run_sync(self.store.list_page, prefix, None,
                                                        token, limiter=self.s3)
            for obj in page.objects:
                parts = obj.key[len(prefix):].split("/")
                for depth in range(len(parts) - 1):
                    parent = "/".join(parts[:depth])
                    groups.setdefault(parent, ([], set()))[1].add(parts[depth])
                    groups.setdefault("/".join(parts[:depth + 1]), ([], set()))
                groups["/".join(parts[:-1])][0].append(obj)
                last = obj.key
            if token is None:
                return groups, ""
        return groups, last

    async def _flat_listing_since(self, top: Node, since: int) -> None:
        prefix = self.dir_prefix(top)
        groups, last = await self._subtree_pages(prefix)
        if not top.attached or self.dir_prefix(top) != prefix:
            return  # moved or removed meanwhile: the listing describes somewhere else
        now = self.clock()
        manifests: list[tuple[Node, str, ObjectInfo]] = []
        for rel in sorted(groups, key=lambda r: (r.count("/"), r) if r else (-1, "")):
            dir_prefix = prefix + rel + "/" if rel else prefix
            if last and (last.startswith(dir_prefix) or last < dir_prefix):
                continue  # the listing stopped inside this directory's keys
            node = self.find(f"{top.path()}/{rel}".strip("/")) if rel else top
            if node is None or node.kind is not Kind.DIR or (node is not top and self.fresh(node)):
                continue
            if self.changes.in_move(node):
                continue
            objects, subdirs = groups[rel]
            page = ListPage(objects, [dir_prefix + d + "/" for d in sorted(subdirs)])
            self.merge(node, dir_prefix, page, None, since, keep_dirs=True)
            node.listed_at = now
            self.metadata.mark(node)
            info = next((o for o in objects if o.key == dir_prefix + MANIFEST_NAME), None)
            if info is not None and info.etag != node.manifest_etag:
                manifests.append((node, dir_prefix, info))
        async with trio.open_nursery() as nursery:
            for node, dir_prefix, info in manifests:
                nursery.start_soon(self._apply_manifest, node, dir_prefix, info)

    async def _apply_manifest(self, node: Node, prefix: str, info: ObjectInfo) -> None:
        since = self.seq
        entries = await self._read_manifest(node, info)
        if entries and node.children is not None and node.attached and \
                self.dir_prefix(node) == prefix:
            self._apply_entries(node, node.children, entries, since)

    async def lookup(self, directory: Node, name: str) -> Node | None:
        return (await self.children(directory)).get(name)

    async def _list(self, directory: Node) -> bool:
        """List ``directory``: from the cache dir while that listing is fresh, else from the
        store; whether the store was listed."""
        if directory.is_pack_dir and self.pack_loader is not None:
            await self.pack_loader(directory, self.key(directory))
            return False
        with self.changes.listing_from() as since:
            return await self._list_since(directory, since)

    async def _list_since(self, directory: Node, since: int) -> bool:
        path = directory.path()
        if directory.children is None:
            stored = await self.metadata.load(path)
            if stored is not None:
                listed_at, manifest_etag, rows = stored
                directory.children = {}
                for name, attrs in sorted(rows, key=lambda row: row[0]):
                    directory.children[name] = self.table.new(attrs.pop("kind"), name, directory,
                                                              **attrs)
                directory.listed_at = listed_at
                directory.manifest_etag = manifest_etag
                if self._drop_stale_local(directory):
                    directory.listed_at = NEVER  # list again: the store may have them by now
                if self.fresh(directory):
                    return False
        prefix = self.dir_prefix(directory)
        try:
            page = await trio.to_thread.run_sync(self.store.list_all, prefix, "/",
                                                 limiter=self.s3)
        except StoreUnavailable as e:
            if directory.children is None:
                raise
            self._warn_once("offline", "store unreachable (%s): serving cached listings", e)
            self.offline = True
            directory.listed_at = self.clock() - self.ttl + OFFLINE_RETRY
            return False
        except NotFound:
            page = ListPage([], [])
        if self.offline:
            log.warning("store reachable again")
            self.offline = False
        entries = await self._manifest(directory, prefix, page)
        if not directory.attached or self.dir_prefix(directory) != prefix or \
                self.changes.in_move(directory):
            # Moved or removed while it was listed: the listing describes another place. Show
            # what is known (an empty directory at worst) and list again at the next access.
            if directory.children is None:
                directory.children = {}
            directory.listed_at = NEVER
            return True
        self.merge(directory, prefix, page, entries, since)
        directory.listed_at = self.clock()
        self.metadata.mark(directory)
        return True

    async def _manifest(self, directory: Node, prefix: str,
                        page: ListPage) -> dict[str, Any] | None:
        """The directory's manifest entries if it changed since we last read it, else None."""
        info = next((o for o in page.objects if o.key == prefix + MANIFEST_NAME), None)
        if info is None:
            directory.manifest_etag = None
            return {}
        if info.etag == directory.manifest_etag:
            return None
        return await self._read_manifest(directory, info)

    async def _read_manifest(self, directory: Node, info: ObjectInfo) -> dict[str, Any] | None:
        try:
            _, data = await trio.to_thread.run_sync(self.store.read_all, info.key,
                                                    limiter=self.s3)
        except CacheFSError as e:
            log.warning("reading manifest %s failed: %s", info.key, e)
            return None
        directory.manifest_etag = info.etag
        return manifest_mod.parse(data)

    def merge(self, directory: Node, prefix: str, page: ListPage,
              manifest: dict[str, Any] | None, since: int | None = None, *,
              keep_dirs: bool = False) -> None:
        """Bring ``directory.children`` in line with a listing that began at sequence number
        ``since`` (default: now), keeping local state and every change made since.

        ``keep_dirs``: the listing is of a whole subtree, which shows a directory only if an
        object lies below it. Stores that keep directories of their own (SeaweedFS, or `dir/`
        markers elsewhere) list empty ones only to a listing by delimiter, so such a listing
        must not drop a directory it does not show.
        """
        if since is None:
            since = self.seq
        found: dict[str, ObjectInfo | None] = {}  # None: a sub-directory
        for item in page.objects:
            rel = item.key[len(prefix):]
            if rel == "" or is_internal(rel):
                continue
            if self._usable(item.key, rel):
                found[rel] = item
        for sub in page.prefixes:
            rel = sub[len(prefix):-1]
            if not self._usable(sub, rel):
                continue
            if rel in found:
                self._warn_once(sub, "key %s is both an object and a prefix: the mount shows "
                                "the directory, the object is hidden", sub[:-1])
            found[rel] = None
        if directory.children is None:
            directory.children = {}
        children = directory.children
        journal = self.pending_under(prefix)
        for name, op in journal.items():  # closed here, not stored yet (after a crash, too)
            if name not in found and name not in children and self._usable(prefix + name, name):
                children[name] = self._journaled_node(directory, name, op)
        for name, node in list(children.items()):
            if name not in found and name not in journal and not self._keep_local(node) and \
                    not (keep_dirs and node.kind is Kind.DIR) and \
                    not self.changes.undone_locally(directory, name, since):
                del children[name]
                self.table.detach(node)
                self.notifier.entry_removed(directory.ino, name, node.ino)
        # New nodes get inode numbers in name order: `cp -r` reads a directory sorted by
        # inode number, and the prefetcher expects it to go in name order.
        for name, obj in sorted(found.items()):
            if self.pending_kind(prefix + name) == "delete":
                continue  # deleted here; the store does not know yet
            if self.changes.undone_locally(directory, name, since):
                continue  # changed here after the listing began
            self._merge_one(directory, children, name, obj)
        if manifest:
            self._apply_entries(directory, children, manifest, since)

    def _apply_entries(self, directory: Node, children: dict[str, Node],
                       manifest: dict[str, Any], since: int) -> None:
        """Attributes from a manifest, except where this mount changed them and has not
        written them yet (a directory's origin or checksums set a moment ago): the stored
        entry is older than what the mount shows."""
        path = directory.path()
        for name, entry in manifest.items():
            target = self.root if name == "." and directory is self.root \
                else children.get(name)
            if target is None or target.has_local_state or target.changed_seq > since or \
                    self.manifest_pending(path, name):
                continue  # attributes changed here win until the manifest has them
            apply_manifest_entry(target, entry)

    def _merge_one(self, directory: Node, children: dict[str, Node], name: str,
                   obj: ObjectInfo | None) -> None:
        node = children.get(name)
        kind = Kind.DIR if obj is None else Kind.FILE
        if node is not None:
            if self._keep_local(node):
                return
            if node.is_pack_dir and obj is not None and node.etag == obj.etag:
                return  # the same pack, still shown as its directory
            same_kind = (node.kind is Kind.DIR) == (kind is Kind.DIR)
            if same_kind and (obj is None or node.etag == obj.etag):
                return
            if same_kind and obj is not None:  # replaced in the store: same inode, new content
                node.etag, node.size, node.digest = obj.etag, obj.size, None
                node.mtime_ns = node.ctime_ns = int(obj.mtime * 1e9)
                node.source, node.attrs_from = "store", "default"
                if node.kind is Kind.LINK:
                    node.kind, node.target = Kind.FILE, None
                self.notifier.inode_changed(node.ino)
                return
            del children[name]
            self.table.detach(node)
            self.notifier.entry_removed(directory.ino, name, node.ino)
        if obj is None:
            children[name] = self.table.new(Kind.DIR, name, directory)
        else:
            mtime = int(obj.mtime * 1e9)
            children[name] = self.table.new(Kind.FILE, name, directory, size=obj.size,
                                            etag=obj.etag, mtime_ns=mtime, ctime_ns=mtime)

    def _journaled_node(self, directory: Node, name: str, op: Any) -> Node:
        """A node for what the journal will write at ``name``: a directory a pending key lies
        in (op None), or the file (or symlink) a pending put stores."""
        if op is None:
            return self.table.new(Kind.DIR, name, directory, attrs_from="local")
        attrs = attrs_from_metadata(op.meta)
        kind = attrs.pop("kind", Kind.FILE)
        if "cachefs-body" in op.meta:
            kind = Kind.LINK
        node = self.table.new(kind, name, directory, **attrs)
        node.size, node.digest = op.size, op.digest
        node.source, node.attrs_from = "local", "local"
        if kind is Kind.LINK:
            node.target = op.meta["cachefs-body"]
            node.size = len(node.target.encode())
        return node

    def _drop_stale_local(self, directory: Node) -> bool:
        """After a restart: files remembered as written here but neither in the store nor in
        the journal were never closed (or their write finished and the listing is older).
        Returns whether any was dropped."""
        assert directory.children is not None
        stale = [name for name, node in directory.children.items()
                 if node.kind is not Kind.DIR and node.etag is None and
                 not self._keep_local(node)]
        for name in stale:
            self.table.detach(directory.children.pop(name))
        return bool(stale)

    def _keep_local(self, node: Node) -> bool:
        """Whether ``node`` holds changes the store does not have yet, so a listing must not
        replace it. A file with no store version counts only while a write of it is open or
        journaled: one remembered from before a crash, half-written, must not hide the store."""
        if node.staging is not None or node.pending > 0:
            return True
        if node.pack_dir in (PackDir.BUILDING, PackDir.SEALING):
            return True  # a NAME.pack written here, not yet stored
        if node.pack_dir is PackDir.TARZST and node.name.endswith(".d") and \
                node.parent is not None:

            # an archive shown as a directory: as long as the archive is there, unchanged
            archive = (node.parent.children or {}).get(node.name[:-2])
            return archive is not None and archive.etag == node.etag
        if node.kind is Kind.DIR:
            if node.children is not None and any(self._keep_local(c)
                                                 for c in node.children.values()):
                return True
            if node.source == "origin" and node.origin_url is not None:
                return True  # found at the origin; the store has it once a file below is kept
            return node.attrs_from == "local" and self.pending_kind(self.dir_prefix(node)) \
                == "put"
        if node.etag is not None:
            return False
        if node.origin_url is not None:
            return True
        op = self.pending_put(self.key(node))
        if op is None:
            return False
        if op.digest and node.digest != op.digest:  # the journal knows the closed content
            node.digest, node.size = op.digest, op.size
        return True

    def _usable(self, key: str, rel: str) -> bool:
        problem = component_problem(rel) if "/" not in rel else "empty path component"
        if problem:
            self._warn_once(key, "key %r cannot be shown as a path (%s): skipped", key, problem)
            return False
        return True

    async def load_root(self) -> None:
        """Root attributes saved by an earlier mount (mode, xattrs such as an origin)."""
        saved = await self.metadata.load_self()
        if saved:
            for name in ("mode", "uid", "gid", "mtime_ns", "ctime_ns", "xattrs", "attrs_from"):
                setattr(self.root, name, saved[name])

    def invalidate(self, directory: Node) -> None:
        """Force the next access to list ``directory`` again (not one that is never listed)."""
        if directory.listed_at != float("inf"):
            directory.listed_at = NEVER

    def invalidate_all(self) -> None:
        """Every listing is checked again at its next access (the store came back)."""
        for node in self.table.nodes.values():
            if node.kind is Kind.DIR and node.listed_at != float("inf"):
                node.listed_at = NEVER


__all__ = ["Namespace", "Notifier", "NullNotifier"]
