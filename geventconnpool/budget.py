"""A retry budget shared by many calls: retries may add at most a fraction of the recent calls.

Finagle's ``RetryBudget`` in our words. Every call deposits one token when it starts; every
retry withdraws ``1 / percent_can_retry`` tokens. Tokens live for about ``ttl`` seconds (a
sliding window of ten slices), and a reserve of ``min_retries_per_sec * ttl`` retries is always
there, so a service with little traffic can still retry. Under an outage the calls keep coming,
their retries stop once the budget is spent, and the backend sees at most about
``(1 + percent_can_retry) x calls + min_retries_per_sec x seconds`` attempts instead of
``(1 + max_failures) x calls``.

The bound that holds exactly: in any ``ttl`` seconds, the retries granted are at most
``percent_can_retry`` x the calls of the ``ttl`` seconds before the last of them, plus
``min_retries_per_sec x ttl``. The window is kept in slices of ``ttl / 10`` (constant memory
whatever the traffic), rounded the safe way for each side: a deposit counts for 0.9-1.0 x
``ttl`` (it may leave early), and a slice's withdrawals leave together exactly ``ttl`` after the
*last* of them (one never leaves early). So a retry taken at the end of a slice is not handed
out again before ``ttl`` has passed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

__all__ = ["RetryBudget"]

_SCALE = 1000  # tokens per deposit: integer arithmetic, so balances never drift
_SLICES = 10  # the window is ttl long, kept as this many slices
# Withdrawals are kept one slice longer: a withdrawal made anywhere in a slice is still
# counted ttl seconds later (with _SLICES slices, one made at a slice's end would leave the
# window after 0.9 x ttl, and the budget could grant up to twice its bound within one ttl).
_WITHDRAWAL_SLICES = _SLICES + 1


def _number(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__} ({value!r})")
    number = float(value)
    too_low = number <= low if low_open else number < low
    if math.isnan(number) or too_low or number > high:
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise ValueError(f"{name} must be {bound} and <= {high:g}, got {value!r}")
    return number


class RetryBudget:
    """How many retries a group of calls may make: share one between the functions of a backend.

    ``ttl`` (seconds, default 10) is how long a call counts; ``percent_can_retry`` (default 0.2)
    the retries allowed per call, as a fraction; ``min_retries_per_sec`` (default 10) a floor,
    as retries per second over the window. ``clock`` is injectable for tests. Pass it as
    ``@retry(budget=budget)``; :meth:`deposit` and :meth:`withdraw` are what ``retry`` calls.
    Not thread-safe across OS threads; greenlets of one hub may share it freely (no method
    switches greenlets).
    """

    def __init__(
        self,
        ttl: float = 10.0,
        min_retries_per_sec: float = 10,
        percent_can_retry: float = 0.2,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = _number("ttl", ttl, 0.0, 3600.0, low_open=True)
        self.min_retries_per_sec = _number("min_retries_per_sec", min_retries_per_sec, 0, 1e6)
        self.percent_can_retry = _number("percent_can_retry", percent_can_retry, 0, 1000)
        if not callable(clock):
            raise TypeError(f"clock must be callable, got {clock!r}")
        self._clock = clock
        self._deposit = _SCALE if self.percent_can_retry > 0 else 0
        self._cost = int(_SCALE / self.percent_can_retry) if self.percent_can_retry > 0 else 1
        self._reserve = int(self.min_retries_per_sec * self.ttl * self._cost)
        self._slice = self.ttl / _SLICES
        self._deposits = [0] * _SLICES  # tokens deposited per slice of the window
        self._withdrawals = [0] * _WITHDRAWAL_SLICES  # tokens withdrawn per slice (one more)
        self._last_withdrawal = [0.0] * _WITHDRAWAL_SLICES  # when each slice's last one was
        self._total = 0  # sum of _deposits minus sum of _withdrawals
        self._now = clock()  # the clock at the last _advance()
        self._current = math.floor(self._now / self._slice)  # absolute number of the newest slice
        #: Retries refused since the budget was created.
        self.refused = 0
        #: Retries granted since the budget was created.
        self.granted = 0
        #: True from a refusal until the next granted retry.
        self.exhausted = False
        self._logged_at: float | None = None  # when a refusal was last logged (see log_due)

    def deposit(self) -> None:
        """A call started: it adds ``percent_can_retry`` retries to the budget for ``ttl``."""
        self._advance()
        self._deposits[self._current % _SLICES] += self._deposit
        self._total += self._deposit

    def withdraw(self) -> bool:
        """Take one retry from the budget; False (and nothing taken) when it is spent."""
        self._advance()
        if self._total + self._reserve < self._cost:
            self.refused += 1
            self.exhausted = True
            return False
        slot = self._current % _WITHDRAWAL_SLICES
        self._withdrawals[slot] += self._cost
        self._last_withdrawal[slot] = self._now
        self._total -= self._cost
        self.granted += 1
        self.exhausted = False
        return True

    def log_due(self) -> bool:
        """True for the first refusal, then at most once per ``ttl``: how ``retry`` logs them."""
        now = self._clock()
        if self._logged_at is not None and now - self._logged_at < self.ttl:
            return False
        self._logged_at = now
        return True

    @property
    def balance(self) -> int:
        """Retries the budget would grant right now."""
        self._advance()
        return max(0, (self._total + self._reserve) // self._cost)

    def _advance(self) -> None:
        """Forget what left the window since the last call (at most 11 steps): deposits with
        their slice, a slice's withdrawals ``ttl`` after the last of them."""
        self._now = clock = self._clock()
        now = math.floor(clock / self._slice)
        if now > self._current:
            for n in range(max(self._current + 1, now - _WITHDRAWAL_SLICES + 1), now + 1):
                self._total -= self._deposits[n % _SLICES]
                self._deposits[n % _SLICES] = 0
                self._release(n % _WITHDRAWAL_SLICES)
            self._current = now
        oldest = (now - _SLICES) % _WITHDRAWAL_SLICES  # the slice ttl ago: its time may be up
        if self._withdrawals[oldest] and clock >= self._last_withdrawal[oldest] + self.ttl:
            self._release(oldest)

    def _release(self, slot: int) -> None:
        self._total += self._withdrawals[slot]
        self._withdrawals[slot] = 0

    def __repr__(self) -> str:
        return (
            f"<RetryBudget ttl={self.ttl:g}s percent_can_retry={self.percent_can_retry:g} "
            f"min_retries_per_sec={self.min_retries_per_sec:g} balance={self.balance} "
            f"granted={self.granted} refused={self.refused}>"
        )
