"""Serve the example under ``gunicorn -k gevent --preload -w 2``, send requests, count sessions.

    python -m examples.django_app.run --port 5432       # from the repository root

Prints what each worker answered and what the PostgreSQL server sees (``pg_stat_activity``):
every session of the app belongs to a worker's pool, the master holds none.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from gevent import monkey

monkey.patch_all()

import gevent.pool  # noqa: E402
from gevent import subprocess  # noqa: E402

from examples.gunicorn_app import http_get, stop, wait_http  # noqa: E402
from geventconnpool.testing import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
APP = "django-example"


def sessions(host: str, port: int) -> int:
    """Sessions of the app on the server, counted on a connection of our own."""
    import psycopg

    with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres") as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (APP,)
        ).fetchone()
    return int(row[0]) if row else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=4, help="connections per worker's pool")
    args = parser.parse_args()
    http = ("127.0.0.1", free_port())
    env = dict(
        os.environ,
        DJANGO_DB_HOST=args.host,
        DJANGO_DB_PORT=str(args.port),
        DJANGO_POOL_SIZE=str(args.size),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    argv = ["gunicorn", "-k", "gevent", "--preload", "-w", str(args.workers)]
    argv += ["-b", f"{http[0]}:{http[1]}", "--chdir", str(ROOT)]
    argv += ["examples.django_app.wsgi:application"]
    print(" ".join(argv))
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, "-m", *argv], env=env, stdout=log, stderr=log)
        try:
            wait_http(http, 30, proc, log)
            answers = list(gevent.pool.Pool(20).imap(lambda _: answer(http), range(args.requests)))
            good = report(answers, args.size, sessions(args.host, args.port))
        finally:
            stop(proc)
        if proc.returncode != 0:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace"))
    print(f"gunicorn stopped (exit code {proc.returncode})")
    return 0 if good and proc.returncode == 0 else 1


def answer(http: tuple[str, int]) -> dict[str, Any]:
    import json

    status, body = http_get(http)
    result: dict[str, Any] = json.loads(body) if status == 200 else {"error": body.decode()}
    result["status"] = status
    return result


def report(answers: list[dict[str, Any]], size: int, server_sessions: int) -> bool:
    """Print each worker's answers and the server's count; True if all is as it should be."""
    ok = [a for a in answers if a["status"] == 200]
    workers: dict[int, dict[str, Any]] = {}
    for a in ok:
        w = workers.setdefault(a["worker"], {"requests": 0, "backends": set(), "created": 0})
        w["requests"] += 1
        w["backends"].add(a["backend"])
        w["created"] = max(w["created"], a["created"])
        w["pool"] = a["pool"]
    for pid, w in sorted(workers.items()):
        print(
            f"worker pid {pid}: {w['requests']} requests through its own pool {w['pool']!r}"
            f" on {len(w['backends'])} server session(s)"
        )
    shared = set.intersection(*(w["backends"] for w in workers.values())) if workers else set()
    owned = sum(w["created"] for w in workers.values())  # sessions the workers' pools opened
    print(f"{len(ok)}/{len(answers)} requests answered")
    print(
        f"the server sees {server_sessions} sessions of the app, all of them opened by the"
        f" workers' pools ({owned}); the master holds none"
        if server_sessions <= owned
        else f"the server sees {server_sessions} sessions of the app, the workers have {owned}"
    )
    within = all(len(w["backends"]) <= size for w in workers.values())
    return len(ok) == len(answers) and not shared and server_sessions <= owned and within


if __name__ == "__main__":
    raise SystemExit(main())
