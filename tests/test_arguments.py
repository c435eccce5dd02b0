"""Every argument and option is checked at construction (or call), with an error naming
it; options may be class attributes; the pool is generic in its connection type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from geventconnpool import ConnectionPool

from .conftest import FakeConn, FakePool

MakeFake = Callable[..., FakePool]


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"size": 0}, ValueError, "size"),
        ({"size": "10"}, TypeError, "size"),
        ({"size": True}, TypeError, "size"),
        ({"size": 1, "keepalive": 0}, ValueError, "keepalive"),
        ({"size": 1, "keepalive": "30"}, TypeError, "keepalive"),
        ({"size": 1, "exc_classes": (ValueError, "x")}, TypeError, "exc_classes"),
        ({"size": 1, "exc_classes": 3}, TypeError, "exc_classes"),
        ({"size": 1, "timeout": -1}, ValueError, "timeout"),
        ({"size": 1, "timeout": float("nan")}, ValueError, "timeout"),
    ],
)
def test_bad_arguments_fail_at_construction(
    kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=name):
        FakePool(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"min_size": -1, "max_size": 2}, "min_size"),
        ({"min_size": 3, "max_size": 2}, "min_size"),
        ({"max_size": 0}, "max_size"),
        ({"max_waiting": -1}, "max_waiting"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"reconnect_delay": -1}, "reconnect_delay"),
        ({"reconnect_max_delay": float("inf")}, "reconnect_max_delay"),
        ({"fail_fast": 1}, "fail_fast"),
        ({"fail_fast_after": 0}, "fail_fast_after"),
        ({"max_lifetime": 0}, "max_lifetime"),
        ({"lifetime_jitter": 1.0}, "lifetime_jitter"),
        ({"check_idle_after": -1}, "check_idle_after"),
        ({"keepalive_jitter": -0.1}, "keepalive_jitter"),
        ({"max_idle": 0}, "max_idle"),
        ({"lifo": "yes"}, "lifo"),
        ({"leak_timeout": 0}, "leak_timeout"),
        ({"max_connecting": 0}, "max_connecting"),
        ({"name": ""}, "name"),
    ],
)
def test_every_option_is_validated(kwargs: dict[str, Any], name: str) -> None:
    kwargs.setdefault("max_size", 2)
    with pytest.raises((ValueError, TypeError), match=name):
        FakePool(**kwargs)


def test_negative_get_timeout_is_rejected(make_fake: MakeFake) -> None:
    pool = make_fake(1)
    with pytest.raises(ValueError, match="timeout"):
        pool.get(timeout=-0.5)


def test_options_may_be_class_attributes(make_fake: MakeFake) -> None:
    class Configured(FakePool):
        max_size = 3
        min_size = 1
        timeout = 0.01
        max_idle = 5.0
        lifo = False

    pool = Configured()
    try:
        assert (pool.min_size, pool.max_size, pool.timeout, pool.lifo) == (1, 3, 0.01, False)
        assert Configured(max_idle=7.0).max_idle == 7.0
    finally:
        pool.close()


def test_pool_is_generic_in_the_connection_type() -> None:
    class Typed(ConnectionPool[FakeConn]):
        def _new_connection(self) -> FakeConn:
            return FakeConn()

    with Typed(1) as pool, pool.get() as conn:
        assert isinstance(conn, FakeConn)
