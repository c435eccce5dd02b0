"""Checked by mypy --strict (not run): the public API types the way users write it."""

from __future__ import annotations

import functools
import logging

from gevent import socket

from geventconnpool import ConnectionPool, PoolStats, RetryBudget, retry


class SocketPool(ConnectionPool[socket.socket]):
    def _new_connection(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", 6379))

    def _keepalive(self, conn: socket.socket) -> None:
        conn.sendall(b"PING\r\n")


pool = SocketPool(10, keepalive=30, timeout=2.0, name="redis")
with pool.get() as conn:
    sock: socket.socket = conn  # the connection type flows through get()


@retry
def bare(key: str) -> bytes:
    return key.encode()


@retry(max_failures=3, interval=0.1, logger=logging.getLogger("app"))
def configured(key: str, count: int = 1) -> int:
    return len(key) * count


my_retry = functools.partial(retry, max_failures=2)
budget = RetryBudget(ttl=10, min_retries_per_sec=10, percent_can_retry=0.2)


@retry(on=pool._is_disconnect, deadline=5.0, budget=budget)
def guarded(key: str) -> bytes:
    return key.encode()


guarded_data: bytes = guarded("k")

data: bytes = bare("k")
n: int = configured("k", count=2)
stats: PoolStats = pool.stats()
opened: int = stats.open + stats.discarded.total

# Options read back as their concrete types (not ``int | None``): no narrowing needed.
total: int = pool.max_size + pool.min_size
current: int = pool.size
label: str = pool.name
limit: float | None = pool.timeout
pool.timeout = 2.0  # a live option may be assigned

# These must be errors: with --strict (warn_unused_ignores) an ignore that is not needed fails,
# so losing the wrapped signature or the connection type would fail the type check.
bare(1)  # type: ignore[arg-type]
configured("k", count="2")  # type: ignore[arg-type]
with pool.get() as conn2:
    text: str = conn2  # type: ignore[assignment]


# Ready-made pools: DbApiPool is generic over the driver's connection type.
import psycopg2.extensions  # noqa: E402

from geventconnpool.contrib.dbapi import DbApiPool  # noqa: E402


class DbConn:
    def cursor(self) -> object:
        return object()


def db_connect(dsn: str) -> DbConn:
    return DbConn()


db = DbApiPool(db_connect, "host=127.0.0.1 dbname=app", size=2, timeout=5)
with db.get() as dbconn:
    typed_conn: DbConn = dbconn  # the driver's connection type flows through get()
pg: DbApiPool[psycopg2.extensions.connection]
with db.get() as dbconn2:
    wrong: str = dbconn2  # type: ignore[assignment]
