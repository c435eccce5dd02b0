"""A Django view under gevent on three pools, side by side: ``python -m bench.django_view``.

Django 5.x with psycopg 3, against a PostgreSQL this script starts (tests/servers.py). Each run
is a fresh child process (``gevent.monkey.patch_all()`` first, Django's settings per process):
``greenlets`` greenlets each send ``requests`` requests through Django's real WSGI handler
(``request_started`` / ``request_finished`` and their ``close_old_connections``), to a view that
takes a connection and runs one short query (``pg_sleep`` of ``hold_ms``). Every pool gets
``max_size`` connections. Implementations:

* ``ours``: ``ENGINE: "geventconnpool.contrib.django.postgresql"``, ``OPTIONS["pool"]``;
  ``ours_noreset``: the same with ``"reset": None`` (no ``DISCARD ALL`` on return).
* ``geventpool``: django-db-geventpool's ``postgresql_psycopg3`` backend, ``MAX_CONNS``.
* ``django_pool``: Django's own ``OPTIONS["pool"]`` (psycopg_pool; its worker threads are
  greenlets once monkey-patched), ``min_size=max_size``.
* ``no_pool``: Django's backend without a pool (a server connection per request), for scale.

Measured per run: requests per second; the **wait**, from the view asking for its connection
(``connection.ensure_connection()``, where each backend checks out) to holding it, p50 / p99 /
max; failed requests; the most server sessions seen at once (``pg_stat_activity``, sampled every
5 ms). Rounds interleave the implementations (A B C D A B C D ...); the report gives medians over
rounds and each one's ratio to ours. Loops are bounded by count, each child by a deadline.

    python -m bench.django_view                 # 3 rounds, 200 greenlets x 20 requests
    python -m bench.django_view --quick         # 1 round, 200 greenlets x 5 requests
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results"
APP = "bench-django"
LABELS = {
    "ours": "geventconnpool Django backend",
    "ours_noreset": "geventconnpool, reset=None",
    "geventpool": "django-db-geventpool 4",
    "django_pool": "Django's own pool (psycopg_pool)",
    "no_pool": "Django, no pool (CONN_MAX_AGE=0)",
}
NEEDS = {
    "ours": ["django", "psycopg"],
    "ours_noreset": ["django", "psycopg"],
    "geventpool": ["django", "psycopg", "django_db_geventpool"],
    "django_pool": ["django", "psycopg", "psycopg_pool"],
    "no_pool": ["django", "psycopg"],
}


def database(impl: str, port: int, max_size: int, timeout: float) -> dict[str, Any]:
    """The ``DATABASES["default"]`` of one implementation."""
    entry: dict[str, Any] = {
        "NAME": "postgres",
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": port,
        "CONN_MAX_AGE": 0,
        "OPTIONS": {"application_name": APP},
    }
    if impl in ("ours", "ours_noreset"):
        entry["ENGINE"] = "geventconnpool.contrib.django.postgresql"
        entry["OPTIONS"]["pool"] = {"max_size": max_size, "timeout": timeout}
        if impl == "ours_noreset":  # no DISCARD ALL on return: one round trip less per request
            entry["OPTIONS"]["pool"]["reset"] = None
    elif impl == "geventpool":
        entry["ENGINE"] = "django_db_geventpool.backends.postgresql_psycopg3"
        entry["OPTIONS"].update(MAX_CONNS=max_size, REUSE_CONNS=max_size)
    elif impl == "django_pool":
        entry["ENGINE"] = "django.db.backends.postgresql"
        entry["OPTIONS"]["pool"] = {"min_size": max_size, "max_size": max_size, "timeout": timeout}
    else:
        entry["ENGINE"] = "django.db.backends.postgresql"
    return entry


# -- the child: one implementation, one run ---------------------------------------------------


def child(args: argparse.Namespace) -> dict[str, Any]:
    from gevent import monkey

    monkey.patch_all()
    import gevent
    import gevent.event
    import psycopg
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
        USE_TZ=True,
        DATABASES={"default": database(args.child, args.port, args.max_size, args.timeout)},
    )
    import django

    django.setup()
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.signals import got_request_exception

    handler = WSGIHandler()
    errors: list[str] = []

    def record(sender: Any, request: Any = None, **kwargs: Any) -> None:
        errors.append(repr(sys.exc_info()[1])[:160])

    got_request_exception.connect(record, weak=False)
    waits: list[float] = []
    failures: list[str] = []
    peak = [0]
    succeeded = [0]
    last_done = [0.0]
    stop = gevent.event.Event()

    def sample() -> None:
        with psycopg.connect(
            host="127.0.0.1", port=args.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            while not stop.is_set():
                row = conn.execute(sql, (APP,)).fetchone()
                peak[0] = max(peak[0], int(row[0]) if row else 0)
                gevent.sleep(0.005)

    global _WAITS, _HOLD
    _WAITS, _HOLD = waits, args.hold_ms / 1000.0
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/view",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
    }

    def one() -> None:
        for _ in range(args.requests):
            status: list[str] = []

            def start_response(line: str, headers: Any, status: list[str] = status) -> None:
                status.append(line)

            try:
                body = b"".join(handler(dict(environ), start_response))
                if status and status[0].startswith("200"):
                    succeeded[0] += 1
                    last_done[0] = time.perf_counter()
                else:
                    failures.append(errors[-1] if errors else f"{status[:1]} {body[:80]!r}")
            except Exception as exc:  # a backend error escaping Django's handler
                failures.append(repr(exc)[:200])

    sampler = gevent.spawn(sample)
    gevent.sleep(0.05)
    start = time.perf_counter()
    jobs = [gevent.spawn(one) for _ in range(args.greenlets)]
    gevent.joinall(jobs, timeout=args.deadline)
    elapsed = time.perf_counter() - start
    stop.set()
    sampler.join(2)
    done = succeeded[0]
    busy = (last_done[0] - start) if done else elapsed  # a hung request does not stretch req/s
    hung = sum(1 for j in jobs if not j.dead)
    ordered = sorted(waits) or [0.0]
    worst = max(ordered[-1], elapsed if hung else 0.0)  # a hung one waits at least that long
    return {
        "impl": args.child,
        "requests": args.greenlets * args.requests,
        "ok": done,
        "waits": len(waits),
        "failed": len(failures),
        "failures": sorted(set(failures))[:3],
        "unfinished": hung,
        "elapsed_s": elapsed,
        "req_per_s": done / busy if busy else 0.0,
        "wait_p50_ms": 1000 * ordered[len(ordered) // 2],
        "wait_p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "wait_max_ms": 1000 * worst,
        "peak_sessions": peak[0],
    }


_WAITS: list[float] = []
_HOLD = 0.001


def view(request: Any) -> Any:
    """The view: take the connection (timed: that is the wait), run one short query."""
    from django.db import connection
    from django.http import HttpResponse

    start = time.perf_counter()
    try:
        connection.ensure_connection()
    finally:  # a wait that ended in an error (a pool timeout) is a wait too
        _WAITS.append(time.perf_counter() - start)
    with connection.cursor() as cur:
        cur.execute("SELECT pg_sleep(%s), 1", [_HOLD])
        cur.fetchone()
    return HttpResponse(b"ok")


def __getattr__(name: str) -> Any:
    """``urlpatterns``, made when Django's resolver asks (after settings are configured)."""
    if name == "urlpatterns":
        from django.urls import path

        return [path("view", view)]
    raise AttributeError(name)


# -- the parent: servers, rounds, report ---------------------------------------------------------


def missing(impl: str) -> list[str]:
    return [m for m in NEEDS[impl] if importlib.util.find_spec(m) is None]


def run_child(impl: str, port: int, plan: dict[str, Any]) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.django_view", "--child", impl, "--port", str(port)]
    for key in ("greenlets", "requests", "max_size", "timeout", "hold_ms", "deadline"):
        argv += [f"--{key.replace('_', '-')}", str(plan[key])]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        proc = subprocess.run(
            argv,
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=plan["deadline"] + 30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"impl": impl, "error": f"killed after {plan['deadline'] + 30}s"}
    if proc.returncode != 0:
        return {"impl": impl, "error": proc.stderr.strip().splitlines()[-1:]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if "error" not in r]
    if not good:
        return {"error": runs[0].get("error") if runs else "no run"}
    return {
        "req_per_s": statistics.median(r["req_per_s"] for r in good),
        "all_done_s": statistics.median(r["elapsed_s"] for r in good),
        "wait_p50_ms": statistics.median(r["wait_p50_ms"] for r in good),
        "wait_p99_ms": statistics.median(r["wait_p99_ms"] for r in good),
        "wait_max_ms": max(r["wait_max_ms"] for r in good),
        "failed": sum(r["failed"] for r in good),
        "hung": sum(r["unfinished"] for r in good),
        "failures": sorted({f for r in good for f in r["failures"]})[:3],
        "peak_sessions": max(r["peak_sessions"] for r in good),
        "rounds": len(good),
    }


def render(doc: dict[str, Any]) -> str:
    plan = doc["plan"]
    lines = [
        "# Django view: geventconnpool's backend beside the pools Django users have today",
        "",
        f"{doc['date']}; `{doc['command']}`; {plan['rounds']} round(s) of {plan['greenlets']}"
        f" greenlets x {plan['requests']} requests, max_size={plan['max_size']}, query"
        f" pg_sleep({plan['hold_ms']} ms), pool timeout {plan['timeout']} s; Django"
        f" {doc['versions'].get('django')}, psycopg {doc['versions'].get('psycopg')},"
        f" django-db-geventpool {doc['versions'].get('django-db-geventpool')}.",
        "",
        "| implementation | req/s | x ours | wait p50 ms | wait p99 ms | worst wait ms"
        " | x ours | server sessions (max) | failed | hung | all done s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ours = doc["results"].get("ours", {})
    for impl, res in doc["results"].items():
        if "error" in res or "absent" in res:
            why = res.get("absent") or res.get("error")
            lines.append(f"| {LABELS[impl]} | n/a: {why} | | | | | | | | | |")
            continue
        rps = res["req_per_s"] / ours["req_per_s"] if ours.get("req_per_s") else float("nan")
        worst = (
            res["wait_max_ms"] / ours["wait_max_ms"] if ours.get("wait_max_ms") else float("nan")
        )
        lines.append(
            f"| {LABELS[impl]} | {res['req_per_s']:.0f} | {rps:.2f} | {res['wait_p50_ms']:.2f}"
            f" | {res['wait_p99_ms']:.1f} | {res['wait_max_ms']:.1f} | {worst:.2f}"
            f" | {res['peak_sessions']} | {res['failed']} | {res['hung']}"
            f" | {res['all_done_s']:.1f} |"
        )
    lines += [
        "",
        "Wait: from the view asking for its connection (`connection.ensure_connection()`) to"
        " holding it. Server sessions: the most sessions of the app `pg_stat_activity` showed"
        " at once (sampled every 5 ms), against max_size. Failed: requests that got an error"
        " (500); hung: requests still unanswered at the run's deadline (their wait counts as"
        " the whole run). req/s: answered requests over the time to the last answer; all done:"
        " the time until every request was answered or failed (the deadline if one hung). Ratios:"
        " the median over rounds divided by ours; worst wait is the worst over all rounds.",
    ]
    for impl, res in doc["results"].items():
        if res.get("failures"):
            lines.append(f"- {LABELS[impl]} failures: {'; '.join(res['failures'])}")
    return "\n".join(lines) + "\n"


def versions() -> dict[str, str]:
    import importlib.metadata

    found = {}
    for dist in ("django", "psycopg", "psycopg-pool", "django-db-geventpool"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 5 requests per greenlet")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--impls", help=f"a subset of {','.join(LABELS)}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--child", choices=list(LABELS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--greenlets", type=int, default=200)
    parser.add_argument("--requests", type=int)
    parser.add_argument("--max-size", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--hold-ms", type=float, default=1.0)
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds per child run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return 0
    impls = [i for i in (args.impls or ",".join(LABELS)).split(",") if i]
    plan = {
        "rounds": args.rounds or (1 if args.quick else 3),
        "greenlets": args.greenlets,
        "requests": args.requests or (5 if args.quick else 20),
        "max_size": args.max_size,
        "timeout": args.timeout,
        "hold_ms": args.hold_ms,
        "deadline": args.deadline,
    }
    sys.path.insert(0, str(REPO))
    from tests.servers import PostgresServer, postgres_bindir

    bindir = postgres_bindir()
    if bindir is None:
        print("bench.django_view: PostgreSQL is not installed; skipped", file=sys.stderr)
        return 0
    server = PostgresServer(bindir)
    server.start()
    raw: dict[str, list[dict[str, Any]]] = {i: [] for i in impls}
    try:
        for _ in range(plan["rounds"]):
            for impl in impls:
                if not missing(impl):
                    raw[impl].append(run_child(impl, server.port, plan))
    finally:
        server.destroy()
    results = {
        i: ({"absent": f"{', '.join(missing(i))} not installed"} if missing(i) else summarise(r))
        for i, r in raw.items()
    }
    import datetime

    doc = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m bench.django_view", *(argv or sys.argv[1:])]),
        "plan": plan,
        "versions": versions(),
        "results": results,
        "raw": raw,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    text = render(doc)
    (args.out / "django.md").write_text(text)
    (args.out / "django.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(text)
    print(f"wrote {args.out}/django.md, django.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
