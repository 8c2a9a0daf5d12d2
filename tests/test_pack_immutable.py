"""Packs are immutable keys: a save to a key that exists is refused (atomically where the store
has conditional writes), unless `cachefs pack --force`; of two runners racing, one wins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cachefs.pack import save
from cachefs.store.local import LocalStore

from .conftest import ROOT, Mounter, cli
from .faultproxy import Fault, FaultProxy
from .servers import SeaweedFS
from .test_pack import same_tree


def tree(root: Path, seed: bytes, big: int = 0) -> Path:
    (root / "d").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"a from " + seed)
    (root / "d/b.txt").write_bytes(seed * 100)
    if big:
        (root / "big.bin").write_bytes(os.urandom(big))
    return root


def test_pack_to_an_existing_key_is_refused_unless_force(seaweed: SeaweedFS, bucket: str,
                                                         tmp_path: Path) -> None:
    first, second = tree(tmp_path / "one", b"1"), tree(tmp_path / "two", b"2")
    s3 = seaweed.client()
    assert cli("pack", str(first), f"s3://{bucket}/p/k", env=seaweed.env()).returncode == 0
    etag = s3.head_object(Bucket=bucket, Key="p/k")["ETag"]
    again = cli("pack", str(second), f"s3://{bucket}/p/k", env=seaweed.env())
    assert again.returncode == 1, again.stderr
    assert again.stderr.count("\n") == 1 and "p/k already exists" in again.stderr
    assert "--force" in again.stderr
    assert s3.head_object(Bucket=bucket, Key="p/k")["ETag"] == etag
    forced = cli("pack", "--force", str(second), f"s3://{bucket}/p/k", env=seaweed.env())
    assert forced.returncode == 0, forced.stderr
    assert s3.head_object(Bucket=bucket, Key="p/k")["ETag"] != etag


class LateRival(LocalStore):
    """Another runner stores the key just after our up-front check passed: only the write
    that creates the object can catch it."""

    def refuse_existing(self, key: str) -> None:
        super().refuse_existing(key)
        self.put(key, b"the rival's pack", {"cachefs-pack": "1"})


@pytest.mark.parametrize("big", [0, 17 << 20], ids=["put", "multipart"])
def test_the_creating_write_refuses_a_key_stored_meanwhile(tmp_path: Path, big: int) -> None:
    store = LateRival(tmp_path / "store")
    store.ensure()
    with pytest.raises(save.SavedMeanwhile):
        save.pack_directory(tree(tmp_path / "t", b"x", big), store, "p/k", 3)
    assert store.read_all("p/k")[1] == b"the rival's pack"
    assert not list(store.uploads.iterdir())  # the upload was aborted
    assert not list(store.tmp.iterdir())


@pytest.mark.fuse
@pytest.mark.s3
def test_two_runners_racing_to_save_one_key(seaweed: SeaweedFS, bucket: str, mounter: Mounter,
                                            tmp_path: Path) -> None:
    """Two `cachefs pack` processes at once, both past the up-front check: one exits 0, the
    other 1, and the object is the winner's pack, whole. The second starts once the first is
    uploading (so past its check), and the first one's CompleteMultipartUpload is held back
    (a proxy) until the second has certainly finished: the store's conditional write decides."""
    trees = [tree(tmp_path / f"t{i}", str(i).encode(), big=24 << 20) for i in range(2)]
    with FaultProxy(seaweed.endpoint) as proxy:
        proxy.add(Fault(method="POST", path=r"/race/k\?uploadId=", delay=15))
        envs = [{**os.environ, **seaweed.env(), "CACHEFS_ENDPOINT": proxy.url},
                {**os.environ, **seaweed.env()}]

        def start(i: int) -> subprocess.Popen[str]:
            return subprocess.Popen([sys.executable, "-m", "cachefs", "pack", "--json",
                                     "--timeout", "120",  # longer than the held-back answer
                                     str(trees[i]), f"s3://{bucket}/race/k"], env=envs[i],
                                    cwd=ROOT, text=True, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)

        procs = [start(0)]
        deadline = time.monotonic() + 60
        while not any("/race/k?uploads" in r.path for r in proxy.requests):
            assert time.monotonic() < deadline and procs[0].poll() is None, "no upload began"
            time.sleep(0.05)
        procs.append(start(1))
        results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert [code for code, _, _ in results] == [1, 0], results
    winner = 1
    loser_err = results[0][2]
    assert loser_err.count("\n") == 1 and "race/k already exists" in loser_err, loser_err
    assert "while this one was packing" in loser_err, loser_err
    s3 = seaweed.client()
    etag = json.loads(results[winner][1])["etag"]
    assert s3.head_object(Bucket=bucket, Key="race/k")["ETag"] == etag
    uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix="race/").get("Uploads", [])
    assert uploads == []
    m = mounter("--subtree", "race/k", server=seaweed, bucket=bucket)
    same_tree(trees[winner], m.path)


@pytest.mark.fuse
@pytest.mark.s3
def test_sealed_pack_dirs_of_two_runners_one_wins(seaweed: SeaweedFS, bucket: str,
                                                  mounter: Mounter, tmp_path: Path) -> None:
    """Two machines write ``packs/k.pack`` at once; the first sealed is stored, the second is
    refused by the store (not replaced), shown by `cachefs status`, and its files stay
    readable on that mount."""
    trees = [tree(tmp_path / f"t{i}", str(i).encode()) for i in range(2)]
    mounts = [mounter("--pack-idle", "3600", server=seaweed, bucket=bucket) for _ in range(2)]
    for m, t in zip(mounts, trees, strict=True):
        (m.path / "packs").mkdir(exist_ok=True)
        subprocess.run(["cp", "-a", f"{t}/.", str(m.path / "packs/k.pack")], check=True)
    first = cli("sync", str(mounts[0].path), env=seaweed.env())
    assert first.returncode == 0, first.stderr + mounts[0].log()
    etag = seaweed.client().head_object(Bucket=bucket, Key="packs/k.pack")["ETag"]
    second = cli("sync", str(mounts[1].path), env=seaweed.env())
    status = cli("status", str(mounts[1].path), env=seaweed.env())
    assert "refused put packs/k.pack" in status.stdout, (second, status, mounts[1].log())
    assert "already exists" in status.stdout
    assert seaweed.client().head_object(Bucket=bucket, Key="packs/k.pack")["ETag"] == etag
    same_tree(trees[1], mounts[1].path / "packs/k.pack")
    fresh = mounter(server=seaweed, bucket=bucket)
    same_tree(trees[0], fresh.path / "packs/k.pack")
