"""What a run does: the implementations, the workloads, and their parameters (full or quick)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Implementations in table order; ``bare`` is the baseline every ratio divides by.
IMPL_ORDER = (
    "bare",
    "fair",
    "newconn",
    "gcp021",
    "gsocketpool",
    "socketpool",
    "gcpool",
    "redispy",
    "sqlalchemy",
    "ours",
)
BASELINE = "bare"
OURS = "ours"

#: Labels for the parent (which never imports the packages under test).
LABELS = {
    "bare": "bare LifoQueue",
    "fair": "FIFO handoff (reference)",
    "newconn": "new connection per request",
    "gcp021": "geventconnpool 0.2.1",
    "gsocketpool": "gsocketpool",
    "socketpool": "socketpool",
    "gcpool": "generic-connection-pool",
    "redispy": "redis-py BlockingConnectionPool",
    "sqlalchemy": "SQLAlchemy QueuePool",
    "ours": "geventconnpool (this)",
}

#: What a reader must know to read an implementation's figures.
NOTES = {
    "bare": "the floor: gevent.queue.LifoQueue of pre-opened connections; no checks, and no "
    "waiting order: a greenlet that returns a connection takes it straight back, so "
    "under contention most waiters starve (gevent#1487)",
    "fair": "not a library: a 30-line queue that hands each returned connection to the oldest "
    "waiter (what strict first-come-first-served costs, with no pool features)",
    "newconn": "no pool: a connect and a close per request",
    "gcp021": "PyPI 0.2.1 with Python 3 shims; fixed size; SPAWN_FREQUENCY=0 so large pools fill "
    "at once",
    "gsocketpool": "waiters poll every 0.1 s and give up after 10 tries (PoolExhaustedError); "
    "release scans the in-use deque",
    "socketpool": "gevent backend; never waits: opens a connection whenever none is idle, and "
    "max_size caps idle connections only; checks each socket with poll() on checkout",
    "gcpool": "threading pool under monkey.patch_all(); checks each socket (MSG_PEEK) on checkout",
    "redispy": "full client: ping() builds and parses RESP; connects lazily; can_read() on each "
    "checkout",
    "sqlalchemy": "QueuePool(creator, pool_size=min, max_overflow=max-min, reset_on_return=None)",
    "ours": "SPAWN_FREQUENCY=0 (fill at once, as for 0.2.1) with reconnect_delay=0.1 (its "
    "default), except in recovery, where every option is at its default",
}

#: Where a missing peer comes from (what to tell the user).
INSTALL_HINTS = {
    "gcp021": "python -m bench.prepare",
    "gsocketpool": "pip install gsocketpool",
    "socketpool": "pip install socketpool",
    "gcpool": "pip install generic-connection-pool",
    "redispy": "pip install redis",
    "sqlalchemy": "pip install sqlalchemy",
}

WORKLOAD_ORDER = ("cycle", "ping", "single", "scale", "spike", "recovery")

DESCRIPTIONS = {
    "cycle": "checkout/release only, gevent.sleep(0) while held; 50 greenlets over 10 sockets",
    "ping": "PING/+PONG round trips; 200 greenlets over 20 connections; latency includes the wait",
    "single": "1 greenlet, 1 connection, sequential PINGs",
    "scale": "the cycle at pool sizes 10, 1,000, 10,000 with 1, 50 and 200 greenlets; all but 10 "
    "connections stay checked out by a parked holder; fake connection objects (no "
    "sockets) at every size",
    "spike": "HikariCP's spike test: connect takes 150 ms (fake connections), a request holds "
    "2 ms, min_size=5, max_size=50, 50 greenlets released at once after the pool is "
    "ready; state sampled every 1 ms",
    "recovery": "the server restarts mid-run (see the report for the timing)",
}


@dataclass(frozen=True)
class WorkloadPlan:
    """How many rounds of a workload, with which parameters, each child bounded by ``timeout``."""

    rounds: int
    params: dict[str, Any]
    timeout: float
    extra: dict[str, Any] = field(default_factory=dict)


def full_plan() -> dict[str, WorkloadPlan]:
    """The ``make bench`` plan: well under 10 minutes on 2 cores."""
    return {
        "cycle": WorkloadPlan(
            5,
            {"size": 10, "greenlets": 50, "duration": 0.5, "max_ops": 2_000_000, "warmup": 0.1},
            60,
        ),
        "ping": WorkloadPlan(
            5,
            {"size": 20, "greenlets": 200, "duration": 1.0, "max_ops": 1_000_000, "warmup": 0.2},
            60,
        ),
        "single": WorkloadPlan(
            5, {"size": 1, "greenlets": 1, "duration": 0.5, "max_ops": 1_000_000, "warmup": 0.1}, 60
        ),
        "scale": WorkloadPlan(
            3,
            {
                "sizes": [10, 1000, 10000],
                "greenlets": [1, 50, 200],
                "free": 10,
                "duration": 0.2,
                "max_ops": 1_000_000,
            },
            180,
        ),
        "spike": WorkloadPlan(
            3,
            {
                "min_size": 5,
                "max_size": 50,
                "callers": 50,
                "hold_s": 0.002,
                "connect_s": 0.15,
                "settle_s": 0.3,
            },
            60,
        ),
        "recovery": WorkloadPlan(2, recovery_params(3.0), 60, {"stop_after": 0.8, "down_s": 0.5}),
    }


def quick_plan() -> dict[str, WorkloadPlan]:
    """``--quick``: about 1.5 minutes (mostly process start-up); same shapes, shorter runs."""
    return {
        "cycle": WorkloadPlan(
            2,
            {"size": 10, "greenlets": 50, "duration": 0.15, "max_ops": 500_000, "warmup": 0.03},
            30,
        ),
        "ping": WorkloadPlan(
            2,
            {"size": 20, "greenlets": 200, "duration": 0.25, "max_ops": 500_000, "warmup": 0.05},
            30,
        ),
        "single": WorkloadPlan(
            2, {"size": 1, "greenlets": 1, "duration": 0.15, "max_ops": 500_000, "warmup": 0.03}, 30
        ),
        "scale": WorkloadPlan(
            1,
            {
                "sizes": [10, 1000, 10000],
                "greenlets": [1, 200],
                "free": 10,
                "duration": 0.08,
                "max_ops": 500_000,
            },
            120,
        ),
        "spike": WorkloadPlan(
            1,
            {
                "min_size": 5,
                "max_size": 50,
                "callers": 50,
                "hold_s": 0.002,
                "connect_s": 0.15,
                "settle_s": 0.1,
            },
            30,
        ),
        "recovery": WorkloadPlan(1, recovery_params(1.8), 40, {"stop_after": 0.4, "down_s": 0.3}),
    }


def recovery_params(duration: float) -> dict[str, Any]:
    """Parameters of the recovery child (the parent's stop/restart timing is in ``extra``)."""
    return {
        "size": 10,
        "greenlets": 20,
        "duration": duration,
        "think_s": 0.001,
        "max_ops": 1_000_000,
        "max_failures": 40,
        "interval": 0.05,
        "socket_timeout": 2.0,
    }
