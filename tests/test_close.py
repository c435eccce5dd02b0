"""``close()`` ends a pool: idle connections at once, in-use ones on return or after its
``timeout``; waiters get ``PoolClosed``, background greenlets stop, no socket leaks, and an
unreachable backend does not hold it up.
"""

from __future__ import annotations

from collections.abc import Callable

import gevent
import pytest
from gevent.event import Event

from geventconnpool import PoolClosed
from geventconnpool.testing import PingServer, free_port, open_fds, ping

from .conftest import FakePool, SocketPool, hold, live_greenlets, wait_until

MakePool = Callable[..., SocketPool]
MakeFake = Callable[..., FakePool]


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


def test_waiters_get_pool_closed(make_fake: MakeFake) -> None:
    pool = make_fake(1)
    with pool.get():
        waiter = gevent.spawn(lambda: pool.get().__enter__())
        wait_until(lambda: pool.stats().waiting == 1)
        pool.close()
        waiter.join(5)
        assert isinstance(waiter.exception, PoolClosed)


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


def test_unreachable_backend_does_not_stop_a_pool_from_closing() -> None:
    pool = SocketPool(2, address=("127.0.0.1", free_port()), reconnect_delay=0.001)
    wait_until(lambda: pool.stats().connect_failures >= 2)
    pool.close()
    assert pool.stats().open == 0
