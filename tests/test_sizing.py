"""A pool keeps between ``min_size`` and ``max_size`` connections: it fills itself in the
background without blocking its constructor, grows on demand (also when callers may never wait),
closes idle surplus after ``max_idle``, resizes at run time and never exceeds its size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
import pytest
from gevent import socket
from gevent.event import Event

from geventconnpool import PoolExhausted, PoolTimeout
from geventconnpool.testing import PingServer, free_port, ping

from .conftest import FakeConn, FakePool, SocketPool, hold, wait_until

MakePool = Callable[..., SocketPool]
MakeFake = Callable[..., FakePool]


def test_constructor_never_blocks_or_raises_for_a_down_backend(make_pool: MakePool) -> None:
    with gevent.Timeout(0.5, AssertionError("the constructor blocked")):
        pool = make_pool(3, address=("127.0.0.1", free_port()), reconnect_delay=0.01)
    wait_until(lambda: pool.stats().connect_failures >= 2, what="failed connects")
    assert pool.stats().open <= 3


def test_pool_fills_itself_in_the_background(make_pool: MakePool, server: PingServer) -> None:
    pool = make_pool(4)
    pool.wait_ready(5)
    wait_until(lambda: server.accepted == 4, what="the server accepting the 4 connects")
    assert pool.stats().idle == 4


def test_size_means_min_and_max(make_fake: MakeFake) -> None:
    pool = make_fake(4)
    assert (pool.min_size, pool.max_size, pool.size) == (4, 4, 4)


def test_min_size_is_prefilled_and_max_size_is_reached_on_demand(make_fake: MakeFake) -> None:
    pool = make_fake(min_size=2, max_size=5)
    pool.wait_ready(5)
    assert pool.stats().open == 2
    release = Event()
    holders = []
    for _ in range(5):
        started = Event()
        holders.append(hold(pool, started, release))
        assert started.wait(5)
    assert pool.stats().open == 5
    with pytest.raises(PoolTimeout):
        with pool.get(timeout=0.05):
            pass
    assert pool.stats().open == 5  # never above max_size
    release.set()
    gevent.joinall(holders, timeout=5)


def test_growth_skips_connects_whose_waiter_was_served(make_fake: MakeFake) -> None:
    # HikariCP's spike: slow connects, short holds; the returning connections serve the burst.
    class SlowConnect(FakePool):
        def _new_connection(self) -> FakeConn:
            gevent.sleep(0.15)
            return super()._new_connection()

    pool = SlowConnect(min_size=5, max_size=50)
    try:
        pool.wait_ready(5)

        def request() -> None:
            with pool.get(timeout=5):
                gevent.sleep(0.002)

        burst = [gevent.spawn(request) for _ in range(50)]
        gevent.joinall(burst, timeout=10, raise_error=True)
        wait_until(lambda: pool.stats().connecting == 0)
        assert pool.stats().created <= 10
    finally:
        pool.close()


def test_a_never_wait_pool_connects_on_demand(make_pool: MakePool) -> None:
    pool = make_pool(min_size=0, max_size=3, max_waiting=0)
    assert pool.stats().open == 0  # min_size=0: nothing opened up front
    # The first get() may not wait for the connect it starts: it fails at once, as README says.
    with pytest.raises(PoolExhausted), pool.get():
        pass
    assert pool.stats().open == 1  # a connect started (open counts connects in flight)
    wait_until(lambda: pool.stats().idle == 1, what="the connect the first get() started")
    for _ in range(4):  # the next calls, 0.2 s apart as in the report, are served
        gevent.sleep(0.2)
        with pool.get() as conn:
            assert conn.fileno() != -1
    stats = pool.stats()
    assert (stats.created, stats.acquired, stats.exhausted) == (1, 4, 1)


def test_a_never_wait_pool_grows_to_max_size_under_concurrent_demand(make_fake: MakeFake) -> None:
    pool = make_fake(min_size=0, max_size=3, max_waiting=0)
    held: list[Any] = []
    refused = 0

    def take_one() -> bool:
        nonlocal refused
        assert pool.stats().open <= 3
        if len(held) < 3:
            ctx = pool.get()
            try:
                ctx.__enter__()
                held.append(ctx)
            except PoolExhausted:
                refused += 1  # each refusal starts a connect for the next caller
        return len(held) == 3

    try:
        wait_until(take_one, 5, "three holders of a never-wait pool")
        stats = pool.stats()
        assert stats.open == 3 and stats.in_use == 3 and stats.created == 3
        assert 1 <= refused == stats.exhausted
        with pytest.raises(PoolExhausted), pool.get():  # at max_size: refused, no 4th connect
            pass
        gevent.sleep(0.05)
        assert pool.stats().open == 3 and pool.stats().connecting == 0
    finally:
        for ctx in held:
            ctx.__exit__(None, None, None)


def test_idle_connections_above_min_size_are_closed_after_max_idle(make_fake: MakeFake) -> None:
    pool = make_fake(min_size=1, max_size=4, max_idle=0.05)
    pool.wait_ready(5)
    release = Event()
    holders = []
    for _ in range(4):
        started = Event()
        holders.append(hold(pool, started, release))
        assert started.wait(5)
    release.set()
    gevent.joinall(holders, timeout=5)
    wait_until(lambda: pool.stats().open == 1, what="reaping down to min_size")
    assert pool.stats().discarded.idle == 3
    gevent.sleep(0.1)  # more than max_idle again: min_size is never reaped
    assert pool.stats().open == 1


def test_resize_grows_and_shrinks_at_run_time(make_fake: MakeFake) -> None:
    pool = make_fake(2)
    pool.wait_ready(5)
    pool.resize(min_size=4, max_size=6)
    pool.wait_ready(5)
    assert pool.stats().open == 4 and pool.stats().max_size == 6
    pool.resize(min_size=1, max_size=2)
    assert pool.stats().open == 2 and pool.stats().discarded.idle == 2
    with pytest.raises(ValueError, match="min_size"):
        pool.resize(min_size=3)


def test_resize_down_closes_in_use_surplus_on_return(make_fake: MakeFake) -> None:
    pool = make_fake(3)
    pool.wait_ready(5)
    with pool.get(), pool.get(), pool.get():
        pool.resize(min_size=1, max_size=1)
        assert pool.stats().open == 3  # in use: not taken from their holders
    assert pool.stats().open == 1


def test_size_invariant_under_1000_greenlets(server: PingServer) -> None:
    live = {"now": 0, "peak": 0}

    class Counting(SocketPool):
        def _new_connection(self) -> socket.socket:
            live["now"] += 1
            live["peak"] = max(live["peak"], live["now"])
            try:
                return super()._new_connection()
            except BaseException:
                live["now"] -= 1
                raise

        def _close_connection(self, conn: socket.socket) -> None:
            live["now"] -= 1
            conn.close()

    pool = Counting(10, address=server.address)
    try:

        def work(i: int) -> None:
            with pool.get() as conn:
                if i % 7 == 0:
                    raise ConnectionResetError  # discarded and replaced
                ping(conn)

        greenlets = [gevent.spawn(work, i) for i in range(1000)]
        gevent.joinall(greenlets, timeout=30)
        assert all(g.dead for g in greenlets)
        assert live["peak"] <= 10
        assert pool.stats().discarded.error == len(range(0, 1000, 7))
    finally:
        pool.close()
