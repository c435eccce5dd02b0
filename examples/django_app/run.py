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


def session_ports(host: str, port: int) -> list[int]:
    """The client ports of the app's sessions, as the server sees them (``pg_stat_activity``)."""
    import psycopg

    with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres") as conn:
        rows = conn.execute(
            "SELECT client_port FROM pg_stat_activity WHERE application_name = %s", (APP,)
        ).fetchall()
    return [int(r[0]) for r in rows]


def ports_of(pid: int) -> set[int]:
    """Local TCP ports of the sockets process ``pid`` holds open (Linux ``/proc``)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] in inodes:
            ports.add(int(fields[1].split(":")[1], 16))
    return ports


def sessions_by_process(master: int, host: str, port: int) -> dict[str, int]:
    """How many of the app's server sessions each process (master, workers) holds."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    owners = {"master": ports_of(master)}
    owners.update({f"worker {pid}": ports_of(int(pid)) for pid in children})
    counts = dict.fromkeys(owners, 0)
    counts["nobody"] = 0
    for client in session_ports(host, port):
        owner = next((name for name, ports in owners.items() if client in ports), "nobody")
        counts[owner] += 1
    return counts


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
            held = sessions_by_process(proc.pid, args.host, args.port)
            good = report(answers, args.size, held)
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


def report(answers: list[dict[str, Any]], size: int, held: dict[str, int]) -> bool:
    """Print each worker's answers and who holds the server's sessions; True if all is well:
    every request answered, no session shared between workers, none held by the master."""
    ok = [a for a in answers if a["status"] == 200]
    workers: dict[int, dict[str, Any]] = {}
    for a in ok:
        w = workers.setdefault(a["worker"], {"requests": 0, "backends": set()})
        w["requests"] += 1
        w["backends"].add(a["backend"])
        w["pool"] = a["pool"]
    for pid, w in sorted(workers.items()):
        print(
            f"worker pid {pid}: {w['requests']} requests through its own pool {w['pool']!r}"
            f" on {len(w['backends'])} server session(s)"
        )
    shared = set.intersection(*(w["backends"] for w in workers.values())) if workers else set()
    print(f"{len(ok)}/{len(answers)} requests answered")
    mine = {k: v for k, v in held.items() if k.startswith("worker")}
    print(
        f"server sessions of the app: master {held['master']},"
        f" {', '.join(f'{k} {v}' for k, v in sorted(mine.items()))}, no process {held['nobody']}"
    )
    if held["master"] == 0 and held["nobody"] == 0:
        print("the master holds none; every session belongs to a worker's pool")
    within = all(n <= size for n in mine.values())
    return (
        len(ok) == len(answers)
        and not (shared and len(workers) > 1)
        and held["master"] == 0
        and held["nobody"] == 0
        and within
    )


if __name__ == "__main__":
    raise SystemExit(main())
