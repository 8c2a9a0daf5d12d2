"""Counters the daemon keeps for `cachefs stats`: plain numbers, changed on the trio thread only."""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any


@dataclasses.dataclass
class Progress:
    """One transfer in flight, shown by `cachefs stats`."""

    what: str
    key: str
    total: int
    done: int = 0
    started: float = dataclasses.field(default_factory=time.time)
    id: int = 0


class Stats:
    def __init__(self) -> None:
        self.started = time.time()
        self.counters: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.in_flight: dict[int, Progress] = {}
        self.recent_misses: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)
        self.per_key: dict[str, collections.Counter[str]] = {}
        self._next_id = 0

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def error(self, kind: str) -> None:
        self.errors[kind] += 1

    def key_event(self, key: str, event: str) -> None:
        """Per-key hit/miss accounting (bounded: oldest keys dropped past 10,000)."""
        counter = self.per_key.pop(key, None)
        if counter is None:
            if len(self.per_key) >= 10_000:
                self.per_key.pop(next(iter(self.per_key)))
            counter = collections.Counter()
        self.per_key[key] = counter  # re-inserted: most recently active last
        counter[event] += 1

    def key_report(self, limit: int) -> list[dict[str, Any]]:
        """Per-key hits and misses, most recently active last (bounded for the xattr channel)."""
        items = list(self.per_key.items())[-limit:]
        return [{"key": k, **dict(c)} for k, c in items]

    def miss(self, key: str, url: str, fetched: bool) -> None:
        self.recent_misses.append({"key": key, "url": url, "fetched": fetched,
                                   "time": time.time()})

    def begin(self, what: str, key: str, total: int) -> Progress:
        self._next_id += 1
        progress = Progress(what, key, total, id=self._next_id)
        self.in_flight[self._next_id] = progress
        return progress

    def end(self, progress: Progress) -> None:
        self.in_flight.pop(progress.id, None)

    def snapshot(self) -> dict[str, Any]:
        return {
            "uptime": round(time.time() - self.started, 1),
            "counters": dict(sorted(self.counters.items())),
            "errors": dict(sorted(self.errors.items())),
            "in_flight": [
                {"what": p.what, "key": p.key, "total": p.total, "done": p.done}
                for p in self.in_flight.values()
            ],
            "recent_misses": list(self.recent_misses),
        }
