"""The README's gunicorn recipe under a real ``gunicorn -k gevent --preload -w 2``: the master
holds **0** server-side connections and each worker its own, counted on the servers themselves
(Redis ``CLIENT LIST``, PostgreSQL ``pg_stat_activity``).

The app (``tests/apps/preload_recipe_app.py``) makes its pools at import time, in the master,
with ``open=False``: the constructor does no I/O and starts no greenlet, and the pool opens in the
process that first calls ``get()``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from gevent import socket

from .servers import (  # noqa: F401  (fixtures, by name)
    PostgresServer,
    RedisServer,
    free_port,
    postgres_server,
    redis_server,
    resp_command,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
SIZE = 2  # connections per pool, per worker

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]


def redis_names(redis: RedisServer) -> Counter[str]:
    """Connections open on Redis, by client name (ours are ``pid-<pid>``)."""
    raw = resp_command(redis.address, "CLIENT", "LIST").decode(errors="replace")
    names = Counter[str]()
    for line in raw.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields.get("name", "").startswith("pid-"):
            names[fields["name"]] += 1
    return names


def pg_names(pg: PostgresServer) -> Counter[str]:
    """Sessions open on PostgreSQL, by ``application_name`` (ours are ``pid-<pid>``)."""
    import psycopg2

    conn = psycopg2.connect(pg.dsn, application_name="test-admin")
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT application_name, count(*) FROM pg_stat_activity"
                " WHERE application_name LIKE 'pid-%%' GROUP BY application_name"
            )
            return Counter({name: int(n) for name, n in cur.fetchall()})
    finally:
        conn.close()


def _gunicorn_has(setting: str) -> bool:
    from gunicorn.config import KNOWN_SETTINGS  # type: ignore[import-untyped]

    return any(s.name == setting for s in KNOWN_SETTINGS)


class Gunicorn:
    def __init__(self, redis: RedisServer, pg: PostgresServer, log: Path) -> None:
        self.address = ("127.0.0.1", free_port())
        self.log = log
        argv = [sys.executable, "-m", "gunicorn", "-k", "gevent", "--preload", "-w", "2"]
        argv += ["-b", f"{self.address[0]}:{self.address[1]}", "--graceful-timeout", "5"]
        if _gunicorn_has("control_socket_disable"):  # gunicorn >= 25 opens one in $HOME
            argv.append("--no-control-socket")
        env = dict(os.environ, GCP_REDIS_PORT=str(redis.port), GCP_PG_DSN=pg.dsn)
        env["GCP_POOL_SIZE"] = str(SIZE)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*argv, "tests.apps.preload_recipe_app:app"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=out,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_listening(self) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, f"gunicorn exited:\n{self.output()}"
            try:
                socket.create_connection(self.address, timeout=1).close()
            except OSError:
                return False
            return True

        wait_until(up, 30, "gunicorn listening")

    def get(self) -> dict[str, Any]:
        with gevent.Timeout(15), socket.create_connection(self.address) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert b" 200 " in head.split(b"\r\n")[0], f"{head!r}\n{self.output()}"
        answer: dict[str, Any] = json.loads(body)
        return answer

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def gunicorn(
    redis_server: RedisServer,  # noqa: F811
    postgres_server: PostgresServer,  # noqa: F811
    tmp_path: Path,
) -> Iterator[Gunicorn]:
    pytest.importorskip("gunicorn")  # in the test extra
    g = Gunicorn(redis_server, postgres_server, tmp_path / "gunicorn.log")
    try:
        yield g
    finally:
        g.stop()


def test_preload_master_holds_no_connection_and_each_worker_its_own(
    gunicorn: Gunicorn,
    redis_server: RedisServer,  # noqa: F811
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    gunicorn.wait_listening()
    master = f"pid-{gunicorn.proc.pid}"
    # Imported and forked, no request served yet: nobody has connected.
    assert redis_names(redis_server) == Counter(), gunicorn.output()
    assert pg_names(postgres_server) == Counter(), gunicorn.output()

    answers: list[dict[str, Any]] = []
    with gevent.Timeout(60, AssertionError("requests did not reach both workers")):
        for _ in range(50):  # bounded: 50 rounds of 4 concurrent requests at most
            answers += [g.get() for g in [gevent.spawn(gunicorn.get) for _ in range(4)]]
            if len({a["pid"] for a in answers}) == 2:
                break
    assert all(a["redis"] == "+PONG" and a["pg"] == 1 for a in answers), answers
    workers = {f"pid-{a['pid']}" for a in answers}
    assert len(workers) == 2 and master not in workers

    expected = Counter(dict.fromkeys(workers, SIZE))  # each worker: a full pool of its own
    wait_until(lambda: redis_names(redis_server) == expected, 20, "each worker's Redis pool")
    wait_until(lambda: pg_names(postgres_server) == expected, 20, "each worker's PG pool")
    assert redis_names(redis_server)[master] == 0
    assert pg_names(postgres_server)[master] == 0
