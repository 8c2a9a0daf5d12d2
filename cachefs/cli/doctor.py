"""`cachefs doctor`: the smoke test of a store, step by step, with the reason for any failure."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from ..config import Config
from ..errors import CacheFSError
from ..store import open_store


def _step(name: str, fn: Callable[[], Any]) -> tuple[bool, Any]:
    started = time.monotonic()
    try:
        result = fn()
    except CacheFSError as e:
        print(f"  FAIL  {name}: {e}")
        return False, None
    print(f"  ok    {name} ({(time.monotonic() - started) * 1000:.0f} ms)")
    return True, result


def run_doctor(config: Config) -> int:
    store, prefix = open_store(config)
    print(f"store      {config.store}")
    if config.endpoint:
        print(f"endpoint   {config.endpoint}")
    print(f"region     {config.region}")
    report = getattr(store, "credential_report", None)
    if report is not None:
        for what, source, length in report():
            print(f"{what:<14} from {source}, {length} characters")
    store.ensure()
    canary = f"{prefix}.cachefs-doctor-{uuid.uuid4().hex[:12]}"
    payload = os.urandom(1)
    print("checks")
    ok, _ = _step("store reachable", store.check)
    if not ok:
        return 2
    ok, _ = _step(f"write canary {canary}", lambda: store.put(canary, payload, {}))
    if not ok:
        return 2
    ok, got = _step("read it back", lambda: store.read_all(canary)[1])
    if ok and got != payload:
        print("  FAIL  read it back: the bytes differ from what was written")
        ok = False
    deleted, _ = _step("delete it", lambda: store.delete(canary))
    listed, _ = _step(f"list {prefix or '/'}", lambda: next(iter(store.list_pages(prefix)), None))
    if ok and deleted and listed:
        print("the store works")
        return 0
    return 2
