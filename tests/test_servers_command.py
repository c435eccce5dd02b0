"""``make servers-up`` / ``make servers-down`` (scripts/servers.py): one command starts the Redis
and PostgreSQL the examples and guides expect, the examples run against them as their
docstrings say, and one command stops them, leaving no process and no data behind.

The test moves them to free ports (``SERVERS_OPTS``) and a directory of its own, so that it
never meets a server of the machine's on 6379 or 5432.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from geventconnpool.testing import free_port

from .servers import postgres_bindir, redis_binary, server_missing

ROOT = Path(__file__).resolve().parent.parent
INTEGRATIONS = ROOT / "examples" / "integrations"

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(180)]


def make(target: str, opts: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", target, f"SERVERS_OPTS={opts}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def run_example(name: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(INTEGRATIONS / name), *args],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"{name}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_servers_up_runs_the_examples_and_servers_down_leaves_nothing() -> None:
    if redis_binary() is None:
        server_missing("redis-server")
    if postgres_bindir() is None:
        server_missing("PostgreSQL (initdb, pg_ctl)")
    # As root, PostgreSQL runs as `postgres`, which must reach the directory: not pytest's 0700
    # tmp_path, a directory it may traverse (as the default, under /tmp, is).
    parent = Path(tempfile.mkdtemp(prefix="gcp-servers-"))
    parent.chmod(0o711)
    redis_port, pg_port, state = free_port(), free_port(), parent / "servers"
    opts = f"--redis-port {redis_port} --postgres-port {pg_port} --dir {state}"
    try:
        up = make("servers-up", opts)
        assert up.returncode == 0, up.stdout + up.stderr
        pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", up.stdout)]
        assert len(pids) == 2 and all(alive(pid) for pid in pids), up.stdout
        assert f"host=127.0.0.1 port={pg_port} user=postgres dbname=postgres, no password" in (
            up.stdout
        )

        # the examples, as their docstrings say, on the ports given
        out = run_example("redis_pool.py", "--port", str(redis_port))
        assert "counter = 1000" in out, out
        out = run_example("postgres_pool.py", "--port", str(pg_port))
        assert "stats: open=10 created=10 discarded=0" in out, out
        # and the README's DSN, no password
        out = run_example(
            "postgres_pool.py",
            "--dsn",
            f"host=127.0.0.1 port={pg_port} user=postgres dbname=postgres",
        )
        assert "rolled back on release" in out, out

        again = make("servers-up", opts)  # idempotent: says so, starts nothing more
        assert again.returncode == 0 and "already running" in again.stdout, again.stdout
    finally:
        down = make("servers-down", opts)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "redis-server stopped" in down.stdout and "PostgreSQL stopped" in down.stdout
    assert not any(alive(pid) for pid in pids), down.stdout
    assert not state.exists()  # data deleted
    parent.rmdir()
    status = subprocess.run(
        [sys.executable, "scripts/servers.py", "status", "--dir", str(state)],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert status.stdout == "servers status: not running\n"


def test_servers_up_refuses_a_port_in_use_with_one_line(tmp_path: Path) -> None:
    import socket

    if redis_binary() is None:
        server_missing("redis-server")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "scripts/servers.py", "up", "--redis-port", str(port),
             "--dir", str(tmp_path / "s")],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr == (
        f"servers up: port {port} is in use (another redis-server?); stop it, or pass "
        "--redis-port\n"
    )
