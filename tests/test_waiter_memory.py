"""Memory stays flat while the pool is exhausted (issue 19, defect 1).

A ``get()`` that leaves the line (its timeout fires, it is killed) must leave no record behind:
before, every timed-out waiter stayed in the waiter deque (about 1 KB each) until a later waiter
was served, and a connection coming back to an empty line, taken by the next ``get()`` on the
fast path, never cleaned it up.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable

import gevent
import pytest

from geventconnpool import PoolTimeout

from .conftest import FakePool, wait_until

BATCH = 200  # greenlets waiting at once
ROUNDS = 60  # 60 x 200 = 12,000 waiters that leave, half timed out, half killed
WARM_UP = 10  # rounds before the baseline (gevent's own one-off growth is ~0.9 MB traced)
BOUND = 256 * 1024  # bytes the traced memory may grow by (the defect: ~1 KB per waiter)


def _timed_out(pool: FakePool) -> None:
    with pytest.raises(PoolTimeout):
        with pool.get(timeout=0.005):
            pass


def _forever(pool: FakePool) -> None:
    with pool.get(timeout=None):
        pass


def _round(pool: FakePool, kill: bool) -> None:
    """BATCH greenlets queue on the exhausted pool, then all time out (or all are killed)."""
    gs = [gevent.spawn(_forever if kill else _timed_out, pool) for _ in range(BATCH)]
    if kill:
        wait_until(lambda: pool.stats().waiting == BATCH, what="the batch to queue")
        gevent.killall(gs, block=True)
    else:
        gevent.joinall(gs, raise_error=True)
    assert pool.stats().waiting == 0


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


@pytest.mark.timeout(120)
def test_memory_stays_flat_while_waiters_time_out_or_are_killed(
    make_fake: Callable[..., FakePool],
) -> None:
    pool = make_fake(1, fair_after=0)
    held = pool.get(timeout=5)
    conn = held.__enter__()
    tracemalloc.start()
    try:
        for i in range(WARM_UP):  # first-time allocations (gevent's free lists, caches)
            _round(pool, kill=bool(i % 2))
        base = _traced()
        for i in range(ROUNDS):
            _round(pool, kill=bool(i % 2))
        during = _traced() - base
        line = len(pool._state.waiters)
        held.__exit__(None, None, None)  # the connection comes back to an empty line
        with pool.get(timeout=5) as again:  # ... and the next get() takes the fast path
            assert again is conn
        after = _traced() - base
    finally:
        tracemalloc.stop()
    assert during < BOUND, f"memory grew by {during} bytes while {ROUNDS * BATCH} waiters left"
    assert after < BOUND, f"memory grew by {after} bytes after the exhaustion ended"
    assert line <= 1, f"{line} records of waiters that left stay in the line"
    stats = pool.stats()
    assert stats.timeouts >= ROUNDS // 2 * BATCH
    assert (stats.idle, stats.in_use, stats.waiting) == (1, 0, 0)


def test_a_waiter_that_leaves_keeps_the_others_in_order(
    make_fake: Callable[..., FakePool],
) -> None:
    """Compacting the line keeps the waiters still in it, oldest first."""
    pool = make_fake(1, fair_after=0)
    held = pool.get(timeout=5)
    held.__enter__()
    served: list[int] = []

    def wait(i: int) -> None:
        with pool.get(timeout=None):
            served.append(i)

    gs = [gevent.spawn(wait, i) for i in range(10)]
    wait_until(lambda: pool.stats().waiting == 10, what="10 waiters")
    gevent.killall([g for i, g in enumerate(gs) if i % 3 != 2], block=True)  # 7 leave
    assert pool.stats().waiting == 3
    assert len(pool._state.waiters) <= 2 * 3 + 1
    held.__exit__(None, None, None)
    gevent.joinall(gs, timeout=5)
    assert served == [2, 5, 8]
