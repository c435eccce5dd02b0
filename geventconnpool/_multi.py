"""Shared by :class:`~.keyed.PoolMap` and :class:`~.balanced.BalancedPool`.

- :func:`combine_stats`: one :class:`PoolStats` for many pools (sums, ``wait_seconds_max`` is
  the max), so a map of pools reads like one pool on a dashboard.
- :func:`counters_only`: the counters of a pool that is gone, kept so a combined view's
  counters never go backwards when a pool is dropped.
- :func:`override_hook`: wrap one documented hook of one pool *instance* around the class's
  own hook. The wrapper holds the pool weakly: no reference cycle, so a dropped pool is
  freed by reference counting at once.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from .pool import ConnectionPool
from .stats import Discarded, PoolStats

__all__ = ["combine_stats", "counters_only", "override_hook"]

#: PoolStats fields that describe the current state, not a running total.
_STATE_FIELDS = (
    "open", "idle", "in_use", "connecting", "waiting", "min_size", "max_size", "checking"
)  # fmt: skip
_SPECIAL = ("name", "available", "closed", "discarded", "wait_seconds_max")


def combine_stats(
    name: str,
    parts: Iterable[PoolStats],
    *,
    closed: bool = False,
    available: bool | None = None,
) -> PoolStats:
    """One snapshot for many pools: every number summed, ``wait_seconds_max`` the largest.

    ``available`` defaults to "at least one pool is available" (True for no pools at all).
    """
    parts = list(parts)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(PoolStats):
        if f.name in _SPECIAL:
            continue
        start: float = 0.0 if f.type in ("float", float) else 0
        values[f.name] = sum((getattr(p, f.name) for p in parts), start)
    values["discarded"] = Discarded(
        **{
            f.name: sum(getattr(p.discarded, f.name) for p in parts)
            for f in dataclasses.fields(Discarded)
        }
    )
    values["wait_seconds_max"] = max((p.wait_seconds_max for p in parts), default=0.0)
    if available is None:
        available = not parts or any(p.available for p in parts)
    return PoolStats(name=name, available=available, closed=closed, **values)


def counters_only(stats: PoolStats) -> PoolStats:
    """``stats`` with its state fields (open, idle, in_use...) zeroed: the totals of a gone pool."""
    zeroed: dict[str, Any] = dict.fromkeys(_STATE_FIELDS, 0)
    return dataclasses.replace(stats, **zeroed)


def override_hook(
    pool: ConnectionPool[Any],
    hook: str,
    func: Callable[..., Any],
) -> None:
    """Make ``pool.<hook>(*args)`` call ``func(pool, original, *args)``, for this instance only.

    ``original`` is the hook as the pool's class defines it (a plain function taking the pool
    first). The installed function holds the pool through a weak reference.
    """
    original = getattr(type(pool), hook)
    ref = weakref.ref(pool)

    def hooked(*args: Any) -> Any:
        target = ref()
        if target is None:  # cannot happen while the pool calls its own hook
            raise ReferenceError(f"the pool behind {hook} is gone")
        return func(target, original, *args)

    vars(pool)[hook] = hooked
