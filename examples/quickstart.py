"""The README's quickstart: subclass ConnectionPool, implement _new_connection, use the pool.

Run it from the repository root::

    python examples/quickstart.py                  # against an embedded PING server
    python examples/quickstart.py --port 6379      # against a real Redis server

Needs: the package alone (no extra, no server: it embeds a PING server); with ``--host``/``--port``
a server that answers ``PING`` with ``+PONG``, such as Redis (``redis-server --port 6379``).
"""

from __future__ import annotations

import argparse

import _needs  # examples/_needs.py: one-line errors naming the fix
import gevent
from gevent import socket

from geventconnpool import ConnectionPool, retry
from geventconnpool.testing import PingServer

ADDRESS = ("127.0.0.1", 6379)  # where the pool connects; set from the command line below


class MyPool(ConnectionPool[socket.socket]):
    def _new_connection(self) -> socket.socket:
        return socket.create_connection(ADDRESS, timeout=5)

    def _keepalive(self, conn: socket.socket) -> None:
        conn.sendall(b"PING\r\n")
        if conn.recv(7) != b"+PONG\r\n":
            raise ConnectionError("no PONG")  # an OSError: the pool replaces the connection


pool: MyPool  # created in main(): one per process, when the application starts


@retry(max_failures=3, interval=0.1)  # a broken connection is replaced and the call re-run
def ping() -> bytes:
    with pool.get(timeout=5) as conn:  # waits at most 5 s for a free connection
        conn.sendall(b"PING\r\n")
        reply = conn.recv(7)
        if reply != b"+PONG\r\n":
            raise ConnectionError(f"unexpected reply {reply!r}")
        return reply


def main() -> None:
    global pool
    pool = MyPool(10, keepalive=30)  # 10 connections, each PINGed after 30 s idle
    with pool:  # close() on exit
        pool.wait_ready(timeout=5)  # optional: at startup, fail now if the server is down
        greenlets = [gevent.spawn(ping) for _ in range(100)]
        gevent.joinall(greenlets, raise_error=True)
        pongs = sum(g.value == b"+PONG\r\n" for g in greenlets)
        print(f"100 greenlets, 10 connections: {pongs} PONGs")
        s = pool.stats()
        print(f"stats: open={s.open} created={s.created} acquired={s.acquired}")
        print(pool)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", help="a PING server (e.g. Redis) instead of the embedded one")
    parser.add_argument("--port", type=int, help="its port (default 6379)")
    args = parser.parse_args()
    if args.host is None and args.port is None:
        with PingServer() as server:
            ADDRESS = server.address
            main()
    else:
        ADDRESS = (args.host or "127.0.0.1", args.port or 6379)
        _needs.ping_server(ADDRESS)
        main()
