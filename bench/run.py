"""``python -m bench``: every implementation side by side, in one run.

The parent starts the server, then runs each workload as rounds of implementations interleaved
A B C A B C, each run in a fresh child process (``python -m bench.child``) pinned to another CPU
than the server. It writes ``latest.md``, ``latest.json``, ``chart.png`` and ``readme.rst`` (the
README's table, to paste) to the output directory. It never installs anything: a missing peer
is reported as not installed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import render, summary
from bench.servers import REPO, Server, open_server

#: Implementations in table order, with their labels (the parent never imports them).
LABELS = {
    "bare": "bare LifoQueue",
    "fifo": "FIFO hand-off (reference)",
    "gcp021": "geventconnpool 0.2.1",
    "gsocketpool": "gsocketpool",
    "socketpool": "socketpool",
    "gcpool": "generic-connection-pool",
    "redispy": "redis-py BlockingConnectionPool",
    "sqlalchemy": "SQLAlchemy QueuePool",
    "ours": "geventconnpool (default)",
    "ours_fixed": "geventconnpool, fixed 30 ms bound",
    "ours_fifo": "geventconnpool, fair_after=0",
    "ours_redispy": "geventconnpool RedisPyConnectionPool",
}
WORKLOADS = ("ping", "slow", "cycle", "single", "spike")
DEFAULT_OUT = REPO / "bench" / "results"


def plans(quick: bool) -> dict[str, dict[str, Any]]:
    """Rounds, child timeout and parameters per workload. ``make bench`` took 8.6 minutes on 2
    busy cores (load 5) with 9 implementations; ``--quick`` is one short round of each."""
    q = quick
    loop = {"max_ops": 2_000_000, "warmup": 0.02 if q else 0.1}
    return {
        "ping": {
            "rounds": 1 if q else 5,
            "timeout": 60,
            "params": {"size": 20, "greenlets": [200, 50], "duration": 0.2 if q else 1.0} | loop,
        },
        "slow": {
            "rounds": 1 if q else 3,
            "timeout": 60,
            "params": {
                "size": 20,
                "greenlets": [200],
                "hold_ms": [5, 50],
                "duration": 0.5 if q else 3.0,
            }
            | loop,
        },
        "cycle": {
            "rounds": 1 if q else 4,
            "timeout": 120,
            "params": {
                "sizes": [10, 1000, 10000],
                "greenlets": [50, 200],
                "free": 10,
                "duration": 0.05 if q else 0.25,
            }
            | loop,
        },
        "single": {
            "rounds": 1 if q else 5,
            "timeout": 60,
            "params": {"duration": 0.1 if q else 0.5} | loop,
        },
        "spike": {
            "rounds": 1 if q else 3,
            "timeout": 60,
            "params": {
                "min_size": 5,
                "max_size": 50,
                "callers": 50,
                "hold_s": 0.002,
                "connect_s": 0.15,
                "settle_s": 0.1 if q else 0.3,
            },
        },
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--server", choices=("auto", "redis", "embedded"), default="auto")
    p.add_argument("--quick", action="store_true", help="one short round of each workload")
    p.add_argument("--rounds", type=int, help="rounds per workload (overrides the plan)")
    p.add_argument("--impls", help=f"comma-separated subset of: {','.join(LABELS)}")
    p.add_argument("--workloads", help=f"comma-separated subset of: {','.join(WORKLOADS)}")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the results go")
    p.add_argument("--no-chart", action="store_true", help="do not draw chart.png")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes with taskset")
    return p.parse_args(argv)


def subset(text: str | None, known: tuple[str, ...]) -> list[str]:
    """The names of a comma-separated option, in canonical order (all when absent)."""
    names = [n.strip() for n in (text or ",".join(known)).split(",") if n.strip()]
    if unknown := set(names) - set(known):
        raise SystemExit(f"unknown: {', '.join(sorted(unknown))} (known: {', '.join(known)})")
    return [n for n in known if n in names]


def run_child(server: Server, impl: str, workload: str, plan: dict[str, Any]) -> dict[str, Any]:
    """One child run; its ``RESULT`` line, or an error saying what went wrong."""
    job = {"impl": impl, "workload": workload, "host": "127.0.0.1", "port": server.port}
    cmd = [*server.client_prefix, sys.executable, "-m", "bench.child", json.dumps(job | plan)]
    try:
        done = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=plan["timeout"], check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {plan['timeout']} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    return {"error": f"exit {done.returncode}, no result: {done.stderr.strip()[-500:]}"}


def run_workload(
    server: Server, workload: str, plan: dict[str, Any], absent: dict[str, dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """All rounds of one workload, interleaved. An implementation skipped once is not run again
    in this workload; ``absent`` ones (not installed...) are not run in any."""
    rounds: dict[str, list[dict[str, Any]]] = {impl: [] for impl in absent}
    for r in range(plan["rounds"]):
        for impl, known in absent.items():
            earlier = rounds[impl][-1:]
            reuse = known or (earlier[0] if earlier and "skipped" in earlier[0] else None)
            t0 = time.monotonic()
            result = reuse or run_child(server, impl, workload, plan)
            took = "" if reuse else f" ({time.monotonic() - t0:.1f} s)"
            if result.get("anywhere"):
                absent[impl] = result
            rounds[impl].append(result)
            brief = render.brief(workload, result) + took
            print(f"[{workload} {r + 1}/{plan['rounds']}] {LABELS[impl]}: {brief}", file=sys.stderr)
    return rounds


def machine(server: Server) -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "?",
    )
    versions = {d: importlib.metadata.version(d) for d in ("gevent", "greenlet")}
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        **versions,
        "server": f"{server.kind} {server.version}",
        "pinning": server.pinning,
        "load_at_start": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the bench and write the results; 0 on success."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    impls, workloads = subset(args.impls, tuple(LABELS)), subset(args.workloads, WORKLOADS)
    plan = {w: p for w, p in plans(args.quick).items() if w in workloads}
    for p in plan.values():
        p["rounds"] = args.rounds or p["rounds"]
    started = time.monotonic()
    server = open_server(args.server, pin=not args.no_pin)
    try:
        meta = machine(server)
        absent: dict[str, dict[str, Any]] = {impl: {} for impl in impls}
        raw = {w: run_workload(server, w, p, absent) for w, p in plan.items()}
    finally:
        server.close()
    results = {w: summary.summarise(w, rounds) for w, rounds in raw.items()}
    summary.drop_histograms(raw)
    doc: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m bench", *argv]),
        "quick": args.quick,
        "elapsed_s": round(time.monotonic() - started),
        "machine": meta,
        "labels": {i: LABELS[i] for i in impls},
        "plans": plan,
        "noise": summary.noise(results, raw),
        "results": results,
        "raw": raw,
    }
    doc["targets"] = summary.targets(doc)
    print(render.write(doc, args.out, not args.no_chart))
    everything = not args.quick and len(impls) == len(LABELS) and len(workloads) == len(WORKLOADS)
    if everything and args.out.resolve() == DEFAULT_OUT.resolve():
        render.update_readme(doc, REPO / "README.rst")
    print(f"wrote {args.out}/latest.md, latest.json, readme.rst, chart.png", file=sys.stderr)
    if "sqlalchemy" in impls and args.workloads is None:
        run_sqlalchemy_session(args)
    if args.impls is None and args.workloads is None:  # a whole run: the Django step too
        from bench import django_view  # its own PostgreSQL and report (django.md, django.json)

        django_view.main([*(["--quick"] if args.quick else []), "--out", str(args.out)])
    return 0


# --- the SQLAlchemy session step (issue 20): GeventPool beside QueuePool, on PostgreSQL ---
def run_sqlalchemy_session(args: argparse.Namespace) -> None:
    """``python -m bench.sqlalchemy_session`` as a step of its own (it starts PostgreSQL);
    its table goes to ``sqlalchemy_session.md`` next to the other results."""
    cmd = [sys.executable, "-m", "bench.sqlalchemy_session", "--out", str(args.out)]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--rounds", str(args.rounds)] if args.rounds else []
    try:
        subprocess.run(cmd, cwd=REPO, check=False, timeout=900)
    except subprocess.TimeoutExpired:
        print("sqlalchemy_session: timed out after 900 s", file=sys.stderr)
