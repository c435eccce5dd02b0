"""How a ``with pool.get()`` block ends decides its connection's fate: returned after any
other exception, discarded and replaced after an ``exc_classes`` error, a timeout, a kill or a
``KeyboardInterrupt``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
import pytest
from gevent.event import Event

from geventconnpool.testing import ping

from .conftest import FakePool, SocketPool, wait_until

MakePool = Callable[..., SocketPool]
MakeFake = Callable[..., FakePool]


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
