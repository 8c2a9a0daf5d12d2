"""A real HTTP origin on 127.0.0.1 that tests can tell to misbehave.

It serves files with Content-Length, ETag, Last-Modified and Range support, and can redirect,
answer 404/410/500, stall, throttle, hold a body after its first bytes, or cut a response short.
"""

from __future__ import annotations

import collections
import contextlib
import email.utils
import hashlib
import http.server
import re
import socket
import threading
import time
from typing import Any


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        origin = self.server.origin
        path = self.path.split("?", 1)[0]
        with origin.lock:
            origin.requests.append((self.command, self.path, self.headers.get("Range")))
            origin.counts[(self.command, path)] += 1
            status = origin.fail.get(path, [None]).pop(0) if origin.fail.get(path) else None
            cut = origin.cut[path].pop(0) if not head and origin.cut.get(path) else None
        if path in origin.stall:
            time.sleep(origin.stall[path])
        if path in origin.redirects:
            self.send_response(302)
            self.send_header("Location", origin.redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if status is None and path.endswith("/") and any(
                f.startswith(path) for f in origin.files):
            body = b"<html>index</html>\n"  # like a file server's directory index
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)
            return
        if status is not None or path not in origin.files:
            code = status or origin.gone.get(path, 404)
            body = b"nope\n"
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)
            return
        data = origin.files[path]
        etag = '"' + hashlib.md5(data).hexdigest() + '"'
        start, end = 0, len(data)
        ranged = self.headers.get("Range") if origin.ranges else None
        if ranged and self.headers.get("If-Range") not in (None, etag):
            ranged = None
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", ranged or "")
        if match:
            start = int(match.group(1))
            end = int(match.group(2)) + 1 if match.group(2) else len(data)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start))
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(1_700_000_000, usegmt=True))
        if origin.ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if head:
            return
        body = memoryview(data)[start:end]
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        step = 256 << 10
        for i in range(0, len(body), step):
            if i == origin.hold_after and path in origin.hold:
                self.wfile.flush()
                origin.hold[path].wait(60)
            self.wfile.write(body[i:i + step])
            if origin.rate:
                time.sleep(step / origin.rate)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    origin: Origin


class Origin:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.gone: dict[str, int] = {}
        self.fail: dict[str, list[int]] = {}
        self.cut: dict[str, list[int]] = {}
        self.stall: dict[str, float] = {}
        #: path -> the rest of its body is sent once this is set (hold_after bytes at once:
        #: more than a reader's first read and the kernel's readahead)
        self.hold: dict[str, threading.Event] = {}
        self.hold_after = 4 << 20
        self.rate = 0.0  # bytes per second, 0 = as fast as possible
        self.ranges = True
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, str | None]] = []
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.origin = self
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def gets(self, path: str) -> int:
        return self.counts[("GET", path)]

    def close(self) -> None:
        self.stall.clear()
        for event in self.hold.values():
            event.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
