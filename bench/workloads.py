"""The load loops, run inside a child process against one :class:`~bench.impls.Impl`.

Every loop is bounded twice: by a number of operations and by a deadline. Each returns a plain
dict of figures (JSON-ready); the parent aggregates rounds.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent.event import Event

from bench.conn import Counter, fake_factory, socket_factory
from bench.impls import Impl, PoolSpec
from bench.stats import percentile

#: How often (in operations) a greenlet looks at the clock.
CLOCK_EVERY = 32


@dataclass
class Budget:
    """Shared stop condition for a group of greenlets: an operation count and a deadline."""

    remaining: int
    deadline: float
    errors: int = 0
    first_error: str = ""

    def take(self, n: int) -> int:
        """Reserve up to ``n`` operations; 0 once the count or the time is spent."""
        if self.remaining <= 0 or time.perf_counter() >= self.deadline:
            return 0
        n = min(n, self.remaining)
        self.remaining -= n
        return n

    def error(self, exc: BaseException) -> None:
        """Count an error seen by a caller (the first one is kept for the report)."""
        self.errors += 1
        if not self.first_error:
            self.first_error = f"{type(exc).__name__}: {exc}"[:200]


def fairness(done: list[int]) -> dict[str, Any]:
    """How evenly the greenlets were served: min/max completions, and how many starved.

    A greenlet starved if it completed less than a tenth of the mean (a barging queue lets the
    greenlets that hold connections keep them while the others wait out the whole run).
    """
    if not done:
        return {"per_greenlet_min": 0, "per_greenlet_max": 0, "starved": 0}
    mean = sum(done) / len(done)
    return {
        "per_greenlet_min": min(done),
        "per_greenlet_max": max(done),
        "starved": sum(1 for n in done if n < mean / 10),
    }


def _join(greenlets: list[gevent.Greenlet[..., Any]], budget: Budget, grace: float = 5.0) -> int:
    """Wait for the greenlets past the deadline plus ``grace``; kill and count the stragglers."""
    left = max(0.0, budget.deadline - time.perf_counter()) + grace
    gevent.joinall(greenlets, timeout=left)
    hung = [g for g in greenlets if not g.dead]
    if hung:
        gevent.killall(hung, block=True, timeout=1.0)
    return len(hung)


def cycle_loop(impl: Impl, greenlets: int, duration: float, max_ops: int) -> dict[str, Any]:
    """Checkout/release only, ``gevent.sleep(0)`` while held; returns ns per cycle."""
    budget = Budget(max_ops, time.perf_counter() + duration)
    hold, sleep = impl.hold, gevent.sleep
    done = [0] * greenlets

    def worker(me: int) -> None:
        while True:
            n = budget.take(CLOCK_EVERY)
            if not n:
                return
            for _ in range(n):
                try:
                    with hold():
                        sleep(0)
                except Exception as exc:
                    budget.error(exc)
                done[me] += 1

    start, cpu = time.perf_counter(), time.thread_time()
    group = [gevent.spawn(worker, i) for i in range(greenlets)]
    hung = _join(group, budget)
    elapsed = time.perf_counter() - start
    cpu = time.thread_time() - cpu
    ops = max_ops - budget.remaining
    return {
        "ops": ops,
        "cpu_us_per_op": cpu / max(ops, 1) * 1e6,
        "elapsed_s": elapsed,
        "ns_per_op": elapsed / max(ops, 1) * 1e9,
        "errors": budget.errors,
        "first_error": budget.first_error,
        "hung": hung,
        **fairness(done),
    }


def request_loop(impl: Impl, greenlets: int, duration: float, max_ops: int) -> dict[str, Any]:
    """PING round trips; req/s and latency percentiles (latency includes the wait for a conn)."""
    budget = Budget(max_ops, time.perf_counter() + duration)
    latencies: list[float] = []
    request, now = impl.request, time.perf_counter
    done = [0] * greenlets

    def worker(me: int) -> None:
        while budget.take(1):
            t0 = now()
            try:
                request()
            except Exception as exc:
                budget.error(exc)
                gevent.sleep(0.001)  # a failing pool must not spin
                continue
            latencies.append(now() - t0)
            done[me] += 1

    start, cpu = now(), time.thread_time()
    group = [gevent.spawn(worker, i) for i in range(greenlets)]
    hung = _join(group, budget)
    elapsed = now() - start
    cpu = time.thread_time() - cpu
    latencies.sort()
    return {
        "ops": len(latencies),
        "cpu_us_per_op": cpu / max(len(latencies), 1) * 1e6,
        "elapsed_s": elapsed,
        "req_per_s": len(latencies) / elapsed,
        "p50_us": percentile(latencies, 50) * 1e6,
        "p99_us": percentile(latencies, 99) * 1e6,
        "p999_us": percentile(latencies, 99.9) * 1e6,
        "max_us": (latencies[-1] if latencies else 0.0) * 1e6,
        "errors": budget.errors,
        "first_error": budget.first_error,
        "hung": hung,
        **fairness(done),
    }


def warm_up(
    impl: Impl, loop: Callable[..., dict[str, Any]], greenlets: int, seconds: float
) -> None:
    """A short untimed run so that caches, lazy connects and the JIT-free paths settle."""
    if seconds > 0:
        loop(impl, greenlets, seconds, 10**9)


@dataclass
class Pinned:
    """Connections held by one parked greenlet for the whole run (to make a pool 'large')."""

    impl: Impl
    count: int
    release: Event = field(default_factory=Event)
    ready: Event = field(default_factory=Event)

    def run(self) -> None:
        """Enter ``count`` holds, signal ready, wait for release, exit them in this greenlet."""
        with contextlib.ExitStack() as stack:
            for _ in range(self.count):
                stack.enter_context(self.impl.hold())
            self.ready.set()
            self.release.wait()


def scale_cell(
    impl: Impl, greenlets: int, free: int, duration: float, max_ops: int
) -> dict[str, Any]:
    """One scale measurement on an already started pool; all but ``free`` connections are pinned."""
    pinned = Pinned(impl, impl.spec.max_size - free)
    holder = gevent.spawn(pinned.run)
    try:
        if not pinned.ready.wait(timeout=60):
            raise TimeoutError("could not pin connections within 60 s")
        warm_up(impl, cycle_loop, greenlets, min(0.05, duration / 5))
        return cycle_loop(impl, greenlets, duration, max_ops)
    finally:
        pinned.release.set()
        holder.join(timeout=60)


def spec_for(
    params: dict[str, Any],
    min_size: int,
    max_size: int,
    *,
    fake: bool = False,
    delay: float = 0.0,
    timeout: float | None = None,
    extra: dict[str, Any] | None = None,
) -> PoolSpec:
    """A :class:`PoolSpec` on the run's server (or of fake connections)."""
    counter = Counter()
    factory = (
        fake_factory(counter, delay)
        if fake
        else socket_factory(params["host"], params["port"], counter, timeout)
    )
    return PoolSpec(
        min_size=min_size,
        max_size=max_size,
        factory=factory,
        counter=counter,
        host=params["host"],
        port=params["port"],
        fake=fake,
        connect_delay=delay,
        extra=extra or {},
    )
