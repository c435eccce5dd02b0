"""Memory and tokens stay bounded in PoolMap and BalancedPool under 10^4+ operations.

Measured with tracemalloc during the load (after the first half) and after it, on fake
connections (no sockets): PoolMap making and dropping 10^4+ pools (LRU eviction, idle reaping,
room making under ``max_total``), with the ``max_total`` tokens conserved (free + held + spare
is always the cap, nothing left spare when nobody waits); BalancedPool through 10^4
re-resolutions that replace its endpoints, and 10^4 checkouts.
"""

from __future__ import annotations

import gc
import random
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest

from geventconnpool import BalancedPool, PoolMap, PoolTimeout
from geventconnpool.balanced import Endpoint
from tests.conftest import FakeConn, FakePool, wait_until

#: Bytes that may stay after 10^4 operations: well under one byte per operation kept for good.
SLACK = 64_000


@pytest.fixture
def maps() -> Iterator[list[PoolMap[Any, Any]]]:
    made: list[PoolMap[Any, Any]] = []
    yield made
    for m in made:
        m.close()


def fake_map(maps: list[PoolMap[Any, Any]], **options: Any) -> PoolMap[Any, FakeConn]:
    m: PoolMap[Any, FakeConn] = PoolMap(lambda key: FakePool(max_size=2, min_size=0), **options)
    maps.append(m)
    return m


def measured(phases: list[Callable[[], None]]) -> list[int]:
    """Run each phase under tracemalloc; the traced bytes after each (after a gc)."""
    sizes = []
    tracemalloc.start()
    try:
        for phase in phases:
            phase()
            gc.collect()
            sizes.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    return sizes


def tokens_conserved(m: PoolMap[Any, Any]) -> None:
    """Every max_total token is free, backs a socket, or is spare for a waiting caller."""
    tokens = m._tokens
    assert tokens is not None
    entries = m._all_entries()
    held = sum(e.ledger.held for e in entries)
    spare = sum(e.ledger.spare for e in entries)
    assert tokens.free + held + spare == tokens.cap, (tokens.free, held, spare)
    assert held == m.total <= tokens.cap


def settled(m: PoolMap[Any, Any]) -> None:
    """Nobody in get(): no caller waits, no token spare, nothing retiring, tokens all there."""
    wait_until(lambda: not m._retiring, what="evicted pools closed (their closers run)")
    tokens_conserved(m)
    assert m._tokens is not None and not m._tokens.line
    assert all(e.ledger.spare == 0 and e.ledger.busy == 0 for e in m._entries.values())


def test_ten_thousand_keys_through_lru_eviction_keep_pools_and_tokens_bounded(
    maps: list[PoolMap[Any, Any]],
) -> None:
    m = fake_map(maps, max_total=20, max_pools=50, max_pool_idle=None)
    keys = iter(range(10**6))

    def use(n: int) -> Callable[[], None]:
        def phase() -> None:
            for _ in range(n):
                with m.get(next(keys), timeout=5):
                    pass
            assert len(m) <= 50 and m.total <= 20
            settled(m)

        return phase

    use(1000)()  # warm up: allocator pools, caches
    during, after = measured([use(5000), use(5000)])
    assert m.evicted >= 11_000 - 50
    assert after - during < SLACK, f"{after - during} bytes kept by 5,000 more keys"


def test_ten_thousand_keys_reaped_when_idle_leave_nothing(maps: list[PoolMap[Any, Any]]) -> None:
    m = fake_map(maps, max_total=8, max_pool_idle=0.01)
    keys = iter(range(10**6))

    def use(n: int) -> Callable[[], None]:
        def phase() -> None:
            for _ in range(n):
                with m.get(next(keys), timeout=5):
                    pass
            wait_until(lambda: len(m) == 0, what="the reaper closed every idle pool")
            settled(m)

        return phase

    use(1000)()
    during, after = measured([use(5000), use(5000)])
    assert m.evicted >= 11_000
    assert after - during < SLACK, f"{after - during} bytes kept by 5,000 more reaped keys"
    assert m.total == 0 and m._tokens is not None and m._tokens.free == 8


def test_tokens_are_conserved_under_contention_timeouts_and_kills(
    maps: list[PoolMap[Any, Any]],
) -> None:
    m = fake_map(maps, max_total=10, max_total_waiting=40, max_pool_idle=0.05)
    rng = random.Random(7)
    keys = [f"k{i}" for i in range(300)]
    outcomes = {"ok": 0, "timeout": 0, "other": 0}

    def worker(seed: int) -> None:
        r = random.Random(seed)
        for _ in range(60):
            try:
                with m.get(r.choice(keys), timeout=r.choice([0, 0.001, 0.05, 1])):
                    gevent.sleep(r.choice([0, 0, 0.001]))
                outcomes["ok"] += 1
            except PoolTimeout:
                outcomes["timeout"] += 1
            except Exception:  # PoolExhausted at max_total_waiting
                outcomes["other"] += 1

    def phase() -> None:
        workers = [gevent.spawn(worker, rng.random()) for _ in range(200)]
        for _ in range(30):  # kill some callers wherever they are (in line, in a pool, holding)
            gevent.sleep(0.002)
            rng.choice(workers).kill(block=False)
            tokens_conserved(m)
        gevent.joinall(workers, timeout=60, raise_error=False)
        assert all(g.dead for g in workers)
        settled(m)
        wait_until(lambda: len(m) == 0, what="every pool reaped: memory back to its baseline")
        settled(m)

    phase()
    during, after = measured([phase, phase])
    assert outcomes["ok"] > 1000 and outcomes["timeout"] > 0
    # Kills land at random points here, so what the interpreter keeps between phases (gevent's
    # timers, freed-list slack) varies more: 256 KB still catches 21 bytes a checkout, and the
    # leaks this guards against cost a kilobyte each.
    limit = 4 * SLACK
    assert after - during < limit, f"{after - during} bytes kept by another 12,000 checkouts"


def test_room_making_evicts_without_growth_over_ten_thousand_keys(
    maps: list[PoolMap[Any, Any]],
) -> None:
    m = fake_map(maps, max_total=5, max_pool_idle=None)  # no max_pools: only room making evicts
    keys = iter(range(10**6))

    def use(n: int) -> Callable[[], None]:
        def phase() -> None:
            for _ in range(n):
                with m.get(next(keys), timeout=5):
                    pass
            assert len(m) <= 5  # a pool with an idle socket per token; the rest were evicted
            settled(m)

        return phase

    use(1000)()
    during, after = measured([use(5000), use(5000)])
    assert m.evicted >= 11_000 - 5
    assert after - during < SLACK, f"{after - during} bytes kept by 5,000 more keys"


# -- BalancedPool --------------------------------------------------------------------------------


class Rotating:
    """A resolver whose answer changes every call: one fixed address, one of ``span``."""

    def __init__(self, span: int = 50) -> None:
        self.calls = 0
        self.span = span

    def __call__(self, host: str) -> list[str]:
        self.calls += 1
        first = self.calls % self.span
        return [f"10.0.{first // 250}.{first % 250 + 1}", "10.1.0.1"]


def test_ten_thousand_re_resolutions_keep_endpoints_and_memory_bounded() -> None:
    made: list[int] = [0]

    def factory(ep: Endpoint) -> FakePool:
        made[0] += 1
        return FakePool(max_size=1, min_size=0)

    resolver = Rotating()
    bp = BalancedPool("svc.local", factory, port=6379, resolver=resolver, resolve_interval=3600)
    try:

        def churn(n: int) -> Callable[[], None]:
            def phase() -> None:
                for i in range(n):
                    bp._resolve()  # one endpoint replaced: a pool made, one retired
                    if i % 10 == 0:
                        with bp.get(timeout=1):
                            pass
                assert len(bp.endpoints()) == 2 and not bp._retired

            return phase

        churn(1000)()
        during, after = measured([churn(5000), churn(5000)])
    finally:
        bp.close()
    assert resolver.calls >= 11_000 and made[0] >= 11_000  # the endpoints really churned
    assert after - during < SLACK, f"{after - during} bytes kept by 5,000 more re-resolutions"


def test_ten_thousand_checkouts_with_failures_and_ejections_stay_bounded() -> None:
    pools: dict[Endpoint, FakePool] = {}

    def factory(ep: Endpoint) -> FakePool:
        pools[ep] = FakePool(max_size=2, min_size=0, fail_fast=True, fail_fast_after=1)
        return pools[ep]

    endpoints = [("10.0.0.1", 1), ("10.0.0.2", 1), ("10.0.0.3", 1)]
    bp = BalancedPool(
        endpoints, factory, consecutive_failures=1, base_ejection_time=0.001, probe_interval=0.001
    )
    rng = random.Random(3)
    try:

        def phase() -> None:
            for i in range(5000):
                if i % 500 == 0:  # an endpoint breaks, then heals: ejections and probes
                    pools[rng.choice(endpoints)].fail = (
                        ConnectionError("down") if i % 1000 else None
                    )
                try:
                    with bp.get(timeout=1):
                        pass
                except Exception:
                    pass
            for pool in pools.values():
                pool.fail = None

        phase()
        during, after = measured([phase, phase])
        assert sum(s.outstanding for s in bp.endpoints()) == 0
    finally:
        bp.close()
    assert after - during < SLACK, f"{after - during} bytes kept by 5,000 more checkouts"
