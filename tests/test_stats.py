"""What a pool tells about itself: the ``stats()`` snapshot and its counters, a one-line
``repr``, and unique default names.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from geventconnpool import PoolStats

from .conftest import FakePool

MakeFake = Callable[..., FakePool]


def test_stats_snapshot_fields_and_counters(make_fake: MakeFake) -> None:
    pool = make_fake(min_size=1, max_size=2, name="billing")
    pool.wait_ready(5)
    with pool.get():
        with pytest.raises(OSError), pool.get():
            raise OSError("broken")
    stats = pool.stats()
    assert isinstance(stats, PoolStats)
    assert stats.name == "billing" and stats.min_size == 1 and stats.max_size == 2
    assert stats.acquired == 2 and stats.discarded.error == 1 and stats.available
    assert stats.open == stats.idle + stats.in_use + stats.connecting
    assert stats.use_seconds_total >= 0 and stats.wait_seconds_max >= 0
    with pytest.raises(AttributeError):
        stats.open = 3  # type: ignore[misc]


def test_repr_shows_state_in_one_line(make_fake: MakeFake) -> None:
    pool = make_fake(2, name="pool-x")
    pool.wait_ready(5)
    with pool.get():
        assert repr(pool) == ("<FakePool 'pool-x' open=2 idle=1 in_use=1 connecting=0 waiting=0>")


def test_default_names_are_unique(make_fake: MakeFake) -> None:
    a, b = make_fake(1), make_fake(1)
    assert a.name.startswith("pool-") and a.name != b.name
