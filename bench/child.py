"""The child process's main: one implementation, one workload, one JSON result line.

Started by the parent as ``python -m bench.worker '<json job>'`` (which monkey-patches first).
The last line on stdout is ``RESULT <json>``: the figures, or ``{"skipped": why}`` when the
implementation cannot be imported or cannot express the workload, or ``{"error": why}``.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

from bench.impls import IMPLS, Impl
from bench.scenarios import recovery, spike
from bench.workloads import cycle_loop, request_loop, scale_cell, spec_for, warm_up

Job = dict[str, Any]
Result = dict[str, Any]


class Skip(Exception):
    """The implementation cannot run this workload (the message says why)."""


def started(job: Job, min_size: int, max_size: int, **kw: Any) -> Impl:
    """Build the job's implementation on a fresh spec and wait until it is ready."""
    impl = IMPLS[job["impl"]](spec_for(job, min_size, max_size, **kw))
    impl.start(timeout=30.0)
    return impl


def run_cycle(job: Job) -> Result:
    """``cycle``: checkout/release only, 50 greenlets over 10 real sockets."""
    p = job["params"]
    impl = started(job, p["size"], p["size"])
    try:
        warm_up(impl, cycle_loop, p["greenlets"], p["warmup"])
        return cycle_loop(impl, p["greenlets"], p["duration"], p["max_ops"])
    finally:
        impl.close()


def run_requests(job: Job) -> Result:
    """``ping`` and ``single``: PING round trips on real sockets."""
    p = job["params"]
    impl = started(job, p["size"], p["size"])
    try:
        warm_up(impl, request_loop, p["greenlets"], p["warmup"])
        return request_loop(impl, p["greenlets"], p["duration"], p["max_ops"])
    finally:
        impl.close()


def run_scale(job: Job) -> Result:
    """``scale``: the cycle on fake connections at each pool size, for each greenlet count."""
    p = job["params"]
    if job["impl"] == "newconn":
        raise Skip("no pool: pool size means nothing")
    cells: dict[str, Result] = {}
    for size in p["sizes"]:
        impl = started(job, size, size, fake=True)
        try:
            for greenlets in p["greenlets"]:
                cells[f"{size}/{greenlets}"] = scale_cell(
                    impl, greenlets, p["free"], p["duration"], p["max_ops"]
                )
        finally:
            impl.close()
    return {"cells": cells, "connections": "fake objects (no sockets) at every size"}


def run_spike(job: Job) -> Result:
    """``spike``: HikariCP's test, on fake connections whose connect takes ``connect_s``."""
    p = job["params"]
    cls = IMPLS[job["impl"]]
    if not cls.elastic:
        raise Skip("fixed size: cannot express min_size < max_size")
    impl = started(job, p["min_size"], p["max_size"], fake=True, delay=p["connect_s"])
    try:
        return spike(impl, p["callers"], p["hold_s"], p["settle_s"])
    finally:
        impl.close()


def run_recovery(job: Job) -> Result:
    """``recovery``: real sockets with a timeout, while the parent restarts the server."""
    p = job["params"]
    cls = IMPLS[job["impl"]]
    if not cls.recovers:
        raise Skip("cannot replace a dead connection")
    # Every option at its default here (no SPAWN_FREQUENCY=0): this is about reconnecting.
    impl = started(
        job, p["size"], p["size"], timeout=p["socket_timeout"], extra={"fill_at_once": False}
    )
    try:
        return recovery(
            impl,
            p["greenlets"],
            p["duration"],
            p["think_s"],
            p["max_ops"],
            p["max_failures"],
            p["interval"],
        )
    finally:
        impl.close()


WORKLOADS: dict[str, Callable[[Job], Result]] = {
    "cycle": run_cycle,
    "ping": run_requests,
    "single": run_requests,
    "scale": run_scale,
    "spike": run_spike,
    "recovery": run_recovery,
}


def run(job: Job) -> Result:
    """Run one job; never raises (the parent reads what happened from the result)."""
    try:
        result = WORKLOADS[job["workload"]](job)
        return {"version": IMPLS[job["impl"]].version()} | result
    except Skip as exc:
        return {"skipped": str(exc)}
    except ImportError as exc:
        return {"skipped": f"not installed: {exc}"}
    except Exception as exc:
        tb = traceback.format_exc(limit=6)
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": tb[-2000:]}


def main(argv: list[str]) -> int:
    """Entry point: ``argv[1]`` is the JSON job."""
    job = json.loads(argv[1])
    result = run(job)
    sys.stdout.flush()
    print("RESULT " + json.dumps(result), flush=True)
    return 0
