"""`--subtree KEY [--restore-key PREFIX…]`: which key a mount shows, as actions/cache picks one.

The exact key first (a pack object, or a prefix with keys below it); then, for each restore-key
prefix in order, the newest key starting with it. Only an exact match is a hit.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from ..errors import CacheFSError, InvalidArgument, NotFound
from ..names import is_internal
from ..store import ObjectInfo, Store

log = logging.getLogger(__name__)


class SubtreeMissing(NotFound):
    """Neither the key nor any restore key exists: a cache miss (exit code 1)."""


@dataclasses.dataclass(frozen=True)
class Subtree:
    key: str  # relative to the store prefix
    exact: bool
    #: the pack object when the key is a pack; None when it is a prefix
    pack: ObjectInfo | None
    #: the key prefix the mount root shows ('KEY' for a pack, 'KEY/' for a prefix)
    prefix: str


def _probe(store: Store, prefix: str, key: str) -> Subtree | None:
    full = prefix + key.strip("/")
    try:
        info = store.head(full)
    except NotFound:
        info = None
    if info is not None and (info.metadata.get("cachefs-pack") or full.endswith(".tar.zst")):
        return Subtree(key.strip("/"), True, info, full)
    page, _ = store.list_page(full + "/", "/")
    if page.objects or page.prefixes:
        return Subtree(key.strip("/"), True, None, full + "/")
    if info is not None:
        raise InvalidArgument(f"{key} is a plain object, not a pack or a prefix")
    return None


def _candidates(store: Store, prefix: str, start: str) -> list[str]:
    """Keys (or prefixes, dated by their newest key) starting with ``start``, newest first."""
    found: dict[str, float] = {}
    for page in store.list_pages(prefix + start, "/"):
        for obj in page.objects:
            if not is_internal(obj.key):
                found[obj.key] = obj.mtime
        for sub in page.prefixes:
            below = store.list_page(sub, None)[0].objects
            if below:
                found[sub.rstrip("/")] = max(o.mtime for o in below)
    return [k[len(prefix):] for k in sorted(found, key=lambda k: (found[k], k), reverse=True)]


def resolve(store: Store, prefix: str, key: str, restore_keys: Sequence[str]) -> Subtree:
    found = _probe(store, prefix, key)
    if found is not None:
        return found
    for start in restore_keys:
        for candidate in _candidates(store, prefix, start):
            try:
                found = _probe(store, prefix, candidate)
            except CacheFSError as e:
                log.info("restore key %s matched %s, which cannot be mounted: %s", start,
                         candidate, e)
                continue
            if found is not None:
                return dataclasses.replace(found, exact=False)
    tried = ", ".join(repr(k) for k in restore_keys)
    raise SubtreeMissing(f"no key {key!r}" + (f" and no key starting with {tried}"
                                              if restore_keys else "") + " in the store")
