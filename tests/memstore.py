"""An in-memory store for fast tests of the core, checked against real S3 by the contract suite."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Mapping, Sequence

from cachefs.errors import NotFound, ObjectChanged, StoreUnavailable
from cachefs.store import ListPage, ObjectInfo, ReadStream, Store


class _Stream(ReadStream):
    def __init__(self, data: bytes, info: ObjectInfo) -> None:
        self.data = data
        self.pos = 0
        self.info = info

    def read(self, n: int) -> bytes:
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk

    def close(self) -> None:
        pass


class MemoryStore(Store):
    def __init__(self) -> None:
        self.url = "mem://test"
        self.objects: dict[str, tuple[bytes, ObjectInfo]] = {}
        self.uploads: dict[str, dict[int, bytes]] = {}
        self.upload_meta: dict[str, Mapping[str, str]] = {}
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.down = False
        self.page_size = 1000

    def _req(self, what: str, key: str) -> None:
        with self.lock:
            self.requests.append((what, key))
        if self.down:
            raise StoreUnavailable(f"{what} {key}: store is down (test)")

    def check(self) -> None:
        self._req("check", "")

    def list_page(self, prefix: str, delimiter: str | None = "/",
                  token: str | None = None) -> tuple[ListPage, str | None]:
        self._req("list", prefix)
        entries: dict[str, ObjectInfo | None] = {}
        for key in sorted(self.objects):
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix):]
            if delimiter and delimiter in rest:
                entries[prefix + rest.split(delimiter)[0] + delimiter] = None
            else:
                entries[key] = self.objects[key][1]
        keys = [k for k in sorted(entries) if token is None or k > token]
        page = ListPage([], [])
        for k in keys[:self.page_size]:
            info = entries[k]
            if info is None:
                page.prefixes.append(k)
            else:
                page.objects.append(info)
        return page, (keys[self.page_size - 1] if len(keys) > self.page_size else None)

    def head(self, key: str) -> ObjectInfo:
        self._req("head", key)
        if key not in self.objects:
            raise NotFound(key)
        return self.objects[key][1]

    def open_read(self, key: str, start: int = 0, length: int | None = None,
                  etag: str | None = None) -> ReadStream:
        self._req("get", key)
        if key not in self.objects:
            raise NotFound(key)
        data, info = self.objects[key]
        if etag and etag != info.etag:
            raise ObjectChanged(key)
        end = len(data) if length is None else start + length
        return _Stream(data[start:end], info)

    def _store(self, key: str, data: bytes, meta: Mapping[str, str], etag: str) -> ObjectInfo:
        info = ObjectInfo(key, len(data), etag, time.time(), dict(meta))
        with self.lock:
            self.objects[key] = (data, info)
        return info

    def put(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        self._req("put", key)
        self.check_key(key)  # S3 answers KeyTooLongError
        return self._store(key, data, metadata, f'"{hashlib.md5(data).hexdigest()}"')

    def create_multipart(self, key: str, metadata: Mapping[str, str]) -> str:
        self._req("create_multipart", key)
        self.check_key(key)
        upload_id = uuid.uuid4().hex
        self.uploads[upload_id] = {}
        self.upload_meta[upload_id] = dict(metadata)
        return upload_id

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        self._req("upload_part", key)
        self.uploads[upload_id][number] = data
        return f'"{hashlib.md5(data).hexdigest()}"'

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[tuple[int, str]],
                           size: int) -> ObjectInfo:
        self._req("complete_multipart", key)
        chunks = self.uploads.pop(upload_id)
        data = b"".join(chunks[n] for n, _ in parts)
        md5s = b"".join(hashlib.md5(chunks[n]).digest() for n, _ in parts)
        etag = f'"{hashlib.md5(md5s).hexdigest()}-{len(parts)}"'
        return self._store(key, data, self.upload_meta.pop(upload_id), etag)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self._req("abort_multipart", key)
        self.uploads.pop(upload_id, None)

    def copy(self, src: str, dst: str, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        self._req("copy", src)
        self.check_key(dst)
        if src not in self.objects:
            raise NotFound(src)
        data, info = self.objects[src]
        return self._store(dst, data, info.metadata if metadata is None else metadata,
                           info.etag)

    def delete(self, key: str) -> None:
        self._req("delete", key)
        with self.lock:
            self.objects.pop(key, None)

    # test helpers
    def add(self, key: str, data: bytes, **meta: str) -> ObjectInfo:
        return self._store(key, data, meta, f'"{hashlib.md5(data).hexdigest()}"')
