"""Backend health: is the backend up, and when may the pool try it again.

One object, owned by :class:`._state.PoolState`, keeps the failure streaks, the backoff and the
down/up verdict; the error messages and the log lines read it. Every rule about a failing
backend lives here:

- what counts as a failed connect, and when a streak grows (once per round of concurrent
  attempts; an attempt that started before the last success says nothing about the backend now);
- a new connection refused at its first hand-out is a failed connect too (PgBouncer accepting
  while the database behind it is down), and the backend is not back until one passes;
- the backoff after a failure, and the retry while callers wait (:data:`WAITER_RETRY`);
- when the backend is considered down (``fail_fast_after`` failures and nothing idle) and back.
"""

from __future__ import annotations

from typing import Protocol

from ._backoff import delay as backoff_delay
from ._records import INF, PoolEvent

#: While callers wait, a failing backend is retried at least this often (seconds), whatever the
#: backoff says: the pool is usable again within about this long of the backend coming back.
WAITER_RETRY = 0.2
REJECTED_MESSAGE = (
    "new connections open but fail the checkout check (_check) or _on_acquire at once: "
    "is the server behind a proxy down?"
)


class BackoffPolicy(Protocol):
    """The options health needs (a :class:`._records.Policy`)."""

    reconnect_delay: float
    reconnect_max_delay: float
    fail_fast_after: int


class Health:
    """The backend's health as the pool's connects see it."""

    __slots__ = (
        "delay",
        "down",
        "failed_at",
        "failures",
        "last_error",
        "rejected",
        "retry_at",
        "succeeded_at",
    )

    def __init__(self) -> None:
        self.last_error: BaseException | None = None  # the last counted failure, kept on reset
        self.reset()

    def reset(self) -> None:
        """Forget the streaks (a forked child starts afresh)."""
        self.down = False  # considered down (fail_fast_after failures): fail_fast refuses
        self.failures = 0  # consecutive failed connect rounds
        self.rejected = 0  # consecutive new connections that failed their first check
        self.failed_at = -INF  # when the last counted failure was booked
        self.succeeded_at = -INF  # when a connect last succeeded
        self.retry_at = 0.0  # backoff: no connect for waiters-or-fill before this
        self.delay = 0.0  # the backoff chosen at the last failure (for the log line)

    @property
    def streak(self) -> int:
        """Failures in a row, of either kind (0: healthy)."""
        return max(self.failures, self.rejected)

    def cause(self) -> BaseException | None:
        """The last connect error while connects are failing (a PoolTimeout's cause), else None."""
        return self.last_error if self.streak else None

    def failed(
        self, error: BaseException, started_at: float, now: float, p: BackoffPolicy, idle: bool
    ) -> tuple[PoolEvent, ...]:
        """A connect that started at ``started_at`` failed; what to report (nothing if stale)."""
        if started_at < self.succeeded_at:
            return ()  # it started before the backend came back: it says nothing about now
        if started_at >= self.failed_at or not self.failures:  # attempts of a round count once
            self.failures += 1
            self.failed_at = now
        self.last_error = error
        return self._back_off(now, p, idle)

    def rejected_new(self, now: float, p: BackoffPolicy, idle: bool) -> tuple[PoolEvent, ...]:
        """A new connection failed its first check or ``_on_acquire``: a failed connect."""
        self.rejected += 1
        self.failed_at = now
        self.last_error = ConnectionError(REJECTED_MESSAGE)
        return self._back_off(now, p, idle)

    def _back_off(self, now: float, p: BackoffPolicy, idle: bool) -> tuple[PoolEvent, ...]:
        streak = self.streak
        self.delay = backoff_delay(streak, p.reconnect_delay, p.reconnect_max_delay)
        self.retry_at = now + self.delay
        if streak >= p.fail_fast_after and not self.down and not idle:
            self.down = True
            return (PoolEvent.DOWN, PoolEvent.FAILED)
        return (PoolEvent.FAILED,)

    def succeeded(self, now: float) -> bool:
        """A connect succeeded; True if the backend is back (it was down)."""
        self.failures = 0
        self.succeeded_at = now
        if self.rejected:
            return False  # not back until a new connection also passes its first check
        self.retry_at = 0.0
        return self._up()

    def served_new(self) -> bool:
        """A connection passed its hand-out: rejections end; True if the backend is back."""
        if not self.rejected:
            return False
        self.rejected = 0
        return not self.failures and self._up()

    def _up(self) -> bool:
        if not self.down:
            return False
        self.down = False
        return True

    def may_try(self, now: float, waiting: bool) -> bool:
        """A connect may start now: no backoff, or callers wait and WAITER_RETRY has passed."""
        if now >= self.retry_at:
            return True
        return waiting and now >= self.failed_at + WAITER_RETRY

    def next_try(self, waiting: bool) -> float:
        """When :meth:`may_try` is next true (for waiters, or for the background fill)."""
        if waiting:
            return min(self.retry_at, self.failed_at + WAITER_RETRY)
        return self.retry_at
