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
from types import TracebackType
from typing import Any, Generic, TypeVar

import gevent
from gevent.event import Event
from gevent.hub import get_hub
from greenlet import getcurrent

from . import _connector, _fork
from ._log import RateLimitedLog, pool_logger
from ._maintenance import Scheduler
from ._options import BY_NAME, OPTIONS, check_seconds, check_sizes
from ._probe import socket_is_quiet
from ._records import Attempt, Conn, Waiter, describe, greenlet_label
from ._state import HANDOFF, SLOW, Marker, Plan, Policy, PoolState
from .errors import (
    DEFAULT_EXC_CLASSES,
    PoolClosed,
    PoolError,
    PoolExhausted,
    PoolTimeout,
    PoolUnavailable,
)
from .retry import retry
from .stats import ConnectionInfo, Discarded, PoolDump, PoolStats, WaiterInfo

__all__ = ["DEFAULT_EXC_CLASSES", "ConnectionPool", "retry"]

C = TypeVar("C")
_P = TypeVar("_P", bound="ConnectionPool[Any]")
_UNSET: Any = object()  # "not given": the class attribute of the same name applies
_pool_numbers = itertools.count(1)
_monotonic = time.monotonic
_getpid = os.getpid  # forks that skip Python's at-fork hooks (uWSGI) are caught by comparing it


class _Checkout(Generic[C]):
    """The context manager returned by ``get()``: acquires on enter, releases on exit.

    The common case is two calls into the state (``take``, ``put_back``); anything else goes
    through the pool's slow paths.
    """

    __slots__ = ("_pool", "_rec", "_timeout")

    def __init__(self, pool: ConnectionPool[C], timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._rec: Conn[C] | None = None

    def __enter__(self) -> C:
        if self._rec is not None:
            raise RuntimeError("this get() context is already entered; call pool.get() again")
        pool = self._pool
        state = pool._state
        now = _monotonic()
        rec = state.take(now) if state.pid == _getpid() else None
        if rec is None:
            rec = pool._acquire_slow(self._timeout, now)
        else:
            rec.holder = getcurrent()
        self._rec = rec
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
        pool = self._pool
        now = _monotonic()
        if exc_type is None:
            todo = pool._state.put_back(rec, now)
            if todo is None:
                return
            if todo is not SLOW:
                pool._after_put_back(todo)
                return
        pool._release(rec, exc, now)

    def __del__(self) -> None:
        rec = self._rec
        if rec is not None:  # entered, never exited, and now garbage: report, give the slot back
            self._rec = None
            self._pool._reclaim_leaked(rec)


class ConnectionPool(Generic[C]):
    """A pool of connections for gevent; subclass it and implement :meth:`_new_connection`.

    ``ConnectionPool(size)`` keeps ``size`` connections open, as in 0.2.1; every other option is a
    keyword argument, and its default may be changed by a class attribute of the same name (see
    ``_options.OPTIONS``, README's options table).
    """

    #: Seconds between starting connection i and i+1 when filling the pool (0.2.1's name).
    SPAWN_FREQUENCY: float = 0.1

    # Options (defaults from _options.OPTIONS, set below the class); read back as these types.
    size: int
    min_size: int
    max_size: int
    name: str
    exc_classes: tuple[type[BaseException], ...]
    keepalive: float | None
    timeout: float | None
    max_waiting: int | None
    connect_timeout: float | None
    reconnect_delay: float | None
    reconnect_max_delay: float
    fail_fast: bool
    fail_fast_after: int
    max_lifetime: float | None
    lifetime_jitter: float
    check_idle_after: float | None
    keepalive_jitter: float
    max_idle: float | None
    lifo: bool
    leak_timeout: float | None
    max_connecting: int
    fair_after: float

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
        open: bool = True,
    ) -> None:
        given = {k: v for k, v in locals().items() if k in BY_NAME and v is not _UNSET}
        self._configure(size, given)  # validates everything before any state or greenlet exists
        if not isinstance(open, bool):
            raise TypeError(f"open must be True or False, not {type(open).__name__}")
        self._log = pool_logger(self.name)
        self._limited_log = RateLimitedLog(self._log)
        self._state: PoolState[C] = PoolState(self.min_size, self.max_size, self._policy(), 0)
        self._state.pid = _getpid()
        cls = type(self)
        self._has_on_acquire = cls._on_acquire is not ConnectionPool._on_acquire
        self._has_on_release = cls._on_release is not ConnectionPool._on_release
        leaks = self.leak_timeout is not None  # stack capture on take, a log line on return
        self._state.set_hooks(self._has_on_acquire or leaks, self._has_on_release or leaks)
        self._loop = get_hub().loop  # a pool belongs to one hub (one thread)
        self._busy: set[gevent.Greenlet[Any, Any]] = set()  # connect and ping greenlets
        self._ready: list[Event] = []  # wait_ready() callers
        self._drained: Event | None = None  # set when nothing is held any more after close()
        self._closer: gevent.Greenlet[Any, None] | None = None  # runs close()'s waiting part
        self._maint = Scheduler(self)
        self._inherited: list[Conn[C]] = []  # after a fork: the parent's, to forget
        self._stale: list[gevent.Greenlet[Any, Any]] = []  # after a fork: the parent's, to kill
        if open:
            self.open()

    def _configure(self, size: Any, given: dict[str, Any]) -> None:
        """Validate and set every option (argument, else class attribute) before any state."""
        cls = type(self)
        for opt in OPTIONS:
            value = given[opt.name] if opt.name in given else getattr(cls, opt.name, opt.default)
            object.__setattr__(self, opt.name, opt.check(opt.name, value))
        if size is None and getattr(cls, "size", None) is not None:
            size = cls.size  # a subclass's `size = 10`
        lo, hi = check_sizes(size, self.min_size, self.max_size)
        object.__setattr__(self, "min_size", lo)
        object.__setattr__(self, "max_size", hi)
        object.__setattr__(self, "size", hi)
        if self.name is None:
            object.__setattr__(self, "name", self._default_name())
        check_seconds("SPAWN_FREQUENCY", self.SPAWN_FREQUENCY, optional=False)
        if self.keepalive is not None and cls._keepalive is ConnectionPool._keepalive:
            raise TypeError(
                f"keepalive={self.keepalive} needs a _keepalive(conn) method: implement it in "
                f"{cls.__name__}, or leave keepalive=None"
            )

    def _default_name(self) -> str:
        """The pool's name when none is given; ready-made pools derive it from their address."""
        return f"pool-{next(_pool_numbers)}"

    def _policy(self) -> Policy:
        """The options the state applies, as the state wants them."""
        reconnect = self.reconnect_delay
        return Policy(
            check_after=float("inf") if self.check_idle_after is None else self.check_idle_after,
            fail_fast=self.fail_fast,
            fail_fast_after=self.fail_fast_after,
            fair_after=self.fair_after,
            keepalive=self.keepalive,
            keepalive_jitter=self.keepalive_jitter,
            leak_timeout=self.leak_timeout,
            lifetime_jitter=self.lifetime_jitter,
            lifo=self.lifo,
            max_connecting=self.max_connecting,
            max_idle=self.max_idle,
            max_lifetime=self.max_lifetime,
            max_waiting=self.max_waiting,
            reconnect_delay=self.SPAWN_FREQUENCY if reconnect is None else reconnect,
            reconnect_max_delay=self.reconnect_max_delay,
            spawn_frequency=self.SPAWN_FREQUENCY,
        )

    def __setattr__(self, name: str, value: Any) -> None:
        """Options assigned on a pool: sizes resize it, live ones apply, others are refused."""
        opt = BY_NAME.get(name) if name != "size" else BY_NAME["max_size"]
        if opt is None or "_state" not in self.__dict__:
            object.__setattr__(self, name, value)
        elif name in ("size", "min_size", "max_size"):
            sizes = {"min_size": value, "max_size": value} if name == "size" else {name: value}
            self.resize(**sizes)
        elif opt.live:
            object.__setattr__(self, name, opt.check(name, value))
            self._state.configure(self._policy())
        else:
            raise AttributeError(
                f"{name} cannot be changed on a pool that exists; pass {name}= to the "
                f"constructor or set it as a class attribute of {type(self).__name__}"
            )

    # ------------------------------------------------------------------ hooks
    def _new_connection(self) -> C:
        """Open and return a new connection; raising, or returning None, is a failed attempt."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement _new_connection() to open a connection"
        )

    def _keepalive(self, conn: C) -> None:
        """Application-level keepalive (a PING); raise one of ``exc_classes`` if it is broken."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _keepalive(conn)")

    def _check(self, conn: C) -> bool:
        """Checkout check for a connection idle longer than ``check_idle_after``.

        The default costs no round trip: a socket-like connection (with ``fileno()``) that is
        readable while idle has been closed or reset by its peer, or holds bytes nobody asked for,
        and is dead; nothing is read from it. Return False or raise to discard the connection.
        """
        fileno = getattr(conn, "fileno", None)
        return True if fileno is None else socket_is_quiet(fileno())

    def _close_connection(self, conn: C) -> None:
        """Close a connection the pool discards; the default calls ``conn.close()`` if it exists."""
        close = getattr(conn, "close", None)
        if close is not None:
            close()

    def _forget_connection(self, conn: C) -> None:
        """In a forked child: drop a connection inherited from the parent without disturbing it.

        Only this process's file descriptor is closed, so the parent's TCP (and TLS) session goes
        on; the object itself is kept alive so no finaliser can later close a reused descriptor.
        """
        _fork.forget(conn)

    def _on_connect(self, conn: C) -> None:
        """Called once on a new connection, before its first use (session setup); raise to fail."""

    def _on_acquire(self, conn: C) -> bool | None:
        """Called before a hand-out; raising or returning False discards it and tries the next."""
        return None

    def _on_release(self, conn: C) -> bool | None:
        """Called on return (reset state); raising or returning False discards the connection."""
        return None

    def _on_discard(self, conn: C, reason: str) -> None:
        """Called after the pool closed a connection, with the reason (a field of Discarded)."""

    def _is_disconnect(self, exc: BaseException) -> bool:
        """True when ``exc``, raised inside ``with pool.get()``, means the connection is broken."""
        return isinstance(exc, self.exc_classes) and not isinstance(exc, PoolError)

    # ------------------------------------------------------------------ public API
    def get(self, timeout: float | None = _UNSET) -> _Checkout[C]:
        """A context manager that hands out a connection: ``with pool.get() as conn:``.

        ``timeout`` (seconds) bounds everything get() does; None waits for ever; 0 never waits.
        The pool-wide ``timeout`` option applies when it is not given.
        """
        if timeout is _UNSET:
            timeout = self.timeout
        elif timeout is not None:
            timeout = check_seconds("timeout", timeout)
        return _Checkout(self, timeout)

    def open(self) -> None:
        """Start connecting (the constructor does it unless ``open=False``); idempotent.

        With ``open=False`` the pool does nothing until ``open()``, ``get()`` or
        ``wait_ready()`` in the process that uses it: create pools at import time under
        ``gunicorn --preload`` and the master process never connects.
        """
        self._check_fork()
        state = self._state
        if state.closed:
            raise PoolClosed(self._closed_message())
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
        state = self._state
        lo, hi = check_sizes(
            None,
            state.min if min_size is None else min_size,
            state.max if max_size is None else max_size,
        )
        if state.closed:
            raise PoolClosed(self._closed_message())
        for key, value in (("min_size", lo), ("max_size", hi), ("size", hi)):
            object.__setattr__(self, key, value)
        self._apply(state.resize(lo, hi, _monotonic()))

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
                open_now = state.open_count - len(state.connecting)
                raise PoolTimeout(
                    f"pool {self.name!r}: {open_now} of min_size={state.min} "
                    f"connections open after {timeout}s ({self._state_text()})"
                ) from state.last_error
        finally:
            if event in self._ready:
                self._ready.remove(event)
        if state.closed:
            raise PoolClosed(self._closed_message())

    def invalidate(self) -> None:
        """Replace every connection: idle ones close now, in-use ones when they come back.

        Connects already in flight are discarded on arrival. For failover and credential rotation.
        """
        plan = self._state.invalidate(_monotonic())
        self._log.info(
            "pool %r invalidated: %d idle connection(s) closed", self.name, len(plan.close)
        )
        self._apply(plan)

    def stats(self) -> PoolStats:
        """An immutable snapshot of the pool's state and counters, in O(1)."""
        s = self._state
        c = s.counters
        return PoolStats(
            name=self.name,
            open=s.open_count,
            idle=len(s.idle),
            in_use=len(s.held) + len(s.pinging),
            connecting=len(s.connecting),
            waiting=s.waiting,
            min_size=s.min,
            max_size=s.max,
            available=not s.down,
            closed=s.closed,
            checking=len(s.pinging),
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

    def dump(self) -> PoolDump:
        """Every connection and waiter with its state and times; ``print(pool.dump())``."""
        now = _monotonic()
        s = self._state
        conns = [describe(rec, "idle", now) for rec in reversed(s.idle)]
        conns += [describe(rec, "in_use", now) for rec in s.held]
        conns += [describe(rec, "keepalive", now) for rec in s.pinging]
        conns += [
            ConnectionInfo(id=0, state="connecting", age=now - a.started_at, idle_for=None, uses=0)
            for a in s.connecting
        ]
        waiters = [
            WaiterInfo(greenlet_label(w.greenlet) or "?", now - w.since)
            for w in s.waiters
            if not w.gone
        ]
        return PoolDump(self.stats(), tuple(conns), tuple(waiters))

    def __repr__(self) -> str:
        closed = " closed" if self._state.closed else ""
        s = self._state
        return (
            f"<{type(self).__name__} {self.name!r}{closed} open={s.open_count} "
            f"idle={len(s.idle)} in_use={len(s.held) + len(s.pinging)} "
            f"connecting={len(s.connecting)} waiting={s.waiting}>"
        )

    # ------------------------------------------------------------------ get() and release
    def _acquire_slow(self, timeout: float | None, start: float) -> Conn[C]:
        """Wait, check and replace under one deadline (a single gevent Timeout, never re-armed)."""
        self._check_fork()
        if not self._state.opened and not self._state.closed:
            self.open()
        timer = None if timeout is None else _connector.start_timer(timeout)
        again = False  # a greenlet whose connection failed its check keeps its place in line
        try:
            while True:
                rec = self._take_or_wait(timeout, start, again)
                if self._vet(rec):
                    return self._hand_out(rec, start)
                again = True
        except gevent.Timeout as t:
            if timer is None or t is not timer:
                raise
            raise self._timeout_error(timeout) from self._cause()
        finally:
            if timer is not None:
                timer.close()

    def _take_or_wait(self, timeout: float | None, start: float, first: bool) -> Conn[C]:
        """An idle connection, or one handed over by release/connect after a wait."""
        state = self._state
        rec = state.take_any()
        if rec is not None:
            return rec
        refusal = state.refusal()
        if refusal is not None or timeout == 0:
            self._apply(state.no_wait(_monotonic()))  # a connect for the next caller
            if refusal is None:
                raise self._timeout_error(0.0) from self._cause()
            raise self._refusal_error(refusal)
        return self._wait(start, first)

    def _wait(self, start: float, first: bool) -> Conn[C]:
        """Queue this greenlet (at the head if ``first``); if interrupted, it leaves no trace."""
        state = self._state
        w: Waiter[C] = Waiter(start)
        now = _monotonic()
        plan = state.wait(w, now, first)
        if plan:
            self._apply(plan)
        self._maint.wake_by(state.next_connect_at(now))
        try:
            w.waiter.get()
        except BaseException:
            todo = state.leave(w, _monotonic())
            if todo is not None:
                self._after_put_back(todo)
            raise
        if w.error is not None:
            raise self._refusal_error(w.error)
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
        except BaseException:
            self._apply(state.drop(rec, "interrupted", _monotonic()))
            raise
        if reason is None:
            return True
        self._apply(state.drop(rec, reason, _monotonic()))
        return False

    def _hand_out(self, rec: Conn[C], start: float) -> Conn[C]:
        now = _monotonic()
        self._state.hand_out(rec, now, start)
        rec.holder = getcurrent()
        if self.leak_timeout is not None:
            rec.leak_reported = False
            rec.taken_at = tuple(traceback.format_stack(limit=12)[:-3])
            self._maint.wake_by(now + self.leak_timeout)
        return rec

    def _release(self, rec: Conn[C], exc: BaseException | None, now: float) -> None:
        """Take a connection back from a ``with`` block, or discard it if it may be broken."""
        self._check_fork()
        state = self._state
        if not state.owns(rec):  # the parent's (after a fork), or closed by close(timeout)
            return
        if rec.leak_reported:
            rec.leak_reported = False
            self._log.info(
                "pool %r: connection #%d reported as leaked came back after %.1fs",
                self.name,
                rec.id,
                now - rec.acquired_at,
            )
        reason = None if exc is None else self._exit_reason(exc)
        if reason is None and self._has_on_release:
            reason = self._run_on_release(rec)
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
        self._limited_log.log(
            logging.INFO,
            "disconnect",
            "pool %r: a connection broke (%r); checking the others",
            self.name,
            exc,
        )
        return "error"

    def _run_on_release(self, rec: Conn[C]) -> str | None:
        try:
            ok = self._on_release(rec.conn)
        except Exception as e:
            self._limited_log.log(
                logging.WARNING,
                "release",
                "pool %r: _on_release failed (%r); connection discarded",
                self.name,
                e,
            )
            self._log.debug("_on_release failed", exc_info=True)
            return "release"
        except BaseException:
            self._apply(self._state.drop(rec, "interrupted", _monotonic()))
            raise
        return "release" if ok is False else None

    def _reclaim_leaked(self, rec: Conn[C]) -> None:
        """A get() context was garbage-collected while holding ``rec``: report, then discard."""
        self._loop.run_callback(self._discard_leaked, rec)

    def _discard_leaked(self, rec: Conn[C]) -> None:
        holder = greenlet_label(rec.holder)
        plan = self._state.leaked(rec, _monotonic())
        if plan is not None:
            self._log.warning(
                "pool %r: connection #%d was taken by %s and its get() context was "
                "garbage-collected without being exited; use `with pool.get() as conn:`%s",
                self.name,
                rec.id,
                holder,
                _stack_text(rec.taken_at),
            )
            self._apply(plan)

    # ------------------------------------------------------------------ acting on the state
    def _apply(self, plan: Plan[C]) -> None:
        """Do what the state decided: wake, spawn, log, then close (which may switch)."""
        for w in plan.wake:
            self._loop.run_callback(w.waiter.switch, None)
        if plan.handoff:
            self._loop.run_callback(self._handoff)
        for attempt in plan.connect:
            self._spawn(_connector.connect, attempt)
        for rec in plan.ping:
            self._spawn(_connector.ping, rec)
        for rec in plan.leaked:
            self._report_leak(rec)
        for event in plan.events:
            self._on_event(event)
        state = self._state
        if state.waiting or state.open_count < state.min:  # a connect is wanted; when may it run?
            self._maint.wake_by(state.next_connect_at(_monotonic()))
        if plan.close:
            self._close_all(plan.close)

    def _after_put_back(self, todo: Any) -> None:
        """put_back() asked for a wake-up (a Waiter) or the deferred hand-off (HANDOFF)."""
        if todo is HANDOFF:
            self._loop.run_callback(self._handoff)
        else:
            self._loop.run_callback(todo.waiter.switch, None)

    def _handoff(self) -> None:
        """The deferred hand-off, run by the hub once per loop turn: idle ones go to waiters."""
        for w in self._state.handoff(_monotonic()):
            w.waiter.switch(None)  # we are in the hub: switch straight to the waiter

    def _spawn(self, func: Any, arg: Any) -> None:
        g = gevent.spawn(func, self, arg)
        self._busy.add(g)
        g.rawlink(self._busy.discard)

    def _close_all(self, doomed: list[tuple[Conn[C], str]]) -> None:
        """Close connections and report them; if interrupted, a greenlet closes the rest."""
        for i, (rec, reason) in enumerate(doomed):
            try:
                self._close_quietly(rec.conn)
                self._call_on_discard(rec.conn, reason)
            except BaseException:
                gevent.spawn(self._close_all, doomed[i + 1 :])
                raise

    def _close_quietly(self, conn: C) -> None:
        try:
            self._close_connection(conn)
        except Exception:
            self._log.debug("closing a connection failed", exc_info=True)

    def _call_on_discard(self, conn: C, reason: str) -> None:
        try:
            self._on_discard(conn, reason)
        except Exception:
            self._log.exception("_on_discard(%r) raised", reason)

    def _on_event(self, event: str) -> None:
        state = self._state
        if event == "ready":
            for e in self._ready:
                e.set()
        elif event == "drained":
            if self._drained is not None:
                self._drained.set()
        elif event == "failed":
            wait = max(0.0, state.next_attempt_at - _monotonic())
            self._limited_log.log(
                logging.WARNING,
                "connect",
                "pool %r: connect failed (%d in a row; next attempt in %.2fs): %r",
                self.name,
                max(state.failures, state.rejected),
                wait,
                state.last_error,
            )
        elif event == "down":
            self._log.warning(
                "pool %r: backend considered down after %d failed connects: %r",
                self.name,
                max(state.failures, state.rejected),
                state.last_error,
            )
        elif event == "up":
            self._log.info("pool %r: backend is back, a connect succeeded", self.name)
            self._limited_log.reset("connect")

    # ------------------------------------------------------------------ the connector's reports
    def _connect_finished(
        self, attempt: Attempt, conn: C | None, error: BaseException | None
    ) -> None:
        outcome, plan = self._state.connect_done(attempt, conn, error, _monotonic())
        if outcome == "forget" and conn is not None:
            self._forget_connection(conn)
        elif outcome not in ("keep", "failed", "forget") and conn is not None:
            self._close_quietly(conn)
            self._call_on_discard(conn, outcome)
        self._apply(plan)
        self._maint.wake()

    def _connect_abandoned(self, attempt: Attempt, conn: C | None) -> None:
        if conn is not None:
            if attempt.pid == _getpid():
                self._close_quietly(conn)
            else:
                self._forget_connection(conn)
        self._apply(self._state.connect_abandoned(attempt, _monotonic()))
        self._maint.wake()

    def _ping_finished(self, rec: Conn[C], reason: str | None, error: BaseException | None) -> None:
        if isinstance(error, (*self.exc_classes, TimeoutError)):
            self._limited_log.log(
                logging.INFO,
                "keepalive",
                "pool %r: keepalive found connection #%d broken (%r); replacing it",
                self.name,
                rec.id,
                error,
            )
        elif error is not None:  # a bug in _keepalive: say so, with the traceback
            self._log.error(
                "pool %r: _keepalive raised on connection #%d; replacing it",
                self.name,
                rec.id,
                exc_info=error,
            )
        self._apply(self._state.ping_done(rec, _monotonic(), reason))

    def _run_due(self, scheduler: Scheduler) -> float | None:
        """The scheduler's turn: do what is due; say when to look again (None: stop)."""
        self._check_fork()
        if self._state.closed or scheduler is not self._maint:
            return None
        plan, next_at = self._state.due(_monotonic())
        self._apply(plan)
        return next_at

    def _report_leak(self, rec: Conn[C]) -> None:
        holder = rec.holder
        where = "".join(rec.taken_at or ())
        if not where and holder is not None and holder.gr_frame is not None:
            where = "".join(traceback.format_stack(holder.gr_frame))
        self._log.warning(
            "pool %r: connection #%d held by %s for %.1fs (leak_timeout=%ss); taken at:\n%s",
            self.name,
            rec.id,
            greenlet_label(holder),
            _monotonic() - rec.acquired_at,
            self.leak_timeout,
            where,
        )

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
            try:
                self._forget_connection(rec.conn)
            except Exception:
                self._log.debug("forgetting an inherited connection failed", exc_info=True)
        for g in stale:
            g.kill(block=False)  # copies of the parent's greenlets, on the parent's sockets
        self._loop = get_hub().loop
        if self._state.opened and not self._state.closed and not self._maint.started:
            self._maint.start()
            self._apply(self._state.plan_connects(_monotonic()))

    # ------------------------------------------------------------------ messages
    def _state_text(self) -> str:
        s = self._state
        return (
            f"open={s.open_count} idle={len(s.idle)} in_use={len(s.held) + len(s.pinging)} "
            f"connecting={len(s.connecting)} waiting={s.waiting} max={s.max}"
        )

    def _timeout_error(self, timeout: float | None) -> PoolTimeout:
        state = self._state
        state.counters.timeouts += 1
        hint = "raise max_size, hold connections for less time, or pass a larger timeout"
        failures = max(state.failures, state.rejected)
        if failures:
            hint = f"connects are failing ({failures} in a row): is the backend up?"
        return PoolTimeout(
            f"pool {self.name!r}: no connection within {timeout}s ({self._state_text()}); {hint}"
        )

    def _cause(self) -> BaseException | None:
        s = self._state
        return s.last_error if (s.failures or s.rejected) else None

    def _refusal_error(self, why: str | BaseException) -> BaseException:
        """The error for a get() refused by the state ("closed", "down", "exhausted")."""
        if isinstance(why, Marker):
            why = why.why
        if why == "closed":
            return PoolClosed(self._closed_message())
        state = self._state
        if why == "down":
            err: PoolError = PoolUnavailable(
                f"pool {self.name!r}: backend unavailable after "
                f"{max(state.failures, state.rejected)} failed connects ({self._state_text()}); "
                "the pool keeps retrying in the background"
            )
            err.__cause__ = state.last_error
            return err
        return PoolExhausted(
            f"pool {self.name!r}: {state.waiting} greenlets already wait "
            f"(max_waiting={self.max_waiting}); shed load or raise max_waiting "
            f"({self._state_text()})"
        )

    def _closed_message(self) -> str:
        return f"pool {self.name!r} is closed; create a new pool or stop calling get()"


for _opt in OPTIONS:  # the class attributes a subclass may override: defaults from the table
    if _opt.name not in ("min_size", "max_size", "name"):
        setattr(ConnectionPool, _opt.name, _opt.default)


def _stack_text(stack: tuple[str, ...] | None) -> str:
    if not stack:
        return " (set leak_timeout to record where connections are taken)"
    return "; taken at:\n" + "".join(stack)
