"""A failed connect is retried with backoff and its slot is never lost: ``None`` from
``_new_connection`` is a failure, ``connect_timeout`` bounds each attempt, one attempt is in
flight per missing connection, and ``fail_fast`` raises ``PoolUnavailable`` while the backend
is down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import gevent
import pytest
from gevent import socket
from gevent.event import Event

from geventconnpool import PoolTimeout, PoolUnavailable
from geventconnpool.testing import FaultProxy, PingServer, ping

from .conftest import FakeConn, FakePool, SocketPool, wait_until

MakePool = Callable[..., SocketPool]
MakeFake = Callable[..., FakePool]


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
