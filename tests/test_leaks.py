"""Leak detection: a connection held past ``leak_timeout``, or whose get() context was lost."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable

import gevent
import pytest
from gevent.event import Event

from geventconnpool._records import greenlet_label
from geventconnpool.testing import PingServer, ping

from .conftest import SocketPool, wait_until

MakePool = Callable[..., SocketPool]
LOGGER = "geventconnpool.leaky"


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == LOGGER and r.levelno == logging.WARNING and text in r.getMessage()
    ]


def hold_the_connection(pool: SocketPool, release: Event, taken: list[int]) -> None:
    with pool.get(timeout=5) as conn:
        ping(conn)
        taken.append(_id_of(pool, conn))
        release.wait()


def _id_of(pool: SocketPool, conn: object) -> int:
    """The pool's number of the connection this greenlet holds (as dump() shows it)."""
    me = greenlet_label(gevent.getcurrent())
    return next(c.id for c in pool.dump().connections if c.holder == me)


def test_held_too_long_warns_once_with_pool_holder_and_stack(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="geventconnpool")
    pool = make_pool(2, name="leaky", leak_timeout=0.1)
    release = Event()
    first: list[int] = []
    holder = gevent.spawn(hold_the_connection, pool, release, first)
    wait_until(lambda: _warnings(caplog, f"#{first[0]} held by") if first else False, what="warn")
    later: list[int] = []  # a second leak, reported a leak_timeout after the first one
    other = gevent.spawn(hold_the_connection, pool, release, later)
    wait_until(lambda: _warnings(caplog, f"#{later[0]} held by") if later else False, what="2nd")

    [record] = _warnings(caplog, f"#{first[0]} held by")  # still only one about the first
    message = record.getMessage()
    assert "'leaky'" in message
    assert greenlet_label(holder) in message
    assert "hold_the_connection" in message  # the stack where get() was called
    assert "leak_timeout=0.1" in message
    release.set()
    gevent.joinall([holder, other], timeout=5, raise_error=True)


def test_returned_after_the_warning_logs_info(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="geventconnpool")
    pool = make_pool(1, name="leaky", leak_timeout=0.05)
    release = Event()
    taken: list[int] = []
    holder = gevent.spawn(hold_the_connection, pool, release, taken)
    wait_until(lambda: _warnings(caplog, "held by"), what="the warning")
    release.set()
    holder.join(5)
    infos = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO]
    assert any(f"#{taken[0]}" in r.getMessage() and "came back" in r.getMessage() for r in infos)
    assert pool.stats().discarded.total == 0  # a slow holder is not a broken connection


def test_returned_in_time_is_not_reported(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(2, name="leaky", leak_timeout=0.2)
    quick: list[int] = []
    done = Event()
    done.set()
    hold_the_connection(pool, done, quick)  # returned at once
    release = Event()
    slow: list[int] = []
    holder = gevent.spawn(hold_the_connection, pool, release, slow)
    wait_until(lambda: _warnings(caplog, "held by"), what="the slow holder's warning")
    assert [f"#{slow[0]} " in r.getMessage() for r in _warnings(caplog, "held by")] == [True]
    release.set()
    holder.join(5)


def _enter_and_forget(pool: SocketPool) -> int:
    """Enter a get() context and drop it without exiting it."""
    ctx = pool.get(timeout=5)
    conn = ctx.__enter__()
    ping(conn)
    return _id_of(pool, conn)


def test_garbage_collected_context_is_reported_and_its_slot_comes_back(
    make_pool: MakePool, server: PingServer, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(1, name="leaky", leak_timeout=60)
    lost = _enter_and_forget(pool)
    gc.collect()
    wait_until(lambda: pool.stats().discarded.leaked == 1, what="the leak to be reclaimed")
    [record] = _warnings(caplog, "garbage-collected")
    assert f"#{lost}" in record.getMessage() and "'leaky'" in record.getMessage()
    assert "_enter_and_forget" in record.getMessage()  # where it was taken
    with pool.get(timeout=5) as conn:  # max_size=1: the slot came back
        ping(conn)
    assert pool.stats().in_use == 0


def test_garbage_collected_context_in_a_cycle_is_reclaimed(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(1, name="leaky", leak_timeout=60)

    class Holder:
        pass

    def leak() -> None:
        h = Holder()
        h.self = h  # type: ignore[attr-defined]  # only the cycle collector frees it
        h.ctx = pool.get(timeout=5)  # type: ignore[attr-defined]
        h.ctx.__enter__()  # type: ignore[attr-defined]

    leak()
    gc.collect()
    wait_until(lambda: pool.stats().discarded.leaked == 1, what="the leak to be reclaimed")
    with pool.get(timeout=5) as conn:
        ping(conn)
    assert _warnings(caplog, "garbage-collected")


def test_leaked_connection_is_closed(make_pool: MakePool, server: PingServer) -> None:
    pool = make_pool(1, name="leaky", leak_timeout=60)
    pool.wait_ready(5)
    [peer] = server.peers
    _enter_and_forget(pool)
    gc.collect()
    wait_until(lambda: peer not in server.peers, what="the server to see it closed")
    assert pool.stats().discarded.leaked == 1
