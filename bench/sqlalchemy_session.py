"""``python -m bench.sqlalchemy_session``: an ORM session workload on SQLAlchemy's pools.

GeventPool (ours, and with ``fair_after=1.0``: waiters may wait up to a second while a
releasing greenlet re-takes its connection, which is how QueuePool behaves without a bound)
beside ``QueuePool`` (what SQLAlchemy users have today; it needs
``gevent.monkey.patch_all()`` to wait cooperatively) and ``NullPool`` (a connect per checkout,
for reference), against a real PostgreSQL, under gevent: ``--greenlets`` greenlets (200) each
open a ``Session``, run one ORM ``SELECT`` by primary key and close it, over and over, on a pool
of ``--size`` connections (10). Judged on throughput (sessions/s) and on the **wait for a
connection** (from opening the session to holding its connection): p50, p99, max.

Each implementation runs in a fresh child process (``--child``, monkey-patched first), rounds
interleaved A B C A B C; a ratio is the median of per-round ratios to QueuePool. Every load loop
is bounded by a count and a deadline. Without ``--url`` a PostgreSQL cluster of its own is
started (the test suite's ``tests/servers.py``) and removed afterwards.

    python -m bench.sqlalchemy_session --quick        # 1 round of 1 s each (a smoke run)
    python -m bench.sqlalchemy_session                # 3 rounds of 3 s each
    python -m bench.sqlalchemy_session --url postgresql+psycopg2://postgres@127.0.0.1/postgres
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__" and "--child" in sys.argv:  # QueuePool waits on threading primitives
    from gevent import monkey

    monkey.patch_all()

import gevent
import sqlalchemy
from sqlalchemy import Integer, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

REPO = Path(__file__).resolve().parent.parent
IMPLS = {
    "ours": "geventconnpool GeventPool",
    "ours_fair1s": "GeventPool, fair_after=1.0",
    "queuepool": "SQLAlchemy QueuePool",
    "nullpool": "SQLAlchemy NullPool (reference)",
}
MAX_OPS = 1_000_000  # per child: the loop ends at this count even before its deadline
ROWS = 100


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "bench_sqla_items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


# ---------------------------------------------------------------------- the child
def child(job: dict[str, Any]) -> dict[str, Any]:
    """One run of one implementation (in a fresh, monkey-patched process)."""
    from geventconnpool.contrib.sqlalchemy import GeventPool, patch_psycopg2

    patch_psycopg2()
    size, greenlets = job["size"], job["greenlets"]
    kw: dict[str, Any] = {"pool_size": size, "max_overflow": 0, "pool_timeout": 30}
    classes = {
        "ours": GeventPool,
        "ours_fair1s": GeventPool,
        "queuepool": sqlalchemy.pool.QueuePool,
    }
    poolclass: Any = classes.get(job["impl"])
    if job["impl"] == "ours_fair1s":  # waiters may wait up to 1 s while releasers re-take
        kw["geventconnpool_options"] = {"fair_after": 1.0}
    if poolclass is None:
        poolclass, kw = sqlalchemy.pool.NullPool, {}
    engine = sqlalchemy.create_engine(job["url"], poolclass=poolclass, **kw)
    waits: list[float] = []
    errors = 0
    done = 0

    def session_once(key: int, record: bool) -> None:
        nonlocal errors, done
        t0 = time.perf_counter()
        try:
            with Session(engine) as session:
                session.connection()
                t1 = time.perf_counter()
                session.scalars(select(Item).where(Item.id == key)).one()
            if record:
                waits.append(t1 - t0)
                done += 1
        except Exception:
            errors += 1

    def loop(i: int, deadline: float, record: bool) -> None:
        n = 0
        while time.monotonic() < deadline and done < MAX_OPS:
            session_once((i + n) % ROWS + 1, record)
            n += 1

    warm_until = time.monotonic() + job["warmup"]
    gevent.joinall([gevent.spawn(loop, i, warm_until, False) for i in range(greenlets)])
    errors = 0
    start, cpu0 = time.monotonic(), time.process_time()
    deadline = start + job["duration"]
    gevent.joinall([gevent.spawn(loop, i, deadline, True) for i in range(greenlets)])
    elapsed, cpu = time.monotonic() - start, time.process_time() - cpu0
    engine.dispose()
    waits.sort()

    def pct(p: float) -> float:
        return waits[min(len(waits) - 1, int(p * len(waits)))] * 1000 if waits else 0.0

    return {
        "sessions": done,
        "per_s": done / elapsed,
        "cpu_us": cpu / done * 1e6 if done else 0.0,  # this process's CPU per session
        "errors": errors,
        "wait_p50_ms": pct(0.5),
        "wait_p99_ms": pct(0.99),
        "wait_max_ms": waits[-1] * 1000 if waits else 0.0,
    }


# ---------------------------------------------------------------------- the parent
def prepare(url: str) -> None:
    """The table the children read: ROWS rows."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS bench_sqla_items")
        conn.exec_driver_sql("CREATE TABLE bench_sqla_items (id int PRIMARY KEY, name text)")
        conn.exec_driver_sql(
            "INSERT INTO bench_sqla_items SELECT i, 'item ' || i FROM generate_series(1, %(n)s) i",
            {"n": ROWS},
        )
    engine.dispose()


def run_child(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.sqlalchemy_session", "--child", json.dumps(job)]
    try:
        done = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    return {"error": f"exit {done.returncode}: {done.stderr.strip()[-500:]}"}


def summarise(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per implementation: medians over rounds, and per-round ratios to QueuePool (median)."""
    out: dict[str, dict[str, Any]] = {}
    base = rounds.get("queuepool", [])
    for impl, runs in rounds.items():
        good = [r for r in runs if "error" not in r]
        if not good:
            out[impl] = {"error": runs[0].get("error", "no run")}
            continue
        row: dict[str, Any] = {
            key: statistics.median(r[key] for r in good)
            for key in ("per_s", "cpu_us", "wait_p50_ms", "wait_p99_ms")
        }
        row["wait_max_ms"] = max(r["wait_max_ms"] for r in good)
        row["errors"] = sum(r["errors"] for r in good)
        pairs = [
            (r, b)
            for r, b in zip(runs, base, strict=False)
            if "error" not in r and "error" not in b
        ]
        if pairs:
            row["throughput_x"] = statistics.median(r["per_s"] / b["per_s"] for r, b in pairs)
            row["worst_wait_x"] = statistics.median(
                r["wait_max_ms"] / b["wait_max_ms"] for r, b in pairs if b["wait_max_ms"] > 0
            )
        out[impl] = row
    return out


def render(summary: dict[str, dict[str, Any]], job: dict[str, Any], rounds: int) -> str:
    lines = [
        f"SQLAlchemy ORM sessions: {job['greenlets']} greenlets, pool of {job['size']}, "
        f"{rounds} round(s) of {job['duration']} s; ratios to QueuePool (median of rounds)",
        "",
        "| pool | sessions/s | x QueuePool | client CPU µs/session | wait p50 ms | p99 ms "
        "| max ms | x QueuePool max | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for impl, label in IMPLS.items():
        row = summary.get(impl)
        if row is None:
            continue
        if "error" in row:
            lines.append(f"| {label} | {row['error']} ||||||||")
            continue
        lines.append(
            f"| {label} | {row['per_s']:.0f} | {row.get('throughput_x', 0):.2f} "
            f"| {row['cpu_us']:.0f} | {row['wait_p50_ms']:.2f} | {row['wait_p99_ms']:.1f} "
            f"| {row['wait_max_ms']:.1f} "
            f"| {row.get('worst_wait_x', 0):.2f} | {row['errors']} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.sqlalchemy_session", description=__doc__)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--url", help="a PostgreSQL SQLAlchemy URL (else a cluster is started)")
    p.add_argument("--quick", action="store_true", help="1 round of 1 s: a smoke run")
    p.add_argument("--rounds", type=int)
    p.add_argument("--duration", type=float, help="seconds measured per child")
    p.add_argument("--greenlets", type=int, default=200)
    p.add_argument("--size", type=int, default=10)
    p.add_argument("--impls", default=",".join(IMPLS), help=f"subset of {','.join(IMPLS)}")
    p.add_argument("--out", type=Path, help="write sqlalchemy_session.md/.json there")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
        return 0
    impls = [i for i in IMPLS if i in args.impls.split(",")]
    rounds = args.rounds or (1 if args.quick else 3)
    duration = args.duration or (1.0 if args.quick else 3.0)
    job = {"greenlets": args.greenlets, "size": args.size, "duration": duration}
    job["warmup"] = 0.3 if args.quick else 1.0
    cluster = None
    url = args.url
    if url is None:
        sys.path.insert(0, str(REPO))
        from tests.servers import PostgresServer, postgres_bindir

        bindir = postgres_bindir()
        if bindir is None:
            print("n/a: PostgreSQL is not installed (initdb, pg_ctl)", file=sys.stderr)
            return 0
        cluster = PostgresServer(bindir)
        cluster.start()
        url = f"postgresql+psycopg2://{cluster.user}@127.0.0.1:{cluster.port}/{cluster.database}"
    try:
        prepare(url)
        results: dict[str, list[dict[str, Any]]] = {i: [] for i in impls}
        for r in range(rounds):
            for impl in impls:
                result = run_child(job | {"impl": impl, "url": url}, timeout=duration * 10 + 60)
                results[impl].append(result)
                brief = result.get("error") or (
                    f"{result['per_s']:.0f}/s, {result['cpu_us']:.0f} µs CPU/session,"
                    f" max wait {result['wait_max_ms']:.1f} ms"
                )
                print(f"[sqlalchemy {r + 1}/{rounds}] {IMPLS[impl]}: {brief}", file=sys.stderr)
    finally:
        if cluster is not None:
            cluster.destroy()
    summary = summarise(results)
    text = render(summary, job, rounds)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sqlalchemy_session.md").write_text(text + "\n")
        doc = {"job": job, "rounds": rounds, "summary": summary, "raw": results}
        (args.out / "sqlalchemy_session.json").write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
