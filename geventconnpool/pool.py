"""ConnectionPool: keeps live connections and hands one to a greenlet for a ``with`` block.

The pool's bookkeeping is :class:`._state.PoolState`, which decides; this module acts: it holds
the options and the hooks, offers the public API, and applies what the state decides (wakes
waiters, spawns connects and pings, closes connections, runs hooks, logs) in :meth:`_apply`.
ARCHITECTURE.md draws the layers and the flow of a ``get()``.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
import traceback
from typing import Any, TypeVar

import gevent
from gevent.event import Event
from gevent.hub import get_hub
from greenlet import getcurrent

from . import _connector, _fork
from ._hooks import Hooks, is_interrupt, require_new_connection
from ._log import (
    RateLimitedLog,
    log_event,
    pool_logger,
    warn_came_back,
    warn_collected,
    warn_held,
)
from ._maintenance import Scheduler
from ._messages import (
    cause,
    closed_message,
    dump,
    not_ready_error,
    refusal_error,
    snapshot,
    state_text,
    timeout_error,
    wrong_hub_error,
)
from ._options import BY_NAME, PoolOptions, assign, check_int, check_seconds, check_sizes, configure
from ._records import INF, Attempt, Conn, Doomed, Plan, Policy, PoolEvent, Waiter
from ._state import HANDOFF, Checkout, PoolState, PutBack
from .errors import (
    DEFAULT_EXC_CLASSES,
    PoolClosed,
)
from .retry import retry
from .stats import PoolDump, PoolStats

__all__ = ["DEFAULT_EXC_CLASSES", "ConnectionPool", "retry"]

C = TypeVar("C")
_P = TypeVar("_P", bound="ConnectionPool[Any]")
_UNSET: Any = object()  # "not given": the class attribute of the same name applies
_pool_numbers = itertools.count(1)
_monotonic = time.monotonic
_new_object = object.__new__
_getpid = os.getpid  # forks that skip Python's at-fork hooks (uWSGI) are caught by comparing it


class ConnectionPool(PoolOptions, Hooks[C]):
    """A pool of connections for gevent; subclass it and implement :meth:`_new_connection`.

    ``ConnectionPool(size)`` keeps ``size`` connections open, as in 0.2.1; every other option is a
    keyword argument, and its default may be changed by a class attribute of the same name (see
    ``_options.OPTIONS``, README's options table).
    """

    #: Seconds between starting connection i and i+1 when filling the pool (0.2.1's name).
    SPAWN_FREQUENCY: float = 0.1

    def __init__(
        self,
        size: int | None = None,
        exc_classes: Any = _UNSET,
        keepalive: float | None = _UNSET,
        *,
        min_size: int | None = _UNSET,
        max_size: int | None = _UNSET,
        name: str | None = _UNSET,
        timeout: float | None = _UNSET,
        max_waiting: int | None = _UNSET,
        connect_timeout: float | None = _UNSET,
        reconnect_delay: float | None = _UNSET,
        reconnect_max_delay: float = _UNSET,
        fail_fast: bool = _UNSET,
        fail_fast_after: int = _UNSET,
        max_lifetime: float | None = _UNSET,
        lifetime_jitter: float = _UNSET,
        check_idle_after: float | None = _UNSET,
        keepalive_jitter: float = _UNSET,
        max_idle: float | None = _UNSET,
        lifo: bool = _UNSET,
        leak_timeout: float | None = _UNSET,
        max_connecting: int = _UNSET,
        fair_after: float = _UNSET,
        fair_floor: float = _UNSET,
        open: bool = True,
    ) -> None:
        require_new_connection(type(self))  # ConnectionPool(5), a misspelt _new_connection
        given = {k: v for k, v in locals().items() if k in BY_NAME and v is not _UNSET}
        configure(self, size, given)  # validates everything before any state or greenlet exists
        if not isinstance(open, bool):
            raise TypeError(f"open must be True or False, not {type(open).__name__}")
        self._set_up()
        if open:
            self.open()

    def _set_up(self) -> None:
        """The state, the hooks it must know of, the hub and the background's bookkeeping."""
        self._log = pool_logger(self.name)
        self._limited_log = RateLimitedLog(self._log)
        self._state: PoolState[C] = PoolState(
            self.min_size, self.max_size, Policy.of(self), _getpid()
        )
        cls = type(self)
        self._has_on_acquire = cls._on_acquire is not ConnectionPool._on_acquire
        self._has_on_release = cls._on_release is not ConnectionPool._on_release
        leaks = self.leak_timeout is not None  # stack capture on take, a log line on return
        self._state.set_hooks(self._has_on_acquire or leaks, self._has_on_release or leaks)
        self._hub = get_hub()  # a pool belongs to one hub (one thread): _acquire_slow checks
        self._loop = self._hub.loop
        self._busy: set[gevent.Greenlet[Any, Any]] = set()  # connect and ping greenlets
        self._ready: list[Event] = []  # wait_ready() callers
        self._drained: Event | None = None  # set when nothing is held any more after close()
        self._closer: gevent.Greenlet[Any, None] | None = None  # runs close()'s waiting part
        self._maint = Scheduler(self)
        self._inherited: list[Conn[C]] = []  # after a fork: the parent's, to forget
        self._stale: list[gevent.Greenlet[Any, Any]] = []  # after a fork: the parent's, to kill

    def _default_name(self) -> str:
        """The pool's name when none is given; ready-made pools derive it from their address."""
        return f"pool-{next(_pool_numbers)}"

    def __setattr__(self, name: str, value: Any) -> None:
        """Options assigned on a pool: sizes resize it, live ones apply, others are refused."""
        if "_state" not in self.__dict__ or not assign(self, name, value):
            object.__setattr__(self, name, value)
        elif name in BY_NAME:
            self._state.configure(Policy.of(self))

    # ------------------------------------------------------------------ public API
    def get(self, timeout: float | None = _UNSET) -> Checkout[C]:
        """A context manager that hands out a connection: ``with pool.get() as conn:``.

        ``timeout`` (seconds) bounds everything get() does; None waits for ever; 0 never waits.
        The pool-wide ``timeout`` option (default 30 s) applies when it is not given.
        """
        if timeout is _UNSET:
            timeout = self.timeout
        elif timeout is not None:
            timeout = check_seconds("timeout", timeout)
        checkout: Checkout[C] = _new_object(Checkout)  # Checkout(self, state, timeout), but
        checkout._pool = self  # without a Python-level __init__ call: this is the hot path
        checkout._state = self._state
        checkout._timeout = timeout
        checkout._rec = None
        return checkout

    def open(self) -> None:
        """Start connecting (the constructor does it unless ``open=False``); idempotent.

        With ``open=False`` the pool does nothing until ``open()``, ``get()`` or
        ``wait_ready()`` in the process that uses it: create pools at import time under
        ``gunicorn --preload`` and the master process never connects.
        """
        self._check_fork()
        state = self._state
        if state.closed:
            raise PoolClosed(closed_message(self.name))
        if state.opened:
            return
        _fork.register(self)
        self._maint.start()
        self._apply(state.open(_monotonic()))

    @property
    def closed(self) -> bool:
        """True once close() was called."""
        return self._state.closed

    def close(self, timeout: float | None = None) -> None:
        """Close the pool: waiters and later get()s get PoolClosed, idle connections close now.

        In-use connections are closed when they come back; with ``timeout``, close() waits that
        long for them, then closes the ones still out. Idempotent.
        """
        timeout = check_seconds("timeout", timeout)
        self._check_fork()
        plan = self._state.close(_monotonic())
        _fork.unregister(self)
        # The work that switches greenlets runs in its own greenlet: if this caller is
        # interrupted (a Timeout, a kill), the closing still completes.
        closer = self._closer
        if closer is None or closer.dead:
            self._closer = closer = gevent.spawn(self._finish_close, plan, timeout)
        else:
            self._apply(plan)
        closer.join()

    def __enter__(self: _P) -> _P:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def resize(self, min_size: int | None = None, max_size: int | None = None) -> None:
        """Change min_size and/or max_size at run time; surplus idle connections close now."""
        self._check_fork()
        state = self._state
        lo, hi = check_sizes(
            None,
            state.min if min_size is None else min_size,
            state.max if max_size is None else max_size,
        )
        if state.closed:
            raise PoolClosed(closed_message(self.name))
        for key, value in (("min_size", lo), ("max_size", hi), ("size", hi)):
            object.__setattr__(self, key, value)
        self._apply(state.resize(lo, hi, _monotonic()))

    def close_idle(self, keep: int = 0) -> int:
        """Close idle connections beyond the ``keep`` warmest now (never below ``min_size``
        open); return how many. Hands capacity back without ``resize()`` down and up."""
        self._check_fork()
        plan = self._state.close_idle(check_int("keep", keep, 0) or 0, _monotonic())
        self._apply(plan)
        return len(plan.close)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until ``min_size`` connections are open (a startup check).

        Raises PoolTimeout, chained to the last connect error, if that takes longer than timeout.
        """
        timeout = check_seconds("timeout", timeout)
        self.open()
        state = self._state
        if state.ready():
            return
        event = Event()
        self._ready.append(event)
        try:
            if not event.wait(timeout):
                raise not_ready_error(self.name, state, timeout) from state.health.last_error
        finally:
            if event in self._ready:
                self._ready.remove(event)
        if state.closed:
            raise PoolClosed(closed_message(self.name))

    def invalidate(self) -> None:
        """Replace every connection: idle ones close now, in-use ones when they come back.

        Connects already in flight are discarded on arrival. For failover and credential rotation.
        """
        self._check_fork()
        plan = self._state.invalidate(_monotonic())
        self._log.info(
            "pool %r invalidated: %d idle connection(s) closed", self.name, len(plan.close)
        )
        self._apply(plan)

    def stats(self) -> PoolStats:
        """An immutable snapshot of the pool's state and counters, in O(1)."""
        return snapshot(self._state, self.name)

    def dump(self) -> PoolDump:
        """Every connection and waiter with its state and times; ``print(pool.dump())``."""
        return dump(self._state, self.name, _monotonic())

    def __repr__(self) -> str:
        closed = " closed" if self._state.closed else ""
        text = state_text(self._state).rsplit(" max=", 1)[0]
        return f"<{type(self).__name__} {self.name!r}{closed} {text}>"

    # ------------------------------------------------------------------ get() and release
    def _acquire_slow(self, timeout: float | None, start: float) -> Conn[C]:
        """Wait, check and replace under one deadline (a single gevent Timeout, never re-armed)."""
        if get_hub() is not self._hub:  # the fast path cannot tell; see docs/usage/threads.rst
            raise wrong_hub_error(self.name, self._hub)
        if not self._state.opened and not self._state.closed:
            self.open()
        timer = None if timeout is None else _connector.start_timer(timeout)
        again = False  # a greenlet whose connection failed its check keeps its place in line
        try:
            while True:
                rec = self._take_or_wait(timeout, start, again)
                if self._forked_meanwhile(rec):  # handed over just before a fork: the parent's
                    continue  # forgotten (no hook, no close); wait for one of our own
                if self._vet(rec):
                    return self._hand_out(rec, start)
                again = True
        except gevent.Timeout as t:
            if timer is None or t is not timer:
                raise
            t.__traceback__ = None  # it holds this frame, which holds t (timer): a cycle
            self._state.timed_out()
            raise timeout_error(self.name, self._state, timeout) from cause(self._state)
        finally:
            if timer is not None:
                timer.close()

    def _take_or_wait(self, timeout: float | None, start: float, first: bool) -> Conn[C]:
        """An idle connection, or one handed over by release/connect after a wait."""
        state = self._state
        rec = state.take_any()
        if rec is not None:
            return rec
        refusal = state.refuse()
        if refusal is not None or timeout == 0:
            self._apply(state.no_wait(_monotonic()))  # a connect for the next caller
            if refusal is None:
                state.timed_out()
                raise timeout_error(self.name, state, 0.0) from cause(state)
            raise refusal_error(self.name, state, refusal, self.max_waiting)
        return self._wait(start, first)

    def _wait(self, start: float, first: bool) -> Conn[C]:
        """Queue this greenlet (at the head if ``first``); if interrupted, it leaves no trace."""
        state = self._state
        w: Waiter[C] = Waiter(start)
        now = _monotonic()
        plan = state.wait(w, now, first)
        if plan:
            self._apply(plan)
        try:
            w.waiter.get()
        except BaseException:
            todo = state.leave(w, _monotonic())
            if todo is not None:
                self._after_put_back(todo)
            raise
        if w.refused is not None:
            raise refusal_error(self.name, state, w.refused, self.max_waiting)
        assert w.rec is not None
        return w.rec

    def _vet(self, rec: Conn[C]) -> bool:
        """Decide whether ``rec`` may be handed out, discarding it if not. May do I/O."""
        state = self._state
        reason = state.vet_reason(rec, _monotonic())
        try:
            if reason == "check":
                reason = None if self._check(rec.conn) is not False else "check"
                if reason is None:
                    state.checked(rec, _monotonic())
            if reason is None and self._has_on_acquire and self._on_acquire(rec.conn) is False:
                reason = "check"
        except Exception:
            self._log.debug("checkout check failed on connection #%d", rec.id, exc_info=True)
            reason = "check"
        except BaseException as exc:  # to the caller; a hook's own failure is a failed check
            if not self._forked_meanwhile(rec):
                why = "interrupted" if is_interrupt(exc) else "check"
                self._apply(state.drop(rec, why, _monotonic()))
            raise
        if self._forked_meanwhile(rec):
            return False
        if reason is None:
            return True
        self._apply(state.drop(rec, reason, _monotonic()))
        return False

    def _forked_meanwhile(self, rec: Conn[C]) -> bool:
        """The process forked while a hook ran on ``rec``: in the child, forget it (no hook)."""
        if rec.pid == _getpid():
            return False
        self._check_fork()
        return True

    def _hand_out(self, rec: Conn[C], start: float) -> Conn[C]:
        taken_at = None
        if self.leak_timeout is not None:  # where it was taken, for the leak report
            taken_at = tuple(traceback.format_stack(limit=12)[:-3])
        plan = self._state.hand_out(rec, _monotonic(), start, getcurrent(), taken_at)
        if plan:
            self._apply(plan)
        return rec

    def _release(self, rec: Conn[C], exc: BaseException | None, now: float) -> None:
        """Take a connection back from a ``with`` block, or discard it if it may be broken."""
        self._check_fork()
        state = self._state
        if not state.owns(rec):  # the parent's (after a fork), or closed by close(timeout)
            return
        reason = None if exc is None else self._exit_reason(exc)
        if reason is None and self._has_on_release:
            reason = self._run_on_release(rec)
        if self._forked_meanwhile(rec):  # a hook above forked: the child keeps its hands off
            return
        self._apply(state.release(rec, now, reason))

    def _exit_reason(self, exc: BaseException) -> str | None:
        """Why an exception leaving the ``with`` block discards the connection, if it does."""
        if not isinstance(exc, Exception):
            return "interrupted"
        try:
            broken = self._is_disconnect(exc)
        except Exception:
            self._log.exception("_is_disconnect() raised; discarding the connection")
            broken = True
        if not broken:
            return None
        self._state.disconnect()
        msg = "pool %r: a connection broke (%r); checking the others"
        self._limited_log.log(logging.INFO, "disconnect", msg, self.name, exc)
        return "error"

    def _run_on_release(self, rec: Conn[C]) -> str | None:
        try:
            ok = self._on_release(rec.conn)
        except Exception as e:
            msg = "pool %r: _on_release failed (%r); connection discarded"
            self._limited_log.log(logging.WARNING, "release", msg, self.name, e)
            self._log.debug("_on_release failed", exc_info=True)
            return "release"
        except BaseException:
            if not self._forked_meanwhile(rec):
                self._apply(self._state.drop(rec, "interrupted", _monotonic()))
            raise
        return "release" if ok is False else None

    def _reclaim_leaked(self, rec: Conn[C]) -> None:
        """A get() context was garbage-collected while holding ``rec``: report, then discard."""
        self._loop.run_callback(self._discard_leaked, rec)

    def _discard_leaked(self, rec: Conn[C]) -> None:
        self._check_fork()  # a leaked parent connection is forgotten, not closed
        holder = rec.holder
        plan = self._state.leaked(rec, _monotonic())
        if plan is not None:
            warn_collected(self._log, self.name, rec, holder)
            self._apply(plan)

    # ------------------------------------------------------------------ acting on the state
    def _apply(self, plan: Plan[C]) -> None:
        """Do what the state decided; the only code that acts on a decision: wake, spawn, log,
        wake the scheduler, forget, then close and run ``_on_discard`` (last: it may switch)."""
        for w in plan.wake:
            self._loop.run_callback(w.waiter.switch, None)
        if plan.handoff:
            self._loop.run_callback(self._handoff)
        for attempt in plan.connect:
            self._spawn(_connector.connect, attempt)
        for rec in plan.ping:
            self._spawn(_connector.ping, rec)
        for rec in plan.leaked:
            warn_held(self._log, self.name, rec, self.leak_timeout)
        for rec in plan.came_back:
            warn_came_back(self._log, self.name, rec, _monotonic())
        for event in plan.events:
            self._on_event(event)
        if plan.wake_at < INF:
            self._maint.wake_by(plan.wake_at)
        for conn in plan.forget:
            self._forget_quietly(conn)
        if plan.close:
            self._close_all(plan.close)

    def _after_put_back(self, todo: PutBack[C]) -> None:
        """put_back() asked for a wake-up (a Waiter) or the deferred hand-off (HANDOFF)."""
        if todo is HANDOFF:
            self._loop.run_callback(self._handoff)
        elif isinstance(todo, Waiter):
            self._loop.run_callback(todo.waiter.switch, None)

    def _handoff(self) -> None:
        """The deferred hand-off, run by the hub once per loop turn: idle ones go to waiters."""
        self._check_fork()  # scheduled before a fork: hand out nothing of the parent's
        for w in self._state.handoff(_monotonic()):
            w.waiter.switch(None)  # we are in the hub: switch straight to the waiter

    def _spawn(self, func: Any, arg: Any) -> None:
        g = gevent.spawn(func, self, arg)
        self._busy.add(g)
        g.rawlink(self._busy.discard)

    def _close_all(self, doomed: list[Doomed[C]]) -> None:
        """Close connections and report them; if interrupted, a greenlet closes the rest."""
        for i, d in enumerate(doomed):
            if d.pid != _getpid():  # a close hook forked: the parent's are only forgotten
                self._forget_quietly(d.conn)
                continue
            try:
                self._close_quietly(d.conn)
                if d.reason is not None:  # it was in the pool: tell the subclass
                    self._call_on_discard(d.conn, d.reason)
            except BaseException:
                gevent.spawn(self._close_all, doomed[i + 1 :])
                raise

    def _forget_quietly(self, conn: C) -> None:
        try:
            self._forget_connection(conn)
        except Exception:
            self._log.debug("forgetting an inherited connection failed", exc_info=True)
        except BaseException as e:
            if is_interrupt(e):
                raise
            self._log.exception("pool %r: _forget_connection raised %r", self.name, e)

    def _close_quietly(self, conn: C) -> None:
        try:
            self._close_connection(conn)
        except Exception:
            self._log.debug("closing a connection failed", exc_info=True)
        except BaseException as e:  # a hook's own BaseException: logged once, the closing goes on
            if is_interrupt(e):
                raise
            self._log.exception("pool %r: _close_connection raised %r", self.name, e)

    def _call_on_discard(self, conn: C, reason: str) -> None:
        try:
            self._on_discard(conn, reason)
        except Exception:
            self._log.exception("_on_discard(%r) raised", reason)
        except BaseException as e:
            if is_interrupt(e):
                raise
            self._log.exception("pool %r: _on_discard(%r) raised %r", self.name, reason, e)

    def _on_event(self, event: PoolEvent) -> None:
        if event is PoolEvent.READY:
            for e in self._ready:
                e.set()
        elif event is PoolEvent.DRAINED:
            if self._drained is not None:
                self._drained.set()
        else:
            log_event(self._log, self._limited_log, self.name, event, self._state.health)

    # ------------------------------------------------------------------ the connector's reports
    def _connect_ended(self, attempt: Attempt, conn: C | None, error: BaseException | None) -> None:
        """A connect ended: with ``conn`` open, or ``error`` (both: ``_on_connect`` failed)."""
        self._check_fork()  # a fork without at-fork hooks: the state forgets the parent's first
        self._apply(self._state.connect_done(attempt, conn, error, _monotonic()))

    def _connect_killed(self, attempt: Attempt, conn: C | None) -> None:
        """A connect was killed (close, fork, a kill): no verdict on the backend."""
        self._check_fork()
        self._apply(self._state.connect_abandoned(attempt, conn, _monotonic()))

    def _ping_ended(self, rec: Conn[C], reason: str | None, error: BaseException | None) -> None:
        """A keepalive ended; a routine failure is one rate-limited line, a bug a traceback."""
        self._check_fork()  # the parent's ping, ended in a forked child: ping_done() forgets it
        if isinstance(error, (*self.exc_classes, TimeoutError)):
            msg = "pool %r: keepalive found connection #%d broken (%r); replacing it"
            self._limited_log.log(logging.INFO, "keepalive", msg, self.name, rec.id, error)
        elif error is not None:
            self._log.error(
                "pool %r: _keepalive raised on connection #%d; replacing it", self.name, rec.id,
                exc_info=error,
            )  # fmt: skip
        self._apply(self._state.ping_done(rec, _monotonic(), reason))

    def _run_due(self, scheduler: Scheduler) -> float | None:
        """The scheduler's turn: do what is due; say when to look again (None: stop)."""
        self._check_fork()
        if self._state.closed or scheduler is not self._maint:
            return None
        plan, next_at = self._state.due(_monotonic())
        self._apply(plan)
        return next_at

    # ------------------------------------------------------------------ closing, fork
    def _finish_close(self, plan: Plan[C], timeout: float | None) -> None:
        """close()'s part that may switch: close idle ones, stop greenlets, wait for held ones."""
        self._apply(plan)
        busy = [g for g in self._busy if g is not getcurrent() and not g.dead]
        sched = self._maint.stop()
        if sched is not None:
            busy.append(sched)
        if busy:
            gevent.killall(busy, block=True)
        self._state.connects_stopped()
        if timeout is not None and self._state.held:
            self._drained = Event()
            if not self._drained.wait(timeout):
                self._log.warning(
                    "pool %r: %d connection(s) still in use %.3gs after close(); closing them",
                    self.name,
                    len(self._state.held),
                    timeout,
                )
                self._apply(self._state.close_held(_monotonic()))

    def _check_fork(self) -> None:
        """After a fork that skipped Python's at-fork hooks (uWSGI), reset here and now."""
        if self._state.pid != _getpid():
            self._forked()
            self._after_fork_io()

    def _forked(self) -> None:
        """In a forked child (no switch): forget the parent's connections, connects, waiters."""
        self._inherited = self._state.after_fork(_getpid())
        old = self._maint.stop()
        self._stale = [*self._busy, *([old] if old is not None else [])]
        self._busy = set()
        self._maint = Scheduler(self)

    def _after_fork_io(self) -> None:
        """In a forked child: close our copies of inherited descriptors, restart the background."""
        inherited, self._inherited = self._inherited, []
        stale, self._stale = self._stale, []
        for rec in inherited:
            self._forget_quietly(rec.conn)
        for g in stale:
            g.kill(block=False)  # copies of the parent's greenlets, on the parent's sockets
        self._loop = get_hub().loop
        if self._state.opened and not self._state.closed and not self._maint.started:
            self._maint.start()
            self._apply(self._state.plan_connects(_monotonic()))
