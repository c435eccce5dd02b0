"""PingServer and FaultProxy under hostile clients: bounded memory, a responsive event loop, and
the offender dropped with a protocol error."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from gevent import socket as gsocket

from geventconnpool.testing import FaultProxy, PingServer

pytestmark = pytest.mark.timeout(30)

EIGHT_MB = 8 * 1024 * 1024


class Heartbeat:
    """A greenlet ticking every 10 ms; ``max_gap`` is the longest the event loop was blocked."""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        last = time.monotonic()
        while True:
            gevent.sleep(0.01)
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last)
            last = now

    def stop(self) -> float:
        self._greenlet.kill()
        return self.max_gap


@pytest.fixture
def server() -> Iterator[PingServer]:
    with PingServer() as srv:
        yield srv


def flood(address: tuple[str, int], head: bytes, chunk: bytes, total: int) -> tuple[bytes, int]:
    """Send ``head`` then ``chunk`` repeatedly up to ``total`` bytes, reading replies meanwhile;
    returns what came back and how many bytes were sent before the server hung up."""
    sock = gsocket.create_connection(address)
    received = bytearray()

    def reader() -> None:
        while data := sock.recv(65536):
            received.extend(data)

    g = gevent.spawn(reader)
    sent = 0
    try:
        sock.sendall(head)
        while chunk and sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:  # the server dropped us: what we want
        pass
    finally:
        g.join(5)
        sock.close()
    return bytes(received), sent


@pytest.mark.parametrize(
    ("head", "chunk", "error"),
    [
        (b"*99999999\r\n", b"$1\r\na\r\n" * 9000, b"invalid multibulk length"),
        (b"", b"x" * 65536, b"too big inline request"),  # an endless line
        (b"*1\r\n", b"$" + b"9" * 65536, b"too big bulk"),  # an endless header
        (b"*1\r\n$999999999999\r\n", b"a" * 65536, b"invalid bulk length"),
        (b"*-7\r\n", b"", b"invalid multibulk length"),
        (b"*2\r\n$4\r\nECHO\r\n$-5\r\n", b"", b"invalid bulk length"),
        (b"*1024\r\n", (b"$1048576\r\n" + b"a" * 1048576 + b"\r\n"), b"command too big"),
    ],
    ids=["absurd-count", "endless-line", "endless-header", "huge-bulk",
         "negative-count", "negative-bulk", "huge-command"],
)  # fmt: skip
def test_hostile_input_is_refused_without_blocking_or_growing(
    server: PingServer, head: bytes, chunk: bytes, error: bytes
) -> None:
    beat = Heartbeat()
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        reply, _ = flood(server.address, head, chunk, EIGHT_MB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    took = time.monotonic() - t0
    gap = beat.stop()
    assert error in reply, reply[:200]
    assert took < 10, took
    assert gap < 0.5, gap  # the event loop kept running (was 97 s for 8 MB)
    assert peak < 6 * 1024 * 1024, peak  # never near the 8 MB sent
    assert server.active == 0


def test_split_and_pipelined_commands_still_parse(server: PingServer) -> None:
    sock = gsocket.create_connection(server.address)
    try:
        big = b"b" * 300_000
        command = b"*2\r\n$4\r\nECHO\r\n$%d\r\n%s\r\n" % (len(big), big)
        for i in range(0, len(command), 7001):  # split at arbitrary points, CRLFs included
            sock.sendall(command[i : i + 7001])
            gevent.sleep(0)
        expected = b"$%d\r\n%s\r\n" % (len(big), big)
        got = b""
        while len(got) < len(expected):
            got += sock.recv(65536)
        assert got == expected
        pings = b"PING\r\n" * 5000 + b"*1\r\n$4\r\nPING\r\n" * 5000
        t0 = time.monotonic()
        sock.sendall(pings)
        want = b"+PONG\r\n" * 10000
        got = b""
        while len(got) < len(want):
            got += sock.recv(65536)
        assert got == want
        assert time.monotonic() - t0 < 5
    finally:
        sock.close()


def test_proxy_passes_a_flood_with_bounded_memory(server: PingServer) -> None:
    with FaultProxy(server.address) as proxy:
        beat = Heartbeat()
        tracemalloc.start()
        try:
            reply, _ = flood(proxy.address, b"*99999999\r\n", b"$1\r\na\r\n" * 9000, EIGHT_MB)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        gap = beat.stop()
        assert b"invalid multibulk length" in reply
        assert gap < 0.5, gap
        assert peak < 6 * 1024 * 1024, peak
        deadline = time.monotonic() + 5
        while proxy.active and time.monotonic() < deadline:  # the proxy closes both sides
            gevent.sleep(0.01)
        assert proxy.active == 0


def test_legit_commands_after_the_limits_change_nothing(server: PingServer) -> None:
    sock: Any = gsocket.create_connection(server.address)
    try:
        sock.sendall(b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n*0\r\n\r\nPING hi\r\n")
        want = b"$0\r\n\r\n$2\r\nhi\r\n"
        got = b""
        while len(got) < len(want):
            got += sock.recv(100)
        assert got == want
    finally:
        sock.close()
