"""PoolMap's room under ``max_total``: waiting for room is waiting, never a failed connect.

A caller whose key needs a new connection while ``max_total`` sockets are open waits for a token
in its own greenlet, under its own ``get()`` deadline (issue 19, defect 3): the key's pool sees
no connect until the token is there, so no ``connect_timeout`` runs out, no failure is counted,
no backoff starts and no "connect failed" line is logged.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from gevent.event import Event

from geventconnpool import PoolExhausted, PoolMap, PoolTimeout
from tests.conftest import FakeConn, FakePool, wait_until

#: Far shorter than the room waits below: on today's code the token wait ran under it.
CONNECT_TIMEOUT = 0.05


@pytest.fixture
def maps() -> Iterator[list[PoolMap[Any, Any]]]:
    made: list[PoolMap[Any, Any]] = []
    yield made
    for m in made:
        m.close()


def fake_map(maps: list[PoolMap[Any, Any]], **options: Any) -> PoolMap[str, FakeConn]:
    """A map of one-connection FakePools with a short connect_timeout and fail_fast on."""

    def factory(key: str) -> FakePool:
        return FakePool(
            max_size=1,
            min_size=0,
            connect_timeout=CONNECT_TIMEOUT,
            fail_fast=True,
            fail_fast_after=1,
            name=key,
        )

    m: PoolMap[str, FakeConn] = PoolMap(factory, **options)
    maps.append(m)
    return m


def waiting_for_room(m: PoolMap[Any, Any], n: int) -> None:
    wait_until(lambda: f"waiting_for_room={n}" in repr(m), what=f"{n} caller(s) wait for room")


def test_waiting_for_room_past_connect_timeout_is_no_failure(
    maps: list[PoolMap[Any, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    m = fake_map(maps, max_total=1)
    got = Event()

    def other() -> FakeConn:
        with m.get("b", timeout=10) as conn:
            got.set()
            return conn

    with caplog.at_level(logging.DEBUG, logger="geventconnpool"):
        with m.get("a"):
            g = gevent.spawn(other)
            waiting_for_room(m, 1)
            # Timers fire in deadline order: a connect_timeout started for b's room wait (as on
            # today's code) has surely run out when this longer sleep ends.
            gevent.sleep(CONNECT_TIMEOUT * 6)
            assert not g.dead, f"b's get() ended while it should wait for room: {g.exception!r}"
        assert isinstance(g.get(timeout=5), FakeConn)
    stats = m.stats("b")
    assert stats.connect_failures == 0 and stats.available
    assert not [r for r in caplog.records if "connect failed" in r.getMessage()]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_room_wait_ends_at_the_callers_deadline_as_pool_timeout(
    maps: list[PoolMap[Any, Any]],
) -> None:
    m = fake_map(maps, max_total=1)
    with m.get("a"):
        started = time.monotonic()
        with pytest.raises(PoolTimeout, match="max_total=1") as info:
            with m.get("b", timeout=CONNECT_TIMEOUT * 6):
                pass
        assert time.monotonic() - started >= CONNECT_TIMEOUT * 6 * 0.9
        assert "waiting_for_room=0" in repr(m)  # the timed-out caller left the line
    assert not isinstance(info.value.__cause__, TimeoutError)
    stats = m.stats("b")
    assert stats.connect_failures == 0 and stats.available
    assert m.stats().timeouts == 1  # the map counts its own room timeouts
    with m.get("b", timeout=5):  # no backoff: b connects at once now that there is room
        pass


def test_a_killed_room_waiter_gives_its_place_back(maps: list[PoolMap[Any, Any]]) -> None:
    m = fake_map(maps, max_total=1)
    with m.get("a"):
        g = gevent.spawn(lambda: m.get("b", timeout=10).__enter__())
        waiting_for_room(m, 1)
        g.kill()
        waiting_for_room(m, 0)
    assert m.total == 1  # a's idle connection; no token lost to the killed caller
    with m.get("c", timeout=5):  # makes room by closing a's idle connection
        assert m.total == 1
    assert m.stats("c").connect_failures == 0


def test_max_total_waiting_counts_callers_waiting_for_room(
    maps: list[PoolMap[Any, Any]],
) -> None:
    m = fake_map(maps, max_total=1, max_total_waiting=1)
    with m.get("a"):
        g = gevent.spawn(lambda: m.get("b", timeout=10).__enter__())
        waiting_for_room(m, 1)
        with pytest.raises(PoolExhausted, match="max_total_waiting=1"):
            with m.get("c", timeout=10):
                pass
        g.kill()
    assert m.stats().exhausted == 1


# -- hostile callers -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_killed_and_timed_out_callers_leave_tokens_and_counts_whole(
    maps: list[PoolMap[Any, Any]], seed: int
) -> None:
    """Callers killed anywhere (in line, entering, evicting, holding) or timing out, with LRU,
    idle and room eviction all running: every token is free, backs a socket or is spare for a
    waiting caller at every step; afterwards nobody is counted busy, nothing is spare, and no
    caller of a live key was handed PoolClosed."""
    rng = random.Random(seed)
    sizes = rng.choice([1, 2, 3])
    m: PoolMap[str, FakeConn] = PoolMap(
        lambda key: FakePool(max_size=sizes, min_size=0),
        max_total=rng.choice([1, 3, 10]),
        max_total_waiting=rng.choice([None, 5, 40]),
        max_pool_idle=rng.choice([None, 0.01]),
        max_pools=rng.choice([None, 5, 50]),
    )
    maps.append(m)
    keys = [f"k{i}" for i in range(rng.choice([3, 30, 300]))]
    unexpected: list[BaseException] = []

    def worker(r: random.Random) -> None:
        for _ in range(30):
            try:
                with m.get(r.choice(keys), timeout=r.choice([0, 0.001, 0.05, 0.5])):
                    gevent.sleep(r.choice([0, 0, 0.001]))
            except (PoolTimeout, PoolExhausted):
                pass
            except Exception as exc:
                unexpected.append(exc)

    workers = [gevent.spawn(worker, random.Random(rng.random())) for _ in range(100)]
    for _ in range(20):
        gevent.sleep(0.002)
        rng.choice(workers).kill(block=False)
        conserved(m)
    gevent.joinall(workers, timeout=30)
    assert all(g.dead for g in workers) and not unexpected, unexpected[:3]
    wait_until(lambda: not m._retiring, what="evicted pools closed")
    conserved(m)
    ledgers = [e.ledger for e in m._entries.values()]
    assert all(led.busy == 0 and led.waiting == 0 and led.spare == 0 for led in ledgers)
    assert m._tokens is not None and not m._tokens.line


def conserved(m: PoolMap[Any, Any]) -> None:
    tokens = m._tokens
    assert tokens is not None
    entries = m._all_entries()
    held = sum(e.ledger.held for e in entries)
    spare = sum(e.ledger.spare for e in entries)
    assert tokens.free + held + spare == tokens.cap, (tokens.free, held, spare)
