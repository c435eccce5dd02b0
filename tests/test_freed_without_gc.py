"""Core defects found by porting redis-py's pool tests (issue 15, defects 2 and 3).

2. A never-wait pool (``max_waiting=0``) still connects on demand and grows to ``max_size``.
3. A pool whose connect failed is freed by reference counting alone after ``close()`` and
   ``del``: no reference cycle through the error handed to the caller.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest

from geventconnpool import PoolExhausted, PoolTimeout, PoolUnavailable
from geventconnpool.testing import free_port

from .conftest import FakePool, SocketPool, wait_until

MakePool = Callable[..., SocketPool]
MakeFake = Callable[..., FakePool]


# --------------------------------------------------------------------------- 2. never wait
def test_a_never_wait_pool_connects_on_demand(make_pool: MakePool) -> None:
    pool = make_pool(min_size=0, max_size=3, max_waiting=0)
    assert pool.stats().open == 0  # min_size=0: nothing opened up front
    # The first get() may not wait for the connect it starts: it fails at once, as README says.
    with pytest.raises(PoolExhausted), pool.get():
        pass
    assert pool.stats().open == 1  # a connect started (open counts connects in flight)
    wait_until(lambda: pool.stats().idle == 1, what="the connect the first get() started")
    for _ in range(4):  # the next calls, 0.2 s apart as in the report, are served
        gevent.sleep(0.2)
        with pool.get() as conn:
            assert conn.fileno() != -1
    stats = pool.stats()
    assert (stats.created, stats.acquired, stats.exhausted) == (1, 4, 1)


def test_a_never_wait_pool_grows_to_max_size_under_concurrent_demand(make_fake: MakeFake) -> None:
    pool = make_fake(min_size=0, max_size=3, max_waiting=0)
    held: list[Any] = []
    refused = 0

    def take_one() -> bool:
        nonlocal refused
        assert pool.stats().open <= 3
        if len(held) < 3:
            ctx = pool.get()
            try:
                ctx.__enter__()
                held.append(ctx)
            except PoolExhausted:
                refused += 1  # each refusal starts a connect for the next caller
        return len(held) == 3

    try:
        wait_until(take_one, 5, "three holders of a never-wait pool")
        stats = pool.stats()
        assert stats.open == 3 and stats.in_use == 3 and stats.created == 3
        assert 1 <= refused == stats.exhausted
        with pytest.raises(PoolExhausted), pool.get():  # at max_size: refused, no 4th connect
            pass
        gevent.sleep(0.05)
        assert pool.stats().open == 3 and pool.stats().connecting == 0
    finally:
        for ctx in held:
            ctx.__exit__(None, None, None)


# --------------------------------------------------------------------------- 3. no cycle
@pytest.fixture
def no_gc() -> Iterator[None]:
    """Only reference counting frees objects during the test."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _fail_and_drop(pool: Any, call: Callable[[Any], Any], expected: type[BaseException]) -> None:
    """``call(pool)``, check the error and its cause, and drop both (nothing keeps them)."""
    try:
        call(pool)
    except expected as e:
        assert isinstance(e.__cause__, OSError), repr(e.__cause__)
    else:
        raise AssertionError(f"{call} did not raise {expected.__name__}")


def _freed_without_gc(make: Callable[[], Any], call: Callable[[Any], Any], exc: type) -> bool:
    pool = make()
    _fail_and_drop(pool, call, exc)
    pool.close()
    ref = weakref.ref(pool)
    del pool
    return ref() is None


def _get(pool: Any, timeout: float) -> None:
    with pool.get(timeout=timeout):
        pass


def _failing_fake(**options: Any) -> FakePool:
    pool = FakePool(1, reconnect_delay=0.01, open=False, **options)
    pool.fail = ConnectionRefusedError("refused")
    pool.open()
    return pool


@pytest.mark.usefixtures("no_gc")
def test_a_pool_whose_connect_failed_is_freed_without_the_cyclic_gc() -> None:
    assert _freed_without_gc(_failing_fake, lambda p: _get(p, 0.2), PoolTimeout)


@pytest.mark.usefixtures("no_gc")
def test_a_socket_pool_refused_by_a_closed_port_is_freed_without_the_cyclic_gc() -> None:
    address = ("127.0.0.1", free_port())  # nothing listens there

    def make() -> SocketPool:
        return SocketPool(1, address=address, reconnect_delay=0.01)

    assert _freed_without_gc(make, lambda p: _get(p, 0.2), PoolTimeout)


@pytest.mark.usefixtures("no_gc")
def test_a_failed_pool_is_freed_after_a_never_wait_get_and_wait_ready() -> None:
    def fail_both(pool: FakePool) -> None:
        wait_until(lambda: pool.stats().connect_failures >= 1, what="a failed connect")
        try:
            _get(pool, 0)
        except PoolTimeout as e:
            assert isinstance(e.__cause__, OSError)
        pool.wait_ready(0.05)

    assert _freed_without_gc(_failing_fake, fail_both, PoolTimeout)


@pytest.mark.usefixtures("no_gc")
def test_a_fail_fast_pool_is_freed_without_the_cyclic_gc() -> None:
    def make() -> FakePool:
        return _failing_fake(fail_fast=True, fail_fast_after=1)

    def refused(pool: FakePool) -> None:
        wait_until(lambda: not pool.stats().available, what="the backend marked down")
        _get(pool, 1)

    assert _freed_without_gc(make, refused, PoolUnavailable)
