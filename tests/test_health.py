"""Backend health: the failure streak, the backoff, down and back, and the lines they log.

Issue 19, defect 12: after an outage one line read "connect failed (0 in a row; next attempt in
-0.00s)" (a connect that started before the backend came back failed after it did), and
"backend is back" came seconds after service did, or never (a backend considered down because
new connections failed their first check was cleared silently by the first good hand-out).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import gevent
import pytest
from gevent.event import Event

from geventconnpool import PoolTimeout
from geventconnpool._health import WAITER_RETRY, Health
from geventconnpool._records import PoolEvent

from .conftest import FakeConn, FakePool, wait_until


class Policy:
    reconnect_delay = 0.1
    reconnect_max_delay = 30.0
    fail_fast_after = 1


P = Policy()


def test_a_failure_always_reports_a_streak_and_a_delay_that_make_sense() -> None:
    h = Health()
    assert h.failed(OSError("a"), 0.0, 1.0, P, idle=False) == (PoolEvent.DOWN, PoolEvent.FAILED)
    assert h.streak == 1 and 0.0 < h.delay <= 0.1 and h.retry_at == 1.0 + h.delay
    assert h.failed(OSError("b"), 0.5, 1.1, P, idle=False) == (PoolEvent.FAILED,)  # same round
    assert h.streak == 1
    assert h.failed(OSError("c"), 1.2, 1.3, P, idle=False) == (PoolEvent.FAILED,)  # next round
    assert h.streak == 2 and h.delay > 0.0
    assert h.cause() is h.last_error


def test_a_connect_that_started_before_the_backend_came_back_is_stale() -> None:
    h = Health()
    h.failed(OSError("a"), 0.0, 1.0, P, idle=False)  # attempts A and C started at 0
    assert h.succeeded(2.0)  # B succeeded: back
    assert h.failed(OSError("c"), 0.0, 3.0, P, idle=False) == ()  # C's failure says nothing
    assert h.streak == 0 and not h.down and h.cause() is None
    assert h.may_try(3.0, waiting=False)


def test_after_a_success_a_new_round_of_failures_starts_at_one() -> None:
    h = Health()
    h.failed(OSError("a"), 0.0, 1.0, P, idle=False)
    h.succeeded(2.0)
    assert h.failed(OSError("d"), 2.5, 3.0, P, idle=False) == (PoolEvent.DOWN, PoolEvent.FAILED)
    assert h.streak == 1


def test_waiters_retry_every_waiter_retry_whatever_the_backoff() -> None:
    h = Health()
    for t in range(6):
        h.failed(OSError(), float(t), float(t), P, idle=False)
    assert h.retry_at > 5.0 + WAITER_RETRY
    assert not h.may_try(5.0 + WAITER_RETRY / 2, waiting=True)
    assert h.may_try(5.0 + WAITER_RETRY, waiting=True)
    assert not h.may_try(5.0 + WAITER_RETRY, waiting=False)
    assert h.next_try(waiting=True) == 5.0 + WAITER_RETRY


def test_rejected_new_connections_keep_the_backend_down_until_one_serves() -> None:
    h = Health()
    h.rejected_new(1.0, P, idle=False)
    assert h.down and h.streak == 1
    assert not h.succeeded(2.0)  # it opens, but has not passed its first check yet
    assert h.down
    assert h.served_new()  # it passed: back now, reported once
    assert not h.down and not h.served_new()


# -- through a pool: the lines a reader sees ---------------------------------------------------
class ScriptedPool(FakePool):
    """Each connect waits for its own gate, then fails or succeeds as the test says."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self.gates: list[Event] = []
        self.verdicts: list[BaseException | None] = []
        super().__init__(*args, **kw)

    def _new_connection(self) -> FakeConn:
        gate = Event()
        i = len(self.gates)
        self.gates.append(gate)
        self.verdicts.append(None)
        gate.wait()
        error = self.verdicts[i]
        if error is not None:
            raise error
        return super()._new_connection()

    def finish(self, i: int, error: BaseException | None) -> None:
        self.verdicts[i] = error
        self.gates[i].set()


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("geventconnpool")]


def test_no_line_says_zero_in_a_row_or_a_negative_delay(
    pools: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="geventconnpool")
    pool = ScriptedPool(min_size=0, max_size=3, max_connecting=3, fail_fast_after=1)
    pools.append(pool)

    def caller() -> None:
        with pool.get(timeout=5):
            pass

    callers = [gevent.spawn(caller) for _ in range(3)]
    wait_until(lambda: len(pool.gates) == 3, what="three connects in flight")
    pool.finish(0, ConnectionRefusedError("A: still down"))  # the outage: down after 1
    wait_until(lambda: not pool.stats().available, what="the backend considered down")
    pool.finish(1, None)  # B: the backend is back
    wait_until(lambda: pool.stats().available, what="the backend back")
    failures = pool.stats().connect_failures
    pool.finish(2, ConnectionRefusedError("C: started during the outage"))
    wait_until(lambda: pool.stats().connect_failures > failures, what="C's failure booked")
    for i in range(3, len(pool.gates)):  # the connects that replace A and C
        pool.finish(i, None)
    gevent.joinall(callers, timeout=5, raise_error=True)
    lines = _lines(caplog)
    for line in lines:
        streak = re.search(r"\((\d+) in a row; next attempt in (-?[\d.]+)s\)", line)
        if streak:
            assert int(streak.group(1)) >= 1, line
            assert not streak.group(2).startswith("-"), line
    assert [line for line in lines if "backend is back" in line], lines


def test_backend_is_back_is_logged_with_the_first_good_hand_out(
    pools: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Down because new connections failed their first check; back when one passes, at once."""
    caplog.set_level(logging.INFO, logger="geventconnpool")

    class Refusing(FakePool):
        refuse = True

        def _check(self, conn: FakeConn) -> bool:
            return not self.refuse

    pool = Refusing(1, check_idle_after=0, fail_fast_after=2, reconnect_delay=0.01)
    pools.append(pool)
    with pytest.raises(PoolTimeout):  # every new connection fails its first check
        with pool.get(timeout=1):
            pass
    assert not pool.stats().available
    pool.refuse = False
    with pool.get(timeout=5):
        back = [line for line in _lines(caplog) if "backend is back" in line]
        assert len(back) == 1, _lines(caplog)
    assert pool.stats().available
