"""Options as a user meets them: class attributes, conflicting sizes, assignment on a live pool,
``open=False``, and a pool used from a thread that does not own it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import gevent
import pytest

from geventconnpool import ConnectionPool, PoolClosed, PoolTimeout

from .conftest import FakeConn, FakePool, live_greenlets, wait_until

MakeFake = Callable[..., FakePool]


# --------------------------------------------------------------------------- construction
def test_a_class_attribute_size_sets_both_bounds() -> None:
    class Ten(FakePool):
        size = 10

    ten = Ten()
    try:
        assert (ten.size, ten.min_size, ten.max_size) == (10, 10, 10)
        ten.wait_ready(5)
        assert ten.stats().open == 10
    finally:
        ten.close()


def test_a_class_attribute_size_yields_to_the_arguments() -> None:
    class Ten(FakePool):
        size = 10

    small = Ten(2)
    try:
        assert (small.min_size, small.max_size) == (2, 2)
    finally:
        small.close()


def test_size_above_max_size_is_rejected_naming_both() -> None:
    with pytest.raises(ValueError, match=r"size \(30\).*max_size \(20\)"):
        FakePool(size=30, max_size=20)


def test_min_size_zero_without_max_size_is_rejected_naming_max_size() -> None:
    with pytest.raises(ValueError, match="max_size"):
        FakePool(min_size=0)


def test_keepalive_without_a_keepalive_method_is_rejected_naming_keepalive() -> None:
    class NoPing(ConnectionPool[FakeConn]):
        def _new_connection(self) -> FakeConn:
            return FakeConn()

    with pytest.raises(TypeError, match="keepalive") as info:
        NoPing(1, keepalive=5)
    assert "_keepalive" in str(info.value)
    NoPing(1).close()  # without keepalive= the class is fine


# --------------------------------------------------------------------------- a live pool
def test_assigning_max_size_resizes_the_pool(make_fake: MakeFake) -> None:
    pool = make_fake(min_size=1, max_size=3)
    held = [pool.get(timeout=5) for _ in range(3)]
    for ctx in held:
        ctx.__enter__()
    for ctx in held:
        ctx.__exit__(None, None, None)
    assert pool.stats().open == 3
    pool.max_size = 1
    assert pool.max_size == 1 and pool.stats().max_size == 1
    assert pool.stats().open == 1  # the surplus idle ones closed at once, as resize() does
    assert pool.stats().discarded.idle == 2
    with pytest.raises(ValueError, match="max_size must be >= 1"):
        pool.max_size = 0


def test_assigning_max_size_below_min_size_is_refused_like_resize(make_fake: MakeFake) -> None:
    pool = make_fake(3)
    with pytest.raises(ValueError, match=r"min_size \(3\).*max_size \(1\)"):
        pool.max_size = 1
    assert (pool.min_size, pool.max_size) == (3, 3)


def test_assigning_timeout_applies_to_the_next_get(make_fake: MakeFake) -> None:
    pool = make_fake(1)
    pool.wait_ready(5)
    pool.timeout = 0.05
    assert pool.timeout == 0.05
    with pool.get():
        with pytest.raises(PoolTimeout, match=r"within 0\.05s"), pool.get():
            pass
    with pytest.raises(TypeError, match="timeout"):
        pool.timeout = "soon"


def test_assigning_an_option_fixed_at_construction_is_refused(make_fake: MakeFake) -> None:
    pool = make_fake(1)
    with pytest.raises(AttributeError, match="lifo cannot be changed on a pool that exists"):
        pool.lifo = False
    assert pool.lifo is True


# --------------------------------------------------------------------------- open=False
def test_open_false_starts_nothing_and_connects_nothing(make_fake: MakeFake) -> None:
    before = live_greenlets()
    pool = make_fake(2, open=False)
    assert live_greenlets() == before  # no scheduler, no connect greenlet
    gevent.sleep(0.1)  # a connect (or a background greenlet's first turn) would run by now
    assert pool.made == []
    stats = pool.stats()
    assert (stats.open, stats.connecting, stats.created, stats.connect_failures) == (0, 0, 0, 0)


def test_a_never_opened_pool_reports_and_closes(make_fake: MakeFake) -> None:
    pool = make_fake(2, open=False, name="lazy")
    assert "'lazy'" in repr(pool) and "open=0" in repr(pool)
    assert pool.stats().open == 0
    assert "pool 'lazy'" in str(pool.dump())
    pool.close()
    pool.close()
    assert pool.closed and "closed" in repr(pool)
    assert pool.made == []
    with pytest.raises(PoolClosed):
        pool.open()  # open() after close()
    with pytest.raises(PoolClosed), pool.get(timeout=1):
        pass


def test_the_first_get_opens_the_pool(make_fake: MakeFake) -> None:
    pool = make_fake(2, open=False)
    with pool.get(timeout=5) as conn:
        assert conn in pool.made
    pool.wait_ready(5)
    assert pool.stats().open == 2


def test_wait_ready_opens_the_pool(make_fake: MakeFake) -> None:
    pool = make_fake(3, open=False)
    pool.wait_ready(5)
    assert pool.stats().idle == 3


def test_open_is_idempotent(make_fake: MakeFake) -> None:
    pool = make_fake(2, open=False)
    pool.open()
    pool.open()
    pool.wait_ready(5)
    pool.open()
    gevent.sleep(0.05)
    assert len(pool.made) == 2 and pool.stats().created == 2


def test_open_rejects_a_non_bool() -> None:
    with pytest.raises(TypeError, match="open"):
        FakePool(1, open="no")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- threads
def _in_a_thread(fn: Callable[[], Any]) -> BaseException | Any:
    """Run ``fn`` in a real thread (its own gevent hub); return its result or its error."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # handed back to the test
            out.append(e)

    t = threading.Thread(target=run, name="other-hub")
    t.start()
    wait_until(lambda: not t.is_alive(), 10, "the thread to finish")  # keeps our hub running
    t.join()
    return out[0]


def test_get_from_another_thread_raises_a_clear_error(make_fake: MakeFake) -> None:
    pool = make_fake(1, name="x")
    pool.wait_ready(5)
    owner = threading.get_ident()
    with pool.get(timeout=5):  # nothing idle: the other thread's get() takes the slow path

        def use() -> None:
            with pool.get(timeout=1):
                pass

        err = _in_a_thread(use)
    assert isinstance(err, RuntimeError), err
    assert str(err) == (
        f"pool 'x' belongs to the gevent hub of thread {owner}; create one pool per thread "
        "(see docs/usage/threads.rst)"
    )
    stats = pool.stats()
    assert (stats.waiting, stats.timeouts, stats.open) == (0, 0, 1)  # the pool was not touched
    with pool.get(timeout=1):
        pass


def test_a_pool_made_in_a_thread_works_there(make_fake: MakeFake) -> None:
    def own() -> int:
        pool = FakePool(1)
        try:
            with pool.get(timeout=5):
                pass
            return pool.stats().acquired
        finally:
            pool.close()

    assert _in_a_thread(own) == 1
