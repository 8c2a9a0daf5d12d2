"""A local store is a plain directory: key a/b is the file DIR/a/b, in both directions; stores
of the old encoding are still read, and `cachefs migrate-store` converts them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cachefs.errors import InvalidArgument
from cachefs.store import open_local
from cachefs.store.local import LocalStore
from cachefs.store.plain import PlainDirStore

from .conftest import Mounter, cli


def test_files_put_by_hand_are_objects(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "sub/empty").mkdir(parents=True)
    (root / "x.txt").write_bytes(b"by hand")
    (root / "sub/y.bin").write_bytes(b"y")
    os.chmod(root / "sub/y.bin", 0o750)
    os.utime(root / "sub/y.bin", ns=(1_600_000_000_123_456_789,) * 2)
    store = open_local(root)
    assert isinstance(store, PlainDirStore)
    top = store.list_all("", "/")
    assert [o.key for o in top.objects] == ["x.txt"] and top.prefixes == ["sub/"]
    assert [o.key for o in store.list_all("", None).objects] == ["sub/empty/", "sub/y.bin",
                                                                 "x.txt"]
    info = store.head("sub/y.bin")
    assert info.metadata["mode"] == str(stat.S_IFREG | 0o750)
    assert info.metadata["cachefs-mtime"] == "1600000000123456789"
    assert info.encrypted  # an ETag made from stat is not an MD5: readers do not check it
    assert store.read_all("x.txt")[1] == b"by hand"
    before = store.head("x.txt").etag
    (root / "x.txt").write_bytes(b"changed by hand")
    assert store.head("x.txt").etag != before
    store.check()
    assert ".cachefs-store/" not in store.list_all("", "/").prefixes  # its own files are not keys


def test_objects_written_are_ordinary_files(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = PlainDirStore(root)
    store.ensure()
    meta = {"mode": str(stat.S_IFREG | 0o600), "cachefs-mtime": "1700000000000000001",
            "cachefs-sha256": "a" * 64}
    info = store.put("a/b.txt", b"through the store", meta)
    st = os.stat(root / "a/b.txt")
    assert (root / "a/b.txt").read_bytes() == b"through the store"
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_mtime_ns == 1700000000000000001
    head = store.head("a/b.txt")
    assert head.etag == info.etag and not head.encrypted
    assert head.metadata["cachefs-sha256"] == "a" * 64  # kept in the user.cachefs xattr
    os.chmod(root / "a/b.txt", 0o644)  # changed by hand: the file's own mode is the object's
    assert store.head("a/b.txt").metadata["mode"] == str(stat.S_IFREG | 0o644)
    store.put("m/", b"", {})
    assert (root / "m").is_dir()
    store.delete("a/b.txt")
    assert not (root / "a").exists()  # pruned, as an S3 prefix vanishes
    assert sorted(os.listdir(root)) == [".cachefs-store", "m"]


def test_keys_a_tree_cannot_hold_are_refused(tmp_path: Path) -> None:
    store = PlainDirStore(tmp_path / "store")
    store.ensure()
    store.put("a", b"file", {})
    with pytest.raises(InvalidArgument, match="a is a file"):
        store.put("a/b", b"x", {})
    store.put("d/x", b"x", {})
    with pytest.raises(InvalidArgument, match="d is a directory"):
        store.put("d", b"x", {})
    with pytest.raises(InvalidArgument, match="cannot be a path"):
        store.put(".cachefs-store/tmp/x", b"x", {})


def legacy_store(root: Path) -> LocalStore:
    old = LocalStore(root)
    old.ensure()
    old.put("dir/f.txt", b"old", {"mode": str(stat.S_IFREG | 0o640), "cachefs-mtime": "5"})
    old.put("dir/marker/", b"", {})
    old.put("top", b"t", {"x": "y"})
    return old


def test_old_encoding_is_read_and_migrated(tmp_path: Path) -> None:
    root = tmp_path / "store"
    old = legacy_store(root)
    etag = old.head("dir/f.txt").etag
    store = open_local(root)
    assert isinstance(store, LocalStore)
    assert store.read_all("dir/f.txt")[1] == b"old"
    result = cli("migrate-store", "--store", root.as_uri())
    assert result.returncode == 0, result.stderr
    assert "plain directory now: 3 objects" in result.stdout
    plain = open_local(root)
    assert isinstance(plain, PlainDirStore)
    assert (root / "dir/f.txt").read_bytes() == b"old"
    assert plain.head("dir/f.txt").etag == etag  # caches keyed by ETag stay valid
    assert plain.head("top").metadata["x"] == "y"
    assert (root / "dir/marker").is_dir()
    assert (tmp_path / "store.old-encoding/dir.d/f.txt.o").exists()
    again = cli("migrate-store", "--store", root.as_uri())
    assert again.returncode == 0 and "already" in again.stdout


def test_migration_refuses_keys_a_tree_cannot_hold(tmp_path: Path) -> None:
    root = tmp_path / "store"
    old = legacy_store(root)
    old.put("top/child", b"c", {})
    result = cli("migrate-store", "--store", root.as_uri())
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "top/child" in result.stderr and "left in the old encoding" in result.stderr
    assert isinstance(open_local(root), LocalStore)
    assert not (tmp_path / "store.migrating").exists()


@pytest.mark.fuse
def test_mount_of_a_plain_directory(mounter: Mounter, tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "tools").mkdir(parents=True)
    (root / "tools/run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "tools/run.sh", 0o755)
    m = mounter("--store", root.as_uri())
    assert (m.path / "tools/run.sh").read_text() == "#!/bin/sh\n"
    assert stat.S_IMODE(os.stat(m.path / "tools/run.sh").st_mode) == 0o755
    (m.path / "out").mkdir()
    fd = os.open(m.path / "out/result.txt", os.O_WRONLY | os.O_CREAT, 0o640)
    os.write(fd, b"built\n")
    os.close(fd)
    assert cli("sync", str(m.path)).returncode == 0
    assert (root / "out/result.txt").read_text() == "built\n"
    assert stat.S_IMODE(os.stat(root / "out/result.txt").st_mode) == 0o640
    # beside them only cachefs's own: its work directory, and directory manifests (modes and
    # times changed after a file was stored, like any S3 store of cachefs has)
    assert {n for n in os.listdir(root) if not n.startswith(".cachefs")} == {"out", "tools"}


@pytest.mark.fuse
def test_default_store_of_the_old_encoding_keeps_working(mounter: Mounter,
                                                         tmp_path: Path) -> None:
    """`cachefs mount DIR` with no --store, over a default store an earlier version made."""
    data = tmp_path / "xdg-data"
    legacy_store(data / "cachefs/store")
    m = mounter(env={"XDG_DATA_HOME": str(data)})
    assert (m.path / "dir/f.txt").read_bytes() == b"old"
    (m.path / "new.txt").write_text("n")
    assert cli("sync", str(m.path), env={"XDG_DATA_HOME": str(data)}).returncode == 0
    assert LocalStore(data / "cachefs/store").read_all("new.txt")[1] == b"n"


def test_writes_and_deletes_side_by_side(tmp_path: Path) -> None:
    """Deletes prune parents that writes beside them are making: every write still lands."""
    import concurrent.futures

    store = PlainDirStore(tmp_path / "store")
    store.ensure()

    def churn(i: int) -> None:
        for round_ in range(30):
            store.put(f"deep/x/y/{i}-{round_}", b"v", {})
            store.delete(f"deep/x/y/{i}-{round_}")
        store.put(f"deep/x/y/{i}", b"kept", {})

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        list(pool.map(churn, range(6)))
    assert sorted(o.key for o in store.list_all("deep/", None).objects) == [
        f"deep/x/y/{i}" for i in range(6)]
