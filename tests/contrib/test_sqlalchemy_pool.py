"""GeventPool's SQLAlchemy Pool protocol with a stand-in DB-API driver (no server): behaviours
ported from SQLAlchemy's own ``test/engine/test_pool.py`` (events and their order, invalidate,
soft invalidate, recycle, dispose, detach, overflow and timeout), and the argument mapping."""

from __future__ import annotations

import gc
import itertools
import re
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sqlalchemy = pytest.importorskip("sqlalchemy")

import sqlalchemy.exc as sa_exc  # noqa: E402  (after the importorskip)
from sqlalchemy import event  # noqa: E402
from sqlalchemy.pool import QueuePool  # noqa: E402

from geventconnpool import PoolTimeout  # noqa: E402
from geventconnpool.contrib.sqlalchemy import (  # noqa: E402
    GeventPool,
    GeventPoolExhausted,
    GeventPoolTimeout,
    GeventPoolUnavailable,
)
from tests.servers import wait_until  # noqa: E402

pytestmark = pytest.mark.timeout(30)

_ids = itertools.count(1)


class FakeConnection:
    """A DB-API connection that records what was done to it."""

    def __init__(self, log: list[str]) -> None:
        self.id = next(_ids)
        self.log = log
        self.closed = False

    def cursor(self) -> Any:
        raise AssertionError("not used")

    def rollback(self) -> None:
        self.log.append(f"rollback {self.id}")

    def commit(self) -> None:
        self.log.append(f"commit {self.id}")

    def close(self) -> None:
        self.closed = True
        self.log.append(f"close {self.id}")


class Driver:
    """``connect()`` makes FakeConnections; ``fail`` makes it raise instead."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.made: list[FakeConnection] = []
        self.fail: BaseException | None = None

    def connect(self) -> FakeConnection:
        if self.fail is not None:
            raise self.fail
        conn = FakeConnection(self.log)
        self.made.append(conn)
        return conn

    def open(self) -> list[FakeConnection]:
        return [c for c in self.made if not c.closed]


@pytest.fixture
def driver() -> Driver:
    return Driver()


@pytest.fixture
def pools() -> Iterator[list[GeventPool]]:
    made: list[GeventPool] = []
    yield made
    for p in made:
        p.dispose()


def make(driver: Driver, pools: list[GeventPool], **kw: Any) -> GeventPool:
    kw.setdefault("pool_size", 1)
    kw.setdefault("max_overflow", 0)
    p = GeventPool(driver.connect, **kw)
    pools.append(p)
    return p


def listen_all(p: GeventPool) -> list[str]:
    """Every pool event, by name, in order."""
    seen: list[str] = []
    for name in ("first_connect", "connect", "checkout", "checkin", "reset", "invalidate"):
        event.listen(p, name, lambda *a, _n=name, **k: seen.append(_n))
    event.listen(p, "close", lambda *a: seen.append("close"))
    event.listen(p, "soft_invalidate", lambda *a: seen.append("soft_invalidate"))
    event.listen(p, "detach", lambda *a: seen.append("detach"))
    return seen


# ---------------------------------------------------------------------- events
def test_events_fire_in_sqlalchemys_order(driver: Driver, pools: list[GeventPool]) -> None:
    p = make(driver, pools)
    seen = listen_all(p)
    c = p.connect()
    assert seen == ["first_connect", "connect", "checkout"]
    c.close()
    assert seen[3:] == ["reset", "checkin"]
    c = p.connect()
    c.close()
    assert seen[5:] == ["checkout", "reset", "checkin"]  # connect fires once per connection
    assert len(driver.made) == 1


def test_reset_on_return_follows_the_argument(driver: Driver, pools: list[GeventPool]) -> None:
    for arg, expected in (("rollback", "rollback"), ("commit", "commit"), (None, None)):
        driver.log.clear()
        p = make(driver, pools, reset_on_return=arg)
        c = p.connect()
        cid = c.dbapi_connection.id
        c.close()
        assert driver.log == ([f"{expected} {cid}"] if expected else []), arg


def test_connect_event_raising_fails_the_checkout_and_closes(
    driver: Driver, pools: list[GeventPool]
) -> None:
    p = make(driver, pools, timeout=0.5)
    calls = []

    def bad(dbapi_conn: Any, rec: Any) -> None:
        calls.append(dbapi_conn)
        if len(calls) == 1:
            raise ValueError("setup failed")

    event.listen(p, "connect", bad)
    with p.connect() as c:  # the pool retries the connect; the caller gets the second one
        assert c.dbapi_connection is calls[1]
    assert calls[0].closed  # the first one was closed, not stranded


# ---------------------------------------------------------------------- invalidate
def test_invalidate_discards_the_connection_in_our_pool(
    driver: Driver, pools: list[GeventPool]
) -> None:
    p = make(driver, pools)
    seen = listen_all(p)
    c = p.connect()
    first = c.dbapi_connection
    c.invalidate()  # SQLAlchemy closes it and checks the record in: our pool discards it
    assert seen[3:6] == ["invalidate", "close", "checkin"] and first.closed
    assert p.stats().discarded.error == 1 and p.checkedout() == 0
    c.close()  # a no-op now, as on QueuePool
    with p.connect() as c2:
        assert c2.dbapi_connection is not first
    assert p.stats().created == 2


def test_soft_invalidate_replaces_on_return_not_in_place(
    driver: Driver, pools: list[GeventPool]
) -> None:
    p = make(driver, pools)
    seen = listen_all(p)
    c = p.connect()
    first = c.dbapi_connection
    c.invalidate(soft=True)
    assert not first.closed and "soft_invalidate" in seen
    c.close()
    assert first.closed  # our pool closed it as it came back
    with p.connect() as c2:
        assert c2.dbapi_connection is not first


def test_pool_wide_invalidation_replaces_older_connections_only(
    driver: Driver, pools: list[GeventPool]
) -> None:
    p = make(driver, pools, pool_size=2, max_overflow=0)
    a, b = p.connect(), p.connect()
    old_a, old_b = a.dbapi_connection, b.dbapi_connection
    time.sleep(0.01)  # SQLAlchemy compares time.time() stamps
    p._invalidate(a, ValueError("disconnect"))  # what the engine does on a disconnect
    a.close()
    b.close()
    assert old_a.closed and old_b.closed
    made = len(driver.made)
    c = p.connect()
    time.sleep(0.01)
    p._invalidate(b, ValueError("late report"))  # b predates the last invalidation: no-op
    assert not c.dbapi_connection.closed
    c.close()
    assert len(driver.made) >= made


def test_detach_frees_the_slot(driver: Driver, pools: list[GeventPool]) -> None:
    p = make(driver, pools, timeout=1)
    seen = listen_all(p)
    c = p.connect()
    raw = c.dbapi_connection
    c.detach()
    assert "detach" in seen and not raw.closed  # the caller owns it now
    with p.connect() as c2:  # the one slot is free again: a new connection
        assert c2.dbapi_connection is not raw
    c.close()
    assert raw.closed


# ---------------------------------------------------------------------- recycle, dispose
def test_recycle_replaces_old_connections(driver: Driver, pools: list[GeventPool]) -> None:
    p = make(driver, pools, recycle=0.2, geventconnpool_options={"lifetime_jitter": 0.0})
    with p.connect() as c:
        first = c.dbapi_connection
    wait_until(lambda: first.closed, 5, "the expired connection closed")
    with p.connect() as c:
        assert c.dbapi_connection is not first


def test_dispose_closes_idle_now_and_checked_out_on_return(
    driver: Driver, pools: list[GeventPool]
) -> None:
    p = make(driver, pools, pool_size=2, max_overflow=0)
    a, b = p.connect(), p.connect()
    held = b.dbapi_connection
    a.close()
    p.dispose()
    assert driver.open() == [held]
    b.close()
    assert driver.open() == []
    with p.connect() as c:  # the pool is still usable, as QueuePool is after dispose()
        assert not c.dbapi_connection.closed
    assert p.stats().created == 1  # a fresh pool underneath


def test_recreate_keeps_arguments_and_listeners(driver: Driver, pools: list[GeventPool]) -> None:
    p = make(driver, pools, pool_size=2, max_overflow=3, timeout=4, use_lifo=False)
    seen = listen_all(p)
    p2 = p.recreate()
    pools.append(p2)
    assert isinstance(p2, GeventPool) and p2 is not p
    assert (p2.pool.min_size, p2.pool.max_size, p2.pool.timeout, p2.pool.lifo) == (2, 5, 4, False)
    assert p2.name == p.name
    with p2.connect():
        pass
    assert "connect" in seen and "checkin" in seen


# ---------------------------------------------------------------------- overflow, timeout
def test_overflow_and_timeout(driver: Driver, pools: list[GeventPool]) -> None:
    p = make(driver, pools, pool_size=3, max_overflow=1, timeout=0.3)
    held = [p.connect() for _ in range(4)]
    assert p.checkedout() == 4 and p.overflow() == 1
    t0 = time.monotonic()
    with pytest.raises(sa_exc.TimeoutError) as info:
        p.connect()
    waited = time.monotonic() - t0
    assert 0.25 < waited < 5
    assert isinstance(info.value, PoolTimeout) and isinstance(info.value, GeventPoolTimeout)
    assert f"pool {p.name!r}" in str(info.value) and "no connection within 0.3s" in str(info.value)
    for c in held:
        c.close()
    assert p.checkedout() == 0 and p.checkedin() == 4


def test_waiters_are_served_first_come_first_served(
    driver: Driver, pools: list[GeventPool]
) -> None:
    p = make(driver, pools, pool_size=1, max_overflow=0, timeout=5)
    p.pool.fair_after = 0.0
    c = p.connect()
    order: list[int] = []

    def wait(i: int) -> None:
        with p.connect():
            order.append(i)

    gs = []
    for i in range(5):
        gs.append(gevent.spawn(wait, i))
        wait_until(lambda n=i: p.stats().waiting == n + 1, 5, "queued")
    c.close()
    gevent.joinall(gs, raise_error=True)
    assert order == [0, 1, 2, 3, 4]


def test_a_killed_waiter_leaves_no_trace(driver: Driver, pools: list[GeventPool]) -> None:
    p = make(driver, pools, pool_size=1, max_overflow=0, timeout=5)
    c = p.connect()
    g = gevent.spawn(p.connect)
    wait_until(lambda: p.stats().waiting == 1, 5, "queued")
    g.kill()
    assert p.stats().waiting == 0
    c.close()
    with p.connect():
        assert p.checkedout() == 1


def test_fail_fast_raises_unavailable_with_the_connect_error(
    driver: Driver, pools: list[GeventPool]
) -> None:
    driver.fail = ConnectionRefusedError("refused")
    p = make(
        driver,
        pools,
        timeout=5,
        geventconnpool_options={"fail_fast": True, "fail_fast_after": 1, "reconnect_delay": 5},
    )
    with pytest.raises(sa_exc.TimeoutError):  # the first waits for its connect
        p.connect()
    t0 = time.monotonic()
    with pytest.raises(GeventPoolUnavailable) as info:
        p.connect()
    assert time.monotonic() - t0 < 1  # no wait
    assert isinstance(info.value, sa_exc.TimeoutError)
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


def test_a_hanging_connect_event_is_bounded_by_connect_timeout(
    driver: Driver, pools: list[GeventPool]
) -> None:
    p = make(driver, pools, timeout=0.5, geventconnpool_options={"connect_timeout": 0.1})
    event.listen(p, "connect", lambda *a: gevent.sleep(30))
    with pytest.raises(GeventPoolTimeout):
        p.connect()
    assert p.stats().connect_failures >= 1


def test_connect_raising_base_exception_gives_the_slot_back(
    driver: Driver, pools: list[GeventPool]
) -> None:
    p = make(driver, pools, timeout=2)

    class Stop(BaseException):
        pass

    def hook(dbapi_conn: Any, rec: Any, proxy: Any) -> None:
        raise Stop

    event.listen(p, "checkout", hook)
    with pytest.raises(Stop):
        p.connect()
    event.remove(p, "checkout", hook)
    assert p.checkedout() == 0
    with p.connect():  # the one slot is usable
        pass


# ---------------------------------------------------------------------- arguments
def test_sqlalchemy_arguments_map_to_ours(driver: Driver, pools: list[GeventPool]) -> None:
    p = make(driver, pools, pool_size=3, max_overflow=2, timeout=1.5, use_lifo=False, recycle=60)
    inner = p.pool
    assert (inner.min_size, inner.max_size, inner.timeout) == (3, 5, 1.5)
    assert (inner.lifo, inner.max_lifetime) == (False, 60)
    assert p._recycle == -1  # recycling is ours: SQLAlchemy never reconnects a record in place
    assert p.size() == 3 and p.timeout() == 1.5


def test_defaults_are_queuepools(driver: Driver, pools: list[GeventPool]) -> None:
    p = GeventPool(driver.connect)
    pools.append(p)
    q = QueuePool(driver.connect)
    assert (p.pool.min_size, p.pool.max_size, p.pool.timeout) == (q.size(), 15, q.timeout())
    assert p.pool.lifo is True  # ours: LIFO lets surplus connections idle out
    assert p.stats().open == 0  # nothing opened before the first checkout


def test_our_options_as_keywords_or_dict(driver: Driver, pools: list[GeventPool]) -> None:
    p = make(driver, pools, max_size=7, fail_fast=True, name="db")
    assert (p.pool.max_size, p.pool.fail_fast, p.name) == (7, True, "db")
    q = make(driver, pools, geventconnpool_options={"min_size": 0, "max_size": 4})
    assert (q.pool.min_size, q.pool.max_size) == (0, 4)


@pytest.mark.parametrize(
    ("kw", "error", "words"),
    [
        ({"geventconnpool_options": {"nope": 1}}, TypeError, "unknown option 'nope'"),
        (
            {"fail_fast": True, "geventconnpool_options": {"fail_fast": False}},
            TypeError,
            "fail_fast given twice",
        ),
        ({"timeout": 1, "geventconnpool_options": {"timeout": 2}}, TypeError, "timeout given"),
        ({"pool_size": 0}, sa_exc.ArgumentError, "needs a bound"),
        ({"max_overflow": -1}, sa_exc.ArgumentError, "needs a bound"),
        ({"recycle": 0}, ValueError, "pool_recycle must be"),
        ({"geventconnpool_options": {"max_size": 0}}, ValueError, "max_size"),
    ],
)
def test_bad_arguments_name_themselves(
    driver: Driver, kw: dict[str, Any], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        GeventPool(driver.connect, **kw)


def test_create_engine_passes_sqlalchemy_and_our_arguments() -> None:
    engine = sqlalchemy.create_engine(
        "sqlite://",
        poolclass=GeventPool,
        pool_size=2,
        max_overflow=1,
        pool_timeout=3,
        pool_recycle=100,
        pool_use_lifo=False,
        pool_pre_ping=True,
        pool_reset_on_return="commit",
        pool_logging_name="app-db",
        geventconnpool_options={"fail_fast": True},
    )
    try:
        p = engine.pool
        assert isinstance(p, GeventPool)
        inner = p.pool
        assert (inner.min_size, inner.max_size, inner.timeout, inner.max_lifetime) == (2, 3, 3, 100)
        assert (inner.lifo, inner.fail_fast, p.name) == (False, True, "app-db")
        assert p._pre_ping is True
        with engine.connect() as c:
            assert c.exec_driver_sql("select 1").scalar() == 1
        assert "GeventPool 'app-db' open=" in p.status() and "in_use=0" in p.status()
    finally:
        engine.dispose()


def test_status_says_size_idle_in_use_waiting(driver: Driver, pools: list[GeventPool]) -> None:
    p = make(driver, pools, pool_size=2, max_overflow=0, name="st")
    c = p.connect()
    g = gevent.spawn(lambda: (p.connect(), p.connect()))
    wait_until(lambda: p.stats().waiting == 1, 5, "a waiter")
    s = p.status()
    assert s.startswith("GeventPool 'st' open=2 idle=0 in_use=2 connecting=0 waiting=1")
    assert "min_size=2 max_size=2" in s and repr(p) == f"<{s}>"
    c.close()
    g.join(5)


def test_dispose_while_waiting_moves_the_waiter_to_the_new_pool(
    driver: Driver, pools: list[GeventPool]
) -> None:
    p = make(driver, pools, pool_size=1, max_overflow=0, timeout=5)
    held = p.connect()
    got: list[Any] = []
    g = gevent.spawn(lambda: got.append(p.connect()))
    wait_until(lambda: p.stats().waiting == 1, 5, "a waiter")
    p.dispose()  # QueuePool's waiters keep waiting on the same pool: ours move to the new one
    g.join(5)
    assert g.successful(), g.exception
    assert not got[0].dbapi_connection.closed
    held.close()
    assert held.dbapi_connection is None  # came back to the old pool: closed there
    got[0].close()


def test_max_waiting_refuses_at_once(driver: Driver, pools: list[GeventPool]) -> None:
    p = make(driver, pools, timeout=5, geventconnpool_options={"max_waiting": 1})
    c = p.connect()
    g = gevent.spawn(p.connect)
    wait_until(lambda: p.stats().waiting == 1, 5, "a waiter")
    with pytest.raises(sa_exc.TimeoutError) as info:
        p.connect()
    assert isinstance(info.value, GeventPoolExhausted) and p.name in str(info.value)
    c.close()
    g.get(timeout=5).close()


def test_a_connection_dropped_without_close_comes_back(
    driver: Driver, pools: list[GeventPool]
) -> None:
    p = make(driver, pools, timeout=1)

    def forget() -> None:
        c = p.connect()
        assert c.dbapi_connection is not None  # the greenlet ends holding it

    gevent.spawn(forget).join(5)
    gc.collect()  # SQLAlchemy's finaliser resets it and checks it in
    assert p.checkedout() == 0 and p.stats().in_use == 0
    with p.connect():
        pass
    assert len(driver.made) == 1


def test_no_record_is_ever_held_twice_under_kills_and_timeouts(
    driver: Driver, pools: list[GeventPool]
) -> None:
    p = make(driver, pools, pool_size=3, max_overflow=2, timeout=0.05)
    holders: dict[int, int] = {}
    doubled: list[int] = []
    counts = {"ok": 0, "timeout": 0}

    def checkout(dbapi_conn: Any, rec: Any, proxy: Any) -> None:
        if id(rec) in holders:
            doubled.append(id(rec))
        holders[id(rec)] = id(gevent.getcurrent())

    def checkin(dbapi_conn: Any, rec: Any) -> None:
        holders.pop(id(rec), None)

    event.listen(p, "checkout", checkout)
    event.listen(p, "checkin", checkin)

    def work(i: int) -> None:
        for n in range(30):
            try:
                with p.connect() as c:
                    if (i + n) % 7 == 0:
                        c.invalidate()
                    gevent.sleep(0)
                counts["ok"] += 1
            except sa_exc.TimeoutError:
                counts["timeout"] += 1

    gs = [gevent.spawn(work, i) for i in range(40)]
    for _ in range(20):
        gevent.sleep(0.001)
        gs[_].kill(block=False)  # some die waiting, some holding a connection
    gevent.joinall(gs, timeout=20)
    assert all(g.dead for g in gs)
    gc.collect()
    assert doubled == []
    assert counts["ok"] > 0
    assert p.checkedout() == 0 and p.stats().in_use == 0 and p.stats().waiting == 0
    assert p.stats().open <= 5 and len(driver.open()) == p.stats().open


class QuietConnection:
    """Keeps no log (FakeConnection's would grow with every reset)."""

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_memory_stays_flat_over_10000_checkouts(pools: list[GeventPool]) -> None:
    p = GeventPool(QuietConnection, pool_size=2, max_overflow=0, timeout=5)
    pools.append(p)

    def cycle(n: int) -> None:
        for _ in range(n):
            with p.connect():
                pass

    cycle(500)  # warm up caches
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cycle(10_000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes kept after 10,000 checkouts"
    assert len(p._out) == 0


def test_asyncio_engines_refuse_this_pool() -> None:
    assert GeventPool._is_asyncio is False  # create_async_engine() checks it, as for QueuePool


class PingDialect:
    """A stand-in for the engine's dialect: its ping answers ``alive``, or raises."""

    is_async = False
    has_terminate = False

    def __init__(self) -> None:
        self.alive: bool | BaseException = True
        self.pings = 0

    def _do_ping_w_event(self, dbapi_connection: Any) -> bool:
        self.pings += 1
        if isinstance(self.alive, BaseException):
            raise self.alive
        return self.alive

    def do_rollback(self, dbapi_connection: Any) -> None:
        dbapi_connection.rollback()

    def do_close(self, dbapi_connection: Any) -> None:
        dbapi_connection.close()

    do_terminate = do_close

    def get_driver_connection(self, connection: Any) -> Any:
        return connection


@pytest.mark.parametrize("failure", [False, OSError("gone")], ids=["ping-false", "ping-raises"])
def test_keepalive_rolls_back_after_the_ping_and_discards_on_failure(
    driver: Driver, pools: list[GeventPool], failure: bool | BaseException
) -> None:
    dialect = PingDialect()
    options = {"keepalive": 0.05, "keepalive_jitter": 0.0}
    p = make(driver, pools, dialect=dialect, geventconnpool_options=options)
    with p.connect() as c:
        conn = c.dbapi_connection
    driver.log.clear()
    wait_until(lambda: dialect.pings >= 2, 5, "two keepalive pings")
    assert f"rollback {conn.id}" in driver.log  # a ping may open a transaction: ended
    dialect.alive = failure
    wait_until(lambda: conn.closed, 5, "the connection discarded after a failed ping")
    assert p.stats().discarded.keepalive >= 1


@settings(max_examples=200, deadline=None)
@given(
    pool_size=st.one_of(st.none(), st.integers(-2, 50)),
    max_overflow=st.one_of(st.none(), st.integers(-2, 50)),
    ours=st.dictionaries(
        st.sampled_from(["min_size", "max_size", "size"]), st.integers(-1, 60), max_size=2
    ),
)
def test_the_mapping_gives_a_valid_pool_or_an_error_naming_the_argument(
    pool_size: int | None, max_overflow: int | None, ours: dict[str, int]
) -> None:
    """Any combination of SQLAlchemy's sizes and ours: a pool whose bounds are what the guide's
    table says, or a TypeError/ValueError/ArgumentError that names an argument; never a pool
    without a bound."""
    kw: dict[str, Any] = {"geventconnpool_options": ours}
    if pool_size is not None:
        kw["pool_size"] = pool_size
    if max_overflow is not None:
        kw["max_overflow"] = max_overflow
    try:
        p = GeventPool(QuietConnection, **kw)
    except (TypeError, ValueError, sa_exc.ArgumentError) as e:
        assert re.search(r"size|overflow|bound", str(e)), e
        return
    inner = p.pool
    assert 0 <= inner.min_size <= inner.max_size
    assert pool_size is None or pool_size >= 1 or {"size", "max_size"} & set(ours)
    assert max_overflow is None or max_overflow >= 0 or {"size", "max_size"} & set(ours)
    lo = 5 if pool_size is None else pool_size
    extra = 10 if max_overflow is None else max_overflow
    if "size" in ours:
        assert ours["size"] in (inner.max_size, inner.min_size)
    else:
        assert inner.max_size == ours.get("max_size", lo + extra)
        assert inner.min_size == ours.get("min_size", min(lo, inner.max_size))
    assert p.stats().open == 0
