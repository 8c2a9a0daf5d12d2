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

import httpx
import trio

from .. import __version__
from ..errors import InvalidArgument, NotFound, StoreUnavailable

log = logging.getLogger(__name__)

ATTEMPTS = 5
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
        delay = 0.2
        for attempt in range(ATTEMPTS):
            try:
                response = await fn()
            except httpx.TooManyRedirects:
                raise StoreUnavailable(f"{what}: more than {MAX_REDIRECTS} redirects") from None
            except httpx.TransportError as e:
                error = f"{type(e).__name__}: {e}"
            else:
                if response.status_code < 500:
                    return response
                error = f"HTTP {response.status_code}"
            if attempt == ATTEMPTS - 1:
                raise StoreUnavailable(f"{what}: {error}")
            log.info("%s: %s; retrying in %.1fs", what, error, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

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
        delay = 0.2
        for attempt in range(ATTEMPTS):
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
                if received == info.size:
                    return
                error = f"body ended at {received} of {info.size} bytes"
            except httpx.TransportError as e:
                error = f"{type(e).__name__}: {e}"
            if attempt == ATTEMPTS - 1:
                raise StoreUnavailable(f"GET {info.url}: {error}")
            log.info("GET %s: %s; %s in %.1fs", info.url, error,
                     "resuming" if info.ranges and received else "retrying", delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _size(response: httpx.Response) -> int | None:
    content_range = response.headers.get("content-range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("content-length")
    if response.status_code == 200 and length and length.isdigit():
        return int(length)
    return None
