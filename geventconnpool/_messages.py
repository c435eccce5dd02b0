"""The pool's error messages: each names the pool, shows its state, and says what to do."""

from __future__ import annotations

from typing import Any

from ._state import Marker, PoolState
from .errors import PoolClosed, PoolError, PoolExhausted, PoolTimeout, PoolUnavailable


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
    """No connection within ``timeout``; counted in ``stats().timeouts``."""
    state.counters.timeouts += 1
    hint = "raise max_size, hold connections for less time, or pass a larger timeout"
    failures = state.health.streak
    if failures:
        hint = f"connects are failing ({failures} in a row): is the backend up?"
    return PoolTimeout(
        f"pool {name!r}: no connection within {timeout}s ({state_text(state)}); {hint}"
    )


def refusal_error(
    name: str, state: PoolState[Any], why: str | BaseException, max_waiting: int | None
) -> BaseException:
    """The error for a get() the state refused: "closed", "down" or "exhausted"."""
    if isinstance(why, Marker):
        why = why.why
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
