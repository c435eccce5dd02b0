"""Checks and hooks that keep failing back off (issue 11, item 4).

A connection that opens fine but fails ``_check``, ``_on_acquire`` or ``_on_connect`` every time
(PgBouncer accepting while the database behind it is down) counts as a failed connect: backoff,
``fail_fast``, ``stats().connect_failures`` and one rate-limited WARNING, never a busy loop of
connects (before: 160-270 connects inside one 1 s ``get()`` against a real server, thousands
against an instant one).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from geventconnpool import PoolTimeout, PoolUnavailable

from .conftest import FakeConn, FakePool, wait_until

HOOKS = ("check", "acquire", "connect")
MAX_CONNECTS_PER_SECOND = 10  # the bound for one 1 s get()


class RefusingPool(FakePool):
    """New connections open instantly and then fail ``refuse`` ("check", "acquire", "connect")."""

    SPAWN_FREQUENCY = 0.1  # the library's default (FakePool's 0 means "no reconnect delay")

    def __init__(self, *args: Any, refuse: str, **kw: Any) -> None:
        self.refuse = refuse
        self.connects: list[float] = []  # when each _new_connection() ran
        super().__init__(*args, **kw)

    def _new_connection(self) -> FakeConn:
        self.connects.append(time.monotonic())
        return super()._new_connection()

    def _on_connect(self, conn: FakeConn) -> None:
        if self.refuse == "connect":
            raise ConnectionError("the database behind the proxy is down")

    def _check(self, conn: FakeConn) -> bool:
        return self.refuse != "check"

    def _on_acquire(self, conn: FakeConn) -> bool:
        return self.refuse != "acquire"


def _make(pools: list[Any], refuse: str, **kw: Any) -> RefusingPool:
    if refuse == "check":
        kw.setdefault("check_idle_after", 0)  # every hand-out is checked
    pool = RefusingPool(1, refuse=refuse, **kw)
    pools.append(pool)
    return pool


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and text in r.getMessage()
    ]


@pytest.mark.parametrize("refuse", HOOKS)
def test_one_get_opens_few_connections_and_counts_them_as_failed(
    pools: list[Any], caplog: pytest.LogCaptureFixture, refuse: str
) -> None:
    caplog.set_level(logging.INFO, logger="geventconnpool")
    pool = _make(pools, refuse)

    with pytest.raises(PoolTimeout) as info:
        with pool.get(timeout=1):
            pass

    opened = len(pool.connects)
    assert 2 <= opened <= MAX_CONNECTS_PER_SECOND, opened
    stats = pool.stats()
    assert stats.connect_failures >= opened - 1  # the last one may still be on its way
    assert not stats.available  # considered down after fail_fast_after failures
    assert "connects are failing" in str(info.value)
    assert len(_warnings(caplog, "connect failed")) == 1  # rate-limited: one line
    assert len(_warnings(caplog, "")) <= 2  # that line and "backend considered down"


@pytest.mark.slow  # 2.5 s of real backoff
@pytest.mark.parametrize("refuse", HOOKS)
def test_connects_are_spaced_by_the_backoff(pools: list[Any], refuse: str) -> None:
    """While a caller waits: at least WAITER_RETRY-ish gaps; with nobody waiting: the backoff."""
    pool = _make(pools, refuse, reconnect_max_delay=0.8)
    with pytest.raises(PoolTimeout):
        with pool.get(timeout=1):
            pass
    gaps = [b - a for a, b in zip(pool.connects, pool.connects[1:], strict=False)]
    assert min(gaps) >= 0.04, gaps  # never back-to-back (reconnect_delay 0.1, jitter 0.5)

    before = len(pool.connects)  # nobody waits now: only the background fill (min_size=1)
    deadline = time.monotonic() + 1.5
    wait_until(lambda: time.monotonic() >= deadline, timeout=3, what="1.5 s of background")
    background = len(pool.connects) - before
    assert background <= 4, background  # 0.4 .. 0.8 s apart at this point of the backoff


@pytest.mark.parametrize("refuse", HOOKS)
def test_fail_fast_gives_up_once_the_backend_is_considered_down(
    pools: list[Any], refuse: str
) -> None:
    pool = _make(pools, refuse, fail_fast=True, fail_fast_after=3)
    start = time.monotonic()
    with pytest.raises(PoolUnavailable):
        with pool.get(timeout=5):
            pass
    assert time.monotonic() - start < 2.0  # three failed rounds, not the whole timeout
    assert pool.stats().connect_failures >= 3
    start = time.monotonic()
    with pytest.raises(PoolUnavailable):
        with pool.get(timeout=5):
            pass
    assert time.monotonic() - start < 0.05  # at once while down
    assert pool.stats().unavailable >= 2


@pytest.mark.parametrize("refuse", ["check", "acquire"])
def test_a_connection_that_served_once_is_not_a_failed_connect(
    pools: list[Any], refuse: str
) -> None:
    """Only a *new* connection refused at its first hand-out counts as a failed connect."""
    pool = _make(pools, refuse="none", check_idle_after=0)
    with pool.get(timeout=1):
        pass
    pool.refuse = refuse  # the connection served once; now it (and every new one) goes bad
    with pytest.raises(PoolTimeout):
        with pool.get(timeout=0.5):
            pass
    stats = pool.stats()
    assert stats.discarded.check >= 2  # the old one, then at least one new one
    assert stats.connect_failures == stats.discarded.check - 1  # all but the old one
