"""``cycle``: contended checkout/release at pool sizes 10, 1,000 and 10,000.

Fake connections (no sockets), so that sizes compare like for like. A parked greenlet holds all
but ``free`` connections for the whole cell, so the pool tracks N connections while 50 or 200
greenlets contend for ``free`` of them, each holding one across a ``gevent.sleep(0)``. Figure:
nanoseconds of wall time per checkout/release cycle.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import gevent
from gevent.event import Event

from bench.common import Budget, join
from bench.impls import Impl

CLOCK_EVERY = 32  # operations a greenlet does between two looks at the clock


def run(make: Any, p: dict[str, Any]) -> dict[str, Any]:
    """Every ``size/greenlets`` cell; one pool per size."""
    cells = {}
    for size in p["sizes"]:
        with make(size, size, fake=True) as impl, pinned(impl, size - p["free"]):
            for greenlets in p["greenlets"]:
                loop(impl, greenlets, p["warmup"], 10**9)
                cells[f"{size}/{greenlets}"] = loop(impl, greenlets, p["duration"], p["max_ops"])
    return cells


@contextlib.contextmanager
def pinned(impl: Impl, count: int) -> Any:
    """Hold ``count`` connections in a parked greenlet until the block ends."""
    ready, release = Event(), Event()

    def hold() -> None:
        with contextlib.ExitStack() as stack:
            for _ in range(count):
                stack.enter_context(impl.hold())
            ready.set()
            release.wait()

    holder = gevent.spawn(hold)
    try:
        if not ready.wait(timeout=60):
            raise TimeoutError(f"could not check out {count} connections within 60 s")
        yield
    finally:
        release.set()
        holder.join(timeout=60)


def loop(impl: Impl, greenlets: int, seconds: float, max_ops: int) -> dict[str, Any]:
    """``greenlets`` greenlets check out and return until the budget is spent."""
    budget, hold, sleep = Budget.of(max_ops, seconds), impl.hold, gevent.sleep

    def worker() -> None:
        while n := budget.take(CLOCK_EVERY):
            for _ in range(n):
                try:
                    with hold():
                        sleep(0)
                except Exception as exc:
                    budget.error(exc)

    start = time.perf_counter()
    hung = join([gevent.spawn(worker) for _ in range(greenlets)], budget)
    elapsed = time.perf_counter() - start
    ops = max_ops - budget.remaining
    return {
        "ops": ops,
        "ns_per_op": elapsed / max(ops, 1) * 1e9,
        "errors": budget.errors,
        "first_error": budget.first_error,
        "hung": hung,
    }
