"""``pool.close_idle(keep=n)``: idle surplus closes at once, without resizing down and up.

PoolMap makes room under ``max_total`` with it, and decides on ``get(key)`` from its own cheap
counts, never by building a ``PoolStats`` snapshot.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from geventconnpool import ConnectionPool, PoolMap
from tests.conftest import FakeConn, FakePool, wait_until


@pytest.fixture
def fakes() -> Iterator[list[FakePool]]:
    made: list[FakePool] = []
    yield made
    for pool in made:
        pool.close()


def filled(fakes: list[FakePool], n: int, **options: Any) -> tuple[FakePool, list[FakeConn]]:
    """A pool with ``n`` idle connections; the list is warmest first (returned last)."""
    pool = FakePool(max_size=n, **options)
    fakes.append(pool)
    with ExitStack() as stack:
        conns = [stack.enter_context(pool.get(timeout=5)) for _ in range(n)]
    assert pool.stats().idle == n
    return pool, conns


def test_close_idle_closes_the_coldest_beyond_keep(fakes: list[FakePool]) -> None:
    pool, conns = filled(fakes, 4, min_size=0)
    assert pool.close_idle(keep=1) == 3
    s = pool.stats()
    assert s.idle == 1 and s.open == 1 and s.discarded.idle == 3 and s.max_size == 4
    assert [c.closed for c in conns] == [False, True, True, True]  # the warmest stays
    with pool.get(timeout=1) as conn:
        assert conn is conns[0]


def test_close_idle_never_goes_below_min_size_nor_touches_held_ones(
    fakes: list[FakePool],
) -> None:
    pool, _ = filled(fakes, 4, min_size=2)
    with pool.get(timeout=1) as held:
        assert pool.close_idle() == 2  # 4 open, 1 held, 3 idle: down to min_size=2 open
        assert pool.stats().open == 2 and not held.closed
    assert pool.close_idle() == 0
    assert pool.stats().open == 2 and len(pool.made) == 4  # nothing reopened


def test_close_idle_keeps_the_sizes_and_leaves_waiters_served(fakes: list[FakePool]) -> None:
    pool, _ = filled(fakes, 3, min_size=0)
    assert pool.close_idle(keep=0) == 3
    assert (pool.min_size, pool.max_size) == (0, 3)
    with pool.get(timeout=5), pool.get(timeout=5), pool.get(timeout=5):
        pass  # the pool grows back to max_size on demand
    assert pool.stats().open == 3


def test_close_idle_refuses_a_bad_keep_naming_it(fakes: list[FakePool]) -> None:
    pool, _ = filled(fakes, 1, min_size=0)
    with pytest.raises(ValueError, match="keep must be >= 0"):
        pool.close_idle(keep=-1)
    with pytest.raises(TypeError, match="keep must be an int"):
        pool.close_idle(keep=1.5)  # type: ignore[arg-type]
    pool.close()
    assert pool.close_idle() == 0  # a closed pool has nothing idle


def test_room_making_closes_idle_surplus_without_resize(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(self: ConnectionPool[Any], *args: Any, **kwargs: Any) -> None:
        raise AssertionError("room making must not resize pools")

    monkeypatch.setattr(ConnectionPool, "resize", refuse)
    m: PoolMap[str, FakeConn] = PoolMap(lambda k: FakePool(max_size=3, min_size=0), max_total=3)
    try:
        with m.get("a"), m.get("a"), m.get("a"):
            pass
        with m.get("a"):  # "a" stays in use with two idle connections
            with m.get("b", timeout=5):
                s = m.stats("a")
                assert s.idle == 0 and s.discarded.idle == 2 and s.max_size == 3
    finally:
        m.close()


def test_get_key_decides_on_cheap_counts_not_stats_snapshots(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = [0]
    real = ConnectionPool.stats

    def counted(self: ConnectionPool[Any]) -> Any:
        calls[0] += 1
        return real(self)

    m: PoolMap[int, FakeConn] = PoolMap(
        lambda k: FakePool(max_size=2, min_size=0), max_total=4, max_total_waiting=2
    )
    try:
        for key in range(4):  # the cap is full: four keys, one idle connection each
            with m.get(key, timeout=5):
                pass
        monkeypatch.setattr(ConnectionPool, "stats", counted)
        for i in range(1000):
            with m.get(i % 4, timeout=5):
                pass
        assert calls[0] == 0, f"{calls[0]} PoolStats snapshots built by 1000 get(key)"
    finally:
        monkeypatch.undo()
        m.close()
    wait_until(lambda: m.total == 0, what="closed")
