"""What the examples need, checked before they start: one line naming the fix, not a traceback.

Imported by the scripts in ``examples/`` (run as ``python examples/<name>.py``, which puts this
directory on ``sys.path``) and in ``examples/integrations/`` (which add this directory to it).
"""

from __future__ import annotations

import importlib

from gevent import socket

from geventconnpool.testing import ping

REDIS_COMMAND = "redis-server --port {port}"


def ping_server(address: tuple[str, int], command: str = REDIS_COMMAND) -> None:
    """Exit with one line if nothing at ``address`` answers ``PING`` with ``+PONG``."""
    host, port = address
    try:
        with socket.create_connection(address, timeout=5) as sock:
            ping(sock)
    except OSError as exc:
        start = command.format(port=port)
        raise SystemExit(
            f"error: no PING server at {host}:{port} ({exc}); start one: {start}"
            " (or leave out --host/--port: the example embeds one)"
        )


#: The command that starts the Redis and PostgreSQL the integration examples expect.
SERVERS_UP = "make servers-up"


def server(address: tuple[str, int], what: str) -> None:
    """Exit with one line if nothing accepts connections at ``address``."""
    host, port = address
    try:
        socket.create_connection(address, timeout=5).close()
    except OSError as exc:
        raise SystemExit(
            f"error: no {what} at {host}:{port} ({exc}); start one: {SERVERS_UP} (from the "
            "repository root; it starts Redis on 127.0.0.1:6379 and PostgreSQL on "
            "127.0.0.1:5432), or pass --host/--port"
        )


def package(module: str, install: str) -> None:
    """Exit with one line if ``module`` cannot be imported; ``install`` is the command to run."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise SystemExit(f"error: this example needs {module} ({exc}); install it: {install}")
