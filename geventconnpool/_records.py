"""The records a pool keeps: one per open connection, connect in flight, and waiting greenlet.

The one freshness rule lives here (:meth:`Conn.refresh`): a connection is handed out without a
check until ``fresh_until``; everything that makes a connection suspect, expired or stale sets
``fresh_until`` so that the next hand-out checks it.
"""

from __future__ import annotations

import itertools
import traceback
from enum import Enum
from typing import Any, Generic, TypeVar

from gevent.hub import Waiter as HubWaiter
from greenlet import getcurrent, greenlet

from .stats import ConnectionInfo

C = TypeVar("C")
_conn_ids = itertools.count(1)
INF = float("inf")


class PoolEvent(Enum):
    """What the state reports to the pool, which acts on it (wakes, logs)."""

    READY = "ready"  # min_size connections are open: wake wait_ready() callers
    DRAINED = "drained"  # closed, and nothing is held any more: wake close(timeout)
    FAILED = "failed"  # a connect failed (the health object has the streak and the backoff)
    DOWN = "down"  # the backend is considered down
    UP = "up"  # the backend is back


class Conn(Generic[C]):
    """The pool's record of one open connection."""

    __slots__ = (
        "acquired_at",
        "conn",
        "created_at",
        "expires_at",
        "fresh_until",
        "generation",
        "holder",
        "id",
        "keepalive_every",
        "last_ping",
        "last_used",
        "leak_reported",
        "pid",
        "suspect",
        "taken_at",
        "uses",
    )

    def __init__(self, conn: C, now: float, expires_at: float, generation: int, pid: int) -> None:
        self.conn = conn
        self.id = next(_conn_ids)
        self.created_at = now
        self.expires_at = expires_at  # inf without max_lifetime
        self.last_used = now  # when a caller last returned it (idle time counts from here)
        self.last_ping = now  # when it was last known good (created, used, checked or pinged)
        self.fresh_until = now  # handed out unchecked until then; 0 forces a check
        self.keepalive_every = INF  # this connection's jittered keepalive interval
        self.generation = generation
        self.pid = pid  # the process that opened it: another process only ever forgets it
        self.uses = 0
        self.holder: greenlet | None = None  # the caller's greenlet; None when idle or pinged
        self.acquired_at = 0.0
        self.taken_at: tuple[str, ...] | None = None
        self.leak_reported = False
        self.suspect = False  # open during a disconnect: check before the next hand-out

    def refresh(self, now: float, check_after: float) -> None:
        """The connection was known good at ``now``: the freshness rule, in one place.

        It is handed out unchecked for ``check_after`` seconds, never past its lifetime, and
        never while it is suspect.
        """
        self.last_ping = now
        if self.suspect:
            self.fresh_until = 0.0
        else:
            fresh = now + check_after
            self.fresh_until = fresh if fresh < self.expires_at else self.expires_at

    def make_suspect(self) -> None:
        """Check this connection before its next hand-out, whatever its idle time."""
        self.suspect = True
        self.fresh_until = 0.0


class Attempt:
    """One connect in flight."""

    __slots__ = ("generation", "pid", "started_at")

    def __init__(self, generation: int, now: float, pid: int) -> None:
        self.generation = generation
        self.pid = pid
        self.started_at = now


class Waiter(Generic[C]):
    """A greenlet blocked in get(); the pool gives it a connection or an error, or it leaves.

    Waiters sit in a deque; one that leaves is only marked ``gone`` and skipped later (lazy
    removal keeps leaving O(1)).
    """

    __slots__ = ("error", "gone", "greenlet", "rec", "since", "waiter")

    def __init__(self, now: float) -> None:
        self.waiter: HubWaiter[Any] = HubWaiter()
        self.rec: Conn[C] | None = None
        self.error: BaseException | None = None
        self.since = now
        self.gone = False  # served, failed or left: no longer in line
        self.greenlet = getcurrent()


def greenlet_label(g: greenlet | None) -> str | None:
    """A greenlet by name, id and function, never its arguments (they may hold secrets)."""
    if g is None:
        return None
    name = getattr(g, "name", None) or type(g).__name__
    run = getattr(g, "_run", None) or getattr(g, "run", None)
    func = getattr(run, "__qualname__", None) or getattr(run, "__name__", None)
    where = f" in {func}" if func else ""
    return f"<{name} 0x{id(g):x}{where}>"


def describe(rec: Conn[Any], state: str, now: float) -> ConnectionInfo:
    """One connection for ``dump()``: its state, times, and holder (by name, never arguments)."""
    holder = rec.holder
    stack = None
    if holder is not None and holder.gr_frame is not None:
        stack = tuple(line.rstrip() for line in traceback.format_stack(holder.gr_frame, limit=12))
    return ConnectionInfo(
        id=rec.id,
        state=state,
        age=now - rec.created_at,
        idle_for=now - rec.last_used if state == "idle" else None,
        uses=rec.uses,
        holder=greenlet_label(holder),
        held_for=None if holder is None else now - rec.acquired_at,
        taken_at=rec.taken_at if holder is not None else None,
        holder_stack=stack,
    )
