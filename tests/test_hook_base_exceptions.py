"""A BaseException from a hook is the hook's failure, never a storm or a lost slot (issue 19).

Before, a BaseException that is not an Exception raised by ``_new_connection`` or ``_on_connect``
(a custom one, or the hook's own ``gevent.Timeout`` escaping) was taken for the pool's own kill:
the slot was freed and a new connect started at once, thousands of connects inside one 1 s
``get()``, with ``connect_failures`` at 0, ``available`` True, ``fail_fast`` never tripping and
no cause on the PoolTimeout. Only the pool's own kill (close, fork: ``GreenletExit``) may skip
the backoff. For every hook: no storm, no lost slot (the counts add up and the pool serves
``max_size`` callers afterwards), and the error reaches the caller or the log once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gevent
import pytest

from geventconnpool import PoolClosed, PoolTimeout, PoolUnavailable

from .conftest import FakeConn, FakePool, wait_until

MAX_CONNECTS_PER_SECOND = 10


class HookBoom(BaseException):
    """A hook's own BaseException: not an Exception, not an interrupt."""


def _own_timeout() -> None:
    """What a hook does with ``with gevent.Timeout(t):`` around a call that takes longer."""
    with gevent.Timeout(0.001):
        gevent.sleep(1)


class BoomPool(FakePool):
    """``hook`` raises ``HookBoom`` (or its own gevent.Timeout) ``times`` times (-1: always)."""

    SPAWN_FREQUENCY = 0.1  # the library's default

    def __init__(self, *args: Any, hook: str, times: int = -1, timeout_: bool = False, **kw: Any):
        self.hook, self.times, self.own_timeout = hook, times, timeout_
        self.raised = 0
        self.connects: list[float] = []
        self.discards: list[str] = []
        super().__init__(*args, **kw)

    def _maybe_raise(self, hook: str) -> None:
        if hook != self.hook or self.times == 0:
            return
        self.times -= 1
        self.raised += 1
        if self.own_timeout:
            _own_timeout()
        raise HookBoom(f"{hook} says no")

    def _new_connection(self) -> FakeConn:
        self.connects.append(time.monotonic())
        self._maybe_raise("new_connection")
        return super()._new_connection()

    def _on_connect(self, conn: FakeConn) -> None:
        self._maybe_raise("on_connect")

    def _check(self, conn: FakeConn) -> bool:
        self._maybe_raise("check")
        return True

    def _on_acquire(self, conn: FakeConn) -> bool:
        self._maybe_raise("on_acquire")
        return True

    def _on_release(self, conn: FakeConn) -> bool:
        self._maybe_raise("on_release")
        return True

    def _keepalive(self, conn: FakeConn) -> None:
        self._maybe_raise("keepalive")

    def _close_connection(self, conn: FakeConn) -> None:
        conn.close()
        self._maybe_raise("close_connection")

    def _on_discard(self, conn: FakeConn, reason: str) -> None:
        self.discards.append(reason)


def _make(pools: list[Any], hook: str, **kw: Any) -> BoomPool:
    pool = BoomPool(hook=hook, **kw)
    pools.append(pool)
    return pool


def _serves_max_size(pool: BoomPool) -> None:
    """No slot lost: the counts add up, and max_size callers get a connection at once."""
    s = pool.stats()
    assert s.open == s.idle + s.in_use + s.connecting, s
    assert s.open <= s.max_size
    got: list[Any] = []
    release = gevent.event.Event()

    def use() -> None:
        with pool.get(timeout=5) as conn:
            got.append(conn)
            release.wait(5)

    gs = [gevent.spawn(use) for _ in range(pool.max_size)]
    wait_until(lambda: len(got) == pool.max_size, what=f"{pool.max_size} callers served")
    assert len({id(c) for c in got}) == pool.max_size  # no double hand-out
    release.set()
    gevent.joinall(gs, raise_error=True)


def _opened(pool: BoomPool) -> int:
    s = pool.stats()
    return s.open - s.connecting


def _log_lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage() or text in (r.exc_text or "")]


# -- the connect hooks (defect 2) ---------------------------------------------------------------
CONNECT_CASES = [
    pytest.param(hook, own, id=f"{hook}-{'own-timeout' if own else 'custom'}")
    for hook in ("new_connection", "on_connect")
    for own in (False, True)
]


@pytest.mark.parametrize(("hook", "own_timeout"), CONNECT_CASES)
def test_a_connect_hook_base_exception_is_a_failed_connect(
    pools: list[Any], caplog: pytest.LogCaptureFixture, hook: str, own_timeout: bool
) -> None:
    caplog.set_level(logging.INFO, logger="geventconnpool")
    pool = _make(pools, hook, min_size=1, max_size=2, timeout_=own_timeout)

    with pytest.raises(PoolTimeout) as info:
        with pool.get(timeout=1):
            pass

    assert 2 <= len(pool.connects) <= MAX_CONNECTS_PER_SECOND, len(pool.connects)
    stats = pool.stats()
    assert stats.connect_failures >= len(pool.connects) - 1  # the last may be on its way
    assert not stats.available  # fail_fast_after (3) failures: considered down
    expected = gevent.Timeout if own_timeout else HookBoom
    assert isinstance(info.value.__cause__, expected), repr(info.value.__cause__)
    assert "connects are failing" in str(info.value)
    failed = [r for r in caplog.records if "connect failed" in r.getMessage()]
    assert len(failed) == 1  # rate-limited: the error reaches the log once
    if hook == "on_connect":  # the connection it opened was closed, not leaked
        assert pool.made and all(c.closed for c in pool.made)

    pool.times = 0  # the backend is back
    _serves_max_size(pool)


@pytest.mark.parametrize(("hook", "own_timeout"), CONNECT_CASES)
def test_fail_fast_trips_on_connect_hook_base_exceptions(
    pools: list[Any], hook: str, own_timeout: bool
) -> None:
    pool = _make(pools, hook, min_size=1, max_size=2, timeout_=own_timeout, fail_fast=True)
    start = time.monotonic()
    with pytest.raises(PoolUnavailable) as info:
        with pool.get(timeout=5):
            pass
    assert time.monotonic() - start < 3.0  # three failed rounds, not the whole timeout
    assert isinstance(info.value.__cause__, gevent.Timeout if own_timeout else HookBoom)
    assert pool.stats().connect_failures >= 3


def test_the_pools_own_kill_still_skips_the_backoff(pools: list[Any]) -> None:
    """close() kills a connect in flight: no failure is booked, nothing is logged."""
    pool = _make(pools, "none", min_size=0, max_size=1)
    pool.gate = gevent.event.Event()  # the connect hangs

    def caller() -> None:
        with pytest.raises(PoolClosed), pool.get(timeout=5):
            pass

    g = gevent.spawn(caller)
    wait_until(lambda: pool.stats().connecting == 1, what="the connect")
    pool.close()
    assert pool.stats().connect_failures == 0
    g.join(5)
    assert g.successful()


# -- the other hooks ----------------------------------------------------------------------------
@pytest.mark.parametrize("hook", ["check", "on_acquire"])
def test_a_checkout_hook_base_exception_reaches_the_caller_once(
    pools: list[Any], hook: str
) -> None:
    pool = _make(pools, hook, min_size=2, max_size=2, times=1, check_idle_after=0)
    pool.wait_ready(5)
    with pytest.raises(HookBoom):
        with pool.get(timeout=5):
            pass
    assert pool.raised == 1
    wait_until(lambda: _opened(pool) == 2, what="the replacement")
    assert len(pool.connects) == 3  # the two, and one replacement: no storm
    assert pool.discards == ["check"]  # the hook's own failure is a failed check, as an Exception
    _serves_max_size(pool)


def test_an_on_release_base_exception_reaches_the_caller_once(pools: list[Any]) -> None:
    pool = _make(pools, "on_release", min_size=2, max_size=2, times=1)
    pool.wait_ready(5)
    with pytest.raises(HookBoom):
        with pool.get(timeout=5):
            pass
    assert pool.raised == 1
    wait_until(lambda: _opened(pool) == 2, what="the replacement")
    assert len(pool.connects) == 3
    assert pool.discards == ["interrupted"]
    _serves_max_size(pool)


@pytest.mark.parametrize("own_timeout", [False, True], ids=["custom", "own-timeout"])
def test_a_keepalive_base_exception_is_a_broken_connection_logged_once(
    pools: list[Any],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    own_timeout: bool,
) -> None:
    caplog.set_level(logging.INFO, logger="geventconnpool")
    pool = _make(
        pools, "keepalive", min_size=2, max_size=2, times=1, keepalive=0.05, timeout_=own_timeout
    )
    pool.wait_ready(5)
    wait_until(lambda: pool.raised == 1 and pool.discards, what="the failing ping")
    assert pool.discards == ["keepalive"]
    wait_until(lambda: _opened(pool) == 2, what="the replacement")
    _serves_max_size(pool)
    if not own_timeout:
        assert len(_log_lines(caplog, "HookBoom")) == 1
    assert "HookBoom" not in capsys.readouterr().err  # no greenlet died of it
    assert all(not g.dead or g.successful() for g in pool._busy)


def test_a_close_hook_base_exception_is_logged_and_the_closing_goes_on(
    pools: list[Any], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO, logger="geventconnpool")
    pool = _make(pools, "close_connection", min_size=2, max_size=2)
    pool.wait_ready(5)
    pool.invalidate()  # closes both idle connections, in this greenlet
    assert pool.raised == 2  # both were closed, not only the first
    assert pool.discards == ["invalidated", "invalidated"]  # and both reported
    assert len(_log_lines(caplog, "_close_connection raised")) == 2  # once each
    wait_until(lambda: _opened(pool) == 2, what="the replacements")
    _serves_max_size(pool)

    assert "HookBoom" not in capsys.readouterr().err
    pool.close()  # close() does not raise it either
    s = pool.stats()
    assert s.created == s.discarded.total


def test_a_close_hook_base_exception_in_the_background_leaves_the_scheduler_alive(
    pools: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    pool = _make(pools, "close_connection", min_size=2, max_size=2, max_lifetime=0.05)
    wait_until(lambda: pool.stats().discarded.lifetime >= 4, what="expiries, in the background")
    sched = pool._maint._greenlet
    assert sched is not None and not sched.dead  # the scheduler survived the hook
    _serves_max_size(pool)
    assert "HookBoom" not in capsys.readouterr().err
