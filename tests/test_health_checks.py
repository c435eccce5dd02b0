"""Only healthy connections are handed out: keepalive pings idle ones (never making a
caller wait), expired ones are closed and replaced (never while in use), and the checkout check
finds dead, reset or chatty sockets without consuming anything from healthy ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from gevent.event import Event

from geventconnpool.testing import FaultProxy, PingServer, ping

from .conftest import FakeConn, FakePool, SocketPool, wait_until

MakePool = Callable[..., SocketPool]
MakeFake = Callable[..., FakePool]


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
