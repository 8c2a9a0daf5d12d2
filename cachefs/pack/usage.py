"""When a pack was last used: ``KEY.cachefs-used`` markers (docs/BUCKET.md, "Last use").

S3 keeps no access time, and `prune` must not delete the cache every build restores just because
it was written long ago. So a runner that mounts or reads a pack (or a .tar.zst archive) writes
an empty marker object next to it; the marker's last-modified time is the key's last use. A
runner writes a marker at most once per key per UTC day: the days it already wrote are kept in
its cache dir (``used.json``), so a read never costs a request and a mount costs at most one PUT
a day per key. Why markers rather than object tags: one LIST shows a key and its marker
together (tags need a request per key to read), they work on every S3-compatible store and on
file:// stores, and writing one needs no permission beyond writing the key itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import CacheFSError
from ..names import USE_SUFFIX
from ..store import Store

log = logging.getLogger(__name__)

#: one marker write per key per this many seconds per runner: "used today" is what prune needs
#: (its ages are in days), and a busy runner mounts the same cache many times a day
PERIOD = 86400
STATE = "used.json"
#: days of state kept: older entries can no longer suppress a write
KEEP_DAYS = 3


def marker_key(key: str) -> str:
    return key + USE_SUFFIX


def used_key(marker: str) -> str | None:
    """The key a marker is for, or None if ``marker`` is not a marker."""
    if marker.endswith(USE_SUFFIX) and not marker.endswith("/" + USE_SUFFIX) and \
            marker != USE_SUFFIX:
        return marker[: -len(USE_SUFFIX)]
    return None


class UseRecorder:
    """Writes last-use markers for one runner (one cache dir)."""

    def __init__(self, store: Store, cache_dir: Path,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.path = cache_dir / STATE
        self.clock = clock
        self.days: dict[str, int] = {}
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            self.days = {str(k): int(v) for k, v in json.loads(self.path.read_text()).items()}

    def today(self) -> int:
        return int(self.clock() // PERIOD)

    def due(self, key: str) -> bool:
        """Whether ``key`` has no marker from this runner today (no I/O)."""
        return self.days.get(key) != self.today()

    def claim(self, key: str) -> bool:
        """Take today's marker write for ``key`` if it is due (no I/O; on the trio thread, so
        two reads at once write one marker)."""
        if not self.due(key):
            return False
        self.days[key] = self.today()
        self.days = {k: d for k, d in self.days.items() if d > self.today() - KEEP_DAYS}
        return True

    def write(self, key: str, days: dict[str, int]) -> bool:
        """Write the marker of ``key`` and save ``days`` (a copy of the claims). Blocks (worker
        thread); never raises: a marker that cannot be written costs only prune's accuracy,
        and it is not tried again before tomorrow."""
        try:
            self.store.put(marker_key(key), b"", {})
        except CacheFSError as e:
            log.info("last use of %s not recorded: %s", key, e)
            return False
        temp = self.path.with_name(f".{STATE}.{os.getpid()}")
        try:
            temp.write_text(json.dumps(days))
            os.replace(temp, self.path)
        except OSError as e:
            log.info("cannot save %s (%s): markers may be written again today", self.path,
                     e.strerror)
        return True

    def record(self, key: str) -> bool:
        """claim and write, for callers without an event loop."""
        return self.claim(key) and self.write(key, dict(self.days))
