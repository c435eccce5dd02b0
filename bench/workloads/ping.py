"""``ping``: PING round trips on a real server, 200 and 50 greenlets over a pool of 20.

Per greenlet count: requests per second, and two distributions, as histograms the parent merges
over every round: the **wait** for a connection (from calling ``get()`` to holding the
connection; the worst wait shows who starves) and the whole request (the wait plus the round
trip). Redis clients (redis-py's pools) send ``client.ping()``; their wait is timed around the
pool's ``get_connection()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent

from bench.common import Budget, histogram, join, ping
from bench.impls import Impl, NotApplicable


def run(make: Any, p: dict[str, Any]) -> dict[str, Any]:
    """Each greenlet count in ``p["greenlets"]`` on one pool of ``p["size"]`` connections."""
    with make(p["size"], p["size"]) as impl:
        return {str(n): measure(impl, n, p) for n in p["greenlets"]}


def measure(impl: Impl, greenlets: int, p: dict[str, Any]) -> dict[str, Any]:
    """A short untimed warm-up, then the measured run."""
    loop(impl, greenlets, p["warmup"], 10**9)
    return loop(impl, greenlets, p["duration"], p["max_ops"])


def loop(
    impl: Impl, greenlets: int, seconds: float, max_ops: int, slow: Slow | None = None
) -> dict[str, Any]:
    """``greenlets`` greenlets send PINGs until the budget is spent."""
    budget, now = Budget.of(max_ops, seconds), time.perf_counter
    waits: list[float] = []
    latencies: list[float] = []
    request, undo = timed_request(impl, waits, slow)

    def worker() -> None:
        while budget.take():
            t0 = now()
            try:
                request()
            except Exception as exc:
                budget.error(exc)
                gevent.sleep(0.001)  # a failing pool must not spin
                continue
            latencies.append(now() - t0)

    start = now()
    try:
        hung = join([gevent.spawn(worker) for _ in range(greenlets)], budget)
    finally:
        undo()
    elapsed = now() - start
    return {
        "requests": len(latencies),
        "req_per_s": len(latencies) / elapsed,
        "wait_max_us": max(waits, default=0.0) * 1e6,
        "wait": histogram(waits),
        "latency": histogram(latencies),
        "errors": budget.errors,
        "first_error": budget.first_error,
        "hung": hung,
    }


#: Makes a backend slow: called after each PING with the connection still held.
Slow = Callable[[], None]


def timed_request(
    impl: Impl, waits: list[float], slow: Slow | None = None
) -> tuple[Callable[[], Any], Callable[[], None]]:
    """A request that appends its wait for a connection to ``waits``; how to undo that."""
    now = time.perf_counter
    if impl.client is not None:
        pool = impl.client.connection_pool
        get = pool.get_connection

        def timed_get(*args: Any, **kwargs: Any) -> Any:
            t0 = now()
            conn = get(*args, **kwargs)
            waits.append(now() - t0)
            return conn

        pool.get_connection = timed_get
        if slow is not None:
            raise NotApplicable("a slow backend is simulated on raw sockets only")
        return impl.client.ping, lambda: vars(pool).pop("get_connection", None)
    hold = impl.hold

    def request() -> None:
        t0 = now()
        with hold() as sock:
            waits.append(now() - t0)
            ping(sock)
            if slow is not None:
                slow()

    return request, lambda: None
