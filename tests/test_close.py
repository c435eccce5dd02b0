"""Core behaviour: hand-out, discard and replace, failed connects, timeouts, keepalive, close."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from gevent import socket
from gevent.event import Event

from geventconnpool import ConnectionPool, PoolClosed, PoolTimeout
from geventconnpool.testing import PingServer, free_port, open_fds, ping

from .conftest import FakeConn, FakePool, SocketPool, live_greenlets, wait_until

MakePool = Callable[..., SocketPool]
MakeFake = Callable[..., FakePool]


# --------------------------------------------------------------------------- construction
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


# --------------------------------------------------------------------------- inside the block
def test_exc_classes_error_discards_and_replaces(make_pool: MakePool) -> None:
    pool = make_pool(2)
    pool.wait_ready(5)
    with pytest.raises(ConnectionResetError), pool.get() as broken:
        raise ConnectionResetError("peer reset")
    assert broken.fileno() == -1  # closed
    wait_until(lambda: pool.stats().idle == 2, what="replacement")
    stats = pool.stats()
    assert stats.discarded.error == 1 and stats.created == 3
    with pool.get() as first, pool.get() as second:
        assert broken not in (first, second)


def test_other_exception_returns_the_connection(make_pool: MakePool) -> None:
    pool = make_pool(1)
    with pytest.raises(KeyError), pool.get() as first:
        raise KeyError("application bug")
    with pool.get() as second:
        assert second is first
        ping(second)
    assert pool.stats().discarded.total == 0


def test_gevent_timeout_inside_block_discards(make_pool: MakePool) -> None:
    pool = make_pool(1)
    timeout = gevent.Timeout(0.01)
    with pytest.raises(gevent.Timeout) as raised, timeout, pool.get() as conn:
        conn.sendall(b"PING\r\n")
        gevent.sleep(1)  # the reply is never read: the next user must not see it
    assert raised.value is timeout
    with pool.get() as fresh:
        assert fresh is not conn
        ping(fresh)  # a clean protocol state
    assert pool.stats().discarded.interrupted == 1


def test_killed_greenlet_inside_block_discards(make_pool: MakePool) -> None:
    pool = make_pool(1)
    holding = Event()
    taken: list[Any] = []

    def hold() -> None:
        with pool.get() as conn:
            taken.append(conn)
            holding.set()
            gevent.sleep(10)

    g = gevent.spawn(hold)
    assert holding.wait(5)
    g.kill(block=True)
    assert pool.stats().discarded.interrupted == 1
    with pool.get() as conn:
        assert conn is not taken[0]
        ping(conn)


def test_keyboard_interrupt_inside_block_discards(make_fake: MakeFake) -> None:
    pool = make_fake(1)
    with pytest.raises(KeyboardInterrupt), pool.get() as conn:
        raise KeyboardInterrupt
    assert conn.closed
    assert pool.stats().discarded.interrupted == 1


# --------------------------------------------------------------------------- failed connects
def test_failing_connect_retries_with_backoff_and_recovers(
    make_fake: MakeFake, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_fake(3, reconnect_delay=0.01, reconnect_max_delay=0.05)
    pool.fail = ConnectionRefusedError("down")
    with caplog.at_level(logging.WARNING, logger="geventconnpool"):
        wait_until(lambda: pool.stats().connect_failures >= 5, what="failures")
    assert "connect failed" in caplog.text
    assert all(r.name.startswith("geventconnpool") for r in caplog.records)
    pool.fail = None
    pool.wait_ready(5)  # no slot was lost: all three come back
    assert pool.stats().open == 3


def test_new_connection_returning_none_is_a_failed_attempt(make_fake: MakeFake) -> None:
    results: list[FakeConn | None] = [None, None]

    class Flaky(FakePool):
        def _new_connection(self) -> FakeConn:
            if results:
                return results.pop()  # type: ignore[return-value]
            return super()._new_connection()

    pool = Flaky(1, reconnect_delay=0.001)
    try:
        with pool.get(timeout=5) as conn:
            assert conn is not None
        assert pool.stats().connect_failures == 2
    finally:
        pool.close()


def test_connect_attempts_back_off_exponentially(make_fake: MakeFake) -> None:
    pool = make_fake(1, reconnect_delay=0.02, reconnect_max_delay=10)
    pool.fail = OSError("refused")
    wait_until(lambda: pool.stats().connect_failures >= 1)
    gevent.sleep(0.3)  # a window: constant 20 ms retries would make ~15 attempts
    # delays 10-20, 20-40, 40-80, 80-160 ms...: at most 5 attempts fit in 300 ms
    assert pool.stats().connect_failures <= 6


# --------------------------------------------------------------------------- get(timeout)
def test_get_timeout_raises_pool_timeout(make_fake: MakeFake) -> None:
    pool = make_fake(1)
    with pool.get():
        with pytest.raises(PoolTimeout) as raised, pool.get(timeout=0.05):
            pass
    assert isinstance(raised.value, TimeoutError)
    assert "pool-" in str(raised.value) and "in_use=1" in str(raised.value)
    assert pool.stats().timeouts == 1


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


# --------------------------------------------------------------------------- keepalive
def test_keepalive_pings_idle_connections(make_pool: MakePool, server: PingServer) -> None:
    pinged: list[Any] = []

    class Pinging(SocketPool):
        def _keepalive(self, conn: Any) -> None:
            ping(conn)
            pinged.append(conn)

    pool = Pinging(2, keepalive=0.05, keepalive_jitter=0.0, address=server.address)
    try:
        wait_until(lambda: len(set(map(id, pinged))) == 2, what="both connections pinged")
    finally:
        pool.close()


def test_keepalive_failure_discards_and_replaces(make_pool: MakePool, server: PingServer) -> None:
    pool = make_pool(2, keepalive=0.05)
    pool.wait_ready(5)
    server.drop_all()
    wait_until(lambda: pool.stats().discarded.keepalive >= 2, what="keepalive discards")
    pool.wait_ready(5)
    with pool.get() as conn:
        ping(conn)


def test_keepalive_other_exception_is_logged_and_discards(
    make_fake: MakeFake, caplog: pytest.LogCaptureFixture
) -> None:
    class Buggy(FakePool):
        def _keepalive(self, conn: FakeConn) -> None:
            raise ValueError("bug in keepalive")

    with caplog.at_level(logging.ERROR, logger="geventconnpool"):
        pool = Buggy(1, keepalive=0.02)
        try:
            wait_until(lambda: pool.stats().discarded.keepalive >= 2, what="two rounds")
            rounds = pool.stats().discarded.keepalive
            wait_until(lambda: pool.stats().discarded.keepalive > rounds, what="it goes on")
        finally:
            pool.close()
    assert "bug in keepalive" in caplog.text


def test_keepalive_never_makes_a_caller_wait_for_an_idle_connection(make_fake: MakeFake) -> None:
    release = Event()

    class SlowPing(FakePool):
        def _keepalive(self, conn: FakeConn) -> None:
            release.wait()

    pool = SlowPing(2, keepalive=0.02, keepalive_jitter=0.0)
    try:
        pool.wait_ready(5)
        wait_until(lambda: pool.stats().checking >= 1, what="a ping in flight")
        with pool.get(timeout=0) as conn:  # one connection is always left idle
            assert not conn.closed
    finally:
        release.set()
        pool.close()


# --------------------------------------------------------------------------- close()
def test_close_closes_idle_and_in_use_on_return(make_pool: MakePool) -> None:
    pool = make_pool(3)
    pool.wait_ready(5)
    with pool.get() as held:
        idle = [conn for conn in pool.opened if conn is not held]
        pool.close()
        assert all(c.fileno() == -1 for c in idle)
        assert held.fileno() != -1  # still usable by its holder
        ping(held)
    assert held.fileno() == -1
    assert pool.stats().open == 0
    with pytest.raises(PoolClosed, match="is closed"), pool.get():
        pass


def test_close_stops_background_greenlets_and_is_idempotent(make_fake: MakeFake) -> None:
    before = live_greenlets()
    pool = make_fake(2, keepalive=0.01)
    pool.wait_ready(5)
    wait_until(lambda: len(pool.pinged) >= 2, what="keepalive at work")
    assert live_greenlets() - before  # the scheduler (and pings) run
    pool.close()
    pool.close()
    assert not live_greenlets() - before  # close() returned: nothing of the pool runs
    assert pool.closed and "closed" in repr(pool)


def test_close_wakes_waiters_with_pool_closed(make_fake: MakeFake) -> None:
    pool = make_fake(1)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            with pool.get():
                pass
        except PoolClosed as e:
            errors.append(e)

    with pool.get():
        waiter = gevent.spawn(wait)
        wait_until(lambda: pool.stats().waiting == 1)
        pool.close()
        waiter.join(5)
    assert len(errors) == 1


def test_pool_is_a_context_manager(server: PingServer) -> None:
    with SocketPool(1, address=server.address) as pool:
        pool.wait_ready(5)
    assert pool.closed and pool.stats().open == 0


def test_close_leaks_no_socket(server: PingServer) -> None:
    before = open_fds()
    pool = SocketPool(5, address=server.address)
    pool.wait_ready(5)
    with pool.get():
        pass
    pool.close()
    wait_until(lambda: server.active == 0, what="the server to see every connection closed")
    assert open_fds() == before


# --------------------------------------------------------------------------- the size invariant
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


# --------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"size": 0}, ValueError, "size"),
        ({"size": "10"}, TypeError, "size"),
        ({"size": True}, TypeError, "size"),
        ({"size": 1, "keepalive": 0}, ValueError, "keepalive"),
        ({"size": 1, "keepalive": "30"}, TypeError, "keepalive"),
        ({"size": 1, "exc_classes": (ValueError, "x")}, TypeError, "exc_classes"),
        ({"size": 1, "exc_classes": 3}, TypeError, "exc_classes"),
        ({"size": 1, "timeout": -1}, ValueError, "timeout"),
        ({"size": 1, "timeout": float("nan")}, ValueError, "timeout"),
    ],
)
def test_bad_arguments_fail_at_construction(
    kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=name):
        FakePool(**kwargs)


def test_negative_get_timeout_is_rejected(make_fake: MakeFake) -> None:
    pool = make_fake(1)
    with pytest.raises(ValueError, match="timeout"):
        pool.get(timeout=-0.5)


def test_pool_is_generic_in_the_connection_type() -> None:
    class Typed(ConnectionPool[FakeConn]):
        def _new_connection(self) -> FakeConn:
            return FakeConn()

    with Typed(1) as pool, pool.get() as conn:
        assert isinstance(conn, FakeConn)
