"""The object store interface: what every store (S3, a local directory, a test fake) offers.

Store methods block: callers run them in worker threads under the store's CapacityLimiter. Every
implementation raises only cachefs.errors exceptions, so the core never sees botocore or OS details.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator, Mapping, Sequence

from ..errors import Exists, NameTooLong, NotFound

#: S3 refuses multipart parts smaller than this, except the last one.
MIN_PART_SIZE = 5 << 20
#: S3 allows at most this many parts in one multipart upload.
MAX_PARTS = 10_000
#: S3 keys are at most this many bytes of UTF-8.
MAX_KEY_BYTES = 1024


def key_bytes(key: str) -> bytes:
    """A key as the bytes a store counts (names that came from FUSE are valid UTF-8)."""
    return key.encode("utf-8", "surrogateescape")


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    mtime: float
    #: user metadata (x-amz-meta-*), names lowercased and without the prefix
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: encrypted with SSE-KMS or SSE-C: its ETag is not an MD5 of the content
    encrypted: bool = False


@dataclasses.dataclass
class ListPage:
    objects: list[ObjectInfo]
    prefixes: list[str]


class ReadStream(abc.ABC):
    """The body of a (ranged) GET. ``info.size`` is the whole object's size."""

    info: ObjectInfo

    @abc.abstractmethod
    def read(self, n: int) -> bytes:
        """Up to n bytes; b'' at the end of the requested range."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> ReadStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Store(abc.ABC):
    """A flat namespace of keys holding immutable objects."""

    #: how the store is shown to people (never contains credentials)
    url: str

    def ensure(self) -> None:  # noqa: B027 (most stores need nothing)
        """Create what a new store needs (a local directory); S3 buckets are made elsewhere."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise BucketNotFound / AccessDenied / StoreUnavailable if the store cannot be used."""

    def check_key(self, key: str) -> None:
        """Raise NameTooLong if ``key`` could never be stored here. No request: the core asks
        before it creates or moves a key, so a name that cannot work is refused up front
        instead of failing later, in the background, where no caller can be told.

        The default is S3's rule, which every S3-compatible store shares.
        """
        size = len(key_bytes(key))
        if size > MAX_KEY_BYTES:
            raise NameTooLong(f"the store key would be {size} bytes, more than S3's "
                              f"{MAX_KEY_BYTES}: {key[:60]}...")

    @abc.abstractmethod
    def list_page(self, prefix: str, delimiter: str | None = "/",
                  token: str | None = None) -> tuple[ListPage, str | None]:
        """One page of keys starting with ``prefix``, in key order, grouped at ``delimiter``
        if given; returns the page and the token for the next one (None after the last)."""

    def list_pages(self, prefix: str, delimiter: str | None = "/") -> Iterator[ListPage]:
        token: str | None = None
        while True:
            page, token = self.list_page(prefix, delimiter, token)
            yield page
            if token is None:
                return

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo: ...

    @abc.abstractmethod
    def open_read(
        self, key: str, start: int = 0, length: int | None = None, etag: str | None = None
    ) -> ReadStream:
        """Stream ``length`` bytes from ``start``; ObjectChanged if ``etag`` no longer matches."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo: ...

    @abc.abstractmethod
    def create_multipart(self, key: str, metadata: Mapping[str, str]) -> str: ...

    @abc.abstractmethod
    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str: ...

    @abc.abstractmethod
    def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]], size: int
    ) -> ObjectInfo: ...

    @abc.abstractmethod
    def abort_multipart(self, key: str, upload_id: str) -> None: ...

    # -- writes that never replace (immutable keys: packs) --------------------------------------

    def conditional_writes(self, near: str = "") -> bool:
        """Whether ``put_new``/``complete_multipart_new`` refuse an existing key atomically.
        A store may find out with a probe (writes next to ``near``) and keep the answer."""
        return False

    def refuse_existing(self, key: str) -> None:
        """Raise Exists if ``key`` is there: the check a store without conditional writes
        makes (a racing writer can still slip in between it and the write)."""
        try:
            self.head(key)
        except NotFound:
            return
        raise Exists(f"{key} already exists")

    def put_new(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        """``put``, unless ``key`` exists: then Exists, and the object is left as it was."""
        self.refuse_existing(key)
        return self.put(key, data, metadata)

    def complete_multipart_new(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]], size: int
    ) -> ObjectInfo:
        """``complete_multipart``, unless ``key`` exists: then Exists (the upload is left for
        the caller to abort)."""
        self.refuse_existing(key)
        return self.complete_multipart(key, upload_id, parts, size)

    @abc.abstractmethod
    def copy(self, src: str, dst: str, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        """Server-side copy; ``metadata`` replaces the source's when given."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing key is not an error."""

    def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.delete(key)

    def read_all(self, key: str, etag: str | None = None) -> tuple[ObjectInfo, bytes]:
        """A whole small object (manifests, canaries) in memory."""
        with self.open_read(key, etag=etag) as stream:
            chunks = []
            while chunk := stream.read(1 << 20):
                chunks.append(chunk)
            return stream.info, b"".join(chunks)

    def list_all(self, prefix: str, delimiter: str | None = "/") -> ListPage:
        result = ListPage([], [])
        for page in self.list_pages(prefix, delimiter):
            result.objects.extend(page.objects)
            result.prefixes.extend(page.prefixes)
        return result
