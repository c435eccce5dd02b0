"""pool.invalidate(): every connection is replaced (failover, credential rotation)."""

from __future__ import annotations

from collections.abc import Callable

import gevent
from gevent import socket
from gevent.event import Event

from geventconnpool.testing import PingServer, ping

from .conftest import SocketPool, wait_until

MakePool = Callable[..., SocketPool]


def _local(conn: socket.socket) -> tuple[str, int]:
    return conn.getsockname()[:2]  # type: ignore[no-any-return]


def _open_on_server(server: PingServer) -> set[tuple[str, int]]:
    return set(server.peers)


def test_idle_connections_close_at_once(make_pool: MakePool, server: PingServer) -> None:
    pool = make_pool(3)
    pool.wait_ready(5)
    old = list(pool.opened)  # all three, idle
    old_peers = {_local(c) for c in old}
    pool.invalidate()
    assert all(conn.fileno() == -1 for conn in old)  # closed before invalidate() returned
    assert pool.stats().discarded.invalidated == 3
    wait_until(lambda: not old_peers & _open_on_server(server), what="server sees them closed")


def test_fresh_connections_are_made_in_the_background(
    make_pool: MakePool, server: PingServer
) -> None:
    pool = make_pool(3)
    pool.wait_ready(5)
    old = {_local(conn) for conn in pool.opened}
    pool.invalidate()
    wait_until(lambda: pool.stats().idle == 3, what="the refill")
    new = {_local(conn) for conn in pool.opened[3:]}
    assert not new & old
    wait_until(lambda: server.accepted == 6, what="the server accepting the 3 new connects")
    wait_until(lambda: _open_on_server(server) == new, what="only the new ones open on the server")


def test_in_use_connection_works_until_returned_then_closes(
    make_pool: MakePool, server: PingServer
) -> None:
    pool = make_pool(2)
    pool.wait_ready(5)
    with pool.get(timeout=5) as conn:
        pool.invalidate()
        ping(conn)  # the holder is not disturbed
        assert conn.fileno() != -1
        assert pool.stats().discarded.invalidated == 1  # only the idle one so far
    assert conn.fileno() == -1
    assert pool.stats().discarded.invalidated == 2
    with pool.get(timeout=5) as fresh:
        assert fresh is not conn
        ping(fresh)


def test_connects_in_flight_are_discarded_on_arrival(
    make_pool: MakePool, server: PingServer
) -> None:
    pool = make_pool(2, max_connecting=2, gate=Event())
    wait_until(lambda: server.accepted == 2, what="two TCP connects in flight")
    assert pool.stats().connecting == 2
    pool.invalidate()  # the old credentials were used for these two
    late = list(pool.opened)
    pool.gate.set()
    wait_until(lambda: pool.stats().idle == 2, what="the replacements")
    assert all(conn.fileno() == -1 for conn in late)  # arrived, and were discarded
    assert pool.stats().discarded.invalidated == 2
    with pool.get() as first, pool.get() as second:
        assert not {first, second} & set(late)
    assert server.accepted == 4


def test_waiter_gets_a_connection_made_after_invalidate(
    make_pool: MakePool, server: PingServer
) -> None:
    pool = make_pool(1, gate=Event())
    wait_until(lambda: server.accepted == 1, what="the TCP connect in flight")
    got: list[socket.socket] = []

    def wait_for_one() -> None:
        with pool.get(timeout=5) as conn:
            ping(conn)
            got.append(conn)

    waiter = gevent.spawn(wait_for_one)
    wait_until(lambda: pool.stats().waiting == 1, what="the waiter")
    pool.invalidate()
    stale = pool.opened[0]
    pool.gate.set()
    waiter.join(5)
    assert waiter.successful()
    assert got and got[0] is not stale and stale.fileno() == -1


def test_stats_count_invalidated(make_pool: MakePool) -> None:
    pool = make_pool(2)
    pool.wait_ready(5)
    pool.invalidate()
    wait_until(lambda: pool.stats().idle == 2, what="the refill")
    pool.invalidate()
    stats = pool.stats()
    assert stats.invalidated == stats.discarded.invalidated == 4
    assert stats.discarded.total == 4
