"""The records a pool keeps, and the typed protocol between the state and the pool.

Records: one per open connection (:class:`Conn`), connect in flight (:class:`Attempt`) and
waiting greenlet (:class:`Waiter`). Protocol: the options the state decides by
(:class:`Policy`), what it decided (:class:`Plan`, :class:`PoolEvent`, :class:`Doomed`) and the
hot path's answer (:class:`Back`). Only ``_state.py`` and the records' own methods write them.

The one freshness rule lives here (:meth:`Conn.refresh`): a connection is handed out without a
check until ``fresh_until``; everything that makes a connection suspect, expired or stale sets
``fresh_until`` so that the next hand-out checks it.
"""

from __future__ import annotations

import itertools
import random
import traceback
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeVar

from gevent.hub import Waiter as HubWaiter
from greenlet import getcurrent, greenlet

from .stats import ConnectionInfo

C = TypeVar("C")
T = TypeVar("T")
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

    def ping_due(self) -> float:
        """When this connection is due its next keepalive ping."""
        return max(self.last_used, self.last_ping) + self.keepalive_every

    @classmethod
    def new(cls, conn: C, now: float, generation: int, pid: int, p: Policy) -> Conn[C]:
        """The record of a connection that just opened: its jittered lifetime and keepalive."""
        expires = INF
        if p.max_lifetime is not None:
            expires = now + p.max_lifetime * (1.0 - p.lifetime_jitter * random.random())
        rec: Conn[C] = cls(conn, now, expires, generation, pid)
        rec.refresh(now, p.check_after)
        if p.keepalive is not None:
            rec.keepalive_every = p.keepalive * (1.0 - p.keepalive_jitter * random.random())
        return rec


class Idle(deque[Conn[C]]):
    """The idle connections, warmest at the right end; the one LIFO/FIFO rule lives here.

    A deque, so that the hot path (``PoolState.take``/``put_back``) uses it at C speed.
    """

    def __init__(self, lifo: bool) -> None:
        super().__init__()
        self.lifo = lifo

    def next(self) -> Conn[C]:
        """Take the connection the next caller gets: the warmest (LIFO) or the one idle
        longest (FIFO)."""
        return self.pop() if self.lifo else self.popleft()

    def put(self, rec: Conn[C], cold: bool = False) -> None:
        """Park ``rec``; at the cold end if ``cold`` (a ping does not make a surplus one warm)."""
        if cold and self.lifo:
            self.appendleft(rec)
        else:
            self.append(rec)

    def coldest_first(self) -> list[Conn[C]]:
        """The idle connections, the one unused longest first (the order idle reaping closes)."""
        return list(self) if self.lifo else sorted(self, key=_last_used)

    def take_expired(self, now: float) -> list[Conn[C]]:
        """Take out the connections past their lifetime."""
        expired = [rec for rec in self if rec.expires_at <= now]
        self.pull(expired)
        return expired

    def take_stale(self, now: float, max_idle: float, most: int) -> list[Conn[C]]:
        """Take out up to ``most`` connections idle for ``max_idle`` seconds, coldest first."""
        stale: list[Conn[C]] = []
        for rec in self.coldest_first():
            if len(stale) >= most or now - rec.last_used < max_idle:
                break
            stale.append(rec)
        self.pull(stale)
        return stale

    def take_due_pings(self, now: float, others_out: bool) -> list[Conn[C]]:
        """Take out the connections due a keepalive ping; the warmest stays for callers if all
        are due (also when only one is due while ``others_out`` pings are out)."""
        due = [rec for rec in self if rec.ping_due() <= now]
        if due and len(due) == len(self) and (len(due) > 1 or others_out):
            due.pop()
        self.pull(due)
        return due

    def pull(self, recs: list[Conn[C]]) -> None:
        """Take ``recs`` out (background work; O(idle))."""
        if len(recs) == 1:
            self.remove(recs[0])
        elif recs:
            gone = set(recs)
            kept = [rec for rec in self if rec not in gone]
            self.clear()
            self.extend(kept)


def _last_used(rec: Conn[Any]) -> float:
    return rec.last_used


class Attempt:
    """One connect in flight."""

    __slots__ = ("generation", "pid", "started_at")

    def __init__(self, generation: int, now: float, pid: int) -> None:
        self.generation = generation
        self.pid = pid
        self.started_at = now


class Waiter(Generic[C]):
    """A greenlet blocked in get(); the pool gives it a connection or an error, or it leaves.

    Waiters sit in a deque; one that leaves is marked ``gone`` and skipped later, and the deque
    is compacted when gone ones outnumber the others (leaving stays O(1) amortised).
    """

    __slots__ = ("gone", "greenlet", "rec", "refused", "since", "waiter")

    def __init__(self, now: float) -> None:
        self.waiter: HubWaiter[Any] = HubWaiter()
        self.rec: Conn[C] | None = None
        self.refused: str | None = None  # why it left the line without one: "closed", "down"
        self.since = now
        self.gone = False  # served, failed or left: no longer in line
        self.greenlet = getcurrent()


class Policy:
    """The options the state decides by, with the pool's validated values."""

    __slots__ = (
        "check_after",
        "fail_fast",
        "fail_fast_after",
        "fair_after",
        "fair_floor",
        "keepalive",
        "keepalive_jitter",
        "leak_timeout",
        "lifetime_jitter",
        "lifo",
        "max_connecting",
        "max_idle",
        "max_lifetime",
        "max_waiting",
        "reconnect_delay",
        "reconnect_max_delay",
        "spawn_frequency",
    )

    def __init__(self, **values: Any) -> None:
        for name in self.__slots__:
            setattr(self, name, values.pop(name))
        if values:
            raise TypeError(f"unknown policy values: {sorted(values)}")

    @classmethod
    def of(cls, pool: Any) -> Policy:
        """The policy of a pool, from its validated options."""
        names = set(cls.__slots__) - {"check_after", "reconnect_delay", "spawn_frequency"}
        values = {name: getattr(pool, name) for name in names}
        check, reconnect = pool.check_idle_after, pool.reconnect_delay
        return cls(
            check_after=INF if check is None else check,
            reconnect_delay=pool.SPAWN_FREQUENCY if reconnect is None else reconnect,
            spawn_frequency=pool.SPAWN_FREQUENCY,
            **values,
        )

    check_after: float  # seconds a connection is handed out unchecked (inf: never checked)
    fail_fast: bool
    fail_fast_after: int
    fair_after: float
    fair_floor: float
    keepalive: float | None
    keepalive_jitter: float
    leak_timeout: float | None
    lifetime_jitter: float
    lifo: bool
    max_connecting: int
    max_idle: float | None
    max_lifetime: float | None
    max_waiting: int | None
    reconnect_delay: float
    reconnect_max_delay: float
    spawn_frequency: float


class Back(Enum):
    """``PoolState.put_back``'s answers other than None (kept idle) and a Waiter (wake it)."""

    HANDOFF = "handoff"  # kept idle; schedule the deferred hand-off to the waiters
    SLOW = "slow"  # the general release path must decide (hooks, expiry, closed, resized)


@dataclass(slots=True, frozen=True)
class Doomed(Generic[C]):
    """A connection the pool must close (``reason`` None: it never joined the pool, so no
    ``_on_discard``), or forget without a word if ``pid`` is not this process's."""

    conn: C
    reason: str | None
    pid: int


_NONE: Any = ()  # the empty list of a field nothing was added to (see push())


def push(items: list[T], item: T) -> list[T]:
    """``items`` with ``item`` appended; a Plan's lists are created on first use."""
    if items is _NONE:
        items = []
    items.append(item)
    return items


@dataclass(slots=True, eq=False)
class Plan(Generic[C]):
    """What the pool must do after a state change; ``ConnectionPool._apply`` does it in this
    order (closing last: it may switch). Most plans are empty, so the lists are created on first
    use (:func:`push`)."""

    wake: list[Waiter[C]] = _NONE  # each has .rec or .refused set: switch to it
    handoff: bool = False  # schedule one deferred hand-off of idle connections to waiters
    connect: list[Attempt] = _NONE  # spawn a connect for each
    ping: list[Conn[C]] = _NONE  # run _keepalive on each
    leaked: list[Conn[C]] = _NONE  # held past leak_timeout: warn
    came_back: list[Conn[C]] = _NONE  # reported as leaked, now returned: say so
    events: list[PoolEvent] = _NONE  # wake wait_ready()/close() callers, log health changes
    wake_at: float = INF  # wake the scheduler no later than this (monotonic; -inf: now)
    forget: list[C] = _NONE  # another process's connections: forget without a word
    close: list[Doomed[C]] = _NONE  # close, then _on_discard

    def __bool__(self) -> bool:
        return bool(
            self.wake
            or self.handoff
            or self.connect
            or self.ping
            or self.leaked
            or self.came_back
            or self.events
            or self.wake_at < INF
            or self.forget
            or self.close
        )


EMPTY_PLAN: Plan[Any] = Plan()  # "nothing to do"; never added to


class Line(deque[Waiter[C]]):
    """The waiters, oldest first. One that leaves is only marked ``gone`` (O(1)); the gone ones
    are dropped when they reach the front, and the line is compacted when they outnumber the
    ones still in it: memory stays flat however many time out or are killed, O(1) amortised."""

    def __init__(self) -> None:
        super().__init__()
        self.left = 0  # gone waiters still in the deque

    def first(self) -> Waiter[C] | None:
        """The oldest waiter still in line (the gone ones in front are dropped on the way)."""
        while self:
            w = self[0]
            if not w.gone:
                return w
            self.popleft()
            self.left -= 1
        return None

    def gone_one(self, waiting: int) -> None:
        """A waiter left the line (``waiting`` are still in it)."""
        self.left += 1
        if self.left > waiting:
            kept = [w for w in self if not w.gone]
            self.clear()
            self.extend(kept)
            self.left = 0

    def serve(self, w: Waiter[C], rec: Conn[C]) -> None:
        """Give ``rec`` to ``w``, the first waiter still in line, which leaves the line."""
        self.popleft()
        w.gone = True
        w.rec = rec

    def refuse_all(self, why: str) -> list[Waiter[C]]:
        """Every waiter leaves the line, refused for ``why``; returns those that were in it."""
        refused = [w for w in self if not w.gone]
        for w in refused:
            w.gone = True
            w.refused = why
        self.reset()
        return refused

    def reset(self) -> None:
        self.clear()
        self.left = 0


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
