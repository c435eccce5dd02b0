"""PoolState: the pool's bookkeeping, and the only code that changes it.

Every container (idle, held, pinging, connecting, waiters), every flag and counter of a pool,
and every field of its records lives here or in ``_records.py``, and every change goes through
one of the short methods below. They do no I/O, spawn nothing, log nothing and call no user
hook: each returns what the pool must then do (a :class:`~._records.Plan`: waiters to wake,
connects to start, connections to ping, close or forget, events to report, when to wake the
scheduler). Under gevent a stretch of code without a greenlet switch is atomic, so each method
is one atomic step and the state is consistent between any two of them.

The rules, each in one place:

- who gets a returned connection (fairness: ``fair_after``, ``fair_floor``):
  :meth:`PoolState._give_back` and :meth:`PoolState.handoff`, the bound in ``_fairness.py``;
- is a connection still wanted (closed, invalidated, expired, surplus): :meth:`PoolState._unwanted`;
- may a connection be handed out unchecked: :meth:`PoolState.vet_reason` (and ``Conn.refresh``);
- when and how many connects start (lazy growth, stagger, backoff): :meth:`PoolState._plan_into`;
- what a finished connect becomes: :meth:`PoolState.connect_done`;
- when the backend is down or back: :class:`~._health.Health`;
- what background work is due: :meth:`PoolState.due`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

from greenlet import getcurrent

from ._fairness import FairBound
from ._health import REJECTED_MESSAGE, WAITER_RETRY, Health
from ._records import (
    EMPTY_PLAN,
    INF,
    Attempt,
    Back,
    Conn,
    Doomed,
    Idle,
    Line,
    Plan,
    Policy,
    PoolEvent,
    Waiter,
    push,
)
from .stats import Counters

C = TypeVar("C")
_monotonic = time.monotonic
_getpid = os.getpid  # forks that skip Python's at-fork hooks (uWSGI) are caught by comparing it

#: A connection refused by the checkout check or ``_on_acquire`` at its first hand-out, this
#: soon after it opened, counts as a failed connect (backoff, fail_fast): a proxy that accepts
#: while the database behind it is down must not make the pool reconnect in a busy loop.
NEW_CONNECTION_WINDOW = 5.0
HANDOFF = Back.HANDOFF  # put_back()'s answer: kept idle, schedule the deferred hand-off
SLOW = Back.SLOW  # put_back()'s answer: let release() decide
#: put_back()'s answer: None (kept idle), the Waiter to wake (it was given the connection),
#: HANDOFF or SLOW.
PutBack = Waiter[C] | Back | None

__all__ = [
    "HANDOFF",
    "REJECTED_MESSAGE",
    "SLOW",
    "WAITER_RETRY",
    "Checkout",
    "Plan",
    "Policy",
    "PoolState",
    "PutBack",
]


class PoolState(Generic[C]):
    """Idle, held, pinging and connecting connections, the waiters, and what they imply."""

    def __init__(self, min_size: int, max_size: int, policy: Policy, pid: int) -> None:
        self.fair = FairBound(policy.fair_after, policy.fair_floor)  # the fairness bound
        self.configure(policy)  # self.policy, and the hot path's copies of two options
        self.min = min_size
        self.max = max_size
        self.idle: Idle[C] = Idle(policy.lifo)  # open, not in use; the right end is the warmest
        self.held: set[Conn[C]] = set()  # handed to a caller (or being vetted for one)
        self.pinging: set[Conn[C]] = set()  # out for a keepalive ping
        self.connecting: dict[Attempt, None] = {}  # connects in flight (slots reserved)
        self.waiters: Line[C] = Line()  # oldest first; gone ones skipped lazily
        self.waiting = 0  # waiters still in line (not gone)
        self.generation = 0  # bumped by invalidate() and fork: older connections are not reused
        self.pid = pid  # the process the connections belong to
        self.closed = False
        self.opened = False  # open() ran: the pool may connect
        self.health = Health()  # failure streaks, backoff, down/up
        self.next_fill_at = 0.0  # stagger: the next min_size fill connect starts no earlier
        self.replace_now = 0  # discarded connections whose replacement skips the stagger
        self.handoff_pending = False
        self.counters = Counters()
        self.hooks_take = self.hooks_put = False  # per-use hooks: the hot paths cannot serve
        self.fast_take = self.fast_put = False  # take()/put_back() may serve (_update_fast)

    # ------------------------------------------------------------------ queries (pure)
    @property
    def open_count(self) -> int:
        """Connections open or being opened: the number max_size bounds."""
        return len(self.idle) + len(self.held) + len(self.pinging) + len(self.connecting)

    def live(self) -> Iterator[Conn[C]]:
        """Every open connection record."""
        yield from self.idle
        yield from self.held
        yield from self.pinging

    def ready(self) -> bool:
        """min_size connections are open (wait_ready())."""
        return len(self.idle) + len(self.held) + len(self.pinging) >= self.min

    def owns(self, rec: Conn[C]) -> bool:
        """``rec`` is held by a caller of this process (not forgotten, not force-closed)."""
        return rec in self.held

    def next_connect_at(self, now: float) -> float:
        """When a connect that is wanted now may next start (INF: none is wanted)."""
        if self.closed or not self.opened or self.open_count >= self.max:
            return INF
        inflight = len(self.connecting)
        if self.waiting > inflight and inflight < self.policy.max_connecting:
            return self.health.next_try(waiting=True)
        if self.open_count < self.min:
            return max(self.health.next_try(waiting=False), self.next_fill_at)
        return INF

    def vet_reason(self, rec: Conn[C], now: float) -> str | None:
        """Why ``rec`` may not be handed out unseen: None, "check" (check it first), or why
        to discard it."""
        if rec.generation != self.generation:
            return "invalidated"
        if now >= rec.expires_at and rec.uses:  # a brand-new one is always used once
            return "lifetime"
        if now >= rec.fresh_until and (
            rec.suspect or now - rec.last_ping > self.policy.check_after
        ):
            return "check"
        return None

    def _unwanted(self, generation: int, expires_at: float, now: float, new: bool) -> str | None:
        """Why a healthy connection is not kept (closed, invalidated, expired, above max_size):
        one coming back from a caller or a ping, or a ``new`` one not counted in open_count yet.
        (put_back() has the hot path's copy: ``fast_put`` and two comparisons.)"""
        if self.closed:
            return "closed"
        if generation != self.generation:
            return "invalidated"
        if now >= expires_at:
            return "lifetime"
        if self.open_count + new > self.max:  # resize() shrank the pool meanwhile
            return "idle"
        return None

    # ------------------------------------------------------------------ the hot path
    def take(self, now: float, holder: Any) -> Conn[C] | None:
        """The next idle connection, now ``holder``'s, if it needs no check; None: slow path."""
        idle = self.idle
        if idle and self.fast_take:
            rec = idle.pop() if self.lifo else idle.popleft()  # Idle.next(), inlined
            if now < rec.fresh_until:
                self.held.add(rec)
                rec.holder = holder
                rec.uses += 1
                rec.acquired_at = now
                self.counters.acquired += 1
                return rec
            (idle.append if self.lifo else idle.appendleft)(rec)  # to check: back in its place
        return None

    def put_back(self, rec: Conn[C], now: float) -> PutBack[C]:
        """A clean return: None (kept idle), the Waiter to wake (it was given ``rec``), HANDOFF
        (kept idle; schedule the deferred hand-off) or SLOW (:meth:`release` decides)."""
        if not self.fast_put or now >= rec.expires_at or rec.generation != self.generation:
            return SLOW
        c = self.counters
        c.use_seconds += now - rec.acquired_at
        c.returned += 1
        rec.holder = None
        rec.last_used = rec.last_ping = now
        if rec.suspect:  # Conn.refresh(now, check_after), inlined: this is the hot path
            rec.fresh_until = 0.0
        else:
            fresh = now + self.check_after
            rec.fresh_until = fresh if fresh < rec.expires_at else rec.expires_at
        if self.waiting:
            return self._give_back(rec, now)
        self.held.discard(rec)
        self.idle.append(rec)
        return None

    def _give_back(self, rec: Conn[C], now: float) -> PutBack[C]:
        """Bounded barging: ``rec`` (held, healthy) goes to the oldest waiter if it waited the
        fairness bound (``self.fair``), else idle for the fast path, and the deferred hand-off
        (:meth:`handoff`) gives what is still idle at the end of the loop turn to the waiters."""
        w = self.waiters.first()
        if w is not None and now - w.since >= self.fair.bound:
            self._serve(w, rec)
            return w
        self.held.discard(rec)
        self.idle.append(rec)
        if w is None or self.handoff_pending:
            return None
        self.handoff_pending = True
        return HANDOFF

    def handoff(self, now: float) -> list[Waiter[C]]:
        """The deferred hand-off: idle connections go to the waiters, oldest first."""
        self.handoff_pending = False
        woken: list[Waiter[C]] = []
        while self.waiting and self.idle:
            w = self.waiters.first()
            assert w is not None
            rec = self.idle.next()
            self.held.add(rec)
            self._serve(w, rec)
            woken.append(w)
        return woken

    def _serve(self, w: Waiter[C], rec: Conn[C]) -> None:
        self.waiters.serve(w, rec)
        self.waiting -= 1

    # ------------------------------------------------------------------ getting
    def take_any(self) -> Conn[C] | None:
        """The slow path's take: the warmest idle connection, checked or not (caller vets it)."""
        if not self.idle:
            return None
        rec = self.idle.next()
        self.held.add(rec)
        return rec

    def refuse(self) -> str | None:
        """Why a get() that would have to wait must fail now ("closed", "down", "exhausted"),
        counted in ``stats()``; None: it may wait."""
        if self.closed:
            return "closed"
        if self.health.down and self.policy.fail_fast:
            self.counters.unavailable += 1
            return "down"
        limit = self.policy.max_waiting
        if limit is not None and self.waiting >= limit:
            self.counters.exhausted += 1
            return "exhausted"
        return None

    def timed_out(self) -> None:
        """A get() ran out of time (``stats().timeouts``)."""
        self.counters.timeouts += 1

    def wait(self, w: Waiter[C], now: float, first: bool) -> Plan[C]:
        """Queue ``w`` (at the head if ``first``: it lost a connection to a failed check)."""
        if first:
            self.waiters.appendleft(w)
        else:
            self.waiters.append(w)
        self.waiting += 1
        if self.closed or not self.opened or self.open_count >= self.max:
            return EMPTY_PLAN  # (the cheap test first: no connect could start)
        return self.plan_connects(now)

    def no_wait(self, now: float) -> Plan[C]:
        """A get() that may not wait found nothing idle: start a connect for the next one."""
        return self.plan_connects(now, extra=1)

    def leave(self, w: Waiter[C], now: float) -> PutBack[C]:
        """Waiter ``w`` was interrupted: pass on what it was given (answers as
        :meth:`put_back`), or leave the line, which is compacted when more have left it than
        wait in it (O(1) amortised; memory stays flat however many leave)."""
        rec, w.rec = w.rec, None
        if rec is not None:
            return self._give_back(rec, now)
        if not w.gone:
            w.gone = True
            self.waiting -= 1
            self.waiters.gone_one(self.waiting)
        return None

    def hand_out(
        self, rec: Conn[C], now: float, start: float, holder: Any, taken_at: Any
    ) -> Plan[C]:
        """``rec`` (held, vetted) now belongs to ``holder``, which asked at ``start``;
        ``taken_at`` is where (with leak_timeout), for the leak report."""
        rec.uses += 1
        rec.acquired_at, rec.holder, rec.taken_at, rec.leak_reported = now, holder, taken_at, False
        c = self.counters
        c.acquired += 1
        c.wait_seconds += now - start
        c.wait_max = max(c.wait_max, now - start)
        self.fair.observe(now, c.acquired, c.wait_seconds)
        back = self.health.served_new()
        if not back and self.policy.leak_timeout is None:
            return EMPTY_PLAN
        plan: Plan[C] = Plan()
        if back:
            plan.events = push(plan.events, PoolEvent.UP)
        if self.policy.leak_timeout is not None:
            plan.wake_at = now + self.policy.leak_timeout
        return plan

    def checked(self, rec: Conn[C], now: float) -> None:
        """``rec`` passed its checkout check."""
        rec.suspect = False
        rec.refresh(now, self.policy.check_after)

    # ------------------------------------------------------------------ returning
    def release(self, rec: Conn[C], now: float, reason: str | None) -> Plan[C]:
        """A caller returns ``rec``; ``reason`` says why to discard it (None: healthy). A healthy
        one :meth:`_unwanted` refuses is replaced (at once for a waiter); else `_give_back`."""
        plan: Plan[C] = Plan()
        if rec not in self.held:  # forgotten after a fork, or closed by close(timeout)
            return plan
        self.counters.use_seconds += now - rec.acquired_at
        rec.holder = None
        if rec.leak_reported:
            rec.leak_reported = False
            plan.came_back = push(plan.came_back, rec)
        if reason is None:
            reason = self._unwanted(rec.generation, rec.expires_at, now, new=False)
        if reason is not None:
            self.held.discard(rec)
            return self.discard(rec, reason, now, plan)
        self.counters.returned += 1
        rec.last_used = now
        rec.refresh(now, self.policy.check_after)
        answer = self._give_back(rec, now)
        if answer is HANDOFF:
            plan.handoff = True
        elif isinstance(answer, Waiter):
            plan.wake = push(plan.wake, answer)
        if not self.fast_put:
            self._update_fast()  # back within max_size after a resize()
        self._schedule(plan, now)
        return plan

    def discard(
        self, rec: Conn[C], reason: str, now: float, plan: Plan[C] | None = None
    ) -> Plan[C]:
        """``rec`` (already out of idle/held/pinging) is closed for ``reason``; replace it."""
        plan = plan if plan is not None else Plan()
        self.counters.discarded[reason] += 1
        plan.close = push(plan.close, Doomed(rec.conn, reason, rec.pid))
        if reason == "check" and _never_good(rec, now):  # a failed connect (PgBouncer...)
            self.counters.connect_failures += 1
            self._report(self.health.rejected_new(now, self.policy, bool(self.idle)), plan)
        if reason not in ("closed", "idle", "leaked") and not self.closed:
            self.replace_now += 1
        self._update_fast()
        if self.closed and not self.held:
            plan.events = push(plan.events, PoolEvent.DRAINED)
        self._plan_into(plan, now)
        return plan

    def drop(self, rec: Conn[C], reason: str, now: float) -> Plan[C]:
        """``rec`` (held: being vetted for a caller) failed its check or was interrupted."""
        self.held.discard(rec)
        return self.discard(rec, reason, now)

    def disconnect(self) -> None:
        """A disconnect was seen: check every connection open now before its next hand-out."""
        for rec in self.live():
            rec.make_suspect()

    def leaked(self, rec: Conn[C], now: float) -> Plan[C] | None:
        """A get() context was garbage-collected while holding ``rec``: discard it."""
        if rec not in self.held:
            return None
        rec.holder = None
        self.held.discard(rec)
        return self.discard(rec, "leaked", now)

    # ------------------------------------------------------------------ connecting
    def plan_connects(self, now: float, extra: int = 0) -> Plan[C]:
        """Start the connects the pool needs now (see :meth:`_plan_into`)."""
        plan: Plan[C] = Plan()
        self._plan_into(plan, now, extra)
        return plan

    def _plan_into(self, plan: Plan[C], now: float, extra: int = 0) -> None:
        """Start the connects the pool needs now: for waiters at once, up to min_size staggered.

        A connect starts for a waiter only if no connect in flight already covers it, at most
        ``max_connecting`` at once; filling to min_size starts one per ``SPAWN_FREQUENCY``,
        except for replacements of discarded connections, which start at once. Backoff after
        failures delays all of them, but while callers wait a failing backend is retried at
        least every ``WAITER_RETRY`` seconds (:meth:`Health.may_try`).
        """
        room = self.max - self.open_count
        wanted = self.waiting + extra - len(self.idle)  # idle ones are on their way to waiters
        if self.closed or not self.opened or room <= 0 or not self.health.may_try(now, wanted > 0):
            self._schedule(plan, now)
            return
        inflight = len(self.connecting)
        n = min(wanted - inflight, self.policy.max_connecting - inflight)
        below_min = self.min - self.open_count
        if below_min > 0:
            urgent = min(self.replace_now, below_min)
            self.replace_now -= urgent
            if urgent:
                n = max(n, urgent)
            elif now >= self.next_fill_at:
                n = max(n, 1)
                self.next_fill_at = now + self.policy.spawn_frequency
        else:
            self.replace_now = 0
        for _ in range(max(0, min(n, room))):
            attempt = Attempt(self.generation, now, self.pid)
            self.connecting[attempt] = None
            plan.connect = push(plan.connect, attempt)
        self._schedule(plan, now)

    def _schedule(self, plan: Plan[C], now: float) -> None:
        """Wake the scheduler when the next wanted connect may start (a waiter, min_size)."""
        if self.waiting or self.open_count < self.min:
            plan.wake_at = min(plan.wake_at, self.next_connect_at(now))

    def connect_done(
        self, attempt: Attempt, conn: C | None, error: BaseException | None, now: float
    ) -> Plan[C]:
        """Book the end of a connect: ``conn`` joins the pool (to a waiter or idle), or the
        attempt failed (backoff; a connection ``_on_connect`` refused is closed), or ``conn`` is
        not wanted any more (closed, invalidated, resized: closed) or is another process's
        (a fork happened meanwhile: forgotten)."""
        plan: Plan[C] = Plan(wake_at=-INF)  # the scheduler looks again at once
        if self.connecting.pop(attempt, "gone") == "gone" or attempt.pid != self.pid:
            if conn is not None:
                plan.forget = push(plan.forget, conn)
            return plan
        if error is not None:
            if conn is not None:  # _on_connect failed on an open connection: never joined
                plan.close = push(plan.close, Doomed(conn, None, attempt.pid))
            self.counters.connect_failures += 1
            idle = bool(self.idle)
            self._report(
                self.health.failed(error, attempt.started_at, now, self.policy, idle), plan
            )
        else:
            assert conn is not None
            self._connected(attempt, conn, now, plan)
        self._plan_into(plan, now)
        return plan

    def _connected(self, attempt: Attempt, conn: C, now: float, plan: Plan[C]) -> None:
        self.counters.created += 1
        self.counters.connect_seconds += now - attempt.started_at
        reason = self._unwanted(attempt.generation, INF, now, new=True)
        if reason is not None:
            self.counters.discarded[reason] += 1
            plan.close = push(plan.close, Doomed(conn, reason, attempt.pid))
            return
        if self.health.succeeded(now):
            plan.events = push(plan.events, PoolEvent.UP)
        self._arrive(Conn.new(conn, now, self.generation, self.pid, self.policy), plan)
        if self.ready():
            plan.events = push(plan.events, PoolEvent.READY)

    def connect_abandoned(self, attempt: Attempt, conn: C | None, now: float) -> Plan[C]:
        """A connect was killed (close, fork, a kill): free its slot at once, no backoff; close
        what it opened, or forget it if it is another process's."""
        plan: Plan[C] = Plan(wake_at=-INF)
        if conn is not None:
            if attempt.pid == self.pid:
                plan.close = push(plan.close, Doomed(conn, None, attempt.pid))
            else:
                plan.forget = push(plan.forget, conn)
        if self.connecting.pop(attempt, "gone") != "gone" and attempt.pid == self.pid:
            self.replace_now += 1
            self._plan_into(plan, now)
        return plan

    def _report(self, events: tuple[PoolEvent, ...], plan: Plan[C]) -> None:
        """Health events go to the pool; a backend down fails the waiters with ``fail_fast``."""
        for event in events:
            plan.events = push(plan.events, event)
            if event is PoolEvent.DOWN and self.policy.fail_fast:
                self._fail_waiters(plan, "down")

    def _fail_waiters(self, plan: Plan[C], why: str) -> None:
        """Every waiter leaves the line, refused for ``why`` ("closed", "down")."""
        for w in self.waiters.refuse_all(why):
            self.waiting -= 1
            if why == "down":
                self.counters.unavailable += 1
            plan.wake = push(plan.wake, w)

    # ------------------------------------------------------------------ background work
    def due(self, now: float) -> tuple[Plan[C], float]:
        """What background work is due now, and when the next is due (absolute time)."""
        plan: Plan[C] = Plan()
        next_at = min(
            self._expire(now, plan),
            self._reap_idle(now, plan),
            self._keepalives(now, plan),
            self._leaks(now, plan),
        )
        self._plan_into(plan, now)
        return plan, min(next_at, self.next_connect_at(now))

    def _expire(self, now: float, plan: Plan[C]) -> float:
        """Idle connections past their max_lifetime close (in-use ones close on return)."""
        if self.policy.max_lifetime is None:
            return INF
        for rec in self.idle.take_expired(now):
            self.discard(rec, "lifetime", now, plan)
        return min((rec.expires_at for rec in self.live()), default=INF)

    def _reap_idle(self, now: float, plan: Plan[C]) -> float:
        """Connections above min_size idle for max_idle seconds close, coldest first."""
        max_idle = self.policy.max_idle
        if max_idle is None:
            return INF
        for rec in self.idle.take_stale(now, max_idle, self.open_count - self.min):
            self.discard(rec, "idle", now, plan)
        if self.open_count <= self.min:
            return INF
        # a connection in use now is idle max_idle after it comes back, at the earliest
        return min((rec.last_used + max_idle for rec in self.idle), default=now + max_idle)

    def _keepalives(self, now: float, plan: Plan[C]) -> float:
        """Idle connections due a ping leave the idle deque; one is always left for callers."""
        if self.policy.keepalive is None:
            return INF
        for rec in self.idle.take_due_pings(now, bool(self.pinging)):
            self.pinging.add(rec)
            plan.ping = push(plan.ping, rec)
        next_ping = (rec.ping_due() for rec in self.idle)
        return min(next_ping, default=now + self.policy.keepalive)

    def _leaks(self, now: float, plan: Plan[C]) -> float:
        """Connections held longer than leak_timeout are reported once each."""
        limit = self.policy.leak_timeout
        if limit is None:
            return INF
        next_due = INF
        for rec in self.held:
            if rec.holder is None or rec.leak_reported:
                continue
            if now - rec.acquired_at >= limit:
                rec.leak_reported = True
                plan.leaked = push(plan.leaked, rec)
            else:
                next_due = min(next_due, rec.acquired_at + limit)
        return next_due

    def ping_done(self, rec: Conn[C], now: float, reason: str | None) -> Plan[C]:
        """The ping of ``rec`` ended; ``reason`` says why to discard it (None: it is fine)."""
        plan: Plan[C] = Plan()
        if rec not in self.pinging:  # forgotten after a fork, or closed by close()
            return plan
        self.pinging.discard(rec)
        if reason is None:
            reason = self._unwanted(rec.generation, rec.expires_at, now, new=False)
        if reason is not None:
            return self.discard(rec, reason, now, plan)
        rec.suspect = False
        rec.refresh(now, self.policy.check_after)
        self._arrive(rec, plan, cold=True)
        self._schedule(plan, now)
        return plan

    def _arrive(self, rec: Conn[C], plan: Plan[C], cold: bool = False) -> None:
        """A connection no caller held (new, or back from a ping): the oldest waiter gets it at
        once (it was opened or freed for the waiters: no barging); else it goes idle, at the
        cold end if ``cold`` (a ping does not make a surplus connection warm)."""
        w = self.waiters.first() if self.waiting else None
        if w is not None:
            self.held.add(rec)
            self._serve(w, rec)
            plan.wake = push(plan.wake, w)
        else:
            self.idle.put(rec, cold)

    # ------------------------------------------------------------------ whole-pool changes
    def open(self, now: float) -> Plan[C]:
        """Allow connecting (the constructor, or open() of a pool made with open=False)."""
        self.opened = True
        self._update_fast()
        return self.plan_connects(now)

    def resize(self, min_size: int, max_size: int, now: float) -> Plan[C]:
        """New bounds; idle connections above the new max_size close now."""
        self.min, self.max = min_size, max_size
        plan: Plan[C] = Plan()
        while self.idle and self.open_count > max_size:
            self.discard(self.idle.popleft(), "idle", now, plan)
        self._update_fast()
        self._plan_into(plan, now)
        return plan

    def close_idle(self, keep: int, now: float) -> Plan[C]:
        """Close the idle connections beyond the ``keep`` warmest, never below ``min_size``."""
        plan: Plan[C] = Plan()
        while len(self.idle) > keep and self.open_count > self.min:
            self.discard(self.idle.popleft(), "idle", now, plan)
        return plan

    def invalidate(self, now: float) -> Plan[C]:
        """Replace every connection: idle ones close now, held and pinged ones on return."""
        self.generation += 1
        plan: Plan[C] = Plan()
        while self.idle:
            self.replace_now += 1
            self.discard(self.idle.popleft(), "invalidated", now, plan)
        self._schedule(plan, now)
        return plan

    def close(self, now: float) -> Plan[C]:
        """No more get(): waiters fail with PoolClosed; idle connections close now."""
        plan: Plan[C] = Plan()
        if not self.closed:
            self.closed = True
            self._update_fast()
            self._fail_waiters(plan, "closed")
            plan.events = push(plan.events, PoolEvent.READY)  # wait_ready() callers wake up
        while self.idle:
            self.discard(self.idle.popleft(), "closed", now, plan)
        return plan

    def close_held(self, now: float) -> Plan[C]:
        """close(timeout) expired: the connections still out are closed under their holders."""
        plan: Plan[C] = Plan()
        for rec in list(self.held) + list(self.pinging):
            self.held.discard(rec)
            self.pinging.discard(rec)
            self.discard(rec, "closed", now, plan)
        self.connecting.clear()
        return plan

    def connects_stopped(self) -> None:
        """close() killed the connect greenlets; those killed before they ran never reported."""
        self.connecting.clear()

    def after_fork(self, pid: int) -> list[Conn[C]]:
        """In a forked child: forget every inherited connection, connect and waiter.

        Returns the records whose descriptors the child must close without a goodbye; nothing
        that belongs to the parent is ever handed out, released, pinged or closed by the child.
        """
        inherited = [*self.live()]
        self.pid = pid
        self.generation += 1
        for container in (self.idle, self.held, self.pinging, self.connecting):
            container.clear()
        self.waiters.reset()
        self.waiting = self.replace_now = 0
        self.handoff_pending = False
        self.next_fill_at = 0.0
        self.health.reset()
        self._update_fast()
        return inherited

    def configure(self, policy: Policy) -> None:
        """New option values (an option assigned on a live pool)."""
        self.policy = policy
        self.fair.resize(policy.fair_after, policy.fair_floor)
        self.lifo = policy.lifo
        self.check_after = policy.check_after

    def set_hooks(self, on_take: bool, on_put: bool) -> None:
        """The pool has per-use work on taking / putting back (hooks, leak_timeout)."""
        self.hooks_take, self.hooks_put = on_take, on_put
        self._update_fast()

    def _update_fast(self) -> None:
        """Recompute whether take() and put_back() may serve, after any change that matters."""
        plain = self.opened and not self.closed
        self.fast_take = plain and not self.hooks_take
        self.fast_put = plain and not self.hooks_put and self.open_count <= self.max


def _never_good(rec: Conn[Any], now: float) -> bool:
    """A new connection refused before it served anyone, not one that died with others."""
    return not rec.uses and not rec.suspect and now - rec.created_at < NEW_CONNECTION_WINDOW


class CheckoutOwner(Protocol[C]):
    """The pool's slow paths, which the hot path hands everything else to."""

    def _check_fork(self) -> None: ...
    def _acquire_slow(self, timeout: float | None, start: float) -> Conn[C]: ...
    def _after_put_back(self, todo: PutBack[C]) -> None: ...
    def _release(self, rec: Conn[C], exc: BaseException | None, now: float) -> None: ...
    def _reclaim_leaked(self, rec: Conn[C]) -> None: ...


class Checkout(Generic[C]):
    """The context manager ``get()`` returns: acquires on enter, releases on exit.

    Its uncontended case is :meth:`PoolState.take` and :meth:`PoolState.put_back` written out
    inline, so that each way is one Python frame (the hot path; ``python -m bench.hotpath``);
    ``tests/test_state.py`` checks that the copies and the methods change the same fields the
    same way. Anything else goes through the pool's slow paths.
    """

    __slots__ = ("_pool", "_rec", "_state", "_timeout")

    def __init__(self, pool: Any, state: PoolState[C], timeout: float | None) -> None:
        self._pool: CheckoutOwner[C] = pool
        self._state = state
        self._timeout = timeout
        self._rec: Conn[C] | None = None

    def __enter__(self) -> C:
        if self._rec is not None:
            raise RuntimeError("this get() context is already entered; call pool.get() again")
        state = self._state
        now = _monotonic()
        if state.pid != _getpid():  # a fork that skipped Python's at-fork hooks (uWSGI)
            self._pool._check_fork()
        idle = state.idle
        if idle and state.fast_take:  # PoolState.take(now, getcurrent()), inlined
            rec = idle.pop() if state.lifo else idle.popleft()
            if now < rec.fresh_until:
                state.held.add(rec)
                rec.holder = getcurrent()
                rec.uses += 1
                rec.acquired_at = now
                state.counters.acquired += 1
                self._rec = rec
                return rec.conn
            if state.lifo:  # it must be checked: back where it was, for the slow path
                idle.append(rec)
            else:
                idle.appendleft(rec)
        self._rec = rec = self._pool._acquire_slow(self._timeout, now)
        return rec.conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        rec = self._rec
        if rec is None:
            return
        self._rec = None
        now = _monotonic()
        s = self._state
        if (
            exc_type is None
            and s.fast_put
            and now < rec.expires_at
            and rec.generation == s.generation
        ):
            c = s.counters  # PoolState.put_back(rec, now), inlined (in a forked child too:
            c.use_seconds += now - rec.acquired_at  # whoever gets rec next checks its pid)
            c.returned += 1
            rec.holder = None
            rec.last_used = rec.last_ping = now
            if rec.suspect:
                rec.fresh_until = 0.0
            else:
                fresh = now + s.check_after
                rec.fresh_until = fresh if fresh < rec.expires_at else rec.expires_at
            if not s.waiting:
                s.held.discard(rec)
                s.idle.append(rec)
            else:
                todo = s._give_back(rec, now)
                if todo is not None:
                    self._pool._after_put_back(todo)
            return
        self._pool._release(rec, exc, now)

    def __del__(self) -> None:
        rec = self._rec
        if rec is not None:  # entered, never exited, and now garbage: report, give the slot back
            self._rec = None
            self._pool._reclaim_leaked(rec)
