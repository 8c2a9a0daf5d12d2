#!/usr/bin/env python3
"""A shaped network between the benchmark and its S3 server: latency from a proxy, rate from tc.

SeaweedFS on loopback answers in ~0.1 ms at several GB/s; a CI runner's S3 is milliseconds away
behind a link of a Gbit/s or less, which is where per-request designs (one GET per small file)
and bulk designs (one tar.zst) part ways. ``--network ci|far`` of ``scripts/bench.py`` puts the
server behind such a link:

- **Latency**: this kernel has no netem, so a TCP proxy (``DelayProxy``, run as its own process
  so its CPU is neither in the measured processes nor under our GIL) holds each chunk it reads
  for the one-way delay before writing it on, in each direction. Chunks are timestamped on
  arrival and sent when due, so the delay adds latency, not a throughput cap: a window of data
  is in flight per connection, as on a real path. A new connection's first bytes also wait one
  round trip, the TCP handshake a real link would cost.
- **Rate**: an HTB qdisc on ``lo`` with two classes (to and from the proxy's port, matched by
  u32 on sport/dport), so each direction gets the full rate like a full-duplex link. Traffic
  that matches no filter (everything else on the machine) bypasses HTB untouched.

    python scripts/benchnet.py proxy --target 127.0.0.1:8333 --delay-ms 5     # the proxy
    python scripts/benchnet.py check --network far [--mb 200]                 # iperf-like

Only the standard library: the tests import this without boto3.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

HERE = Path(__file__).resolve()


@dataclass(frozen=True)
class Link:
    """One-way delay and the rate of each direction."""

    delay_s: float
    rate_mbit: int

    def describe(self) -> str:
        return (f"{self.delay_s * 1e3:g} ms each way (RTT {2 * self.delay_s * 1e3:g} ms), "
                f"{self.rate_mbit} Mbit/s each direction")


# ``ci``: an S3 endpoint in the runner's own region; ``far``: a bucket in another region.
NETWORKS: dict[str, Link | None] = {"lo": None, "ci": Link(0.005, 1000), "far": Link(0.020, 200)}

# Bytes a connection may hold in the proxy per direction before it stops reading: a TCP window.
# Linux's default tcp_rmem maximum is 6 MiB, so a real connection's window is of this order; at
# 40 ms RTT 4 MiB still allows 800 Mbit/s on one connection, more than ``far``'s rate.
WINDOW = 4 << 20
# The proxy runs niced so that, on 2 shared cores, the systems measured get the CPU first; nice
# 5 still gives it a third of a core under contention, several times what 1 Gbit/s needs.
PROXY_NICE = 5
DEVICE = "lo"
# Our HTB's handle: removal deletes a root qdisc with this handle only, never someone else's.
HANDLE = "ca5e"


# -- the delaying proxy (runs in its own process) ---------------------------------------------


class _Direction:
    """Bytes going one way through one proxied connection: a queue of (due time, chunk)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float, src: _Side,
                 not_before: float = 0.0) -> None:
        self.loop, self.delay, self.src = loop, delay, src
        self.dst: _Side | None = None
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.queued = 0
        self.timer: asyncio.TimerHandle | None = None
        self.not_before = not_before
        self.done = False

    def push(self, data: bytes | None) -> None:
        """``None`` is EOF: it travels the same delay behind the last chunk."""
        due = max(self.loop.time(), self.not_before) + self.delay
        self.queue.append((due, data))
        self.queued += len(data or b"")
        if self.queued > WINDOW:
            self.src.pause()
        self.schedule()

    def schedule(self) -> None:
        if self.timer is None and self.queue and self.dst is not None:
            self.timer = self.loop.call_at(self.queue[0][0], self.flush)

    def flush(self) -> None:
        self.timer = None
        dst = self.dst
        if dst is None or dst.transport is None:
            return
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            if data is None:
                self.done = True
                dst.write_eof()
                break
            self.queued -= len(data)
            dst.transport.write(data)
        if self.queued <= WINDOW // 2 and not dst.write_paused:
            self.src.resume()
        self.schedule()


class _Side(asyncio.Protocol):
    """One socket of a proxied pair; what it receives goes into ``out``, a delayed queue."""

    def __init__(self, pair: _Pair) -> None:
        self.pair = pair
        self.transport: asyncio.Transport | None = None
        self.out: _Direction | None = None
        self.write_paused = False
        self.read_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=1 << 20)
        with contextlib.suppress(OSError):
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP,
                                                         socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        assert self.out is not None
        self.out.push(data)

    def eof_received(self) -> bool:
        assert self.out is not None
        self.out.push(None)
        return True          # keep the other half open: HTTP clients may half-close

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pair.lost(self, exc)

    def pause_writing(self) -> None:
        """Our socket's send buffer is full (HTB holding it back): stop reading what feeds it,
        so a connection holds at most a window plus one buffer in the proxy."""
        self.write_paused = True
        self.pair.other(self).pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        other = self.pair.other(self)
        if other.out is not None and other.out.queued <= WINDOW // 2:
            other.resume()

    def pause(self) -> None:
        if self.transport is not None and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def write_eof(self) -> None:
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()
        self.pair.maybe_close()


class _Pair:
    """A client connection and its upstream connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.client, self.upstream = _Side(self), _Side(self)
        # The client's connect() returned at once (loopback); on a real link its first bytes
        # could leave only after the handshake's round trip.
        self.client.out = _Direction(loop, delay, self.client, loop.time() + 2 * delay)
        self.upstream.out = _Direction(loop, delay, self.upstream)
        self.client.out.dst, self.upstream.out.dst = self.upstream, self.client

    def other(self, side: _Side) -> _Side:
        return self.upstream if side is self.client else self.client

    def lost(self, side: _Side, exc: Exception | None) -> None:
        other = self.other(side)
        if other.transport is None:
            return
        if exc is not None:
            other.transport.abort()
        elif side.out is not None and not side.out.done and side.out.dst is not None:
            side.out.push(None)    # closed without a half-close: forward the EOF, delayed
        else:
            self.maybe_close()

    def maybe_close(self) -> None:
        assert self.client.out is not None and self.upstream.out is not None
        if self.client.out.done and self.upstream.out.done:
            for side in (self.client, self.upstream):
                if side.transport is not None:
                    side.transport.close()


class DelayProxy:
    """Listens on 127.0.0.1 and forwards to ``target``, each chunk ``delay`` seconds late."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target, self.delay = target, delay
        self.server: asyncio.Server | None = None
        self.connecting: set[asyncio.Task[None]] = set()   # held: the loop keeps weak refs

    async def start(self, port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: self._accept(loop), "127.0.0.1", port,
                                               backlog=1024, reuse_address=True)
        return int(self.server.sockets[0].getsockname()[1])

    def _accept(self, loop: asyncio.AbstractEventLoop) -> _Side:
        pair = _Pair(loop, self.delay)
        task = loop.create_task(self._connect(loop, pair))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)
        return pair.client

    async def _connect(self, loop: asyncio.AbstractEventLoop, pair: _Pair) -> None:
        try:
            await loop.create_connection(lambda: pair.upstream, *self.target)
        except OSError:
            if pair.client.transport is not None:
                pair.client.transport.abort()
            return
        assert pair.client.out is not None
        pair.client.out.schedule()    # what the client sent meanwhile is queued, not lost


async def _serve(target: tuple[str, int], delay: float, port: int) -> None:
    """Run until stdin closes (the parent died or stopped us) or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    proxy = DelayProxy(target, delay)
    print(await proxy.start(port), flush=True)
    watcher = threading.Thread(target=lambda: (sys.stdin.buffer.read(),
                                               loop.call_soon_threadsafe(stop.set)), daemon=True)
    watcher.start()
    await stop.wait()


class ProxyProcess:
    """The proxy as a niced child process: its CPU is its own, readable from /proc.

    It exits when we close its stdin, so even a SIGKILLed benchmark leaves no proxy behind.
    """

    def __init__(self, target: str, delay: float) -> None:
        host, _, port = target.rpartition(":")
        self.target = target
        self.proc = subprocess.Popen(
            ["nice", "-n", str(PROXY_NICE), sys.executable, str(HERE), "proxy", "--target",
             f"{host}:{port}", "--delay-ms", repr(delay * 1e3)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"the delay proxy did not start (exit {self.proc.returncode})")
        self.port = int(line)
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """User + system CPU the proxy has used so far."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the rate: HTB on loopback ------------------------------------------------------------------


def tc_unavailable() -> str | None:
    """Why this process cannot shape ``lo``, or None."""
    if shutil.which("tc") is None:
        return "`tc` is not on PATH (apt-get install iproute2)"
    if os.geteuid() != 0:
        return "shaping loopback with tc needs root"
    return None


def tc(*args: str, check: bool = True) -> str:
    r = subprocess.run(["tc", *args], capture_output=True, text=True, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def root_qdisc(device: str = DEVICE) -> str:
    """The root qdisc line of ``tc qdisc show dev DEVICE`` ('' if none is listed)."""
    for line in tc("qdisc", "show", "dev", device).splitlines():
        if " root " in f" {line} ":
            return line.strip()
    return ""


class Shaper:
    """HTB on ``lo``: traffic from and to ``ports`` limited to ``rate_mbit`` per direction.

    Installed on ``__enter__`` (or ``install``) and removed on ``__exit__`` (or ``remove``,
    idempotent, safe after a half-done install): the machine's loopback must not stay shaped.
    """

    def __init__(self, rate_mbit: int, ports: Sequence[int], device: str = DEVICE) -> None:
        self.rate_mbit, self.ports, self.device = rate_mbit, list(ports), device
        self.attempted = False

    def burst_bytes(self) -> int:
        """HTB refills in timer ticks: a burst below ~1 ms of the rate, or below two 64 KiB
        loopback GSO packets, makes it run well under the rate it is given."""
        return max(self.rate_mbit * 1_000_000 // 8 // 1000, 2 * 65536)

    def install(self) -> None:
        current = root_qdisc(self.device)
        if current and not current.startswith("qdisc noqueue"):
            raise RuntimeError(f"{self.device} already has a root qdisc ({current}); if a "
                               f"shaped bench left it, remove it: tc qdisc del dev "
                               f"{self.device} root")
        self.attempted = True
        rate, burst = f"{self.rate_mbit}mbit", str(self.burst_bytes())
        # No `default`: unclassified packets (all other loopback traffic) are sent directly.
        tc("qdisc", "add", "dev", self.device, "root", "handle", f"{HANDLE}:", "htb")
        for minor, match in ((1, "sport"), (2, "dport")):   # from the proxy, to the proxy
            tc("class", "add", "dev", self.device, "parent", f"{HANDLE}:", "classid",
               f"{HANDLE}:{minor}", "htb", "rate", rate, "ceil", rate, "burst", burst,
               "cburst", burst)
            for port in self.ports:
                tc("filter", "add", "dev", self.device, "parent", f"{HANDLE}:", "protocol",
                   "ip", "prio", "1", "u32", "match", "ip", match, str(port), "0xffff",
                   "flowid", f"{HANDLE}:{minor}")

    def remove(self) -> None:
        if self.attempted and root_qdisc(self.device).startswith(f"qdisc htb {HANDLE}:"):
            tc("qdisc", "del", "dev", self.device, "root")
        self.attempted = False

    def __enter__(self) -> Shaper:
        try:
            self.install()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()


# -- a load server and iperf-like measurements -----------------------------------------------

_HEAD = struct.Struct("!cQ")   # command (e = echo, g = get N bytes, p = put N bytes), N
BLOCK = 1 << 20


class LoadServer:
    """A threaded TCP server on 127.0.0.1 to measure a path: echo, send N bytes, take N bytes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = int(self.sock.getsockname()[1])
        self.address = f"127.0.0.1:{self.port}"
        self._conns: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            cmd, n = _HEAD.unpack(_recv_exact(conn, _HEAD.size))
            if cmd == b"e":
                while data := conn.recv(BLOCK):
                    conn.sendall(data)
            elif cmd == b"g":
                block = bytes(BLOCK)
                for sent in range(0, n, BLOCK):
                    conn.sendall(block[:min(BLOCK, n - sent)])
            elif cmd == b"p":
                got = 0
                while got < n and (data := conn.recv(BLOCK)):
                    got += len(data)
                conn.sendall(b"k")
        self._conns.discard(conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)   # close() alone does not wake accept()
        self.sock.close()
        for conn in list(self._conns):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)

    def __enter__(self) -> LoadServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += data
    return bytes(buf)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def get_seconds(port: int, nbytes: int) -> float:
    """Seconds to receive ``nbytes`` from a LoadServer (or a proxy in front of one)."""
    start = time.perf_counter()
    with _connect(port) as sock:
        sock.sendall(_HEAD.pack(b"g", nbytes))
        got = 0
        while got < nbytes:
            data = sock.recv(BLOCK)
            if not data:
                raise ConnectionError(f"got {got} of {nbytes} bytes")
            got += len(data)
    return time.perf_counter() - start


def put_seconds(port: int, nbytes: int) -> float:
    """Seconds to send ``nbytes`` and hear that all arrived."""
    block = bytes(BLOCK)
    start = time.perf_counter()
    with _connect(port) as sock:
        sock.sendall(_HEAD.pack(b"p", nbytes))
        for sent in range(0, nbytes, BLOCK):
            sock.sendall(block[:min(BLOCK, nbytes - sent)])
        if sock.recv(1) != b"k":
            raise ConnectionError("no acknowledgement")
    return time.perf_counter() - start


def rtt_seconds(port: int, rounds: int = 200) -> float:
    """Median round trip of one byte on an open connection; the connect and the first rounds
    (cold caches, idle CPUs waking up) are not counted."""
    times = []
    with _connect(port) as sock:
        sock.sendall(_HEAD.pack(b"e", 0))
        for n in range(rounds + 5):
            start = time.perf_counter()
            sock.sendall(b"x")
            _recv_exact(sock, 1)
            if n >= 5:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


@dataclass
class PathFigures:
    get_mbps: float
    put_mbps: float
    rtt_s: float
    cpu_s: float = 0.0     # the proxy's CPU during the transfers, if there was one

    def describe(self) -> str:
        return (f"get {self.get_mbps:,.0f} MB/s, put {self.put_mbps:,.0f} MB/s, "
                f"RTT {self.rtt_s * 1e3:.3f} ms")


def measure_path(port: int, nbytes: int, proxy: ProxyProcess | None = None,
                 rounds: int = 200) -> PathFigures:
    cpu = proxy.cpu_seconds() if proxy else 0.0
    get = get_seconds(port, nbytes)
    put = put_seconds(port, nbytes)
    cpu = (proxy.cpu_seconds() - cpu) if proxy else 0.0
    return PathFigures(nbytes / get / 1e6, nbytes / put / 1e6, rtt_seconds(port, rounds), cpu)


@dataclass
class ProxyCost:
    """The proxy with no delay and no shaping against the same server reached directly."""

    direct: PathFigures
    proxied: PathFigures
    nbytes: int

    def describe(self) -> str:
        cpu_per_gb = self.proxied.cpu_s / (2 * self.nbytes / 1e9)
        return (f"proxy cost (delay 0, unshaped, vs direct): get {self.proxied.get_mbps:,.0f} "
                f"vs {self.direct.get_mbps:,.0f} MB/s, put {self.proxied.put_mbps:,.0f} vs "
                f"{self.direct.put_mbps:,.0f} MB/s, 1-byte RTT {self.proxied.rtt_s * 1e6:.0f} "
                f"vs {self.direct.rtt_s * 1e6:.0f} us, "
                f"{cpu_per_gb:.2f} CPU s per GB forwarded")


def proxy_cost(nbytes: int = 200_000_000) -> ProxyCost:
    with LoadServer() as server, ProxyProcess(server.address, 0.0) as proxy:
        direct = measure_path(server.port, nbytes)
        proxied = measure_path(proxy.port, nbytes, proxy)
    return ProxyCost(direct, proxied, nbytes)


def check_link(link: Link, nbytes: int) -> PathFigures:
    """The shaped path as the benchmark sees it: a delaying proxy on a shaped port."""
    with LoadServer() as server, ProxyProcess(server.address, link.delay_s) as proxy, \
            Shaper(link.rate_mbit, [proxy.port]):
        return measure_path(proxy.port, nbytes, proxy, rounds=20)


# -- what bench.py holds --------------------------------------------------------------------


class Network:
    """The S3 endpoint the measured systems use: the server's own (``lo``), or a delaying
    proxy in front of it on a shaped port. ``close`` undoes everything and is idempotent."""

    def __init__(self, name: str) -> None:
        self.name, self.link = name, NETWORKS[name]
        self.proxy: ProxyProcess | None = None
        self.shaper: Shaper | None = None
        self.header: list[str] = []
        self._cpu_mark = 0.0

    def unavailable(self) -> str | None:
        """Why this network cannot be set up here (checked before the long setup), or None."""
        if self.link is None:
            return None
        if why := tc_unavailable():
            return why
        current = root_qdisc()
        if current and not current.startswith("qdisc noqueue"):
            return (f"{DEVICE} already has a root qdisc ({current}); if a killed bench left it: "
                    f"tc qdisc del dev {DEVICE} root")
        return None

    def start(self, server_endpoint: str, check_bytes: int = 50_000_000) -> str:
        """Measure the proxy, then put it in front of the server; returns the endpoint."""
        if self.link is None:
            self.header = ["network lo: the S3 server on loopback, no proxy, no shaping"]
            return server_endpoint
        cost = proxy_cost()
        shaped = check_link(self.link, check_bytes)
        self.proxy = ProxyProcess(server_endpoint.removeprefix("http://"), self.link.delay_s)
        self.shaper = Shaper(self.link.rate_mbit, [self.proxy.port])
        self.shaper.install()
        self._cpu_mark = self.proxy.cpu_seconds()
        self.header = [
            f"network {self.name}: S3 behind a delaying proxy (nice {PROXY_NICE}) and HTB on "
            f"{DEVICE}: {self.link.describe()}",
            f"  measured link ({check_bytes / 1e6:.0f} MB each way): {shaped.describe()}",
            f"  {cost.describe()}"]
        return self.proxy.endpoint

    def cpu_since_mark(self) -> float:
        """The proxy's CPU seconds since the last call (0 without a proxy)."""
        if self.proxy is None:
            return 0.0
        now = self.proxy.cpu_seconds()
        spent, self._cpu_mark = now - self._cpu_mark, now
        return spent

    def close(self) -> None:
        if self.shaper is not None:
            self.shaper.remove()
            self.shaper = None
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None


# -- command line ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = p.add_subparsers(dest="cmd", required=True)
    proxy = sub.add_parser("proxy", help="run the delaying proxy; prints its port")
    proxy.add_argument("--target", required=True, metavar="HOST:PORT")
    proxy.add_argument("--delay-ms", type=float, default=0.0)
    proxy.add_argument("--port", type=int, default=0)
    check = sub.add_parser("check", help="measure the proxy's cost and a shaped link")
    check.add_argument("--network", choices=[n for n in NETWORKS if NETWORKS[n]], default="far")
    check.add_argument("--mb", type=int, default=200, help="MB each way (default 200)")
    args = p.parse_args(argv)
    if args.cmd == "proxy":
        host, _, port = args.target.rpartition(":")
        asyncio.run(_serve((host, int(port)), args.delay_ms / 1e3, args.port))
        return 0
    link = NETWORKS[args.network]
    assert link is not None
    print(proxy_cost(args.mb * 1_000_000).describe())
    if why := tc_unavailable():
        print(f"not shaping: {why}")
        return 1
    figures = check_link(link, args.mb * 1_000_000)
    print(f"{args.network} ({link.describe()}): {figures.describe()}; proxy CPU "
          f"{figures.cpu_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
