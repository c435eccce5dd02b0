"""How a pool's state is shown: its error messages (each names the pool, shows its state, and
says what to do), ``stats()`` and ``dump()``. Everything here only reads the state."""

from __future__ import annotations

from typing import Any

from ._records import describe, greenlet_label
from ._state import PoolState
from .errors import PoolClosed, PoolError, PoolExhausted, PoolTimeout, PoolUnavailable
from .stats import ConnectionInfo, Discarded, PoolDump, PoolStats, WaiterInfo


def state_text(state: PoolState[Any]) -> str:
    """``open=.. idle=.. in_use=.. connecting=.. waiting=.. max=..``."""
    s = state
    return (
        f"open={s.open_count} idle={len(s.idle)} in_use={len(s.held) + len(s.pinging)} "
        f"connecting={len(s.connecting)} waiting={s.waiting} max={s.max}"
    )


def closed_message(name: str) -> str:
    return f"pool {name!r} is closed; create a new pool or stop calling get()"


def cause(state: PoolState[Any]) -> BaseException | None:
    """The last connect error while connects are failing (a PoolTimeout's cause), else None."""
    return state.health.cause()


def timeout_error(name: str, state: PoolState[Any], timeout: float | None) -> PoolTimeout:
    """No connection within ``timeout`` (the caller counts it: ``state.timed_out()``)."""
    hint = "raise max_size, hold connections for less time, or pass a larger timeout"
    failures = state.health.streak
    if failures:
        hint = (
            f"connects are failing ({failures} in a row; the last failed with "
            f"{state.health.last_error!r}): is the backend up?"
        )
    return PoolTimeout(
        f"pool {name!r}: no connection within {timeout}s ({state_text(state)}); {hint}"
    )


def refusal_error(
    name: str, state: PoolState[Any], why: str, max_waiting: int | None
) -> BaseException:
    """The error for a get() the state refused: "closed", "down" or "exhausted"."""
    if why == "closed":
        return PoolClosed(closed_message(name))
    if why == "down":
        err: PoolError = PoolUnavailable(
            f"pool {name!r}: backend unavailable after {state.health.streak} "
            f"failed connects ({state_text(state)}); the pool keeps retrying in the background"
        )
        err.__cause__ = state.health.last_error
        return err
    return PoolExhausted(
        f"pool {name!r}: {state.waiting} greenlets already wait (max_waiting={max_waiting}); "
        f"shed load or raise max_waiting ({state_text(state)})"
    )


def not_ready_error(name: str, state: PoolState[Any], timeout: float | None) -> PoolTimeout:
    """wait_ready() ran out of time."""
    opened = state.open_count - len(state.connecting)
    return PoolTimeout(
        f"pool {name!r}: {opened} of min_size={state.min} connections open after {timeout}s "
        f"({state_text(state)})"
    )


def wrong_hub_error(name: str, hub: Any) -> RuntimeError:
    """get() from a thread (a hub) other than the pool's: gevent's primitives are per thread."""
    return RuntimeError(
        f"pool {name!r} belongs to the gevent hub of thread {hub.thread_ident}; "
        "create one pool per thread (see docs/usage/threads.rst)"
    )


def snapshot(state: PoolState[Any], name: str) -> PoolStats:
    """``stats()``: the state and the counters, in O(1)."""
    c = state.counters
    return PoolStats(
        name=name,
        open=state.open_count,
        idle=len(state.idle),
        in_use=len(state.held) + len(state.pinging),
        connecting=len(state.connecting),
        waiting=state.waiting,
        min_size=state.min,
        max_size=state.max,
        available=not state.health.down,
        closed=state.closed,
        checking=len(state.pinging),
        acquired=c.acquired,
        created=c.created,
        connect_failures=c.connect_failures,
        timeouts=c.timeouts,
        exhausted=c.exhausted,
        unavailable=c.unavailable,
        discarded=Discarded(**c.discarded),
        wait_seconds_total=c.wait_seconds,
        wait_seconds_max=c.wait_max,
        use_seconds_total=c.use_seconds,
        connect_seconds_total=c.connect_seconds,
        returned=c.returned,
    )


def dump(state: PoolState[Any], name: str, now: float) -> PoolDump:
    """``dump()``: every connection and waiter, warmest idle connection first."""
    conns = [describe(rec, "idle", now) for rec in reversed(state.idle)]
    conns += [describe(rec, "in_use", now) for rec in state.held]
    conns += [describe(rec, "keepalive", now) for rec in state.pinging]
    conns += [
        ConnectionInfo(id=0, state="connecting", age=now - a.started_at, idle_for=None, uses=0)
        for a in state.connecting
    ]
    waiters = [
        WaiterInfo(greenlet_label(w.greenlet) or "?", now - w.since)
        for w in state.waiters
        if not w.gone
    ]
    return PoolDump(snapshot(state, name), tuple(conns), tuple(waiters))
