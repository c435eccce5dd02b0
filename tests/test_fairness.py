"""Bounded barging (``fair_after``): fast under contention, fair within a bound, nothing lost."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from gevent.event import Event

from geventconnpool import PoolClosed, PoolTimeout

from .conftest import FakeConn, FakePool, wait_until

MakeFake = Callable[..., FakePool]


def _holder(pool: FakePool, got: list[FakeConn], release: Event, timeout: float = 5) -> None:
    with pool.get(timeout) as conn:
        got.append(conn)
        release.wait()


def test_fair_after_is_an_option_with_a_default_and_a_class_attribute() -> None:
    assert FakePool.fair_after == 0.03

    class Strict(FakePool):
        fair_after = 0.0

    pool = Strict(1)
    try:
        assert pool.fair_after == 0.0
    finally:
        pool.close()
    with pytest.raises(ValueError, match="fair_after"):
        FakePool(1, fair_after=-1)
    with pytest.raises(TypeError, match="fair_after"):
        FakePool(1, fair_after="soon")


def test_a_releaser_may_take_its_connection_back_ahead_of_a_young_waiter(
    make_fake: MakeFake,
) -> None:
    pool = make_fake(1, fair_after=10.0, fair_floor=10.0)
    pool.wait_ready(5)
    got: list[FakeConn] = []
    release = Event()
    with pool.get() as first:
        waiter = gevent.spawn(_holder, pool, got, release)
        wait_until(lambda: pool.stats().waiting == 1)
    with pool.get(timeout=0) as again:  # no switch since the release: barging is allowed
        assert again is first
    wait_until(lambda: len(got) == 1, what="the waiter served by the deferred hand-off")
    release.set()
    waiter.join(5)
    assert waiter.successful()
    assert got == [first]  # the deferred hand-off served the waiter afterwards


def test_a_waiter_older_than_fair_after_gets_the_next_release(make_fake: MakeFake) -> None:
    pool = make_fake(1, fair_after=0.01)
    pool.wait_ready(5)
    got: list[FakeConn] = []
    release = Event()
    with pool.get():
        waiter = gevent.spawn(_holder, pool, got, release)
        wait_until(lambda: pool.stats().waiting == 1)
        wait_until(
            lambda: pool.dump().waiters[0].waited_for >= 0.02,
            what="the waiter to be older than fair_after",
            poll=0.005,
        )
    with pytest.raises(PoolTimeout), pool.get(timeout=0):
        pass  # the release went straight to the old waiter
    wait_until(lambda: len(got) == 1, what="the old waiter served")
    release.set()
    waiter.join(5)
    assert waiter.successful()
    assert len(got) == 1


def test_a_parked_connection_is_not_lost_when_the_releaser_dies(make_fake: MakeFake) -> None:
    pool = make_fake(1, fair_after=10.0, fair_floor=10.0)
    pool.wait_ready(5)
    got: list[FakeConn] = []
    release = Event()

    def release_then_die() -> None:
        with pool.get():
            wait_until(lambda: pool.stats().waiting == 1)
        raise gevent.GreenletExit  # parked the connection, then ended

    first = gevent.spawn(release_then_die)
    wait_until(lambda: pool.stats().in_use == 1)
    waiter = gevent.spawn(_holder, pool, got, release)
    first.join(5)
    wait_until(lambda: len(got) == 1, what="the waiter served by the deferred hand-off")
    release.set()
    waiter.join(5)
    assert pool.stats().idle == 1 and pool.stats().open == 1


def test_the_waiter_a_connection_was_meant_for_may_time_out_or_die(make_fake: MakeFake) -> None:
    pool = make_fake(1, fair_after=0.0)
    pool.wait_ready(5)
    got: list[FakeConn] = []
    with pool.get():
        doomed = gevent.spawn(_holder, pool, [], Event())
        patient = gevent.spawn(_holder, pool, got, Event())
        wait_until(lambda: pool.stats().waiting == 2)
    doomed.kill()  # served (strict FIFO), killed before or just after it ran: nothing lost
    wait_until(lambda: len(got) == 1, what="the next waiter")
    patient.kill()  # killed while holding it: discarded as interrupted, and replaced
    wait_until(lambda: pool.stats().idle == 1, what="the replacement")
    s = pool.stats()
    assert s.open == 1 and s.waiting == 0 and s.discarded.interrupted >= 1


def test_a_timeout_shorter_than_fair_after_still_fires_on_time(make_fake: MakeFake) -> None:
    pool = make_fake(1, fair_after=5.0)
    pool.wait_ready(5)
    with pool.get():
        start = time.monotonic()
        with pytest.raises(PoolTimeout):
            with pool.get(timeout=0.05):
                pass
        assert time.monotonic() - start < 2.5  # far below fair_after
    assert pool.stats().waiting == 0


@pytest.mark.parametrize("change", ["close", "invalidate", "resize"])
def test_pending_hand_off_is_reset_by_whole_pool_changes(make_fake: MakeFake, change: str) -> None:
    pool = make_fake(2, fair_after=10.0, fair_floor=10.0)
    pool.wait_ready(5)
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            with pool.get(timeout=5):
                pass
        except PoolClosed as e:
            errors.append(e)

    with pool.get(), pool.get():
        w = gevent.spawn(waiter)
        wait_until(lambda: pool.stats().waiting == 1)
    # both parked, one hand-off pending; now change the whole pool before it runs
    getattr(pool, change)(*([0, 1] if change == "resize" else []))
    w.join(5)
    assert w.dead
    s = pool.stats()
    assert s.waiting == 0 and s.in_use == 0
    if change == "close":
        assert errors and s.idle == 0
    else:
        assert not errors


def test_stats_waiting_and_max_waiting_stay_exact_with_lazy_removal(make_fake: MakeFake) -> None:
    pool = make_fake(1, max_waiting=2)
    pool.wait_ready(5)
    with pool.get():
        a = gevent.spawn(_holder, pool, [], Event())
        b = gevent.spawn(_holder, pool, [], Event())
        wait_until(lambda: pool.stats().waiting == 2)
        a.kill()  # leaves the line (lazily removed from the deque)
        assert pool.stats().waiting == 1
        c = gevent.spawn(_holder, pool, [], Event())
        wait_until(lambda: pool.stats().waiting == 2)
        from geventconnpool import PoolExhausted

        with pytest.raises(PoolExhausted):
            with pool.get():
                pass
        b.kill()
        c.kill()
    assert pool.stats().waiting == 0


def test_no_connection_is_ever_held_twice_under_contention(make_fake: MakeFake) -> None:
    pool = make_fake(3, fair_after=0.005)
    pool.wait_ready(5)
    holders: dict[int, Any] = {}
    clashes: list[int] = []
    done = Event()

    def worker() -> None:
        for _ in range(200):
            with pool.get(timeout=5) as conn:
                if conn.id in holders:
                    clashes.append(conn.id)
                holders[conn.id] = gevent.getcurrent()
                gevent.sleep(0)
                del holders[conn.id]
        done.set()

    crowd = [gevent.spawn(worker) for _ in range(30)]
    gevent.joinall(crowd, timeout=30, raise_error=True)
    assert not clashes
    s = pool.stats()
    assert s.acquired == 30 * 200 and s.open == 3 and s.waiting == 0
