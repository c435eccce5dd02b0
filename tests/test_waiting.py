"""Production lifecycle: sizing, fair waiting, deadlines, fail-fast, lifetime, checks, stats."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from gevent import socket
from gevent.event import Event

from geventconnpool import (
    PoolClosed,
    PoolExhausted,
    PoolStats,
    PoolTimeout,
    PoolUnavailable,
)
from geventconnpool.testing import FaultProxy, PingServer, free_port, ping

from .conftest import FakeConn, FakePool, SocketPool, wait_until

MakePool = Callable[..., SocketPool]
MakeFake = Callable[..., FakePool]


def hold(pool: Any, started: Event, release: Event) -> Any:
    """A greenlet that takes a connection and keeps it until ``release`` is set."""

    def run() -> None:
        with pool.get():
            started.set()
            release.wait()

    return gevent.spawn(run)


# --------------------------------------------------------------------------- sizing
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


# --------------------------------------------------------------------------- fair waiting
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


# --------------------------------------------------------------------------- deadlines
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


# --------------------------------------------------------------------------- connecting
def test_connect_timeout_bounds_each_attempt(
    make_pool: MakePool, proxy: FaultProxy, server: PingServer
) -> None:
    class Handshake(SocketPool):
        def _new_connection(self) -> socket.socket:
            sock = super()._new_connection()
            try:
                ping(sock)  # a handshake: hangs when the proxy accepts and never forwards
            except BaseException:
                sock.close()  # what a careful _new_connection does when interrupted
                raise
            return sock

    proxy.hang_accepts()
    pool = Handshake(1, address=proxy.address, connect_timeout=0.05, reconnect_delay=0.01)
    try:
        wait_until(lambda: pool.stats().connect_failures >= 2, what="timed-out attempts")
        with pytest.raises(PoolTimeout) as info:
            pool.wait_ready(0.001)
        assert isinstance(info.value.__cause__, TimeoutError)
        proxy.restore()
        pool.wait_ready(5)
    finally:
        pool.close()


def test_one_attempt_in_flight_per_missing_connection(make_fake: MakeFake) -> None:
    pool = make_fake(3, reconnect_delay=0.001, reconnect_max_delay=0.005)
    pool.gate = Event()  # connects hang
    peak = 0
    for _ in range(200):
        peak = max(peak, pool.stats().connecting)
        gevent.sleep(0.001)
    assert 1 <= peak <= 3
    pool.gate.set()
    pool.wait_ready(5)


def test_fail_fast_raises_unavailable_then_recovers(
    make_fake: MakeFake, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="geventconnpool"):
        pool = make_fake(2, fail_fast=True, fail_fast_after=3, reconnect_delay=0.001)
        pool.fail = ConnectionRefusedError("refused")
        wait_until(lambda: not pool.stats().available, what="backend down")
        with gevent.Timeout(0.5), pytest.raises(PoolUnavailable) as raised:
            with pool.get(timeout=10):
                pass
        assert isinstance(raised.value.__cause__, ConnectionRefusedError)
        assert pool.stats().unavailable >= 1
        before = pool.stats().connect_failures
        wait_until(lambda: pool.stats().connect_failures > before, what="half-open retries")
        pool.fail = None  # the backend is back: the next background attempt restores service
        wait_until(lambda: pool.stats().available, what="the first success")
        with pool.get(timeout=5):
            pass
    downs = [r for r in caplog.records if "considered down" in r.getMessage()]
    ups = [r for r in caplog.records if "backend is back" in r.getMessage()]
    assert len(downs) == 1 and downs[0].levelno == logging.WARNING
    assert len(ups) == 1 and ups[0].levelno == logging.INFO


def test_fail_fast_wakes_current_waiters(make_fake: MakeFake) -> None:
    pool = make_fake(1, fail_fast=True, fail_fast_after=2, reconnect_delay=0.001)
    pool.fail = OSError("down")
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            with pool.get(timeout=10):
                pass
        except PoolUnavailable as e:
            errors.append(e)

    waiter = gevent.spawn(wait)
    waiter.join(2)
    assert len(errors) == 1


def test_without_fail_fast_get_waits_out_its_timeout(make_fake: MakeFake) -> None:
    pool = make_fake(1, reconnect_delay=0.001)
    pool.fail = OSError("down")
    wait_until(lambda: not pool.stats().available)
    with pytest.raises(PoolTimeout):
        with pool.get(timeout=0.05):
            pass


# --------------------------------------------------------------------------- keeping good
def test_expired_idle_connection_is_closed_and_replaced(make_fake: MakeFake) -> None:
    pool = make_fake(2, max_lifetime=0.05, lifetime_jitter=0.0)
    pool.wait_ready(5)
    first = list(pool.made)
    wait_until(lambda: pool.stats().discarded.lifetime >= 2, what="expiry")
    assert all(conn.closed for conn in first)
    pool.wait_ready(5)


def test_expired_connection_is_never_handed_out_nor_closed_in_use(make_fake: MakeFake) -> None:
    pool = make_fake(1, max_lifetime=0.05, lifetime_jitter=0.0)
    with pool.get() as conn:
        gevent.sleep(0.1)  # expires while in use
        assert not conn.closed
    assert conn.closed and pool.stats().discarded.lifetime == 1
    with pool.get() as fresh:
        assert fresh is not conn


def test_dead_idle_socket_fails_the_checkout_check_and_next_is_tried(
    make_pool: MakePool, server: PingServer
) -> None:
    pool = make_pool(2, check_idle_after=0)
    pool.wait_ready(5)
    server.drop_all()  # both sockets now read EOF
    wait_until(lambda: server.active == 0)
    with pool.get(timeout=5) as conn:
        ping(conn)  # the caller never saw a dead one
    assert pool.stats().discarded.check == 2


def test_default_check_consumes_nothing_from_a_healthy_socket(make_pool: MakePool) -> None:
    pool = make_pool(1, check_idle_after=0)
    with pool.get() as conn:
        conn.sendall(b"PING\r\n")
        assert conn.recv(7) == b"+PONG\r\n"
    assert pool._check(pool._state.idle[0].conn) is True
    with pool.get() as again:
        assert again is conn
        ping(again)  # the stream is intact
    assert pool.stats().discarded.check == 0


def test_unsolicited_bytes_make_a_socket_dead(make_pool: MakePool) -> None:
    pool = make_pool(1, check_idle_after=0)
    with pool.get() as conn:
        conn.sendall(b"PING\r\n")  # the reply is left unread: a desynchronised stream
        gevent.sleep(0)
    # the exit was clean, but the next checkout sees bytes nobody asked for
    wait_until(lambda: not pool._check(pool._state.idle[0].conn))
    with pool.get() as fresh:
        assert fresh is not conn
    assert pool.stats().discarded.check == 1


def test_reset_socket_is_dead(make_pool: MakePool, proxy: FaultProxy) -> None:
    pool = make_pool(1, address=proxy.address, check_idle_after=0)
    pool.wait_ready(5)
    proxy.reset_all()
    with pool.get(timeout=5) as conn:
        ping(conn)
    assert pool.stats().discarded.check == 1


def test_check_is_skipped_for_recently_used_connections(make_fake: MakeFake) -> None:
    checks: list[FakeConn] = []

    class Counting(FakePool):
        def _check(self, conn: FakeConn) -> bool:
            checks.append(conn)
            return True

    pool = Counting(1, check_idle_after=0.05)
    try:
        for _ in range(5):
            with pool.get():
                pass
        assert checks == []
        gevent.sleep(0.06)
        with pool.get():
            pass
        assert len(checks) == 1
    finally:
        pool.close()


@pytest.mark.parametrize("lifo", [True, False])
def test_lifo_and_fifo_order(make_fake: MakeFake, lifo: bool) -> None:
    pool = make_fake(3, lifo=lifo)
    pool.wait_ready(5)
    with pool.get() as a:
        pass
    with pool.get() as b:
        pass
    assert (a is b) is lifo


# --------------------------------------------------------------------------- close(timeout)
def test_close_timeout_waits_for_in_use_connections(make_fake: MakeFake) -> None:
    pool = make_fake(2)
    started, release = Event(), Event()
    holder = hold(pool, started, release)
    assert started.wait(5)
    gevent.spawn_later(0.02, release.set)
    pool.close(timeout=5)
    assert holder.dead and pool.stats().open == 0
    assert all(conn.closed for conn in pool.made)


def test_close_timeout_closes_connections_still_out(make_fake: MakeFake) -> None:
    pool = make_fake(1)
    started, release = Event(), Event()
    holder = hold(pool, started, release)
    assert started.wait(5)
    pool.close(timeout=0.02)
    assert pool.made[0].closed and pool.stats().open == 0
    release.set()
    holder.join(5)
    assert holder.successful()  # its late return is harmless


def test_waiters_get_pool_closed(make_fake: MakeFake) -> None:
    pool = make_fake(1)
    with pool.get():
        waiter = gevent.spawn(lambda: pool.get().__enter__())
        wait_until(lambda: pool.stats().waiting == 1)
        pool.close()
        waiter.join(5)
        assert isinstance(waiter.exception, PoolClosed)


# --------------------------------------------------------------------------- stats, repr, name
def test_stats_snapshot_fields_and_counters(make_fake: MakeFake) -> None:
    pool = make_fake(min_size=1, max_size=2, name="billing")
    pool.wait_ready(5)
    with pool.get():
        with pytest.raises(OSError), pool.get():
            raise OSError("broken")
    stats = pool.stats()
    assert isinstance(stats, PoolStats)
    assert stats.name == "billing" and stats.min_size == 1 and stats.max_size == 2
    assert stats.acquired == 2 and stats.discarded.error == 1 and stats.available
    assert stats.open == stats.idle + stats.in_use + stats.connecting
    assert stats.use_seconds_total >= 0 and stats.wait_seconds_max >= 0
    with pytest.raises(AttributeError):
        stats.open = 3  # type: ignore[misc]


def test_repr_shows_state_in_one_line(make_fake: MakeFake) -> None:
    pool = make_fake(2, name="pool-x")
    pool.wait_ready(5)
    with pool.get():
        assert repr(pool) == ("<FakePool 'pool-x' open=2 idle=1 in_use=1 connecting=0 waiting=0>")


def test_default_names_are_unique(make_fake: MakeFake) -> None:
    a, b = make_fake(1), make_fake(1)
    assert a.name.startswith("pool-") and a.name != b.name


def test_options_may_be_class_attributes(make_fake: MakeFake) -> None:
    class Configured(FakePool):
        max_size = 3
        min_size = 1
        timeout = 0.01
        max_idle = 5.0
        lifo = False

    pool = Configured()
    try:
        assert (pool.min_size, pool.max_size, pool.timeout, pool.lifo) == (1, 3, 0.01, False)
        assert Configured(max_idle=7.0).max_idle == 7.0
    finally:
        pool.close()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"min_size": -1, "max_size": 2}, "min_size"),
        ({"min_size": 3, "max_size": 2}, "min_size"),
        ({"max_size": 0}, "max_size"),
        ({"max_waiting": -1}, "max_waiting"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"reconnect_delay": -1}, "reconnect_delay"),
        ({"reconnect_max_delay": float("inf")}, "reconnect_max_delay"),
        ({"fail_fast": 1}, "fail_fast"),
        ({"fail_fast_after": 0}, "fail_fast_after"),
        ({"max_lifetime": 0}, "max_lifetime"),
        ({"lifetime_jitter": 1.0}, "lifetime_jitter"),
        ({"check_idle_after": -1}, "check_idle_after"),
        ({"keepalive_jitter": -0.1}, "keepalive_jitter"),
        ({"max_idle": 0}, "max_idle"),
        ({"lifo": "yes"}, "lifo"),
        ({"leak_timeout": 0}, "leak_timeout"),
        ({"max_connecting": 0}, "max_connecting"),
        ({"name": ""}, "name"),
    ],
)
def test_every_option_is_validated(kwargs: dict[str, Any], name: str) -> None:
    kwargs.setdefault("max_size", 2)
    with pytest.raises((ValueError, TypeError), match=name):
        FakePool(**kwargs)


def test_unreachable_backend_does_not_stop_a_pool_from_closing() -> None:
    pool = SocketPool(2, address=("127.0.0.1", free_port()), reconnect_delay=0.001)
    wait_until(lambda: pool.stats().connect_failures >= 2)
    pool.close()
    assert pool.stats().open == 0
