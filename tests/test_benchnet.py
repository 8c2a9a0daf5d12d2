"""The benchmark's shaped network (``scripts/benchnet.py``): the delaying proxy adds its delay in
each direction without serialising throughput and delivers every byte intact and in order; the
tc shaping limits the rate and is removed afterwards, also when the body raises."""

from __future__ import annotations

import contextlib
import hashlib
import random
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import benchnet

DELAY = 0.05


@pytest.fixture
def echo() -> Iterator[int]:
    """A plain TCP echo server on 127.0.0.1 (thread per connection); yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    conns: list[socket.socket] = []

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(1 << 16):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)     # pass the client's half-close back

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conns.append(conn)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    with contextlib.suppress(OSError):
        server.shutdown(socket.SHUT_RDWR)     # close() alone does not wake accept()
    server.close()
    for conn in conns:
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)
    thread.join(5)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def round_trip(sock: socket.socket) -> float:
    start = time.perf_counter()
    sock.sendall(b"x")
    assert sock.recv(1) == b"x"
    return time.perf_counter() - start


def test_proxy_adds_its_delay_each_way(echo: int) -> None:
    with benchnet.ProxyProcess(f"127.0.0.1:{echo}", DELAY) as proxy, connect(proxy.port) as sock:
        first = round_trip(sock)
        later = [round_trip(sock) for _ in range(3)]
    assert first >= 4 * DELAY, "the first bytes of a connection also wait for the handshake"
    assert min(later) >= 2 * DELAY
    assert max(later) < 2 * DELAY + 0.5


def exchange(port: int, payload: bytes) -> bytes:
    """Send ``payload`` in random-sized pieces while reading the echo, then half-close and
    read to EOF (which the proxy must forward both ways)."""
    received = bytearray()
    with connect(port) as sock:

        def read() -> None:
            while data := sock.recv(1 << 16):
                received.extend(data)

        reader = threading.Thread(target=read)
        reader.start()
        rng, sent = random.Random(len(payload)), 0
        while sent < len(payload):
            n = rng.choice((1, 100, 4096, 65536, 300_000))
            sock.sendall(payload[sent:sent + n])
            sent += n
        sock.shutdown(socket.SHUT_WR)
        reader.join(30)
        assert not reader.is_alive(), "no EOF came back through the proxy"
    return bytes(received)


def test_proxy_keeps_bytes_intact_and_in_order_under_concurrent_connections(echo: int) -> None:
    payloads = [random.Random(i).randbytes(1 << 20) + bytes([i]) * 1000 for i in range(8)]
    results: dict[int, bytes] = {}
    with benchnet.ProxyProcess(f"127.0.0.1:{echo}", 0.01) as proxy:
        threads = [threading.Thread(target=lambda i=i: results.update(
            {i: exchange(proxy.port, payloads[i])})) for i in range(len(payloads))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert sorted(results) == list(range(len(payloads)))
    for i, payload in enumerate(payloads):
        assert len(results[i]) == len(payload)
        assert hashlib.sha256(results[i]).digest() == hashlib.sha256(payload).digest(), i


def test_proxy_delay_does_not_serialise_throughput(echo: int) -> None:
    """8 MiB echoed is ~60 chunks each way: one delay per chunk would take several seconds."""
    payload = random.Random(1).randbytes(8 << 20)
    with benchnet.ProxyProcess(f"127.0.0.1:{echo}", DELAY) as proxy:
        start = time.perf_counter()
        assert exchange(proxy.port, payload) == payload
        elapsed = time.perf_counter() - start
    assert elapsed < 1.5


def lo_root() -> str:
    return benchnet.root_qdisc("lo")


@pytest.fixture
def can_shape() -> None:
    if why := benchnet.tc_unavailable():
        pytest.skip(why)
    if not lo_root().startswith("qdisc noqueue"):
        pytest.skip(f"lo already has a root qdisc: {lo_root()}")


@pytest.mark.usefixtures("can_shape")
def test_shaping_is_installed_and_removed_also_when_the_body_raises() -> None:
    before = lo_root()
    with benchnet.Shaper(200, [12345]):
        assert lo_root().startswith(f"qdisc htb {benchnet.HANDLE}:")
        classes = benchnet.tc("class", "show", "dev", "lo")
        assert classes.count("rate 200Mbit") == 2, classes      # one class per direction
    assert lo_root() == before
    with pytest.raises(KeyboardInterrupt), benchnet.Shaper(200, [12345]):
        assert lo_root().startswith(f"qdisc htb {benchnet.HANDLE}:")
        raise KeyboardInterrupt
    assert lo_root() == before


@pytest.mark.usefixtures("can_shape")
def test_shaping_limits_the_rate_of_both_directions_through_the_proxy() -> None:
    nbytes, mbit = 4_000_000, 80          # 0.4 s at the rate; unshaped it takes milliseconds
    with benchnet.LoadServer() as server, \
            benchnet.ProxyProcess(server.address, 0.0) as proxy, \
            benchnet.Shaper(mbit, [proxy.port]):
        get = benchnet.get_seconds(proxy.port, nbytes)
        put = benchnet.put_seconds(proxy.port, nbytes)
        direct = benchnet.get_seconds(server.port, nbytes)
    expected = nbytes * 8 / (mbit * 1e6)
    assert 0.8 * expected < get < 3 * expected
    assert 0.8 * expected < put < 3 * expected
    assert direct < expected / 2, "traffic on other ports is not shaped"
    assert lo_root().startswith("qdisc noqueue")
