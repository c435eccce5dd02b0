"""``get()`` waits in line under one deadline: first come first served, the pool-wide and
per-call timeout, ``timeout=0`` as a try-get, ``max_waiting``, the LIFO/FIFO hand-out order; a
waiter that times out or is killed leaves no trace.
"""

from __future__ import annotations

from collections.abc import Callable

import gevent
import pytest

from geventconnpool import PoolExhausted, PoolTimeout

from .conftest import FakeConn, FakePool, wait_until

MakeFake = Callable[..., FakePool]


def test_waiters_are_served_first_come_first_served(make_fake: MakeFake) -> None:
    pool = make_fake(1)
    order: list[int] = []

    def take(i: int) -> None:
        with pool.get():
            order.append(i)

    with pool.get():
        waiters = []
        for i in range(10):
            waiters.append(gevent.spawn(take, i))
            wait_until(lambda i=i: pool.stats().waiting == i + 1)  # type: ignore[misc]
    gevent.joinall(waiters, timeout=5)
    assert order == list(range(10))


def test_strict_fifo_a_new_caller_cannot_barge_ahead_of_a_waiter(make_fake: MakeFake) -> None:
    pool = make_fake(1, fair_after=0)
    order: list[str] = []

    def take(who: str) -> None:
        with pool.get():
            order.append(who)

    with pool.get():
        waiter = gevent.spawn(take, "waiter")
        wait_until(lambda: pool.stats().waiting == 1)
    # released: the connection now belongs to the waiter even though it has not run yet
    with pytest.raises(PoolTimeout), pool.get(timeout=0):
        pass
    take("latecomer")
    waiter.join(5)
    assert order == ["waiter", "latecomer"]


def test_get_timeout_raises_pool_timeout(make_fake: MakeFake) -> None:
    pool = make_fake(1)
    with pool.get():
        with pytest.raises(PoolTimeout) as raised, pool.get(timeout=0.05):
            pass
    assert isinstance(raised.value, TimeoutError)
    assert "pool-" in str(raised.value) and "in_use=1" in str(raised.value)
    assert pool.stats().timeouts == 1


def test_pool_wide_timeout_and_per_call_override(make_fake: MakeFake) -> None:
    pool = make_fake(1, timeout=0.02)
    with pool.get():
        with pytest.raises(PoolTimeout, match=r"0\.02"), pool.get():
            pass
        with pytest.raises(PoolTimeout, match=r"0\.05"), pool.get(timeout=0.05):
            pass


def test_timeout_zero_is_a_try_get(make_fake: MakeFake) -> None:
    pool = make_fake(1)
    pool.wait_ready(5)
    with pool.get(timeout=0) as conn:
        assert conn is not None
        with gevent.Timeout(1), pytest.raises(PoolTimeout), pool.get(timeout=0):
            pass
    assert pool.stats().waiting == 0


def test_one_deadline_covers_waiting_and_checking(make_fake: MakeFake) -> None:
    class SlowCheck(FakePool):
        def _check(self, conn: FakeConn) -> bool:
            gevent.sleep(0.3)  # would blow any re-armed deadline
            return True

    pool = SlowCheck(1, check_idle_after=0)
    try:
        pool.wait_ready(5)
        started = gevent.get_hub().loop.now()
        with pytest.raises(PoolTimeout), pool.get(timeout=0.1):
            pass
        assert gevent.get_hub().loop.now() - started < 0.3
        assert pool.stats().discarded.interrupted == 1  # a half-checked connection is not kept
    finally:
        pool.close()


def test_pool_timeout_message_and_cause(make_fake: MakeFake) -> None:
    pool = make_fake(1, name="orders", reconnect_delay=0.001)
    pool.fail = ConnectionRefusedError("connection refused")
    wait_until(lambda: pool.stats().connect_failures >= 1)
    with pytest.raises(PoolTimeout) as raised, pool.get(timeout=0.01):
        pass
    message = str(raised.value)
    for part in ("'orders'", "open=", "idle=0", "in_use=0", "connecting=", "waiting=", "max=1"):
        assert part in message
    assert isinstance(raised.value.__cause__, ConnectionRefusedError)


def test_timed_out_waiter_leaves_no_trace(make_fake: MakeFake) -> None:
    pool = make_fake(1)
    with pool.get():
        for _ in range(20):
            with pytest.raises(PoolTimeout), pool.get(timeout=0.001):
                pass
        assert pool.stats().waiting == 0
    with pool.get(timeout=1):
        assert pool.stats().open == 1


def test_killed_waiter_leaves_no_trace(make_fake: MakeFake) -> None:
    pool = make_fake(1)
    with pool.get():
        waiters = [gevent.spawn(lambda: pool.get().__enter__()) for _ in range(5)]
        wait_until(lambda: pool.stats().waiting == 5)
        gevent.killall(waiters, block=True)
        assert pool.stats().waiting == 0
    stats = pool.stats()
    assert stats.idle == 1 and stats.in_use == 0 and stats.open == 1


def test_max_waiting_sheds_load(make_fake: MakeFake) -> None:
    pool = make_fake(1, max_waiting=2)
    with pool.get():
        waiters = [gevent.spawn(lambda: pool.get(timeout=5).__enter__()) for _ in range(2)]
        wait_until(lambda: pool.stats().waiting == 2)
        with gevent.Timeout(1), pytest.raises(PoolExhausted, match="max_waiting=2"):
            with pool.get():
                pass
        gevent.killall(waiters)
    assert pool.stats().exhausted == 1


def test_wait_ready_raises_with_last_connect_error(make_fake: MakeFake) -> None:
    pool = make_fake(2, reconnect_delay=0.001)
    pool.fail = ConnectionRefusedError("nope")
    with pytest.raises(PoolTimeout, match="min_size=2") as raised:
        pool.wait_ready(0.05)
    assert isinstance(raised.value.__cause__, ConnectionRefusedError)
    pool.fail = None
    pool.wait_ready(5)


@pytest.mark.parametrize("lifo", [True, False])
def test_lifo_and_fifo_order(make_fake: MakeFake, lifo: bool) -> None:
    pool = make_fake(3, lifo=lifo)
    pool.wait_ready(5)
    with pool.get() as a:
        pass
    with pool.get() as b:
        pass
    assert (a is b) is lifo
