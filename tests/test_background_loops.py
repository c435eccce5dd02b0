"""One background-loop helper (``geventconnpool._loop.Loop``) and its rules.

A loop holds its owner weakly and stops quietly when the owner is collected or closed, when the
process forked, or when stopped or killed; it sleeps until its next due time or until woken; a
turn that raises is logged (rate-limited) and followed by a growing backoff, never the loop's
end. Every background task of the package is one: the pool's scheduler, PoolMap's reaper and
room maker, BalancedPool's worker, the Sentinel watchers.
"""

from __future__ import annotations

import gc
import itertools
import logging
import math
import time
import tracemalloc
import weakref
from collections.abc import Callable

import gevent
import pytest
from gevent.event import Event

from geventconnpool import BalancedPool, PoolMap
from geventconnpool._loop import Loop
from geventconnpool._maintenance import Scheduler
from tests.conftest import FakeConn, FakePool, wait_until
from tests.test_fork import run_in_child


class Owner:
    """An owner as a loop sees it: something with ``closed``."""

    def __init__(self) -> None:
        self.closed = False


class Boom(BaseException):
    """Not an Exception: what a stray hook or a custom error may raise."""


def recording(
    calls: list[float], result: float | None = math.inf
) -> Callable[[Owner], float | None]:
    def body(owner: Owner) -> float | None:
        calls.append(time.monotonic())
        return result

    return body


def test_a_loop_sleeps_until_woken_and_runs_a_turn_per_wake() -> None:
    owner = Owner()
    calls: list[float] = []
    loop = Loop(owner, recording(calls), name="t")
    wait_until(lambda: len(calls) == 1 and loop.next_at == math.inf, what="first turn, asleep")
    loop.wake()
    wait_until(lambda: len(calls) == 2, what="the woken turn")
    assert loop.running
    loop.stop()
    wait_until(lambda: not loop.running, what="stopped")
    assert len(calls) == 2


def test_a_loop_runs_again_at_its_due_time() -> None:
    owner = Owner()
    calls: list[float] = []
    loop = Loop(owner, recording(calls, 0.01), name="t")
    wait_until(lambda: len(calls) >= 3, what="three turns 10 ms apart")
    assert all(b - a >= 0.009 for a, b in itertools.pairwise(calls))
    loop.stop()


def test_wake_by_cuts_a_long_sleep_short_only_when_earlier() -> None:
    owner = Owner()
    calls: list[float] = []
    loop = Loop(owner, recording(calls, 3600.0), name="t")
    wait_until(lambda: len(calls) == 1 and loop.next_at > time.monotonic() + 3000, what="asleep")
    loop.wake_by(time.monotonic() + 7200)  # later than the due time: nothing to do
    gevent.sleep(0.01)
    assert len(calls) == 1
    loop.wake_by(time.monotonic())
    wait_until(lambda: len(calls) == 2, what="the earlier wake")
    loop.stop()


def test_a_loop_stops_when_its_owner_is_collected_and_does_not_keep_it_alive() -> None:
    owner = Owner()
    calls: list[float] = []
    loop = Loop(owner, recording(calls), name="t")
    wait_until(lambda: len(calls) == 1, what="first turn")
    ref = weakref.ref(owner)
    del owner
    gc.collect()
    assert ref() is None
    wait_until(lambda: not loop.running, what="the loop saw its owner go")
    assert len(calls) == 1


def test_a_loop_stops_when_its_owner_is_closed() -> None:
    owner = Owner()
    calls: list[float] = []
    loop = Loop(owner, recording(calls), name="t")
    wait_until(lambda: len(calls) == 1, what="first turn")
    owner.closed = True
    loop.wake()
    wait_until(lambda: not loop.running, what="the loop saw its owner closed")
    assert len(calls) == 1


def test_a_killed_loop_stops() -> None:
    owner = Owner()
    calls: list[float] = []
    loop = Loop(owner, recording(calls), name="t")
    wait_until(lambda: len(calls) == 1, what="first turn")
    greenlet = loop.stop()
    assert greenlet is not None
    greenlet.kill()  # GreenletExit: stops, nothing logged
    assert not loop.running


def test_a_forked_child_does_not_run_its_parents_loop() -> None:
    owner = Owner()
    calls: list[float] = []
    loop = Loop(owner, recording(calls), name="t")
    wait_until(lambda: len(calls) == 1, what="first turn")

    def child() -> dict[str, object]:
        before = len(calls)
        loop.wake()
        wait_until(lambda: not loop.running, what="the child's copy of the loop stopped")
        return {"before": before, "after": len(calls)}

    _, report = run_in_child(child)
    assert report == {"before": 1, "after": 1}
    loop.wake()  # the parent's loop goes on
    wait_until(lambda: len(calls) == 2, what="the parent's next turn")
    loop.stop()


@pytest.mark.parametrize("error", [RuntimeError("bug"), Boom("stray"), gevent.Timeout(1)])
def test_a_turn_that_raises_is_logged_once_and_the_loop_goes_on(
    error: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    owner = Owner()
    calls: list[float] = []
    done = Event()

    def body(o: Owner) -> float:
        calls.append(time.monotonic())
        if len(calls) <= 3:
            raise error
        done.set()
        return math.inf

    with caplog.at_level(logging.DEBUG, logger="geventconnpool"):
        loop = Loop(owner, body, name="flaky", error_backoff=(0.001, 0.004))
        assert done.wait(5)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # once, not once per turn
    assert "flaky" in errors[0].getMessage() and errors[0].exc_info is not None
    assert loop.running and loop.errors == 0  # the streak ends with the first good turn
    loop.stop()


def test_a_body_that_always_raises_backs_off_instead_of_spinning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    owner = Owner()
    calls: list[float] = []

    def body(o: Owner) -> float:
        calls.append(time.monotonic())
        raise ValueError("every time")

    base, cap = 0.004, 0.032
    with caplog.at_level(logging.ERROR, logger="geventconnpool"):
        loop = Loop(owner, body, name="hostile", error_backoff=(base, cap))
        wait_until(lambda: len(calls) >= 7, what="seven failed turns")
        loop.stop()
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    for i, gap in enumerate(gaps[:6]):  # jitter takes off at most half of each delay
        assert gap >= 0.5 * min(cap, base * 2**i) * 0.95, (i, gaps)
    assert sum(gaps[:6]) >= 0.5 * (base * (1 + 2 + 4) + cap * 3) * 0.95  # grew to the cap
    assert len([r for r in caplog.records if "hostile" in r.getMessage()]) == 1


def test_a_failing_turn_keeps_no_memory_over_ten_thousand_turns() -> None:
    owner = Owner()

    def body(o: Owner) -> float:
        raise ValueError("x" * 100)  # a traceback with frames each time

    loop = Loop(owner, body, name="hostile", start=False, error_backoff=(0.0, 0.0))
    logging.getLogger("geventconnpool").disabled = True
    try:
        for _ in range(500):
            loop._run_turn()
        gc.collect()
        tracemalloc.start()
        try:
            for _ in range(10_000):
                assert loop._run_turn() == 0.0
            gc.collect()
            kept = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
    finally:
        logging.getLogger("geventconnpool").disabled = False
    assert loop.errors == 10_500 and loop.turns == 10_500
    assert kept < 20_000, f"{kept} bytes kept by 10,000 failed turns"


def test_ten_thousand_loops_of_collected_owners_leave_nothing() -> None:
    def make(n: int) -> list[Loop[Owner]]:
        loops = []
        for _ in range(n):
            owner = Owner()
            loops.append(Loop(owner, recording([]), name="t"))
            del owner  # collected at once: the loop holds it weakly
        return loops

    def settle(loops: list[Loop[Owner]]) -> None:
        wait_until(lambda: not any(loop.running for loop in loops), what="every loop stopped")

    settle(make(500))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        settle(make(10_000))
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 50_000, f"{after - before} bytes kept by 10,000 finished loops"


# -- the four users ------------------------------------------------------------------------------


def test_the_package_background_tasks_are_loops() -> None:
    pool = FakePool(max_size=1, min_size=0)
    assert isinstance(pool._maint, Scheduler) and isinstance(pool._maint, Loop)
    pool.close()
    m: PoolMap[str, FakeConn] = PoolMap(lambda k: FakePool(max_size=1, min_size=0), max_total=2)
    assert isinstance(m._reaper, Loop) and isinstance(m._room, Loop)
    m.close()
    bp = BalancedPool([("127.0.0.1", 1)], lambda ep: FakePool(max_size=1, min_size=0))
    assert isinstance(bp._worker, Loop)
    bp.close()
    assert not bp._worker.running


def test_a_poolmap_reaper_that_raises_goes_on_reaping(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    m: PoolMap[str, FakeConn] = PoolMap(
        lambda k: FakePool(max_size=1, min_size=0), max_pool_idle=0.02
    )
    reaper = m._reaper
    assert reaper is not None
    reaper.backoff = (0.001, 0.002)
    real = PoolMap._reap_idle
    failures = [2]

    def flaky(self: PoolMap[str, FakeConn], limit: float) -> None:
        if failures[0]:
            failures[0] -= 1
            raise RuntimeError("reaper bug")
        real(self, limit)

    monkeypatch.setattr(PoolMap, "_reap_idle", flaky)
    with caplog.at_level(logging.ERROR, logger="geventconnpool"):
        with m.get("a"):
            pass
        wait_until(lambda: "a" not in m, what="the reaper closed the idle pool after its errors")
    assert failures == [0] and reaper.running
    assert len([r for r in caplog.records if "reaper" in r.getMessage()]) == 1
    m.close()
    wait_until(lambda: not reaper.running, what="stopped on close")
