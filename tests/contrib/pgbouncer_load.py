"""Many processes, one PgBouncer: 8 processes x 20 pooled connections over 10 server connections.

``python -m tests.contrib.pgbouncer_load`` starts PostgreSQL and PgBouncer (transaction pooling,
``default_pool_size=10``) on 127.0.0.1 (tests/servers.py), then ``--processes`` child processes,
each with a :class:`~geventconnpool.contrib.dbapi.DbApiPool` of ``max_size=--size`` driven by as
many greenlets doing short transactions for ``--seconds``; then the same load straight to
PostgreSQL. Prints, for each, transactions per second, errors, and the peak number of server
backends (``pg_stat_activity``) and of PgBouncer's client and server connections.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

import gevent

CHILD_FLAG = "--child"


def make_dbapi_pool(dsn: str, **pool_options: Any) -> Any:
    """The one place our PgBouncer tests and this script build a DbApiPool (psycopg2, made
    cooperative by psycogreen): adapt here if DbApiPool's signature changes."""
    import psycogreen.gevent
    import psycopg2

    from geventconnpool.contrib.dbapi import DbApiPool

    psycogreen.gevent.patch_psycopg()
    return DbApiPool(psycopg2.connect, dsn, **pool_options)


def child(dsn: str, size: int, seconds: float) -> dict[str, Any]:
    """One process: ``size`` greenlets, each doing short transactions for ``seconds``."""
    pool = make_dbapi_pool(dsn, min_size=size, max_size=size, timeout=10.0)
    done, errors = [0], {}

    def worker() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                with pool.get() as conn:
                    cur = conn.cursor()
                    cur.execute("SELECT count(*) FROM pg_class WHERE relname = %s", ("x",))
                    cur.fetchall()
                    cur.close()
                    conn.commit()
                done[0] += 1
            except Exception as exc:  # counted and reported: the figure we measure
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                gevent.sleep(0.01)

    pool.wait_ready(30)
    start = time.monotonic()
    gevent.joinall([gevent.spawn(worker) for _ in range(size)], timeout=seconds + 30)
    elapsed = time.monotonic() - start
    pool.close()
    return {"transactions": done[0], "seconds": elapsed, "errors": errors}


def admin_figures(postgres_dsn: str, bouncer_port: int | None) -> tuple[int, int, int]:
    """(backends on the server, PgBouncer client connections, PgBouncer server connections)."""
    import psycopg2

    with psycopg2.connect(postgres_dsn) as conn:
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
        backends = int(cur.fetchone()[0]) - 1  # minus this one
    conn.close()
    if bouncer_port is None:
        return backends, 0, 0
    admin = psycopg2.connect(f"host=127.0.0.1 port={bouncer_port} user=postgres dbname=pgbouncer")
    admin.autocommit = True
    cur = admin.cursor()
    cur.execute("SHOW POOLS")
    names = [d[0] for d in cur.description]
    clients = servers = 0
    for row in cur.fetchall():
        r = dict(zip(names, row, strict=True))
        if r["database"] == "postgres":
            clients += r["cl_active"] + r["cl_waiting"]
            servers += r["sv_active"] + r["sv_idle"] + r["sv_used"] + r["sv_tested"] + r["sv_login"]
    admin.close()
    return backends, clients, servers


def run(
    dsn: str, postgres_dsn: str, bouncer_port: int | None, processes: int, size: int, seconds: float
) -> dict[str, Any]:
    """Start the children, sample the peaks while they run, add up their figures."""
    argv = [sys.executable, "-m", "tests.contrib.pgbouncer_load", CHILD_FLAG, dsn]
    children = [
        subprocess.Popen([*argv, str(size), str(seconds)], stdout=subprocess.PIPE)
        for _ in range(processes)
    ]
    peaks = [0, 0, 0]
    deadline = time.monotonic() + seconds + 60
    while any(c.poll() is None for c in children) and time.monotonic() < deadline:
        figures = admin_figures(postgres_dsn, bouncer_port)
        peaks = [max(a, b) for a, b in zip(peaks, figures, strict=True)]
        time.sleep(0.1)
    results = []
    for c in children:
        out, _ = c.communicate(timeout=max(1.0, deadline - time.monotonic()))
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    errors: dict[str, int] = {}
    for r in results:
        for name, n in r["errors"].items():
            errors[name] = errors.get(name, 0) + n
    total = sum(r["transactions"] for r in results)
    return {
        "processes": processes,
        "size": size,
        "transactions": total,
        "per_second": round(total / max(r["seconds"] for r in results)),
        "errors": errors,
        "peak_backends": peaks[0],
        "peak_bouncer_clients": peaks[1],
        "peak_bouncer_servers": peaks[2],
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == CHILD_FLAG:
        print(json.dumps(child(args[1], int(args[2]), float(args[3]))), flush=True)
        return 0
    p = argparse.ArgumentParser(prog="python -m tests.contrib.pgbouncer_load")
    p.add_argument("--processes", type=int, default=8)
    p.add_argument("--size", type=int, default=20, help="max_size of each process's pool")
    p.add_argument("--server-connections", type=int, default=10)
    p.add_argument("--seconds", type=float, default=5.0)
    opts = p.parse_args(args)
    from tests.servers import PgBouncerServer, PostgresServer, pgbouncer_binary, postgres_bindir

    bindir, binary = postgres_bindir(), pgbouncer_binary()
    if bindir is None or binary is None:
        print("PostgreSQL or pgbouncer is not installed (scripts/ensure-servers)", file=sys.stderr)
        return 2
    postgres = PostgresServer(bindir)
    postgres.start()
    try:
        bouncer = PgBouncerServer(binary, postgres, pool_size=opts.server_connections)
        bouncer.start()
        try:
            via = run(
                bouncer.dsn, postgres.dsn, bouncer.port, opts.processes, opts.size, opts.seconds
            )
        finally:
            bouncer.destroy()
        quiet_by = time.monotonic() + 15
        while admin_figures(postgres.dsn, None)[0] and time.monotonic() < quiet_by:
            time.sleep(0.1)  # PgBouncer's server connections are gone before we count again
        direct = run(postgres.dsn, postgres.dsn, None, opts.processes, opts.size, opts.seconds)
    finally:
        postgres.destroy()
    for label, r in (("via PgBouncer", via), ("direct", direct)):
        print(f"{label}: {json.dumps(r)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
