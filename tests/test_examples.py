"""Every script in examples/ runs: against its embedded server, and against a host given to it.

``gunicorn_app.py`` also runs under a real ``gunicorn -k gevent --preload``, started here the way
its docstring says, to check the README's recipe: the pool, made at import time in the master
with ``open=False``, is opened by each worker for itself, and the master holds no connection.
Each example, given a server that is not there, exits with one line naming the command to run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.pool
import pytest
from gevent import socket, subprocess

from geventconnpool.testing import PingServer, free_port

from .conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration  # runs the checkout's examples/
EXAMPLES = ROOT / "examples"
RUN_TIMEOUT = 60.0  # seconds for one example script
POOL_SIZE = 3  # PING_POOL_SIZE given to the gunicorn app

# What each script must print (regular expressions, searched in its standard output).
EXPECTED: dict[str, list[str]] = {
    "quickstart.py": [
        r"100 greenlets, 10 connections: 100 PONGs",
        r"stats: open=10 created=10 acquired=100",
    ],
    "keepalive_ping.py": [
        r"the pool sent \d+ keepalive PINGs",
        r"after keepalives: open=3 idle=3 created=3 discarded\.keepalive=0",
        r"after the drop: open=3 idle=3 created=[6-9] discarded\.keepalive=3",
        r"request after the drop: b'\+PONG\\r\\n' \(no caller saw an error\)",
    ],
    "retry_drop.py": [
        r"after 200 requests the server drops all 4 connections",
        r"400/400 requests succeeded, 0 failed",
        r"@retry retried [1-9]\d* times",
        r"the pool discarded [1-9]\d* connections .* and opened [1-9]\d* replacements",
    ],
    "legacy_021.py": [
        r"ok: quickstart, a PING through MyPool\(20\)",
        r"ok: senddata succeeded after the drop",
        r"ok: senddata_logged succeeded after the drop",
        r"ok: senddata_partial succeeded after the drop",
        r"ok: TCP keepalive on through s\._sock\.setsockopt",
        r"ok: _keepalive found the 20 dropped connections; the pool replaced them",
    ],
    "gunicorn_app.py": [
        r"gunicorn -k gevent --preload -w 2 ",
        r"worker pid \d+: answered \d+ requests through its own pool 'ping' \(4 connections open,"
        r" 4 opened by it\)",
        r"20/20 requests answered \+PONG through their worker's own pool",
        r"gunicorn stopped \(exit code 0\)",
    ],
}
# Only with the embedded server: it alone lets the script count the server's connections.
EXPECTED_EMBEDDED: dict[str, list[str]] = {
    "gunicorn_app.py": [
        r"the PING server sees 8 connections: 2 workers x a pool of 4, opened as each worker"
        r" started; the master holds none"
    ],
}


def example_names() -> list[str]:
    return sorted(path.name for path in EXAMPLES.glob("*.py") if not path.name.startswith("_"))


def run_example(name: str, *args: str) -> tuple[int, str, str]:
    """Run ``examples/<name>`` from the repository root; (exit code, stdout, stderr).

    gevent's subprocess lets this process's own servers (fixtures) serve meanwhile.
    """
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{name} still running after {RUN_TIMEOUT}s:\n{out.decode()}{err.decode()}")
    return proc.returncode, out.decode(), err.decode()


def assert_ran(name: str, code: int, out: str, err: str, patterns: list[str]) -> None:
    assert code == 0, f"{name} exited with {code}:\n{out}\n{err}"
    for pattern in patterns:
        assert re.search(pattern, out), f"{name}: no line matches {pattern!r} in:\n{out}\n{err}"


def test_every_example_is_covered() -> None:
    assert example_names() == sorted(EXPECTED), (
        "add the new example's expected output to EXPECTED in tests/test_examples.py"
    )


@pytest.mark.parametrize("name", example_names())
def test_example_runs_against_its_embedded_server(name: str) -> None:
    code, out, err = run_example(name)
    assert_ran(name, code, out, err, EXPECTED[name] + EXPECTED_EMBEDDED.get(name, []))


@pytest.mark.parametrize("name", example_names())
def test_example_runs_against_the_host_given(name: str, server: PingServer) -> None:
    host, port = server.address
    code, out, err = run_example(name, "--host", host, "--port", str(port))
    assert_ran(name, code, out, err, EXPECTED[name])
    assert server.accepted > 0, f"{name} did not connect to {host}:{port}"


# ------------------------------------------------------------------ under a real gunicorn


class Gunicorn:
    """``python -m gunicorn -k gevent --preload -w 2 ... examples.gunicorn_app:app``."""

    def __init__(self, ping: tuple[str, int], log: Path, *options: str) -> None:
        self.http = ("127.0.0.1", free_port())
        self.log = log
        env = dict(os.environ, PING_HOST=ping[0], PING_PORT=str(ping[1]))
        env["PING_POOL_SIZE"] = str(POOL_SIZE)
        argv = [sys.executable, "-m", "gunicorn", "-k", "gevent", "--preload", "-w", "2"]
        argv += ["-b", f"{self.http[0]}:{self.http[1]}", *options, "examples.gunicorn_app:app"]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=out)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def get(self, path: str = "/") -> tuple[int, bytes]:
        """One HTTP/1.0 GET; (status, body)."""
        with socket.create_connection(self.http, timeout=10) as sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        """Wait until ``predicate()``; fail with gunicorn's output if it exits meanwhile."""

        def check() -> bool:
            assert self.proc.poll() is None, f"gunicorn exited:\n{self.output()}"
            return predicate()

        wait_until(check, timeout, what)

    def wait_listening(self, timeout: float = 30.0) -> None:
        """Wait until gunicorn accepts connections, without sending a request."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"gunicorn exited:\n{self.output()}"
            try:
                socket.create_connection(self.http, timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, f"gunicorn not listening:\n{self.output()}"
                gevent.sleep(0.1)

    def wait_serving(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"gunicorn exited:\n{self.output()}"
            try:
                self.get()
                return
            except OSError:
                assert time.monotonic() < deadline, f"gunicorn not serving:\n{self.output()}"
                gevent.sleep(0.1)

    def query(self, count: int) -> list[dict[str, Any]]:
        """``count`` GETs of ``/``, 10 at a time; the JSON answers (with ``status``)."""

        def one(_: int) -> dict[str, Any]:
            status, body = self.get()
            answer: dict[str, Any] = json.loads(body)
            answer["status"] = status
            return answer

        return list(gevent.pool.Pool(10).imap(one, range(count)))

    def workers(self) -> set[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return {int(pid) for pid in children.read_text().split()} if children.exists() else set()

    def stop(self) -> int:
        """SIGTERM; workers that missed it (sent while they were starting) get it directly."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                for pid in self.workers():
                    os.kill(pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def gunicorn(server: PingServer, tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    """``gunicorn(*options)``: start gunicorn serving the app, with the PING server's address."""
    started: list[Gunicorn] = []

    def start(*options: str) -> Gunicorn:
        g = Gunicorn(server.address, tmp_path / f"gunicorn{len(started)}.log", *options)
        started.append(g)
        return g

    yield start
    for g in started:
        g.stop()


def answers_by_worker(answers: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Every answer is a PONG from a worker (never this process) through a pool of its own."""
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for a in answers:
        assert a["status"] == 200 and a["reply"] == "+PONG", a
        assert a["pid"] != os.getpid() and a["pool"] == "ping", a
        assert a["created"] >= 1 and a["open"] <= POOL_SIZE, a  # it opened them, no more
        by_pid.setdefault(a["pid"], []).append(a)
    return by_pid


def test_gunicorn_preload_master_never_connects_and_workers_open_their_own_pools(
    gunicorn: Callable[..., Gunicorn], server: PingServer
) -> None:
    g = gunicorn()
    g.wait_listening()
    # Imported by the master, forked into two workers, no request yet: nobody connected.
    assert server.accepted == 0, g.output()
    answers = g.query(30)
    by_pid = answers_by_worker(answers)
    assert set(by_pid) <= g.workers(), "answers came from processes that are not workers"
    # each worker that served opened a pool of its own size; the master none
    wait_until(lambda: server.active == POOL_SIZE * len(by_pid), 10, "each pool to fill")
    assert g.stop() == 0, g.output()


def test_gunicorn_post_worker_init_opens_a_pool_in_each_worker(
    gunicorn: Callable[..., Gunicorn], server: PingServer
) -> None:
    g = gunicorn("-c", "python:examples.gunicorn_app")
    # before any request: both workers have opened a pool of their own, the master none
    line = r"worker (\d+): pool 'ping' open \((\d+) connections\)"
    g.wait_for(lambda: server.active == 2 * POOL_SIZE, "both workers' pools")
    g.wait_for(lambda: len(re.findall(line, g.output())) == 2, "both workers' log lines")
    opened = re.findall(line, g.output())
    assert {int(pid) for pid, _ in opened} == g.workers(), g.output()
    assert all(int(n) == POOL_SIZE for _, n in opened), g.output()
    g.wait_serving()
    answers = g.query(30)
    answers_by_worker(answers)
    assert all(a["open"] == POOL_SIZE for a in answers), answers  # its own pool, not both
    assert server.active == 2 * POOL_SIZE  # no third pool: the master's stayed closed
    assert g.stop() == 0, g.output()


def test_gunicorn_worker_exit_closes_each_workers_pool(
    gunicorn: Callable[..., Gunicorn], server: PingServer
) -> None:
    g = gunicorn("-c", "python:examples.gunicorn_app")
    g.wait_for(lambda: server.active == 2 * POOL_SIZE, "both workers' pools")
    workers = g.workers()
    assert g.stop() == 0, g.output()
    closed = re.findall(r"worker (\d+): pool 'ping' closed", g.output())
    assert {int(pid) for pid in closed} == workers, g.output()


# ------------------------------------------------------------------ what an example needs


@pytest.mark.parametrize("name", example_names())
def test_example_says_what_it_needs(name: str) -> None:
    doc = (EXAMPLES / name).read_text().split('"""')[1]
    assert "Needs:" in doc, f"{name}: its docstring does not say what it needs"


@pytest.mark.parametrize("name", example_names())
def test_example_without_its_server_exits_with_one_line_naming_the_command(name: str) -> None:
    port = free_port()
    code, out, err = run_example(name, "--port", str(port))
    assert code != 0, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: no PING server at 127.0.0.1:{port}"), err
    assert f"redis-server --port {port}" in lines[0], err


BLOCK_GUNICORN = """
import importlib.abc, runpy, sys

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "gunicorn":
            raise ModuleNotFoundError("No module named 'gunicorn'", name="gunicorn")
        return None

sys.meta_path.insert(0, Blocker())
sys.argv = [sys.argv[1]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_gunicorn_example_without_gunicorn_names_the_install_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_GUNICORN, str(EXAMPLES / "gunicorn_app.py")],
        cwd=EXAMPLES,
        capture_output=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    err = proc.stderr.decode()
    assert proc.returncode != 0 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: this example needs gunicorn") and "pip install gunicorn" in err


# ------------------------------------------------------------------ found while writing examples

SUBCLASS_IN_WITH = """
from geventconnpool import ConnectionPool

class MyPool(ConnectionPool[int]):
    def _new_connection(self) -> int:
        return 1

    def extra(self) -> int:
        return 2

with MyPool(1) as pool:
    pool.extra()
"""


def test_with_pool_keeps_the_subclass_type_for_type_checkers() -> None:
    from mypy import api

    out, err, status = api.run(
        ["--strict", "--config-file=", "--cache-dir=/dev/null", "-c", SUBCLASS_IN_WITH]
    )
    assert status == 0, out + err


# ------------------------------------------------------------------ examples/integrations

INTEGRATIONS = EXAMPLES / "integrations"
# What each integration example needs from outside the core: (module, the fix it must name).
EXTRAS_NEEDED: dict[str, list[tuple[str, str]]] = {
    "redispy_pool.py": [("redis", "pip install -e '.[redis]'")],
    "postgres_pool.py": [
        ("psycopg2", "pip install -e '.[postgres]'"),
        ("psycogreen", "pip install -e '.[postgres]'"),
    ],
    "thrift_pool.py": [("thriftpy2", "pip install -e '.[thrift]'")],
    "tls_pool.py": [("trustme", "pip install trustme")],
    "https_keepalive.py": [("trustme", "pip install trustme")],
    "flask_sqlalchemy_app.py": [
        (module, "flask flask-sqlalchemy gunicorn")
        for module in ("sqlalchemy", "psycopg2", "flask", "flask_sqlalchemy", "gunicorn")
    ],
}
SERVER_NEEDED = {"redis_pool.py": "Redis server", "redispy_pool.py": "Redis server",
                 "postgres_pool.py": "PostgreSQL server",
                 "flask_sqlalchemy_app.py": "PostgreSQL server"}  # fmt: skip

BLOCK_MODULE = """
import importlib.abc, runpy, sys

BLOCKED = sys.argv[1]

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == BLOCKED:
            raise ModuleNotFoundError(f"No module named {BLOCKED!r}", name=BLOCKED)
        return None

sys.meta_path.insert(0, Blocker())
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def integration_names() -> list[str]:
    return sorted(p.name for p in INTEGRATIONS.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("name", integration_names())
def test_integration_example_says_what_it_needs(name: str) -> None:
    doc = (INTEGRATIONS / name).read_text().split('"""')[1]
    assert "Needs:" in doc, f"{name}: its docstring does not say what it needs"
    if name in SERVER_NEEDED:
        assert "make servers-up" in doc, f"{name}: say how to start its server"


def test_every_integration_example_is_listed() -> None:
    assert set(integration_names()) == set(EXTRAS_NEEDED) | set(SERVER_NEEDED)


@pytest.mark.parametrize(
    ("name", "module", "fix"),
    [(name, module, fix) for name, needs in EXTRAS_NEEDED.items() for module, fix in needs],
)
def test_integration_example_without_its_extra_prints_the_one_line_fix(
    name: str, module: str, fix: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_MODULE, module, str(INTEGRATIONS / name)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    err = proc.stderr.decode()
    assert proc.returncode != 0 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: this example needs {module}") and fix in err, err


@pytest.mark.parametrize("name", sorted(SERVER_NEEDED))
def test_integration_example_without_its_server_names_the_command(name: str) -> None:
    port = free_port()
    proc = subprocess.run(
        [sys.executable, str(INTEGRATIONS / name), "--port", str(port)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    err = proc.stderr.decode()
    assert proc.returncode != 0 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: no {SERVER_NEEDED[name]} at 127.0.0.1:{port}"), err
    assert "start one: make servers-up" in err, err
