"""What the workloads share, inside a child process: connections, a budget, a histogram.

Everything here runs under gevent's monkey patching (see :mod:`bench.child`).
"""

from __future__ import annotations

import math
import socket
import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent

PING, PONG = b"PING\r\n", b"+PONG\r\n"
#: Makes one connection: a socket, or a :class:`FakeConnection`.
Factory = Callable[[], Any]


@dataclass
class Counter:
    """What the bench sees of any pool from outside: connects started and finished, closes."""

    connecting: int = 0
    created: int = 0
    closed: int = 0

    @property
    def opened(self) -> int:
        """Connections opened or being opened, including closed ones."""
        return self.created + self.connecting


class FakeConnection:
    """A connection-shaped object without a socket, for workloads that do no I/O."""

    __slots__ = ("closed", "counter")

    def __init__(self, counter: Counter) -> None:
        self.closed = False
        self.counter = counter

    def close(self) -> None:
        """Mark closed (once) and count it."""
        if not self.closed:
            self.closed = True
            self.counter.closed += 1


def socket_factory(host: str, port: int, counter: Counter) -> Factory:
    """A factory of TCP sockets (cooperative: the child is monkey-patched) with TCP_NODELAY."""

    def connect() -> socket.socket:
        counter.connecting += 1
        try:
            sock = socket.create_connection((host, port))
        finally:
            counter.connecting -= 1
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        counter.created += 1
        return sock

    return connect


def fake_factory(counter: Counter, delay: float = 0.0) -> Factory:
    """A factory of :class:`FakeConnection`; a connect takes ``delay`` s (a gevent sleep)."""

    def connect() -> FakeConnection:
        counter.connecting += 1
        try:
            if delay:
                gevent.sleep(delay)
        finally:
            counter.connecting -= 1
        counter.created += 1
        return FakeConnection(counter)

    return connect


def ping(sock: Any) -> None:
    """One Redis inline PING round trip; raises OSError if the server closed the socket."""
    sock.sendall(PING)
    got = b""
    while len(got) < len(PONG):
        chunk = sock.recv(64)
        if not chunk:
            raise ConnectionResetError("server closed the connection")
        got += chunk
    if got != PONG:
        raise ConnectionError(f"unexpected reply {got!r}")


def close_quietly(conn: Any) -> None:
    """Close a connection, ignoring errors (it may already be dead)."""
    try:
        conn.close()
    except Exception:
        pass


@dataclass
class Budget:
    """The stop condition of a group of greenlets: an operation count and a deadline."""

    remaining: int
    deadline: float
    errors: int = 0
    first_error: str = ""

    @classmethod
    def of(cls, max_ops: int, seconds: float) -> Budget:
        """At most ``max_ops`` operations, for at most ``seconds`` from now."""
        return cls(max_ops, time.perf_counter() + seconds)

    def take(self, n: int = 1) -> int:
        """Reserve up to ``n`` operations; 0 once the count or the time is spent."""
        if self.remaining <= 0 or time.perf_counter() >= self.deadline:
            return 0
        n = min(n, self.remaining)
        self.remaining -= n
        return n

    def error(self, exc: BaseException) -> None:
        """Count an error (the first one is kept for the report)."""
        self.errors += 1
        self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"[:200]


def join(greenlets: list[gevent.Greenlet[..., Any]], budget: Budget, grace: float = 5.0) -> int:
    """Wait for the greenlets until the deadline plus ``grace``; kill and count the stragglers."""
    gevent.joinall(greenlets, timeout=max(0.0, budget.deadline - time.perf_counter()) + grace)
    hung = [g for g in greenlets if not g.dead]
    gevent.killall(hung, block=True, timeout=1.0)
    return len(hung)


#: Histogram buckets per doubling: a percentile read from one is within 2**(1/16), about 4.4%.
STEPS = 16


def histogram(seconds: list[float]) -> dict[str, int]:
    """Durations in log buckets (JSON-ready), so the parent can merge rounds before percentiles."""
    tally = Tally(math.ceil(math.log2(max(s * 1e6, 1.0)) * STEPS) for s in seconds)
    return {str(k): n for k, n in sorted(tally.items())}
