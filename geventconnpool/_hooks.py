"""The hooks a subclass of ConnectionPool overrides, with their defaults and contracts.

Only ``_new_connection`` is required. README's "Hooks" and "Lifecycle hooks" sections say when
each runs; the pool calls them through the instance, so they may also be replaced per pool.
"""

from __future__ import annotations

import difflib
from typing import Any, Generic, TypeVar

import gevent
from greenlet import GreenletExit

from . import _fork
from ._probe import socket_is_quiet
from .errors import PoolError

C = TypeVar("C")

#: What interrupts a hook rather than being its failure: a kill, a timeout (the caller's, which
#: must come out as the same object), KeyboardInterrupt and SystemExit. Any other BaseException a
#: hook raises is the hook's failure, handled like an Exception (issue 19: no storm, no lost slot).
INTERRUPTS: tuple[type[BaseException], ...] = (
    GreenletExit,
    gevent.Timeout,
    KeyboardInterrupt,
    SystemExit,
)


def is_interrupt(error: BaseException) -> bool:
    """``error`` interrupts the code running a hook (see :data:`INTERRUPTS`)."""
    return isinstance(error, INTERRUPTS)


class Hooks(Generic[C]):
    """The overridable behaviour of a pool; ConnectionPool is the rest."""

    exc_classes: tuple[type[BaseException], ...]

    def _new_connection(self) -> C:
        """Open and return a new connection; raising, or returning None, is a failed attempt."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement _new_connection() to open a connection"
        )

    def _keepalive(self, conn: C) -> None:
        """Application-level keepalive (a PING); raise one of ``exc_classes`` if it is broken."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _keepalive(conn)")

    def _check(self, conn: C) -> bool:
        """Checkout check for a connection idle longer than ``check_idle_after``.

        The default costs no round trip: a socket-like connection (with ``fileno()``) that is
        readable while idle has been closed or reset by its peer, or holds bytes nobody asked for,
        and is dead; nothing is read from it. Return False or raise to discard the connection.
        """
        fileno = getattr(conn, "fileno", None)
        return True if fileno is None else socket_is_quiet(fileno())

    def _close_connection(self, conn: C) -> None:
        """Close a connection the pool discards; the default calls ``conn.close()`` if it exists."""
        close = getattr(conn, "close", None)
        if close is not None:
            close()

    def _forget_connection(self, conn: C) -> None:
        """In a forked child: drop a connection inherited from the parent without disturbing it.

        Only this process's file descriptor is closed, so the parent's TCP (and TLS) session goes
        on; the object itself is kept alive so no finaliser can later close a reused descriptor.
        """
        _fork.forget(conn)

    def _on_connect(self, conn: C) -> None:
        """Called once on a new connection, before its first use (session setup); raise to fail."""

    def _on_acquire(self, conn: C) -> bool | None:
        """Called before a hand-out; raising or returning False discards it and tries the next."""
        return None

    def _on_release(self, conn: C) -> bool | None:
        """Called on return (reset state); raising or returning False discards the connection."""
        return None

    def _on_discard(self, conn: C, reason: str) -> None:
        """Called after the pool closed a connection, with the reason (a field of Discarded)."""

    def _is_disconnect(self, exc: BaseException) -> bool:
        """True when ``exc``, raised inside ``with pool.get()``, means the connection is broken."""
        return isinstance(exc, self.exc_classes) and not isinstance(exc, PoolError)


def require_new_connection(cls: type[Any]) -> None:
    """Refuse, when the pool is made, a class that cannot open a connection: ``ConnectionPool``
    itself, or a subclass whose ``_new_connection`` is missing or misspelt. Otherwise it would
    only fail at the first ``get()``, after retrying ``NotImplementedError`` with backoff."""
    if getattr(cls, "_new_connection", None) is not Hooks._new_connection:
        return
    names = [n for c in cls.__mro__ if c is not Hooks for n in vars(c) if n.startswith("_")]
    close = difflib.get_close_matches("_new_connection", names, n=1, cutoff=0.8)
    hint = f" (is {close[0]!r} a misspelling of it?)" if close else ""
    raise TypeError(
        f"{cls.__name__} does not implement _new_connection(){hint}: subclass ConnectionPool "
        "and define `def _new_connection(self)` returning a new connection; ConnectionPool "
        "itself cannot open one"
    )
