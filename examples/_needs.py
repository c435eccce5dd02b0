"""What the examples need, checked before they start: one line naming the fix, not a traceback.

Imported by the scripts in ``examples/`` (run as ``python examples/<name>.py``, which puts this
directory on ``sys.path``).
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


def package(module: str, install: str) -> None:
    """Exit with one line if ``module`` cannot be imported; ``install`` is the command to run."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise SystemExit(f"error: this example needs {module} ({exc}); install it: {install}")
