"""Retry budget under an outage: how many attempts reach the backend, with and without a budget.

500 greenlets each start one call every ``PERIOD`` seconds (an open load: users keep arriving
whether or not the backend is well), through ``@retry(max_failures=5)`` over a pool and a
:class:`~geventconnpool.testing.FaultProxy` in front of the embedded PING server. After
``before`` seconds the backend fails every request for ``outage`` seconds (the proxy cuts each
reply: the request reached the server, the connection closes), then recovers for ``after``
seconds. We count the calls, the requests sent (each attempt that got a connection) and the
connections the proxy accepted, once with plain ``@retry`` and once with a shared
:class:`~geventconnpool.RetryBudget`. A budget's promise is exact over a run shorter than its
``ttl``: retries <= ``percent_can_retry`` x calls + ``min_retries_per_sec`` x ``ttl``.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import gevent
from gevent.event import Event

from geventconnpool import RetryBudget, retry
from geventconnpool.testing import FaultProxy, PingServer

from .client import ChaosPool, echo

MAX_FAILURES = 5
PERIOD = 1.0  # each worker starts a call this often (500 workers: 500 calls/s offered)
HARD_BOUND = 30.0  # no call may take longer than this (its attempts are bounded far below it)


@dataclass
class BudgetRun:
    """The figures of one run (``budget`` None: plain ``@retry``)."""

    label: str
    workers: int
    outage: float
    seconds: float
    budget: dict[str, float] | None
    calls: int = 0
    succeeded: int = 0
    failed: int = 0
    hung: int = 0
    requests: int = 0  # attempts that got a connection and sent their request
    connects: int = 0  # connections the proxy accepted (the backend's view)
    calls_in_outage: int = 0
    requests_in_outage: int = 0  # of calls started in the outage
    connects_in_outage: int = 0  # accepted while the outage lasted
    succeeded_after: int = 0
    granted: int = 0
    refused: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def backend_attempts(self) -> int:
        """What the backend had to serve: connection attempts plus requests."""
        return self.connects + self.requests

    @property
    def outage_attempts_per_call(self) -> float:
        """Connections plus requests per call, in the outage: the retry multiplier."""
        attempts = self.connects_in_outage + self.requests_in_outage
        return attempts / self.calls_in_outage if self.calls_in_outage else 0.0

    @property
    def requests_per_call(self) -> float:
        return self.requests / self.calls if self.calls else 0.0

    @property
    def outage_requests_per_call(self) -> float:
        return self.requests_in_outage / self.calls_in_outage if self.calls_in_outage else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["backend_attempts"] = self.backend_attempts
        data["requests_per_call"] = round(self.requests_per_call, 3)
        data["outage_requests_per_call"] = round(self.outage_requests_per_call, 3)
        data["outage_attempts_per_call"] = round(self.outage_attempts_per_call, 3)
        return data


class _Phase:
    """Which part of the run a call started in: 0 before, 1 outage, 2 after."""

    def __init__(self) -> None:
        self.now = 0


def run_budget(
    budget: RetryBudget | None,
    *,
    workers: int = 500,
    before: float = 1.0,
    outage: float = 3.0,
    after: float = 1.0,
) -> BudgetRun:
    """One run; ``budget=None`` is plain ``@retry``. Bounded: ``before + outage + after`` seconds
    of load plus at most ``HARD_BOUND`` for the last calls to end."""
    settings = None
    if budget is not None:
        settings = {
            "ttl": budget.ttl,
            "percent_can_retry": budget.percent_can_retry,
            "min_retries_per_sec": budget.min_retries_per_sec,
        }
    run = BudgetRun(
        "budget" if budget else "plain", workers, outage, before + outage + after, settings
    )
    server = PingServer().start()
    proxy = FaultProxy(server.address).start()
    pool = ChaosPool(
        address=proxy.address,
        min_size=5,
        max_size=20,
        timeout=1.0,
        connect_timeout=1.0,
        reconnect_delay=0.05,
        reconnect_max_delay=1.0,
        name=f"budget-{run.label}",
    )
    try:
        pool.wait_ready(10)
        _drive(pool, proxy, budget, run, before, outage, after)
    finally:
        pool.close()
        proxy.restore()
        proxy.stop()
        server.stop()
    run.connects = proxy.accepted
    if budget is not None:
        run.granted, run.refused = budget.granted, budget.refused
    _judge(run, budget)
    return run


def _drive(
    pool: ChaosPool,
    proxy: FaultProxy,
    budget: RetryBudget | None,
    run: BudgetRun,
    before: float,
    outage: float,
    after: float,
) -> None:
    phase = _Phase()

    @retry(max_failures=MAX_FAILURES, interval=0.01, backoff=2.0, jitter=0.5, budget=budget)
    def call(started_in: int) -> None:
        with pool.get(1.0) as conn:
            run.requests += 1
            run.requests_in_outage += started_in == 1
            echo(conn, 0.5)

    stop = Event()

    def worker() -> None:
        due = time.monotonic() + random.uniform(0, PERIOD)
        while not stop.wait(max(0.0, due - time.monotonic())):
            due = max(due + PERIOD, time.monotonic())  # a late call does not cause a burst
            started_in = phase.now
            run.calls += 1
            run.calls_in_outage += started_in == 1
            try:
                with gevent.Timeout(HARD_BOUND):
                    call(started_in)
            except gevent.Timeout:
                run.hung += 1
            except Exception:
                run.failed += 1
            else:
                run.succeeded += 1
                run.succeeded_after += started_in == 2

    crowd = [gevent.spawn(worker) for _ in range(run.workers)]
    try:
        gevent.sleep(before)
        phase.now = 1
        accepted = proxy.accepted
        proxy.close_after(0)  # every reply is cut: requests reach the server and fail
        gevent.sleep(outage)
        proxy.restore()
        run.connects_in_outage = proxy.accepted - accepted
        phase.now = 2
        gevent.sleep(after)
    finally:
        stop.set()
        gevent.joinall(crowd, timeout=HARD_BOUND)
        gevent.killall(crowd)


def _judge(run: BudgetRun, budget: RetryBudget | None) -> None:
    if run.hung:
        run.problems.append(f"{run.hung} call(s) took longer than {HARD_BOUND}s")
    if not run.succeeded_after:
        run.problems.append("no call succeeded after the outage")
    if budget is not None:
        limit = (1 + budget.percent_can_retry) * run.calls
        limit += budget.min_retries_per_sec * budget.ttl
        if run.seconds < budget.ttl and run.requests > limit:
            run.problems.append(f"{run.requests} requests > the budget's bound {limit:.0f}")


def compare(workers: int = 500, outage: float = 3.0) -> tuple[BudgetRun, BudgetRun]:
    """Plain ``@retry``, then the same load with the default :class:`RetryBudget`; the budget
    run gets a problem if it did not cut the attempts per call in the outage by half."""
    plain = run_budget(None, workers=workers, outage=outage)
    budgeted = run_budget(RetryBudget(), workers=workers, outage=outage)
    if budgeted.outage_attempts_per_call * 2 > plain.outage_attempts_per_call:
        budgeted.problems.append(
            f"{budgeted.outage_attempts_per_call:.2f} backend attempts per call in the outage "
            f"with a budget, not under half of plain @retry's "
            f"{plain.outage_attempts_per_call:.2f}"
        )
    return plain, budgeted


def summary(run: BudgetRun) -> str:
    """One line per run for the console and the docs."""
    return (
        f"{run.label}: {run.calls} calls ({run.calls_in_outage} in the outage), "
        f"{run.requests} requests ({run.requests_per_call:.2f}/call; "
        f"{run.outage_requests_per_call:.2f}/call in the outage), {run.connects} connections "
        f"({run.connects_in_outage} in the outage), {run.backend_attempts} backend attempts "
        f"({run.outage_attempts_per_call:.2f}/call in the outage), {run.failed} failed, "
        f"{run.succeeded_after} ok after"
        + (f", retries granted {run.granted} refused {run.refused}" if run.budget else "")
    )


def ratio_line(plain: BudgetRun, budgeted: BudgetRun) -> str:
    """How much more plain ``@retry`` sent to the backend."""
    total = plain.backend_attempts / max(1, budgeted.backend_attempts)
    outage = plain.outage_attempts_per_call / max(1e-9, budgeted.outage_attempts_per_call)
    return (
        f"plain @retry / budget: {total:.1f}x the backend attempts over the run, "
        f"{outage:.1f}x per call in the outage"
    )
