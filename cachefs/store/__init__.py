"""Object stores: the interface (base.py), S3 (s3.py), a local directory (local.py), and the
factory that builds one from a store URL."""

from __future__ import annotations

import dataclasses
import logging
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .base import (
    MAX_KEY_BYTES,
    MAX_PARTS,
    MIN_PART_SIZE,
    ListPage,
    ObjectInfo,
    ReadStream,
    Store,
    key_bytes,
)

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)

__all__ = ["MAX_KEY_BYTES", "MAX_PARTS", "MIN_PART_SIZE", "ListPage", "ObjectInfo",
           "ReadStream", "Store", "StoreLocation", "key_bytes", "open_local", "open_store",
           "parse_store_url"]


@dataclasses.dataclass(frozen=True)
class StoreLocation:
    """A parsed store URL: ``s3://bucket/prefix`` or ``file:///dir``."""

    scheme: str
    bucket: str  # the directory for file://
    prefix: str  # normalized: '' or 'a/b/'

    @property
    def url(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return Path(self.bucket).as_uri() + ("#" + self.prefix if self.prefix else "")


def parse_store_url(url: str) -> StoreLocation:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"store URL {url!r} has no bucket: use s3://BUCKET[/PREFIX]")
        prefix = parsed.path.strip("/")
        return StoreLocation("s3", parsed.netloc, prefix + "/" if prefix else "")
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"store URL {url!r}: file URLs name a local path, file:///DIR")
        path = urllib.parse.unquote(parsed.path)
        if not path.startswith("/"):
            raise ConfigError(f"store URL {url!r}: use an absolute path, file:///DIR")
        return StoreLocation("file", path, "")
    raise ConfigError(f"store URL {url!r} is not s3://BUCKET[/PREFIX] or file:///DIR")


def open_store(config: Config) -> tuple[Store, str]:
    """Build the store named by the config; returns the store and the key prefix to mount."""
    location = parse_store_url(config.store)
    if location.scheme == "s3":
        from ..config import resolve_credentials
        from .s3 import S3Store

        return S3Store(
            bucket=location.bucket,
            endpoint=config.endpoint,
            region=config.region,
            credentials=resolve_credentials(config),
            connections=config.connections,
            timeout=config.timeout,
        ), location.prefix
    return open_local(Path(location.bucket)), location.prefix


def open_local(root: Path) -> Store:
    """A local store: a plain directory (plain.py), or one in the encoding of earlier versions
    (local.py), read and written as it is until ``cachefs migrate-store`` converts it."""
    from .local import LocalStore, is_legacy
    from .plain import PlainDirStore

    if is_legacy(root):
        log.info("%s: a local store in the encoding of earlier versions, used as it is; "
                 "`cachefs migrate-store` makes it a plain directory", root)
        return LocalStore(root)
    return PlainDirStore(root)
