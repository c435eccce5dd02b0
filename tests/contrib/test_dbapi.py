"""DbApiPool against a real PostgreSQL server: psycopg2 made cooperative by psycogreen (in this
process) and pg8000 under gevent's monkey-patching (in a subprocess); plus the disconnect
classifier and the generic DB-API behaviour with a stand-in driver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import gevent
import pytest

from geventconnpool import PoolTimeout
from geventconnpool.contrib.dbapi import DbApiPool, driver_module, is_disconnect, sqlstate_of
from tests.contrib import pg_scenarios
from tests.servers import PostgresServer, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def make_pool(psycopg2: Any, postgres_server: PostgresServer, closing: list[Any]) -> Any:
    def make(**options: Any) -> DbApiPool:
        ping_query = options.pop("ping_query", "SELECT 1")
        pool = DbApiPool(psycopg2.connect, postgres_server.dsn, ping_query=ping_query, **options)
        closing.append(pool)
        return pool

    return make


@pytest.fixture
def admin_connect(psycopg2: Any, postgres_server: PostgresServer) -> Any:
    return lambda: psycopg2.connect(postgres_server.dsn)


def test_psycopg2_is_green(psycopg2: Any) -> None:
    import psycopg2.extensions

    assert psycopg2.extensions.get_wait_callback() is not None


def test_100_greenlets_share_10_connections_concurrently(make_pool: Any) -> None:
    pool = make_pool(size=10)
    pool.wait_ready(timeout=20)
    result = pg_scenarios.overlap(pool, greenlets=100, seconds=0.05)
    assert result["calls"] == 100
    assert result["backends"] == 10
    assert result["max_concurrent"] == 10  # the queries overlap, ten at a time
    assert result["elapsed"] < result["serial"] / 3  # 5 s if they ran one after another
    assert pool.stats().created == 10


def test_terminated_backend_costs_at_most_one_error(make_pool: Any, admin_connect: Any) -> None:
    pool = make_pool(size=3, check_idle_after=None)  # no checkout check: the worst case
    pool.wait_ready(timeout=20)
    result = pg_scenarios.terminate_one(pool, admin_connect, mode="none")
    assert len(result["errors"]) == 1, result  # the holder of the dead one, and no one else
    assert "terminating connection" in result["errors"][0] or "closed" in result["errors"][0]
    assert result["discarded_error"] == 1  # classified as a disconnect: not reused


def test_terminated_backend_costs_no_error_with_retry(make_pool: Any, admin_connect: Any) -> None:
    pool = make_pool(size=3, check_idle_after=None)
    pool.wait_ready(timeout=20)
    result = pg_scenarios.terminate_one(pool, admin_connect, mode="retry")
    assert result["errors"] == [], result
    assert result["disconnects"] == 1  # it did hit the dead connection, and @retry hid it


def test_terminated_backend_costs_no_error_with_pool_retrying(
    make_pool: Any, admin_connect: Any
) -> None:
    pool = make_pool(size=3, check_idle_after=None)
    pool.wait_ready(timeout=20)
    result = pg_scenarios.terminate_one(pool, admin_connect, mode="retrying")
    assert result["errors"] == [], result
    assert result["disconnects"] == 1


def test_checkout_check_finds_a_terminated_backend(make_pool: Any, admin_connect: Any) -> None:
    pool = make_pool(size=1, check_idle_after=0)
    with pool.get() as conn:
        pid = pg_scenarios.query(conn, "SELECT pg_backend_pid()")[0][0]
        conn.rollback()
    pg_scenarios.admin(admin_connect, "SELECT pg_terminate_backend(%s)", (pid,))
    with pool.get() as conn:  # the caller sees no error: SELECT 1 failed, a new one came
        assert pg_scenarios.query(conn, "SELECT pg_backend_pid()")[0][0] != pid
        conn.rollback()
    assert pool.stats().discarded.check == 1


def test_no_transaction_state_leaks_between_holders(make_pool: Any, admin_connect: Any) -> None:
    pool = make_pool(size=1)
    seen = pg_scenarios.no_leaks(pool, admin_connect)
    assert seen["state_after_release"] == "idle"  # not "idle in transaction"
    assert seen["same_backend"] is True
    assert seen["rows"] == 0
    assert seen["application_name"] != "leaked"
    assert seen["sql_error"] == "DivisionByZero"
    assert seen["same_backend_after_sql_error"] is True  # an SQL error keeps the connection
    assert seen["works_after_sql_error"] == 42
    assert seen["autocommit_restored"] is True
    assert seen["rows_after_explicit_begin"] == 0
    assert seen["state_at_end"] == "idle"
    assert seen["created"] == 1
    assert seen["discarded_error"] == 0


def test_release_rolls_back_without_a_round_trip_when_idle(make_pool: Any) -> None:
    import psycopg2.extensions as ext

    pool = make_pool(size=1)
    with pool.get() as conn:
        pg_scenarios.query(conn, "SELECT 1")
        assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_INTRANS
    assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE


def test_a_connection_closed_by_its_holder_is_discarded(make_pool: Any) -> None:
    pool = make_pool(size=1)
    with pool.get() as conn:
        conn.close()
    with pool.get() as fresh:
        assert fresh is not conn
        assert pg_scenarios.query(fresh, "SELECT 1") == [(1,)]
        fresh.rollback()
    assert pool.stats().discarded.release == 1


def test_keepalive_runs_the_ping_query_and_leaves_no_transaction(
    make_pool: Any, admin_connect: Any
) -> None:
    assert DbApiPool.ping_query == "SELECT 1"
    # A sequence counts the pings: nextval() is not undone by the keepalive's rollback.
    pg_scenarios.admin(admin_connect, "CREATE SEQUENCE IF NOT EXISTS ka_seq")
    start = pg_scenarios.admin(admin_connect, "SELECT nextval('ka_seq')")[0][0]
    pool = make_pool(
        size=1, keepalive=0.05, keepalive_jitter=0, ping_query="SELECT nextval('ka_seq')"
    )
    with pool.get() as conn:
        pid = pg_scenarios.query(conn, "SELECT pg_backend_pid()")[0][0]
        conn.rollback()

    def pings() -> int:
        rows = pg_scenarios.admin(admin_connect, "SELECT last_value FROM ka_seq")
        return int(rows[0][0]) - int(start)

    wait_until(lambda: pings() >= 3, 10, "three keepalive pings")
    states = pg_scenarios.admin(
        admin_connect, "SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,)
    )
    assert states == [("idle",)]  # never left "idle in transaction" between pings
    assert pool.stats().discarded.keepalive == 0


def test_exc_classes_default_to_the_drivers_connection_errors(
    make_pool: Any, psycopg2: Any
) -> None:
    pool = make_pool(size=1)
    assert pool.driver is psycopg2
    assert pool.exc_classes == (psycopg2.OperationalError, psycopg2.InterfaceError, OSError)


def test_sql_errors_are_not_disconnects(make_pool: Any, psycopg2: Any) -> None:
    pool = make_pool(size=1)
    errors: list[BaseException] = []
    for sql in (
        "SELECT 1/0",
        "SELECT * FROM no_such_table",
        "SET LOCAL statement_timeout = 10; SELECT pg_sleep(1)",  # QueryCanceled: Operational
        "SELECT syntax error",
    ):
        with pool.get() as conn:
            try:
                pg_scenarios.query(conn, sql)
            except psycopg2.Error as exc:
                errors.append(exc)
    assert len(errors) == 4
    assert isinstance(errors[2], psycopg2.OperationalError)
    assert [pool._is_disconnect(e) for e in errors] == [False] * 4
    assert pool.stats().created == 1


def test_pool_timeout_inside_a_block_is_not_a_disconnect(make_pool: Any) -> None:
    pool = make_pool(size=1)
    assert pool._is_disconnect(PoolTimeout("another pool")) is False


def test_pg8000_under_monkey_patching(postgres_server: PostgresServer) -> None:
    pytest.importorskip("pg8000")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.contrib.pg8000_run", "127.0.0.1", str(postgres_server.port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    overlap = results["overlap"]
    assert overlap["backends"] == 10
    assert overlap["max_concurrent"] == 10
    assert overlap["elapsed"] < overlap["serial"] / 3
    assert results["created"] == 10
    plain = results["terminate_none"]
    assert len(plain["errors"]) == 1, plain
    assert plain["discarded_error"] == 1
    retried = results["terminate_retrying"]
    assert retried["errors"] == [], retried
    assert retried["disconnects"] == 1
    interrupted = results["interrupted"]
    assert interrupted["timed_out"] is True
    assert "next_rows" not in interrupted, interrupted  # never the late 'late' row
    assert interrupted["next_is_connection_error"] is True, interrupted
    assert "interrupted" in interrupted["next_message"]
    assert interrupted["other_rows"] == [["other"]]
    assert interrupted["other_pid_differs"] is True
    assert interrupted["discarded"] == 1
    assert results["name"] == f"postgresql 127.0.0.1:{postgres_server.port}/postgres"
    assert results["release_check"] == {"same_backend": False, "discarded": 2}
    leaks = results["no_leaks"]
    assert leaks["state_after_release"] == "idle"
    assert leaks["rows"] == 0
    assert leaks["application_name"] != "leaked"
    assert leaks["same_backend_after_sql_error"] is True
    assert leaks["autocommit_restored"] is True
    assert leaks["rows_after_explicit_begin"] == 0
    assert leaks["created"] == 1


# -- the classifier, and generic DB-API behaviour without a server ---------------------------------


class FakeError(Exception):
    pass


class OperationalError(FakeError):
    pass


class InterfaceError(FakeError):
    pass


class DatabaseError(FakeError):
    pass


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectionResetError(), True),
        (EOFError(), True),
        (OperationalError("server closed the connection unexpectedly"), True),
        (OperationalError("SSL SYSCALL error: EOF detected"), True),
        (InterfaceError("connection already closed"), True),
        (InterfaceError("network error"), True),
        (OperationalError("MySQL server has gone away"), True),
        (OperationalError("deadlock detected"), False),
        (OperationalError("canceling statement due to statement timeout"), False),
        (DatabaseError("server closed the connection"), False),  # not a connection class
        (DatabaseError({"S": "FATAL", "C": "57P01", "M": "terminating connection"}), True),
        (DatabaseError({"S": "ERROR", "C": "22012", "M": "division by zero"}), False),
        (DatabaseError({"S": "FATAL", "C": "08006", "M": "connection failure"}), True),
        (ValueError("closed"), False),
    ],
)
def test_is_disconnect(exc: BaseException, expected: bool) -> None:
    assert is_disconnect(exc) is expected


def test_sqlstate_of() -> None:
    err = OperationalError("x")
    err.pgcode = "57P01"  # type: ignore[attr-defined]
    assert sqlstate_of(err) == "57P01"
    assert sqlstate_of(DatabaseError({"C": "42P01"})) == "42P01"
    assert sqlstate_of(ValueError("x")) is None


class FakeConn:
    """A DB-API connection stand-in that records rollbacks and can fail them."""

    def __init__(self) -> None:
        self.rollbacks = 0
        self.fail_rollback = False
        self.closed = False
        self.autocommit = False

    def rollback(self) -> None:
        self.rollbacks += 1
        if self.fail_rollback:
            raise OperationalError("server closed the connection unexpectedly")

    def cursor(self) -> Any:
        raise AssertionError("not used")

    def close(self) -> None:
        self.closed = True


def fake_connect() -> FakeConn:
    return FakeConn()


def test_generic_driver_rollback_on_release_and_discard_when_it_fails(closing: list[Any]) -> None:
    pool = DbApiPool(fake_connect, size=1, ping_query=None)
    closing.append(pool)
    assert driver_module(fake_connect) is sys.modules[__name__]
    assert pool.exc_classes == (OperationalError, InterfaceError, OSError)
    with pool.get() as conn:
        pass
    assert conn.rollbacks == 1
    with pool.get() as again:
        assert again is conn
        again.autocommit = True
        again.fail_rollback = True
    assert conn.closed  # rollback failed: discarded
    assert pool.stats().discarded.release == 1
    with pool.get() as fresh:
        assert fresh is not conn
        assert fresh.autocommit is False


def test_bad_arguments(closing: list[Any]) -> None:
    with pytest.raises(TypeError, match="connect"):
        DbApiPool("not callable")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ping_query"):
        DbApiPool(fake_connect, ping_query="  ")
    pool = DbApiPool(fake_connect, size=1)
    closing.append(pool)
    with pytest.raises(ValueError, match="max_failures"):
        pool.retrying(max_failures=-1)


def test_retrying_reruns_only_on_disconnects(closing: list[Any]) -> None:
    pool = DbApiPool(fake_connect, size=1, ping_query=None)
    closing.append(pool)
    calls: list[int] = []

    @pool.retrying(max_failures=2, interval=0)
    def flaky(fail_with: BaseException) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise fail_with
        return "ok"

    assert flaky(InterfaceError("connection already closed")) == "ok"
    assert len(calls) == 2
    calls.clear()
    with pytest.raises(OperationalError, match="deadlock"):
        flaky(OperationalError("deadlock detected"))
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(PoolTimeout):
        flaky(PoolTimeout("busy"))
    assert len(calls) == 1
    gevent.sleep(0)
