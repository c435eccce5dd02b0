"""The two scenario workloads: HikariCP's ``spike`` test and server ``recovery``.

Both run inside a child process. ``recovery`` talks to the parent over stdin/stdout: it prints
``READY`` when its load is running, and the parent answers ``UP <t_down> <t_up>`` (monotonic
clock, shared by all processes on the machine) once it has stopped and restarted the server.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent import os as gos
from gevent.event import AsyncResult, Event

from bench.impls import Impl, Snapshot
from bench.workloads import Budget, _join

SAMPLE_FIELDS = ("open", "idle", "in_use", "connecting", "waiting")


@dataclass
class Outside:
    """What the bench counts around ``hold()`` for pools that report nothing themselves."""

    waiting: int = 0
    in_use: int = 0


def sample(impl: Impl, outside: Outside) -> Snapshot:
    """The pool's state now: its own ``stats()`` if it has one, else counted from outside."""
    own = impl.snapshot()
    if own is not None:
        return {k: own[k] for k in SAMPLE_FIELDS}
    c = impl.spec.counter
    live = c.created - c.closed
    return {
        "open": live + c.connecting,
        "idle": max(0, live - outside.in_use),
        "in_use": outside.in_use,
        "connecting": c.connecting,
        "waiting": outside.waiting,
    }


@dataclass
class Sampler:
    """Samples the pool every ``interval`` seconds until stopped; keeps only changes."""

    impl: Impl
    outside: Outside
    interval: float = 0.001
    start: float = field(default_factory=time.perf_counter)
    samples: list[dict[str, float]] = field(default_factory=list)
    peaks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SAMPLE_FIELDS, 0))
    count: int = 0
    stopped: bool = False

    def run(self) -> None:
        """Sample until :attr:`stopped` (bounded by 10,000 samples)."""
        last: Snapshot | None = None
        while not self.stopped and self.count < 10_000:
            now = sample(self.impl, self.outside)
            self.count += 1
            for k, v in now.items():
                self.peaks[k] = max(self.peaks[k], v)
            if now != last:
                self.samples.append(
                    {"t_ms": round((time.perf_counter() - self.start) * 1e3, 2), **now}
                )
                last = now
            gevent.sleep(self.interval)


def spike(impl: Impl, callers: int, hold_s: float, settle_s: float) -> dict[str, Any]:
    """HikariCP's spike test on a started pool: ``callers`` greenlets released at once."""
    counter = impl.spec.counter
    opened_before = counter.opened
    outside = Outside()
    go = Event()
    waits: list[float] = []
    budget = Budget(callers, time.perf_counter() + 10.0)

    def caller() -> None:
        go.wait()
        t0 = time.perf_counter()
        outside.waiting += 1
        served = False
        try:
            with impl.hold():
                served = True
                outside.waiting -= 1
                waits.append(time.perf_counter() - t0)
                outside.in_use += 1
                try:
                    gevent.sleep(hold_s)
                finally:
                    outside.in_use -= 1
        except Exception as exc:
            budget.error(exc)
        finally:
            if not served:
                outside.waiting -= 1

    group = [gevent.spawn(caller) for _ in range(callers)]
    gevent.sleep(0)
    sampler = Sampler(impl, outside)
    sampling = gevent.spawn(sampler.run)
    start = time.perf_counter()
    go.set()
    hung = _join(group, budget, grace=0.0)
    burst_s = time.perf_counter() - start
    gevent.sleep(settle_s)  # connects still in flight land (or not) now
    sampler.stopped = True
    sampling.join(timeout=1.0)
    return {
        "opened": counter.opened,
        "opened_by_burst": counter.opened - opened_before,
        "prefilled": opened_before,
        "worst_wait_ms": max(waits, default=0.0) * 1e3,
        "burst_ms": burst_s * 1e3,
        "served": len(waits),
        "errors": budget.errors,
        "first_error": budget.first_error,
        "hung": hung,
        "peaks": sampler.peaks,
        "sample_count": sampler.count,
        "samples": sampler.samples[:2000],
    }


def read_stdin_line(result: AsyncResult[str]) -> None:
    """Read one line from stdin cooperatively and hand it to ``result``."""
    fd = sys.stdin.fileno()
    gos.make_nonblocking(fd)
    data = b""
    while not data.endswith(b"\n"):
        chunk = gos.nb_read(fd, 256)
        if not chunk:
            break
        data += chunk
    result.set(data.decode().strip())


@dataclass
class Timeline:
    """Completion times (monotonic) of attempts and requests during a recovery run."""

    attempt_failures: int = 0
    last_failure: float = 0.0
    ok_times: list[float] = field(default_factory=list)
    slowest_s: float = 0.0


def recovery(
    impl: Impl,
    greenlets: int,
    run_s: float,
    think_s: float,
    max_ops: int,
    max_failures: int,
    interval: float,
) -> dict[str, Any]:
    """Load the pool while the parent restarts the server; measure the way back."""
    counter, line = impl.spec.counter, Timeline()
    opened_before = counter.opened

    def attempt() -> None:
        try:
            impl.request()
        except Exception:
            line.attempt_failures += 1
            line.last_failure = time.monotonic()
            raise

    call = impl.retrying(attempt, max_failures, interval)
    budget = Budget(max_ops, time.perf_counter() + run_s)

    def worker() -> None:
        while budget.take(1):
            t0 = time.monotonic()
            try:
                call()
            except Exception as exc:
                budget.error(exc)
            else:
                t1 = time.monotonic()
                line.ok_times.append(t1)
                line.slowest_s = max(line.slowest_s, t1 - t0)
            gevent.sleep(think_s)

    up: AsyncResult[str] = AsyncResult()
    group = [gevent.spawn(worker) for _ in range(greenlets)]
    reader = gevent.spawn(read_stdin_line, up)
    gevent.sleep(0.05)
    print("READY", flush=True)
    hung = _join(group, budget, grace=5.0)
    answer = up.get(timeout=10.0) or ""
    reader.kill()
    words = answer.split()
    if len(words) != 3 or words[0] != "UP":
        raise RuntimeError(f"expected 'UP <t_down> <t_up>' from the parent, got {answer!r}")
    t_down, t_up = float(words[1]), float(words[2])
    return recovery_figures(line, t_down, t_up) | {
        "caller_errors": budget.errors,
        "first_error": budget.first_error,
        "hung": hung,
        "opened_during_run": counter.opened - opened_before,
        "requests_ok": len(line.ok_times),
        "slowest_request_s": line.slowest_s,
        "downtime_s": t_up - t_down,
    }


def recovery_figures(line: Timeline, t_down: float, t_up: float) -> dict[str, Any]:
    """Seconds from the server's return until no attempt fails any more (None: never)."""
    after_up = [t for t in line.ok_times if t >= t_up]
    last_bad = max(line.last_failure, t_up)
    good_after = [t for t in after_up if t >= last_bad]
    recovered = (max(last_bad, good_after[0]) - t_up) if good_after else None
    return {
        "recovery_s": recovered,
        "attempt_failures": line.attempt_failures,
        "last_failure_after_up_s": max(0.0, line.last_failure - t_up),
    }
