"""The pool's scheduler: one greenlet that sleeps until background work is due, then runs it.

What is due (refill, keepalive, expiry, idle reaping, leak reports) is the state's to decide
(``PoolState.due``); the scheduler only sleeps until then, or until ``wake_by()`` says something
is due sooner. It holds only a weak reference to its pool and ends when the pool is closed,
forked or garbage-collected.
"""

from __future__ import annotations

import time
from typing import Protocol

from ._loop import Loop


class Maintained(Protocol):
    """What the scheduler needs of its pool."""

    name: str

    @property
    def closed(self) -> bool: ...

    def _run_due(self, scheduler: Scheduler) -> float | None: ...


class Scheduler(Loop[Maintained]):  # the loop itself is _loop.Loop's (issue 18 item 5)
    """Runs a pool's due background work in one greenlet."""

    def __init__(self, pool: Maintained) -> None:
        # After a hookless fork (uWSGI) its turn resets the child's pool and starts a new one.
        super().__init__(
            pool, name=f"pool {pool.name!r}: scheduler", start=False, turn_after_fork=True
        )

    def turn(self, pool: Maintained) -> float | None:
        """Run what is due; the pool says when to look again (None: closed, or forked)."""
        next_at = pool._run_due(self)
        return None if next_at is None else next_at - time.monotonic()
