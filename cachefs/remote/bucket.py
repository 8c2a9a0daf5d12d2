"""Running the bucket: what is in it, what it costs, what may go (`cachefs ls`, `du`, `prune`,
`verify-store`; docs/BUCKET.md).

A scan is one paged LIST of the prefix (markers and manifests come with it) and, for each
object, the ranged GETs that tell a pack from an object and read which packs it needs. Prune
plans are pure functions of a scan, so they are tested without a store.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import re
from collections.abc import Callable, Iterable

from ..errors import ConfigError, NotFound, ObjectChanged
from ..names import MANIFEST_NAME
from ..pack.refs import (
    PACK,
    Inspected,
    PackInfo,
    broken_references,
    dependents_first,
    inspect,
    needed_by,
)
from ..pack.usage import marker_key, used_key
from ..store import ObjectInfo, Store

#: table reads in parallel: they are two small ranged GETs each, so latency, not bandwidth
WORKERS = 16

_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """``'7d'`` -> seconds. Units: s, m, h, d, w (a bare number is days)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)\s*", text)
    if not m:
        raise ConfigError(f"not an age: {text!r} (use e.g. 12h, 7d, 2w)")
    return float(m.group(1)) * _AGE_UNITS[m.group(2) or "d"]


@dataclasses.dataclass
class Item:
    """One key of the bucket (not a manifest or a marker)."""

    info: ObjectInfo
    kind: str = "object"  # object | pack | tar.zst
    pack: PackInfo | None = None
    #: when the key was last used (its marker's last write), if it has a marker
    used: float | None = None
    error: str | None = None

    @property
    def key(self) -> str:
        return self.info.key

    @property
    def size(self) -> int:
        return self.info.size

    @property
    def last_use(self) -> float:
        """The last use, or the last write when there is no marker (or it is older)."""
        return max(self.used or 0.0, self.info.mtime)


@dataclasses.dataclass
class Scan:
    items: dict[str, Item]
    #: manifests and markers: cachefs's own objects
    internal: list[ObjectInfo]
    #: markers whose key is gone
    orphan_markers: list[str]
    #: what was listed
    prefix: str = ""

    @property
    def packs(self) -> dict[str, PackInfo]:
        return {k: i.pack for k, i in self.items.items() if i.pack is not None}

    @property
    def objects(self) -> dict[str, ObjectInfo]:
        return {k: i.info for k, i in self.items.items()}

    def total(self) -> int:
        return sum(i.size for i in self.items.values()) + sum(o.size for o in self.internal)


def scan(store: Store, prefix: str, *, read_packs: bool = True,
         progress: Callable[[int, int], None] = lambda done, total: None) -> Scan:
    """Everything below ``prefix``, with each key's last use and, if ``read_packs``, what each
    pack needs. Blocks (the CLI runs it; table reads go WORKERS at a time)."""
    items: dict[str, Item] = {}
    internal: list[ObjectInfo] = []
    markers: dict[str, ObjectInfo] = {}
    for page in store.list_pages(prefix, None):
        for info in page.objects:
            used = used_key(info.key)
            if used is not None:
                markers[used] = info
                internal.append(info)
            elif info.key.rpartition("/")[2] == MANIFEST_NAME:
                internal.append(info)
            elif not info.key.endswith("/"):  # a directory marker is no cache
                items[info.key] = Item(info)
        progress(len(items) + len(internal), 0)  # listing: the total is not known yet
    for key, marker in markers.items():
        if key in items:
            items[key].used = marker.mtime
    orphans = sorted(marker_key(k) for k in markers if k not in items)
    if read_packs:
        _inspect_all(store, items, progress)
    return Scan(items, internal, orphans, prefix)


def _inspect_all(store: Store, items: dict[str, Item],
                 progress: Callable[[int, int], None]) -> None:
    def one(item: Item) -> tuple[Item, Inspected | None]:
        try:
            return item, inspect(store, item.info)
        except (NotFound, ObjectChanged):
            return item, None  # deleted or replaced since the listing

    todo = list(items.values())
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        for done, (item, found) in enumerate(pool.map(one, todo), start=1):
            if found is None:
                del items[item.key]
            else:
                item.kind, item.pack, item.error = found.kind, found.pack, found.error
            progress(done, len(todo))


def du(scan: Scan, prefix: str, depth: int) -> list[tuple[str, int, int]]:
    """(group, keys, bytes) summed by the first ``depth`` components below ``prefix``,
    cachefs's own objects included (they are billed too); largest first."""
    groups: dict[str, list[int]] = {}
    for info in [i.info for i in scan.items.values()] + scan.internal:
        if not info.key.startswith(prefix):
            continue
        parts = info.key[len(prefix):].split("/")
        group = prefix if depth == 0 else \
            prefix + "/".join(parts[:depth]) + ("/" if len(parts) > depth else "")
        row = groups.setdefault(group, [0, 0])
        row[0] += 1
        row[1] += info.size
    return sorted(((g, n, b) for g, (n, b) in groups.items()), key=lambda r: (-r[2], r[0]))


@dataclasses.dataclass(frozen=True)
class Rules:
    #: delete keys not used for this many seconds
    older_than: float | None = None
    #: delete least recently used keys until the prefix holds at most this many bytes
    max_size: int | None = None
    #: never delete the N most recently used keys (alone: keep only those)
    keep: int | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.older_than, self.max_size, self.keep))


@dataclasses.dataclass
class Plan:
    #: keys to delete, in the order to delete them (a pack before the packs it needs)
    delete: list[Item]
    #: keys the rules chose but a kept pack needs: key -> that pack
    kept_for: dict[str, str]
    #: markers to delete (of deleted keys, and of keys already gone)
    markers: list[str]
    #: keys in scope, least recently used first
    scope: list[Item]
    max_size: int | None = None
    #: kept packs whose table cannot be read: which packs they need is unknown
    unknown: list[str] = dataclasses.field(default_factory=list)

    @property
    def bytes_before(self) -> int:
        return sum(i.size for i in self.scope)

    @property
    def bytes_freed(self) -> int:
        return sum(i.size for i in self.delete)

    @property
    def goal_met(self) -> bool:
        return self.max_size is None or self.bytes_before - self.bytes_freed <= self.max_size


def lru(items: Iterable[Item]) -> list[Item]:
    """Least recently used first (as actions/cache evicts); ties by key, for a stable plan."""
    return sorted(items, key=lambda i: (i.last_use, i.key))


def plan(scan: Scan, prefix: str, rules: Rules, now: float) -> Plan:
    """What prune deletes below ``prefix`` under ``rules``. ``scan`` covers the whole bucket,
    so a pack outside the prefix that needs one inside keeps it too."""
    scope = lru(i for k, i in scan.items.items() if k.startswith(prefix))
    protected = {i.key for i in scope[max(0, len(scope) - rules.keep):]} if rules.keep \
        else set()
    candidates = [i for i in scope if i.key not in protected]
    chosen: set[str] = set()
    if rules.older_than is not None:
        chosen |= {i.key for i in candidates if i.last_use < now - rules.older_than}
    if rules.older_than is None and rules.max_size is None and rules.keep is not None:
        chosen |= {i.key for i in candidates}
    packs = scan.packs
    every = set(scan.items)
    needed = needed_by(packs, every - chosen)
    if rules.max_size is not None:
        total = sum(i.size for i in scope)
        position = 0
        while True:
            freed = sum(scan.items[k].size for k in chosen if k not in needed)
            if total - freed <= rules.max_size or position >= len(candidates):
                break
            while position < len(candidates) and total - freed > rules.max_size:
                item = candidates[position]
                position += 1
                if item.key not in chosen:
                    chosen.add(item.key)
                    freed += item.size
            needed = needed_by(packs, every - chosen)
    kept_for = {k: needed[k] for k in sorted(chosen) if k in needed}
    delete_keys = chosen - set(kept_for)
    markers = [marker_key(k) for k in sorted(delete_keys) if scan.items[k].used is not None]
    markers += [m for m in scan.orphan_markers if m.startswith(prefix)]
    order = dependents_first(delete_keys, packs)
    unknown = sorted(k for k, i in scan.items.items()
                     if i.kind == PACK and i.pack is None and k not in delete_keys)
    return Plan([scan.items[k] for k in order], kept_for, markers, scope, rules.max_size,
                unknown)


def recheck(store: Store, scan: Scan, plan: Plan) -> list[str]:
    """Just before deleting: packs written since the scan (a runner saving a new version
    meanwhile) that need a key the plan deletes keep that key. Takes such keys out of
    ``plan`` and returns them. One more LIST of what ``scan`` listed, and a table read per
    new pack."""
    doomed = {i.key for i in plan.delete}
    saved: list[str] = []
    for page in store.list_pages(scan.prefix, None):
        for info in page.objects:
            old = scan.items.get(info.key)
            if old is not None and old.info.etag == info.etag:
                continue
            if used_key(info.key) is not None or info.key.rpartition("/")[2] == MANIFEST_NAME:
                continue
            try:
                found = inspect(store, info)
            except (NotFound, ObjectChanged):
                continue
            needs = found.pack.needs if found.pack is not None else []
            for key in needs:
                if key in doomed:
                    doomed.discard(key)
                    plan.kept_for[key] = info.key
                    saved.append(key)
    if saved:
        kept = set(scan.items) - doomed
        again = needed_by(scan.packs, kept | set(saved))
        for key in sorted(doomed & set(again)):
            doomed.discard(key)
            plan.kept_for[key] = again[key]
            saved.append(key)
        plan.delete = [i for i in plan.delete if i.key in doomed]
        plan.markers = [m for m in plan.markers if used_key(m) not in saved]
    return saved


def execute(store: Store, plan: Plan,
            progress: Callable[[int, int], None] = lambda done, total: None) -> int:
    """Delete what ``plan`` says, in its order, then the markers. Returns keys deleted."""
    total = len(plan.delete) + len(plan.markers)
    done = 0
    for item in plan.delete:
        store.delete(item.key)
        done += 1
        progress(done, total)
    for start in range(0, len(plan.markers), 1000):
        batch = plan.markers[start:start + 1000]
        store.delete_many(batch)
        done += len(batch)
        progress(done, total)
    return len(plan.delete)


def verify(store: Store, scan: Scan) -> dict[str, list[str]]:
    """Every pack whose table cannot be read or whose references do not resolve, with why.
    Sources outside the scanned prefix are looked up with a HEAD each."""
    objects = scan.objects
    for pack in scan.packs.values():
        for source in pack.needs:
            if source not in objects:
                try:
                    objects[source] = store.head(source)
                except NotFound:
                    pass
    found = {k: [f"its table of contents cannot be read: {i.error}"]
             for k, i in scan.items.items() if i.kind == PACK and i.error}
    for key, why in broken_references(scan.packs, objects).items():
        found.setdefault(key, []).extend(why)
    return dict(sorted(found.items()))
