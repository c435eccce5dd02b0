"""Disconnect storms: a server restart costs callers one error, not one per pooled connection.

Most pools here use ``check_idle_after=None`` (idle connections are never checked for age), so
that only the suspect marking after a disconnect can spare the callers the dead connections.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
import pytest
from gevent import socket
from gevent.event import Event

from geventconnpool import ConnectionPool
from geventconnpool.testing import PingServer, ping

from .conftest import SocketPool, wait_until, warmest


class CountingPool(SocketPool):
    """Counts the checkout checks (``_check``) the pool runs; fills without the default 0.1 s
    between two connects (ten would take 0.9 s), which nothing here is about."""

    SPAWN_FREQUENCY = 0.005

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.checks = 0
        super().__init__(*args, **kwargs)

    def _check(self, conn: socket.socket) -> bool:
        self.checks += 1
        return super()._check(conn)


MakeCounting = Callable[..., CountingPool]


@pytest.fixture
def make_counting(server: PingServer, pools: list[ConnectionPool[Any]]) -> MakeCounting:
    def make(*args: Any, **kwargs: Any) -> CountingPool:
        kwargs.setdefault("check_idle_after", None)
        pool = CountingPool(*args, address=server.address, **kwargs)
        pools.append(pool)
        return pool

    return make


def _requests(pool: ConnectionPool[Any], n: int) -> int:
    """Make ``n`` sequential requests (a PING each); return how many failed."""
    errors = 0
    for _ in range(n):
        try:
            with pool.get(timeout=5) as conn:
                ping(conn)
        except OSError:
            errors += 1
    return errors


def _hold_and_ping(pool: ConnectionPool[Any], n: int) -> int:
    """Take ``n`` connections at once and ping each; return how many distinct ones."""
    held = [pool.get(timeout=5) for _ in range(n)]
    conns = [ctx.__enter__() for ctx in held]
    for conn in conns:
        ping(conn)
    for ctx in held:
        ctx.__exit__(None, None, None)
    return len({id(c) for c in conns})


def test_dropped_connections_cost_one_error(
    make_counting: MakeCounting, server: PingServer
) -> None:
    pool = make_counting(10)
    pool.wait_ready(5)
    assert server.drop_all() == 10
    assert _requests(pool, 10) == 1
    stats = pool.stats()
    assert stats.discarded.error == 1 and stats.discarded.check == 9


def test_server_restart_costs_one_error(make_counting: MakeCounting, server: PingServer) -> None:
    pool = make_counting(10)
    pool.wait_ready(5)
    server.restart()
    assert _requests(pool, 10) == 1
    wait_until(lambda: pool.stats().idle == 10, what="the refill")
    assert _requests(pool, 10) == 0


def test_default_check_idle_after_also_costs_one_error(
    make_counting: MakeCounting, server: PingServer
) -> None:
    pool = make_counting(10, check_idle_after=60)  # all of them "fresh": handed out unchecked
    pool.wait_ready(5)
    server.drop_all()
    assert _requests(pool, 10) == 1


def test_connections_in_use_during_the_restart_are_checked_on_return(
    make_counting: MakeCounting, server: PingServer
) -> None:
    pool = make_counting(10)
    pool.wait_ready(5)
    held = [pool.get(timeout=5) for _ in range(10)]
    conns = [ctx.__enter__() for ctx in held]  # newest first (LIFO)
    for ctx in [*held[:4:-1], held[0]]:
        ctx.__exit__(None, None, None)  # the five oldest idle, then the newest, warmest
    assert warmest(pool) is conns[0]
    server.drop_all()  # while four are in use
    assert _requests(pool, 1) == 1  # the newest fails: every other one becomes suspect
    for ctx in held[1:5]:
        ctx.__exit__(None, None, None)  # returned without being used: not yet known dead
    assert _requests(pool, 10) == 0


def test_a_disconnect_makes_older_connections_checked_not_discarded(
    make_counting: MakeCounting,
) -> None:
    pool = make_counting(5)
    pool.wait_ready(5)
    with pytest.raises(ConnectionResetError), pool.get(timeout=5):
        raise ConnectionResetError("this one only")  # the server is fine
    assert _hold_and_ping(pool, 4) == 4
    assert pool.checks == 4 and pool.stats().discarded.check == 0
    assert _hold_and_ping(pool, 4) == 4
    assert pool.checks == 4  # checked once, then trusted again


def test_a_bad_query_makes_nobody_suspect(make_counting: MakeCounting) -> None:
    pool = make_counting(5)
    pool.wait_ready(5)
    with pytest.raises(ValueError), pool.get(timeout=5):
        raise ValueError("bad query")  # not a disconnect
    assert _requests(pool, 5) == 0
    assert pool.checks == 0


def test_fifo_pool_restart_costs_one_error(make_counting: MakeCounting, server: PingServer) -> None:
    pool = make_counting(10, lifo=False)
    pool.wait_ready(5)
    server.drop_all()
    assert _requests(pool, 10) <= 1


def test_restart_after_concurrent_use_costs_one_error(
    make_counting: MakeCounting, server: PingServer
) -> None:
    pool = make_counting(10)
    pool.wait_ready(5)
    first, second = pool.get(timeout=5), pool.get(timeout=5)
    newest, older = first.__enter__(), second.__enter__()
    first.__exit__(None, None, None)  # returned in the other order: the older one is warmest
    second.__exit__(None, None, None)
    with pool.get(timeout=5) as warmest, pool.get(timeout=5) as next_warmest:
        assert warmest is older and next_warmest is newest
    server.drop_all()
    assert _requests(pool, 10) <= 1


def test_concurrent_callers_after_a_restart(
    make_counting: MakeCounting, server: PingServer
) -> None:
    """Ten greenlets at once: the dead connections are weeded out, most callers see no error."""
    pool = make_counting(10)
    pool.wait_ready(5)
    server.drop_all()
    assert _requests(pool, 1) == 1
    go = Event()
    errors: list[int] = []

    def caller() -> None:
        go.wait()
        errors.append(_requests(pool, 3))

    callers = [gevent.spawn(caller) for _ in range(10)]
    go.set()
    gevent.joinall(callers, timeout=10, raise_error=True)
    wait_until(lambda: len(errors) == 10, what="all callers")
    assert sum(errors) == 0
