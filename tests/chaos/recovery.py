"""``python -m tests.chaos.recovery``: how fast pools recover from a real server restart.

For a RedisPool against redis-server and a DbApiPool (psycopg2, made cooperative by psycogreen)
against PostgreSQL, both started on 127.0.0.1 and free ports: 200 greenlets send requests
(``PING`` / ``SELECT 1``, each under ``get(timeout=1)``) through a pool of 20; the server is
stopped hard (SIGKILL / ``pg_ctl -m immediate``) for 3 s and started again on the same port. A
probe opens a fresh connection every 5 ms from the restart on; the first one that completes a
request marks "the server accepts again". Reported per server: the time from then to the first
request served by the pool, to the pool being full again (``max_size`` connections open and none
connecting), and the requests that failed (during the outage, and after the server was back).
Bounded: each server's run ends at most 10 s after its restart.

    python -m tests.chaos.recovery              # both servers
    python -m tests.chaos.recovery --only redis --rounds 3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import gevent
from gevent.event import Event

from geventconnpool import ConnectionPool

from ..servers import PostgresServer, RedisServer, postgres_bindir, redis_binary, resp_command

GREENLETS = 200
SIZE = 20
DOWN_FOR = 3.0  # seconds the server is stopped
WARMUP = 1.0
AFTER_RESTART_LIMIT = 10.0  # a run ends at most this long after the server is started again
PROBE_EVERY = 0.005
MAX_REQUESTS = 100_000  # per greenlet


@dataclass
class Result:
    """One restart: times in seconds from the server accepting again (``ready``)."""

    server: str
    first_served: float | None = None  # the first request the pool served after ready
    pool_full: float | None = None  # max_size connections open, none connecting
    failed: int = 0  # every failed request, from the stop to the end of the run
    failed_started_after_ready: int = 0  # of those, requests begun after the server was back
    served: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class Load:
    """``GREENLETS`` greenlets doing requests on ``pool`` until stopped; outcomes timestamped."""

    def __init__(self, pool: ConnectionPool[Any], request: Callable[[Any], None]) -> None:
        self.pool = pool
        self.request = request
        self.stop = Event()
        self.ok: list[float] = []  # when each successful request ended
        self.failed: list[tuple[float, str]] = []  # (when the request began, error class)
        self.greenlets = [gevent.spawn(self._run) for _ in range(GREENLETS)]

    def _run(self) -> None:
        for _ in range(MAX_REQUESTS):  # bounded in count too (the run is bounded in time)
            if self.stop.is_set():
                return
            began = time.monotonic()
            try:
                with self.pool.get(timeout=1.0) as conn:
                    self.request(conn)
                self.ok.append(time.monotonic())
            except Exception as e:
                self.failed.append((began, type(e).__name__))
                gevent.sleep(0.01)  # a failed request is retried by its user, not at once
            gevent.sleep(0.001)

    def finish(self) -> None:
        self.stop.set()
        gevent.joinall(self.greenlets, timeout=5)
        gevent.killall([g for g in self.greenlets if not g.dead])


def _probe_until_ready(check: Callable[[], bool], limit: float) -> float | None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if check():
                return time.monotonic()
        except Exception:
            pass
        gevent.sleep(PROBE_EVERY)
    return None


def restart_once(
    name: str,
    pool: ConnectionPool[Any],
    request: Callable[[Any], None],
    stop: Callable[[], None],
    start: Callable[[], None],
    probe: Callable[[], bool],
) -> Result:
    """Load the pool, stop the server for DOWN_FOR seconds, start it, measure the recovery."""
    result = Result(name)
    load = Load(pool, request)
    try:
        gevent.sleep(WARMUP)
        stopped_at = time.monotonic()
        gevent.get_hub().threadpool.spawn(stop).get()
        gevent.sleep(DOWN_FOR - (time.monotonic() - stopped_at))
        restarted_at = time.monotonic()
        starter = gevent.get_hub().threadpool.spawn(start)  # pg_ctl blocks: in a thread
        ready = _probe_until_ready(probe, AFTER_RESTART_LIMIT)
        starter.get(timeout=AFTER_RESTART_LIMIT)
        if ready is None:
            raise RuntimeError(f"{name} did not accept connections again")
        deadline = restarted_at + AFTER_RESTART_LIMIT
        while time.monotonic() < deadline:
            s = pool.stats()
            if result.pool_full is None and s.open == s.max_size and not s.connecting:
                result.pool_full = time.monotonic() - ready
            served_after = [t for t in load.ok if t >= ready]
            if served_after and result.pool_full is not None:
                break
            gevent.sleep(0.002)
        gevent.sleep(0.2)
    finally:
        load.finish()
    served_after = [t for t in load.ok if t >= ready]
    result.first_served = min(served_after) - ready if served_after else None
    result.served = len(load.ok)
    result.failed = len(load.failed)
    result.failed_started_after_ready = sum(1 for t, _ in load.failed if t >= ready)
    for _, kind in load.failed:
        result.errors[kind] = result.errors.get(kind, 0) + 1
    return result


def run_redis(rounds: int) -> list[Result]:
    from geventconnpool.contrib.redis import RedisPool

    binary = redis_binary()
    if binary is None:
        raise FileNotFoundError("redis-server is not installed")
    server = RedisServer(binary, tempfile.mkdtemp(prefix="gcp-recovery-redis-"))
    server.start()
    results = []
    try:
        for _ in range(rounds):
            pool = RedisPool(port=server.port, size=SIZE, name="recovery-redis")
            pool.wait_ready(10)
            try:
                results.append(
                    restart_once(
                        "redis-server",
                        pool,
                        lambda conn: conn.execute("PING"),
                        server.stop,
                        server.start,
                        lambda: resp_command(server.address, "PING", timeout=0.5) == b"+PONG\r\n",
                    )
                )
            finally:
                pool.close()
    finally:
        server.stop()
    return results


def run_postgres(rounds: int) -> list[Result]:
    import psycopg2
    from psycogreen.gevent import patch_psycopg

    from geventconnpool.contrib.dbapi import DbApiPool

    patch_psycopg()
    bindir = postgres_bindir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL is not installed")
    server = PostgresServer(bindir)
    server.start()

    def select_one(conn: Any) -> None:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        cur.fetchall()

    def probe() -> bool:
        conn = psycopg2.connect(server.dsn, connect_timeout=1)
        try:
            select_one(conn)
        finally:
            conn.close()
        return True

    results = []
    try:
        for _ in range(rounds):
            pool = DbApiPool(psycopg2.connect, server.dsn, size=SIZE, name="recovery-postgres")
            pool.wait_ready(10)
            try:
                results.append(
                    restart_once("PostgreSQL", pool, select_one, server.stop, server.start, probe)
                )
            finally:
                pool.close()
    finally:
        server.destroy()
    return results


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f} ms"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.chaos.recovery", description=__doc__)
    p.add_argument("--only", choices=("redis", "postgres"), action="append")
    p.add_argument("--rounds", type=int, default=1, help="restarts per server (default 1)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    runs = {"redis": run_redis, "postgres": run_postgres}
    results: list[Result] = []
    for name in args.only or list(runs):
        results += runs[name](args.rounds)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    for r in results:
        print(
            f"{r.server}: first request served {_ms(r.first_served)} and pool full "
            f"{_ms(r.pool_full)} after the server accepted again; failed requests: {r.failed} "
            f"(all begun during the {DOWN_FOR:g} s outage but {r.failed_started_after_ready}); "
            f"{r.served} served ({GREENLETS} greenlets, pool of {SIZE}, get(timeout=1))"
        )
    return 0 if all(r.first_served is not None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
