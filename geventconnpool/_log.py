"""Logging helpers: a logger per pool, and warnings that do not flood while a backend is down."""

from __future__ import annotations

import logging
import time

LOGGER = logging.getLogger("geventconnpool")


def pool_logger(name: str) -> logging.Logger:
    """The logger of the pool called ``name``: a child of ``geventconnpool``."""
    return LOGGER.getChild(name)


class RateLimitedLog:
    """Logs a message of a given key at most once per ``interval`` seconds, counting the rest.

    A backend down for an hour gives a line a minute saying how many attempts failed, not a line
    per attempt.
    """

    __slots__ = ("_interval", "_last", "_logger", "_suppressed")

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

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
