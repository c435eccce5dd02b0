"""Chaos scenarios: 500 greenlets doing requests through a FaultProxy while one fault happens.

Each scenario runs for a fixed time: load starts, the fault begins after a fifth of it, lasts its
duration and is cleared; the rest of the time shows the recovery. Throughout, a sampler records
the pool's open connections (and the sockets its hooks really have open) every few milliseconds.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import gevent
from gevent.event import Event

from geventconnpool.testing import FaultProxy, open_fds

from .backends import PingBackend, RedisBackend, make_backend
from .client import (
    REPLY_SIZE,
    ChaosPool,
    RequestPolicy,
    Tally,
    make_request,
    percentile,
    timed_request,
)

WORKERS = 500
MIN_SIZE = 5
MAX_SIZE = 20
THINK = 0.02  # each worker pauses up to this long (uniformly) between requests
SAMPLE_EVERY = 0.005
FAULT_AT = 0.2  # the fault begins after this fraction of the scenario
SETTLE = 10.0  # seconds for descriptors to return to the start count after the pool closed


@dataclass
class Ctx:
    """What a fault acts on."""

    backend: PingBackend | RedisBackend
    proxy: FaultProxy


@dataclass(frozen=True)
class Fault:
    """One kind of trouble: how to start it, how to end it, how long it lasts."""

    name: str
    what: str  # one line for the report and the docs
    duration: float  # seconds, full length
    quick_duration: float
    begin: Callable[[Ctx], None]
    end: Callable[[Ctx], None]


def _nothing(ctx: Ctx) -> None:
    pass


def _restore(ctx: Ctx) -> None:
    ctx.proxy.restore()


def _refuse(ctx: Ctx) -> None:
    ctx.proxy.reset_all()
    ctx.proxy.refuse()


def _reset_all(ctx: Ctx) -> None:
    ctx.proxy.reset_all()


def _cut_replies(ctx: Ctx) -> None:
    # Each connection delivers one whole ECHO reply, then half of the next: half the replies cut.
    ctx.proxy.close_after(REPLY_SIZE + REPLY_SIZE // 2)


FAULTS: dict[str, Fault] = {
    f.name: f
    for f in (
        Fault("baseline", "no fault: the reference figures", 0.0, 0.0, _nothing, _nothing),
        Fault(
            "restart",
            "the backend stops (every connection closes, connects are refused) and starts again",
            1.0,
            0.3,
            lambda ctx: ctx.backend.stop(),
            lambda ctx: ctx.backend.start(),
        ),
        Fault(
            "reset_all",
            "every connection is reset (TCP RST) at once",
            0.0,
            0.0,
            _reset_all,
            _nothing,
        ),
        Fault(
            "blackhole",
            "the network black-holes: connects are accepted and hang, reads stall",
            5.0,
            1.0,
            lambda ctx: ctx.proxy.blackhole(),
            _restore,
        ),
        Fault(
            "latency",
            "every chunk is delayed 200 ms each way (a 400 ms round trip)",
            5.0,
            1.0,
            lambda ctx: ctx.proxy.delay(0.2),
            _restore,
        ),
        Fault(
            "refuse",
            "every connection is reset, then new connects are refused",
            3.0,
            0.5,  # quick: fewer failed connects, so the backoff ends well within the run
            _refuse,
            _restore,
        ),
        Fault(
            "cut_replies",
            "half of the replies are cut mid-way (the connection closes)",
            5.0,
            1.0,
            _cut_replies,
            _restore,
        ),
    )
}


@dataclass
class ScenarioResult:
    """The figures of one scenario run; ``problems`` lists every broken promise."""

    scenario: str
    backend: str
    what: str
    seconds: float
    fault_start: float
    fault_end: float
    workers: int
    max_size: int
    attempted: int = 0
    succeeded: int = 0
    failed: int = 0
    failed_by_type: dict[str, int] = field(default_factory=dict)
    hung: int = 0
    hard_bound: float = 0.0
    succeeded_after_fault: int = 0  # of requests started after the fault ended
    failed_during_fault: int = 0  # of requests started while the fault was on
    failed_after_fault: int = 0  # of requests started after it ended
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    recovery_s: float | None = None
    peak_open: int = 0
    peak_sockets: int = 0
    fds_start: int = 0
    fds_end: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        return data


class SocketCountingPool(ChaosPool):
    """Also counts the sockets that are really open (connecting ones included)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.live = 0
        super().__init__(*args, **kwargs)

    def _new_connection(self) -> Any:
        self.live += 1
        try:
            return super()._new_connection()
        except BaseException:
            self.live -= 1
            raise

    def _close_connection(self, conn: Any) -> None:
        self.live -= 1
        super()._close_connection(conn)


def run_scenario(
    fault_name: str,
    backend_name: str,
    seconds: float = 20.0,
    *,
    quick: bool = False,
    workers: int = WORKERS,
    policy: RequestPolicy | None = None,
) -> ScenarioResult:
    """Run one scenario against a fresh backend and proxy; never raises for a broken promise."""
    fault = FAULTS[fault_name]
    policy = policy or RequestPolicy()
    duration = fault.quick_duration if quick else fault.duration
    fault_start = seconds * FAULT_AT
    result = ScenarioResult(
        fault_name,
        backend_name,
        fault.what,
        seconds,
        round(fault_start, 3),
        round(fault_start + duration, 3),
        workers,
        MAX_SIZE,
        hard_bound=policy.hard_bound,
    )
    backend = make_backend(backend_name)
    proxy = FaultProxy(backend.address).start()
    try:
        result.fds_start = open_fds()
        _drive(fault, duration, Ctx(backend, proxy), policy, result)
        result.fds_end = _settled_fds(result.fds_start)
    finally:
        proxy.restore()
        proxy.stop()
        backend.close()
    _judge(fault, result)
    return result


def _drive(
    fault: Fault, duration: float, ctx: Ctx, policy: RequestPolicy, result: ScenarioResult
) -> None:
    pool = SocketCountingPool(
        address=ctx.proxy.address,
        io_timeout=policy.io_timeout,
        min_size=MIN_SIZE,
        max_size=MAX_SIZE,
        timeout=policy.get_timeout,
        connect_timeout=1.0,
        reconnect_delay=0.05,
        reconnect_max_delay=1.0,
        name=f"chaos-{fault.name}-{result.backend}",
    )
    try:
        pool.wait_ready(10)
        _load(pool, fault, duration, ctx, policy, result)
    finally:
        pool.close()
    stats = pool.stats()
    result.stats = {
        k: v for k, v in stats.as_dict().items() if k not in ("name", "min_size", "max_size")
    }


def _load(
    pool: SocketCountingPool,
    fault: Fault,
    duration: float,
    ctx: Ctx,
    policy: RequestPolicy,
    result: ScenarioResult,
) -> None:
    request = make_request(pool, policy)
    before, during, after = Tally(), Tally(), Tally()
    phase = [before]
    stop = Event()
    fault_over = [float("inf")]
    recovered_at: list[float] = []

    def worker() -> None:
        while not stop.is_set():
            timed_request(request, policy, phase[0])
            gevent.sleep(random.uniform(0, THINK))

    def sampler() -> None:
        while True:
            s = pool.stats()
            result.peak_open = max(result.peak_open, s.open)
            result.peak_sockets = max(result.peak_sockets, pool.live)
            now = time.monotonic()
            if not recovered_at and now >= fault_over[0] and s.idle + s.in_use >= pool.max_size:
                recovered_at.append(now)
            gevent.sleep(SAMPLE_EVERY)

    start = time.monotonic()
    watcher = gevent.spawn(sampler)
    crowd = [gevent.spawn(worker) for _ in range(result.workers)]
    try:
        gevent.sleep(result.fault_start)
        phase[0] = during
        began = time.monotonic()
        fault.begin(ctx)
        gevent.sleep(max(0.0, began + duration - time.monotonic()))
        fault.end(ctx)
        fault_over[0] = time.monotonic()
        phase[0] = after
        gevent.sleep(max(0.0, start + result.seconds - time.monotonic()))
    finally:
        stop.set()
        gevent.joinall(crowd, timeout=policy.hard_bound + 1.0)
        stuck = [g for g in crowd if not g.dead]
        gevent.killall(crowd)
        watcher.kill()
    if recovered_at:
        result.recovery_s = round(recovered_at[0] - fault_over[0], 4)
    _add_up(result, (before, during, after), len(stuck))


def _add_up(result: ScenarioResult, phases: tuple[Tally, Tally, Tally], stuck: int) -> None:
    before, during, after = phases
    result.attempted = sum(t.attempted for t in phases)
    result.succeeded = sum(t.succeeded for t in phases)
    failed = before.failed + during.failed + after.failed
    result.failed = sum(failed.values())
    result.failed_by_type = dict(failed.most_common())
    result.hung = sum(t.hung for t in phases) + stuck
    result.succeeded_after_fault = after.succeeded
    result.failed_during_fault = during.failed_total
    result.failed_after_fault = after.failed_total
    latencies = before.latencies + during.latencies + after.latencies
    for name, q in (("p50_ms", 0.5), ("p99_ms", 0.99), ("max_ms", 1.0)):
        value = percentile(latencies, q)
        setattr(result, name, None if value is None else round(value * 1000, 2))


def _settled_fds(start: int) -> int:
    """Descriptors open once the proxy saw every close (bounded wait)."""
    deadline = time.monotonic() + SETTLE
    while open_fds() != start and time.monotonic() < deadline:
        gevent.sleep(0.01)
    return open_fds()


def _judge(fault: Fault, r: ScenarioResult) -> None:
    if r.hung:
        r.problems.append(f"{r.hung} request(s) hung beyond the {r.hard_bound:.1f}s bound")
    if r.peak_open > r.max_size or r.peak_sockets > r.max_size:
        r.problems.append(
            f"peak connections {max(r.peak_open, r.peak_sockets)} above max_size={r.max_size}"
        )
    if r.fds_end != r.fds_start:
        r.problems.append(f"file descriptors: {r.fds_start} at start, {r.fds_end} at the end")
    if r.recovery_s is None:
        r.problems.append("the pool never got back to max_size connections after the fault")
    if not r.succeeded_after_fault:
        r.problems.append("no request succeeded after the fault ended")
    if r.succeeded + r.failed + r.hung != r.attempted:
        r.problems.append("requests do not add up: succeeded + failed + hung != attempted")
