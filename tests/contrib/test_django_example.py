"""examples/django_app runs under a real ``gunicorn -k gevent --preload -w 2`` against the test
PostgreSQL, the way its docstring says: every request answered by a worker through its own pool,
no server session shared between workers, and none held by the master: each session the
server lists (``pg_stat_activity``) is matched by its client port to the process holding the
socket (``/proc``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("django")
pytest.importorskip("gunicorn")
pytest.importorskip("psycopg")

from tests.servers import PostgresServer

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_django_example_under_gunicorn_preload(postgres_server: PostgresServer) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "examples.django_app.run", "--port", str(postgres_server.port)]
    proc = subprocess.run(
        [*argv, "--requests", "40", "--size", "3"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=55,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert "gunicorn -k gevent --preload -w 2 " in out, out
    workers = re.findall(
        r"worker pid (\d+): (\d+) requests through its own pool 'django/default", out
    )
    assert 1 <= len(workers) <= 2 and sum(int(n) for _, n in workers) == 40, out
    assert "40/40 requests answered" in out, out
    assert re.search(r"server sessions of the app: master 0, worker \d+ [0-3]", out), out
    assert "no process 0" in out, out
    assert "the master holds none; every session belongs to a worker's pool" in out, out
    assert "gunicorn stopped (exit code 0)" in out, out
