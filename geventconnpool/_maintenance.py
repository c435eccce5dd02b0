"""The pool's scheduler: one greenlet that sleeps until background work is due, then runs it.

What is due (refill, keepalive, expiry, idle reaping, leak reports) is the state's to decide
(``PoolState.due``); the scheduler only sleeps until then, or until ``wake_by()`` says something
is due sooner. It holds only a weak reference to its pool and ends when the pool is closed,
forked or garbage-collected.
"""

from __future__ import annotations

import logging
import time
import weakref
from typing import Any, Protocol

import gevent
from gevent.event import Event
from greenlet import getcurrent

_INF = float("inf")
_RETRY_AFTER_ERROR = 1.0
_MIN_SLEEP = 0.002  # work that is due "now" but could not start waits this long, not a busy loop
_log = logging.getLogger("geventconnpool")


class Maintained(Protocol):
    """What the scheduler needs of its pool."""

    name: str

    def _run_due(self, scheduler: Scheduler) -> float | None: ...


class Scheduler:
    """Runs a pool's due background work in one greenlet."""

    def __init__(self, pool: Maintained) -> None:
        self._event = Event()
        self._ref = weakref.ref(pool, lambda _: self._event.set())
        self._greenlet: gevent.Greenlet[Any, None] | None = None
        self.next_at = 0.0  # when the greenlet wakes up next on its own
        self.started = False

    def start(self) -> None:
        self.started = True
        self._greenlet = gevent.spawn(_run, self._ref, self._event, self)

    def wake_by(self, when: float) -> None:
        """Make sure the scheduler looks again no later than ``when`` (monotonic seconds;
        ``-inf``: now, also while it runs, so that a change made meanwhile is seen)."""
        if (when < self.next_at or when == -_INF) and not self._event.is_set():
            self._event.set()

    def wake(self) -> None:
        if not self._event.is_set():
            self._event.set()

    def stop(self) -> gevent.Greenlet[Any, None] | None:
        """Stop; return the scheduler's greenlet unless it is the caller (for killing)."""
        g, self._greenlet = self._greenlet, None
        self._event.set()
        return None if g is None or g is getcurrent() or g.dead else g


def _run(ref: weakref.ref[Maintained], event: Event, sched: Scheduler) -> None:
    while True:
        pool = ref()
        if pool is None:
            return
        event.clear()
        sched.next_at = -_INF  # while running: it computes what is due itself
        try:
            next_at = pool._run_due(sched)
        except Exception:
            _log.exception("pool %r: background work failed; going on", pool.name)
            next_at = time.monotonic() + _RETRY_AFTER_ERROR
        del pool  # sleep without keeping the pool alive
        if next_at is None:  # the pool is closed, or has another scheduler (fork)
            return
        sched.next_at = next_at
        if event.is_set():
            gevent.sleep(0)  # woken while running: look again, but let others run first
        else:
            wait = max(next_at - time.monotonic(), _MIN_SLEEP)
            event.wait(None if next_at == _INF else wait)
