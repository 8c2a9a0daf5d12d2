"""HTTP(S) origins: the only module that imports httpx.

An origin is where a name the store lacks can be fetched from (``setfattr -n user.cachefs.origin
-v https://go.dev/dl/ DIR``). Requests follow redirects (at most 10), have connect and read
timeouts, and are retried with backoff on 5xx answers and broken connections; an interrupted
download continues with a Range request when the origin supports it. 404 and 410 mean "not there".
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx

from .. import __version__
from ..errors import InvalidArgument, NotFound, StoreUnavailable
from ..store.retry import REQUEST, retry

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_REDIRECTS = 10
CHUNK = 1 << 20


def validate_url(url: str) -> str:
    """An origin URL must be http(s) with a host; anything else is EINVAL."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidArgument(f"origin {url!r} is not an http:// or https:// URL")
    return url.strip()


def url_for(base: str, relative: str) -> str:
    """``base`` + a relative path, each component percent-encoded; base's query kept."""
    parts = urllib.parse.urlsplit(base)
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    path += "/".join(urllib.parse.quote(p, safe="") for p in relative.split("/"))
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


@dataclasses.dataclass(frozen=True)
class OriginInfo:
    url: str
    size: int
    etag: str | None
    mtime: float | None
    ranges: bool


def _mtime(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


class OriginClient:
    def __init__(self, timeout: float) -> None:
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
            follow_redirects=True, max_redirects=MAX_REDIRECTS,
            headers={"User-Agent": f"cachefs/{__version__}", "Accept-Encoding": "identity"})

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _retrying(self, what: str, fn: Callable[[], Awaitable[httpx.Response]]) \
            -> httpx.Response:
        async def attempt() -> httpx.Response:
            try:
                response = await fn()
            except httpx.TooManyRedirects:
                raise StoreUnavailable(f"{what}: more than {MAX_REDIRECTS} redirects") from None
            except httpx.TransportError as e:
                raise _Transient(f"{what}: {type(e).__name__}: {e}") from None
            if response.status_code >= 500:
                raise _Transient(f"{what}: HTTP {response.status_code}")
            return response

        return await _retry(what, attempt)

    async def probe(self, url: str) -> OriginInfo | None:
        """Size and validators of ``url``; None if the origin says 404/410."""
        response = await self._retrying(f"HEAD {url}", lambda: self.client.head(url))
        if response.status_code in (405, 501) or (
                response.status_code == 200 and "content-length" not in response.headers):
            response = await self._range_probe(url)
        if response.status_code in (404, 410):
            return None
        if response.status_code not in (200, 206):
            raise StoreUnavailable(f"HEAD {url}: HTTP {response.status_code}")
        size = _size(response)
        if size is None:
            raise StoreUnavailable(f"{url}: the origin reports no size (no Content-Length "
                                   "and no Range support)")
        ranges = response.headers.get("accept-ranges", "").lower() == "bytes" or \
            response.status_code == 206
        return OriginInfo(str(response.url), size, response.headers.get("etag"),
                          _mtime(response.headers.get("last-modified")), ranges)

    async def probe_dir(self, url: str) -> bool:
        """Whether ``url`` (ending in '/') names a directory at the origin: any answer but
        404/410 means something is there (an index page, or a refused listing)."""
        response = await self._retrying(f"HEAD {url}", lambda: self.client.head(url))
        return response.status_code not in (404, 410)

    async def _range_probe(self, url: str) -> httpx.Response:
        async def get_first_byte() -> httpx.Response:
            async with self.client.stream("GET", url, headers={"Range": "bytes=0-0"}) as r:
                await r.aclose()
                return r

        return await self._retrying(f"GET {url}", get_first_byte)

    async def download(self, info: OriginInfo, sink: Callable[[int, bytes], Awaitable[None]],
                       ) -> None:
        """Stream the whole body into ``sink(offset, data)``, resuming where it broke."""
        received = 0

        async def attempt() -> None:
            nonlocal received
            headers = {}
            if received and info.ranges:
                headers["Range"] = f"bytes={received}-"
                if info.etag or info.mtime:
                    headers["If-Range"] = info.etag or email.utils.formatdate(info.mtime,
                                                                             usegmt=True)
            try:
                async with self.client.stream("GET", info.url, headers=headers) as response:
                    if response.status_code in (404, 410):
                        raise NotFound(f"{info.url}: HTTP {response.status_code}")
                    if response.status_code >= 500:
                        raise httpx.RemoteProtocolError(f"HTTP {response.status_code}")
                    if response.status_code not in (200, 206):
                        raise StoreUnavailable(f"GET {info.url}: HTTP {response.status_code}")
                    if response.status_code == 200:
                        received = 0  # the origin restarted from the beginning
                    async for chunk in response.aiter_raw(CHUNK):
                        await sink(received, chunk)
                        received += len(chunk)
            except httpx.TransportError as e:
                raise _Transient(f"GET {info.url}: {type(e).__name__}: {e}") from None
            if received != info.size:
                raise _Transient(f"GET {info.url}: body ended at {received} of {info.size} "
                                 "bytes")

        # A retry resumes with a Range request where the origin supports it.
        await _retry(f"GET {info.url}", attempt)


class _Transient(StoreUnavailable):
    """A 5xx answer, a broken connection or a short body: worth another attempt."""


#: the request policy, for the failures another attempt may cure
ORIGIN_REQUEST = dataclasses.replace(REQUEST, retryable=(_Transient,))


async def _retry(what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """``attempt`` by the origin's policy; the last failure is a plain StoreUnavailable."""
    try:
        return await retry(ORIGIN_REQUEST, what, attempt)
    except _Transient as e:
        raise StoreUnavailable(str(e)) from None


def _size(response: httpx.Response) -> int | None:
    content_range = response.headers.get("content-range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("content-length")
    if response.status_code == 200 and length and length.isdigit():
        return int(length)
    return None
