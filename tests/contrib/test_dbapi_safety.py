"""DbApiPool's conventions and guards against real PostgreSQL (psycopg2 + psycogreen here; pg8000
in tests/contrib/test_dbapi.py's subprocess): pool options as keywords, driver arguments in one
place, names from the address, transaction state checked after the hooks, interrupted queries."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import gevent
import pytest

from geventconnpool import PoolTimeout
from geventconnpool.contrib.dbapi import DbApiPool, TransactionLeftOpen, default_name
from tests.contrib import pg_scenarios
from tests.servers import PostgresServer, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]


# -- the convention -------------------------------------------------------------------------------


def test_pool_options_are_keywords_and_driver_arguments_positional(
    psycopg2: Any, postgres_server: PostgresServer, closing: list[Any]
) -> None:
    pool = DbApiPool(psycopg2.connect, postgres_server.dsn, size=2, timeout=5)
    closing.append(pool)
    assert (pool.max_size, pool.timeout) == (2, 5.0)
    with pool.get() as conn:
        assert pg_scenarios.query(conn, "SELECT 1") == [(1,)]
        conn.rollback()


def test_driver_keywords_go_in_connect_kwargs(
    psycopg2: Any, postgres_server: PostgresServer, closing: list[Any]
) -> None:
    params = {**postgres_server.params, "dbname": postgres_server.params["database"]}
    del params["database"]
    params["connect_timeout"] = 5  # a driver argument named like a pool option
    pool = DbApiPool(psycopg2.connect, connect_kwargs=params, size=1, connect_timeout=3)
    closing.append(pool)
    assert pool.connect_timeout == 3.0
    with pool.get() as conn:
        assert conn.get_dsn_parameters()["connect_timeout"] == "5"
        conn.rollback()


@pytest.mark.parametrize("key", ["host", "dsn", "sslmode", "sizee"])
def test_a_stray_keyword_is_a_type_error_naming_it(psycopg2: Any, key: str) -> None:
    with pytest.raises(TypeError, match=rf"'{key}'.*connect_kwargs"):
        DbApiPool(psycopg2.connect, "dbname=x", size=1, **{key: "x"})


def test_the_pool_options_form_still_works_with_a_deprecation_warning(
    psycopg2: Any, postgres_server: PostgresServer, closing: list[Any]
) -> None:
    with pytest.warns(DeprecationWarning, match="connect_kwargs"):
        pool = DbApiPool(
            psycopg2.connect,
            pool_options={"size": 1, "timeout": 5},
            host="127.0.0.1",
            port=postgres_server.port,
            user="postgres",
            dbname="postgres",
        )
    closing.append(pool)
    assert pool.timeout == 5.0
    with pool.get() as conn:
        assert pg_scenarios.query(conn, "SELECT 2") == [(2,)]
        conn.rollback()


def test_a_password_that_is_not_a_str_is_refused_without_echo(psycopg2: Any) -> None:
    with pytest.raises(TypeError, match="password") as info:
        DbApiPool(psycopg2.connect, connect_kwargs={"password": bytearray(b"s3cret")}, size=1)
    assert "s3cret" not in str(info.value)


# -- names ----------------------------------------------------------------------------------------


def test_default_name_from_the_dsn(
    psycopg2: Any, postgres_server: PostgresServer, closing: list[Any]
) -> None:
    pool = DbApiPool(psycopg2.connect, postgres_server.dsn, size=1)
    closing.append(pool)
    assert pool.name == f"postgresql 127.0.0.1:{postgres_server.port}/postgres"
    assert pool.name in repr(pool)
    named = DbApiPool(psycopg2.connect, postgres_server.dsn, size=1, name="orders")
    closing.append(named)
    assert named.name == "orders"


PG = "postgresql"
SOCK = "/run/postgresql/.s.PGSQL.5432"
NAME_CASES = [
    ("psycopg2", ("host=db port=6432 dbname=app password=x",), {}, f"{PG} db:6432/app"),
    ("psycopg2", ("host='db' dbname='my app'",), {}, f"{PG} db:5432/my app"),
    ("psycopg2", ("postgresql://u:secret@db.internal:5433/app",), {}, f"{PG} db.internal:5433/app"),
    ("pg8000.dbapi", (), {"host": "10.0.0.5", "database": "app"}, f"{PG} 10.0.0.5:5432/app"),
    ("pg8000.dbapi", (), {"unix_sock": SOCK, "database": "app"}, f"{PG} {SOCK}/app"),
    ("psycopg2", ("dbname=app",), {}, PG),
    ("pymysql", (), {"host": "db", "port": 3306, "db": "shop"}, "pymysql db:3306/shop"),
    ("sqlite3", (":memory:",), {}, "sqlite3"),
]  # fmt: skip


@pytest.mark.parametrize(("module", "args", "kwargs", "expected"), NAME_CASES)
def test_default_name(
    module: str, args: tuple[Any, ...], kwargs: dict[str, Any], expected: str
) -> None:
    name = default_name(types.ModuleType(module), args, kwargs)
    assert name == expected
    assert "secret" not in name


def test_connect_failure_log_names_the_address(
    psycopg2: Any, closing: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    from tests.servers import free_port

    port = free_port()
    pool = DbApiPool(psycopg2.connect, f"host=127.0.0.1 port={port} dbname=app", size=1)
    closing.append(pool)
    with pytest.raises(PoolTimeout):
        pool.wait_ready(timeout=0.5)
    lines = [r.getMessage() for r in caplog.records if "connect failed" in r.getMessage()]
    assert lines and all(f"127.0.0.1:{port}/app" in line for line in lines), lines


# -- transaction state after the hooks ---------------------------------------------------------


def test_a_transaction_left_open_by_on_connect_fails_the_connect(
    psycopg2: Any, postgres_server: PostgresServer, closing: list[Any]
) -> None:
    class Setup(DbApiPool[Any]):
        def _on_connect(self, conn: Any) -> None:
            super()._on_connect(conn)
            pg_scenarios.query(conn, "SET search_path TO public")  # opens a transaction

    pool = Setup(psycopg2.connect, postgres_server.dsn, size=1)
    closing.append(pool)
    wait_until(lambda: pool.stats().connect_failures >= 1, 5, "a failed connect")
    with pytest.raises(PoolTimeout) as info:  # now, not after waiting out a timeout
        pool.wait_ready(timeout=0.01)
    assert isinstance(info.value.__cause__, TransactionLeftOpen)
    assert "_on_connect" in str(info.value.__cause__)

    class Committed(DbApiPool[Any]):
        def _on_connect(self, conn: Any) -> None:
            pg_scenarios.query(conn, "SET search_path TO public")
            super()._on_connect(conn)  # super() in the middle: checked after the outer hook
            conn.commit()

    good = Committed(psycopg2.connect, postgres_server.dsn, size=1)
    closing.append(good)
    good.wait_ready(timeout=10)


def test_a_transaction_left_open_by_on_release_discards_the_connection(
    psycopg2: Any, postgres_server: PostgresServer, closing: list[Any], caplog: Any
) -> None:
    class Sloppy(DbApiPool[Any]):
        def _on_release(self, conn: Any) -> bool:
            ok = super()._on_release(conn)
            pg_scenarios.query(conn, "SELECT 1")  # after the built-in rollback: a new transaction
            return ok

    pool = Sloppy(psycopg2.connect, postgres_server.dsn, size=1)
    closing.append(pool)
    with caplog.at_level(logging.WARNING):
        with pool.get() as first:
            pass
        with pool.get() as second:
            assert second is not first
            assert second.get_transaction_status() == 0  # idle
    assert pool.stats().discarded.release == 2  # each release left one open
    lines = [r for r in caplog.records if "still in a transaction" in r.getMessage()]
    assert len(lines) == 2  # one line per discarded connection
    assert {r.name for r in lines} == {f"geventconnpool.{pool.name}"}


class FakeConn:
    """A connection of a driver that does not expose its transaction status."""

    def __init__(self) -> None:
        self.rollbacks = 0
        self.closed = False

    def rollback(self) -> None:
        self.rollbacks += 1

    def close(self) -> None:
        self.closed = True


def test_without_a_status_an_overridden_release_is_followed_by_a_rollback(
    closing: list[Any],
) -> None:
    class Hooked(DbApiPool[FakeConn]):
        def _on_release(self, conn: FakeConn) -> bool:
            return super()._on_release(conn)

    plain = DbApiPool(FakeConn, size=1, ping_query=None)
    hooked = Hooked(FakeConn, size=1, ping_query=None)
    closing.extend([plain, hooked])
    with plain.get() as a:
        pass
    with hooked.get() as b:
        pass
    assert a.rollbacks == 1  # the built-in rollback is the last thing: no second one
    assert b.rollbacks == 2  # the override may have opened one: rolled back after it


# -- interrupted queries --------------------------------------------------------------------------


def test_a_caught_timeout_in_a_green_query_leaves_no_late_reply(
    psycopg2: Any, postgres_server: PostgresServer, closing: list[Any]
) -> None:
    pool = DbApiPool(psycopg2.connect, postgres_server.dsn, size=1, check_idle_after=None)
    closing.append(pool)
    seen = pg_scenarios.interrupted(pool)
    assert seen["timed_out"] is True
    assert "next_rows" not in seen, seen  # psycopg2 closes a connection whose wait was broken
    assert seen["next_is_connection_error"] is True
    assert seen["other_rows"] == [("other",)]
    assert seen["other_pid_differs"] is True
    assert seen["discarded"] == 1


# -- psycopg2 without psycogreen ------------------------------------------------------------------

_NO_WAIT = """
import logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(message)s")
import psycopg2
if sys.argv[1] == "green":
    import psycogreen.gevent
    psycogreen.gevent.patch_psycopg()
from geventconnpool.contrib.dbapi import DbApiPool
pools = [DbApiPool(psycopg2.connect, sys.argv[2], size=1) for _ in range(3)]
for pool in pools:
    pool.close()
"""


@pytest.mark.parametrize("mode", ["blocking", "green"])
def test_psycopg2_without_a_wait_callback_warns_once(
    psycopg2: Any, postgres_server: PostgresServer, mode: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _NO_WAIT, mode, postgres_server.dsn],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    warnings = [line for line in proc.stdout.splitlines() if "wait callback" in line]
    if mode == "blocking":
        assert len(warnings) == 1, proc.stdout
        assert warnings[0].startswith("WARNING")
        assert "psycogreen.gevent.patch_psycopg()" in warnings[0]
    else:
        assert warnings == [], proc.stdout


def test_retrying_logs_under_the_pool_logger(closing: list[Any], caplog: Any) -> None:
    pool = DbApiPool(FakeConn, size=1, ping_query=None, name="orders")
    closing.append(pool)
    calls: list[int] = []

    @pool.retrying(max_failures=1, interval=0)
    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionResetError("reset")
        return "ok"

    with caplog.at_level(logging.INFO):
        assert flaky() == "ok"
    lines = [r for r in caplog.records if "attempt 1 of 2 failed" in r.getMessage()]
    assert [r.name for r in lines] == ["geventconnpool.orders"]
    gevent.sleep(0)


def test_retrying_gives_up_with_one_info_line(closing: list[Any], caplog: Any) -> None:
    pool = DbApiPool(FakeConn, size=1, ping_query=None, name="{orders}")
    closing.append(pool)
    calls: list[int] = []

    @pool.retrying(max_failures=2, interval=0)
    def broken() -> None:
        calls.append(1)
        raise ConnectionResetError("reset")

    with caplog.at_level(logging.INFO), pytest.raises(ConnectionResetError):
        broken()
    assert len(calls) == 3
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name.endswith("{orders}")]
    assert lines[-1] == (logging.INFO, "pool '{orders}': broken gave up after 2 retries")
    assert [text.rsplit("; ", 1)[-1] for _, text in lines[:-1]] == [
        "attempt 1 of 3 failed",
        "attempt 2 of 3 failed",
        "attempt 3 of 3 failed",
    ]
    gevent.sleep(0)


def test_an_override_that_ignores_super_still_discards_an_interrupted_connection(
    psycopg2: Any, postgres_server: PostgresServer, closing: list[Any]
) -> None:
    class Careless(DbApiPool[Any]):
        def _on_release(self, conn: Any) -> bool:
            super()._on_release(conn)
            return True  # ignores that the base said "discard"

    pool = Careless(psycopg2.connect, postgres_server.dsn, size=1, check_idle_after=None)
    closing.append(pool)
    with pool.get() as conn:
        try:
            with gevent.Timeout(0.05):
                pg_scenarios.query(conn, "SELECT pg_sleep(1)")
        except gevent.Timeout:
            pass
    with pool.get() as fresh:
        assert fresh is not conn
        assert pg_scenarios.query(fresh, "SELECT 3") == [(3,)]
        fresh.rollback()
    assert pool.stats().discarded.release == 1
