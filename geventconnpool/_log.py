"""Logging helpers: a logger per pool, and warnings that do not flood while a backend is down."""

from __future__ import annotations

import logging
import time
import traceback
import warnings
from typing import Any

from ._health import Health
from ._records import PoolEvent, greenlet_label
from .errors import PoolWarning

LOGGER = logging.getLogger("geventconnpool")


class _PoolLogger(logging.Logger):
    """A pool's own logger, *not* registered with :mod:`logging`'s manager, so that it is freed
    with its pool: a program that makes pools by the thousand (one per key, see
    :class:`~geventconnpool.keyed.PoolMap`) would otherwise keep one logger per pool name ever
    used. It propagates to ``geventconnpool`` like a registered child would."""

    def isEnabledFor(self, level: int) -> bool:
        # No cache: logging clears the caches of registered loggers only.
        if self.manager.disable >= level:
            return False
        return level >= self.getEffectiveLevel()


def pool_logger(name: str) -> logging.Logger:
    """The logger of the pool called ``name``: a child of ``geventconnpool``.

    A logger registered under that name beforehand (``logging.getLogger("geventconnpool.x")``,
    e.g. by ``dictConfig``) is used as is; otherwise the pool gets an unregistered one.
    """
    full = f"{LOGGER.name}.{name}"
    registered = logging.Logger.manager.loggerDict.get(full)
    if isinstance(registered, logging.Logger):
        return registered
    logger = _PoolLogger(full)
    logger.parent = LOGGER
    return logger


class RateLimitedLog:
    """Logs a message of a given key at most once per ``interval`` seconds, counting the rest.

    A backend down for an hour gives a line a minute saying how many attempts failed, not a line
    per attempt.
    """

    __slots__ = ("_interval", "_last", "_logger", "_suppressed", "outage_warned")

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self.outage_warned = False  # the PoolWarning of this outage was issued (see warn_outage)

    def log(self, level: int, key: str, msg: str, *args: object) -> None:
        """Log ``msg % args`` unless ``key`` was logged less than ``interval`` seconds ago."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        skipped = self._suppressed.pop(key, 0)
        if skipped:
            msg += " (%d similar messages suppressed)"
            args = (*args, skipped)
        self._logger.log(level, msg, *args)

    def reset(self, key: str) -> None:
        """Forget ``key``, so that its next message is logged at once."""
        self._last.pop(key, None)
        self._suppressed.pop(key, None)


def log_event(
    log: logging.Logger, limited: RateLimitedLog, name: str, event: PoolEvent, health: Health
) -> None:
    """Log what the state reported: a failed connect, the backend down or back.

    The streak and the delay are the ones the health object chose when it booked the failure:
    never "0 in a row", never a negative delay. The first failure of an outage is also a
    :class:`PoolWarning` (see :func:`warn_outage`).
    """
    streak, error = health.streak, health.last_error
    if event is PoolEvent.FAILED:
        if not limited.outage_warned:
            limited.outage_warned = True
            warn_outage(name, error)
        limited.log(
            logging.WARNING, "connect",
            "pool %r: connect failed (%d in a row; next attempt in %.2fs): %r",
            name, streak, health.delay, error,
        )  # fmt: skip
    elif event is PoolEvent.DOWN:
        log.warning(
            "pool %r: backend considered down after %d failed connects: %r", name, streak, error
        )
    elif event is PoolEvent.UP:
        log.info("pool %r: backend is back, a connect succeeded", name)
        limited.reset("connect")
        limited.outage_warned = False  # the next outage is warned about again


def warn_outage(name: str, error: object) -> None:
    """The first failed connect of a pool, and the first after each outage it recovered from, as
    a :class:`PoolWarning`: Python prints it to stderr when nothing configured warnings or
    logging (``geventconnpool`` logs to a NullHandler until the application configures logging).

    No warning registry is kept (``registry=None``): a program with many pools (PoolMap) does not
    accumulate one entry per message. A filter that turns warnings into errors (``-W error``)
    cannot raise anywhere useful from a connect greenlet: the warning is then dropped, the log
    line stays.
    """
    message = (
        f"pool {name!r}: connect failed: {error!r}; is the backend up? The pool retries in the "
        "background and get() raises PoolTimeout after its timeout; this is printed once per "
        "outage (the logger 'geventconnpool' has every attempt)"
    )
    try:
        warnings.warn_explicit(
            message, PoolWarning, "geventconnpool", 0, module="geventconnpool", registry=None
        )
    except PoolWarning:
        pass


def warn_held(log: logging.Logger, name: str, rec: Any, limit: float | None) -> None:
    """A connection held past leak_timeout: who holds it, and where it was taken."""
    holder = rec.holder
    where = "".join(rec.taken_at or ())
    if not where and holder is not None and holder.gr_frame is not None:
        where = "".join(traceback.format_stack(holder.gr_frame))
    log.warning(
        "pool %r: connection #%d held by %s for %.1fs (leak_timeout=%ss); taken at:\n%s",
        name, rec.id, greenlet_label(holder), time.monotonic() - rec.acquired_at, limit, where,
    )  # fmt: skip


def warn_came_back(log: logging.Logger, name: str, rec: Any, now: float) -> None:
    """A connection reported as leaked was returned after all."""
    log.info(
        "pool %r: connection #%d reported as leaked came back after %.1fs",
        name, rec.id, now - rec.acquired_at,
    )  # fmt: skip


def warn_collected(log: logging.Logger, name: str, rec: Any, holder: Any) -> None:
    """A get() context was garbage-collected while entered: its connection was leaked."""
    taken = (
        "; taken at:\n" + "".join(rec.taken_at)
        if rec.taken_at
        else " (set leak_timeout to record where connections are taken)"
    )
    log.warning(
        "pool %r: connection #%d was taken by %s and its get() context was garbage-collected "
        "without being exited; use `with pool.get() as conn:`%s",
        name, rec.id, greenlet_label(holder), taken,
    )  # fmt: skip
