"""The records a pool keeps: one per open connection, connect in flight, and waiting greenlet."""

from __future__ import annotations

import itertools
import os
import traceback
from typing import Any, Generic, TypeVar

import gevent
from gevent.hub import Waiter as HubWaiter
from greenlet import getcurrent, greenlet

from .stats import ConnectionInfo

C = TypeVar("C")
_conn_ids = itertools.count(1)
_INF = float("inf")


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

    def __init__(self, conn: C, now: float, expires_at: float, generation: int) -> None:
        self.conn = conn
        self.id = next(_conn_ids)
        self.created_at = now
        self.expires_at = expires_at  # inf without max_lifetime
        self.last_used = now  # when a caller last returned it (idle time counts from here)
        self.last_ping = now  # when it was last known good (created, used or pinged)
        self.fresh_until = now  # handed out unchecked until then; 0 forces a check
        self.keepalive_every = _INF  # this connection's jittered keepalive interval
        self.generation = generation
        self.pid = os.getpid()
        self.uses = 0
        self.holder: greenlet | None = None  # the caller's greenlet; None when idle or pinged
        self.acquired_at = 0.0
        self.taken_at: tuple[str, ...] | None = None
        self.leak_reported = False
        self.suspect = False  # created before a disconnect: check before the next hand-out


class Attempt:
    """One connect in flight."""

    __slots__ = ("generation", "greenlet", "pid", "started_at")

    def __init__(self, generation: int, now: float) -> None:
        self.generation = generation
        self.pid = os.getpid()
        self.started_at = now
        self.greenlet: gevent.Greenlet[Any, Any] | None = None


class Waiter(Generic[C]):
    """A greenlet blocked in get(); the pool gives it a connection or an error, or it leaves."""

    __slots__ = ("error", "greenlet", "rec", "since", "waiter")

    def __init__(self, now: float) -> None:
        self.waiter: HubWaiter[Any] = HubWaiter()
        self.rec: Conn[C] | None = None
        self.error: BaseException | None = None
        self.since = now
        self.greenlet = getcurrent()


def describe(rec: Conn[Any], state: str, now: float) -> ConnectionInfo:
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
        holder=None if holder is None else repr(holder),
        held_for=None if holder is None else now - rec.acquired_at,
        taken_at=rec.taken_at if holder is not None else None,
        holder_stack=stack,
    )
