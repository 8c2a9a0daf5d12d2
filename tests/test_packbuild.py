"""NAME.pack directories written inside a mount: sealed into one pack object, nothing lost."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from cachefs.pack.build import BuildLog, Item

from .conftest import Mounter, cli
from .servers import SeaweedFS
from .test_pack import make_tree, same_tree


def keys(seaweed: SeaweedFS, bucket: str, prefix: str = "") -> dict[str, int]:
    client = seaweed.client()
    found: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            found[obj["Key"]] = obj["Size"]
    return found


def wait_for_key(seaweed: SeaweedFS, bucket: str, key: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while key not in keys(seaweed, bucket, key):
        assert time.monotonic() < deadline, f"{key} never reached the store"
        time.sleep(0.3)


def test_build_log_replay(tmp_path: Path) -> None:
    """The log gives the last state of each path; removals and renames are followed, a torn
    last line is ignored, and the result is in tree order."""
    path = tmp_path / "b.log"
    blog = BuildLog(path, "k/x.pack")
    blog.put(Item("d", "d", 0o755, 1))
    blog.put(Item("d/a", "f", 0o644, 2, "aa" * 32, 3))
    blog.put(Item("d/b", "f", 0o644, 2, "bb" * 32, 4))
    blog.put(Item("z", "l", 0o777, 3, target="d/a"))
    blog.remove("d/b")
    blog.put(Item("d/a", "f", 0o600, 5, "cc" * 32, 6))     # rewritten
    blog.remove("d")                                       # renamed: d -> e
    blog.put(Item("e", "d", 0o755, 1))
    blog.put(Item("e/a", "f", 0o600, 5, "cc" * 32, 6))
    blog.close()
    with open(path, "ab") as f:
        f.write(b'{"p": "torn", "t": "f"')
    key, items = BuildLog.replay(path)
    assert key == "k/x.pack"
    assert [(i.path, i.kind) for i in items] == [("e", "d"), ("e/a", "f"), ("z", "l")]
    assert items[1].digest == "cc" * 32 and items[1].mode == 0o600 and items[1].size == 6
    assert items[2].target == "d/a"


@pytest.mark.fuse
@pytest.mark.s3
def test_pack_dir_in_mount_becomes_one_object(seaweed: SeaweedFS, bucket: str,
                                              mounter: Mounter, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    m = mounter("--pack-idle", "0", server=seaweed, bucket=bucket)
    (m.path / "packs").mkdir()
    target = m.path / "packs/k2.pack"
    subprocess.run(["cp", "-a", f"{src}/.", str(target)], check=True)
    # a program reworks its tree before it is done: renames, deletes, chmod, rewrites
    os.rename(target / "sub/many000.txt", target / "sub/renamed.txt")
    os.rename(target / "dir with spaces", target / "moved dir")
    os.unlink(target / "sub/many001.txt")
    os.replace(target / "sub/many004.txt", target / "sub/many008.txt")    # over another file
    with pytest.raises(OSError) as info:
        os.rename(target / "sub", target / "moved dir")                    # onto a non-empty dir
    assert info.value.errno == errno.ENOTEMPTY
    os.chmod(target / "sub/many002.txt", 0o600)
    (target / "sub/many003.txt").write_text("rewritten\n")
    (target / "gone").mkdir()
    (target / "gone/x").write_text("x")
    shutil.rmtree(target / "gone")
    expected = tmp_path / "expected"
    shutil.copytree(target, expected, symlinks=True)
    same_tree(expected, target)
    # nothing went to the store file by file, and a move across the layer is refused
    assert not [k for k in keys(seaweed, bucket) if k.startswith("packs/k2.pack/")]
    (m.path / "outside.txt").write_text("o")
    with pytest.raises(OSError) as info:
        os.rename(m.path / "outside.txt", target / "inside.txt")
    assert info.value.errno == errno.EXDEV
    result = cli("sync", str(m.path), env=seaweed.env())
    assert result.returncode == 0, result.stderr + m.log()
    stored = keys(seaweed, bucket, "packs/")
    assert "packs/k2.pack" in stored, stored
    assert not [k for k in stored if k.startswith("packs/k2.pack/")], stored
    head = seaweed.client().head_object(Bucket=bucket, Key="packs/k2.pack")
    assert head["Metadata"].get("cachefs-pack") == "1"
    # sealed: read-only, and the same tree, here and on a fresh machine
    with pytest.raises(OSError) as info:
        (target / "new.txt").write_text("late")
    assert info.value.errno == errno.EROFS
    same_tree(expected, target)
    other = mounter(server=seaweed, bucket=bucket)
    same_tree(expected, other.path / "packs/k2.pack")
    assert other.control("stats")["counters"].get("pack_tocs_fetched", 0) >= 1
    # an empty NAME.pack can be removed; nothing is stored for it
    (m.path / "packs/empty.pack").mkdir()
    os.rmdir(m.path / "packs/empty.pack")
    assert cli("sync", str(m.path), env=seaweed.env()).returncode == 0
    assert "packs/empty.pack" not in keys(seaweed, bucket, "packs/")


@pytest.mark.fuse
@pytest.mark.s3
def test_idle_pack_dir_is_sealed_by_itself(seaweed: SeaweedFS, bucket: str,
                                           mounter: Mounter) -> None:
    m = mounter("--pack-idle", "1", server=seaweed, bucket=bucket)
    target = m.path / "node.pack"
    target.mkdir()
    with open(target / "slow-writer.txt", "w") as f:
        f.write("first part\n")
        f.flush()
        time.sleep(3)              # open for writing: not idle, whatever the clock says
        assert "node.pack" not in keys(seaweed, bucket)
        f.write("second part\n")
    (target / "lib").mkdir()
    (target / "lib/index.js").write_text("module.exports = 1\n")
    wait_for_key(seaweed, bucket, "node.pack")
    deadline = time.monotonic() + 10
    while os.stat(target).st_mode & 0o777 != 0o555:  # shown from the pack once stored
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert (target / "slow-writer.txt").read_text() == "first part\nsecond part\n"
    assert (target / "lib/index.js").read_text() == "module.exports = 1\n"
    # the pack, its directory's manifest, and its last-use marker (read back here)
    assert set(keys(seaweed, bucket)) <= {".cachefs.dir", "node.pack", "node.pack.cachefs-used"}


@pytest.mark.fuse
@pytest.mark.s3
def test_daemon_killed_before_seal_loses_nothing(seaweed: SeaweedFS, bucket: str,
                                                 mounter: Mounter, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    m = mounter("--pack-idle", "0", "--writeback", "async", server=seaweed, bucket=bucket)
    subprocess.run(["cp", "-a", f"{src}/.", str(m.path / "crash.pack")], check=True)
    m.kill()                                  # closed files, never sealed
    assert "crash.pack" not in keys(seaweed, bucket)
    again = mounter(server=seaweed, bucket=bucket, cache_dir=m.cache_dir)
    wait_for_key(seaweed, bucket, "crash.pack")
    assert "sealed the pack a previous mount was building" in again.log()
    deadline = time.monotonic() + 20
    while ".cachefs.dir" not in keys(seaweed, bucket):   # listed as a pack by its manifest
        assert time.monotonic() < deadline, again.log()
        time.sleep(0.3)
    fresh = mounter(server=seaweed, bucket=bucket)
    same_tree(src, fresh.path / "crash.pack")


def test_format_v2_points_at_frames_of_other_packs(tmp_path: Path) -> None:
    """A pack may reuse frames stored in another pack; its table says where they live, and a
    pack without such frames is still written as version 1 (older readers read it)."""
    from cachefs.pack.format import PackBuilder, Toc, decode_toc, decode_trailer

    out = bytearray()
    first = PackBuilder(out.extend)
    first.add_file("a.txt", 0o644, 1, b"alpha" * 100)
    first.add_file("b.txt", 0o644, 1, b"beta" * 100)
    toc1 = first.finish()
    assert decode_trailer(bytes(out[-72:]))[0] > 0 and toc1.version == 1
    second_out = bytearray()
    second = PackBuilder(second_out.extend)
    a = toc1.entries[0]
    second.add_stored_file("a.txt", 0o600, 2, a.size, a.sha256 or "", a.extents, toc1,
                           ("packs/v1", "etag1"))
    second.add_file("c.txt", 0o644, 3, b"gamma" * 100)
    toc2 = second.finish()
    assert toc2.version == 2 and toc2.sources == [("packs/v1", "etag1")]
    assert second.reused == 1
    reused = toc2.frames[toc2.entries[0].extents[0][0]]
    assert reused.source == 1 and reused.offset == toc1.frames[0].offset
    assert reused.sha256 == toc1.frames[0].sha256
    offset, clen, ulen, sha = decode_trailer(bytes(second_out[-72:]))
    assert decode_toc(bytes(second_out[offset:offset + clen]), ulen, sha).sources == \
        toc2.sources
    assert Toc.decode(toc2.encode()).frames == toc2.frames
    # only the new file's frame is in the second object
    assert len(second_out) < len(out) + 200


@pytest.mark.fuse
@pytest.mark.s3
def test_changes_over_a_mounted_pack_saved_as_a_new_pack(seaweed: SeaweedFS, bucket: str,
                                                         mounter: Mounter,
                                                         tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    assert cli("pack", str(src), f"s3://{bucket}/packs/v1", env=seaweed.env()).returncode == 0
    v1_size = keys(seaweed, bucket, "packs/")["packs/v1"]
    m = mounter("--subtree", "packs/v1", server=seaweed, bucket=bucket)
    expected = tmp_path / "expected"
    shutil.copytree(src, expected, symlinks=True)
    for root in (m.path, expected):       # a build adds a module, edits, deletes, renames
        (root / "newmod@v1.0.0").mkdir()
        (root / "newmod@v1.0.0/mod.go").write_text("package newmod\n" * 30)
        (root / "a.txt").chmod(0o644)
        (root / "a.txt").write_text("rewritten\n")
        with open(root / "sub/many005.txt", "a") as f:     # append: copied up first
            f.write("appended\n")
        os.unlink(root / "sub/many006.txt")
        os.rename(root / "sub/many007.txt", root / "newmod@v1.0.0/moved.txt")
        for rel in ("a.txt", "sub/many005.txt", "newmod@v1.0.0/mod.go"):
            os.utime(root / rel, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    same_tree(expected, m.path)
    assert not [k for k in keys(seaweed, bucket) if not k.startswith(("packs/", ".cachefs"))]
    result = cli("pack", "--from-mount", str(m.path), "packs/v2", env=seaweed.env())
    assert result.returncode == 0, result.stderr + m.log()
    assert "frames reused" in result.stdout
    stored = keys(seaweed, bucket, "packs/")
    assert stored["packs/v2"] < v1_size / 5, (stored, result.stdout)   # only what changed
    fresh = mounter("--subtree", "packs/v2", server=seaweed, bucket=bucket)
    same_tree(expected, fresh.path)
    old = mounter("--subtree", "packs/v1", server=seaweed, bucket=bucket)
    same_tree(src, old.path)                                             # untouched
    bucket_mount = mounter(server=seaweed, bucket=bucket)
    same_tree(expected, bucket_mount.path / "packs/v2")                 # listed as a pack
    # a bucket mount's pack directories stay read-only
    with pytest.raises(OSError) as info:
        (bucket_mount.path / "packs/v2/new.txt").write_text("x")
    assert info.value.errno == errno.EROFS
