"""The fault proxy itself: transparent when idle (SigV4 survives it), and each fault does what
it says. Real sockets throughout: a small origin server here, and moto/SeaweedFS through boto3."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import random
import re
import threading
import time
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from .conftest import new_bucket
from .faultproxy import BUFFER_LIMIT, Fault, FaultProxy, Seen
from .servers import KEY_ID, SECRET, Moto, S3Server, SeaweedFS, free_port

DATA = random.Random(1234).randbytes(4 << 20)


class Origin:
    """An HTTP/1.1 origin with known bytes: /blob/N (Range too; ?hangup closes the connection
    after the response without saying so), /chunked/N, /eof/N (body ends at connection close),
    /short/N (announces N, sends half), /empty (204), PUT /echo (what arrived, as JSON)."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0
        self.lock = threading.Lock()
        origin = self

        class Handler(_OriginHandler):
            def setup(self) -> None:
                with origin.lock:
                    origin.connections += 1
                super().setup()

            def count(self) -> None:
                with origin.lock:
                    origin.requests += 1

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the proxy resets connections on purpose


class _OriginHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # a connection nobody closes cannot outlive the module for long

    def count(self) -> None:
        pass

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply(self, status: int, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self.count()
        kind, _, size = self.path.partition("?")[0].strip("/").partition("/")
        body = DATA[:int(size)] if size else b""
        if kind == "blob":
            self.blob(body)
            # Hang up without saying so: the proxy's next request on this connection fails.
            self.close_connection = self.path.endswith("?hangup")
        elif kind == "chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 10_000):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(body[i:i + 10_000]), body[i:i + 10_000]))
            self.wfile.write(b"0\r\n\r\n")
        elif kind == "eof":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
        elif kind == "short":
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:len(body) // 2])
            self.close_connection = True
        elif kind == "empty":
            self.send_response(204)
            self.end_headers()
        else:
            self.reply(404, b"")

    def blob(self, body: bytes) -> None:
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if not match:
            self.reply(200, body)
            return
        first = int(match[1])
        last = int(match[2]) if match[2] else len(body) - 1
        self.reply(206, body[first:last + 1],
                   [("Content-Range", f"bytes {first}-{last}/{len(body)}")])

    def do_PUT(self) -> None:
        self.count()
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            body = b"".join(self.chunks())
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.reply(200, json.dumps({
            "headers": list(self.headers.items()), "length": len(body),
            "sha256": hashlib.sha256(body).hexdigest()}).encode(),
            [("Content-Type", "application/json")])

    do_POST = do_PUT

    def chunks(self) -> Iterator[bytes]:
        while size := int(self.rfile.readline().split(b";")[0], 16):
            yield self.rfile.read(size)
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b""):
            pass


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.close()


@pytest.fixture
def proxy(origin: Origin) -> Iterator[FaultProxy]:
    with FaultProxy(origin.url) as p:
        yield p


def connect(proxy: FaultProxy, timeout: float = 10) -> http.client.HTTPConnection:
    host, port = proxy.url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=timeout)


def fetch(proxy: FaultProxy, path: str, method: str = "GET",
          timeout: float = 10) -> tuple[int, bytes]:
    with contextlib.closing(connect(proxy, timeout)) as conn:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()


def statuses(proxy: FaultProxy) -> list[int]:
    return [seen.status for seen in proxy.requests]


# Transparent forwarding.

def test_keepalive_range_head_204_chunked_and_eof_bodies(proxy: FaultProxy,
                                                         origin: Origin) -> None:
    upstream_before = origin.connections
    with contextlib.closing(connect(proxy)) as conn:
        def get(path: str, method: str = "GET", **headers: str) -> http.client.HTTPResponse:
            conn.request(method, path, headers=headers)
            return conn.getresponse()

        resp = get("/blob/3000000")
        assert resp.getheader("Content-Length") == "3000000"
        assert resp.read() == DATA[:3000000]
        resp = get("/blob/100000", Range="bytes=1000-1999")
        assert (resp.status, resp.getheader("Content-Range")) == (206, "bytes 1000-1999/100000")
        assert resp.read() == DATA[1000:2000]
        resp = get("/blob/5000", "HEAD")
        assert (resp.getheader("Content-Length"), resp.read()) == ("5000", b"")
        resp = get("/empty")
        assert (resp.status, resp.read()) == (204, b"")
        resp = get("/chunked/55555")
        assert resp.getheader("Transfer-Encoding") == "chunked"
        assert resp.read() == DATA[:55555]
        assert get("/blob/10").read() == DATA[:10]
        sock = conn.sock
        assert get("/eof/7777").read() == DATA[:7777]  # ends at EOF, so the connection goes
        assert sock is not None and conn.sock is None
    assert statuses(proxy) == [200, 206, 200, 204, 200, 200, 200]
    assert proxy.connections == 1
    assert origin.connections - upstream_before == 1  # kept alive upstream too


def test_headers_host_and_bodies_go_upstream_unchanged(proxy: FaultProxy) -> None:
    small, large = DATA[:1000], DATA[:BUFFER_LIMIT + 12345]  # buffered and streamed
    with contextlib.closing(connect(proxy)) as conn:
        for body in (small, large):
            conn.request("PUT", "/echo?x-id=PutObject&a=%2F", body=body, headers={
                "Host": "bucket.example.invalid:1234", "X-Amz-Meta-MiXed": "Value  two",
                "Expect": "100-continue"})
            resp = conn.getresponse()
            echo = json.loads(resp.read())
            assert resp.status == 200
            assert (echo["length"], echo["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
            assert ["Host", "bucket.example.invalid:1234"] in echo["headers"]
            assert ["X-Amz-Meta-MiXed", "Value  two"] in echo["headers"]
            assert [name for name, _ in echo["headers"]].count("Host") == 1
            assert "Expect" not in dict(echo["headers"])  # the proxy answered 100 Continue
        pieces = [DATA[i:i + 70_000] for i in range(0, 300_000, 70_000)]
        conn.request("POST", "/echo", body=iter(pieces), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})
        echo = json.loads(conn.getresponse().read())
        assert echo["sha256"] == hashlib.sha256(b"".join(pieces)).hexdigest()
        assert ["Transfer-Encoding", "chunked"] in echo["headers"]
    assert proxy.connections == 1


def test_a_kept_alive_upstream_connection_that_died_is_replaced(proxy: FaultProxy,
                                                               origin: Origin) -> None:
    before = origin.connections
    with contextlib.closing(connect(proxy)) as conn:
        for path in ("/blob/10?hangup", "/blob/20?hangup", "/echo"):
            if path == "/echo":
                conn.request("PUT", path, body=b"x" * 100)  # a small body: replayed
            else:
                conn.request("GET", path)
            assert conn.getresponse().read()[:20] in (DATA[:10], DATA[:20], b'{"headers": [["Host"')
    assert statuses(proxy) == [200, 200, 200]
    assert origin.connections - before == 3


def test_a_short_upstream_body_stays_short(proxy: FaultProxy) -> None:
    with contextlib.closing(connect(proxy)) as conn:
        conn.request("GET", "/short/10000")
        with pytest.raises(http.client.IncompleteRead) as e:
            conn.getresponse().read()
    assert e.value.partial == DATA[:5000]


def test_an_unreachable_upstream_resets_the_client() -> None:
    with FaultProxy(f"http://127.0.0.1:{free_port()}") as proxy:
        with pytest.raises(ConnectionError):
            fetch(proxy, "/blob/10")
        assert proxy.requests == [Seen("GET", "/blob/10", 0)]


# Faults.

def test_status_faults_answer_without_upstream(proxy: FaultProxy, origin: Origin) -> None:
    before = origin.requests
    proxy.add(Fault(path="/blob/1$", status=500))
    proxy.add(Fault(path="/blob/2$", status=503))
    proxy.add(Fault(path="/blob/3$", status=403, code="AccessDenied"))
    with contextlib.closing(connect(proxy)) as conn:
        for path, status, code in (("/blob/1", 500, "InternalError"), ("/blob/2", 503, "SlowDown"),
                                   ("/blob/3", 403, "AccessDenied")):
            conn.request("GET", path)
            resp = conn.getresponse()
            assert resp.status == status
            assert f"<Error><Code>{code}</Code>" in resp.read().decode()
        conn.request("HEAD", "/blob/1")
        assert conn.getresponse().read() == b""
        conn.request("PUT", "/blob/2", body=DATA[:50_000])  # drained: the connection stays
        resp = conn.getresponse()
        assert (resp.status, resp.read()[:5]) == (503, b"<?xml")
        conn.request("GET", "/blob/4")
        assert conn.getresponse().read() == DATA[:4]
    assert statuses(proxy) == [500, 503, 403, 500, 503, 200]
    assert proxy.connections == 1
    assert origin.requests - before == 1


def test_after_times_method_and_order(proxy: FaultProxy) -> None:
    first = proxy.add(Fault(path=r"^/blob/10$", after=2, times=2, status=500))
    proxy.add(Fault(path=r"^/blob/10$", method="HEAD", status=404))
    proxy.add(Fault(path=r"^/blob/10$", status=503))  # shadowed while `first` applies
    codes = [fetch(proxy, "/blob/10")[0] for _ in range(6)]
    assert codes == [503, 503, 500, 500, 503, 503]
    assert (first.matched, first.applied) == (6, 2)
    assert fetch(proxy, "/blob/10", "HEAD")[0] == 404
    assert fetch(proxy, "/blob/11")[0] == 200
    proxy.clear()
    assert fetch(proxy, "/blob/10") == (200, DATA[:10])


def test_counting_is_exact_under_concurrency(proxy: FaultProxy) -> None:
    fault = proxy.add(Fault(path="/blob/", times=25, status=503))
    codes: list[int] = []

    def client() -> None:
        for _ in range(10):
            codes.append(fetch(proxy, "/blob/100")[0])

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] * 55 + [503] * 25
    assert (fault.matched, fault.applied) == (80, 25)


def test_delay(proxy: FaultProxy) -> None:
    proxy.add(Fault(path="/blob/", delay=0.5, times=1))
    start = time.monotonic()
    assert fetch(proxy, "/blob/100") == (200, DATA[:100])
    assert time.monotonic() - start >= 0.5
    start = time.monotonic()
    fetch(proxy, "/blob/100")
    assert time.monotonic() - start < 0.4


def test_stall_times_the_client_out(proxy: FaultProxy) -> None:
    proxy.add(Fault(path="/blob/", stall=True))
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        fetch(proxy, "/blob/100", timeout=1)
    assert 0.9 < time.monotonic() - start < 3
    assert proxy.requests == [Seen("GET", "/blob/100", 0)]


def test_close_is_prompt_during_a_stall_and_with_idle_connections(origin: Origin) -> None:
    proxy = FaultProxy(origin.url)
    idle = connect(proxy)
    idle.request("GET", "/blob/10")
    assert idle.getresponse().read() == DATA[:10]  # kept alive, now idle in the proxy
    proxy.add(Fault(stall=True))
    errors: list[BaseException] = []

    def stalled() -> None:
        try:
            fetch(proxy, "/blob/10", timeout=30)
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=stalled)
    thread.start()
    deadline = time.monotonic() + 5
    while len(proxy.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.requests[-1].status == 0
    start = time.monotonic()
    proxy.close()
    assert time.monotonic() - start < 1
    thread.join(5)
    assert isinstance(errors[0], ConnectionError)  # told at once, not after 30 s
    idle.close()
    with pytest.raises(ConnectionError):
        fetch(proxy, "/blob/10")
    proxy.close()  # twice is fine


def read_fully(resp: http.client.HTTPResponse, first: int) -> bytes:
    data = b""
    while len(data) < first:
        block = resp.read(first - len(data))
        assert block
        data += block
    return data


def test_drop_after_delivers_n_bytes_then_resets(proxy: FaultProxy) -> None:
    proxy.add(Fault(path="/blob/", drop_after=1000, times=2))
    proxy.add(Fault(path="/chunked/", drop_after=25_000, times=1))
    for path, n in (("/blob/200000", 1000), ("/blob/500", 500), ("/chunked/60000", 25_000)):
        with contextlib.closing(connect(proxy)) as conn:
            conn.request("GET", path)
            resp = conn.getresponse()
            assert read_fully(resp, n) == DATA[:n]
            if n == 500:  # not longer than drop_after: relayed whole
                assert resp.read() == b""
            else:
                with pytest.raises((ConnectionError, http.client.IncompleteRead)):
                    resp.read()


def test_truncate_announces_more_than_it_sends(proxy: FaultProxy) -> None:
    proxy.add(Fault(path="/blob/", truncate=5000))
    with contextlib.closing(connect(proxy)) as conn:
        conn.request("GET", "/blob/100000")
        resp = conn.getresponse()
        assert resp.getheader("Content-Length") == "100000"
        with pytest.raises(http.client.IncompleteRead) as e:
            resp.read()
    assert (e.value.partial, e.value.expected) == (DATA[:5000], 95000)


def test_corrupt_at_flips_one_byte(proxy: FaultProxy) -> None:
    proxy.add(Fault(path="/blob/", corrupt_at=300_000, times=1))
    proxy.add(Fault(path="/chunked/", corrupt_at=0, times=1))
    proxy.add(Fault(path="/eof/", corrupt_at=10**9, times=1))
    for path, offset in (("/blob/1000000", 300_000), ("/chunked/30000", 0), ("/eof/100", None)):
        status, body = fetch(proxy, path)
        expected = DATA[:len(body)]
        assert (status, len(body)) == (200, int(path.rsplit("/", 1)[1]))
        diff = [i for i in range(len(body)) if body[i] != expected[i]]
        assert diff == ([] if offset is None else [offset])
        if offset is not None:
            assert body[offset] == expected[offset] ^ 0xFF


def test_reset(proxy: FaultProxy) -> None:
    proxy.add(Fault(method="GET", reset=True, times=1))
    with pytest.raises(ConnectionError):
        fetch(proxy, "/blob/10")
    assert fetch(proxy, "/blob/10") == (200, DATA[:10])
    assert statuses(proxy) == [0, 200]


def test_conflicting_actions_are_refused() -> None:
    cases: list[dict[str, Any]] = [
        {"stall": True, "status": 500}, {"drop_after": 1, "truncate": 1},
        {"reset": True, "corrupt_at": 3}, {"status": 200}, {"times": -1}]
    for bad in cases:
        with pytest.raises(ValueError):
            Fault(**bad)
    Fault(delay=1, truncate=10, corrupt_at=3)


# Through boto3, against real S3 servers.

def s3_client(endpoint: str, secret: str = SECRET, **config: Any) -> Any:
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=KEY_ID, aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                      request_checksum_calculation="when_required",
                      response_checksum_validation="when_required", **config))


@pytest.fixture(params=["moto", "seaweed"])
def s3(request: pytest.FixtureRequest) -> S3Server:
    server: S3Server = request.getfixturevalue(request.param)
    return server


@pytest.mark.s3
def test_boto3_through_the_proxy(s3: S3Server) -> None:
    bucket = new_bucket(s3)
    big = DATA * 3  # 12 MiB: two multipart parts, each sent after `Expect: 100-continue`
    with FaultProxy(s3.endpoint) as proxy, contextlib.closing(s3_client(proxy.url)) as client:
        client.put_object(Bucket=bucket, Key="small", Body=b"hello")
        client.put_object(Bucket=bucket, Key="six", Body=io.BytesIO(DATA + DATA[:2 << 20]))
        client.upload_fileobj(io.BytesIO(big), bucket, "big", Config=TransferConfig(
            multipart_threshold=8 << 20, multipart_chunksize=8 << 20, use_threads=False))
        assert client.head_object(Bucket=bucket, Key="big")["ContentLength"] == len(big)
        assert client.get_object(Bucket=bucket, Key="small")["Body"].read() == b"hello"
        assert client.get_object(Bucket=bucket, Key="six")["Body"].read() == DATA + DATA[:2 << 20]
        got = client.get_object(Bucket=bucket, Key="big")["Body"].read()
        assert hashlib.sha256(got).digest() == hashlib.sha256(big).digest()
        part = client.get_object(Bucket=bucket, Key="big", Range="bytes=5000000-5000099")
        assert part["Body"].read() == big[5000000:5000100]
        seen = proxy.requests
        assert [s.method for s in seen].count("PUT") == 4  # two objects, two parts
        assert all(200 <= s.status < 300 for s in seen)
        assert proxy.connections < len(seen)  # connections were reused


@pytest.mark.s3
def test_sigv4_is_checked_through_the_proxy(seaweed: SeaweedFS) -> None:
    """SeaweedFS checks signatures (moto does not): a good one passes, a bad one fails."""
    bucket = new_bucket(seaweed)
    with FaultProxy(seaweed.endpoint) as proxy:
        with contextlib.closing(s3_client(proxy.url)) as good:
            good.put_object(Bucket=bucket, Key="k", Body=io.BytesIO(b"signed"))
            assert good.get_object(Bucket=bucket, Key="k")["Body"].read() == b"signed"
        with contextlib.closing(s3_client(proxy.url, secret="wrong")) as bad, \
                pytest.raises(ClientError, match="SignatureDoesNotMatch"):
            bad.get_object(Bucket=bucket, Key="k")


@pytest.mark.s3
def test_boto3_sees_each_fault(moto: Moto) -> None:
    bucket = new_bucket(moto)
    direct = moto.client()
    direct.put_object(Bucket=bucket, Key="obj", Body=DATA[:1 << 20])
    direct.close()
    once: dict[str, Any] = {"retries": {"total_max_attempts": 1}, "read_timeout": 1,
                            "connect_timeout": 1}
    with FaultProxy(moto.endpoint) as proxy, \
            contextlib.closing(s3_client(proxy.url)) as retrying, \
            contextlib.closing(s3_client(proxy.url, **once)) as client:
        def get() -> bytes:
            body: bytes = client.get_object(Bucket=bucket, Key="obj")["Body"].read()
            return body

        proxy.add(Fault(method="GET", status=503, times=1))
        assert retrying.get_object(Bucket=bucket, Key="obj")["Body"].read() == DATA[:1 << 20]
        assert statuses(proxy)[-2:] == [503, 200]  # boto3 retried SlowDown
        proxy.add(Fault(method="PUT", status=500, times=1))
        with pytest.raises(ClientError, match="InternalError"):
            client.put_object(Bucket=bucket, Key="new", Body=io.BytesIO(DATA[:100_000]))
        proxy.clear()
        proxy.add(Fault(method="GET", corrupt_at=123_456, times=1))
        body = get()
        assert len(body) == 1 << 20 and body != DATA[:1 << 20]  # silent: nothing checks it
        proxy.add(Fault(method="GET", truncate=1000, times=1))
        with pytest.raises(ResponseStreamingError, match="IncompleteRead"):
            get()
        proxy.add(Fault(method="GET", drop_after=1000, times=1))
        with pytest.raises(ResponseStreamingError, match="ConnectionResetError"):
            get()
        proxy.add(Fault(method="GET", reset=True, times=1))
        with pytest.raises(ConnectionClosedError):
            get()
        proxy.add(Fault(method="GET", stall=True, times=1))
        start = time.monotonic()
        with pytest.raises(ReadTimeoutError):
            get()
        assert time.monotonic() - start < 3
        assert get() == DATA[:1 << 20]

