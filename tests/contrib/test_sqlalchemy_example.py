"""examples/integrations/flask_sqlalchemy_app.py runs under a real ``gunicorn -k gevent
--preload -w 2`` against PostgreSQL, started the way its docstring says: the master holds no
connection, each worker opens its own pool of at most ``--size`` connections, every request is
answered."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import PostgresServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "integrations" / "flask_sqlalchemy_app.py"

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(90)]


def test_flask_sqlalchemy_example_under_gunicorn_preload(postgres_server: PostgresServer) -> None:
    for module in ("flask", "flask_sqlalchemy", "sqlalchemy", "psycopg2", "gunicorn"):
        pytest.importorskip(module)
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--port", str(postgres_server.port), "--size", "3"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"{out}\n{proc.stderr[-3000:]}"
    for pattern in (
        r"gunicorn -k gevent --preload -w 2 ",
        r"before any request the server sees 0 connections from the app: the master holds none",
        r"worker pid \d+: [1-3] server connection\(s\), pool 'flask-db'",
        r"40/40 requests answered 200; 40 visits recorded",
        r"after the requests the server sees [1-6] connections from the app"
        r" \(at most 2 workers x 3\)",
        r"gunicorn stopped \(exit code 0\)",
    ):
        assert re.search(pattern, out), f"{pattern!r} not in:\n{out}"
    pids = set(re.findall(r"worker pid (\d+):", out))
    assert len(pids) >= 1
