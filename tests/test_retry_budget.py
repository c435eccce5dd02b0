"""@retry's ``on=`` predicate, ``deadline=``, ``budget=`` (RetryBudget), and what it never retries.

The budget arithmetic runs on an injected clock (no waiting); the pool errors come from real
pools in the states that raise them (closed, fail-fast with the backend down, max_waiting).
"""

from __future__ import annotations

import logging
import math
import tracemalloc
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import pytest
from hypothesis import given
from hypothesis import strategies as st

from geventconnpool import (
    ConnectionPool,
    PoolClosed,
    PoolError,
    PoolExhausted,
    PoolTimeout,
    PoolUnavailable,
    RetryBudget,
    retry,
)
from geventconnpool.testing import free_port
from tests.contrib._fuzz import fuzz, fuzz_timeout


class Clock:
    """A clock that only moves when told (or when ``sleep`` is called)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Failing:
    """Raises ``error`` on every call (or only the first ``failures`` calls); counts calls."""

    def __init__(self, error: BaseException, failures: int | None = None) -> None:
        self.error = error
        self.failures = failures
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures is None or self.calls <= self.failures:
            raise self.error
        return "ok"


class Disconnect(Exception):
    """Not an OSError: only a predicate can tell it is worth retrying."""

    def __init__(self, lost: bool) -> None:
        super().__init__("lost" if lost else "sql error")
        self.lost = lost


# -- on= ----------------------------------------------------------------------------------------


def test_on_predicate_decides_over_any_exception() -> None:
    def lost(e: BaseException) -> bool:
        return isinstance(e, Disconnect) and e.lost

    flaky = Failing(Disconnect(lost=True), failures=2)
    assert retry(on=lost, sleep=lambda _: None)(flaky)() == "ok"
    assert flaky.calls == 3
    sql = Failing(Disconnect(lost=False))
    with pytest.raises(Disconnect):
        retry(on=lost, sleep=lambda _: None)(sql)()
    assert sql.calls == 1


def test_on_with_exc_classes_needs_both() -> None:
    def always(e: BaseException) -> bool:
        return True

    outside = Failing(Disconnect(lost=True))  # not an OSError
    with pytest.raises(Disconnect):
        retry(exc_classes=(OSError,), on=always)(outside)()
    assert outside.calls == 1
    refused = Failing(ConnectionRefusedError("no"))
    with pytest.raises(ConnectionRefusedError):
        retry(exc_classes=(OSError,), on=lambda e: not isinstance(e, ConnectionRefusedError))(
            refused
        )()
    assert refused.calls == 1
    reset = Failing(ConnectionResetError("reset"), failures=1)
    assert retry(exc_classes=(OSError,), on=always, sleep=lambda _: None)(reset)() == "ok"


def test_on_is_not_asked_about_base_exceptions() -> None:
    asked: list[BaseException] = []
    killed = Failing(gevent.GreenletExit())
    with pytest.raises(gevent.GreenletExit):
        retry(on=lambda e: asked.append(e) or True)(killed)()
    assert killed.calls == 1 and asked == []


# -- never retried: the pool's own errors -------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [PoolTimeout("t"), PoolUnavailable("u"), PoolExhausted("e"), PoolClosed("c"), PoolError("p")],
    ids=lambda e: type(e).__name__,
)
@pytest.mark.parametrize("how", ["exc_classes=Exception", "on=always"])
def test_pool_errors_are_never_retried_whatever_the_settings(error: PoolError, how: str) -> None:
    options: dict[str, Any] = (
        {"exc_classes": (Exception,)} if how.startswith("exc") else {"on": lambda e: True}
    )
    failing = Failing(error)
    with pytest.raises(type(error)):
        retry(max_failures=5, sleep=lambda _: None, **options)(failing)()
    assert failing.calls == 1


class RefusedPool(ConnectionPool[Any]):
    """Connects to a closed loopback port: every connect fails."""

    def _new_connection(self) -> Any:
        import gevent.socket

        return gevent.socket.create_connection(("127.0.0.1", self.port), timeout=1)

    def __init__(self, port: int, **options: Any) -> None:
        self.port = port
        super().__init__(**options)


class OnePool(ConnectionPool[object]):
    def _new_connection(self) -> object:
        return object()


def _call_through_retry(pool: ConnectionPool[Any], timeout: float | None = None) -> Failing:
    """A counted function doing ``with pool.get(): ...`` under a generous @retry."""
    counter = Failing(RuntimeError("unused"), failures=0)

    def use() -> None:
        counter.calls += 1
        with pool.get(timeout):
            pass

    retrying = retry(exc_classes=(Exception,), on=lambda e: True, max_failures=5)
    with pytest.raises(PoolError) as info:
        retrying(use)()
    counter.error = info.value
    return counter


def test_real_pool_closed_is_not_retried() -> None:
    pool = OnePool(size=1)
    pool.close()
    calls = _call_through_retry(pool)
    assert isinstance(calls.error, PoolClosed) and calls.calls == 1


def test_real_pool_unavailable_is_not_retried() -> None:
    pool = RefusedPool(
        free_port(), size=1, fail_fast=True, fail_fast_after=1, reconnect_delay=0.01, timeout=5
    )
    try:
        with gevent.Timeout(5):
            while pool.stats().available:
                gevent.sleep(0.01)
        calls = _call_through_retry(pool)
        assert isinstance(calls.error, PoolUnavailable) and calls.calls == 1
    finally:
        pool.close()


def test_real_pool_exhausted_is_not_retried() -> None:
    pool = OnePool(size=1, max_waiting=1)
    try:
        with pool.get():
            waiter = gevent.spawn(lambda: pool.get(5).__enter__())
            with gevent.Timeout(5):
                while pool.stats().waiting < 1:
                    gevent.sleep(0.001)
            calls = _call_through_retry(pool, timeout=5)
        assert isinstance(calls.error, PoolExhausted) and calls.calls == 1
        waiter.join(5)
    finally:
        pool.close()


# -- deadline= ----------------------------------------------------------------------------------


def test_deadline_bounds_all_attempts_together(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    failing = Failing(ConnectionResetError("reset"))
    decorated = retry(
        failing,
        interval=1.0,
        deadline=3.5,
        sleep=clock.sleep,
        clock=clock,
        logger=logging.getLogger("deadline-test"),
    )
    start = clock.now
    with caplog.at_level(logging.INFO, "deadline-test"), pytest.raises(ConnectionResetError):
        decorated()
    assert failing.calls == 4  # at 0, 1, 2, 3 s; a fifth would start at 4 s > 3.5 s
    assert clock.now - start == pytest.approx(3.0)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith("Retry deadline of 3.5s passed for")
    assert errors[0].endswith("(error: 'reset'). Aborting.")


def test_deadline_does_not_sleep_past_itself() -> None:
    clock = Clock()
    failing = Failing(ConnectionResetError("reset"))
    with pytest.raises(ConnectionResetError):
        retry(failing, interval=0.4, backoff=2, deadline=1.0, sleep=clock.sleep, clock=clock)()
    assert failing.calls == 2  # sleeps 0.4 then would sleep 0.8 to 1.2 s > 1.0: stops at 0.4 s
    assert clock.now == pytest.approx(1000.4)


def test_deadline_zero_means_no_retry() -> None:
    failing = Failing(ConnectionResetError("reset"))
    with pytest.raises(ConnectionResetError):
        retry(failing, deadline=0.0, interval=0.001, sleep=lambda _: None)()
    assert failing.calls == 1


# -- RetryBudget arithmetic ---------------------------------------------------------------------


def test_budget_allows_a_fraction_of_recent_calls() -> None:
    clock = Clock()
    budget = RetryBudget(ttl=10, min_retries_per_sec=0, percent_can_retry=0.2, clock=clock)
    assert budget.balance == 0 and not budget.withdraw()
    for _ in range(10):
        budget.deposit()
    assert budget.balance == 2
    assert budget.withdraw() and budget.withdraw()
    assert not budget.withdraw()
    assert (budget.granted, budget.refused, budget.exhausted) == (2, 2, True)
    for _ in range(5):
        budget.deposit()
    assert budget.withdraw() and not budget.exhausted


def test_budget_deposits_expire_after_ttl_in_slices() -> None:
    clock = Clock(0.0)
    budget = RetryBudget(ttl=10, min_retries_per_sec=0, percent_can_retry=0.5, clock=clock)
    for _ in range(4):
        budget.deposit()  # slice [0, 1)
    clock.now = 5.0
    for _ in range(2):
        budget.deposit()  # slice [5, 6)
    assert budget.balance == 3
    clock.now = 9.99
    assert budget.balance == 3  # the first slice is still in the window
    clock.now = 10.0
    assert budget.balance == 1  # it left: only the deposits made at 5 s remain
    clock.now = 15.0
    assert budget.balance == 0
    clock.now = 1e6  # a long idle gap clears everything at once
    assert budget.balance == 0


def test_withdrawals_expire_too_so_retries_come_back() -> None:
    clock = Clock(0.0)
    budget = RetryBudget(ttl=2, min_retries_per_sec=1, percent_can_retry=0.0, clock=clock)
    assert budget.balance == 2  # floor only: 1 retry/s over a 2 s window
    assert budget.withdraw() and budget.withdraw() and not budget.withdraw()
    clock.now = 2.0
    assert budget.balance == 2


def test_budget_floor_is_min_retries_per_sec_times_ttl() -> None:
    budget = RetryBudget(ttl=10, min_retries_per_sec=3, percent_can_retry=0.2, clock=Clock())
    assert budget.balance == 30
    granted = sum(budget.withdraw() for _ in range(100))
    assert granted == 30 and budget.refused == 70


def test_percent_above_one_and_zero_everything() -> None:
    generous = RetryBudget(ttl=1, min_retries_per_sec=0, percent_can_retry=2.0, clock=Clock())
    generous.deposit()
    assert generous.balance == 2
    never = RetryBudget(ttl=1, min_retries_per_sec=0, percent_can_retry=0, clock=Clock())
    never.deposit()
    assert never.balance == 0 and not never.withdraw()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"ttl": 0}, "ttl"),
        ({"ttl": float("nan")}, "ttl"),
        ({"ttl": "10"}, "ttl"),
        ({"min_retries_per_sec": -1}, "min_retries_per_sec"),
        ({"percent_can_retry": -0.1}, "percent_can_retry"),
        ({"percent_can_retry": 1001}, "percent_can_retry"),
        ({"percent_can_retry": True}, "percent_can_retry"),
        ({"clock": 5}, "clock"),
    ],
)
def test_budget_bad_arguments_are_rejected(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises((TypeError, ValueError), match=name):
        RetryBudget(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"on": 5}, "on"),
        ({"budget": 0.2}, "budget"),
        ({"deadline": -1}, "deadline"),
        ({"deadline": float("inf")}, "deadline"),
        ({"clock": None}, "clock"),
        ({"retry_log_message": "{nope}"}, "retry_log_message"),
    ],
)
def test_retry_bad_new_arguments_are_rejected(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises((TypeError, ValueError), match=name):
        retry(**kwargs)


# -- @retry(budget=) ----------------------------------------------------------------------------


def _outage(budget: RetryBudget | None, calls: int, sleep: Callable[[float], None]) -> int:
    """``calls`` calls of a function that always fails, each allowed 5 retries; attempts made."""
    failing = Failing(ConnectionResetError("down"))
    decorated = retry(failing, max_failures=5, budget=budget, sleep=sleep)
    for _ in range(calls):
        with pytest.raises(ConnectionResetError):
            decorated()
    return failing.calls


def test_budget_caps_retries_across_calls() -> None:
    clock = Clock()
    budget = RetryBudget(ttl=10, min_retries_per_sec=0.5, percent_can_retry=0.1, clock=clock)
    attempts = _outage(budget, 200, lambda _: None)
    # 200 calls; retries: 10% of them (20) plus the floor, 0.5/s over 10 s (5)
    assert attempts == 200 + 20 + 5
    assert _outage(None, 200, lambda _: None) == 200 * 6


def test_budget_exhaustion_is_logged_at_most_once_per_ttl(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    budget = RetryBudget(ttl=10, min_retries_per_sec=0, percent_can_retry=0.5, clock=clock)
    failing = Failing(ConnectionResetError("down"))
    decorated = retry(
        failing,
        max_failures=3,
        budget=budget,
        sleep=lambda _: None,
        logger=logging.getLogger("budget-test"),
        max_failure_log_level=logging.WARNING,
    )
    with caplog.at_level(logging.INFO, "budget-test"):
        for _ in range(20):
            with pytest.raises(ConnectionResetError):
                decorated()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Retry budget exhausted" in warnings[0].getMessage()
    assert budget.granted == 10 and budget.refused >= 10
    assert failing.calls == 20 + 10
    clock.now += 10  # a ttl later, a refusal is logged again
    with caplog.at_level(logging.INFO, "budget-test"):
        for _ in range(3):
            with pytest.raises(ConnectionResetError):
                decorated()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2


def test_budget_lets_a_flaky_call_succeed_on_retry() -> None:
    budget = RetryBudget(ttl=10, min_retries_per_sec=1, percent_can_retry=0.2, clock=Clock())
    flaky = Failing(ConnectionResetError("once"), failures=1)
    assert retry(flaky, budget=budget, sleep=lambda _: None)() == "ok"
    assert budget.granted == 1


# -- the chaos run, short -----------------------------------------------------------------------


@pytest.mark.slow  # two 3 s outages
def test_outage_with_budget_sends_at_most_1_plus_fraction_per_call() -> None:
    from .chaos.budget import compare

    plain, budgeted = compare(workers=200, outage=1.0)
    assert budgeted.budget is not None and not plain.problems and not budgeted.problems
    fraction = budgeted.budget["percent_can_retry"]
    floor = budgeted.budget["min_retries_per_sec"] * budgeted.budget["ttl"]
    assert budgeted.requests <= (1 + fraction) * budgeted.calls + floor
    assert budgeted.refused > 0  # the budget, not max_failures, stopped the retries
    assert plain.outage_requests_per_call > 2 * budgeted.outage_requests_per_call
    assert plain.outage_attempts_per_call > 2 * budgeted.outage_attempts_per_call


# -- DbApiPool.retrying() as one call of retry ------------------------------------------------


class OperationalError(Exception):
    """Named like a DB-API driver's: DbApiPool's classifier reads class names and messages."""


def test_dbapi_retrying_is_expressible_as_retry_on_is_disconnect() -> None:
    from geventconnpool.contrib.dbapi import DbApiPool

    pool = DbApiPool(lambda: object(), size=1, ping_query=None)
    try:
        as_retry = retry(on=pool._is_disconnect, max_failures=3, sleep=lambda _: None)
        lost = Failing(OperationalError("server closed the connection unexpectedly"), 2)
        assert as_retry(lost)() == "ok" and lost.calls == 3
        sql = Failing(OperationalError('relation "nope" does not exist'))
        with pytest.raises(OperationalError):
            as_retry(sql)()
        assert sql.calls == 1
        timeout = Failing(PoolTimeout("busy"))
        with pytest.raises(PoolTimeout):
            as_retry(timeout)()
        assert timeout.calls == 1
    finally:
        pool.close()


# -- issue 19 (7): the documented bound holds exactly, in constant memory ------------------------


def test_a_withdrawal_at_a_slice_end_is_not_granted_again_within_ttl() -> None:
    # ttl 2 s = ten 0.2 s slices. Two retries (the whole reserve) taken at the very end of the
    # first slice must stay withdrawn for 2 s: on 0.2.x they left with their slice 1.8 s later,
    # and the budget granted 4 retries within one ttl window (twice its bound).
    clock = Clock(0.0)
    budget = RetryBudget(ttl=2, min_retries_per_sec=1, percent_can_retry=0.0, clock=clock)
    clock.now = 0.199
    assert budget.withdraw() and budget.withdraw() and not budget.withdraw()
    clock.now = 0.199 + 1.85  # past the slice's end + 0.9 ttl, within ttl of the withdrawals
    assert budget.balance == 0 and not budget.withdraw()
    clock.now = 0.199 + 2.0  # exactly ttl later: both are back
    assert budget.balance == 2 and budget.withdraw()


@fuzz_timeout
@given(
    steps=st.lists(
        st.tuples(st.floats(min_value=0, max_value=0.7), st.sampled_from(["call", "retry"])),
        min_size=1,
        max_size=300,
    ),
    percent=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
)
@fuzz(100)
def test_granted_retries_never_exceed_the_documented_bound(
    steps: list[tuple[float, str]], percent: float
) -> None:
    # The module docstring's bound: in any ttl seconds, granted retries <= percent_can_retry x
    # the calls of the ttl before the last of them + min_retries_per_sec x ttl.
    clock = Clock(0.0)
    ttl, floor = 2.0, 1.0
    budget = RetryBudget(ttl=ttl, min_retries_per_sec=floor, percent_can_retry=percent, clock=clock)
    calls: list[float] = []
    grants: list[float] = []
    for dt, what in steps:
        clock.now += dt
        if what == "call":
            budget.deposit()
            calls.append(clock.now)
        elif budget.withdraw():
            grants.append(clock.now)
            now = clock.now
            recent_grants = sum(1 for t in grants if t > now - ttl)
            recent_calls = sum(1 for t in calls if t > now - ttl)
            assert recent_grants <= math.floor(percent * recent_calls + 1e-9) + floor * ttl + 1e-9


def test_budget_memory_is_flat_over_many_operations() -> None:
    # 10**5 calls, retries and refusals, and the rate-limited refusal log's state: the budget
    # keeps fixed-size slices whatever the traffic, so nothing grows with the operations.
    clock = Clock(0.0)
    budget = RetryBudget(ttl=1, min_retries_per_sec=5, percent_can_retry=0.2, clock=clock)

    def load(n: int) -> None:
        for i in range(n):
            clock.now += 0.0003
            budget.deposit()
            if i % 3 == 0 and not budget.withdraw():
                budget.log_due()

    load(1000)  # warm up: every slice and counter exists
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        load(100_000)
        peak = tracemalloc.get_traced_memory()[1] - base  # during the load
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(
        stat.size_diff
        for stat in after.compare_to(before, "filename")
        if stat.traceback[0].filename.endswith("budget.py")
    )
    assert grown < 2048, f"RetryBudget grew by {grown} bytes over 10**5 operations"
    assert peak < 64 * 1024, f"{peak} bytes allocated at once during 10**5 operations"
    assert budget.granted > 1000 and budget.refused > 1000  # both paths ran


class _Counting(logging.Handler):
    """Counts records by whether they say the budget is exhausted; stores nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.refusals = self.others = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "budget exhausted" in record.getMessage():
            self.refusals += 1
        else:
            self.others += 1


def test_retry_with_a_spent_budget_logs_once_per_ttl_in_flat_memory() -> None:
    # 2 x 10**4 failing calls through @retry(budget=): the budget's rate-limited refusal log
    # writes one line per ttl, and neither the budget nor the decorator keeps anything per call.
    clock = Clock(0.0)
    budget = RetryBudget(ttl=1, min_retries_per_sec=1, percent_can_retry=0.1, clock=clock)

    def failing() -> None:
        raise OSError("down")  # a new one each time (a re-raised one grows its traceback)

    logger = logging.getLogger("geventconnpool.test-budget")
    counting = _Counting()
    logger.addHandler(counting)
    logger.propagate = False
    call = retry(
        failing, max_failures=3, budget=budget, sleep=clock.sleep, clock=clock, logger=logger
    )

    def calls(n: int) -> int:
        failed = 0
        for _ in range(n):
            clock.now += 0.0001  # 10**4 calls per simulated second
            try:
                call()
            except OSError:
                failed += 1
        return failed

    try:
        assert calls(500) == 500
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            failed = calls(20_000)
            grown = tracemalloc.get_traced_memory()[0] - base
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    finally:
        logger.removeHandler(counting)
        logger.propagate = True
    assert failed == 20_000 and budget.refused > 10_000
    assert 1 <= counting.refusals <= clock.now / budget.ttl + 1, (counting.refusals, clock.now)
    assert grown < 16 * 1024 and peak < 256 * 1024, (grown, peak)
