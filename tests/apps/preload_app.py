"""WSGI app for ``gunicorn -k gevent --preload``: its pool is made, and filled, in the master.

Each request pings on a pooled connection and answers the worker's pid and the connection's local
address, so the test can match it with what the recording server saw.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import gevent

from geventconnpool.testing import ping

from .recording_server import NamedSocketPool, local_port

MASTER_PID = os.getpid()
pool = NamedSocketPool(
    2, address=("127.0.0.1", int(os.environ["GCP_PING_PORT"])), name="preload", timeout=5
)
pool.wait_ready(10)  # the master's own connections, opened before the workers fork


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    with pool.get() as conn:
        ping(conn)
        port = local_port(conn)
        gevent.sleep(0.02)  # hold it a moment, so that concurrent requests reach both workers
    body = json.dumps({"pid": os.getpid(), "port": port, "master": MASTER_PID}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
