"""The backend-down timeout contract (after HikariCP's DbDownTest).

While the backend cannot be reached, ``get(timeout=T)`` returns or raises within ``T`` plus a
small bound, every time, whatever the way it is unreachable; with ``fail_fast=True`` it raises
``PoolUnavailable`` within milliseconds once the pool considers the backend down.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import gevent
from gevent import socket as gsocket

from geventconnpool import PoolUnavailable
from geventconnpool.testing import FaultProxy, PingServer, ping

from .client import ChaosPool

SLACK = 0.5  # get(timeout=T) must end within T + SLACK
FAST = 0.1  # with fail_fast, a get() on a pool whose backend is down must end within this
DOWN_DEADLINE = 10.0  # seconds for a fail_fast pool to notice the backend is down
HANG = 5.0  # a get() still running this long after its timeout is counted as hung, and killed


class HandshakePool(ChaosPool):
    """A connect is TCP plus a PING handshake (as drivers do), so a silent peer makes it hang."""

    def _on_connect(self, conn: gsocket.socket) -> None:
        ping(conn)


class PingCheckPool(HandshakePool):
    """The checkout check is a PING round trip with no deadline of its own."""

    def _check(self, conn: gsocket.socket) -> bool:
        ping(conn)
        return True


def _refuse(proxy: FaultProxy) -> None:
    proxy.refuse()


def _reset_and_refuse(proxy: FaultProxy) -> None:
    proxy.reset_all()
    proxy.refuse()


def _hang(proxy: FaultProxy) -> None:
    proxy.hang_accepts()


def _blackhole(proxy: FaultProxy) -> None:
    proxy.blackhole()


@dataclass(frozen=True)
class Case:
    """One way for the backend to be unreachable, and the pool options it is met with."""

    name: str
    what: str
    fault: Callable[[FaultProxy], None]
    options: dict[str, Any]
    prefill: bool = False  # open connections before the fault
    pool_class: type[HandshakePool] = HandshakePool
    fail_fast: bool = False


_BASE = {"min_size": 2, "max_size": 4, "reconnect_delay": 0.01, "reconnect_max_delay": 0.1}
_FAIL_FAST = {**_BASE, "fail_fast": True, "fail_fast_after": 3}

CASES = [
    Case("refused", "connects refused from the start (the pool is empty)", _refuse, _BASE),
    Case(
        "reset_refused",
        "open connections reset, then connects refused",
        _reset_and_refuse,
        {**_BASE, "check_idle_after": 0},
        prefill=True,
    ),
    Case(
        "hang_short",
        "connects accepted but never answered; connect_timeout (0.1 s) below T",
        _hang,
        {**_BASE, "connect_timeout": 0.1},
    ),
    Case(
        "hang_long",
        "connects accepted but never answered; connect_timeout (30 s) above T",
        _hang,
        {**_BASE, "connect_timeout": 30.0},
    ),
    Case(
        "blackhole_checked",
        "the network black-holes while idle connections get a PING check on checkout",
        _blackhole,
        {**_BASE, "check_idle_after": 0, "connect_timeout": 30.0},
        prefill=True,
        pool_class=PingCheckPool,
    ),
    Case(
        "fail_fast_refused",
        "fail_fast=True, connects refused: PoolUnavailable once 3 connects failed",
        _refuse,
        _FAIL_FAST,
        fail_fast=True,
    ),
    Case(
        "fail_fast_hang",
        "fail_fast=True, connects hang (connect_timeout 0.05 s): PoolUnavailable after 3",
        _hang,
        {**_FAIL_FAST, "connect_timeout": 0.05},
        fail_fast=True,
    ),
]


@dataclass
class ContractResult:
    """How long every ``get()`` of one case took while the backend was unreachable."""

    case: str
    what: str
    timeout: float
    bound: float
    calls: int = 0
    hung: int = 0
    max_s: float = 0.0
    mean_s: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    down_after_s: float | None = None  # fail_fast: how long until the pool said "down"
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        return data


def timed_get(pool: HandshakePool, timeout: float) -> tuple[float, str]:
    """One ``get(timeout)``: seconds it took and how it ended ("ok" or the error's type)."""
    start = time.monotonic()
    try:
        with pool.get(timeout):
            outcome = "ok"
    except Exception as e:
        outcome = type(e).__name__
    return time.monotonic() - start, outcome


def run_case(
    case: Case, timeout: float, sequential: int, concurrent: int, hang: float = HANG
) -> ContractResult:
    """``sequential`` gets one after another, then ``concurrent`` at once; all timed."""
    bound = FAST if case.fail_fast else timeout + SLACK
    result = ContractResult(case.name, case.what, timeout, bound)
    with PingServer() as server, FaultProxy(server.address) as proxy:
        pool = case.pool_class(address=proxy.address, name=f"contract-{case.name}", **case.options)
        try:
            if case.prefill:
                pool.wait_ready(5)
            case.fault(proxy)
            if case.fail_fast and not _wait_down(pool, result):
                return result
            samples = []
            for _ in range(sequential):
                samples += _bounded_gets(pool, timeout, 1, hang, result)
            samples += _bounded_gets(pool, timeout, concurrent, hang, result)
        finally:
            pool.close()
            proxy.restore()
    _judge(result, samples, case)
    return result


def _bounded_gets(
    pool: HandshakePool, timeout: float, n: int, hang: float, result: ContractResult
) -> list[tuple[float, str]]:
    """``n`` gets at once; any still running ``hang`` s after its timeout is killed (hung)."""
    if n <= 0:
        return []
    crowd = [gevent.spawn(timed_get, pool, timeout) for _ in range(n)]
    gevent.joinall(crowd, timeout=timeout + hang)
    stuck = [g for g in crowd if not g.dead]
    if stuck:
        gevent.killall(stuck)
        result.hung += len(stuck)
        result.problems.append(f"{len(stuck)} get(timeout={timeout}) calls hung (> {hang}s)")
    return [g.value for g in crowd if isinstance(g.value, tuple)]


def _wait_down(pool: HandshakePool, result: ContractResult) -> bool:
    start = time.monotonic()
    while pool.stats().available:
        if time.monotonic() - start > DOWN_DEADLINE:
            result.problems.append(f"the pool never considered the backend down ({pool!r})")
            return False
        timed_get(pool, 0.05)  # callers keep the pool trying
    result.down_after_s = round(time.monotonic() - start, 4)
    return True


def _judge(result: ContractResult, samples: list[tuple[float, str]], case: Case) -> None:
    times = [s for s, _ in samples]
    result.calls = len(samples)
    result.outcomes = dict(Counter(outcome for _, outcome in samples).most_common())
    if times:
        result.max_s = round(max(times), 6)
        result.mean_s = round(sum(times) / len(times), 6)
    late = [s for s in times if s > result.bound]
    if late:
        result.problems.append(
            f"{len(late)} of {len(times)} get(timeout={result.timeout}) calls took longer than "
            f"{result.bound:.3g}s (worst {max(late):.3f}s)"
        )
    if case.fail_fast and set(result.outcomes) != {PoolUnavailable.__name__}:
        result.problems.append(f"fail_fast gets ended as {result.outcomes}, not PoolUnavailable")


def run_contract(timeouts: tuple[float, ...], sequential: int, concurrent: int) -> list[Any]:
    """Every case at every timeout."""
    return [run_case(c, t, sequential, concurrent) for t in timeouts for c in CASES]
