"""pool.dump(): every connection and waiter, as data and as text, for an operator."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from gevent.event import Event

from geventconnpool import ConnectionInfo, ConnectionPool, PoolDump
from geventconnpool._records import greenlet_label
from geventconnpool.testing import PingServer, ping

from .conftest import SocketPool, wait_until

MakePool = Callable[..., SocketPool]


def _elapse(seconds: float) -> None:
    """Let ``seconds`` of monotonic time pass (ages and waits are measured in it)."""
    end = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() >= end, what="time to pass")


def busy_in_a_request(pool: ConnectionPool[Any], release: Event) -> None:
    with pool.get(timeout=5) as conn:
        ping(conn)
        release.wait()


@pytest.fixture
def holding(pools: list[Any]) -> Iterator[Callable[[ConnectionPool[Any]], gevent.Greenlet]]:
    """``holding(pool)``: a greenlet that holds one connection until the test ends."""
    release = Event()
    made: list[gevent.Greenlet] = []

    def hold(pool: ConnectionPool[Any]) -> gevent.Greenlet:
        before = pool.stats().in_use
        g = gevent.spawn(busy_in_a_request, pool, release)
        made.append(g)
        wait_until(lambda: pool.stats().in_use == before + 1, what="the holder")
        return g

    yield hold
    release.set()
    gevent.joinall(made, timeout=5)


def _by_state(dump: PoolDump) -> dict[str, list[ConnectionInfo]]:
    states: dict[str, list[ConnectionInfo]] = {}
    for info in dump.connections:
        states.setdefault(info.state, []).append(info)
    return states


def test_states_of_every_connection(make_pool: MakePool, holding: Any) -> None:
    pool = make_pool(min_size=3, max_size=4)
    pool.wait_ready(5)
    holding(pool)
    pool.gate = Event()  # the next connect waits for it
    pool.resize(min_size=4)
    wait_until(lambda: len(pool.opened) == 4, what="a connect in flight, held at the gate")
    dump = pool.dump()
    assert Counter(c.state for c in dump.connections) == {"idle": 2, "in_use": 1, "connecting": 1}
    assert dump.stats.idle == 2 and dump.stats.in_use == 1 and dump.stats.connecting == 1
    open_ids = [c.id for c in dump.connections if c.state != "connecting"]
    assert len(set(open_ids)) == 3 == len(pool.opened) - 1
    pool.gate.set()


def test_in_use_shows_holder_how_long_and_where_it_is(make_pool: MakePool, holding: Any) -> None:
    pool = make_pool(2)
    pool.wait_ready(5)
    holder = holding(pool)
    _elapse(0.05)
    [info] = _by_state(pool.dump())["in_use"]
    assert info.holder == greenlet_label(holder)
    assert info.held_for is not None and info.held_for >= 0.05
    assert info.holder_stack and any("busy_in_a_request" in line for line in info.holder_stack)
    assert info.uses == 1 and info.idle_for is None
    assert info.taken_at is None  # recorded only with leak_timeout


def test_in_use_shows_where_it_was_taken_with_leak_timeout(
    make_pool: MakePool, holding: Any
) -> None:
    pool = make_pool(1, leak_timeout=60)
    holding(pool)
    [info] = pool.dump().connections
    assert info.taken_at and any("busy_in_a_request" in line for line in info.taken_at)


def test_ages_and_idle_times_grow_and_use_resets_idle(make_pool: MakePool) -> None:
    pool = make_pool(1)
    pool.wait_ready(5)
    [before] = pool.dump().connections
    _elapse(0.05)
    [later] = pool.dump().connections
    assert later.id == before.id and later.state == "idle"
    assert later.age - before.age >= 0.05
    assert later.idle_for is not None and before.idle_for is not None
    assert later.idle_for - before.idle_for >= 0.05
    with pool.get(timeout=5) as conn:
        ping(conn)
    [used] = pool.dump().connections
    assert used.uses == 1 and used.idle_for is not None and used.idle_for < later.idle_for
    assert used.age >= later.age


def test_waiters_and_how_long_they_have_waited(make_pool: MakePool, holding: Any) -> None:
    pool = make_pool(1)
    holding(pool)
    waiter = gevent.spawn(lambda: pool.get(timeout=5).__enter__())
    wait_until(lambda: pool.stats().waiting == 1, what="the waiter")
    _elapse(0.05)
    dump = pool.dump()
    [info] = dump.waiters
    assert info.greenlet == greenlet_label(waiter) and info.waited_for >= 0.05
    assert dump.stats.waiting == 1
    waiter.kill()


def test_keepalive_state_while_pinging(make_pool: MakePool, server: PingServer) -> None:
    pool = make_pool(2, keepalive=0.05, keepalive_jitter=0)
    pool.wait_ready(5)
    server.delay = 0.5  # pings now take long enough to be seen
    wait_until(lambda: pool.stats().checking == 1, what="a keepalive ping in flight")
    states = Counter(c.state for c in pool.dump().connections)
    assert states == {"keepalive": 1, "idle": 1}
    server.delay = 0.0


def test_str_is_a_readable_report(make_pool: MakePool, holding: Any) -> None:
    pool = make_pool(min_size=2, max_size=3, name="orders", leak_timeout=60)
    pool.wait_ready(5)
    holder = holding(pool)
    holding(pool)
    pool.gate = Event()  # the next connect waits for it
    waiter = gevent.spawn(lambda: pool.get(timeout=5).__enter__())
    wait_until(lambda: pool.stats().waiting == 1, what="the waiter")
    text = str(pool.dump())
    lines = text.splitlines()
    assert lines[0].startswith("pool 'orders': open=3 idle=0 in_use=2 connecting=1 waiting=1")
    assert sum(" in_use " in line for line in lines) == 2
    assert sum(" connecting " in line for line in lines) == 1
    assert f"holder={greenlet_label(holder)}" in text
    assert "taken at:" in text and "holder now at:" in text and "busy_in_a_request" in text
    assert f"waiter {greenlet_label(waiter)} waiting" in text
    waiter.kill()
    pool.gate.set()
