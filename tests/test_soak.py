"""The soak: many processes reading and writing many keys while the network misbehaves.

Every object's content says which key and version it is and is derived from them, so any read
can be checked on its own: it must be a version of that key, or a prefix of one (a reader on the
same mount as a writer that is rewriting the file sees the file's current size, as on any local
filesystem). Writers own disjoint keys and record each version whose close() succeeded; at the
end every key must hold exactly its last recorded version. Length and size: SOAK_SECONDS
(default 40) and SOAK_KEYS (default 2000); the full form is 120 s over 10,000 keys.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import Mounter, cli
from .faultproxy import Fault, FaultProxy
from .servers import SeaweedFS

pytestmark = [pytest.mark.soak, pytest.mark.faults, pytest.mark.fuse, pytest.mark.s3,
              pytest.mark.slow]

WORKERS = 16


def content(key: str, version: int) -> bytes:
    rng = random.Random(f"{key}:{version}")
    return f"{key}|{version}|".encode() + rng.randbytes(rng.randint(100, 48_000))


WORKER = r'''
import errno, json, os, random, sys, time
sys.path.insert(0, sys.argv[1])
from tests.test_soak import content
mount, index, deadline, keys = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
workers = int(sys.argv[6])
rng = random.Random(index)
mine = [k for k in range(keys) if k % workers == index]
versions = {}
stats = {"reads": 0, "writes": 0, "errors": {}, "wrong": 0}
while time.time() < deadline:
    number = rng.randrange(keys)
    key = f"k/{number // 100:03d}/{number:05d}"
    path = os.path.join(mount, key)
    try:
        if number in mine and rng.random() < 0.3:
            version = versions.get(number, 0) + 1
            with open(path, "wb") as f:
                f.write(content(key, version))
            versions[number] = version
            stats["writes"] += 1
        else:
            data = open(path, "rb").read()
            parts = data.split(b"|", 2)
            if len(parts) == 3 and parts[1].isdigit():
                whole = content(key, int(parts[1]))
                ok = parts[0] == key.encode() and whole.startswith(data)
                stats["short"] = stats.get("short", 0) + (len(data) < len(whole))
            else:  # shorter than the header: only while the file is being rewritten
                ok = f"{key}|".encode().startswith(data) or data.startswith(f"{key}|".encode())
                stats["short"] = stats.get("short", 0) + 1
            if not ok:
                stats["wrong"] += 1
                stats.setdefault("wrong_samples", []).append([key, len(data), data[:40].hex()])
            stats["reads"] += 1
    except OSError as e:
        name = errno.errorcode.get(e.errno, str(e.errno))
        stats["errors"][name] = stats["errors"].get(name, 0) + 1
print(json.dumps({"stats": stats, "versions": versions}))
'''


def test_soak(seaweed: SeaweedFS, bucket: str, mounter: Mounter, tmp_path: Path) -> None:
    seconds = float(os.environ.get("SOAK_SECONDS", "40"))
    keys = int(os.environ.get("SOAK_KEYS", "2000"))
    client = seaweed.client()

    def put(number: int) -> None:
        key = f"k/{number // 100:03d}/{number:05d}"
        client.put_object(Bucket=bucket, Key=key, Body=content(key, 0))

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        list(pool.map(put, range(keys)))
    with FaultProxy(seaweed.endpoint) as proxy:
        faults = [proxy.add(f) for f in (
            Fault(status=503, code="SlowDown", probability=0.02, seed=1),
            Fault(method="GET", drop_after=5_000, probability=0.01, seed=2),
            Fault(method="GET", corrupt_at=50, probability=0.01, seed=3),
            Fault(method="PUT", status=500, probability=0.02, seed=4),
            Fault(delay=0.2, probability=0.01, seed=5))]
        m = mounter("--timeout", "5", "--metadata-ttl", "5", server=seaweed, bucket=bucket,
                    env={"CACHEFS_ENDPOINT": proxy.url})
        root = str(Path(__file__).resolve().parent.parent)
        deadline = time.time() + seconds
        started = time.monotonic()
        procs = [subprocess.Popen([sys.executable, "-c", WORKER, root, str(m.path), str(i),
                                   str(deadline), str(keys), str(WORKERS)],
                                  stdout=subprocess.PIPE, text=True) for i in range(WORKERS)]
        results = [json.loads(p.communicate(timeout=seconds + 300)[0]) for p in procs]
        elapsed = time.monotonic() - started
        injected = sum(f.applied for f in faults)
        proxy.clear()
        assert cli("sync", str(m.path), env=m.env).returncode == 0
    reads = sum(r["stats"]["reads"] for r in results)
    writes = sum(r["stats"]["writes"] for r in results)
    wrong = sum(r["stats"]["wrong"] for r in results)
    short = sum(r["stats"].get("short", 0) for r in results)
    errors: collections.Counter[str] = collections.Counter()
    for r in results:
        errors.update(r["stats"]["errors"])
    expected = {n: 0 for n in range(keys)}
    for r in results:
        expected.update({int(k): v for k, v in r["versions"].items()})

    def check(number: int) -> bool:
        key = f"k/{number // 100:03d}/{number:05d}"
        stored = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return stored == content(key, expected[number])

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        verified = sum(pool.map(check, range(keys)))
    print(f"soak: {elapsed:.0f}s, {WORKERS} processes, {keys} keys: {reads} reads, {writes} "
          f"writes ({(reads + writes) / elapsed:.0f} ops/s), {injected} faults injected, "
          f"errors {dict(errors)}, short reads during rewrites {short}, wrong bytes {wrong}, "
          f"{verified}/{keys} keys verified")
    assert wrong == 0, [r["stats"].get("wrong_samples") for r in results]
    assert verified == keys
    assert set(errors) <= {"EIO", "ESTALE"}
