"""DbApiPool through a real PgBouncer in transaction pooling mode (in front of real PostgreSQL).

What works (queries, transactions, many pooled clients over few server connections), what must
be avoided (session state: ``SET`` without ``LOCAL``, server-side prepared statements), and
what the pool does on PgBouncer's errors (restart, a server it cannot reach, a full pool).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gevent
import pytest

from geventconnpool import PoolTimeout
from tests.servers import PgBouncerServer, PostgresServer, free_port, wait_until

from .pgbouncer_load import admin_figures, make_dbapi_pool, run

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(90)]


@pytest.fixture
def bouncer_factory(pgbouncer: PgBouncerServer, postgres_server: PostgresServer) -> Iterator[Any]:
    """Make more PgBouncers with other settings (the ``pgbouncer`` fixture ensures the binary)."""
    made: list[PgBouncerServer] = []

    def make(**kwargs: Any) -> PgBouncerServer:
        server = PgBouncerServer(pgbouncer.binary, postgres_server, **kwargs)
        made.append(server)
        server.start()
        return server

    yield make
    for server in made:
        server.destroy()


@pytest.fixture
def pools() -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for pool in made:
        pool.close()


def query(pool: Any, sql: str, *params: Any) -> list[Any]:
    with pool.get(10) as conn:
        cur = conn.cursor()
        cur.execute(sql, params or None)
        rows = cur.fetchall() if cur.description else []
        cur.close()
        conn.commit()
    return list(rows)


def test_queries_and_transactions_from_40_clients_over_10_server_connections(
    pgbouncer: PgBouncerServer, postgres_server: PostgresServer, pools: list[Any]
) -> None:
    pool = make_dbapi_pool(pgbouncer.dsn, max_size=40, timeout=10)
    pools.append(pool)
    query(pool, "CREATE TABLE IF NOT EXISTS bouncer_t (n int)")
    query(pool, "TRUNCATE bouncer_t")

    def work(n: int) -> None:
        with pool.get(10) as conn:
            cur = conn.cursor()
            cur.execute("INSERT INTO bouncer_t VALUES (%s)", (n,))
            cur.execute("INSERT INTO bouncer_t VALUES (%s)", (-n,))
            conn.commit()
            cur.execute("INSERT INTO bouncer_t VALUES (1000000)")
            conn.rollback()  # a rolled-back transaction leaves nothing
            cur.close()

    gevent.joinall([gevent.spawn(work, n) for n in range(1, 401)], timeout=60, raise_error=True)
    assert query(pool, "SELECT count(*), sum(n), max(n) FROM bouncer_t") == [(800, 0, 400)]
    servers = admin_figures(postgres_server.dsn, pgbouncer.port)[2]
    assert servers <= 10 and pool.stats().open <= 40


def test_set_without_local_leaks_to_another_client(bouncer_factory: Any, pools: list[Any]) -> None:
    bouncer = bouncer_factory(pool_size=1)  # one server connection: every client shares it
    a = make_dbapi_pool(bouncer.dsn, size=1)
    b = make_dbapi_pool(bouncer.dsn, size=1)
    pools += [a, b]
    query(a, "SET statement_timeout = '4321ms'")  # a session setting, on the server connection
    assert query(b, "SHOW statement_timeout") == [("4321ms",)]  # another client sees it
    query(a, "SET LOCAL lock_timeout = '1234ms'")  # LOCAL: ends with the transaction
    assert query(b, "SHOW lock_timeout") == [("0",)]
    query(a, "RESET ALL")


def test_server_side_prepared_statements_collide_across_clients(
    bouncer_factory: Any, pools: list[Any]
) -> None:
    import psycopg2

    bouncer = bouncer_factory(pool_size=1)
    a = make_dbapi_pool(bouncer.dsn, size=1)
    b = make_dbapi_pool(bouncer.dsn, size=1)
    pools += [a, b]
    with a.get(10) as conn:
        cur = conn.cursor()
        cur.execute("PREPARE plan AS SELECT 1")
        conn.commit()
    with pytest.raises(psycopg2.errors.DuplicatePreparedStatement), b.get(10) as conn:
        conn.cursor().execute("PREPARE plan AS SELECT 2")  # b never prepared it
    assert query(b, "EXECUTE plan") == [(1,)]  # and b can run a's statement
    query(a, "DEALLOCATE ALL")


def test_pgbouncer_restart_dead_connections_are_discarded_retry_hides_it(
    pgbouncer: PgBouncerServer, pools: list[Any]
) -> None:
    pool = make_dbapi_pool(pgbouncer.dsn, min_size=4, max_size=4, reconnect_delay=0.05)
    pools.append(pool)
    pool.wait_ready(10)
    pgbouncer.restart()  # SIGKILL then start on the same port: every client connection is dead

    @pool.retrying(max_failures=3, interval=0.05)
    def one() -> Any:
        return query(pool, "SELECT 1")

    assert [one() for _ in range(8)] == [[(1,)]] * 8
    held = [pool.get(10) for _ in range(4)]  # every connection, the dead cold ones included
    for ctx in held:
        query_conn = ctx.__enter__()
        with query_conn.cursor() as cur:
            cur.execute("SELECT 1")
    for ctx in held:
        ctx.__exit__(None, None, None)
    stats = pool.stats()
    assert stats.discarded.check + stats.discarded.error >= 4  # the dead ones never served


def test_a_query_in_flight_when_pgbouncer_dies_is_a_disconnect(
    pgbouncer: PgBouncerServer, pools: list[Any]
) -> None:
    pool = make_dbapi_pool(pgbouncer.dsn, size=1)
    pools.append(pool)
    killer = gevent.spawn_later(0.5, pgbouncer.stop)
    with pytest.raises(Exception) as info, pool.get(10) as conn:
        conn.cursor().execute("SELECT pg_sleep(5)")
    killer.join()
    assert pool._is_disconnect(info.value), repr(info.value)
    assert pool.stats().discarded.error == 1  # (a replacement is being connected)


def test_a_server_pgbouncer_cannot_reach_is_a_failed_connect(
    bouncer_factory: Any, pools: list[Any]
) -> None:
    dead = f"host=127.0.0.1 port={free_port()} dbname=postgres user=postgres"
    bouncer = bouncer_factory(
        databases={"down": dead}, settings={"server_login_retry": "1", "query_wait_timeout": "1"}
    )
    pool = make_dbapi_pool(
        bouncer.dsn.replace("dbname=postgres", "dbname=down"),
        size=1,
        connect_timeout=10,
        reconnect_delay=0.2,
    )
    pools.append(pool)
    with pytest.raises(PoolTimeout):  # PgBouncer accepts, then fails the login after 1 s
        pool.get(3).__enter__()
    wait_until(lambda: pool.stats().connect_failures >= 2, 15, "two failed connects")
    assert pool.stats().idle == pool.stats().in_use == 0


def test_full_server_pool_query_wait_timeout_discards_the_connection(
    bouncer_factory: Any, pools: list[Any]
) -> None:
    bouncer = bouncer_factory(pool_size=1, settings={"query_wait_timeout": "1"})
    holder = make_dbapi_pool(bouncer.dsn, size=1)
    waiter = make_dbapi_pool(bouncer.dsn, size=1)
    pools += [holder, waiter]
    waiter.wait_ready(10)
    with holder.get(10) as conn:
        conn.cursor().execute("SELECT 1")  # a transaction left open holds the one server conn
        with pytest.raises(Exception) as info, waiter.get(10) as other:
            other.cursor().execute("SELECT 2")
        conn.rollback()
    assert "query_wait_timeout" in str(info.value), repr(info.value)
    assert waiter._is_disconnect(info.value)
    assert waiter.stats().discarded.error == 1
    assert query(waiter, "SELECT 3") == [(3,)]


def test_many_processes_share_ten_server_connections(
    pgbouncer: PgBouncerServer, postgres_server: PostgresServer
) -> None:
    figures = run(pgbouncer.dsn, postgres_server.dsn, pgbouncer.port, 3, 20, 1.5)
    assert figures["errors"] == {} and figures["transactions"] > 0
    assert figures["peak_bouncer_servers"] <= 10  # (backends: the session's server is shared)
    assert figures["peak_bouncer_clients"] > 10  # more clients than server connections
