"""A retry budget shared by many calls: retries may add at most a fraction of the recent calls.

Finagle's ``RetryBudget`` in our words. Every call deposits one token when it starts; every
retry withdraws ``1 / percent_can_retry`` tokens. Tokens live for ``ttl`` seconds (a sliding
window of ten slices), and a reserve of ``min_retries_per_sec * ttl`` retries is always there,
so a service with little traffic can still retry. Under an outage the calls keep coming, their
retries stop once the budget is spent, and the backend sees at most about
``(1 + percent_can_retry) x calls + min_retries_per_sec x seconds`` attempts instead of
``(1 + max_failures) x calls``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

__all__ = ["RetryBudget"]

_SCALE = 1000  # tokens per deposit: integer arithmetic, so balances never drift
_SLICES = 10  # the window is ttl long, kept as this many slices


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
        self._slices = [0] * _SLICES  # token changes per slice of the window
        self._total = 0  # sum of _slices
        self._current = math.floor(clock() / self._slice)  # absolute number of the newest slice
        #: Retries refused since the budget was created.
        self.refused = 0
        #: Retries granted since the budget was created.
        self.granted = 0
        #: True from a refusal until the next granted retry.
        self.exhausted = False
        self._logged_at: float | None = None  # when a refusal was last logged (see log_due)

    def deposit(self) -> None:
        """A call started: it adds ``percent_can_retry`` retries to the budget for ``ttl``."""
        self._add(self._deposit)

    def withdraw(self) -> bool:
        """Take one retry from the budget; False (and nothing taken) when it is spent."""
        self._advance()
        if self._total + self._reserve < self._cost:
            self.refused += 1
            self.exhausted = True
            return False
        self._add(-self._cost)
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

    def _add(self, tokens: int) -> None:
        self._advance()
        self._slices[self._current % _SLICES] += tokens
        self._total += tokens

    def _advance(self) -> None:
        """Forget the slices that left the window since the last call."""
        now = math.floor(self._clock() / self._slice)
        gone = now - self._current
        if gone <= 0:
            return
        if gone >= _SLICES:
            self._slices = [0] * _SLICES
            self._total = 0
        else:
            for n in range(self._current + 1, now + 1):
                self._total -= self._slices[n % _SLICES]
                self._slices[n % _SLICES] = 0
        self._current = now

    def __repr__(self) -> str:
        return (
            f"<RetryBudget ttl={self.ttl:g}s percent_can_retry={self.percent_can_retry:g} "
            f"min_retries_per_sec={self.min_retries_per_sec:g} balance={self.balance} "
            f"granted={self.granted} refused={self.refused}>"
        )
