"""A WSGI app under gunicorn's gevent worker: the README's recipe for pools and ``--preload``.

The recipe: create the pool at import time with ``open=False``, use it in the workers. With
``open=False`` the constructor does no I/O and starts no greenlet; the first ``get()`` (or
``wait_ready()``) in a process opens that process's own pool. Under ``--preload`` the master
imports this module and forks the workers: it never connects, and each worker opens its own
pool.

Run it under gunicorn from the repository root, given a PING server (Redis, for instance)::

    PING_PORT=6379 gunicorn -k gevent --preload -w 2 examples.gunicorn_app:app
    curl http://127.0.0.1:8000/

To open each worker's pool as the worker starts (so that the first request does not pay the
connects, and a worker whose backend is unreachable fails to boot) and close it when the worker
stops, load this module as the configuration too: it defines :func:`post_worker_init` and
:func:`worker_exit`::

    gunicorn -k gevent --preload -w 2 -c python:examples.gunicorn_app examples.gunicorn_app:app

Why ``post_worker_init`` rather than ``post_fork``: both run in the new worker, but ``post_fork``
runs before the gevent worker has monkey-patched and re-initialised its event loop, too early for
a driver that relies on monkey-patching.

Or let this script do it all (an embedded PING server, gunicorn with those hooks, a few
requests, then stop)::

    python examples/gunicorn_app.py                    # embedded PING server
    python examples/gunicorn_app.py --port 6379        # a real Redis server

Needs: gunicorn (``pip install gunicorn``; the ``test`` extra has it); with ``--host``/``--port``
a server that answers ``PING`` with ``+PONG``, such as Redis (``redis-server --port 6379``).
Environment of the app: ``PING_HOST`` (default 127.0.0.1), ``PING_PORT`` (default 6379),
``PING_POOL_SIZE`` (connections per worker, default 4).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import gevent.pool
from gevent import socket, subprocess

from geventconnpool import ConnectionPool, retry
from geventconnpool.testing import PingServer, free_port


def command(conn: socket.socket, line: bytes = b"PING") -> bytes:
    """Send one Redis inline command and return its one-line reply."""
    conn.sendall(line + b"\r\n")
    reply = b""
    while not reply.endswith(b"\r\n"):
        chunk = conn.recv(64)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        reply += chunk
    return reply


class PingPool(ConnectionPool[socket.socket]):
    """Connections to the PING server; each process that uses the pool has its own."""

    def __init__(self, address: tuple[str, int], size: int, **options: Any) -> None:
        self.address = address
        super().__init__(size, name="ping", timeout=5, **options)

    def _new_connection(self) -> socket.socket:
        return socket.create_connection(self.address, timeout=5)


# The recipe: made at import time (in the master, with --preload), opened in each worker.
pool = PingPool(
    (os.environ.get("PING_HOST", "127.0.0.1"), int(os.environ.get("PING_PORT", 6379))),
    int(os.environ.get("PING_POOL_SIZE", 4)),
    open=False,
)


def post_worker_init(worker: Any) -> None:
    """gunicorn hook, in each new worker once gevent is set up: open this worker's pool now."""
    pool.wait_ready(10)  # raises (the worker fails to boot) if the backend is unreachable
    worker.log.info(
        "worker %s: pool %r open (%d connections)", os.getpid(), pool.name, pool.stats().open
    )


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn hook, in a worker that stops: close its pool's connections."""
    pool.close()
    server.log.info("worker %s: pool %r closed", os.getpid(), pool.name)


@retry(max_failures=2, interval=0.05)
def ping_backend() -> str:
    with pool.get() as conn:  # the first get() in a worker opens its pool, if no hook did
        return command(conn).decode().strip()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """``GET /``: PING the backend through this worker's pool; JSON says which worker, and its
    pool's state."""
    if environ.get("PATH_INFO", "/") != "/":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    status = "200 OK"
    try:
        result: dict[str, Any] = {"reply": ping_backend()}
    except Exception as exc:  # the backend is down: say so, do not crash the worker
        status, result = "503 Service Unavailable", {"error": repr(exc)}
    s = pool.stats()
    result.update(pid=os.getpid(), pool=s.name, open=s.open, created=s.created, acquired=s.acquired)
    body = json.dumps(result).encode() + b"\n"
    start_response(status, [("Content-Type", "application/json")])
    return [body]


# --------------------------------------------------------------------------------------------
# `python examples/gunicorn_app.py`: start a PING server and gunicorn, send requests, stop.


def http_get(address: tuple[str, int], path: str = "/") -> tuple[int, bytes]:
    """A minimal HTTP/1.0 GET; returns (status, body)."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def wait_http(
    address: tuple[str, int], timeout: float, proc: subprocess.Popen[bytes], log: Any
) -> None:
    """Wait until gunicorn answers on ``address``; if it exits or ``timeout`` passes, exit
    with the last line of its output (its error)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            http_get(address)
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(proc)
                log.seek(0)
                lines = log.read().decode(errors="replace").strip().splitlines() or ["no output"]
                errors = [line for line in lines if re.match(r"\w+(Error|Exception)\b", line)]
                raise SystemExit(f"error: gunicorn did not start: {(errors or lines)[-1]}")
            gevent.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop gunicorn: SIGTERM to the master, then to workers still running, then SIGKILL.

    A worker that gets SIGTERM while it is still starting (before it installs its own signal
    handlers) misses it and would keep gunicorn waiting for its graceful timeout; so after a
    few seconds the workers are told directly.
    """
    proc.terminate()
    try:
        proc.wait(timeout=3)
        return
    except subprocess.TimeoutExpired:
        pass
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    for pid in children.read_text().split() if children.exists() else ():
        os.kill(int(pid), signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def query(http: tuple[str, int], requests: int) -> list[dict[str, Any]]:
    """Send ``requests`` GETs, 10 at a time; returns the JSON answers (status added)."""

    def one(_: int) -> dict[str, Any]:
        status, body = http_get(http)
        answer: dict[str, Any] = json.loads(body)
        answer["status"] = status
        return answer

    return list(gevent.pool.Pool(10).imap(one, range(requests)))


def report(answers: list[dict[str, Any]], size: int) -> bool:
    """Print what each worker answered; True if every request got a PONG from a worker whose
    pool it opened itself (at most ``size`` connections, none inherited)."""
    ok = [a for a in answers if a["status"] == 200 and a["reply"] == "+PONG"]
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for answer in ok:
        by_pid.setdefault(answer["pid"], []).append(answer)
    for pid, mine in sorted(by_pid.items()):
        last = max(mine, key=lambda a: a["acquired"])
        print(
            f"worker pid {pid}: answered {len(mine)} requests through its own pool"
            f" {last['pool']!r} ({last['open']} connections open, {last['created']} opened by it)"
        )
    own = [a for a in ok if a["created"] >= 1 and a["open"] <= size]
    print(f"{len(own)}/{len(answers)} requests answered +PONG through their worker's own pool")
    return len(own) == len(answers)


def serve_and_query(
    ping: tuple[str, int], server: PingServer | None, requests: int, workers: int, size: int
) -> int:
    """Run gunicorn (pools opened by post_worker_init), query it, stop it; the exit code."""
    http = ("127.0.0.1", free_port())
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PING_HOST=ping[0], PING_PORT=str(ping[1]), PING_POOL_SIZE=str(size))
    argv = ["gunicorn", "-k", "gevent", "--preload", "-w", str(workers)]
    argv += ["-b", f"{http[0]}:{http[1]}"]
    argv += [
        "--chdir",
        str(root),
        "-c",
        "python:examples.gunicorn_app",
        "examples.gunicorn_app:app",
    ]
    print(" ".join(argv))
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, "-m", *argv], env=env, stdout=log, stderr=log)
        try:
            wait_http(http, 30, proc, log)
            if server is not None:
                wait_connections(server, workers * size, 30)
                print(
                    f"the PING server sees {server.active} connections:"
                    f" {workers} workers x a pool of {size}, opened as each worker started;"
                    " the master holds none"
                )
            good = report(query(http, requests), size)
        finally:
            stop(proc)
        if proc.returncode != 0:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace"))
    print(f"gunicorn stopped (exit code {proc.returncode})")
    return 0 if good and proc.returncode == 0 else 1


def wait_connections(server: PingServer, count: int, timeout: float) -> None:
    """Wait until ``server`` has ``count`` connections open."""
    deadline = time.monotonic() + timeout
    while server.active < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"error: {server.active} connections, expected {count}")
        gevent.sleep(0.05)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", help="a PING server (e.g. Redis) instead of the embedded one")
    parser.add_argument("--port", type=int, help="its port (default 6379)")
    parser.add_argument("--requests", type=int, default=20, help="HTTP requests to send")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--size", type=int, default=4, help="connections per worker's pool")
    args = parser.parse_args()
    import _needs  # examples/_needs.py (not importable by gunicorn: only here, as a script)

    _needs.package("gunicorn", "pip install gunicorn  (or: pip install -e '.[test]')")
    if args.host is not None or args.port is not None:
        _needs.ping_server((args.host or "127.0.0.1", args.port or 6379))
    if args.host is None and args.port is None:
        with PingServer() as server:
            code = serve_and_query(server.address, server, args.requests, args.workers, args.size)
    else:
        address = (args.host or "127.0.0.1", args.port or 6379)
        code = serve_and_query(address, None, args.requests, args.workers, args.size)
    raise SystemExit(code)
