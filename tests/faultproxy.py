"""A fault-injecting HTTP/1.1 reverse proxy that tests put between cachefs and its servers.

Failures are tested through the network, not with mocks: the proxy forwards every request
unchanged (headers too, Host included, so SigV4 signatures still validate; only `Expect:
100-continue` is answered by the proxy itself) and, when a `Fault` matches, delays, stalls,
refuses, cuts, corrupts or resets instead. Client connections are kept alive independently of
upstream ones, as an S3 endpoint's would be. Standard library only; one thread per client
connection; bodies are streamed; `close()` never hangs.

    with FaultProxy(server.endpoint) as proxy:
        proxy.add(Fault(method="GET", path=r"/bucket/big", status=503, times=1))
        ...  # point cachefs at proxy.url
        assert proxy.requests[0].status == 503
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import logging
import random
import re
import socket
import struct
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, NamedTuple, cast
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

log = logging.getLogger(__name__)

# Bodies move in blocks of this size: large enough that a 256 MiB object costs ~1000 system
# calls, small enough that the proxy never holds more than a few blocks per connection.
CHUNK = 256 << 10
# Request bodies up to this size are read before they are sent, so a kept-alive upstream
# connection that the server closed meanwhile can be retried on a fresh one. Larger (and
# chunked) bodies are streamed, always on a fresh connection, since they cannot be replayed.
BUFFER_LIMIT = 1 << 20
# How long close() waits for connection threads once their sockets are shut down.
JOIN_TIMEOUT = 5.0
# How long an abortive close waits for the bytes already written to leave, so that a reset
# after N bytes really delivers those N bytes first.
DRAIN_TIMEOUT = 1.0

# Response headers that describe the upstream connection, not the response.
HOP_BY_HOP = frozenset({"connection", "keep-alive"})

S3_ERROR_CODES = {
    400: "InvalidRequest", 403: "AccessDenied", 404: "NoSuchKey", 409: "OperationAborted",
    429: "SlowDown", 500: "InternalError", 501: "NotImplemented", 503: "SlowDown",
}


@dataclass(eq=False)
class Fault:
    """What to do to which requests. Unset matchers match everything.

    `path` is a regex searched in the request target (path and query string). The first
    `after` matching requests pass untouched; then the fault applies to `times` of them
    (None: all). A request a fault passes over goes on to the next fault.

    - `delay`: wait this many seconds, then do the rest (combines with any action).
    - `stall`: never answer; hold the connection until the client or close() ends it.
    - `status`: answer an S3 XML error (`code` overrides the <Code>) without asking upstream.
    - `reset`: close with a TCP RST as soon as the request head is read; no response.
    - `drop_after=N`: relay the head and N body bytes, then RST (the client reads the N bytes,
      then gets ECONNRESET).
    - `truncate=N`: relay the head (its Content-Length unchanged) and N body bytes, then a
      clean FIN (the client gets EOF short of the announced length).
    - `corrupt_at=N`: flip every bit of body byte N (counted in this response's body, so from
      the start of a Range), length unchanged; combines with drop_after or truncate.

    A body no longer than N is relayed whole by drop_after/truncate; body actions do nothing
    to bodiless responses (HEAD, 204, 304) but still count as applied.
    """

    method: str | None = None
    path: str | None = None
    after: int = 0
    times: int | None = None
    delay: float = 0.0
    stall: bool = False
    status: int | None = None
    code: str | None = None
    drop_after: int | None = None
    truncate: int | None = None
    corrupt_at: int | None = None
    reset: bool = False
    #: act on each eligible request with this probability (seeded, so a run can be replayed)
    probability: float = 1.0
    seed: int = 0
    # Counters, changed under the proxy's lock: requests that matched, and those acted on.
    matched: int = field(default=0, init=False)
    applied: int = field(default=0, init=False)
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False)
    _random: random.Random = field(default_factory=random.Random, init=False, repr=False)

    def __post_init__(self) -> None:
        terminal = [self.stall, self.status is not None, self.reset]
        cuts = [self.drop_after is not None, self.truncate is not None]
        if sum(terminal) + sum(cuts) > 1 or (any(terminal) and self.corrupt_at is not None):
            raise ValueError("a fault takes at most one of stall/status/reset/drop_after/"
                             "truncate; corrupt_at combines only with drop_after/truncate")
        for name in ("after", "times", "delay", "drop_after", "truncate", "corrupt_at"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative")
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError("status must be an HTTP error (400-599)")
        self._regex = re.compile(self.path) if self.path is not None else None
        self._random = random.Random(self.seed)

    def _take(self, method: str, target: str) -> bool:
        """Count a request; True if this fault acts on it (the proxy holds its lock)."""
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if self._regex is not None and not self._regex.search(target):
            return False
        self.matched += 1
        if self.matched <= self.after:
            return False
        if self.times is not None and self.applied >= self.times:
            return False
        if self.probability < 1.0 and self._random.random() >= self.probability:
            return False
        self.applied += 1
        return True


class Seen(NamedTuple):
    """One request as the proxy handled it; status 0 means no response was sent."""

    method: str
    path: str
    status: int


class FaultProxy:
    """A reverse proxy to `upstream` on 127.0.0.1, serving from a background thread."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, not {upstream!r}")
        self.upstream = upstream
        self.upstream_addr = (parts.hostname, parts.port or 80)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._faults: list[Fault] = []
        self._requests: list[Seen] = []
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._connections = 0
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._serving = threading.Thread(target=self._server.serve_forever,
                                         kwargs={"poll_interval": 0.05},
                                         name=f"faultproxy {self.url}", daemon=True)
        self._serving.start()

    def add(self, fault: Fault) -> Fault:
        """Append a fault (checked after those already added); returned for its counters."""
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        """Remove every fault: from now on, requests are forwarded untouched."""
        with self._lock:
            self._faults.clear()

    @property
    def requests(self) -> list[Seen]:
        """A copy of the requests handled so far, in the order they were answered."""
        with self._lock:
            return list(self._requests)

    @property
    def connections(self) -> int:
        """Client connections accepted so far; fewer than requests means keep-alive works."""
        with self._lock:
            return self._connections

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Stop accepting, shut every connection down (stalls included), join the threads."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
        self._server.shutdown()
        self._server.server_close()
        self._serving.join(JOIN_TIMEOUT)
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            _shutdown(sock)
        deadline = time.monotonic() + JOIN_TIMEOUT
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            log.warning("faultproxy: %d connection threads did not stop: %s", len(stuck), stuck)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # Used by the connection threads.

    def _match(self, method: str, target: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault._take(method, target):
                    log.info("faultproxy: %s %s: %s", method, target, fault)
                    return fault
        return None

    def _record(self, method: str, target: str, status: int) -> None:
        with self._lock:
            self._requests.append(Seen(method, target, status))

    def _track(self, sock: socket.socket, thread: threading.Thread | None = None) -> None:
        """Remember a socket so close() can shut it down; a late one is shut down at once."""
        with self._lock:
            self._sockets.add(sock)
            if thread is not None:
                self._threads.add(thread)
                self._connections += 1
            late = self._closed.is_set()
        if late:
            _shutdown(sock)

    def _untrack(self, sock: socket.socket, thread: threading.Thread | None = None) -> None:
        with self._lock:
            self._sockets.discard(sock)
            if thread is not None:
                self._threads.discard(thread)


def _shutdown(sock: socket.socket) -> None:
    """Wake whoever blocks on `sock` (reads return EOF); the owner still closes it."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _wait_sent(sock: socket.socket) -> None:
    """Wait until the kernel has sent and had acknowledged what was written (Linux only)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    buf = bytearray(4)
    while time.monotonic() < deadline:
        try:
            fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf)  # == SIOCOUTQ on Linux
        except OSError:
            return
        if struct.unpack("i", buf)[0] == 0:
            return
        time.sleep(0.001)


class _Server(ThreadingHTTPServer):
    # boto3 opens up to max_pool_connections at once; a backlog of 5 would drop SYNs and
    # add one-second retransmit delays that look like injected faults.
    request_queue_size = 128
    daemon_threads = True
    block_on_close = False  # close() joins with a timeout instead
    proxy: FaultProxy

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(target=self._serve_connection, args=(request, client_address),
                                  name=f"faultproxy conn {client_address[1]}", daemon=True)
        self.proxy._track(request, thread)
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self.proxy._untrack(request, threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("faultproxy: connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    """One client connection: any number of requests, each forwarded or faulted."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    _upstream: http.client.HTTPConnection | None = None
    _upstream_sock: socket.socket | None = None
    _continued = False
    _answered = False

    @property
    def proxy(self) -> FaultProxy:
        return cast(_Server, self.server).proxy

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("faultproxy: " + format, *args)

    def handle_expect_100(self) -> bool:
        # Answer `100 Continue` only once the body is really wanted (see _continue), so a
        # status or reset fault can refuse a PUT before its body is sent, as S3 does.
        return True

    def finish(self) -> None:
        self._drop_upstream()
        super().finish()

    def _proxy_request(self) -> None:
        self._continued = False
        fault = self.proxy._match(self.command, self.path)
        try:
            self._serve(fault)
        except (OSError, ValueError, http.client.HTTPException) as e:
            # Upstream unreachable or broken mid-response, client gone, or a malformed body:
            # the client sees its connection reset, as it would with the server itself.
            log.info("faultproxy: %s %s failed: %r", self.command, self.path, e)
            if not self._answered:
                self.proxy._record(self.command, self.path, 0)
            self._reset()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_OPTIONS = do_PATCH = _proxy_request

    def _serve(self, fault: Fault | None) -> None:
        self._answered = False
        if fault is not None and fault.delay and self.proxy._closed.wait(fault.delay):
            raise ConnectionAbortedError("proxy closed during a delay")
        if fault is not None and fault.reset:
            self._answer(0)
            self._reset()
        elif fault is not None and fault.stall:
            self._answer(0)
            self._stall()
        elif fault is not None and fault.status is not None:
            self._refuse(fault.status, fault.code)
        else:
            self._relay(self._forward(), fault)

    def _answer(self, status: int) -> None:
        self._answered = True
        self.proxy._record(self.command, self.path, status)

    # Faults that answer without upstream.

    def _stall(self) -> None:
        """Hold the connection, discarding what the client sends, until either side closes."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            while self.connection.recv(CHUNK):
                pass

    def _reset(self) -> None:
        """Close abortively (RST) once what was already written has left."""
        self.close_connection = True
        self._drop_upstream()
        sock = self.connection
        with contextlib.suppress(OSError):
            _wait_sent(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()  # drops the file's reference, so close() below is the real one
            sock.close()

    def _refuse(self, status: int, code: str | None) -> None:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
            f"<Code>{escape(code or S3_ERROR_CODES.get(status, 'InternalError'))}</Code>"
            "<Message>injected by faultproxy</Message>"
            f"<Resource>{escape(self.path)}</Resource>"
            "<RequestId>faultproxy</RequestId></Error>").encode()
        if self._has_body() and not self._expects_continue():
            for _ in self._body():
                pass  # read and drop it, so the connection stays usable
        elif self._has_body():
            self.close_connection = True  # the body was never sent: the stream is unusable
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Error"
        head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/xml",
                f"Content-Length: {len(body)}", "x-amz-request-id: faultproxy"]
        if self.close_connection:
            head.append("Connection: close")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if self.command != "HEAD":
            self.wfile.write(body)
        self._answer(status)

    # Forwarding the request.

    def _forward(self) -> http.client.HTTPResponse:
        """Send the request upstream and return its response (headers read, body not)."""
        if self._is_chunked() or self._length() > BUFFER_LIMIT:
            self._drop_upstream()
            conn, _ = self._connect()
            self._send_head(conn)
            self._continue()
            for block in self._body():
                conn.send(block)
            return conn.getresponse()
        self._continue()
        body = b"".join(self._body())
        conn, reused = self._connect()
        try:
            return self._round_trip(conn, body)
        except ConnectionError:
            self._drop_upstream()
            if not reused or self.proxy.closed:
                raise
            log.debug("faultproxy: kept-alive upstream connection was closed; retrying")
        conn, _ = self._connect()
        return self._round_trip(conn, body)

    def _round_trip(self, conn: http.client.HTTPConnection,
                    body: bytes) -> http.client.HTTPResponse:
        self._send_head(conn)
        if body:
            conn.send(body)
        return conn.getresponse()

    def _send_head(self, conn: http.client.HTTPConnection) -> None:
        # Headers go out exactly as received (Host too: SigV4 signs it), except Expect,
        # which this proxy answered itself.
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for name, value in self.headers.items():
            if name.lower() != "expect":
                conn.putheader(name, value)
        conn.endheaders()

    def _connect(self) -> tuple[http.client.HTTPConnection, bool]:
        """The kept-alive upstream connection of this client connection, or a new one."""
        if self._upstream is not None:
            return self._upstream, True
        conn = http.client.HTTPConnection(*self.proxy.upstream_addr)
        conn.connect()
        assert conn.sock is not None
        self._upstream, self._upstream_sock = conn, conn.sock
        self.proxy._track(conn.sock)
        return conn, False

    def _drop_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
        if self._upstream_sock is not None:
            self.proxy._untrack(self._upstream_sock)
        self._upstream = self._upstream_sock = None

    # The request body.

    def _is_chunked(self) -> bool:
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower()

    def _length(self) -> int:
        value = self.headers.get("Content-Length")
        if value is None:
            return 0
        length = int(value)
        if length < 0:
            raise ValueError(f"bad Content-Length {value!r}")
        return length

    def _has_body(self) -> bool:
        return self._is_chunked() or self._length() > 0

    def _expects_continue(self) -> bool:
        return (self.headers.get("Expect", "").lower() == "100-continue"
                and self.request_version != "HTTP/1.0")

    def _continue(self) -> None:
        if self._has_body() and self._expects_continue() and not self._continued:
            self._continued = True
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _body(self) -> Iterator[bytes]:
        """The request body, framed for upstream as it came (chunked stays chunked)."""
        if self._is_chunked():
            yield from self._chunked_body()
            return
        remaining = self._length()
        while remaining:
            block = self.rfile.read(min(CHUNK, remaining))
            if not block:
                raise ConnectionAbortedError("client closed the connection mid-body")
            remaining -= len(block)
            yield block

    def _chunked_body(self) -> Iterator[bytes]:
        while True:
            line = self.rfile.readline(1 << 16)
            size = int(line.split(b";")[0].strip(), 16)  # ValueError on garbage or EOF
            if size == 0:
                break
            yield b"%x\r\n" % size
            while size:
                block = self.rfile.read(min(CHUNK, size))
                if not block:
                    raise ConnectionAbortedError("client closed the connection mid-chunk")
                size -= len(block)
                yield block
            if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise ValueError("chunk not followed by CRLF")
            yield b"\r\n"
        trailers = b"0\r\n"
        while (line := self.rfile.readline(1 << 16)) not in (b"\r\n", b"\n", b""):
            trailers += line
        yield trailers + b"\r\n"

    # Relaying the response.

    def _relay(self, resp: http.client.HTTPResponse, fault: Fault | None) -> None:
        """Relay the response. Its headers go on unchanged but for the hop-by-hop ones: the
        client connection is this proxy's, kept alive even when the upstream closes its own
        after each response (moto does), as an S3 endpoint would."""
        bodyless = self.command == "HEAD" or resp.status in (204, 304) or resp.status < 200
        if not bodyless and not resp.chunked and resp.length is None:
            self.close_connection = True  # the body ends where the connection does
        head = [f"HTTP/1.1 {resp.status} {resp.reason}"]
        head += [f"{name}: {value}" for name, value in resp.getheaders()
                 if name.lower() not in HOP_BY_HOP]
        if self.close_connection:
            head.append("Connection: close")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        self._answer(resp.status)
        try:
            if bodyless or self._relay_body(resp, fault):
                return
            if resp.chunked:
                self.wfile.write(b"0\r\n\r\n")
        finally:
            resp.close()
            if resp.will_close:
                self._drop_upstream()

    def _relay_body(self, resp: http.client.HTTPResponse, fault: Fault | None) -> bool:
        """Stream the body, applying body faults; True if the connection was cut."""
        cut = fault.drop_after if fault is not None and fault.drop_after is not None else (
            fault.truncate if fault is not None else None)
        corrupt = fault.corrupt_at if fault is not None else None
        sent = 0
        while cut is None or sent < cut:
            block = resp.read1(CHUNK if cut is None else min(CHUNK, cut - sent))
            if not block:
                break
            if corrupt is not None and sent <= corrupt < sent + len(block):
                flipped = bytearray(block)
                flipped[corrupt - sent] ^= 0xFF
                block = bytes(flipped)
            self._write_body(block, resp.chunked)
            sent += len(block)
        else:
            if resp.read1(1):  # there was more than `cut` bytes: cut it here
                self._drop_upstream()
                if fault is not None and fault.drop_after is not None:
                    self._reset()
                else:
                    self.close_connection = True  # a clean FIN after a short body
                return True
        if resp.length:  # upstream ended early: end the client's body as short, with a FIN
            self._drop_upstream()
            self.close_connection = True
            return True
        return False

    def _write_body(self, block: bytes, chunked: bool) -> None:
        # http.client decoded a chunked body; it goes on chunked, as the headers announce.
        self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
