"""Settings: one table of fields, read from flags, environment and a TOML file.

Precedence is flag > environment (``CACHEFS_<FIELD>``) > config file > default. The table below is
the single source of truth: the CLI builds its flags from it and README's reference lists it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
    "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
    "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
    "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
}


def parse_size(text: str | int) -> int:
    """``'20G'`` -> bytes. Units are binary (G = GiB), as df and du print them."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ConfigError(f"not a size: {text!r} (use e.g. 500M, 20G, 1T)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"not a boolean: {text!r} (use true or false)")


def parse_seconds(text: str | float | int) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ConfigError(f"not a number of seconds: {text!r}") from None
    if value < 0:
        raise ConfigError(f"seconds must not be negative: {text!r}")
    return value


def parse_int(text: str | int) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise ConfigError(f"not an integer: {text!r}") from None


def parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if str(text) not in choices:
            raise ConfigError(f"{text!r} is not one of {', '.join(choices)}")
        return str(text)

    return parse


def parse_list(text: str | list[str]) -> list[str]:
    if isinstance(text, list):
        return [str(x) for x in text]
    return [x.strip() for x in str(text).split(",") if x.strip()]


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def default_store_url() -> str:
    """The embedded default: a local directory store, so a fresh machine needs no S3."""
    return (_xdg("XDG_DATA_HOME", ".local/share") / "cachefs" / "store").as_uri()


def default_cache_dir() -> str:
    return str(_xdg("XDG_CACHE_HOME", ".cache") / "cachefs")


def default_state_dir() -> Path:
    """Where cachefs keeps what only this machine needs to know (the mount records)."""
    return _xdg("XDG_STATE_HOME", ".local/state") / "cachefs"


def default_config_file() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config") / "cachefs" / "config.toml"


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    parse: Callable[[Any], Any]
    default: Callable[[], Any]
    help: str


FIELDS: tuple[Field, ...] = (
    Field("store", str, default_store_url,
          "where objects live: s3://BUCKET[/PREFIX] or file:///DIR (default: a local dir store)"),
    Field("endpoint", str, lambda: None,
          "S3 endpoint URL for MinIO, Garage, SeaweedFS... (default: AWS)"),
    Field("region", str, lambda: "us-east-1", "S3 region used for signing"),
    Field("cache_dir", str, default_cache_dir,
          "local cache directory: blob tier, listings, pending uploads, log"),
    Field("cache_size", parse_size, lambda: 10 << 30,
          "cap on the blob tier, least recently used blobs are evicted (e.g. 20G)"),
    Field("metadata_ttl", parse_seconds, lambda: 60.0,
          "seconds a listing or attribute is trusted before it is checked again"),
    Field("read_only", parse_bool, lambda: False, "refuse every change with EROFS"),
    Field("writeback", parse_choice("sync", "async"), lambda: "sync",
          "sync: close() returns once the object is in the store; async: once it is journaled"),
    Field("pack_idle", parse_seconds, lambda: 5.0,
          "a NAME.pack directory written in the mount is sealed into one pack after this many "
          "seconds without a change (0: only at cachefs sync and unmount)"),
    Field("timeout", parse_seconds, lambda: 30.0,
          "seconds a request may wait on the store or origin before failing with EIO"),
    Field("connections", parse_int, lambda: 16, "parallel connections to the store"),
    Field("etag_check", parse_bool, lambda: True,
          "check downloads against MD5 ETags (off only for stores whose ETags are not MD5s)"),
    Field("log_level", parse_choice("debug", "info", "warning", "error"), lambda: "info",
          "log verbosity"),
    Field("key_file", str, lambda: None, "file holding the S3 access key id"),
    Field("secret_file", str, lambda: None, "file holding the S3 secret access key"),
    Field("allow_other", parse_bool, lambda: False,
          "let other users use the mount; permissions are then checked by the kernel"),
    Field("origin", parse_list, list,
          "PATH=URL: names under PATH that the store lacks are fetched from URL"),
    Field("origin_fetch", parse_choice("auto", "curate"), lambda: "auto",
          "auto: fetch origin misses when read; curate: only after `cachefs fetch` approves"),
    Field("compress", str, lambda: "",
          "store objects written here zstd-compressed: zstd or zstd:LEVEL (default: plain)"),
    Field("subtree", str, lambda: None,
          "mount only this key (a pack or a prefix) at the mount point"),
    Field("restore_key", parse_list, list,
          "with --subtree: key prefixes to fall back to, newest match wins"),
)

FIELD_BY_NAME = {f.name: f for f in FIELDS}


def flag_argv(settings: Mapping[str, Any]) -> list[str]:
    """The `cachefs mount` flags that give these settings (None: not given); booleans become
    ``--flag`` or ``--no-flag``, lists repeat their flag."""
    argv: list[str] = []
    for name, value in settings.items():
        field = FIELD_BY_NAME.get(name)
        if field is None:
            raise TypeError(f"unknown cachefs setting {name!r}")
        if value is None:
            continue
        flag = name.replace("_", "-")
        if field.parse is parse_bool:
            argv.append(f"--{flag}" if parse_bool(value) else f"--no-{flag}")
        elif field.parse is parse_list:
            items = [value] if isinstance(value, str | os.PathLike) else list(value)
            for item in items:
                argv += [f"--{flag}", os.fspath(item) if isinstance(item, os.PathLike)
                         else str(item)]
        else:
            argv += [f"--{flag}", os.fspath(value) if isinstance(value, os.PathLike)
                     else str(value)]
    return argv


@dataclasses.dataclass(frozen=True)
class Config:
    store: str
    endpoint: str | None
    region: str
    cache_dir: str
    cache_size: int
    metadata_ttl: float
    read_only: bool
    writeback: str
    pack_idle: float
    timeout: float
    connections: int
    etag_check: bool
    log_level: str
    key_file: str | None
    secret_file: str | None
    allow_other: bool
    origin: list[str]
    origin_fetch: str
    compress: str
    subtree: str | None
    restore_key: list[str]
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def read_config_file(path: Path, required: bool) -> dict[str, Any]:
    if not path.exists():
        if required:
            raise ConfigError(f"config file {path} does not exist")
        return {}
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: {e}") from None
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}") from None
    unknown = sorted(k.replace("-", "_") for k in data if k.replace("-", "_") not in FIELD_BY_NAME)
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s): {', '.join(unknown)}")
    return {k.replace("-", "_"): v for k, v in data.items()}


def load(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Config:
    """Resolve every field: flag > CACHEFS_* environment > config file > default.

    ``flags`` holds only what the user gave (None means not given).
    """
    flags = flags or {}
    env = os.environ if env is None else env
    path_text = config_file or env.get("CACHEFS_CONFIG")
    path = Path(path_text).expanduser() if path_text else default_config_file()
    file_values = read_config_file(path, required=bool(path_text))
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for field in FIELDS:
        env_name = "CACHEFS_" + field.name.upper()
        if flags.get(field.name) is not None:
            raw, source = flags[field.name], "flag"
        elif env.get(env_name) not in (None, ""):
            raw, source = env[env_name], f"env {env_name}"
        elif field.name in file_values:
            raw, source = file_values[field.name], f"file {path}"
        else:
            values[field.name] = field.default()
            sources[field.name] = "default"
            continue
        try:
            values[field.name] = field.parse(raw)
        except ConfigError as e:
            raise ConfigError(f"{field.name} ({source}): {e}") from None
        sources[field.name] = source
    # Paths are made absolute here: the daemon runs from / and must find the same files.
    values["cache_dir"] = str(Path(values["cache_dir"]).expanduser().absolute())
    for name in ("key_file", "secret_file"):
        if values[name]:
            values[name] = str(Path(values[name]).expanduser().absolute())
    return Config(**values, sources=sources)


@dataclasses.dataclass(frozen=True)
class Credentials:
    """Explicit S3 credentials, with where each part came from (for `doctor`)."""

    key_id: str
    secret: str
    key_id_source: str
    secret_source: str


def _read_secret_file(path: str, what: str) -> str:
    try:
        return Path(path).expanduser().read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read {what} file {path}: {e.strerror}") from None


def resolve_credentials(config: Config, env: Mapping[str, str] | None = None) -> Credentials | None:
    """CACHEFS_S3_KEY_ID/SECRET, then key_file/secret_file; None means boto3's own chain."""
    env = os.environ if env is None else env
    key_id = env.get("CACHEFS_S3_KEY_ID") or ""
    secret = env.get("CACHEFS_S3_SECRET") or ""
    key_src = "env CACHEFS_S3_KEY_ID" if key_id else ""
    secret_src = "env CACHEFS_S3_SECRET" if secret else ""
    if not key_id and config.key_file:
        key_id, key_src = _read_secret_file(config.key_file, "key"), f"key_file {config.key_file}"
    if not secret and config.secret_file:
        secret = _read_secret_file(config.secret_file, "secret")
        secret_src = f"secret_file {config.secret_file}"
    if key_id and secret:
        return Credentials(key_id, secret, key_src, secret_src)
    if key_id or secret:
        missing = "secret" if key_id else "key id"
        raise ConfigError(f"S3 {missing} is missing: set both CACHEFS_S3_KEY_ID and "
                          "CACHEFS_S3_SECRET (or key_file and secret_file)")
    return None
