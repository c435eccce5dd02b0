"""One background loop: a greenlet that works for an owner it holds only weakly.

Every background task of the package (a pool's scheduler, PoolMap's reaper and room maker,
BalancedPool's worker, the Sentinel watchers) is a :class:`Loop`, so they share one set of rules:

- **It holds a weak reference to its owner** and no strong one while it sleeps: an owner
  dropped by its program is collected, and its loop stops. It also stops quietly when the owner
  is closed (``owner.closed``), when the process forked (a child does not run its parent's loops;
  the owner starts its own), when ``stop()`` is called or its greenlet is killed.
- **It sleeps until its next due time or until woken.** ``body(owner)`` does one turn of work
  and returns the seconds until the next one (``math.inf``: until woken; ``None``: stop for
  good). ``wake()`` cuts the sleep short.
- **It never dies on an error.** An ``Exception`` (and any ``BaseException`` other than
  ``GreenletExit``, ``SystemExit`` and ``KeyboardInterrupt``: a stray ``gevent.Timeout`` or a
  custom one is still a bug in one turn, not a reason to stop watching) is logged with its
  traceback once per ``error_log_interval`` seconds (the rest are counted in the next line), and
  the loop goes on after an exponential backoff (``error_backoff``: first delay, cap) that resets
  at the first turn that succeeds. ``GreenletExit`` (a kill) stops it;
  ``SystemExit``/``KeyboardInterrupt`` go on up, as gevent hands them to the main greenlet.
"""

from __future__ import annotations

import logging
import math
import os
import time
import weakref
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import gevent
from gevent.event import Event
from greenlet import GreenletExit, getcurrent

from . import _backoff

__all__ = ["Loop"]

_LOG = logging.getLogger("geventconnpool")
_MIN_SLEEP = 0.002  # a turn due "now" that could not run waits this long: never a busy loop
_STOPPERS = (GreenletExit, SystemExit, KeyboardInterrupt)


class Owner(Protocol):
    """What a loop reads of its owner: whether it is closed (read before every turn)."""

    @property
    def closed(self) -> bool: ...


OwnerT = TypeVar("OwnerT", bound=Owner)


class Loop(Generic[OwnerT]):
    """A background greenlet running ``body(owner)`` turn after turn; see the module doc.

    ``body`` must not hold the owner itself (a bound method of the owner would keep it alive
    for ever): pass a function, or subclass and override :meth:`turn`.
    """

    def __init__(
        self,
        owner: OwnerT,
        body: Callable[[OwnerT], float | None] | None = None,
        *,
        name: str,
        start: bool = True,
        logger: logging.Logger = _LOG,
        error_backoff: tuple[float, float] = (1.0, 10.0),
        error_log_interval: float = 60.0,
        turn_after_fork: bool = False,
    ) -> None:
        self.name = name  # for the log: "pool 'x': scheduler", "'poolmap-1': reaper"
        self._body = body
        self._event = Event()
        event = self._event
        self._ref: weakref.ref[OwnerT] = weakref.ref(owner, lambda _: event.set())
        self._logger = logger
        self._log_interval = error_log_interval
        self._logged_at = -math.inf  # when a failed turn was last logged
        self._unlogged = 0  # failed turns since then, not logged
        self.backoff = error_backoff
        self.errors = 0  # failed turns in a row
        self._greenlet: gevent.Greenlet[Any, None] | None = None
        self._pid = os.getpid()
        #: After a fork that skipped Python's at-fork hooks, run one more turn in the child (the
        #: pool's scheduler notices the fork there and starts the child's own) instead of none.
        self.turn_after_fork = turn_after_fork
        self._stopped = False
        #: When the loop wakes on its own next (monotonic); -inf while a turn runs.
        self.next_at = -math.inf
        self.turns = 0  # turns started (successful or not)
        if start:
            self.start()

    def turn(self, owner: OwnerT) -> float | None:
        """One turn of work; seconds until the next (``math.inf``: until woken; None: stop)."""
        assert self._body is not None, "give a body or override turn()"
        return self._body(owner)

    def weak_turn(self, ref: weakref.ref[OwnerT]) -> float | None:
        """:meth:`turn` for the owner behind ``ref``. A turn that blocks for long (a
        subscription) overrides this one instead and holds the owner only while it uses it."""
        owner = ref()
        return None if owner is None else self.turn(owner)

    @property
    def started(self) -> bool:
        return self._greenlet is not None

    @property
    def running(self) -> bool:
        """True while the greenlet is alive."""
        g = self._greenlet
        return g is not None and not g.dead

    def start(self) -> None:
        """Start the greenlet (once)."""
        if self._greenlet is None and not self._stopped:
            self._greenlet = gevent.spawn(_run, self)

    def wake(self) -> None:
        """Run the next turn now (on the next loop iteration), not at its due time."""
        if not self._event.is_set():
            self._event.set()

    def wake_by(self, when: float) -> None:
        """Make sure the next turn runs no later than ``when`` (monotonic seconds; ``-inf``:
        now, also while a turn runs, so that a change made meanwhile is seen)."""
        if (when < self.next_at or when == -math.inf) and not self._event.is_set():
            self._event.set()

    def stop(self) -> gevent.Greenlet[Any, None] | None:
        """Stop after the current turn; return the greenlet unless it is the caller's or dead
        (for a caller that wants to kill or join it)."""
        self._stopped = True
        self._event.set()
        g = self._greenlet
        return None if g is None or g is getcurrent() or g.dead else g

    def _owner(self) -> OwnerT | None:
        """The owner, if the loop should run another turn for it."""
        owner = self._ref()
        if owner is None or self._stopped or owner.closed:
            return None
        if os.getpid() != self._pid and not self.turn_after_fork:
            return None
        return owner

    def _run_turn(self) -> float | None:
        """One turn: the body's answer, or the backoff after a failure. None: stop."""
        if self._owner() is None:
            return None
        self._event.clear()
        self.next_at = -math.inf
        self.turns += 1
        try:
            delay = self.weak_turn(self._ref)  # no reference to the owner in this frame
        except _STOPPERS:
            raise
        except BaseException as exc:  # the policy: a loop never dies of one turn
            return self._failed(exc)
        self.errors = 0
        return delay

    def _failed(self, exc: BaseException) -> float:
        """Log a failed turn (rate-limited) and return the backoff before the next."""
        self.errors += 1
        delay = _backoff.delay(self.errors, *self.backoff)
        now = time.monotonic()
        if now - self._logged_at < self._log_interval:
            self._unlogged += 1
            return delay
        skipped, self._unlogged, self._logged_at = self._unlogged, 0, now
        self._logger.error(
            "%s: background work failed (%d in a row, %d not logged since the last line); "
            "going on in %.2fs",
            self.name, self.errors, skipped, delay, exc_info=exc,
        )  # fmt: skip
        return delay

    def _sleep(self, delay: float) -> None:
        """Sleep ``delay`` seconds or until woken; a turn due now yields first."""
        if self._event.is_set():
            gevent.sleep(0)  # woken while running: look again, but let others run first
            return
        if math.isinf(delay):
            self.next_at = math.inf
            self._event.wait()
            return
        self.next_at = time.monotonic() + delay
        self._event.wait(max(delay, _MIN_SLEEP))


def _run(loop: Loop[Any]) -> None:
    """The greenlet: turns until the owner is gone, closed or forked, or the loop stopped.

    It holds the loop, never the owner (only while a turn runs).
    """
    while True:
        delay = loop._run_turn()
        if delay is None or loop._stopped:
            return
        loop._sleep(delay)
