"""Running the bucket: `cachefs ls`, `du`, `prune`, `verify-store`, and last-use markers
(docs/BUCKET.md). Pure logic over the in-memory store; the commands against SeaweedFS."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from cachefs.errors import ConfigError
from cachefs.names import is_internal
from cachefs.pack.format import PackBuilder, Toc
from cachefs.pack.refs import dependents_first, needed_by
from cachefs.pack.usage import UseRecorder, marker_key, used_key
from cachefs.remote import bucket
from cachefs.remote.subtree import resolve
from cachefs.store import ObjectInfo, Store

from .conftest import Mounter, cli
from .memstore import MemoryStore
from .servers import SeaweedFS
from .test_store_contract import s3_store

DAY = 86400.0


def put_pack(store: Store, key: str, files: dict[str, bytes],
             bases: tuple[tuple[ObjectInfo, Toc], ...] = ()) -> tuple[ObjectInfo, Toc]:
    """A pack of ``files`` that also holds every file of ``bases``, pointing at their frames
    (version 2 when there are bases), as `cachefs pack --from-mount` makes one."""
    out = bytearray()
    builder = PackBuilder(out.extend)
    for info, toc in bases:
        for e in toc.entries:
            if e.kind == "f" and e.sha256 is not None:
                builder.add_stored_file(e.path, e.mode, e.mtime_ns, e.size, e.sha256,
                                        e.extents, toc, (info.key, info.etag))
    for name, data in files.items():
        builder.add_file(name, 0o644, 0, data)
    toc = builder.finish()
    return store.put(key, bytes(out), {"cachefs-pack": "1"}), toc


def chain(store: Store, prefix: str = "p/") -> list[str]:
    """A base pack and three version 2 packs, each made from the one before."""
    a = put_pack(store, prefix + "0-base", {"a.txt": b"A" * 5000})
    b = put_pack(store, prefix + "1-b", {"b.txt": b"B" * 5000}, (a,))
    c = put_pack(store, prefix + "2-c", {"c.txt": b"C" * 5000}, (b,))
    put_pack(store, prefix + "3-d", {"d.txt": b"D" * 5000}, (c,))
    return [prefix + n for n in ("0-base", "1-b", "2-c", "3-d")]


def set_mtime(store: MemoryStore, key: str, when: float) -> None:
    data, info = store.objects[key]
    store.objects[key] = (data, dataclasses.replace(info, mtime=when))


# -- pure logic -----------------------------------------------------------------------------------


def test_parse_age_and_size() -> None:
    assert bucket.parse_age("7d") == 7 * DAY
    assert bucket.parse_age("12h") == 12 * 3600
    assert bucket.parse_age("2w") == 14 * DAY
    assert bucket.parse_age("30m") == 1800
    assert bucket.parse_age("1.5s") == 1.5
    assert bucket.parse_age("3") == 3 * DAY
    for bad in ("", "7 days", "-1d", "d"):
        with pytest.raises(ConfigError, match="not an age"):
            bucket.parse_age(bad)


def test_reference_graph_of_a_chain() -> None:
    store = MemoryStore()
    base, b, c, d = chain(store)
    scan = bucket.scan(store, "")
    packs = scan.packs
    assert packs[base].version == 1 and packs[base].needs == []
    assert packs[b].needs == [base]
    # frames name the pack that really holds them: no chains
    assert sorted(packs[d].needs) == [base, b, c]
    assert packs[d].frames == 4 and packs[d].outside_frames == 3 and packs[d].files == 4
    assert needed_by(packs, [d]) == {base: d, b: d, c: d}
    assert needed_by(packs, [base]) == {}
    order = dependents_first([base, b, c, d], packs)
    assert order.index(d) < order.index(c) < order.index(b) < order.index(base)


def test_lru_uses_the_marker_else_the_last_write() -> None:
    store = MemoryStore()
    now = time.time()
    for key, written in (("k/old-used", now - 30 * DAY), ("k/new", now - DAY),
                         ("k/old", now - 20 * DAY)):
        store.add(key, b"x")
        set_mtime(store, key, written)
    store.add(marker_key("k/old-used"), b"")
    set_mtime(store, marker_key("k/old-used"), now - 3600)
    store.add(marker_key("k/gone"), b"")
    scan = bucket.scan(store, "k/")
    assert [i.key for i in bucket.lru(scan.items.values())] == ["k/old", "k/new", "k/old-used"]
    assert scan.items["k/old-used"].used == pytest.approx(now - 3600)
    assert scan.orphan_markers == [marker_key("k/gone")]
    plan = bucket.plan(scan, "k/", bucket.Rules(older_than=7 * DAY), now)
    assert [i.key for i in plan.delete] == ["k/old"]
    assert marker_key("k/gone") in plan.markers


def test_prune_keeps_a_base_that_kept_packs_need() -> None:
    store = MemoryStore()
    keys = chain(store)
    now = time.time()
    set_mtime(store, keys[0], now - 30 * DAY)
    scan = bucket.scan(store, "")
    plan = bucket.plan(scan, "p/", bucket.Rules(older_than=7 * DAY), now)
    assert plan.delete == []
    assert plan.kept_for == {keys[0]: plan.kept_for[keys[0]]}
    assert plan.kept_for[keys[0]] in keys[1:]
    # when nothing kept needs them, they all go, dependents first
    for key in keys:
        set_mtime(store, key, now - 30 * DAY)
    plan = bucket.plan(bucket.scan(store, ""), "p/", bucket.Rules(older_than=7 * DAY), now)
    assert [i.key for i in plan.delete] == list(reversed(keys))
    bucket.execute(store, plan)
    assert not store.objects


def test_prune_by_size_and_keep_goes_least_recently_used_first() -> None:
    store = MemoryStore()
    now = time.time()
    for n in range(6):
        store.add(f"c/{n}", b"x" * 100)
        set_mtime(store, f"c/{n}", now - (10 - n) * DAY)
    scan = bucket.scan(store, "")
    plan = bucket.plan(scan, "c/", bucket.Rules(max_size=250), now)
    assert [i.key for i in plan.delete] == ["c/0", "c/1", "c/2", "c/3"]
    assert plan.goal_met and plan.bytes_freed == 400
    plan = bucket.plan(scan, "c/", bucket.Rules(max_size=0, keep=2), now)
    assert sorted(i.key for i in plan.delete) == ["c/0", "c/1", "c/2", "c/3"]
    assert not plan.goal_met
    plan = bucket.plan(scan, "c/", bucket.Rules(keep=5), now)
    assert [i.key for i in plan.delete] == ["c/0"]
    plan = bucket.plan(scan, "c/", bucket.Rules(older_than=7 * DAY, keep=10), now)
    assert plan.delete == []


def test_max_size_takes_more_when_a_chosen_pack_must_stay() -> None:
    store = MemoryStore()
    keys = chain(store, "p/")
    store.add("p/plain", b"z" * 10_000)
    now = time.time()
    for age, key in enumerate(reversed([keys[0], "p/plain", *keys[1:]])):
        set_mtime(store, key, now - age * DAY)  # the base is the least recently used
    scan = bucket.scan(store, "")
    size = scan.items[keys[0]].size
    total = sum(i.size for i in scan.items.values())
    plan = bucket.plan(scan, "p/", bucket.Rules(max_size=total - size, keep=3), now)
    assert keys[0] in plan.kept_for  # chosen first, but the three kept packs need it
    assert [i.key for i in plan.delete] == ["p/plain"] and plan.goal_met
    # when only deleting the chain meets the goal, the whole chain goes, dependents first
    plan = bucket.plan(scan, "p/", bucket.Rules(max_size=0, keep=0), now)
    order = [i.key for i in plan.delete]
    assert len(order) == 5 and [k for k in order if k in keys] == list(reversed(keys))
    assert not plan.kept_for and plan.goal_met


def test_a_pack_outside_the_prefix_keeps_its_source() -> None:
    store = MemoryStore()
    base = put_pack(store, "proj/base", {"a": b"a" * 100})
    put_pack(store, "other/new", {"b": b"b"}, (base,))
    now = time.time()
    set_mtime(store, "proj/base", now - 30 * DAY)
    plan = bucket.plan(bucket.scan(store, ""), "proj/", bucket.Rules(older_than=DAY), now)
    assert plan.delete == [] and plan.kept_for == {"proj/base": "other/new"}


def test_a_pack_written_during_the_prune_keeps_its_sources() -> None:
    store = MemoryStore()
    base = put_pack(store, "p/base", {"a": b"a" * 100})
    b = put_pack(store, "p/b", {"b": b"b" * 100}, (base,))
    now = time.time()
    for key in ("p/base", "p/b"):
        set_mtime(store, key, now - 30 * DAY)
    scan = bucket.scan(store, "")
    plan = bucket.plan(scan, "p/", bucket.Rules(older_than=DAY), now)
    assert [i.key for i in plan.delete] == ["p/b", "p/base"]
    put_pack(store, "p/new", {"c": b"c"}, (b,))  # a runner saves a new version meanwhile
    assert sorted(bucket.recheck(store, scan, plan)) == ["p/b", "p/base"]
    assert plan.delete == [] and plan.kept_for["p/b"] == "p/new"
    bucket.execute(store, plan)
    assert bucket.verify(store, bucket.scan(store, "")) == {}


def test_prune_refuses_while_a_kept_pack_cannot_be_read() -> None:
    store = MemoryStore()
    put_pack(store, "p/base", {"a": b"a" * 100})
    info, _ = put_pack(store, "p/broken", {"b": b"b"})
    data = bytearray(store.objects["p/broken"][0])
    data[-40] ^= 0xFF  # its table's digest no longer matches
    store.objects["p/broken"] = (bytes(data), info)
    now = time.time()
    set_mtime(store, "p/base", now - 30 * DAY)
    scan = bucket.scan(store, "")
    assert scan.items["p/broken"].kind == "pack" and scan.items["p/broken"].error
    plan = bucket.plan(scan, "p/", bucket.Rules(older_than=DAY), now)
    assert plan.unknown == ["p/broken"]
    assert "p/broken" in bucket.verify(store, scan)


def test_verify_names_packs_whose_source_is_gone_or_replaced() -> None:
    store = MemoryStore()
    keys = chain(store)
    assert bucket.verify(store, bucket.scan(store, "")) == {}
    store.add(keys[1], b"not the same pack any more" * 10)
    broken = bucket.verify(store, bucket.scan(store, ""))
    assert set(broken) == {keys[2], keys[3]}
    assert "replaced" in broken[keys[2]][0]
    store.delete(keys[0])
    broken = bucket.verify(store, bucket.scan(store, ""))
    assert set(broken) == {keys[2], keys[3]}  # 1-b is no pack now: it needs nothing
    assert any("gone" in why for why in broken[keys[3]])
    # a source outside the scanned prefix is looked up
    assert set(bucket.verify(store, bucket.scan(store, "p/3"))) == {keys[3]}


def test_du_sums_by_prefix() -> None:
    store = MemoryStore()
    store.add("a/x/1", b"1" * 10)
    store.add("a/x/2", b"2" * 10)
    store.add("a/y", b"3" * 5)
    store.add("b", b"4")
    store.add(marker_key("b"), b"")
    scan = bucket.scan(store, "", read_packs=False)
    assert bucket.du(scan, "", 1) == [("a/", 3, 25), ("b", 1, 1), ("b.cachefs-used", 1, 0)]
    assert bucket.du(scan, "a/", 1) == [("a/x/", 2, 20), ("a/y", 1, 5)]
    assert bucket.du(scan, "", 0) == [("", 5, 26)]


def test_use_marker_once_per_key_per_day(tmp_path: Path) -> None:
    store = MemoryStore()
    now = [1_000_000.0 * DAY]
    recorder = UseRecorder(store, tmp_path, clock=lambda: now[0])
    assert recorder.record("p/pack") and not recorder.record("p/pack")
    assert marker_key("p/pack") in store.objects
    again = UseRecorder(store, tmp_path, clock=lambda: now[0])  # the next mount, same runner
    assert not again.record("p/pack")
    now[0] += DAY
    assert again.record("p/pack")
    assert [r for r in store.requests if r[0] == "put"] == [("put", "p/pack.cachefs-used")] * 2
    store.down = True
    now[0] += DAY
    assert not again.record("p/pack")  # never raises: prune falls back to the last write


def test_markers_are_hidden_and_never_a_restore_key() -> None:
    assert is_internal("a/b.cachefs-used") and is_internal(".cachefs.dir")
    assert not is_internal("a/.cachefs-used") and not is_internal("a/b")
    assert used_key("a/b.cachefs-used") == "a/b" and used_key("a/b") is None
    store = MemoryStore()
    put_pack(store, "p/go-mod/old", {"a": b"a"})
    store.add(marker_key("p/go-mod/old"), b"")
    chosen = resolve(store, "p/", "go-mod/new", ["go-mod/"])
    assert chosen.key == "go-mod/old" and not chosen.exact


# -- the commands, on SeaweedFS -----------------------------------------------------------------


@pytest.mark.s3
def test_ls_du_prune_verify_a_chain_on_seaweed(seaweed: SeaweedFS, bucket: str) -> None:
    store = s3_store(seaweed, bucket)
    store.put("p/old.bin", b"o" * 3000, {})
    time.sleep(1.1)  # written a second before the others: the least recently used
    keys = chain(store)
    url, env = f"s3://{bucket}/p", seaweed.env()

    ls = cli("ls", url, env=env, check=True)
    assert "pack v1   p/0-base  1 files, 1 frames" in ls.stdout
    assert "pack v2   p/3-d  4 files, 4 frames (3 in other packs); needs" in ls.stdout
    assert "object    p/old.bin" in ls.stdout
    doc = {d["key"]: d for d in json.loads(cli("ls", "--json", url, env=env, check=True).stdout)}
    assert sorted(doc["p/3-d"]["needs"]) == keys[:3] and doc["p/3-d"]["version"] == 2
    assert doc["p/0-base"]["last_use"] is None and doc["p/0-base"]["last_write"]

    du = cli("du", f"s3://{bucket}", "--depth", "1", env=env, check=True)
    assert "5 objects  p/" in du.stdout and "total below" in du.stdout

    # the three newest stay (--keep 3); the base is least recently used but they need it
    dry = cli("prune", url, "--max-size", "0", "--keep", "3", env=env)
    assert dry.returncode == 1, dry.stdout + dry.stderr  # everything else must stay
    assert "would delete 1 of 5 keys" in dry.stdout
    assert "delete  p/old.bin" in dry.stdout
    assert "keep    p/0-base: the kept pack p/" in dry.stdout
    assert "dry run, nothing deleted" in dry.stdout and "more than --max-size" in dry.stderr
    assert len(seaweed.client().list_objects_v2(Bucket=bucket)["Contents"]) == 5
    done = cli("prune", url, "--max-size", "0", "--keep", "3", "--yes", env=env)
    assert done.returncode == 1 and "deleted 1 keys" in done.stdout
    left = [o["Key"] for o in seaweed.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(left) == keys
    verify = cli("verify-store", url, env=env)
    assert verify.returncode == 0, verify.stderr
    assert "all 4 packs" in verify.stdout

    # `aws s3 rm` of the base breaks every pack made from it, and verify-store says so
    seaweed.client().delete_object(Bucket=bucket, Key=keys[0])
    verify = cli("verify-store", url, env=env)
    assert verify.returncode == 1
    for key in keys[1:]:
        assert f"broken pack {key}: {keys[0]} is gone" in verify.stderr


@pytest.mark.s3
def test_prune_older_than_deletes_a_whole_unused_chain(seaweed: SeaweedFS, bucket: str) -> None:
    store = s3_store(seaweed, bucket)
    chain(store)
    url, env = f"s3://{bucket}/p", seaweed.env()
    time.sleep(1.5)
    keep = cli("prune", url, "--older-than", "1h", "--yes", env=env, check=True)
    assert "deleting 0 of 4 keys" in keep.stdout
    gone = cli("prune", url, "--older-than", "1s", "--yes", "--json", env=env, check=True)
    doc = json.loads(gone.stdout)
    assert [d["key"] for d in doc["delete"]] == ["p/3-d", "p/2-c", "p/1-b", "p/0-base"]
    assert "Contents" not in seaweed.client().list_objects_v2(Bucket=bucket)
    assert cli("ls", url, env=env).returncode == 1


@pytest.mark.s3
def test_bucket_commands_fail_in_one_line(seaweed: SeaweedFS) -> None:
    env = seaweed.env()
    for args in (["ls", "not-a-url"], ["du", "s3://no-such-bucket-here"],
                 ["prune", "s3://b/p"], ["prune", "s3://b", "--older-than", "soon"],
                 ["verify-store", "file:///no/such/dir"]):
        result = cli(*args, env=env)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stderr.startswith("cachefs: ") and len(result.stderr.splitlines()) == 1
        assert "Traceback" not in result.stderr


@pytest.mark.s3
def test_mounting_a_pack_records_its_last_use_once_a_day(seaweed: SeaweedFS, bucket: str,
                                                         mounter: Mounter) -> None:
    store = s3_store(seaweed, bucket)
    chain(store)
    client = seaweed.client()
    cache = mounter.tmp_path / "cache"
    m = mounter("--subtree", "p/3-d", server=seaweed, bucket=bucket, cache_dir=cache)
    assert (m.path / "a.txt").read_bytes() == b"A" * 5000
    m.umount()
    first = client.head_object(Bucket=bucket, Key="p/3-d.cachefs-used")["LastModified"]
    ls = json.loads(cli("ls", "--json", f"s3://{bucket}/p", env=seaweed.env(),
                        check=True).stdout)
    assert [d["key"] for d in ls] == ["p/0-base", "p/1-b", "p/2-c", "p/3-d"]  # marker folded
    assert next(d for d in ls if d["key"] == "p/3-d")["last_use"] is not None
    time.sleep(1.1)
    m2 = mounter("--subtree", "p/3-d", server=seaweed, bucket=bucket, cache_dir=cache)
    assert (m2.path / "d.txt").read_bytes() == b"D" * 5000
    m2.umount()
    again = client.head_object(Bucket=bucket, Key="p/3-d.cachefs-used")["LastModified"]
    assert again == first  # the same runner, the same day: no second write
    # a bucket mount never shows the marker
    m3 = mounter(server=seaweed, bucket=bucket, cache_dir=mounter.tmp_path / "cache3")
    assert sorted(p.name for p in (m3.path / "p").iterdir()) == ["0-base", "1-b", "2-c", "3-d"]
