"""Soak: millions of checkouts with random faults, then the books must balance.

Workers check connections out as fast as they can through a FaultProxy in front of the PING
server, some under short outer Timeouts, some failing inside the block, some killed, while a fault
greenlet resets, refuses, black-holes, delays, cuts and restarts at random. At the end the
counters in ``stats()`` must add up exactly (identities derived from pool.py), memory (RSS and the
``gc`` count of every geventconnpool object) must be flat after warm-up, and no descriptor leaked.
"""

from __future__ import annotations

import gc
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import gevent
from gevent.event import Event

from geventconnpool import PoolExhausted, PoolTimeout, PoolUnavailable
from geventconnpool.testing import FaultProxy, PingServer, open_fds

from .client import REPLY_SIZE, ChaosPool, echo

GET_TIMEOUT = 1.0
IO_TIMEOUT = 0.5
MAX_SIZE = 10
WARM_UP = 0.1  # memory is measured from this fraction of the run on
RSS_SLACK_KB = 8 * 1024  # RSS may grow this much after warm-up (allocator noise), no more
OBJECT_SLACK = 5  # per class, after warm-up
SETTLE = 10.0
OURS = "geventconnpool"
THEIRS = "geventconnpool.testing"  # the test servers, not the pool


class AppError(Exception):
    """An application error inside the block: not a disconnect, the connection is kept."""


@dataclass
class SoakResult:
    """What a soak run did and how its final checks came out."""

    target_checkouts: int
    max_seconds: float
    workers: int
    checkouts: int = 0
    seconds: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    rss_kb: list[tuple[int, int]] = field(default_factory=list)  # (checkouts, VmRSS kB)
    rss_warm_kb: int = 0  # at the end of the warm-up, with the load paused
    rss_end_kb: int = 0  # at the end, with the load stopped
    objects_warm: dict[str, int] = field(default_factory=dict)
    objects_end: dict[str, int] = field(default_factory=dict)
    gc_total_warm: int = 0
    gc_total_end: int = 0
    fds_start: int = 0
    fds_end: int = 0
    identities: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        return data


def rss_kb() -> int:
    """This process's resident set size in kB (VmRSS from /proc/self/status; 0 if unknown)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def our_objects() -> tuple[dict[str, int], int]:
    """gc-tracked objects of the pool's classes, by class; and all gc-tracked objects.

    The test servers of ``geventconnpool.testing`` are left out: they are not the pool.
    """
    gc.collect()
    counts: Counter[str] = Counter()
    everything = gc.get_objects()
    for obj in everything:
        cls = type(obj)
        module = cls.__dict__.get("__module__")
        if isinstance(module, str) and module.startswith(OURS) and module != THEIRS:
            counts[f"{module}.{cls.__qualname__}"] += 1
    return dict(sorted(counts.items())), len(everything)


@dataclass
class _Run:
    pool: ChaosPool
    server: PingServer
    proxy: FaultProxy
    result: SoakResult
    outcomes: Counter[str] = field(default_factory=Counter)
    entered: int = 0
    inflight: int = 0
    go: Event = field(default_factory=Event)  # cleared: workers and faults pause
    stop: bool = False
    server_down: bool = False


def _worker(run: _Run) -> None:
    pool = run.pool
    rnd = random.random
    while not run.stop:
        if not run.go.is_set():
            run.go.wait()
            continue
        roll = rnd()
        run.inflight += 1
        try:
            if roll < 0.01:
                _checkout_under_timeout(run, pool, rnd() * 0.002)
            else:
                _checkout(run, pool, fail=roll < 0.015)
        except Exception as e:
            run.outcomes[type(e).__name__] += 1
        finally:
            run.inflight -= 1


def _checkout_under_timeout(run: _Run, pool: ChaosPool, seconds: float) -> None:
    """A checkout under an outer Timeout that may land anywhere in it (waiting, in use...)."""
    outer = gevent.Timeout(seconds)
    outer.start()
    try:
        _checkout(run, pool, fail=False)
    except gevent.Timeout as t:
        if t is not outer:
            raise
        run.outcomes["outer Timeout"] += 1
    finally:
        outer.close()


def _checkout(run: _Run, pool: ChaosPool, fail: bool) -> None:
    with pool.get(GET_TIMEOUT) as conn:
        run.entered += 1
        echo(conn, IO_TIMEOUT)
        if fail:
            raise AppError("application error")
    run.outcomes["ok"] += 1


def _faults(run: _Run, every: float, crowd: list[gevent.Greenlet[..., None]]) -> None:
    """Random faults, one at a time; each lasts up to a few tenths of a second."""
    proxy = run.proxy
    kinds: dict[str, Callable[[], None]] = {
        "reset_all": lambda: _reset(proxy),
        "refuse": lambda: _reset_and_refuse(proxy),
        "blackhole": proxy.blackhole,
        "delay": lambda: proxy.delay(0.02),
        "cut_replies": lambda: proxy.close_after(REPLY_SIZE + REPLY_SIZE // 2),
        "restart": lambda: _stop_server(run),
        "kill_workers": lambda: _kill_some(run, crowd),
    }
    names = sorted(kinds)
    while not run.stop:
        gevent.sleep(random.uniform(every / 2, every * 1.5))
        if run.stop or not run.go.is_set():
            continue
        name = random.choice(names)
        run.result.faults[name] = run.result.faults.get(name, 0) + 1
        kinds[name]()
        gevent.sleep(random.uniform(0.02, 0.3))
        _clear(run)


def _reset(proxy: FaultProxy) -> None:
    proxy.reset_all()


def _reset_and_refuse(proxy: FaultProxy) -> None:
    proxy.reset_all()
    proxy.refuse()


def _stop_server(run: _Run) -> None:
    run.server_down = True
    run.server.stop()


def _clear(run: _Run) -> None:
    run.proxy.restore()
    if run.server_down:
        run.server.start()
        run.server_down = False


def _kill_some(run: _Run, crowd: list[gevent.Greenlet[..., None]]) -> None:
    """Kill a few workers wherever they are, and replace them."""
    for i in random.sample(range(len(crowd)), k=min(5, len(crowd))):
        crowd[i].kill(block=False)
        crowd[i] = gevent.spawn(_worker, run)


def _quiesce(run: _Run) -> None:
    """Pause the load and the faults, clear any fault, and wait for the pool to be still."""
    run.go.clear()
    _clear(run)
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        s = run.pool.stats()
        if run.inflight == 0 and s.in_use == 0 and s.connecting == 0 and s.waiting == 0:
            return
        gevent.sleep(0.005)
    run.result.problems.append(f"the pool did not settle within {SETTLE}s: {run.pool!r}")


def run_soak(
    checkouts: int = 2_000_000, max_seconds: float = 600.0, workers: int = 100, every: float = 1.0
) -> SoakResult:
    """Run to ``checkouts`` checkouts or ``max_seconds``; a random fault every ``every`` s."""
    result = SoakResult(checkouts, max_seconds, workers)
    with PingServer() as server, FaultProxy(server.address) as proxy:
        result.fds_start = open_fds()
        pool = ChaosPool(
            address=proxy.address,
            io_timeout=IO_TIMEOUT,
            min_size=2,
            max_size=MAX_SIZE,
            keepalive=0.5,
            connect_timeout=0.5,
            reconnect_delay=0.01,
            reconnect_max_delay=0.2,
            name="soak",
        )
        run = _Run(pool, server, proxy, result)
        try:
            pool.wait_ready(10)
            _soak(run, every)
        finally:
            run.stop = True
            run.go.set()
            pool.close()
            _clear(run)
        result.fds_end = _settled_fds(result.fds_start)
    _judge(result)
    return result


def _soak(run: _Run, every: float) -> None:
    result, pool = run.result, run.pool
    crowd = [gevent.spawn(_worker, run) for _ in range(result.workers)]
    run.go.set()
    chaos = gevent.spawn(_faults, run, every, crowd)
    start = time.monotonic()
    warm_at = max(1, int(result.target_checkouts * WARM_UP))
    warm_time = result.max_seconds * WARM_UP
    next_rss = 0.0
    warmed = False
    try:
        while run.entered < result.target_checkouts:
            elapsed = time.monotonic() - start
            if elapsed >= result.max_seconds:
                break
            if elapsed >= next_rss:
                result.rss_kb.append((run.entered, rss_kb()))
                next_rss = elapsed + max(0.5, result.max_seconds / 50)
            if not warmed and (run.entered >= warm_at or elapsed >= warm_time):
                warmed = True
                _quiesce(run)
                result.objects_warm, result.gc_total_warm = our_objects()
                result.rss_warm_kb = rss_kb()
                result.rss_kb.append((run.entered, result.rss_warm_kb))
                run.go.set()
            gevent.sleep(0.05)
    finally:
        _quiesce(run)
        run.stop = True
        chaos.kill()
        run.go.set()
        gevent.joinall(crowd, timeout=GET_TIMEOUT + IO_TIMEOUT + 2)
        gevent.killall(crowd)
    result.seconds = round(time.monotonic() - start, 2)
    result.checkouts = run.entered
    result.outcomes = dict(run.outcomes.most_common())
    _quiesce(run)
    result.objects_end, result.gc_total_end = our_objects()
    result.rss_end_kb = rss_kb()
    result.rss_kb.append((run.entered, result.rss_end_kb))
    stats = pool.stats()
    result.stats = stats.as_dict()
    result.identities = _identities(run, stats)


def _identities(run: _Run, s: Any) -> list[dict[str, Any]]:
    """The exact relations between the counters (see pool.py's _hand_out, _release, _discard)."""
    d = s.discarded
    seen = run.outcomes
    pool = run.pool
    checks = [
        ("open == idle + in_use + connecting", s.open, s.idle + s.in_use + s.connecting),
        ("created == idle + in_use + discarded.total", s.created, s.idle + s.in_use + d.total),
        ("acquired == checkouts the callers entered", s.acquired, run.entered),
        (
            "acquired == returned + discarded.error + discarded.interrupted + discarded.release"
            " + in_use",
            s.acquired,
            s.returned + d.error + d.interrupted + d.release + s.in_use,
        ),
        ("created == connects that succeeded", s.created, pool.connects_ok),
        (
            "connect_failures == connects that raised or timed out",
            s.connect_failures,
            pool.connects_failed + pool.connects_timed_out,
        ),
        ("timeouts == PoolTimeout seen", s.timeouts, seen[PoolTimeout.__name__]),
        ("unavailable == PoolUnavailable seen", s.unavailable, seen[PoolUnavailable.__name__]),
        ("exhausted == PoolExhausted seen", s.exhausted, seen[PoolExhausted.__name__]),
        ("discarded.lifetime + idle + invalidated + leaked == 0", 0, 0 + _unexpected(d)),
    ]
    out = [{"identity": name, "left": a, "right": b, "holds": a == b} for name, a, b in checks]
    bound = GET_TIMEOUT + 0.25
    out.append(
        {
            "identity": f"wait_seconds_max <= {bound}",
            "left": round(s.wait_seconds_max, 4),
            "right": bound,
            "holds": s.wait_seconds_max <= bound,
        }
    )
    return out


def _unexpected(d: Any) -> int:
    # With no max_lifetime, no resize(), no invalidate() and every get() context exited, the pool
    # has no reason to discard a connection for these.
    return int(d.lifetime + d.idle + d.invalidated + d.leaked)


def _settled_fds(start: int) -> int:
    deadline = time.monotonic() + SETTLE
    while open_fds() != start and time.monotonic() < deadline:
        gevent.sleep(0.01)
    return open_fds()


def _judge(r: SoakResult) -> None:
    for ident in r.identities:
        if not ident["holds"]:
            r.problems.append(
                f"counters do not add up: {ident['identity']}: {ident['left']} != {ident['right']}"
            )
    if r.fds_end != r.fds_start:
        r.problems.append(f"file descriptors: {r.fds_start} at start, {r.fds_end} at the end")
    for name, end in r.objects_end.items():
        warm = r.objects_warm.get(name, 0)
        if end > warm + OBJECT_SLACK:
            r.problems.append(f"{name}: {warm} objects after warm-up, {end} at the end")
    if r.rss_warm_kb and r.rss_end_kb - r.rss_warm_kb > RSS_SLACK_KB:
        r.problems.append(f"RSS grew from {r.rss_warm_kb} kB after warm-up to {r.rss_end_kb} kB")
    if not r.checkouts:
        r.problems.append("no checkout happened")
