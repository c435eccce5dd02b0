"""A pool with an application-level keepalive: idle connections get a PING every few seconds.

Firewalls, load balancers and servers close connections that sit idle; a keepalive keeps them
alive, and finds the dead ones before a caller does. Here the pool PINGs each idle connection
every ``--keepalive`` seconds (a production value is more like 30); then the server drops every
connection, and the keepalive discards and replaces them all while no caller is using the pool.

Run it from the repository root::

    python examples/keepalive_ping.py                  # against an embedded PING server
    python examples/keepalive_ping.py --port 6379      # against a real Redis server

Needs: the package alone (no extra, no server: it embeds a PING server); with ``--host``/``--port``
a server that answers ``PING`` with ``+PONG``, such as Redis (``redis-server --port 6379``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import _needs  # examples/_needs.py: one-line errors naming the fix
import gevent
from gevent import socket

from geventconnpool import ConnectionPool, PoolStats
from geventconnpool.testing import FaultProxy, PingServer


def command(conn: socket.socket, line: bytes = b"PING") -> bytes:
    """Send one Redis inline command and return its one-line reply."""
    conn.sendall(line + b"\r\n")
    reply = b""
    while not reply.endswith(b"\r\n"):
        chunk = conn.recv(64)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        reply += chunk
    return reply


class PingPool(ConnectionPool[socket.socket]):
    """TCP connections to a PING server, kept alive with a PING."""

    def __init__(self, address: tuple[str, int], size: int, keepalive: float) -> None:
        self.address = address
        self.pings = 0  # keepalive PINGs sent (the pool's stats count what it discards)
        super().__init__(size, keepalive=keepalive)

    def _new_connection(self) -> socket.socket:
        return socket.create_connection(self.address, timeout=5)

    def _keepalive(self, conn: socket.socket) -> None:
        # Raising one of the pool's exc_classes (OSError) tells it the connection is dead.
        self.pings += 1
        if command(conn) != b"+PONG\r\n":
            raise ConnectionError("no PONG to PING")


def wait_for(what: str, done: Callable[[], bool], timeout: float = 10.0) -> None:
    """Let the pool work until ``done()``; exit with an error after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(f"error: timed out waiting until {what}")
        gevent.sleep(0.01)


def show(label: str, s: PoolStats) -> None:
    print(
        f"{label}: open={s.open} idle={s.idle} created={s.created}"
        f" discarded.keepalive={s.discarded.keepalive} discarded={s.discarded.total}"
    )


def main(address: tuple[str, int], drop: Callable[[], int], size: int, keepalive: float) -> None:
    pool = PingPool(address, size, keepalive)
    with pool:  # closes the pool at the end
        pool.wait_ready(timeout=5)
        with pool.get() as conn:
            print(f"request: {command(conn)!r}")
        show("ready", pool.stats())

        wait_for(
            "each connection got two keepalive PINGs (and none is being pinged)",
            lambda: pool.pings >= 2 * size and pool.stats().idle == size,
        )
        print(f"idle for a while: the pool sent {pool.pings} keepalive PINGs")
        show("after keepalives", pool.stats())

        print(f"the server drops all {drop()} connections")
        wait_for(
            "the keepalive replaced every dropped connection",
            lambda: pool.stats().discarded.keepalive >= size and pool.stats().idle == size,
        )
        show("after the drop", pool.stats())
        with pool.get(timeout=5) as conn:
            print(f"request after the drop: {command(conn)!r} (no caller saw an error)")


@contextmanager
def backend(args: argparse.Namespace) -> Iterator[tuple[tuple[str, int], Callable[[], int]]]:
    """The address to connect to and a function that drops every connection to it.

    By default an embedded PING server; with --host/--port a real server, reached through a
    local proxy that can cut the connections.
    """
    if args.host is None and args.port is None:
        with PingServer() as server:
            yield server.address, server.drop_all
    else:
        _needs.ping_server((args.host or "127.0.0.1", args.port or 6379))
        with FaultProxy((args.host or "127.0.0.1", args.port or 6379)) as proxy:
            yield proxy.address, proxy.reset_all


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", help="a PING server (e.g. Redis) instead of the embedded one")
    parser.add_argument("--port", type=int, help="its port (default 6379)")
    parser.add_argument("--size", type=int, default=3, help="connections in the pool")
    parser.add_argument("--keepalive", type=float, default=0.3, help="seconds between PINGs")
    args = parser.parse_args()
    with backend(args) as (address, drop):
        main(address, drop, args.size, args.keepalive)
