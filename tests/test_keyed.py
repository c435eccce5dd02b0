"""PoolMap: a pool per key, caps per key and in total, LRU/idle eviction, stats, close."""

from __future__ import annotations

import gc
import random
import time
import tracemalloc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from gevent import socket

from geventconnpool import (
    ConnectionPool,
    PoolClosed,
    PoolExhausted,
    PoolMap,
    PoolTimeout,
    combine_stats,
)
from geventconnpool.testing import PingServer, ping
from tests.conftest import FakeConn, FakePool, wait_until


class Meter:
    """Counts the sockets the test's pools have open right now, and the most ever open."""

    def __init__(self) -> None:
        self.open = 0
        self.peak = 0
        self.opened = 0

    def up(self) -> None:
        self.open += 1
        self.opened += 1
        self.peak = max(self.peak, self.open)

    def down(self) -> None:
        self.open -= 1


class MeteredPool(ConnectionPool[socket.socket]):
    """TCP sockets to ``address``; every open and close is counted by ``meter``."""

    live: weakref.WeakSet[MeteredPool] = weakref.WeakSet()

    def __init__(self, address: tuple[str, int], meter: Meter, **options: Any) -> None:
        self.address = address
        self.meter = meter
        super().__init__(**options)
        MeteredPool.live.add(self)

    def _new_connection(self) -> socket.socket:
        sock = socket.create_connection(self.address)
        self.meter.up()
        return sock

    def _close_connection(self, conn: socket.socket) -> None:
        conn.close()
        self.meter.down()


@pytest.fixture
def meter() -> Meter:
    return Meter()


@pytest.fixture
def maps() -> Iterator[list[PoolMap[Any, Any]]]:
    made: list[PoolMap[Any, Any]] = []
    yield made
    for m in made:
        m.close()


@pytest.fixture
def make_map(
    server: PingServer, meter: Meter, maps: list[PoolMap[Any, Any]]
) -> Callable[..., PoolMap[Any, socket.socket]]:
    """``make_map(max_size=..., **map_options)``: a PoolMap of MeteredPools to the PING server."""

    def make(max_size: int = 2, **options: Any) -> PoolMap[Any, socket.socket]:
        def factory(key: Any) -> MeteredPool:
            return MeteredPool(server.address, meter, max_size=max_size, min_size=0, name=str(key))

        m: PoolMap[Any, socket.socket] = PoolMap(factory, **options)
        maps.append(m)
        return m

    return make


# -- bookkeeping (no sockets) ---------------------------------------------------------------------


def test_a_pool_per_key_made_on_first_use_and_reused(maps: list[PoolMap[Any, Any]]) -> None:
    made: list[str] = []

    def factory(key: str) -> FakePool:
        made.append(key)
        return FakePool(max_size=2, min_size=0, name=f"fake-{key}")

    m: PoolMap[str, FakeConn] = PoolMap(factory, name="tenants")
    maps.append(m)
    with m.get("a") as c1, m.get("b") as c2:
        assert c1 is not c2
    with m.get("a") as c3:
        assert c3 is c1  # the same pool, its idle connection
    assert made == ["a", "b"]
    assert len(m) == 2 and "a" in m and "c" not in m
    assert m.keys() == ["b", "a"]  # least recently used first
    assert m.pool("a").name == "fake-a"


def test_bad_input_is_refused_at_construction() -> None:
    def factory(key: Any) -> FakePool:
        return FakePool(1)

    with pytest.raises(TypeError, match="factory"):
        PoolMap(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_total"):
        PoolMap(factory, max_total=0)
    with pytest.raises(TypeError, match="max_pools"):
        PoolMap(factory, max_pools="10")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_pool_idle"):
        PoolMap(factory, max_pool_idle=0)
    with pytest.raises(ValueError, match="max_total_waiting needs max_total"):
        PoolMap(factory, max_total_waiting=0)


def test_a_factory_that_returns_no_pool_or_a_prefilled_one_is_an_error(
    maps: list[PoolMap[Any, Any]],
) -> None:
    bad: PoolMap[str, Any] = PoolMap(lambda key: object())  # type: ignore[arg-type,return-value]
    maps.append(bad)
    with pytest.raises(TypeError, match="must return a ConnectionPool"):
        with bad.get("x"):
            pass
    made: list[FakePool] = []

    def prefilled(key: str) -> FakePool:
        made.append(FakePool(max_size=2, min_size=1))
        return made[-1]

    capped: PoolMap[str, FakeConn] = PoolMap(prefilled, max_total=4)
    maps.append(capped)
    with pytest.raises(ValueError, match="min_size=0"):
        capped.pool("x")
    assert made[0].closed  # not leaked


def test_stats_per_key_and_combined(maps: list[PoolMap[Any, Any]]) -> None:
    m: PoolMap[str, FakeConn] = PoolMap(lambda k: FakePool(max_size=3, min_size=0, name=k))
    maps.append(m)
    with m.get("a"), m.get("a"), m.get("b"):
        sa, sb, total = m.stats("a"), m.stats("b"), m.stats()
        assert (sa.in_use, sb.in_use) == (2, 1)
        assert total.in_use == 3 and total.max_size == 6 and total.name == m.name
    assert m.stats().acquired == 3
    with pytest.raises(KeyError, match="no pool for 'zzz'"):
        m.stats("zzz")
    assert "pools=2" in repr(m) and "busy=0" in repr(m)


def test_combine_stats_sums_fields_and_takes_the_max_wait() -> None:
    a, b = FakePool(max_size=2, min_size=0), FakePool(max_size=5, min_size=0)
    try:
        with a.get(), b.get(), b.get():
            both = combine_stats("both", [a.stats(), b.stats()])
        assert (both.in_use, both.max_size, both.name) == (3, 7, "both")
        assert both.acquired == 3 and both.created == 3 and both.available
        assert both.wait_seconds_max == max(a.stats().wait_seconds_max, b.stats().wait_seconds_max)
    finally:
        a.close()
        b.close()


# -- the total cap, on loopback --------------------------------------------------------------------


@pytest.mark.slow  # thousands of keys
def test_total_cap_is_never_exceeded_across_thousands_of_keys(
    make_map: Callable[..., PoolMap[Any, socket.socket]], meter: Meter, server: PingServer
) -> None:
    m = make_map(max_size=3, max_total=25, max_pools=300)
    keys = [f"tenant-{i}" for i in range(3000)]
    done = 0
    server_peak = 0

    def worker(seed: int) -> None:
        nonlocal done, server_peak
        rng = random.Random(seed)
        for _ in range(20):
            with m.get(rng.choice(keys), timeout=10) as sock:
                ping(sock)
                server_peak = max(server_peak, server.active)
                gevent.sleep(0)
            done += 1

    with gevent.Timeout(50):
        gevent.joinall([gevent.spawn(worker, i) for i in range(150)], raise_error=True)
    assert done == 150 * 20
    assert meter.peak <= 25, f"{meter.peak} sockets open at once; max_total=25"
    assert server_peak <= 25
    assert m.total <= 25 and m.stats().acquired == done
    assert meter.opened > 25  # the cap was really under pressure: connections were recycled
    assert len(m) <= 300


def test_idle_connections_of_other_keys_make_room(
    make_map: Callable[..., PoolMap[Any, socket.socket]], meter: Meter
) -> None:
    m = make_map(max_size=2, max_total=4)
    for key in ("a", "b", "c", "d"):  # four keys, each with one idle connection: the cap is full
        with m.get(key) as sock:
            ping(sock)
    with m.get("a") as held:  # "a" is busy: its idle connection must not be taken away
        assert m.total == 4
        started = time.monotonic()
        with m.get("e", timeout=2) as sock:
            ping(sock)
        assert time.monotonic() - started < 1.0
        ping(held)
    assert meter.peak <= 4
    assert "b" not in m  # the least recently used idle pool was closed to make room
    assert m.evicted >= 1


def test_a_busy_key_gives_up_its_idle_surplus(
    make_map: Callable[..., PoolMap[Any, socket.socket]], meter: Meter
) -> None:
    m = make_map(max_size=3, max_total=3)
    with m.get("a"), m.get("a"), m.get("a"):
        pass
    assert m.stats("a").idle == 3
    with m.get("a") as held:  # "a" stays in use, with two idle connections
        with m.get("b", timeout=2) as sock:
            ping(sock)
        ping(held)
        assert "a" in m and m.stats("a").idle <= 1
    assert meter.peak <= 3


def test_waiting_for_room_times_out_like_get(
    make_map: Callable[..., PoolMap[Any, socket.socket]],
) -> None:
    m = make_map(max_size=2, max_total=1)
    with m.get("a"):
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            with m.get("b", timeout=0.2):
                pass
        assert 0.15 < time.monotonic() - started < 1.5
    with m.get("b", timeout=2) as sock:  # room again once "a" is idle
        ping(sock)


def test_max_total_waiting_refuses_at_once(
    make_map: Callable[..., PoolMap[Any, socket.socket]],
) -> None:
    m = make_map(max_size=2, max_total=1, max_total_waiting=0)
    with m.get("a"):
        with pytest.raises(PoolExhausted, match="max_total_waiting=0"):
            with m.get("b", timeout=5):
                pass
        assert m.stats().exhausted == 1
    with m.get("b", timeout=2) as sock:
        ping(sock)


def test_a_released_connection_wakes_a_waiter_of_another_key(
    make_map: Callable[..., PoolMap[Any, socket.socket]], meter: Meter
) -> None:
    m = make_map(max_size=1, max_total=1)
    got = gevent.event.Event()

    def other() -> None:
        with m.get("b", timeout=5) as sock:
            ping(sock)
            got.set()

    with m.get("a") as sock:
        g = gevent.spawn(other)
        wait_until(lambda: "waiting_for_room=1" in repr(m), what="b waits for room")
        ping(sock)
    assert got.wait(5)
    g.join()
    assert meter.peak == 1


# -- eviction ------------------------------------------------------------------------------------


def test_lru_eviction_closes_a_pool_without_losing_its_held_connection(
    make_map: Callable[..., PoolMap[Any, socket.socket]], meter: Meter, server: PingServer
) -> None:
    m = make_map(max_size=2, max_pools=2)
    with m.get("old") as held:
        old = m.pool("old")
        with m.get("b"), m.get("c"):  # a third key: "old" is the least recently used
            pass
        assert "old" not in m and old.closed
        ping(held)  # still ours, still working
        assert "retiring=1" in repr(m)
    assert old.stats().discarded.closed == 1  # closed when it came back
    assert "retiring=0" in repr(m)
    assert m.stats().acquired == 3  # its counters stay in the combined view
    wait_until(lambda: server.active == meter.open, what="server sees the closed socket")


def test_eviction_skips_a_pool_with_callers_waiting(maps: list[PoolMap[Any, Any]]) -> None:
    gate = gevent.event.Event()

    def factory(key: str) -> FakePool:
        pool = FakePool(max_size=1, min_size=0)
        if key == "slow":
            pool.gate = gate
        return pool

    m: PoolMap[str, FakeConn] = PoolMap(factory, max_pools=1)
    maps.append(m)
    waiter = gevent.spawn(lambda: m.get("slow", timeout=5).__enter__())
    wait_until(lambda: "slow" in m and m.stats("slow").waiting == 1, what="a waiter")
    with m.get("other"):
        assert "slow" in m  # not evicted under its waiter
    gate.set()
    assert isinstance(waiter.get(timeout=5), FakeConn)


def test_pools_idle_past_max_pool_idle_are_closed(
    make_map: Callable[..., PoolMap[Any, socket.socket]], meter: Meter
) -> None:
    m = make_map(max_pool_idle=0.1)
    with m.get("a") as sock:
        ping(sock)
    pool = m.pool("a")
    wait_until(lambda: "a" not in m and pool.closed and meter.open == 0, what="pool closed")
    assert m.evicted == 1


@pytest.mark.slow  # 2,700 pools under tracemalloc
def test_memory_is_bounded_by_the_live_pools(
    make_map: Callable[..., PoolMap[Any, socket.socket]], server: PingServer, meter: Meter
) -> None:
    m = make_map(max_size=1, max_pools=50)

    def use(keys: range) -> int:
        for i in keys:
            with m.get(i) as sock:
                ping(sock)
        wait_until(lambda: server.active == meter.open, what="the server saw the closes")
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    use(range(300))  # warm up: allocator pools, caches
    tracemalloc.start()
    try:
        first = use(range(300, 1500))
        second = use(range(1500, 2700))
    finally:
        tracemalloc.stop()
    live = [p for p in MeteredPool.live if not p.closed]
    assert len(live) <= 50 and len(m) <= 50
    assert len(MeteredPool.live) <= 60  # closed pools are freed, not kept by the map
    # 1200 more keys (1200 more pools made and closed) cost nothing that stays: < 50 bytes each
    assert second - first < 60_000, f"{second - first} bytes kept by 1200 more keys"


def test_close_closes_every_pool(make_map: Callable[..., PoolMap[Any, socket.socket]]) -> None:
    m = make_map()
    pools = [m.pool(k) for k in range(5)]
    with m.get(0) as sock:
        ping(sock)
    m.close()
    assert all(p.closed for p in pools) and m.closed and len(m) == 0
    with pytest.raises(PoolClosed, match="is closed"):
        with m.get(1):
            pass
    assert "closed" in repr(m)
    m.close()  # idempotent


def test_a_connection_that_turns_idle_unseen_still_makes_room(
    maps: list[PoolMap[Any, Any]],
) -> None:
    gate = gevent.event.Event()

    def factory(key: str) -> FakePool:
        pool = FakePool(max_size=1, min_size=0)
        if key == "a":
            pool.gate = gate  # a's connect hangs until the gate opens
        return pool

    m: PoolMap[str, FakeConn] = PoolMap(factory, max_total=1)
    maps.append(m)
    with pytest.raises(PoolTimeout):
        with m.get("a", timeout=0.05):  # gives up; a's connect (holding the token) goes on
            pass
    waiter = gevent.spawn(lambda: m.get("b", timeout=3).__enter__())
    wait_until(lambda: "waiting_for_room=1" in repr(m), what="b waits for room")
    gate.set()  # a's connection arrives, idle, with nobody returning anything through the map
    assert isinstance(waiter.get(timeout=3), FakeConn)
    assert "a" not in m  # its idle connection was closed to make room


def test_the_reaper_and_the_hooks_do_not_keep_the_map_alive() -> None:
    made: list[FakePool] = []

    def factory(key: str) -> FakePool:
        made.append(FakePool(max_size=1, min_size=0))
        return made[-1]

    m: PoolMap[str, FakeConn] = PoolMap(factory, max_total=2, max_pool_idle=0.05)
    with m.get("a"):
        pass
    ref = weakref.ref(m)
    del m
    gc.collect()
    assert ref() is None
    with made[0].get(timeout=1):  # the pool still works without its map (no cap any more)
        pass
    made[0].close()


def test_a_leaked_get_context_leaves_no_busy_caller(maps: list[PoolMap[Any, Any]]) -> None:
    m: PoolMap[str, FakeConn] = PoolMap(lambda key: FakePool(max_size=1, min_size=0))
    maps.append(m)
    m.get("a").__enter__()  # entered, never exited, dropped at once
    gc.collect()
    wait_until(lambda: "busy=0" in repr(m), what="the leaked caller forgotten")
    with m.get("a", timeout=1):  # and its connection is back in service
        pass
