"""``spike``: HikariCP's spike test. Connecting takes 150 ms (fake connections behind a
``gevent.sleep``), ``min_size=5``, ``max_size=50``; once the pool is ready, 50 greenlets ask
for a connection at once and each holds it 2 ms. A pool that opens a connection per waiter opens
50 for a burst that 5 connections serve in a few milliseconds. Figures: connections opened
(counted at the factory, after the in-flight connects settled) and the worst wait.
"""

from __future__ import annotations

import time
from typing import Any

import gevent
from gevent.event import Event

from bench.common import Budget, join
from bench.impls import Impl


def run(make: Any, p: dict[str, Any]) -> dict[str, Any]:
    """One burst on a fresh pool."""
    with make(p["min_size"], p["max_size"], fake=True, delay=p["connect_s"]) as impl:
        return {"burst": burst(impl, p["callers"], p["hold_s"], p["settle_s"])}


def burst(impl: Impl, callers: int, hold_s: float, settle_s: float) -> dict[str, Any]:
    """``callers`` greenlets released at once; then wait ``settle_s`` for late connects."""
    go, budget = Event(), Budget.of(callers, 10.0)
    waits: list[float] = []

    def caller() -> None:
        go.wait()
        t0 = time.perf_counter()
        try:
            with impl.hold():
                waits.append(time.perf_counter() - t0)
                gevent.sleep(hold_s)
        except Exception as exc:
            budget.error(exc)

    group = [gevent.spawn(caller) for _ in range(callers)]
    gevent.sleep(0)
    go.set()
    hung = join(group, budget, grace=0.0)
    gevent.sleep(settle_s)
    return {
        "opened": impl.spec.counter.opened,
        "worst_wait_ms": max(waits, default=0.0) * 1e3,
        "served": len(waits),
        "errors": budget.errors,
        "first_error": budget.first_error,
        "hung": hung,
    }
