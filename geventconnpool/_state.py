"""PoolState: the pool's bookkeeping, and the only code that changes it.

Every container (idle, held, pinging, connecting, waiters) and every flag and counter of a pool
lives here, and every change goes through one of the short methods below. They do no I/O, spawn
nothing, log nothing and call no user hook: each returns what the pool must then do (a
:class:`Plan`: connections to close with a reason, connects to start, connections to ping,
waiters to wake). Under gevent a stretch of code without a greenlet switch is atomic, so each
method is one atomic step and the state is consistent between any two of them.

The rules, each in one method:

- who gets a returned connection (fairness, ``fair_after``): :meth:`PoolState.put_back` and
  :meth:`PoolState.release`;
- what a returned connection that must not be kept becomes: :meth:`PoolState.release`;
- when and how many connects start (lazy growth, stagger, backoff): :meth:`PoolState.plan_connects`;
- what a finished connect becomes: :meth:`PoolState.connect_done`;
- when the backend is down or back: :meth:`PoolState._connect_failed`, :meth:`PoolState._healthy`;
- what background work is due: :meth:`PoolState.due`.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from ._backoff import delay as backoff_delay
from ._records import INF, Attempt, Conn, Waiter, describe, greenlet_label
from .stats import ConnectionInfo, Counters, Discarded, PoolDump, PoolStats, WaiterInfo

C = TypeVar("C")

#: While callers wait, a failing backend is retried at least this often (seconds), whatever the
#: backoff says: the pool is usable again within about this long of the backend coming back.
WAITER_RETRY = 0.2
#: A connection refused by the checkout check or ``_on_acquire`` at its first hand-out, this
#: soon after it opened, counts as a failed connect (backoff, fail_fast): a proxy that accepts
#: while the database behind it is down must not make the pool reconnect in a busy loop.
NEW_CONNECTION_WINDOW = 5.0
REJECTED_MESSAGE = (
    "new connections open but fail the checkout check (_check) or _on_acquire at once: "
    "is the server behind a proxy down?"
)


class Policy:
    """The options the state needs, with the pool's validated values."""

    __slots__ = (
        "check_after",
        "fail_fast",
        "fail_fast_after",
        "fair_after",
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


class Plan(Generic[C]):
    """What the pool must do after a state change; the pool does it in this order.

    Lists are created on first use: most plans are empty, and the hot paths make many.
    """

    __slots__ = ("close", "connect", "events", "handoff", "leaked", "ping", "wake")

    def __init__(self) -> None:
        self.wake: list[Waiter[C]] = _NONE  # each has .rec or .error set: switch to it
        self.connect: list[Attempt] = _NONE  # spawn a connect for each
        self.ping: list[Conn[C]] = _NONE  # run _keepalive on each
        self.close: list[tuple[Conn[C], str]] = _NONE  # close, then _on_discard
        self.leaked: list[Conn[C]] = _NONE  # held past leak_timeout: warn
        self.events: list[str] = _NONE  # "down", "up", "failed", "ready", "drained", "reject:..."
        self.handoff = False  # schedule one deferred hand-off of idle connections to waiters

    def add(self, name: str, item: Any) -> None:
        """Append ``item`` to the list called ``name``."""
        items = getattr(self, name)
        if items is _NONE:
            items = []
            setattr(self, name, items)
        items.append(item)

    def __bool__(self) -> bool:
        return (
            bool(self.wake or self.connect or self.ping or self.close or self.leaked or self.events)
            or self.handoff
        )


_NONE: Any = ()  # an empty list that is never appended to (Plan.add replaces it)
EMPTY_PLAN: Plan[Any] = Plan()  # "nothing to do"; never added to


class _Slow:
    """put_back()'s answer when the general release path must decide."""


SLOW: Any = _Slow()
HANDOFF: Any = object()  # put_back()'s answer: schedule the deferred hand-off


class PoolState(Generic[C]):
    """Idle, held, pinging and connecting connections, the waiters, and what they imply."""

    def __init__(self, min_size: int, max_size: int, policy: Policy, pid: int) -> None:
        self.policy = policy
        self.min = min_size
        self.max = max_size
        self.idle: deque[Conn[C]] = deque()  # open, not in use; the right end is the warmest
        self.held: set[Conn[C]] = set()  # handed to a caller (or being vetted for one)
        self.pinging: set[Conn[C]] = set()  # out for a keepalive ping
        self.connecting: dict[Attempt, None] = {}  # connects in flight (slots reserved)
        self.waiters: deque[Waiter[C]] = deque()  # oldest first; gone ones skipped lazily
        self.waiting = 0  # waiters still in line (not gone)
        self.generation = 0  # bumped by invalidate() and fork: older connections are not reused
        self.pid = pid  # the process the connections belong to
        self.closed = False
        self.opened = False  # open() ran: the pool may connect
        self.down = False  # the backend is considered down (fail_fast_after failures)
        self.failures = 0  # consecutive failed connect rounds
        self.rejected = 0  # consecutive new connections that failed their first check
        self.failed_at = -INF  # when the last counted failure was booked
        self.last_error: BaseException | None = None
        self.next_attempt_at = 0.0  # backoff: no connect for waiters-or-fill before this
        self.next_fill_at = 0.0  # stagger: the next min_size fill connect starts no earlier
        self.replace_now = 0  # discarded connections whose replacement skips the stagger
        self.handoff_pending = False
        self.counters = Counters()
        self.hooks_take = self.hooks_put = False  # per-use hooks: the hot paths cannot serve
        self.fast_take = self.fast_put = False  # take()/put_back() may serve (_update_fast)

    # ------------------------------------------------------------------ views
    @property
    def open_count(self) -> int:
        """Connections open or being opened: the number max_size bounds."""
        return len(self.idle) + len(self.held) + len(self.pinging) + len(self.connecting)

    def live(self) -> Iterator[Conn[C]]:
        """Every open connection record."""
        yield from self.idle
        yield from self.held
        yield from self.pinging

    def oldest_waiter(self) -> Waiter[C] | None:
        """The first waiter still in line (drops the gone ones in front)."""
        waiters = self.waiters
        while waiters:
            w = waiters[0]
            if not w.gone:
                return w
            waiters.popleft()
        return None

    def ready(self) -> bool:
        """min_size connections are open (wait_ready())."""
        return len(self.idle) + len(self.held) + len(self.pinging) >= self.min

    def snapshot(self, name: str) -> PoolStats:
        """``stats()``: the state and the counters, in O(1)."""
        c = self.counters
        return PoolStats(
            name=name,
            open=self.open_count,
            idle=len(self.idle),
            in_use=len(self.held) + len(self.pinging),
            connecting=len(self.connecting),
            waiting=self.waiting,
            min_size=self.min,
            max_size=self.max,
            available=not self.down,
            closed=self.closed,
            checking=len(self.pinging),
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

    def dump(self, name: str, now: float) -> PoolDump:
        """``dump()``: every connection and waiter, warmest idle connection first."""
        conns = [describe(rec, "idle", now) for rec in reversed(self.idle)]
        conns += [describe(rec, "in_use", now) for rec in self.held]
        conns += [describe(rec, "keepalive", now) for rec in self.pinging]
        conns += [
            ConnectionInfo(id=0, state="connecting", age=now - a.started_at, idle_for=None, uses=0)
            for a in self.connecting
        ]
        waiters = [
            WaiterInfo(greenlet_label(w.greenlet) or "?", now - w.since)
            for w in self.waiters
            if not w.gone
        ]
        return PoolDump(self.snapshot(name), tuple(conns), tuple(waiters))

    # ------------------------------------------------------------------ the hot path
    def take(self, now: float) -> Conn[C] | None:
        """The warmest idle connection if it needs no check; None: take the slow path."""
        idle = self.idle
        if not idle or not self.fast_take:
            return None
        lifo = self.policy.lifo
        rec = idle[-1] if lifo else idle[0]
        if now >= rec.fresh_until:
            return None
        if lifo:
            idle.pop()
        else:
            idle.popleft()
        self.held.add(rec)
        rec.uses += 1
        rec.acquired_at = now
        self.counters.acquired += 1
        return rec

    def put_back(self, rec: Conn[C], now: float) -> Any:
        """A clean return on the hot path.

        Returns None (kept idle), a Waiter to wake (it was given ``rec``), HANDOFF (kept idle;
        schedule the deferred hand-off) or SLOW (let :meth:`release` decide).
        """
        if not self.fast_put or now >= rec.expires_at or rec.generation != self.generation:
            return SLOW
        c = self.counters
        c.use_seconds += now - rec.acquired_at
        c.returned += 1
        rec.holder = None
        rec.last_used = now
        rec.refresh(now, self.policy.check_after)
        return self._give_back(rec, now)

    def _give_back(self, rec: Conn[C], now: float) -> Any:
        """``rec`` (held, healthy) goes to the oldest waiter if it waited fair_after, else idle.

        Bounded barging: a waiter that has waited less than ``fair_after`` may be overtaken by the
        releaser or a new caller taking the idle connection on the fast path; the deferred
        hand-off gives whatever is still idle at the end of the loop turn to the waiters.
        """
        if self.waiting:
            w = self.oldest_waiter()
            assert w is not None
            if now - w.since >= self.policy.fair_after:
                self._serve(w, rec)
                return w
            self._park(rec)
            if not self.handoff_pending:
                self.handoff_pending = True
                return HANDOFF
            return None
        self._park(rec)
        return None

    def _park(self, rec: Conn[C]) -> None:
        self.held.discard(rec)
        self.idle.append(rec)

    def _serve(self, w: Waiter[C], rec: Conn[C]) -> None:
        """Give ``rec`` (held) to waiter ``w``, which leaves the line."""
        self.waiters.popleft()  # w is always the oldest waiter still in line
        w.gone = True
        w.rec = rec
        self.waiting -= 1

    def handoff(self, now: float) -> list[Waiter[C]]:
        """The deferred hand-off: idle connections go to the waiters, oldest first."""
        self.handoff_pending = False
        woken: list[Waiter[C]] = []
        while self.waiting and self.idle:
            w = self.oldest_waiter()
            assert w is not None
            rec = self.idle.pop() if self.policy.lifo else self.idle.popleft()
            self.held.add(rec)
            self._serve(w, rec)
            woken.append(w)
        return woken

    # ------------------------------------------------------------------ getting
    def take_any(self) -> Conn[C] | None:
        """The slow path's take: the warmest idle connection, checked or not (caller vets it)."""
        if not self.idle:
            return None
        rec = self.idle.pop() if self.policy.lifo else self.idle.popleft()
        self.held.add(rec)
        return rec

    def refusal(self) -> str | None:
        """Why a get() that would have to wait must fail now: "closed", "down", "exhausted"."""
        if self.closed:
            return "closed"
        if self.down and self.policy.fail_fast:
            self.counters.unavailable += 1
            return "down"
        limit = self.policy.max_waiting
        if limit is not None and self.waiting >= limit:
            self.counters.exhausted += 1
            return "exhausted"
        return None

    def wait(self, w: Waiter[C], now: float, first: bool) -> Plan[C]:
        """Queue ``w`` (at the head if ``first``: it lost a connection to a failed check)."""
        if first:
            self.waiters.appendleft(w)
        else:
            self.waiters.append(w)
        self.waiting += 1
        return self.plan_connects(now) if self._may_connect() else EMPTY_PLAN

    def no_wait(self, now: float) -> Plan[C]:
        """A get() that may not wait found nothing idle: start a connect for the next one."""
        return self.plan_connects(now, extra=1)

    def leave(self, w: Waiter[C], now: float) -> Any:
        """Waiter ``w`` was interrupted: pass on what it was given, or leave the line.

        Returns what :meth:`put_back` returns for the passed-on connection (None if none).
        """
        rec, w.rec = w.rec, None
        if rec is not None:
            return self._give_back(rec, now)
        if not w.gone:
            w.gone = True
            self.waiting -= 1
        return None

    def hand_out(self, rec: Conn[C], now: float, start: float) -> None:
        """``rec`` (held, vetted) now belongs to a caller that asked at ``start``."""
        rec.uses += 1
        rec.acquired_at = now
        c = self.counters
        c.acquired += 1
        waited = now - start
        c.wait_seconds += waited
        if waited > c.wait_max:
            c.wait_max = waited
        if self.rejected:
            self.rejected = 0
            if self.down and not self.failures:
                self.down = False

    def checked(self, rec: Conn[C], now: float) -> None:
        """``rec`` passed its checkout check."""
        rec.suspect = False
        rec.refresh(now, self.policy.check_after)

    def vet_reason(self, rec: Conn[C], now: float) -> str | None:
        """Why ``rec`` must not be handed out without looking at it: None, or a discard reason.

        "check" means: run the checkout check first.
        """
        if rec.generation != self.generation:
            return "invalidated"
        if now >= rec.expires_at and rec.uses:  # a brand-new one is always used once
            return "lifetime"
        if now >= rec.fresh_until and (
            rec.suspect or now - rec.last_ping > self.policy.check_after
        ):
            return "check"
        return None

    # ------------------------------------------------------------------ returning
    def release(self, rec: Conn[C], now: float, reason: str | None) -> Plan[C]:
        """A caller returns ``rec``; ``reason`` says why it must be discarded (None: healthy).

        A healthy connection is still discarded if the pool closed ("closed"), was invalidated
        since it was opened ("invalidated"), its max_lifetime passed ("lifetime") or the pool
        is above max_size after resize() ("idle"); its slot then goes to a replacement connect,
        started at once when a waiter is queued. Otherwise it goes to a waiter or the idle deque
        by the fairness rule of :meth:`_give_back`.
        """
        plan: Plan[C] = Plan()
        if rec not in self.held:  # forgotten after a fork, or closed by close(timeout)
            return plan
        self.counters.use_seconds += now - rec.acquired_at
        rec.holder = None
        if reason is None:
            reason = self._keep_reason(rec, now)
        if reason is not None:
            self.held.discard(rec)
            return self.discard(rec, reason, now, plan)
        self.counters.returned += 1
        rec.last_used = now
        rec.refresh(now, self.policy.check_after)
        self._apply_give_back(self._give_back(rec, now), plan)
        if not self.fast_put:
            self._update_fast()  # back within max_size after a resize()
        return plan

    def _keep_reason(self, rec: Conn[C], now: float) -> str | None:
        """Why a healthy connection coming back (or from a ping) is not kept, if it is not."""
        if self.closed:
            return "closed"
        if rec.generation != self.generation:
            return "invalidated"
        if now >= rec.expires_at:
            return "lifetime"
        if self.open_count > self.max:
            return "idle"
        return None

    @staticmethod
    def _apply_give_back(answer: Any, plan: Plan[C]) -> None:
        if answer is HANDOFF:
            plan.handoff = True
        elif answer is not None:
            plan.add("wake", answer)

    def discard(
        self, rec: Conn[C], reason: str, now: float, plan: Plan[C] | None = None
    ) -> Plan[C]:
        """``rec`` (already out of idle/held/pinging) is closed for ``reason``; replace it."""
        plan = plan if plan is not None else Plan()
        self.counters.discarded[reason] += 1
        plan.add("close", (rec, reason))
        if reason == "check" and self._never_good(rec, now):
            self._new_one_rejected(now, plan)  # refused at its first hand-out: a failed connect
        if reason not in ("closed", "idle", "leaked") and not self.closed:
            self.replace_now += 1
        self._update_fast()
        if self.closed and not self.held:
            plan.add("events", "drained")
        self._plan_into(plan, now)
        return plan

    def drop(self, rec: Conn[C], reason: str, now: float) -> Plan[C]:
        """``rec`` (held: being vetted for a caller) failed its check or was interrupted."""
        self.held.discard(rec)
        return self.discard(rec, reason, now)

    def owns(self, rec: Conn[C]) -> bool:
        """``rec`` is held by a caller of this process (not forgotten, not force-closed)."""
        return rec in self.held

    @staticmethod
    def _never_good(rec: Conn[C], now: float) -> bool:
        """A new connection refused before it served anyone, not one that died with others."""
        return not rec.uses and not rec.suspect and now - rec.created_at < NEW_CONNECTION_WINDOW

    def disconnect(self) -> None:
        """A disconnect was seen: check every connection open now before its next hand-out."""
        for rec in self.live():
            rec.make_suspect()

    # ------------------------------------------------------------------ connecting
    def _may_connect(self) -> bool:
        """A connect could start at all: open, below max_size (cheap; checked first)."""
        return self.opened and not self.closed and self.open_count < self.max

    def plan_connects(self, now: float, extra: int = 0) -> Plan[C]:
        """Start the connects the pool needs now: for waiters at once, up to min_size staggered.

        A connect starts for a waiter only if no connect in flight already covers it, at most
        ``max_connecting`` at once; filling to min_size starts one per ``SPAWN_FREQUENCY``,
        except for replacements of discarded connections, which start at once. Backoff after
        failures delays all of them, but while callers wait a failing backend is retried at
        least every ``WAITER_RETRY`` seconds.
        """
        plan: Plan[C] = Plan()
        self._plan_into(plan, now, extra)
        return plan

    def _plan_into(self, plan: Plan[C], now: float, extra: int = 0) -> None:
        if self.closed or not self.opened:
            return
        room = self.max - self.open_count
        if room <= 0:
            return
        wanted = self.waiting + extra - len(self.idle)  # idle ones are on their way to waiters
        backing_off = now < self.next_attempt_at
        if backing_off and (not wanted or now < self.failed_at + WAITER_RETRY):
            return  # while callers wait, a failing backend is still tried every WAITER_RETRY
        inflight = len(self.connecting)
        p = self.policy
        n = min(wanted - inflight, p.max_connecting - inflight)
        below_min = self.min - self.open_count
        if below_min > 0:
            urgent = min(self.replace_now, below_min)
            self.replace_now -= urgent
            if urgent:
                n = max(n, urgent)
            elif now >= self.next_fill_at:
                n = max(n, 1)
                self.next_fill_at = now + p.spawn_frequency
        else:
            self.replace_now = 0
        for _ in range(max(0, min(n, room))):
            attempt = Attempt(self.generation, now, self.pid)
            self.connecting[attempt] = None
            plan.add("connect", attempt)

    def connect_done(
        self, attempt: Attempt, conn: C | None, error: BaseException | None, now: float
    ) -> tuple[str, Plan[C]]:
        """Book the end of a connect and say what ``conn`` becomes.

        "keep": it joined the pool (to a waiter or idle); "failed": the attempt failed (backoff);
        "forget": it belongs to another process (a fork happened meanwhile); any other answer is
        the discard reason of a connection that is not wanted any more (closed, invalidated,
        pool shrunk): the caller closes it.
        """
        plan: Plan[C] = Plan()
        if self.connecting.pop(attempt, "gone") == "gone" or attempt.pid != self.pid:
            return "forget", plan
        if error is not None:
            self._connect_failed(error, attempt.started_at, now, plan)
            self._plan_into(plan, now)
            return "failed", plan
        assert conn is not None
        self.counters.created += 1
        self.counters.connect_seconds += now - attempt.started_at
        reason = self._keep_reason_new(attempt)
        if reason is not None:
            self.counters.discarded[reason] += 1
            self._plan_into(plan, now)
            return reason, plan
        rec = self._new_record(conn, now)
        self._healthy(plan)
        self._arrive(rec, plan)
        if self.ready():
            plan.add("events", "ready")
        self._plan_into(plan, now)
        return "keep", plan

    def _keep_reason_new(self, attempt: Attempt) -> str | None:
        if self.closed:
            return "closed"
        if attempt.generation != self.generation:
            return "invalidated"
        if self.open_count >= self.max:  # resize() shrank the pool meanwhile
            return "idle"
        return None

    def _new_record(self, conn: C, now: float) -> Conn[C]:
        p = self.policy
        expires = INF
        if p.max_lifetime is not None:
            expires = now + p.max_lifetime * (1.0 - p.lifetime_jitter * random.random())
        rec: Conn[C] = Conn(conn, now, expires, self.generation, self.pid)
        rec.refresh(now, p.check_after)
        if p.keepalive is not None:
            rec.keepalive_every = p.keepalive * (1.0 - p.keepalive_jitter * random.random())
        return rec

    def connect_abandoned(self, attempt: Attempt, now: float) -> Plan[C]:
        """A connect died of an interrupt: free its slot and plan its replacement."""
        plan: Plan[C] = Plan()
        if self.connecting.pop(attempt, "gone") != "gone" and attempt.pid == self.pid:
            self.replace_now += 1
            self._plan_into(plan, now)
        return plan

    def _connect_failed(
        self, error: BaseException, started_at: float, now: float, plan: Plan[C]
    ) -> None:
        """Book a failed connect: backoff grows once per round of concurrent failures."""
        if started_at >= self.failed_at:  # attempts of one round count once
            self.failures += 1
            self.failed_at = now
        self.last_error = error
        self.counters.connect_failures += 1
        self._backoff(now, plan)

    def _new_one_rejected(self, now: float, plan: Plan[C]) -> None:
        """A new connection failed its first check or acquire hook: it counts as a failed connect
        (PgBouncer accepting while the database behind it is down): backoff, ``fail_fast``,
        ``connect_failures`` and the rate-limited "connect failed" WARNING, as for a connect
        that raised."""
        self.rejected += 1
        self.failed_at = now
        self.last_error = ConnectionError(REJECTED_MESSAGE)
        self.counters.connect_failures += 1
        self._backoff(now, plan)

    def _backoff(self, now: float, plan: Plan[C] | None) -> None:
        p = self.policy
        streak = max(self.failures, self.rejected)
        wait = backoff_delay(streak, p.reconnect_delay, p.reconnect_max_delay)
        self.next_attempt_at = now + wait
        if streak >= p.fail_fast_after and not self.down and not self.idle:
            self.down = True
            if plan is not None:
                plan.add("events", "down")
                if p.fail_fast:
                    self._fail_waiters(plan, "down")
        if plan is not None:
            plan.add("events", "failed")

    def _healthy(self, plan: Plan[C]) -> None:
        """A connect succeeded: reset the failure streak; the backend is back if it was down."""
        self.failures = 0
        if self.rejected:
            return  # not back until a new connection also passes its first check
        self.next_attempt_at = 0.0
        if self.down:
            self.down = False
            plan.add("events", "up")

    def _fail_waiters(self, plan: Plan[C], why: str) -> None:
        """Every waiter leaves the line with an error (set by the pool from ``why``)."""
        while self.waiters:
            w = self.waiters.popleft()
            if w.gone:
                continue
            w.gone = True
            w.error = _Marker(why)
            self.waiting -= 1
            if why == "down":
                self.counters.unavailable += 1
            plan.add("wake", w)

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
        expired = [rec for rec in self.idle if rec.expires_at <= now]
        self._pull_idle(expired)
        for rec in expired:
            self.discard(rec, "lifetime", now, plan)
        return min((rec.expires_at for rec in self.live()), default=INF)

    def _reap_idle(self, now: float, plan: Plan[C]) -> float:
        """Connections above min_size idle for max_idle seconds close, coldest first."""
        max_idle = self.policy.max_idle
        if max_idle is None:
            return INF
        surplus = self.open_count - self.min
        stale: list[Conn[C]] = []
        coldest_first = self.idle if self.policy.lifo else sorted(self.idle, key=_last_used)
        for rec in coldest_first:
            if len(stale) >= surplus or now - rec.last_used < max_idle:
                break
            stale.append(rec)
        self._pull_idle(stale)
        for rec in stale:
            self.discard(rec, "idle", now, plan)
        if self.open_count <= self.min:
            return INF
        # a connection in use now is idle max_idle after it comes back, at the earliest
        return min((rec.last_used + max_idle for rec in self.idle), default=now + max_idle)

    def _keepalives(self, now: float, plan: Plan[C]) -> float:
        """Idle connections due a ping leave the idle deque; one is always left for callers."""
        if self.policy.keepalive is None:
            return INF
        due = [rec for rec in self.idle if _ping_due(rec) <= now]
        if due and len(due) == len(self.idle) and (len(due) > 1 or self.pinging):
            due.pop()  # the warmest stays for callers (also while other pings are out)
        self._pull_idle(due)
        self.pinging.update(due)
        for rec in due:
            plan.add("ping", rec)
        return min((_ping_due(rec) for rec in self.idle), default=now + self.policy.keepalive)

    def ping_done(self, rec: Conn[C], now: float, reason: str | None) -> Plan[C]:
        """The ping of ``rec`` ended; ``reason`` says why to discard it (None: it is fine)."""
        plan: Plan[C] = Plan()
        if rec not in self.pinging:  # forgotten after a fork, or closed by close()
            return plan
        self.pinging.discard(rec)
        if reason is None:
            reason = self._keep_reason(rec, now)
        if reason is not None:
            return self.discard(rec, reason, now, plan)
        rec.suspect = False
        rec.refresh(now, self.policy.check_after)
        self._arrive(rec, plan, cold=True)
        return plan

    def _arrive(self, rec: Conn[C], plan: Plan[C], cold: bool = False) -> None:
        """A connection no caller held (new, or back from a ping): the oldest waiter gets it at
        once (it was opened or freed for the waiters: no barging); else it goes idle, at the
        cold end if ``cold`` (a ping does not make a surplus connection warm)."""
        w = self.oldest_waiter() if self.waiting else None
        if w is not None:
            self.held.add(rec)
            self._serve(w, rec)
            plan.add("wake", w)
        elif cold and self.policy.lifo:
            self.idle.appendleft(rec)
        else:
            self.idle.append(rec)

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
                plan.add("leaked", rec)
            else:
                next_due = min(next_due, rec.acquired_at + limit)
        return next_due

    def next_connect_at(self, now: float) -> float:
        """When plan_connects() may next start a connect that is wanted now (INF: when woken)."""
        if self.closed or not self.opened or self.open_count >= self.max:
            return INF
        inflight = len(self.connecting)
        if self.waiting > inflight and inflight < self.policy.max_connecting:
            return min(self.next_attempt_at, self.failed_at + WAITER_RETRY)
        if self.open_count < self.min:
            return max(self.next_attempt_at, self.next_fill_at)
        return INF

    def _pull_idle(self, recs: list[Conn[C]]) -> None:
        """Take ``recs`` out of the idle deque (background work; O(idle))."""
        if len(recs) == 1:
            self.idle.remove(recs[0])
        elif recs:
            gone = set(recs)
            kept = [rec for rec in self.idle if rec not in gone]
            self.idle.clear()
            self.idle.extend(kept)

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
        """Idle connections beyond the ``keep`` warmest close now, coldest first; never below
        ``min_size`` open (those would only be reopened). For PoolMap's room making (loops)."""
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
        return plan

    def close(self, now: float) -> Plan[C]:
        """No more get(): waiters fail with PoolClosed; idle connections close now."""
        plan: Plan[C] = Plan()
        if not self.closed:
            self.closed = True
            self._update_fast()
            self._fail_waiters(plan, "closed")
            plan.add("events", "ready")  # wait_ready() callers wake up (and see closed)
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
        self.idle.clear()
        self.held.clear()
        self.pinging.clear()
        self.connecting.clear()
        self.waiters.clear()
        self.waiting = 0
        self.handoff_pending = False
        self.failures = self.rejected = self.replace_now = 0
        self.down = False
        self.next_attempt_at = self.next_fill_at = 0.0
        self.failed_at = -INF
        self._update_fast()
        return inherited

    def leaked(self, rec: Conn[C], now: float) -> Plan[C] | None:
        """A get() context was garbage-collected while holding ``rec``: discard it."""
        if rec not in self.held:
            return None
        rec.holder = None
        self.held.discard(rec)
        return self.discard(rec, "leaked", now)

    def configure(self, policy: Policy) -> None:
        """New option values (an option assigned on a live pool)."""
        self.policy = policy

    def set_hooks(self, on_take: bool, on_put: bool) -> None:
        """The pool has per-use work on taking / putting back (hooks, leak_timeout)."""
        self.hooks_take, self.hooks_put = on_take, on_put
        self._update_fast()

    def _update_fast(self) -> None:
        """Recompute whether take() and put_back() may serve, after any change that matters."""
        plain = self.opened and not self.closed
        self.fast_take = plain and not self.hooks_take
        self.fast_put = plain and not self.hooks_put and self.open_count <= self.max


class _Marker(Exception):
    """Placed on a waiter by the state; the pool replaces it with the real error."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _ping_due(rec: Conn[Any]) -> float:
    return max(rec.last_used, rec.last_ping) + rec.keepalive_every


def _last_used(rec: Conn[Any]) -> float:
    return rec.last_used


Marker = _Marker
