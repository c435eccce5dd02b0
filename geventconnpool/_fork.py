"""Fork safety: a forked child never uses a connection its parent opened."""

from __future__ import annotations

import os
import socket
import weakref
from typing import Any, Protocol

import gevent.socket
from gevent.hub import get_hub


class _ForkAware(Protocol):
    def _forked(self) -> None: ...
    def _after_fork_io(self) -> None: ...


_pools: weakref.WeakSet[Any] = weakref.WeakSet()
#: Inherited connection objects kept alive for ever, so that their finalisers never run in the
#: child (they would close descriptors whose numbers may by then belong to something else, or
#: send a protocol goodbye that ends the parent's session).
_graveyard: list[object] = []


def register(pool: _ForkAware) -> None:
    """Have ``pool`` reset itself in a forked child."""
    _pools.add(pool)


def unregister(pool: _ForkAware) -> None:
    _pools.discard(pool)


def forget(conn: object) -> None:
    """Close only this process's descriptor of ``conn``, leaving the parent's session intact."""
    if isinstance(conn, (socket.socket, gevent.socket.socket)):
        fd = conn.detach()
        if fd >= 0:
            os.close(fd)
        return
    fileno = getattr(conn, "fileno", None)
    if fileno is not None:
        try:
            fd = fileno()
            if isinstance(fd, int) and fd >= 0:
                os.close(fd)
        except (OSError, ValueError):
            pass
    _graveyard.append(conn)


def _after_fork_in_child() -> None:
    hub = get_hub()
    for pool in list(_pools):
        pool._forked()  # at once: nothing of the parent's is used from here on
        hub.loop.run_callback(pool._after_fork_io)  # the rest when the loop runs


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork, so nothing to reset there
    os.register_at_fork(after_in_child=_after_fork_in_child)
