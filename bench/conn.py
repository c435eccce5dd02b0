"""Connections for the child processes: real sockets, fake objects, and counting factories.

Everything here runs under gevent's monkey patching (see :mod:`bench.worker`).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
from gevent import socket as gsocket

PING = b"PING\r\n"
PONG = b"+PONG\r\n"

#: Makes one connection: a socket, or a :class:`FakeConnection`.
Factory = Callable[[], Any]


class FakeConnection:
    """A connection-shaped object without a socket, for workloads that never do I/O."""

    __slots__ = ("closed", "counter")

    def __init__(self, counter: Counter | None = None) -> None:
        self.closed = False
        self.counter = counter

    def close(self) -> None:
        """Mark closed (once) and tell the counter."""
        if not self.closed:
            self.closed = True
            if self.counter is not None:
                self.counter.closed += 1


@dataclass
class Counter:
    """What the bench can see of any pool from outside: connects started, finished, closed."""

    connecting: int = 0
    created: int = 0
    failed: int = 0
    closed: int = 0

    @property
    def opened(self) -> int:
        """Connections opened or being opened (decided), including closed ones."""
        return self.created + self.connecting


def socket_factory(host: str, port: int, counter: Counter, timeout: float | None = None) -> Factory:
    """A factory of gevent TCP sockets with TCP_NODELAY, counted in ``counter``."""

    def connect() -> gsocket.socket:
        counter.connecting += 1
        try:
            sock = gsocket.create_connection((host, port), timeout=timeout)
        except BaseException:
            counter.failed += 1
            raise
        finally:
            counter.connecting -= 1
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        counter.created += 1
        return sock

    return connect


def fake_factory(counter: Counter, delay: float = 0.0) -> Factory:
    """A factory of :class:`FakeConnection`; ``delay`` seconds per connect (a gevent sleep)."""

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
    """One Redis inline PING round trip on a socket; raises OSError if the peer closed it."""
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
