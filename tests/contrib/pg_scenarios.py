"""PostgreSQL scenarios shared by the psycopg2 tests (in process) and the pg8000 run (in a
monkey-patched subprocess: ``python -m tests.contrib.pg8000_run HOST PORT``).

Plain DB-API calls only (``cursor``/``execute``/``fetchall``/``%s`` parameters), so that both
drivers run the very same code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent

from geventconnpool import retry
from geventconnpool.contrib.dbapi import DbApiPool


def query(conn: Any, sql: str, params: tuple[Any, ...] | None = None) -> list[Any]:
    cur = conn.cursor()
    try:
        if params is None:
            cur.execute(sql)
        else:
            cur.execute(sql, params)
        rows: list[Any] = list(cur.fetchall()) if cur.description is not None else []
        return rows
    finally:
        cur.close()


def admin(connect: Callable[[], Any], sql: str, params: tuple[Any, ...] | None = None) -> list[Any]:
    """Run one statement on a connection of its own, in autocommit."""
    conn = connect()
    try:
        conn.autocommit = True
        return query(conn, sql, params)
    finally:
        conn.close()


def overlap(pool: DbApiPool, greenlets: int = 100, seconds: float = 0.05) -> dict[str, Any]:
    """``greenlets`` callers each run ``pg_sleep(seconds)``: how many ran at once, on how many
    backends, and how long it all took."""
    spans: list[tuple[float, float, int]] = []

    def one() -> None:
        with pool.get(timeout=30) as conn:
            start = time.monotonic()
            ((pid, _),) = query(conn, "SELECT pg_backend_pid(), pg_sleep(%s)", (seconds,))
            spans.append((start, time.monotonic(), pid))
            conn.commit()

    t0 = time.monotonic()
    gevent.joinall([gevent.spawn(one) for _ in range(greenlets)], raise_error=True)
    elapsed = time.monotonic() - t0
    starts = sorted(s for s, _, _ in spans)
    most = max(sum(1 for s, e, _ in spans if s <= t < e) for t in starts)
    return {
        "calls": len(spans),
        "backends": len({pid for _, _, pid in spans}),
        "max_concurrent": most,
        "elapsed": elapsed,
        "serial": greenlets * seconds,
    }


def terminate_one(
    pool: DbApiPool, connect: Callable[[], Any], rounds: int = 10, mode: str = "none"
) -> dict[str, Any]:
    """Kill one pooled backend with ``pg_terminate_backend``, then run ``rounds`` rounds of one
    call per pooled connection (all held at once, so the dead one is handed out). ``mode``:
    "none", "retry" (``@retry(exc_classes=pool.exc_classes)``) or "retrying"
    (``pool.retrying()``). Returns the errors callers saw and the disconnects they hit."""
    size = pool.max_size or 1
    holds = [pool.get(timeout=10) for _ in range(size)]
    conns = [h.__enter__() for h in holds]
    pids = [query(c, "SELECT pg_backend_pid()")[0][0] for c in conns]
    for c in conns:
        c.rollback()
    for h in holds:
        h.__exit__(None, None, None)
    victim = pids[0]
    admin(connect, "SELECT pg_terminate_backend(%s)", (victim,))
    deadline = time.monotonic() + 10
    while admin(connect, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (victim,))[0][0]:
        if time.monotonic() > deadline:
            raise TimeoutError("the terminated backend never went away")
        gevent.sleep(0.01)

    errors: list[str] = []
    disconnects = [0]

    def call() -> int:
        try:
            with pool.get(timeout=10) as conn:
                ((pid, _),) = query(conn, "SELECT pg_backend_pid(), pg_sleep(0.01)")
                conn.rollback()
                return int(pid)
        except Exception as exc:
            if pool._is_disconnect(exc):
                disconnects[0] += 1
            raise

    if mode == "retry":  # the core's decorator, by exception class
        guarded = retry(exc_classes=pool.exc_classes, max_failures=3, interval=0.01)(call)
    elif mode == "retrying":  # DbApiPool's own, by _is_disconnect
        guarded = pool.retrying(max_failures=3, interval=0.01)(call)
    else:
        guarded = call

    def caller() -> None:
        try:
            guarded()
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}".strip())

    for _ in range(rounds):
        gevent.joinall([gevent.spawn(caller) for _ in range(size)])
    stats = pool.stats()
    return {
        "victim": victim,
        "errors": errors,
        "disconnects": disconnects[0],
        "discarded_error": stats.discarded.error,
        "discarded_check": stats.discarded.check,
    }


def no_leaks(pool: DbApiPool, connect: Callable[[], Any]) -> dict[str, Any]:
    """Holders that leave a transaction open, or in error, or switch to autocommit and BEGIN:
    what does the next holder (on the same backend) see?"""
    admin(connect, "CREATE TABLE IF NOT EXISTS leak_t (x int)")
    admin(connect, "TRUNCATE leak_t")
    seen: dict[str, Any] = {}
    with pool.get() as conn:
        seen["pid"] = query(conn, "SELECT pg_backend_pid()")[0][0]
        query(conn, "INSERT INTO leak_t VALUES (1)")
        query(conn, "SET application_name = 'leaked'")  # transactional: rolled back too
        # no commit: the transaction is left open
    seen["state_after_release"] = admin(
        connect, "SELECT state FROM pg_stat_activity WHERE pid = %s", (seen["pid"],)
    )[0][0]
    with pool.get() as conn:
        seen["same_backend"] = query(conn, "SELECT pg_backend_pid()")[0][0] == seen["pid"]
        seen["rows"] = query(conn, "SELECT count(*) FROM leak_t")[0][0]
        seen["application_name"] = query(conn, "SHOW application_name")[0][0]
        conn.rollback()
    try:
        with pool.get() as conn:
            query(conn, "SELECT 1/0")  # an SQL error: the transaction is aborted
    except Exception as exc:
        seen["sql_error"] = type(exc).__name__
    with pool.get() as conn:
        seen["same_backend_after_sql_error"] = (
            query(conn, "SELECT pg_backend_pid()")[0][0] == seen["pid"]
        )
        seen["works_after_sql_error"] = query(conn, "SELECT 41 + 1")[0][0]
        conn.rollback()
    with pool.get() as conn:
        conn.autocommit = True
        query(conn, "BEGIN")
        query(conn, "INSERT INTO leak_t VALUES (2)")
    with pool.get() as conn:
        seen["autocommit_restored"] = conn.autocommit is False
        seen["rows_after_explicit_begin"] = query(conn, "SELECT count(*) FROM leak_t")[0][0]
        conn.rollback()
    seen["state_at_end"] = admin(
        connect, "SELECT state FROM pg_stat_activity WHERE pid = %s", (seen["pid"],)
    )[0][0]
    stats = pool.stats()
    seen["created"] = stats.created
    seen["discarded_error"] = stats.discarded.error
    return seen


def interrupted(pool: DbApiPool[Any]) -> dict[str, Any]:
    """A holder catches a ``gevent.Timeout`` during ``pg_sleep`` and queries again on the same
    connection; then the next holder queries. Nobody may see the late ``'late'`` row."""
    seen: dict[str, Any] = {}
    with pool.get() as conn:
        seen["pid"] = query(conn, "SELECT pg_backend_pid()")[0][0]
        conn.rollback()
        try:
            with gevent.Timeout(0.1):
                query(conn, "SELECT 'late', pg_sleep(0.5)")
        except gevent.Timeout:
            seen["timed_out"] = True
        try:
            seen["next_rows"] = query(conn, "SELECT 'next'")
        except Exception as exc:
            seen["next_error"] = type(exc).__name__
            seen["next_message"] = str(exc)
            seen["next_is_connection_error"] = isinstance(exc, pool.exc_classes)
    with pool.get() as conn:
        seen["other_rows"] = query(conn, "SELECT 'other'")
        seen["other_pid_differs"] = query(conn, "SELECT pg_backend_pid()")[0][0] != seen["pid"]
        conn.rollback()
    stats = pool.stats()
    seen["discarded"] = stats.discarded.total
    return seen


def release_check(connect: Callable[..., Any], params: dict[str, Any]) -> dict[str, Any]:
    """An ``_on_release`` override that leaves a transaction open: the connection is discarded."""

    class Sloppy(DbApiPool[Any]):
        def _on_release(self, conn: Any) -> bool:
            ok = super()._on_release(conn)
            query(conn, "SELECT 1")  # opens a transaction, never ended
            return ok

    pool = Sloppy(connect, connect_kwargs=params, size=1)
    try:
        with pool.get() as conn:
            first = query(conn, "SELECT pg_backend_pid()")[0][0]
        with pool.get() as conn:
            second = query(conn, "SELECT pg_backend_pid()")[0][0]
            conn.rollback()
        return {"same_backend": first == second, "discarded": pool.stats().discarded.release}
    finally:
        pool.close()


def main(argv: list[str]) -> None:
    """pg8000 under gevent's monkey-patching: run every scenario, print the results as JSON."""
    import json

    import pg8000.dbapi

    host, port = argv
    params = {"host": host, "port": int(port), "user": "postgres", "database": "postgres"}

    def connect() -> Any:
        return pg8000.dbapi.connect(**params)

    results: dict[str, Any] = {}
    pool = DbApiPool(pg8000.dbapi.connect, connect_kwargs=params, size=10)
    pool.wait_ready(timeout=20)
    results["overlap"] = overlap(pool)
    results["created"] = pool.stats().created
    pool.close()
    for mode in ("none", "retrying"):
        pool = DbApiPool(pg8000.dbapi.connect, connect_kwargs=params, size=3, check_idle_after=None)
        pool.wait_ready(timeout=20)
        results[f"terminate_{mode}"] = terminate_one(pool, connect, mode=mode)
        pool.close()
    pool = DbApiPool(pg8000.dbapi.connect, connect_kwargs=params, size=1)
    results["no_leaks"] = no_leaks(pool, connect)
    pool.close()
    pool = DbApiPool(pg8000.dbapi.connect, connect_kwargs=params, size=1, check_idle_after=None)
    results["interrupted"] = interrupted(pool)
    pool.close()
    pool = DbApiPool(pg8000.dbapi.connect, connect_kwargs=params, size=1)
    results["name"] = str(pool.name)
    results["release_check"] = release_check(pg8000.dbapi.connect, params)
    pool.close()
    print(json.dumps(results, default=str))
