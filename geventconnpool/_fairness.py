"""The fairness bound of bounded barging, adapted to the wait the pool observes.

A returned connection goes to the oldest waiter once that waiter has waited ``bound`` seconds;
before that the releaser or a newcomer may take it on the fast path, which saves a greenlet
switch per checkout. A fixed bound is too loose for a fast backend (waits pile up just under
it) and means nothing for a slow one, so the bound follows the recent mean wait for a
connection: ``bound = multiple * mean``, clamped to ``[floor, ceiling]``. The mean is taken
over every checkout, the fast path's zero waits included (by Little's law it does not depend on
the waiting order), from the counters the pool keeps anyway: the hot path pays nothing.
"""

from __future__ import annotations

#: How much longer than the recent mean wait the oldest waiter may be overtaken.
MULTIPLE = 2.5
#: The lowest adaptive bound (seconds): below it a hand-off costs more than it saves.
FLOOR = 0.005
#: How often the mean is refreshed (seconds), and the weight of each new window in it.
WINDOW = 0.05
WEIGHT = 0.3


class FairBound:
    """How long the oldest waiter may be overtaken: ``bound``, between ``floor`` and ``ceiling``.

    ``ceiling == 0`` is strict first come, first served; ``floor == ceiling`` a fixed bound.
    ``observe`` is fed the pool's running totals (checkouts, seconds waited); it refreshes the
    mean at most once per ``WINDOW`` and is pure arithmetic, so ``PoolState`` may call it.
    """

    __slots__ = ("_acquired", "_since", "_waited", "bound", "ceiling", "floor", "mean")

    def __init__(self, ceiling: float, floor: float = FLOOR) -> None:
        self.ceiling = ceiling
        self.floor = min(floor, ceiling)
        self.mean = 0.0
        self.bound = self.floor if self.floor < ceiling else ceiling
        self._acquired = 0
        self._waited = 0.0
        self._since = float("-inf")

    @property
    def adaptive(self) -> bool:
        """False for strict FIFO and for a fixed bound: the bound never moves."""
        return self.floor < self.ceiling

    def observe(self, now: float, acquired: int, waited: float) -> None:
        """Fold the checkouts made since the last window into the mean; move the bound."""
        if now - self._since < WINDOW or not self.adaptive:
            return
        count = acquired - self._acquired
        if self._since != float("-inf") and count > 0:
            window_mean = (waited - self._waited) / count
            self.mean += WEIGHT * (window_mean - self.mean)
            self.bound = min(self.ceiling, max(self.floor, MULTIPLE * self.mean))
        self._since = now
        self._acquired = acquired
        self._waited = waited

    def resize(self, ceiling: float, floor: float) -> None:
        """New limits (a live change of ``fair_after`` or ``fair_floor``); the mean is kept."""
        self.ceiling = ceiling
        self.floor = min(floor, ceiling)
        self.bound = min(ceiling, max(self.floor, MULTIPLE * self.mean))
        if not self.adaptive:
            self.bound = ceiling
