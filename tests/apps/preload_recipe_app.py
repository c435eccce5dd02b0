"""The README's gunicorn recipe, for ``gunicorn -k gevent --preload``: pools made at import time
with ``open=False`` (in the master, which must never connect), used in the workers.

Each connection names its process on the server: Redis ``CLIENT SETNAME pid-<pid>``, PostgreSQL
``application_name=pid-<pid>``, so the test can count each process's server-side connections.
Environment: ``GCP_REDIS_PORT``, ``GCP_PG_DSN``, ``GCP_POOL_SIZE``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import psycogreen.gevent
import psycopg2
from gevent import socket

from geventconnpool import ConnectionPool

psycogreen.gevent.patch_psycopg()
SIZE = int(os.environ.get("GCP_POOL_SIZE", "2"))


class NamedRedisPool(ConnectionPool[socket.socket]):
    def _new_connection(self) -> socket.socket:
        port = int(os.environ["GCP_REDIS_PORT"])
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"CLIENT SETNAME pid-%d\r\n" % os.getpid())
        if sock.recv(5) != b"+OK\r\n":
            raise ConnectionError("CLIENT SETNAME failed")
        return sock


class NamedPgPool(ConnectionPool[Any]):
    def _new_connection(self) -> Any:
        return psycopg2.connect(os.environ["GCP_PG_DSN"], application_name=f"pid-{os.getpid()}")

    def _on_release(self, conn: Any) -> None:
        conn.rollback()


# The recipe: no I/O and no greenlet here; each worker's first get() opens its own pool.
redis_pool = NamedRedisPool(size=SIZE, name="redis", timeout=10, open=False)
pg_pool = NamedPgPool(size=SIZE, name="pg", timeout=10, open=False)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    with redis_pool.get() as conn:
        conn.sendall(b"PING\r\n")
        pong = conn.recv(7)
    with pg_pool.get() as db, db.cursor() as cur:
        cur.execute("SELECT 1")
        (one,) = cur.fetchone()
    gevent.sleep(0.02)  # hold the request a moment, so that concurrent ones reach both workers
    body = json.dumps({"pid": os.getpid(), "redis": pong.decode().strip(), "pg": one})
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body.encode()]
