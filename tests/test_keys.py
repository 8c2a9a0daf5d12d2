"""Every closed file lands at exactly its key, even where the store still lists old names.

SeaweedFS keeps directory entries after their objects are deleted (and S3 keeps `dir/` markers
of an earlier run), so a prefix used before lists directories while the mount makes them again.
Listings that run meanwhile must never detach or replace what the mount is writing.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .conftest import Mounter, new_bucket
from .servers import SeaweedFS

pytestmark = [pytest.mark.fuse, pytest.mark.s3]


def stored(server: SeaweedFS, bucket: str, prefix: str) -> dict[str, bytes]:
    """Every file object under ``prefix`` (relative key -> bytes), without markers/manifests."""
    client = server.client()
    out: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", ()):
            key = obj["Key"]
            if key.endswith("/") or key.rsplit("/", 1)[-1] == ".cachefs.dir":
                continue
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            out[key[len(prefix):]] = body
    return out


def used_before(server: SeaweedFS, bucket: str, prefix: str, names: list[str]) -> None:
    """Make ``names`` exist under ``prefix`` and delete them again: directories stay listed."""
    client = server.client()
    for name in names:
        client.put_object(Bucket=bucket, Key=prefix + name, Body=b"old")
    for name in names:
        client.delete_object(Bucket=bucket, Key=prefix + name)


def payload(i: int) -> bytes:
    return bytes((i * 7 + j) % 251 for j in range(1000 + 37 * i))


def test_issue_scenario_every_key_exact(seaweed: SeaweedFS, mounter: Mounter) -> None:
    bucket = new_bucket(seaweed)
    names = [f"w/d{i % 5}/f{i}.bin" for i in range(100)] + ["w/large.bin", "w/link"]
    used_before(seaweed, bucket, "p/", names)
    m = mounter("--store", f"s3://{bucket}/p", server=seaweed)
    w = m.path / "w"
    expected: dict[str, bytes] = {}
    for i in range(100):
        (w / f"d{i % 5}").mkdir(parents=True, exist_ok=True)
        (w / f"d{i % 5}/f{i}.bin").write_bytes(payload(i))
        expected[f"w/d{i % 5}/f{i}.bin"] = payload(i)
    large = os.urandom(20 << 20)
    (w / "large.bin").write_bytes(large)
    expected["w/large.bin"] = large
    os.symlink("d0/f0.bin", w / "link")
    os.chmod(w / "d1/f1.bin", 0o755)
    os.rename(w / "d4", w / "d4renamed")
    for key in [k for k in expected if k.startswith("w/d4/")]:
        expected["w/d4renamed/" + key[len("w/d4/"):]] = expected.pop(key)
    m.umount()
    got = stored(seaweed, bucket, "p/")
    got.pop("w/link", None)  # a symlink is an object with its target in metadata
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    assert not missing and not unexpected, f"missing {missing[:5]}, unexpected {unexpected[:5]}"
    for key, data in expected.items():
        assert got[key] == data, key
    fresh = mounter("--store", f"s3://{bucket}/p", server=seaweed)
    for key, data in expected.items():
        assert (fresh.path / key).read_bytes() == data, key
    assert os.readlink(fresh.path / "w/link") == "d0/f0.bin"
    assert os.stat(fresh.path / "w/d1/f1.bin").st_mode & 0o777 == 0o755


def _lister(root: Path, stop: threading.Event, errors: list[str]) -> None:
    while not stop.is_set():
        result = subprocess.run(["ls", "-R", str(root)], capture_output=True, text=True,
                                timeout=120)
        # A name vanishing mid-walk (a rename) is fine; anything else is not.
        for line in result.stderr.splitlines():
            if "No such file or directory" not in line:
                errors.append(line)


def _writer(root: Path, wid: int, rounds: int, expected: dict[str, bytes],
            lock: threading.Lock, seed: int, errors: list[str]) -> None:
    try:
        _write_rounds(root, wid, rounds, expected, lock, seed)
    except OSError as e:
        errors.append(f"writer {wid}: {e}")


def _write_rounds(root: Path, wid: int, rounds: int, expected: dict[str, bytes],
                  lock: threading.Lock, seed: int) -> None:
    rng = random.Random(seed + wid)
    for r in range(rounds):
        top = f"t{wid}"
        rel = f"{top}/r{r % 3}/s{rng.randrange(3)}"
        (root / rel).mkdir(parents=True, exist_ok=True)
        for j in range(4):
            name = f"{rel}/f{r}-{j}.bin"
            data = os.urandom(rng.randrange(1, 40_000))
            (root / name).write_bytes(data)
            with lock:
                expected[name] = data
        if r % 4 == 3:  # move a whole directory of this writer's, then on with the same names
            src, dst = f"{top}/r{r % 3}", f"{top}/moved{r}"
            os.rename(root / src, root / dst)
            with lock:
                for key in [k for k in expected if k.startswith(src + "/")]:
                    expected[dst + key[len(src):]] = expected.pop(key)


def test_stress_writers_listings_renames_over_used_prefix(seaweed: SeaweedFS,
                                                          mounter: Mounter) -> None:
    bucket = new_bucket(seaweed)
    writers, rounds = 4, 12
    old = [f"t{w}/r{r}/s{s}/f{i}-{j}.bin" for w in range(writers) for r in range(3)
           for s in range(3) for i in range(rounds) for j in range(4) if i % 3 == r][::3]
    old += [f"t{w}/moved{r}/x.bin" for w in range(writers) for r in range(3, rounds, 4)]
    used_before(seaweed, bucket, "p/", old)
    m = mounter("--store", f"s3://{bucket}/p", "--metadata-ttl", "0", "--timeout", "60",
                server=seaweed)
    expected: dict[str, bytes] = {}
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[str] = []
    listers = [threading.Thread(target=_lister, args=(m.path, stop, errors)) for _ in range(2)]
    threads = [threading.Thread(target=_writer,
                                args=(m.path, w, rounds, expected, lock, 11, errors))
               for w in range(writers)]
    started = time.monotonic()
    for t in listers + threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    stop.set()
    for t in listers:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "writers hung"
    assert time.monotonic() - started < 600
    assert not errors, errors[:5]
    m.umount()
    got = stored(seaweed, bucket, "p/")
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    assert not missing and not unexpected, f"missing {missing[:5]}, unexpected {unexpected[:5]}"
    for key, data in expected.items():
        assert got[key] == data, key
    fresh = mounter("--store", f"s3://{bucket}/p", server=seaweed)
    for key, data in expected.items():
        assert (fresh.path / key).read_bytes() == data, key
