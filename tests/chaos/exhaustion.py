"""Exhausted pool: every connection held while tens of thousands of ``get()`` calls give up.

Greenlets take all ``max_size`` connections and hold them. Meanwhile, round after round, fresh
greenlets (one per call, as a server spawns one per request) call ``get(timeout=0.01)`` and time
out, and greenlets waiting in ``get()`` are killed with ``gevent.kill`` once all of them are in
line. ``tracemalloc`` measures the memory the process keeps, with the load paused, after a warm-up,
every tenth of the run, at the end of the exhaustion and again after the holders released and
normal requests ran on the fast path. Promises: memory stays flat (during and after, however many
calls gave up), no call outlives its timeout, no connection is handed out while all are held, no
slot is lost (``max_size`` greenlets hold a connection at once afterwards) and the pool serves.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import gevent
from gevent.event import Event

from geventconnpool import PoolTimeout
from geventconnpool.testing import PingServer, open_fds

from .client import ChaosPool, echo
from .soak import our_objects, rss_kb

MAX_SIZE = 10
TIMEOUT = 0.01  # each timed-out get()'s timeout
ROUND = 200  # greenlets per round (a round of timeouts, then a round of kills)
SLACK = 0.5  # a get(timeout=T) must end within T + SLACK
HANG = 5.0  # a round still running this long after its timeout is stuck (killed, counted)
WARM_UP = 0.1  # memory is measured from this fraction of the target on
SAMPLES = 10  # traced memory is sampled this many times during the exhaustion
MEMORY_SLACK = 256 * 1024  # bytes the process may keep beyond the warm-up, however many gets
RSS_SLACK_KB = 8 * 1024
OBJECT_SLACK = 5  # gc objects per geventconnpool class beyond the warm-up
NORMAL_WORKERS = 20
SEQUENTIAL = 1_000  # requests one after another once the holders released (the fast path)
NORMAL_REQUESTS = 50  # per worker, then, NORMAL_WORKERS at once
MIN_GIVE_UPS = 10_000  # fewer than this (time bound hit first) is itself a failure
SETTLE = 10.0


@dataclass
class ExhaustionResult:
    """What one exhaustion run did and measured; ``problems`` lists every broken promise."""

    target: int
    max_seconds: float
    max_size: int
    timeout: float
    round_size: int
    timed_out: int = 0
    killed: int = 0
    handed_out: int = 0  # get()s that got a connection while all were held: must be 0
    other: dict[str, int] = field(default_factory=dict)  # any other outcome, by type
    late: int = 0  # timed-out get()s that took longer than timeout + SLACK
    worst_s: float = 0.0
    stuck: int = 0  # greenlets that did not end (a round hung); killed
    seconds: float = 0.0
    traced_warm: int = 0  # bytes traced after the warm-up (the baseline)
    traced_samples: list[tuple[int, int]] = field(default_factory=list)  # (gave up, bytes)
    traced_exhausted: int = 0  # at the end of the exhaustion, load stopped
    traced_peak: int = 0  # the highest traced during the exhaustion (since the warm-up)
    traced_after: int = 0  # after the release and SEQUENTIAL requests on the fast path
    rss_warm_kb: int = 0
    rss_exhausted_kb: int = 0
    rss_after_kb: int = 0
    objects_warm: dict[str, int] = field(default_factory=dict)
    objects_after: dict[str, int] = field(default_factory=dict)
    served_after: int = 0
    failed_after: dict[str, int] = field(default_factory=dict)
    held_at_once: int = 0  # greenlets holding a connection at once after the release
    fds_start: int = 0
    fds_end: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def gave_up(self) -> int:
        """get() calls that timed out or were killed."""
        return self.timed_out + self.killed

    @property
    def bytes_per_get(self) -> float:
        """Traced bytes kept per get() that gave up after the warm-up, at the end of exhaustion."""
        counted = self.gave_up - (self.traced_samples[0][0] if self.traced_samples else 0)
        return (self.traced_exhausted - self.traced_warm) / counted if counted > 0 else 0.0

    @property
    def passed(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["gave_up"] = self.gave_up
        data["bytes_per_get"] = round(self.bytes_per_get, 1)
        data["passed"] = self.passed
        return data


def run_exhaustion(
    target: int = 100_000,
    max_seconds: float = 120.0,
    *,
    timeout: float = TIMEOUT,
    round_size: int = ROUND,
) -> ExhaustionResult:
    """Exhaust a pool of ``MAX_SIZE`` and let ``target`` get()s time out or be killed (bounded by
    ``max_seconds``); never raises for a broken promise."""
    result = ExhaustionResult(target, max_seconds, MAX_SIZE, timeout, round_size)
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        with PingServer() as server:
            result.fds_start = open_fds()
            pool = ChaosPool(
                address=server.address, min_size=MAX_SIZE, max_size=MAX_SIZE, name="exhausted"
            )
            try:
                pool.wait_ready(10)
                _exhaust(pool, result)
            finally:
                pool.close()
            result.fds_end = _settled_fds(result.fds_start)
    finally:
        if not tracing:
            tracemalloc.stop()
    _judge(result)
    return result


def _exhaust(pool: ChaosPool, result: ExhaustionResult) -> None:
    release = Event()
    holding: list[int] = []
    holders = [gevent.spawn(_hold, pool, release, holding) for _ in range(MAX_SIZE)]
    if not _wait_for(lambda: len(holding) == MAX_SIZE):
        result.problems.append(f"the {MAX_SIZE} holders did not all get a connection: {pool!r}")
        gevent.killall(holders)
        return
    start = time.monotonic()
    warm_at = max(1, int(result.target * WARM_UP))
    every = max(1, (result.target - warm_at) // SAMPLES)
    next_sample = warm_at
    while result.gave_up < result.target and time.monotonic() - start < result.max_seconds:
        _timeout_round(pool, result)
        _kill_round(pool, result)
        if result.gave_up >= next_sample:
            if not result.traced_samples:  # the end of the warm-up: the baseline
                result.objects_warm, _ = our_objects()
                result.rss_warm_kb = rss_kb()
                result.traced_warm = _traced()
                tracemalloc.reset_peak()
            result.traced_samples.append((result.gave_up, _traced()))
            next_sample += every
    result.seconds = round(time.monotonic() - start, 2)
    result.traced_exhausted = _traced()
    result.traced_peak = tracemalloc.get_traced_memory()[1]
    result.rss_exhausted_kb = rss_kb()
    result.traced_samples.append((result.gave_up, result.traced_exhausted))
    release.set()
    gevent.joinall(holders, timeout=SETTLE)
    _serve_one_by_one(pool, result)  # the fast path only: nobody waits, nobody is served
    result.traced_after = _traced()
    result.rss_after_kb = rss_kb()
    result.objects_after, _ = our_objects()
    _serve_concurrently(pool, result)
    result.held_at_once = _hold_all_at_once(pool)
    result.stats = pool.stats().as_dict()


def _hold(pool: ChaosPool, release: Event, holding: list[int]) -> None:
    with pool.get(5.0):
        holding.append(1)
        release.wait()


def _timeout_round(pool: ChaosPool, result: ExhaustionResult) -> None:
    """``round_size`` fresh greenlets each call get(timeout) once on the exhausted pool."""
    crowd = [gevent.spawn(_give_up, pool, result) for _ in range(result.round_size)]
    gevent.joinall(crowd, timeout=result.timeout + HANG)
    _kill_stuck(crowd, result)


def _give_up(pool: ChaosPool, result: ExhaustionResult) -> None:
    began = time.monotonic()
    try:
        with pool.get(result.timeout):
            result.handed_out += 1
    except PoolTimeout:
        result.timed_out += 1
    except Exception as e:
        result.other[type(e).__name__] = result.other.get(type(e).__name__, 0) + 1
    took = time.monotonic() - began
    result.worst_s = max(result.worst_s, took)
    if took > result.timeout + SLACK:
        result.late += 1


def _kill_round(pool: ChaosPool, result: ExhaustionResult) -> None:
    """``round_size`` greenlets wait in get(); once all are in line, each is killed."""
    before = pool.stats().waiting
    crowd = [gevent.spawn(_wait_long, pool, result) for _ in range(result.round_size)]
    if not _wait_for(lambda: pool.stats().waiting >= before + len(crowd)):
        result.problems.append(f"the kill round's greenlets never all queued: {pool!r}")
    gevent.killall(crowd, timeout=HANG)
    result.killed += sum(1 for g in crowd if g.dead and g.successful())  # GreenletExit: success
    _kill_stuck(crowd, result)


def _wait_long(pool: ChaosPool, result: ExhaustionResult) -> None:
    try:
        with pool.get(HANG * 4):
            result.handed_out += 1
    except Exception as e:
        result.other[type(e).__name__] = result.other.get(type(e).__name__, 0) + 1


def _kill_stuck(crowd: list[gevent.Greenlet[..., None]], result: ExhaustionResult) -> None:
    stuck = [g for g in crowd if not g.dead]
    if stuck:
        result.stuck += len(stuck)
        gevent.killall(stuck)


def _serve_one_by_one(pool: ChaosPool, result: ExhaustionResult) -> None:
    """After the release: SEQUENTIAL ECHO requests from one greenlet (the fast path)."""
    failed: Counter[str] = Counter(result.failed_after)
    for _ in range(SEQUENTIAL):
        try:
            with pool.get(1.0) as conn:
                echo(conn, 0.5)
            result.served_after += 1
        except Exception as e:
            failed[type(e).__name__] += 1
    result.failed_after = dict(failed)


def _serve_concurrently(pool: ChaosPool, result: ExhaustionResult) -> None:
    """Then NORMAL_WORKERS greenlets each do NORMAL_REQUESTS ECHO requests (some wait)."""
    failed: Counter[str] = Counter(result.failed_after)

    def worker() -> None:
        for _ in range(NORMAL_REQUESTS):
            try:
                with pool.get(1.0) as conn:
                    echo(conn, 0.5)
                result.served_after += 1
            except Exception as e:
                failed[type(e).__name__] += 1

    crowd = [gevent.spawn(worker) for _ in range(NORMAL_WORKERS)]
    gevent.joinall(crowd, timeout=SETTLE)
    _kill_stuck(crowd, result)
    result.failed_after = dict(failed)


def _hold_all_at_once(pool: ChaosPool) -> int:
    """How many of ``max_size`` greenlets hold a connection at the same time (no slot lost)."""
    holding: list[int] = []
    release = Event()

    def holder() -> None:
        try:
            with pool.get(2.0):
                holding.append(1)
                release.wait(SETTLE)
        except Exception:
            pass

    crowd = [gevent.spawn(holder) for _ in range(pool.max_size)]
    _wait_for(lambda: len(holding) == len(crowd) or all(g.dead for g in crowd))
    held = len(holding)
    release.set()
    gevent.joinall(crowd, timeout=SETTLE)
    gevent.killall(crowd)
    return held


def _wait_for(condition: Any, deadline: float = SETTLE) -> bool:
    """Wait (yielding) until ``condition()`` is true or ``deadline`` seconds passed."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            return False
        gevent.sleep(0.001)
    return True


def _traced() -> int:
    """Bytes tracemalloc counts as allocated now, after a full collection."""
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def _settled_fds(start: int) -> int:
    deadline = time.monotonic() + SETTLE
    while open_fds() != start and time.monotonic() < deadline:
        gevent.sleep(0.01)
    return open_fds()


def _judge(r: ExhaustionResult) -> None:
    if r.gave_up < min(r.target, MIN_GIVE_UPS):
        r.problems.append(f"only {r.gave_up} get()s gave up within {r.max_seconds:g}s")
    if r.handed_out:
        r.problems.append(f"{r.handed_out} get()s got a connection while all were held")
    if r.other:
        r.problems.append(f"get()s ended otherwise than PoolTimeout or killed: {r.other}")
    if r.late or r.stuck:
        r.problems.append(
            f"{r.late} get(timeout={r.timeout:g}) took longer than {r.timeout + SLACK:g}s "
            f"(worst {r.worst_s:.3f}s); {r.stuck} greenlets stuck"
        )
    during = max((traced for _, traced in r.traced_samples), default=r.traced_exhausted)
    for when, traced in (("during the exhaustion", during),
                         ("after the release", r.traced_after)):  # fmt: skip
        if traced - r.traced_warm > MEMORY_SLACK:
            r.problems.append(
                f"memory grew by {traced - r.traced_warm:,} bytes {when} "
                f"({r.bytes_per_get:,.0f} bytes per get() that gave up; allowed "
                f"{MEMORY_SLACK:,} in all)"
            )
    if r.rss_after_kb - r.rss_warm_kb > RSS_SLACK_KB:
        r.problems.append(f"RSS grew from {r.rss_warm_kb:,} kB to {r.rss_after_kb:,} kB")
    for name, end in r.objects_after.items():
        if end > r.objects_warm.get(name, 0) + OBJECT_SLACK:
            r.problems.append(f"{name}: {r.objects_warm.get(name, 0)} objects, then {end}")
    expected = SEQUENTIAL + NORMAL_WORKERS * NORMAL_REQUESTS
    if r.served_after != expected:
        r.problems.append(f"after the release {r.served_after} of {expected} requests served "
                          f"({r.failed_after})")  # fmt: skip
    if r.held_at_once != r.max_size:
        r.problems.append(f"only {r.held_at_once} of {r.max_size} connections could be held")
    s = r.stats
    if s and (s["waiting"] or s["in_use"] or s["open"] != r.max_size):
        r.problems.append(f"the pool is not quiet and full after the run: {s}")
    if s and s["timeouts"] != r.timed_out:
        r.problems.append(f"stats().timeouts {s['timeouts']} != {r.timed_out} PoolTimeout seen")
    if r.fds_end != r.fds_start:
        r.problems.append(f"file descriptors: {r.fds_start} at start, {r.fds_end} at the end")
