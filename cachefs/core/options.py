"""The core's options and the limiters its blocking work runs under (one per resource)."""

from __future__ import annotations

import dataclasses

import trio

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
