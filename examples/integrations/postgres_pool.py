"""DbApiPool: DB-API connections to PostgreSQL shared by many greenlets.

psycopg2 is made cooperative by psycogreen; pg8000 (pure Python) by gevent's monkey-patching.
Needs: a PostgreSQL server (``make servers-up`` starts one on 127.0.0.1:5432, user ``postgres``,
no password) and the ``postgres`` extra (psycopg2, psycogreen: ``pip install -e '.[postgres]'``;
pg8000 for ``--driver pg8000``: ``pip install pg8000``). Run it from the repository root::

    make servers-up                                     # once; make servers-down
    python examples/integrations/postgres_pool.py
    python examples/integrations/postgres_pool.py --dsn "host=127.0.0.1 user=postgres"
    python examples/integrations/postgres_pool.py --driver pg8000 --host 127.0.0.1 --port 5432
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/_needs.py
import _needs


def driver(args: argparse.Namespace) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """The driver's connect function and its arguments, made cooperative first."""
    if args.driver == "pg8000":
        _needs.package("pg8000", "pip install pg8000")
        from gevent import monkey

        monkey.patch_all()  # before pg8000 is imported: its sockets become gevent's
        import pg8000.dbapi

        kwargs = {"host": args.host, "port": args.port, "user": args.user, "database": args.db}
        return pg8000.dbapi.connect, (), kwargs
    for module in ("psycopg2", "psycogreen"):
        _needs.package(module, "pip install -e '.[postgres]'  (the postgres extra)")
    import psycogreen.gevent
    import psycopg2

    psycogreen.gevent.patch_psycopg()  # psycopg2 waits for the server through gevent
    dsn = args.dsn or f"host={args.host} port={args.port} user={args.user} dbname={args.db}"
    return psycopg2.connect, (dsn,), {}


def query(conn: Any, sql: str) -> list[Any]:
    cur = conn.cursor()
    try:
        cur.execute(sql)
        return list(cur.fetchall()) if cur.description is not None else []
    finally:
        cur.close()


def main(args: argparse.Namespace) -> None:
    connect, cargs, ckwargs = driver(args)  # first: a missing driver is the first thing to fix
    if args.dsn is None:
        _needs.server((args.host, args.port), "PostgreSQL server")
    import gevent

    from geventconnpool.contrib.dbapi import DbApiPool

    # Pool options are keyword arguments, as for every ready-made pool; driver arguments go
    # positionally (a DSN) or in connect_kwargs, so a driver's own `timeout` cannot be mistaken.
    pool = DbApiPool(connect, *cargs, connect_kwargs=ckwargs, size=10, keepalive=60)
    print(f"pool name: {pool.name}")

    @pool.retrying(max_failures=2)  # re-run if the connection was lost, not on SQL errors
    def sleepy() -> int:
        with pool.get(timeout=30) as conn:
            ((pid, _),) = query(conn, "SELECT pg_backend_pid(), pg_sleep(0.05)")
            conn.commit()
            return int(pid)

    with pool:
        pool.wait_ready(timeout=10)
        start = time.monotonic()
        jobs = [gevent.spawn(sleepy) for _ in range(100)]
        gevent.joinall(jobs, raise_error=True)
        took = time.monotonic() - start
        backends = len({j.value for j in jobs})
        print(
            f"{args.driver}: 100 greenlets ran pg_sleep(0.05) on {backends} connections "
            f"in {took:.2f}s (one after another: 5.00s)"
        )

        with pool.get() as conn:
            query(conn, "CREATE TABLE IF NOT EXISTS example_notes (text varchar)")
            conn.commit()
            query(conn, "INSERT INTO example_notes VALUES ('not committed')")
            # leaving the block without commit(): the pool rolls the transaction back
        with pool.get() as conn:
            rows = query(conn, "SELECT count(*) FROM example_notes")[0][0]
            print(f"the next holder sees {rows} uncommitted rows: rolled back on release")
            query(conn, "DROP TABLE example_notes")
            conn.commit()

        try:
            with pool.get() as conn:
                query(conn, "SELECT 1/0")
        except Exception as exc:
            print(f"an SQL error keeps the connection ({type(exc).__name__})")
        s = pool.stats()
        print(f"stats: open={s.open} created={s.created} discarded={s.discarded.total}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--driver", choices=["psycopg2", "pg8000"], default="psycopg2")
    parser.add_argument("--dsn", help="libpq connection string (psycopg2)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--user", default="postgres")
    parser.add_argument("--db", default="postgres")
    main(parser.parse_args())
