"""The pool's errors: one small hierarchy, and the exceptions that mean "connection broken"."""

from __future__ import annotations

import socket

#: Exceptions that mean a connection is broken, as in 0.2.1: ``(socket.error,)``, i.e. ``OSError``.
DEFAULT_EXC_CLASSES: tuple[type[BaseException], ...] = (socket.error,)


class PoolError(Exception):
    """Base class of every error the pool raises."""


class PoolTimeout(PoolError, TimeoutError):
    """No connection could be handed out within the ``get()`` deadline."""


class PoolClosed(PoolError):
    """The pool was closed; ``get()`` cannot hand out connections any more."""


class PoolExhausted(PoolError):
    """``max_waiting`` greenlets already wait for a connection; this one was refused at once."""


class PoolUnavailable(PoolError):
    """The backend is considered down (``fail_fast``): ``get()`` fails at once, not waiting."""


class PoolWarning(RuntimeWarning):
    """A pool's connects started failing: printed to stderr once per outage by Python's default
    warning filters, so that a backend that is down is seen without any logging configured."""


__all__ = [
    "DEFAULT_EXC_CLASSES",
    "PoolClosed",
    "PoolError",
    "PoolExhausted",
    "PoolTimeout",
    "PoolUnavailable",
    "PoolWarning",
]
