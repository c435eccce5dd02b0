"""A pool whose connect failed is freed by reference counting alone after ``close()`` and
``del``: no reference cycle through the error handed to the caller (issue 15, defect 3; the
never-wait pool of defect 2 is in test_sizing.py).
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from geventconnpool import PoolTimeout, PoolUnavailable
from geventconnpool.testing import free_port

from .conftest import FakePool, SocketPool, wait_until


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
