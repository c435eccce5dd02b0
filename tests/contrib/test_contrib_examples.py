"""Every script in examples/integrations/ runs, against real servers where it needs one, and
prints what its docstring promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import PostgresServer, RedisServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "integrations"

pytestmark = pytest.mark.timeout(60)


def run(name: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout


def expect(out: str, *patterns: str) -> None:
    for pattern in patterns:
        assert re.search(pattern, out), f"{pattern!r} not in:\n{out}"


def test_every_integration_has_an_example() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == [
        "flask_sqlalchemy_app.py",  # its test: tests/contrib/test_sqlalchemy_example.py
        "https_keepalive.py",
        "postgres_pool.py",
        "redis_pool.py",
        "redispy_pool.py",
        "thrift_pool.py",
        "tls_pool.py",
    ]


def test_tls_example() -> None:
    out = run("tls_pool.py")
    expect(
        out,
        r"100 calls, 100 PONGs, over 4 verified TLS connections",
        r"after invalidate\(\): 4 new handshakes, 4 resumed the saved session "
        r"\(the server saw 4 resumed\)",
        r"untrusted certificate: PoolUnavailable caused by SSLCertVerificationError",
    )


@pytest.mark.redis
def test_redis_example(redis_server: RedisServer) -> None:
    out = run("redis_pool.py", "--port", str(redis_server.port), "--db", "5")
    expect(
        out,
        r"1000 INCRs from 1000 greenlets over 10 connections: counter = 1000",
        r"one pipelined round trip: \['OK', b'hello', 2\]",
        r"an error reply keeps the connection: ERR wrong number of arguments",
        r"PING -> PONG",
        r"stats: open=10 created=10 ",
    )


@pytest.mark.redis
def test_redispy_example(redis_server: RedisServer) -> None:
    out = run("redispy_pool.py", "--port", str(redis_server.port), "--db", "7")
    expect(
        out,
        r"1000 INCRs from 1000 greenlets: counter = 1000",
        r"pipeline: \[True, b'hello', 1\] in 1 checkout",
        r"pub/sub got b'hi'",
        r"stats: open=\d+ created=\d+ discarded=1",
    )


@pytest.mark.redis
def test_redis_example_over_the_unix_socket(redis_server: RedisServer) -> None:
    out = run("redis_pool.py", "--unix", redis_server.unix_socket, "--db", "6")
    expect(out, r"counter = 1000", r"PING -> PONG")


@pytest.mark.postgres
@pytest.mark.parametrize("driver", ["psycopg2", "pg8000"])
def test_postgres_example(postgres_server: PostgresServer, driver: str) -> None:
    pytest.importorskip(driver)
    out = run("postgres_pool.py", "--driver", driver, "--port", str(postgres_server.port))
    expect(
        out,
        rf"pool name: postgresql 127\.0\.0\.1:{postgres_server.port}/postgres",
        rf"{driver}: 100 greenlets ran pg_sleep\(0\.05\) on 10 connections in \d+\.\d\ds",
        r"the next holder sees 0 uncommitted rows: rolled back on release",
        r"an SQL error keeps the connection",
        r"stats: open=10 created=10 discarded=0",
    )
    took = float(re.search(r"connections in (\d+\.\d+)s", out).group(1))  # type: ignore[union-attr]
    assert took < 2.5  # ten at a time; one after another it takes 5 s


def test_thrift_example() -> None:
    pytest.importorskip("thriftpy2")
    out = run("thrift_pool.py")
    expect(
        out,
        r"ping -> pong, add\(40, 2\) -> 42",
        r"200 proxied calls from 200 greenlets over 4 connections",
        r"100 oneway reports, the server has 100",
        r"a declared exception keeps the connection: NotFound\(key='nobody'\)",
        r"a half-written request \(\w+\): 1 connection discarded",
        r"pool 'thrift 127\.0\.0\.1:\d+'",
        r"after an interrupted call the client refuses more calls",
        r"the next holder gets its own reply: ping -> pong",
    )


def test_https_keepalive_example() -> None:
    out = run("https_keepalive.py")
    expect(
        out,
        r"without a pool: 200 requests, 200 TLS handshakes",
        r"with a pool of 4: 200 requests, 4 TLS handshakes",
    )
