"""One contract, four stores: the in-memory fake, the local dir store, SeaweedFS and moto.

The fake is only trusted because it passes the same tests as the real servers.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachefs.config import Credentials
from cachefs.errors import (
    AccessDenied,
    BucketNotFound,
    Exists,
    InvalidArgument,
    NameTooLong,
    NotFound,
    ObjectChanged,
)
from cachefs.store import Store
from cachefs.store.local import LocalStore
from cachefs.store.plain import PlainDirStore
from cachefs.store.s3 import S3Store

from .conftest import new_bucket
from .memstore import MemoryStore
from .servers import KEY_ID, SECRET, S3Server


def s3_store(server: S3Server, bucket: str, secret: str = SECRET) -> S3Store:
    return S3Store(bucket, server.endpoint, "us-east-1", Credentials(KEY_ID, secret, "t", "t"),
                   connections=8, timeout=10)


@pytest.fixture(params=["memory", "local", "plain", "seaweed", "moto"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    kind = request.param
    if kind == "memory":
        yield MemoryStore()
    elif kind == "plain":
        p = PlainDirStore(tmp_path / "store")
        p.ensure()
        yield p
    elif kind == "local":
        s = LocalStore(tmp_path / "store")
        s.ensure()
        yield s
    else:
        server = request.getfixturevalue(kind)
        yield s3_store(server, new_bucket(server))


def test_put_head_read_with_metadata(store: Store) -> None:
    info = store.put("a/b.txt", b"hello", {"mode": "33188", "cachefs-sha256": "x" * 64})
    assert info.etag.strip('"') == hashlib.md5(b"hello").hexdigest()
    head = store.head("a/b.txt")
    assert head.size == 5 and head.etag == info.etag
    assert head.metadata["mode"] == "33188"
    got_info, data = store.read_all("a/b.txt")
    assert data == b"hello" and got_info.metadata["cachefs-sha256"] == "x" * 64


def test_ranged_read_reports_whole_size(store: Store) -> None:
    payload = os.urandom(100_000)
    etag = store.put("r", payload, {}).etag
    with store.open_read("r", 1000, 5000, etag=etag) as stream:
        assert stream.info.size == 100_000
        data = b""
        while chunk := stream.read(1024):
            data += chunk
    assert data == payload[1000:6000]


def test_stale_etag_is_refused(store: Store) -> None:
    store.put("k", b"one", {})
    with pytest.raises(ObjectChanged):
        store.open_read("k", 0, 2, etag='"0123456789abcdef0123456789abcdef"').read(2)


def test_missing_key(store: Store) -> None:
    with pytest.raises(NotFound):
        store.head("nope")
    with pytest.raises(NotFound):
        store.open_read("nope")
    store.delete("nope")  # deleting what is not there is fine


def test_empty_object(store: Store) -> None:
    store.put("empty", b"", {})
    info, data = store.read_all("empty")
    assert info.size == 0 and data == b""


def test_listing_with_delimiter(store: Store) -> None:
    for key in ("p/a.txt", "p/sub/x", "p/sub/y", "p/marker/", "p/héllo wörld.txt",
                "p/both", "p/both/child", "other"):
        if isinstance(store, PlainDirStore) and key == "p/both/child":
            with pytest.raises(InvalidArgument, match="cannot hold both a and a/b"):
                store.put(key, b"1", {})
            store.put("p/both-dir/child", b"1", {})  # what the listing below expects of it
            continue
        store.put(key, b"1", {})
    if isinstance(store, PlainDirStore):
        assert sorted(o.key for o in store.list_all("p/", "/").objects) == sorted(
            ["p/a.txt", "p/both", "p/héllo wörld.txt"])
        assert sorted(store.list_all("p/", "/").prefixes) == ["p/both-dir/", "p/marker/",
                                                             "p/sub/"]
        return
    page = store.list_all("p/", "/")
    keys = sorted(o.key for o in page.objects)
    assert keys == sorted(["p/a.txt", "p/both", "p/héllo wörld.txt"])
    assert sorted(page.prefixes) == ["p/both/", "p/marker/", "p/sub/"]
    flat = store.list_all("p/", None)
    assert sorted(o.key for o in flat.objects) == sorted(
        ["p/a.txt", "p/sub/x", "p/sub/y", "p/marker/", "p/héllo wörld.txt", "p/both",
         "p/both/child"])
    partial = store.list_all("p/s", "/")
    assert partial.prefixes == ["p/sub/"] and partial.objects == []


def test_listing_pages(store: Store) -> None:
    keys = [f"many/{i:05d}" for i in range(1050)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put(k, b"", {}), keys))
    pages = list(store.list_pages("many/", "/"))
    assert sum(len(p.objects) for p in pages) == 1050
    assert [o.key for p in pages for o in p.objects] == keys


def test_multipart(store: Store) -> None:
    part1, part2 = os.urandom(5 << 20), b"tail"
    upload = store.create_multipart("big", {"mode": "33261"})
    e1 = store.upload_part("big", upload, 1, part1)
    e2 = store.upload_part("big", upload, 2, part2)
    info = store.complete_multipart("big", upload, [(1, e1), (2, e2)], len(part1) + 4)
    assert info.etag.strip('"').endswith("-2")
    head = store.head("big")
    assert head.size == len(part1) + 4 and head.metadata["mode"] == "33261"
    assert store.read_all("big")[1] == part1 + part2


def test_put_new_never_replaces(store: Store) -> None:
    store.put_new("p/immutable", b"first", {"a": "1"})
    with pytest.raises(Exists, match="already exists"):
        store.put_new("p/immutable", b"second", {})
    upload = store.create_multipart("p/immutable", {})
    etag = store.upload_part("p/immutable", upload, 1, b"third")
    with pytest.raises(Exists):
        store.complete_multipart_new("p/immutable", upload, [(1, etag)], 5)
    store.abort_multipart("p/immutable", upload)
    info, body = store.read_all("p/immutable")
    assert body == b"first" and info.metadata == {"a": "1"}
    upload = store.create_multipart("p/fresh", {})
    etag = store.upload_part("p/fresh", upload, 1, b"new")
    store.complete_multipart_new("p/fresh", upload, [(1, etag)], 3)
    assert store.read_all("p/fresh")[1] == b"new"
    assert [o.key for o in store.list_all("p/").objects] == ["p/fresh", "p/immutable"]


#: which stores honour If-None-Match: * on PutObject and CompleteMultipartUpload, as the probe
#: finds out (docs/SEMANTICS.md says the same); the local store links, which never replaces
HONOURS_IF_NONE_MATCH = {"memory": False, "local": True, "plain": True, "seaweed": True,
                         "moto": True}


def test_conditional_writes_probe(store: Store, request: pytest.FixtureRequest) -> None:
    kind = request.node.callspec.params["store"]
    assert store.conditional_writes("p/key") is HONOURS_IF_NONE_MATCH[kind]
    # the probe leaves nothing behind (SeaweedFS may keep a "p/" folder object)
    assert [o.key for o in store.list_all("p/", None).objects if "probe" in o.key] == []


def test_racing_new_writes_one_wins(store: Store) -> None:
    if not store.conditional_writes("race/k"):
        pytest.skip("no conditional writes: the HEAD check can be raced")
    bodies = [os.urandom(1000) for _ in range(8)]

    def save(body: bytes) -> bool:
        try:
            store.put_new("race/k", body, {})
        except Exists:
            return False
        return True

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        won = list(pool.map(save, bodies))
    assert won.count(True) == 1
    assert store.read_all("race/k")[1] == bodies[won.index(True)]


def test_abort_multipart(store: Store) -> None:
    upload = store.create_multipart("never", {})
    store.upload_part("never", upload, 1, b"x" * 10)
    store.abort_multipart("never", upload)
    with pytest.raises(NotFound):
        store.head("never")


def test_copy(store: Store) -> None:
    store.put("src", b"data", {"mode": "1"})
    store.copy("src", "dst1")
    assert store.head("dst1").metadata["mode"] == "1"
    store.copy("src", "dst2", {"mode": "2"})
    assert store.head("dst2").metadata["mode"] == "2"
    assert store.read_all("dst2")[1] == b"data"
    with pytest.raises(NotFound):
        store.copy("missing", "dst3")


def test_delete_many(store: Store) -> None:
    for i in range(5):
        store.put(f"d/{i}", b"x", {})
    store.delete_many([f"d/{i}" for i in range(5)] + ["d/missing"])
    assert store.list_all("d/", None).objects == []


def _local_key_of_path_length(store: LocalStore, total: int) -> str:
    """A key whose object file path is ``total`` bytes long (components of 200 bytes)."""
    parts: list[str] = []
    used = len(os.fsencode(store.root))  # each component adds '/', itself and '.d'/'.o'
    while total - used > 203 + 3:
        parts.append("c" * 200)
        used += 203
    parts.append("e" * (total - used - 3))
    return "/".join(parts)


def _plain_key_of_path_length(store: PlainDirStore, total: int) -> str:
    """A key whose file path is ``total`` bytes long (components of 200 bytes)."""
    parts: list[str] = []
    used = len(os.fsencode(store.root))  # each component adds '/' and itself
    while total - used > 201 + 1:
        parts.append("c" * 200)
        used += 201
    parts.append("e" * (total - used - 1))
    return "/".join(parts)


def _longest_and_too_long(store: Store) -> tuple[list[str], list[str]]:
    if isinstance(store, PlainDirStore):
        return ([_plain_key_of_path_length(store, 4095), "n" * 255, "d/" + "n" * 255],
                [_plain_key_of_path_length(store, 4096), "n" * 256, "d/" + "n" * 256 + "/x"])
    if isinstance(store, LocalStore):
        # NAME_MAX (255) per component with its 2-byte suffix, PATH_MAX (4096, with the NUL)
        return ([_local_key_of_path_length(store, 4095), "n" * 253, "d/" + "n" * 253],
                [_local_key_of_path_length(store, 4096), "n" * 254, "d/" + "n" * 254 + "/x"])
    # S3: 1,024 bytes of UTF-8 (components of up to 255 bytes, as the mount makes them:
    # SeaweedFS refuses longer ones)
    k, e = "k" * 255, "é" * 127
    return ([f"{k}/{k}/{k}/{k}/", f"{k}/{k}/{k}/{k[1:]}/x", f"{e}/{e}/{e}/{e}/xxxx"],
            [f"{k}/{k}/{k}/{k}/x", f"{k}/{k}/{k}/{k}/.cachefs.dir", f"{e}/{e}/{e}/{e}/xxxxé"])


def test_check_key_matches_what_the_store_can_hold(store: Store) -> None:
    longest, too_long = _longest_and_too_long(store)
    for key in longest:
        store.check_key(key)
        body = b"" if key.endswith("/") else b"1"  # SeaweedFS keeps markers as directories
        store.put(key, body, {})
        assert store.read_all(key)[1] == body
        store.delete(key)
    for key in too_long:
        with pytest.raises(NameTooLong):
            store.check_key(key)
        # S3 servers may be more lenient
        if isinstance(store, LocalStore | MemoryStore | PlainDirStore):
            with pytest.raises(NameTooLong):
                store.put(key, b"1", {})
            with pytest.raises(NotFound):
                store.head(key)
            store.delete(key)  # not there: deleting it is fine


@pytest.mark.s3
def test_missing_bucket_and_bad_credentials(seaweed: S3Server) -> None:
    with pytest.raises(BucketNotFound):
        s3_store(seaweed, "no-such-bucket-here").check()
    bucket = new_bucket(seaweed)
    with pytest.raises(AccessDenied):
        s3_store(seaweed, bucket, secret="wrong-secret").check()
