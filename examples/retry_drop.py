"""``@retry`` on a network function: it survives the server dropping every connection.

Greenlets call ``ping_server()`` through a small pool; halfway through, the server closes every
connection. The calls that were using a dropped connection fail with ``ConnectionError``: the
pool discards that connection (and checks the others before handing them out again), ``@retry``
runs the function again on another connection, and every call succeeds.

Run it from the repository root::

    python examples/retry_drop.py                  # against an embedded PING server
    python examples/retry_drop.py --port 6379      # against a real Redis server

Needs: the package alone (no extra, no server: it embeds a PING server); with ``--host``/``--port``
a server that answers ``PING`` with ``+PONG``, such as Redis (``redis-server --port 6379``).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import _needs  # examples/_needs.py: one-line errors naming the fix
import gevent.pool
from gevent import socket

from geventconnpool import ConnectionPool, retry
from geventconnpool.testing import FaultProxy, PingServer

log = logging.getLogger("retry_drop")


class RetryCounter(logging.Handler):
    """Counts the retries ``@retry`` logs (it logs one line per retry when given a logger)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


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
    def __init__(self, address: tuple[str, int], size: int) -> None:
        self.address = address
        super().__init__(size)

    def _new_connection(self) -> socket.socket:
        return socket.create_connection(self.address, timeout=5)


def make_ping_server(pool: PingPool) -> Callable[[], bytes]:
    @retry(max_failures=3, interval=0.01, logger=log)
    def ping_server() -> bytes:
        # An OSError (ConnectionError, a timeout...) leaving this block discards the connection
        # and @retry calls ping_server() again, which gets another one.
        with pool.get(timeout=5) as conn:
            return command(conn)

    return ping_server


def main(address: tuple[str, int], drop: Callable[[], int], requests: int, size: int) -> int:
    retries = RetryCounter()
    log.addHandler(retries)
    log.setLevel(logging.INFO)
    replies: list[bytes] = []
    errors: list[BaseException] = []
    pool = PingPool(address, size)
    with pool:  # closes the pool at the end
        pool.wait_ready(timeout=5)
        ping_server = make_ping_server(pool)

        def one_request() -> None:
            try:
                replies.append(ping_server())
            except Exception as exc:
                errors.append(exc)
                return
            if len(replies) == requests // 2:
                print(f"after {len(replies)} requests the server drops all {drop()} connections")

        group = gevent.pool.Pool(4 * size)  # more greenlets than connections: they take turns
        for _ in range(requests):
            group.spawn(one_request)
        group.join(timeout=60)
        s = pool.stats()

    ok = replies.count(b"+PONG\r\n")
    print(f"{ok}/{requests} requests succeeded, {len(errors)} failed")
    print(f"@retry retried {retries.count} times")
    print(
        f"the pool discarded {s.discarded.total} connections (error={s.discarded.error},"
        f" check={s.discarded.check}) and opened {s.created - size} replacements"
    )
    return 0 if ok == requests else 1


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
    parser.add_argument("--requests", type=int, default=400, help="calls of ping_server()")
    parser.add_argument("--size", type=int, default=4, help="connections in the pool")
    args = parser.parse_args()
    with backend(args) as (address, drop):
        raise SystemExit(main(address, drop, args.requests, args.size))
