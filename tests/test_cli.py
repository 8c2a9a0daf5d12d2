"""The CLI without a mount: help, cache keys, config precedence, doctor."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from cachefs.cli.commands import apply_template
from cachefs.config import ConfigError, load, parse_size, resolve_credentials

from .conftest import cli, new_bucket
from .servers import KEY_ID, SECRET, SeaweedFS


@pytest.mark.parametrize("command", ["mount", "umount", "sync", "status", "stats", "doctor",
                                     "key", "fetch", "pack", "warm", "verify", "clear",
                                     "ls", "du", "prune", "verify-store"])
def test_every_command_has_help_with_examples(command: str) -> None:
    result = cli(command, "--help", check=True)
    assert "examples:" in result.stdout
    assert f"cachefs {command}" in result.stdout


def test_top_level_help_and_version() -> None:
    assert "exit codes" in cli("--help", check=True).stdout
    assert cli("--version", check=True).stdout.startswith("cachefs ")


def test_key_matches_sha256sum(tmp_path: Path) -> None:
    f = tmp_path / "go.sum"
    f.write_bytes(b"example.com/m v1.0.0 h1:abc=\n" * 100)
    expected = subprocess.run(f"sha256sum {f} | cut -c1-16", shell=True, capture_output=True,
                              text=True, check=True).stdout.strip()
    out = cli("key", "go-mod/{hash}", "--hash-from", str(f), check=True).stdout.strip()
    assert out == f"go-mod/{expected}"


def test_key_over_directories_and_templates(tmp_path: Path) -> None:
    d = tmp_path / "src"
    (d / "b").mkdir(parents=True)
    (d / "b" / "y").write_bytes(b"Y")
    (d / "a").write_bytes(b"A")
    expected = hashlib.sha256(b"A" + b"Y").hexdigest()[:8]
    out = cli("key", "img/build.tar.zst", "--hash-from", str(d), "--hash-length", "8",
              check=True).stdout.strip()
    assert out == f"img/build-{expected}.tar.zst"
    assert apply_template("cache", "h") == "cache-h"
    assert apply_template("a.b/c.tar.gz", "h") == "a.b/c-h.tar.gz"
    missing = cli("key", "x", "--hash-from", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "cannot hash" in missing.stderr


def test_config_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('store = "s3://from-file"\ncache_size = "1G"\nregion = "eu-west-1"\n')
    env = {"CACHEFS_STORE": "s3://from-env", "CACHEFS_CACHE_SIZE": "2G"}
    c = load({"store": "s3://from-flag"}, env=env, config_file=str(cfg))
    assert c.store == "s3://from-flag"
    assert c.cache_size == 2 << 30 and c.sources["cache_size"] == "env CACHEFS_CACHE_SIZE"
    assert c.region == "eu-west-1"
    assert c.metadata_ttl == 60.0 and c.sources["metadata_ttl"] == "default"


def test_config_mistakes_are_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('stor = "typo"\n')
    with pytest.raises(ConfigError, match="unknown setting"):
        load({}, env={}, config_file=str(cfg))
    with pytest.raises(ConfigError, match="not a size"):
        parse_size("lots")
    result = cli("mount", "--cache-size", "lots", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == "cachefs: cache_size (flag): not a size: 'lots' " \
        "(use e.g. 500M, 20G, 1T)"


def test_credentials_order(tmp_path: Path) -> None:
    key_file, secret_file = tmp_path / "k", tmp_path / "s"
    key_file.write_text("file-key\n")
    secret_file.write_text("file-secret\n")
    c = load({"key_file": str(key_file), "secret_file": str(secret_file)}, env={})
    creds = resolve_credentials(c, env={})
    assert creds is not None and creds.key_id == "file-key" and creds.secret == "file-secret"
    creds = resolve_credentials(c, env={"CACHEFS_S3_KEY_ID": "env-key",
                                        "CACHEFS_S3_SECRET": "env-secret"})
    assert creds is not None and creds.key_id == "env-key"
    assert resolve_credentials(load({}, env={}), env={}) is None


@pytest.mark.s3
def test_doctor(seaweed: SeaweedFS) -> None:
    bucket = new_bucket(seaweed)
    ok = cli("doctor", "--store", f"s3://{bucket}/p", env=seaweed.env())
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"from env CACHEFS_S3_KEY_ID, {len(KEY_ID)} characters" in ok.stdout
    assert f"{len(SECRET)} characters" in ok.stdout
    assert SECRET not in ok.stdout + ok.stderr
    assert "the store works" in ok.stdout
    assert not seaweed.client().list_objects_v2(Bucket=bucket).get("Contents")
    bad = cli("doctor", "--store", f"s3://{bucket}",
              env={**seaweed.env(), "CACHEFS_S3_SECRET": "not-the-secret"})
    assert bad.returncode == 2 and "FAIL" in bad.stdout
    assert "not-the-secret" not in bad.stdout + bad.stderr


def test_doctor_on_the_embedded_default() -> None:
    result = cli("doctor")
    assert result.returncode == 0, result.stdout + result.stderr
