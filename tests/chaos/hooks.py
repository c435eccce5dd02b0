"""A hook that raises a BaseException (not an Exception) under load: no storm, no lost slot.

One pool per hook (``_new_connection``, ``_on_connect``, ``_check``, ``_on_acquire``,
``_on_release``, ``_keepalive``, ``_close_connection``): 50 greenlets do ECHO requests on it
against the embedded PING server; 2% of requests find their connection broken (the pool discards
and replaces it), so connects keep happening. After a fifth of the run the hook raises
:class:`HookFault` on half of its calls, then on every call, then stops (a fifth of the run each).

Promises: connect attempts while the hook raises on every call stay within what the backoff allows
(:func:`connect_bound`); every ``get()`` ends (with a connection or an error) within its timeout
plus 0.5 s; the counters add up (every connect that raised is a failed connect; every connection
made is open or was discarded); once the hook stops, the pool serves again within
``RECOVERY_BOUND`` and ``max_size`` greenlets can hold a connection at once (no slot lost); no
descriptor leaks. ``error=Exception`` runs the same with an ordinary exception: the pool's
designed behaviour, which the BaseException run is held to.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import gevent
from gevent import socket as gsocket
from gevent.event import Event

from geventconnpool import PoolTimeout
from geventconnpool.testing import PingServer, open_fds

from .client import ChaosPool, echo

HOOKS = (
    "_new_connection",
    "_on_connect",
    "_check",
    "_on_acquire",
    "_on_release",
    "_keepalive",
    "_close_connection",
)
CONNECT_HOOKS = ("_new_connection", "_on_connect")
WORKERS = 50
MAX_SIZE = 10
MIN_SIZE = 2
THINK = 0.01  # each worker pauses up to this long (uniformly) between requests
GET_TIMEOUT = 0.5
IO_TIMEOUT = 0.5
SLACK = 0.5  # every get(timeout=T) must end within T + SLACK
HARD_BOUND = 5.0  # a request running longer is hung (and counted)
CHURN = 0.02  # the fraction of requests that find their connection broken
FRACTION = 0.5  # the hook raises on this fraction of its calls, in the first half of the fault
RECONNECT_DELAY = 0.1
RECONNECT_MAX_DELAY = 1.0
MAX_CONNECTING = 2
JITTER = 0.5  # the pool's backoff jitter: a delay is at least (1 - JITTER) of its base
WAITER_RETRY = 0.2  # while callers wait, a failing backend is retried this often (the core's)
KEEPALIVE = 0.05  # for the _keepalive run
RECOVERY_BOUND = 1.0  # seconds after the hook stops by which requests must succeed again
SETTLE = 10.0
LOG = "geventconnpool"


class HookFault(BaseException):
    """What the hook raises: a BaseException that is neither an Exception, nor GreenletExit, nor
    a gevent Timeout (a custom one, as a hook's own escaping interrupt would be)."""


class HookError(RuntimeError):
    """The same hook's ordinary Exception (the reference run)."""


class Churn(ConnectionResetError):
    """A request found its connection broken: the pool discards it and opens another."""


@dataclass
class Faulty:
    """Which hook raises and how often; what the hooks saw (shared by the pool and the run)."""

    hook: str
    error: type[BaseException]
    rate: float = 0.0
    raised: int = 0
    connects: list[float] = field(default_factory=list)  # when each connect attempt began
    connect_raised: int = 0  # attempts whose _new_connection or _on_connect raised
    used: set[int] = field(default_factory=set)  # ids of open connections that served or pinged
    used_closed: list[float] = field(default_factory=list)  # when a used connection was closed

    def roll(self, hook: str) -> None:
        """Raise ``error`` if ``hook`` is the faulty one and the dice say so."""
        if hook == self.hook and self.rate and random.random() < self.rate:
            self.raised += 1
            raise self.error(f"{hook} failed (injected by the chaos run)")


class HookPool(ChaosPool):
    """A ChaosPool whose hooks consult ``faulty``; counts connects and closes of used ones."""

    def __init__(self, *args: Any, faulty: Faulty, **kwargs: Any) -> None:
        self.faulty = faulty
        super().__init__(*args, **kwargs)

    def _new_connection(self) -> gsocket.socket:
        f = self.faulty
        f.connects.append(time.monotonic())
        try:
            f.roll("_new_connection")
            return super()._new_connection()
        except (Exception, HookFault):
            f.connect_raised += 1
            raise

    def _keepalive(self, conn: gsocket.socket) -> None:
        self.faulty.used.add(id(conn))
        self.faulty.roll("_keepalive")
        super()._keepalive(conn)

    def _close_connection(self, conn: gsocket.socket) -> None:
        f = self.faulty
        if id(conn) in f.used:
            f.used.discard(id(conn))
            f.used_closed.append(time.monotonic())
        super()._close_connection(conn)  # closed first: the hook raises after its work
        f.roll("_close_connection")


class _OnConnect(HookPool):
    def _on_connect(self, conn: gsocket.socket) -> None:
        try:
            self.faulty.roll("_on_connect")
        except BaseException:
            self.faulty.connect_raised += 1
            raise


class _Check(HookPool):
    def _check(self, conn: gsocket.socket) -> bool:
        self.faulty.roll("_check")
        return super()._check(conn)


class _OnAcquire(HookPool):
    def _on_acquire(self, conn: gsocket.socket) -> bool | None:
        self.faulty.roll("_on_acquire")
        return None


class _OnRelease(HookPool):
    def _on_release(self, conn: gsocket.socket) -> bool | None:
        self.faulty.roll("_on_release")
        return None


POOLS: dict[str, type[HookPool]] = {
    "_on_connect": _OnConnect,
    "_check": _Check,
    "_on_acquire": _OnAcquire,
    "_on_release": _OnRelease,
}
OPTIONS: dict[str, dict[str, Any]] = {
    "_check": {"check_idle_after": 0},  # every hand-out is checked
    "_keepalive": {"keepalive": KEEPALIVE, "min_size": MAX_SIZE},
}
#: Greenlets doing requests, where not WORKERS: for keepalive, fewer than max_size, so that some
#: connections stay idle long enough to be pinged (under 50 greenlets every one is always busy).
LOAD: dict[str, int] = {"_keepalive": MAX_SIZE // 2}


def connect_bound(
    seconds: float, used_closed: int, min_size: int = MIN_SIZE, max_size: int = MAX_SIZE
) -> int:
    """The most connect attempts the backoff allows in ``seconds`` while the hook raises on every
    call: a round of at most ``max(max_connecting, min_size)`` attempts, then no new round before
    ``min(reconnect_delay x (1 - jitter), WAITER_RETRY)`` s (backoff, or the retry for waiting
    callers, whichever is sooner); plus one replacement per connection open when it began
    (``max_size``) and per used connection closed meanwhile (a connection that served a request
    or a ping and was then discarded is replaced at once, as after any error)."""
    gap = min(RECONNECT_DELAY * (1 - JITTER), WAITER_RETRY)
    per_round = max(MAX_CONNECTING, min_size)
    return int(max_size + per_round * (1 + seconds / gap) + used_closed)


@dataclass
class HookResult:
    """The figures of one hook run; ``problems`` lists every broken promise."""

    hook: str
    error: str  # HookFault (a BaseException) or HookError (an Exception)
    seconds: float
    fraction_at: float  # the hook raises on FRACTION of its calls from here
    always_at: float  # on every call from here
    stop_at: float  # and stops here
    workers: int
    max_size: int
    raised: int = 0
    attempted: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)  # ok, churn, HookFault, PoolTimeout...
    entered: int = 0  # requests that got a connection
    hung: int = 0
    late_gets: int = 0  # get()s that took longer than GET_TIMEOUT + SLACK
    worst_get_s: float = 0.0
    connects: int = 0  # connect attempts in the whole run
    connects_raised: int = 0
    connects_fraction: int = 0  # attempts while the hook raised on FRACTION of its calls
    connects_always: int = 0  # attempts while it raised on every call
    used_closed_always: int = 0
    bound_always: int = 0
    recovery_s: float | None = None  # from the hook stopping to the first request served
    failed_after_recovery: int = 0  # requests begun RECOVERY_BOUND after the stop that failed
    held_at_once: int = 0
    hub_errors: dict[str, int] = field(default_factory=dict)  # greenlets that died, by error
    log_records: dict[str, int] = field(default_factory=dict)  # the pool's log lines, by level
    fds_start: int = 0
    fds_end: int = 0
    identities: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def per_second(self, attempts: int) -> float:
        """Attempts per second over one of the fault's two halves."""
        half = self.always_at - self.fraction_at
        return attempts / half if half > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        return data


class _Counting(logging.Handler):
    def __init__(self, counts: Counter[str]) -> None:
        super().__init__(logging.DEBUG)
        self.counts = counts

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname] += 1


def run_hook(
    hook: str, seconds: float = 10.0, *, error: type[BaseException] = HookFault
) -> HookResult:
    """One run for ``hook`` (``seconds`` long; the hook raises in its middle fifths)."""
    result = HookResult(
        hook, error.__name__, seconds, seconds * 0.2, seconds * 0.4, seconds * 0.6,
        LOAD.get(hook, WORKERS), MAX_SIZE,
    )  # fmt: skip
    faulty = Faulty(hook, error)
    hub = gevent.get_hub()
    died: Counter[str] = Counter()
    logs: Counter[str] = Counter()
    handler = _Counting(logs)
    logging.getLogger(LOG).addHandler(handler)

    def died_of(
        context: object, kind: type[BaseException] | None, value: object, tb: object
    ) -> None:
        died[getattr(kind, "__name__", "?")] += 1  # counted, not printed (a storm prints 1,000s)

    hub.print_exception = died_of  # type: ignore[method-assign,assignment]
    try:
        with PingServer() as server:
            result.fds_start = open_fds()
            options: dict[str, Any] = {
                "min_size": MIN_SIZE, "max_size": MAX_SIZE, "timeout": GET_TIMEOUT,
                "connect_timeout": 1.0, "reconnect_delay": RECONNECT_DELAY,
                "reconnect_max_delay": RECONNECT_MAX_DELAY, "max_connecting": MAX_CONNECTING,
                "name": f"hook{hook}", **OPTIONS.get(hook, {}),
            }  # fmt: skip
            pool = POOLS.get(hook, HookPool)(
                address=server.address, faulty=faulty, io_timeout=IO_TIMEOUT, **options
            )
            try:
                pool.wait_ready(10)
                _drive(pool, faulty, result)
            finally:
                pool.close()
            result.fds_end = _settled_fds(result.fds_start)
    finally:
        del hub.print_exception
        logging.getLogger(LOG).removeHandler(handler)
    result.hub_errors = dict(died.most_common())
    result.log_records = dict(logs.most_common())
    _judge(result)
    return result


@dataclass
class _Load:
    pool: HookPool
    faulty: Faulty
    result: HookResult
    start: float
    stop: Event = field(default_factory=Event)
    outcomes: Counter[str] = field(default_factory=Counter)
    first_ok_after: list[float] = field(default_factory=list)


def _drive(pool: HookPool, faulty: Faulty, result: HookResult) -> None:
    load = _Load(pool, faulty, result, time.monotonic())
    crowd = [gevent.spawn(_worker, load) for _ in range(result.workers)]
    try:
        for at, rate in ((result.fraction_at, FRACTION), (result.always_at, 1.0),
                         (result.stop_at, 0.0), (result.seconds, 0.0)):  # fmt: skip
            gevent.sleep(max(0.0, load.start + at - time.monotonic()))
            faulty.rate = rate
    finally:
        faulty.rate = 0.0
        load.stop.set()
        gevent.joinall(crowd, timeout=HARD_BOUND + 1.0)
        result.hung += sum(1 for g in crowd if not g.dead)
        gevent.killall(crowd)
    _wait_quiet(pool, result)
    result.held_at_once = _hold_all_at_once(pool, load)
    _wait_quiet(pool, result)
    _tally(load, result)


def _worker(load: _Load) -> None:
    pool, faulty, result = load.pool, load.faulty, load.result
    while not load.stop.is_set():
        began = time.monotonic()
        entered: float | None = None
        bound = gevent.Timeout(HARD_BOUND)
        bound.start()
        try:
            with pool.get(GET_TIMEOUT) as conn:
                entered = time.monotonic()
                result.entered += 1
                faulty.used.add(id(conn))
                echo(conn, IO_TIMEOUT)
                if random.random() < CHURN:
                    raise Churn("the connection broke (injected by the chaos run)")
            outcome = "ok"
        except gevent.Timeout as t:
            if t is not bound:
                raise
            outcome = "hung"
            result.hung += 1
        except Churn:
            outcome = "churn"
        except (Exception, HookFault) as e:
            outcome = type(e).__name__
        finally:
            bound.close()
        ended = time.monotonic()
        _book(load, began - load.start, ended - load.start, outcome)
        took = (entered or ended) - began
        result.worst_get_s = max(result.worst_get_s, took)
        result.late_gets += took > GET_TIMEOUT + SLACK
        gevent.sleep(random.uniform(0, THINK))


def _book(load: _Load, began: float, ended: float, outcome: str) -> None:
    result = load.result
    load.outcomes[outcome] += 1
    if outcome == "ok" and began >= result.stop_at and not load.first_ok_after:
        load.first_ok_after.append(ended)
    if outcome not in ("ok", "churn") and began >= result.stop_at + RECOVERY_BOUND:
        result.failed_after_recovery += 1


def _hold_all_at_once(pool: HookPool, load: _Load) -> int:
    """How many of ``max_size`` greenlets hold a connection at the same time (no slot lost)."""
    holding: list[int] = []
    release = Event()

    def holder() -> None:
        try:
            with pool.get(2.0):
                load.result.entered += 1
                holding.append(1)
                release.wait(SETTLE)
        except Exception as e:
            load.outcomes[f"final {type(e).__name__}"] += 1

    crowd = [gevent.spawn(holder) for _ in range(pool.max_size)]
    _wait_for(lambda: len(holding) == len(crowd) or all(g.dead for g in crowd))
    held = len(holding)
    release.set()
    gevent.joinall(crowd, timeout=SETTLE)
    gevent.killall(crowd)
    return held


def _tally(load: _Load, result: HookResult) -> None:
    faulty, pool = load.faulty, load.pool
    start = load.start
    connects = [t - start for t in faulty.connects]
    closed = [t - start for t in faulty.used_closed]
    result.raised = faulty.raised
    result.attempted = sum(n for k, n in load.outcomes.items() if not k.startswith("final"))
    result.outcomes = dict(load.outcomes.most_common())
    result.connects = len(connects)
    result.connects_raised = faulty.connect_raised
    result.connects_fraction = sum(result.fraction_at <= t < result.always_at for t in connects)
    result.connects_always = sum(result.always_at <= t < result.stop_at for t in connects)
    result.used_closed_always = sum(result.always_at <= t < result.stop_at for t in closed)
    result.bound_always = connect_bound(
        result.stop_at - result.always_at, result.used_closed_always, pool.min_size, pool.max_size
    )
    if load.first_ok_after:
        result.recovery_s = round(load.first_ok_after[0] - result.stop_at, 4)
    s = pool.stats()
    result.stats = s.as_dict()
    d = s.discarded
    checks: list[tuple[str, Any, Any, Callable[[Any, Any], bool]]] = [
        ("created == idle + in_use + discarded.total", s.created, s.idle + s.in_use + d.total,
         _eq),
        ("connect attempts == created + connects that raised + connecting", result.connects,
         s.created + faulty.connect_raised + s.connecting, _eq),
        ("connect_failures >= connects that raised", s.connect_failures, faulty.connect_raised,
         _ge),
        ("acquired == checkouts the callers entered", s.acquired, result.entered, _eq),
        ("timeouts == PoolTimeout seen", s.timeouts, load.outcomes[PoolTimeout.__name__], _eq),
        ("open == max_size, nothing connecting or waiting", (s.open, s.connecting, s.waiting),
         (s.max_size, 0, 0), _eq),
    ]  # fmt: skip
    result.identities = [
        {"identity": name, "left": a, "right": b, "holds": holds(a, b)}
        for name, a, b, holds in checks
    ]


def _eq(a: Any, b: Any) -> bool:
    return bool(a == b)


def _ge(a: Any, b: Any) -> bool:
    return bool(a >= b)


def _wait_quiet(pool: HookPool, result: HookResult) -> None:
    if not _wait_for(lambda: _quiet(pool)):
        result.problems.append(f"the pool did not settle within {SETTLE}s: {pool!r}")


def _quiet(pool: HookPool) -> bool:
    s = pool.stats()
    return not (s.in_use or s.connecting or s.waiting)


def _wait_for(condition: Callable[[], bool], deadline: float = SETTLE) -> bool:
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            return False
        gevent.sleep(0.005)
    return True


def _settled_fds(start: int) -> int:
    deadline = time.monotonic() + SETTLE
    while open_fds() != start and time.monotonic() < deadline:
        gevent.sleep(0.01)
    return open_fds()


def _judge(r: HookResult) -> None:
    if r.connects_always > r.bound_always:
        always = r.stop_at - r.always_at
        r.problems.append(
            f"connect storm: {r.connects_always} connect attempts in the {always:.2g}s the hook "
            f"raised on every call ({r.connects_always / always:,.0f}/s), above the backoff's "
            f"bound of {r.bound_always}"
        )
    if r.hung or r.late_gets:
        r.problems.append(
            f"{r.hung} requests hung (> {HARD_BOUND}s); {r.late_gets} get()s took longer than "
            f"{GET_TIMEOUT + SLACK:g}s (worst {r.worst_get_s:.3f}s)"
        )
    for ident in r.identities:
        if not ident["holds"]:
            r.problems.append(
                f"counters do not add up: {ident['identity']}: {ident['left']} vs {ident['right']}"
            )
    if r.recovery_s is None or r.recovery_s > RECOVERY_BOUND:
        r.problems.append(f"no request served within {RECOVERY_BOUND}s of the hook stopping")
    if r.failed_after_recovery:
        r.problems.append(f"{r.failed_after_recovery} requests failed after the recovery bound")
    if r.held_at_once != r.max_size:
        r.problems.append(f"only {r.held_at_once} of {r.max_size} connections could be held")
    if not r.raised:
        r.problems.append(f"{r.hook} never raised: the run did not exercise it")
    if r.fds_end != r.fds_start:
        r.problems.append(f"file descriptors: {r.fds_start} at start, {r.fds_end} at the end")


def run_hooks(
    hooks: list[str] | None = None, seconds: float = 10.0, *, error: type[BaseException] = HookFault
) -> list[HookResult]:
    """Every hook (or ``hooks``), one run each."""
    return [run_hook(h, seconds, error=error) for h in hooks or HOOKS]
