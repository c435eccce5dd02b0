"""ConnectionPool: keeps live connections and hands one to a greenlet for a ``with`` block.

The whole state is a handful of fields of :class:`ConnectionPool` (see ``__init__``); the few
methods under "State changes" are the only ones that change it, and none of them switches
greenlets. The I/O (connecting, checking, closing) happens around them, in the caller's greenlet or
in short-lived ones; timed work (refill, keepalive, expiry) is in :mod:`._maintenance`.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

import gevent
from gevent.event import Event
from gevent.hub import get_hub
from greenlet import getcurrent

from . import _fork, _maintenance
from ._backoff import delay as backoff_delay
from ._log import RateLimitedLog, pool_logger
from ._options import (
    check_bool,
    check_exc_classes,
    check_fraction,
    check_int,
    check_name,
    check_seconds,
)
from ._records import Attempt as _Attempt
from ._records import Conn as _Conn
from ._records import Waiter as _Waiter
from ._records import describe as _describe
from .errors import (
    DEFAULT_EXC_CLASSES,
    PoolClosed,
    PoolError,
    PoolExhausted,
    PoolTimeout,
    PoolUnavailable,
)
from .retry import retry
from .stats import ConnectionInfo, Counters, Discarded, PoolDump, PoolStats, WaiterInfo

__all__ = ["DEFAULT_EXC_CLASSES", "ConnectionPool", "retry"]

C = TypeVar("C")
_P = TypeVar("_P", bound="ConnectionPool[Any]")
_UNSET: Any = object()  # "not given": the class attribute of the same name applies
_pool_numbers = itertools.count(1)
_monotonic = time.monotonic
_getpid = os.getpid  # the fallback fork check: forks that skip Python's at-fork hooks
_INF = float("inf")


class _Checkout(Generic[C]):
    """The context manager returned by ``get()``: acquires on enter, releases on exit.

    The common case (an idle connection that needs no check, returned cleanly) is inlined here;
    everything else goes through the pool's slow paths.
    """

    __slots__ = ("_pool", "_rec", "_timeout")

    def __init__(self, pool: ConnectionPool[C], timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._rec: _Conn[C] | None = None

    def __enter__(self) -> C:
        if self._rec is not None:
            raise RuntimeError("this get() context is already entered; call pool.get() again")
        pool = self._pool
        if pool._idle and pool._fast_get and pool._pid == _getpid():
            rec = pool._pop()
            pool._in_use.add(rec)
            now = _monotonic()
            if now < rec.fresh_until:
                rec.holder = getcurrent()
                rec.acquired_at = now
                rec.uses += 1
                pool._counters.acquired += 1
                self._rec = rec
                return rec.conn
            rec = pool._acquire_slow(self._timeout, now, rec)
        else:
            rec = pool._acquire_slow(self._timeout, _monotonic(), None)
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
        if (
            exc_type is None
            and pool._fast_release
            and now < rec.expires_at
            and rec.generation == pool._generation
        ):
            c = pool._counters
            c.use_seconds += now - rec.acquired_at
            c.returned += 1
            rec.holder = None
            rec.last_used = rec.last_ping = now
            fresh = now + pool._check_after
            if rec.suspect:
                fresh = 0.0
            elif fresh > rec.expires_at:
                fresh = rec.expires_at
            rec.fresh_until = fresh
            if pool._waiters:
                pool._give_back(rec)
            else:
                pool._in_use.discard(rec)
                pool._idle.append(rec)
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
    keyword argument, and its default may be changed by a class attribute of the same name.
    """

    #: Seconds between starting connection i and i+1 when filling the pool (0.2.1's name).
    SPAWN_FREQUENCY: float = 0.1

    # Option defaults; a subclass may override any of them. See README.rst's options table.
    exc_classes: tuple[type[BaseException], ...] = DEFAULT_EXC_CLASSES
    keepalive: float | None = None
    min_size: int | None = None
    max_size: int | None = None
    name: str | None = None
    timeout: float | None = None
    max_waiting: int | None = None
    connect_timeout: float | None = 30.0
    reconnect_delay: float | None = None  # None: SPAWN_FREQUENCY
    reconnect_max_delay: float = 30.0
    fail_fast: bool = False
    fail_fast_after: int = 3
    max_lifetime: float | None = None
    lifetime_jitter: float = 0.05
    check_idle_after: float | None = 1.0
    keepalive_jitter: float = 0.1
    max_idle: float | None = 600.0
    lifo: bool = True
    leak_timeout: float | None = None
    max_connecting: int = 2

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
    ) -> None:
        given = dict(locals())
        for key in ("self", "size", "__class__"):
            given.pop(key, None)
        opts = {k: (getattr(type(self), k) if v is _UNSET else v) for k, v in given.items()}
        self._configure(size, opts)  # validates everything before any state or greenlet exists

        # --- The state. Only the methods under "State changes" modify these fields. ---
        self._idle: deque[_Conn[C]] = deque()  # open, not in use; the right end is the warmest
        self._in_use: set[_Conn[C]] = set()  # handed to a caller, or being pinged by keepalive
        self._pinging = 0  # of _in_use, held by keepalive
        self._connecting: dict[_Attempt, None] = {}  # connects in flight (slots reserved)
        self._waiters: OrderedDict[_Waiter[C], None] = OrderedDict()  # oldest first
        self._closed = False
        self._generation = 0  # bumped by invalidate(): older connections are not handed out
        self._failures = 0  # consecutive failed rounds of connects
        self._failed_at = -_INF  # when the last counted failure was booked
        self._last_error: BaseException | None = None  # the last connect error
        self._next_attempt_at = 0.0  # no connect starts before (backoff)
        self._next_fill_at = 0.0  # the next min_size fill connect starts no earlier (staggered)
        self._down = False  # the backend is considered down (fail_fast_after failures)
        self._pid = os.getpid()
        self._ready: list[Event] = []  # wait_ready() callers
        self._drained: Event | None = None  # set when in_use empties after close()
        self._closer: gevent.Greenlet[Any, None] | None = None  # runs close()'s waiting part
        self._counters = Counters()
        # ---

        self._log = pool_logger(self._label)
        self._limited_log = RateLimitedLog(self._log)
        cls = type(self)
        self._hooks_acquire = cls._on_acquire is not ConnectionPool._on_acquire
        self._hooks_release = cls._on_release is not ConnectionPool._on_release
        self._pop = self._idle.pop if self.lifo else self._idle.popleft
        self._check_after = _INF if self.check_idle_after is None else self.check_idle_after
        self._fast_get = self._fast_release = False  # see _update_flags()
        self._update_flags()
        self._maint = _maintenance.Scheduler(self)
        _fork.register(self)
        self._maint.start()

    def _configure(self, size: Any, o: dict[str, Any]) -> None:
        """Validate and set every option; raises before the pool has any state."""
        if size is not None:
            check_int("size", size, 1)
        self.exc_classes = check_exc_classes("exc_classes", o["exc_classes"])
        self.keepalive = check_seconds("keepalive", o["keepalive"], allow_zero=False)
        self._label: str = check_name(o["name"]) or f"pool-{next(_pool_numbers)}"
        self.name = self._label
        self.timeout = check_seconds("timeout", o["timeout"])
        self.max_waiting = check_int("max_waiting", o["max_waiting"], 0, optional=True)
        self.connect_timeout = check_seconds(
            "connect_timeout", o["connect_timeout"], allow_zero=False
        )
        spawn = check_seconds("SPAWN_FREQUENCY", self.SPAWN_FREQUENCY, optional=False)
        reconnect = check_seconds("reconnect_delay", o["reconnect_delay"])
        self._reconnect_delay: float = spawn if reconnect is None else reconnect  # type: ignore[assignment]
        self.reconnect_delay = self._reconnect_delay
        cap = check_seconds("reconnect_max_delay", o["reconnect_max_delay"], optional=False)
        assert cap is not None
        self.reconnect_max_delay = cap
        self.fail_fast = check_bool("fail_fast", o["fail_fast"])
        self.fail_fast_after = check_int("fail_fast_after", o["fail_fast_after"], 1) or 1
        self.max_lifetime = check_seconds("max_lifetime", o["max_lifetime"], allow_zero=False)
        self.lifetime_jitter = check_fraction("lifetime_jitter", o["lifetime_jitter"])
        self.check_idle_after = check_seconds("check_idle_after", o["check_idle_after"])
        self.keepalive_jitter = check_fraction("keepalive_jitter", o["keepalive_jitter"])
        self.max_idle = check_seconds("max_idle", o["max_idle"], allow_zero=False)
        self.lifo = check_bool("lifo", o["lifo"])
        self.leak_timeout = check_seconds("leak_timeout", o["leak_timeout"], allow_zero=False)
        self.max_connecting = check_int("max_connecting", o["max_connecting"], 1) or 1
        self._min, self._max = self._check_sizes(size, o["min_size"], o["max_size"])
        self.min_size, self.max_size = self._min, self._max

    @staticmethod
    def _check_sizes(size: int | None, min_size: Any, max_size: Any) -> tuple[int, int]:
        """``size`` means min_size == max_size == size, unless they are given too."""
        hi = check_int("max_size", max_size, 1, optional=True)
        lo = check_int("min_size", min_size, 0, optional=True)
        if hi is None:
            hi = size if size is not None else lo
        if hi is None:
            raise TypeError("size (or max_size) is required: ConnectionPool(10) keeps 10 open")
        if lo is None:
            lo = size if size is not None and size <= hi else hi
        if lo > hi:
            raise ValueError(f"min_size ({lo}) must not exceed max_size ({hi})")
        return lo, hi

    # ------------------------------------------------------------------ hooks
    def _new_connection(self) -> C:
        """Open and return a new connection; raising, or returning None, is a failed attempt."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement _new_connection() to open a connection"
        )

    def _keepalive(self, conn: C) -> None:
        """Application-level keepalive (a PING); raise one of ``exc_classes`` if it is broken."""
        raise NotImplementedError(
            f"{type(self).__name__} sets keepalive= but does not implement _keepalive(conn)"
        )

    def _check(self, conn: C) -> bool:
        """Checkout check for a connection idle longer than ``check_idle_after``.

        The default costs no round trip: a socket-like connection (with ``fileno()``) that is
        readable while idle has been closed or reset by its peer, or holds bytes nobody asked for,
        and is dead; nothing is read from it. Return False or raise to discard the connection.
        """
        fileno = getattr(conn, "fileno", None)
        if fileno is None:
            return True
        return _maintenance.socket_is_quiet(fileno())

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

    @property
    def size(self) -> int:
        """The most connections the pool keeps (``max_size``); 0.2.1's ``size``."""
        return self._max

    @property
    def closed(self) -> bool:
        """True once close() was called."""
        return self._closed

    def close(self, timeout: float | None = None) -> None:
        """Close the pool: waiters and later get()s get PoolClosed, idle connections close now.

        In-use connections are closed when they come back; with ``timeout``, close() waits that
        long for them, then closes the ones still out. Idempotent.
        """
        timeout = check_seconds("timeout", timeout)
        if not self._closed:
            self._mark_closed()
        # The work that switches greenlets runs in its own greenlet: if this caller is
        # interrupted (a Timeout, a kill), the closing still completes.
        closer = self._closer
        if closer is None or closer.dead:
            self._closer = closer = gevent.spawn(self._finish_close, timeout)
        closer.join()

    def __enter__(self: _P) -> _P:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def resize(self, min_size: int | None = None, max_size: int | None = None) -> None:
        """Change min_size and/or max_size at run time; surplus idle connections close now."""
        lo = check_int("min_size", min_size, 0, optional=True)
        hi = check_int("max_size", max_size, 1, optional=True)
        lo = self._min if lo is None else lo
        hi = self._max if hi is None else hi
        if lo > hi:
            raise ValueError(f"min_size ({lo}) must not exceed max_size ({hi})")
        if self._closed:
            raise PoolClosed(self._closed_message())
        self._min, self._max = lo, hi
        self.min_size, self.max_size = lo, hi
        self._update_flags()
        surplus = []
        while self._idle and self._open_count() > hi:
            surplus.append(self._idle.popleft())
        for rec in surplus:
            self._discard(rec, "idle", in_idle=True)
        self._refill()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until ``min_size`` connections are open (a startup check).

        Raises PoolTimeout, chained to the last connect error, if that takes longer than timeout.
        """
        timeout = check_seconds("timeout", timeout)
        if self._closed:
            raise PoolClosed(self._closed_message())
        if self._is_ready():
            return
        event = Event()
        self._ready.append(event)
        try:
            if not event.wait(timeout):
                raise PoolTimeout(
                    f"pool {self.name!r}: {self._ready_count()} of min_size={self._min} "
                    f"connections open after {timeout}s ({self._state_text()})"
                ) from self._last_error
        finally:
            if event in self._ready:
                self._ready.remove(event)
        if self._closed:
            raise PoolClosed(self._closed_message())

    def invalidate(self) -> None:
        """Replace every connection: idle ones close now, in-use ones when they come back.

        Connects already in flight are discarded on arrival. For failover and credential rotation.
        """
        self._generation += 1
        stale = list(self._idle)
        self._idle.clear()
        for rec in stale:
            self._discard(rec, "invalidated", in_idle=True)
        self._log.info("pool %r invalidated: %d idle connection(s) closed", self.name, len(stale))
        self._refill()

    def stats(self) -> PoolStats:
        """An immutable snapshot of the pool's state and counters, in O(1)."""
        c = self._counters
        return PoolStats(
            name=self._label,
            open=self._open_count(),
            idle=len(self._idle),
            in_use=len(self._in_use),
            connecting=len(self._connecting),
            waiting=len(self._waiters),
            min_size=self._min,
            max_size=self._max,
            available=not self._down,
            closed=self._closed,
            checking=self._pinging,
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
        conns = [_describe(rec, "idle", now) for rec in reversed(self._idle)]
        conns += [
            _describe(rec, "in_use" if rec.holder is not None else "keepalive", now)
            for rec in self._in_use
        ]
        conns += [
            ConnectionInfo(id=0, state="connecting", age=now - a.started_at, idle_for=None, uses=0)
            for a in self._connecting
        ]
        waiters = [WaiterInfo(repr(w.greenlet), now - w.since) for w in self._waiters]
        return PoolDump(self.stats(), tuple(conns), tuple(waiters))

    def __repr__(self) -> str:
        closed = " closed" if self._closed else ""
        return (
            f"<{type(self).__name__} {self.name!r}{closed} open={self._open_count()} "
            f"idle={len(self._idle)} in_use={len(self._in_use)} "
            f"connecting={len(self._connecting)} waiting={len(self._waiters)}>"
        )

    # ------------------------------------------------------------------ get() and release
    def _acquire_slow(self, timeout: float | None, start: float, rec: _Conn[C] | None) -> _Conn[C]:
        """Wait, check and replace under one deadline (a single gevent Timeout, never re-armed)."""
        if self._pid != _getpid():
            self._after_fork()
        timer = None if timeout is None else _start_timer(timeout)
        again = False  # a greenlet whose connection failed its check keeps its place in line
        try:
            while True:
                if rec is None:
                    rec = self._take_or_wait(timeout, start, again)
                now = _monotonic()
                fresh = now < rec.fresh_until and rec.generation == self._generation
                if (fresh and not self._hooks_acquire) or self._vet(rec):
                    self._hand_out(rec, now, start)
                    return rec
                rec, again = None, True
        except gevent.Timeout as t:
            if timer is None or t is not timer:
                raise
            raise self._timeout_error(timeout) from self._cause()
        finally:
            if timer is not None:
                timer.close()

    def _take_or_wait(self, timeout: float | None, start: float, first: bool) -> _Conn[C]:
        """An idle connection, or one handed over by release/connect after a FIFO wait."""
        if self._closed:
            raise PoolClosed(self._closed_message())
        if self._idle:
            rec = self._idle.pop() if self.lifo else self._idle.popleft()
            self._in_use.add(rec)
            return rec
        if self._down and self.fail_fast:
            self._counters.unavailable += 1
            raise PoolUnavailable(self._unavailable_message()) from self._last_error
        if timeout == 0:
            self._refill()
            raise self._timeout_error(0.0) from self._cause()
        if self.max_waiting is not None and len(self._waiters) >= self.max_waiting:
            self._counters.exhausted += 1
            raise PoolExhausted(
                f"pool {self.name!r}: {len(self._waiters)} greenlets already wait "
                f"(max_waiting={self.max_waiting}); shed load or raise max_waiting "
                f"({self._state_text()})"
            )
        return self._wait(start, first)

    def _wait(self, start: float, first: bool) -> _Conn[C]:
        """Queue this greenlet (at the head if ``first``); if interrupted, it leaves no trace."""
        w: _Waiter[C] = _Waiter(start)
        self._waiters[w] = None
        if first:
            self._waiters.move_to_end(w, last=False)
        if len(self._idle) + len(self._in_use) + len(self._connecting) < self._max:
            self._refill()
        try:
            w.waiter.get()
        except BaseException:
            self._forget_waiter(w)
            raise
        if w.error is not None:
            raise w.error
        assert w.rec is not None
        return w.rec

    def _vet(self, rec: _Conn[C]) -> bool:
        """Decide whether ``rec`` may be handed out, discarding it if not. May do I/O."""
        now = _monotonic()
        reason = None
        if rec.generation != self._generation:
            reason = "invalidated"
        elif now >= rec.expires_at and rec.uses:  # a brand-new one is always used once
            reason = "lifetime"
        else:
            try:
                stale = now >= rec.fresh_until and not self._passes_check(rec, now)
                refused = not stale and self._hooks_acquire and self._on_acquire(rec.conn) is False
                if stale or refused:
                    reason = "check"
            except Exception:
                self._log.debug("checkout check failed on connection #%d", rec.id, exc_info=True)
                reason = "check"
            except BaseException:
                self._discard(rec, "interrupted")
                raise
        if reason is None:
            return True
        self._discard(rec, reason)
        return False

    def _passes_check(self, rec: _Conn[C], now: float) -> bool:
        """Run ``_check`` if the connection sat idle too long or is suspect."""
        limit = self.check_idle_after
        if not rec.suspect and (limit is None or now - rec.last_ping <= limit):
            return True
        ok = self._check(rec.conn) is not False
        if ok:
            rec.suspect = False
            rec.last_ping = _monotonic()
        return ok

    def _release(self, rec: _Conn[C], exc: BaseException | None, now: float) -> None:
        """Take a connection back from a ``with`` block, or discard it if it may be broken."""
        self._counters.use_seconds += now - rec.acquired_at
        rec.holder = None
        if rec not in self._in_use:  # forgotten after a fork, or closed by close(timeout)
            return
        if rec.leak_reported:
            rec.leak_reported = False
            self._log.info(
                "pool %r: connection #%d reported as leaked came back after %.1fs",
                self.name,
                rec.id,
                now - rec.acquired_at,
            )
        reason = None if exc is None else self._exit_reason(exc, rec)
        if reason is None and self._hooks_release:
            reason = self._run_on_release(rec)
        if reason is None:
            reason = self._return_reason(rec, now)
        if reason is not None:
            self._discard(rec, reason)
            return
        rec.last_used = rec.last_ping = now
        rec.fresh_until = 0.0 if rec.suspect else min(now + self._check_after, rec.expires_at)
        self._counters.returned += 1
        self._give_back(rec)

    def _exit_reason(self, exc: BaseException, rec: _Conn[C]) -> str | None:
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
        self._mark_suspects()
        return "error"

    def _run_on_release(self, rec: _Conn[C]) -> str | None:
        try:
            ok = self._on_release(rec.conn)
        except Exception:
            self._log.warning("_on_release failed; discarding the connection", exc_info=True)
            return "release"
        except BaseException:
            self._discard(rec, "interrupted")
            raise
        return "release" if ok is False else None

    def _return_reason(self, rec: _Conn[C], now: float) -> str | None:
        """Why a healthy connection coming back is not kept, if it is not."""
        if self._closed:
            return "closed"
        if rec.generation != self._generation:
            return "invalidated"
        if now >= rec.expires_at:
            return "lifetime"
        if self._open_count() > self._max:
            return "idle"
        self._update_flags()  # the pool is back within max_size after a resize()
        return None

    def _reclaim_leaked(self, rec: _Conn[C]) -> None:
        """A get() context was garbage-collected while holding ``rec``: report, then discard."""
        get_hub().loop.run_callback(self._discard_leaked, rec)

    def _discard_leaked(self, rec: _Conn[C]) -> None:
        if rec in self._in_use:
            self._log.warning(
                "pool %r: connection #%d was taken by %s and its get() context was "
                "garbage-collected without being exited; use `with pool.get() as conn:`%s",
                self.name,
                rec.id,
                rec.holder,
                _stack_text(rec.taken_at),
            )
            rec.holder = None
            self._discard(rec, "leaked")

    # ------------------------------------------------------------------ State changes
    # No greenlet switch happens in these: each runs as one atomic step under gevent.

    def _update_flags(self) -> None:
        """Recompute whether get() and release may take their inlined common path."""
        plain = not self._closed and self._pid == _getpid() and self.leak_timeout is None
        self._fast_get = plain and not self._hooks_acquire
        self._fast_release = plain and not self._hooks_release and self._open_count() <= self._max

    def _open_count(self) -> int:
        return len(self._idle) + len(self._in_use) + len(self._connecting)

    def _hand_out(self, rec: _Conn[C], now: float, start: float) -> None:
        """``rec`` (already in _in_use) now belongs to the current greenlet."""
        rec.holder = getcurrent()
        rec.acquired_at = now
        rec.uses += 1
        c = self._counters
        c.acquired += 1
        if start:
            waited = now - start
            c.wait_seconds += waited
            if waited > c.wait_max:
                c.wait_max = waited
        if self.leak_timeout is not None:
            rec.leak_reported = False
            rec.taken_at = tuple(traceback.format_stack(limit=12)[:-3])

    def _give_back(self, rec: _Conn[C]) -> None:
        """``rec`` (in _in_use, healthy) goes to the oldest waiter, else to the idle deque."""
        if self._waiters:
            w, _ = self._waiters.popitem(last=False)
            w.rec = rec
            get_hub().loop.run_callback(w.waiter.switch, None)
            return
        self._in_use.discard(rec)
        self._idle.append(rec)

    def _forget_waiter(self, w: _Waiter[C]) -> None:
        """A waiter was interrupted: pass on what it was given, or leave the queue."""
        rec, w.rec = w.rec, None
        if rec is not None:
            self._give_back(rec)
        else:
            self._waiters.pop(w, None)

    def _fail_waiters(self, error_factory: Callable[[], BaseException]) -> None:
        while self._waiters:
            w, _ = self._waiters.popitem(last=False)
            w.error = error_factory()
            get_hub().loop.run_callback(w.waiter.switch, None)

    def _detach(self, rec: _Conn[C], reason: str, in_idle: bool) -> None:
        """Forget ``rec`` (the caller took it out of the idle deque already if ``in_idle``)."""
        if not in_idle:
            self._in_use.discard(rec)
        self._counters.discarded[reason] += 1

    def _pull_idle(self, recs: list[_Conn[C]]) -> None:
        """Take ``recs`` out of the idle deque (background work; O(idle))."""
        if not recs:
            return
        if len(recs) == 1:
            self._idle.remove(recs[0])
            return
        gone = set(recs)
        kept = [rec for rec in self._idle if rec not in gone]
        self._idle.clear()  # in place: self._pop is bound to this deque
        self._idle.extend(kept)

    def _take_for_keepalive(self, recs: list[_Conn[C]]) -> None:
        """``recs`` leave the idle deque to be pinged: not idle, nor handed out, meanwhile."""
        self._pull_idle(recs)
        self._in_use.update(recs)
        self._pinging += len(recs)

    def _keepalive_done(self, rec: _Conn[C], reason: str | None) -> None:
        """The ping of ``rec`` ended; ``reason`` says why to discard it (None: it is fine)."""
        if rec not in self._in_use:  # forgotten after a fork
            return
        self._pinging -= 1
        now = _monotonic()
        if self._closed:
            reason = "closed"
        elif reason is None:
            reason = self._return_reason(rec, now)
        if reason is not None:
            self._discard(rec, reason)
            return
        rec.suspect = False
        rec.last_ping = now
        limit = self.check_idle_after
        rec.fresh_until = min(now + (limit if limit is not None else _INF), rec.expires_at)
        if self._waiters:
            self._give_back(rec)
            return
        self._in_use.discard(rec)
        if self.lifo:  # back at the cold end: a ping does not make a surplus connection warm
            self._idle.appendleft(rec)
        else:
            self._idle.append(rec)

    def _mark_suspects(self) -> None:
        """A disconnect: check every connection open now before its next hand-out.

        A server restart breaks them all at once; checking them costs callers one error, not
        one per pooled connection.
        """
        for rec in self._idle:
            rec.suspect = True
            rec.fresh_until = 0.0
        for rec in self._in_use:
            rec.suspect = True

    def _plan_connects(self, now: float) -> int:
        """How many connects to start now: for waiters at once, for min_size one at a time."""
        if self._closed or now < self._next_attempt_at:
            return 0
        room = self._max - self._open_count()
        if room <= 0:
            return 0
        inflight = len(self._connecting)
        n = min(len(self._waiters) - inflight, self.max_connecting - inflight)
        if self._min - self._open_count() > 0 and now >= self._next_fill_at:
            n = max(n, 1)
            self._next_fill_at = now + self.SPAWN_FREQUENCY
        return max(0, min(n, room))

    def _attempt_done(self, attempt: _Attempt, conn: C | None, error: BaseException | None) -> str:
        """Book the end of a connect; returns what to do with ``conn``: keep, discard or forget."""
        self._connecting.pop(attempt, None)
        if attempt.pid != _getpid():
            return "forget"
        if error is not None:
            if attempt.started_at >= self._failed_at:  # attempts of one round count once
                self._failures += 1
                self._failed_at = _monotonic()
            if error.__traceback__ is not None:  # keep where it failed, not the frames' locals
                traceback.clear_frames(error.__traceback__)
            self._last_error = error
            self._counters.connect_failures += 1
            wait = backoff_delay(self._failures, self._reconnect_delay, self.reconnect_max_delay)
            self._next_attempt_at = _monotonic() + wait
            return "failed"
        self._failures = 0
        if self._closed:
            return "closed"
        if attempt.generation != self._generation:
            return "invalidated"
        if self._open_count() >= self._max:  # resize() shrank the pool meanwhile
            return "idle"
        return "keep"

    # ------------------------------------------------------------------ connecting
    def _refill(self) -> None:
        """Start the connects the pool needs now (waiters first, then up to min_size)."""
        n = self._plan_connects(_monotonic())
        for _ in range(n):
            attempt = _Attempt(self._generation, _monotonic())
            self._connecting[attempt] = None
            attempt.greenlet = gevent.spawn(self._connect, attempt)

    def _connect(self, attempt: _Attempt) -> None:
        """One connect attempt, in its own short-lived greenlet."""
        conn: C | None = None
        error: BaseException | None = None
        timer = _start_timer(self.connect_timeout)
        try:
            conn = self._new_connection()
            if conn is None:
                raise PoolError("_new_connection() returned None")
            if attempt.pid != _getpid():  # the process forked while this connect was in flight
                self._abandon(attempt, conn)
                return
            self._on_connect(conn)
        except gevent.Timeout as t:
            if t is not timer:
                self._abandon(attempt, conn)
                raise
            error = TimeoutError(f"connect timed out after {self.connect_timeout}s")
        except Exception as e:
            error = e
        except BaseException:  # killed by close() or a fork: the attempt just ends
            self._abandon(attempt, conn)
            raise
        finally:
            timer.close()
        if error is not None and conn is not None:
            self._close_quietly(conn)  # _on_connect failed on an open connection
            conn = None
        self._connected(attempt, conn, error)

    def _connected(self, attempt: _Attempt, conn: C | None, error: BaseException | None) -> None:
        now = _monotonic()
        attempt.greenlet = None  # no cycle between the record and its finished greenlet
        outcome = self._attempt_done(attempt, conn, error)
        if outcome == "failed":
            self._connect_failed(error)
        elif outcome == "forget":
            if conn is not None:
                self._forget_connection(conn)
        elif outcome != "keep":
            assert conn is not None
            self._counters.created += 1
            self._counters.discarded[outcome] += 1
            self._close_quietly(conn)
            self._call_on_discard(conn, outcome)
        else:
            assert conn is not None
            self._add_new(conn, now, attempt.started_at)
        self._refill()
        self._maint.wake()

    def _add_new(self, conn: C, now: float, started: float) -> None:
        jitter = self.lifetime_jitter
        expires = _INF
        if self.max_lifetime is not None:
            expires = now + self.max_lifetime * (1.0 - jitter * random.random())
        rec: _Conn[C] = _Conn(conn, now, expires, self._generation)
        limit = self.check_idle_after
        rec.fresh_until = min(now + (limit if limit is not None else _INF), expires)
        if self.keepalive is not None:
            rec.keepalive_every = self.keepalive * (1.0 - self.keepalive_jitter * random.random())
        c = self._counters
        c.created += 1
        c.connect_seconds += now - started
        self._in_use.add(rec)
        self._give_back(rec)
        if self._down:
            self._down = False
            self._log.info("pool %r: backend is back, a connect succeeded", self.name)
        self._limited_log.reset("connect")
        if self._ready and self._is_ready():
            for event in self._ready:
                event.set()

    def _connect_failed(self, error: BaseException | None) -> None:
        self._limited_log.log(
            logging.WARNING,
            "connect",
            "pool %r: connect failed (%d in a row; next attempt in %.2fs): %r",
            self.name,
            self._failures,
            max(0.0, self._next_attempt_at - _monotonic()),
            error,
        )
        if self._failures >= self.fail_fast_after and not self._down and not self._idle:
            self._down = True
            self._log.warning(
                "pool %r: backend considered down after %d failed connects: %r",
                self.name,
                self._failures,
                error,
            )
            if self.fail_fast:
                self._counters.unavailable += len(self._waiters)
                self._fail_waiters(self._unavailable_error)

    def _abandon(self, attempt: _Attempt, conn: C | None) -> None:
        """A connect attempt died of an interrupt: free its slot and plan its replacement."""
        self._connecting.pop(attempt, None)
        attempt.greenlet = None
        if conn is not None:
            if attempt.pid == _getpid():
                self._close_quietly(conn)
            else:
                self._forget_connection(conn)
        if not self._closed and attempt.pid == _getpid():
            self._refill()
            self._maint.wake()

    # ------------------------------------------------------------------ discarding, closing
    def _discard(self, rec: _Conn[C], reason: str, *, in_idle: bool = False) -> None:
        """Close ``rec`` for ``reason`` and start its replacement."""
        self._detach(rec, reason, in_idle)
        self._close_quietly(rec.conn)
        self._call_on_discard(rec.conn, reason)
        if self._drained is not None and not self._in_use:
            self._drained.set()
        if not self._fast_release:
            self._update_flags()
        self._refill()
        if not self._closed:
            self._maint.wake()

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

    def _mark_closed(self) -> None:
        """The part of close() that cannot switch: no new get(), waiters get PoolClosed."""
        self._closed = True
        self._update_flags()
        self._fail_waiters(lambda: PoolClosed(self._closed_message()))
        for event in self._ready:
            event.set()
        _fork.unregister(self)
        self._log.debug("pool %r closed", self.name)

    def _finish_close(self, timeout: float | None) -> None:
        """Close idle connections, stop background greenlets, wait for in-use ones (timeout)."""
        while self._idle:  # one at a time: if interrupted, the rest stay for the next close()
            self._discard(self._idle.popleft(), "closed", in_idle=True)
        me = getcurrent()
        busy = [a.greenlet for a in self._connecting if a.greenlet is not None]
        busy += self._maint.stop()
        busy = [g for g in busy if g is not me and not g.dead]
        if busy:
            gevent.killall(busy, block=True)
        self._connecting.clear()  # attempts killed before they started never book their end
        if timeout is not None and self._in_use:
            self._wait_drained(timeout)

    def _wait_drained(self, timeout: float) -> None:
        self._drained = Event()
        if self._in_use and not self._drained.wait(timeout):
            left = list(self._in_use)
            self._log.warning(
                "pool %r: %d connection(s) still in use %.3gs after close(); closing them",
                self.name,
                len(left),
                timeout,
            )
            for rec in left:
                self._discard(rec, "closed")

    # ------------------------------------------------------------------ fork
    def _after_fork(self) -> None:
        """In a forked child: forget the parent's connections, restart maintenance, refill."""
        pid = _getpid()
        if self._pid == pid:
            return
        self._pid = pid
        stale = [a.greenlet for a in self._connecting if a.greenlet is not None]
        stale += self._maint.pingers
        for g in stale:  # copies of the parent's greenlets, on the parent's sockets
            g.kill(block=False)
        self._generation += 1  # records of the parent's connections no longer match
        self._update_flags()
        inherited = [rec.conn for rec in self._idle] + [rec.conn for rec in self._in_use]
        self._idle.clear()
        self._in_use.clear()
        self._pinging = 0
        self._connecting.clear()
        self._failures, self._down, self._next_attempt_at, self._next_fill_at = 0, False, 0.0, 0.0
        for conn in inherited:
            try:
                self._forget_connection(conn)
            except Exception:
                self._log.debug("forgetting an inherited connection failed", exc_info=True)
        if not self._closed:
            self._maint = _maintenance.Scheduler(self)
            self._maint.start()
            self._refill()

    # ------------------------------------------------------------------ messages
    def _state_text(self) -> str:
        return (
            f"open={self._open_count()} idle={len(self._idle)} in_use={len(self._in_use)} "
            f"connecting={len(self._connecting)} waiting={len(self._waiters)} max={self._max}"
        )

    def _timeout_error(self, timeout: float | None) -> PoolTimeout:
        self._counters.timeouts += 1
        hint = "raise max_size, hold connections for less time, or pass a larger timeout"
        if self._failures:
            hint = f"connects are failing ({self._failures} in a row): is the backend up?"
        return PoolTimeout(
            f"pool {self.name!r}: no connection within {timeout}s ({self._state_text()}); {hint}"
        )

    def _cause(self) -> BaseException | None:
        return self._last_error if self._failures else None

    def _unavailable_message(self) -> str:
        return (
            f"pool {self.name!r}: backend unavailable after {self._failures} failed connects "
            f"({self._state_text()}); the pool keeps retrying in the background"
        )

    def _unavailable_error(self) -> BaseException:
        err = PoolUnavailable(self._unavailable_message())
        err.__cause__ = self._last_error
        return err

    def _closed_message(self) -> str:
        return f"pool {self.name!r} is closed; create a new pool or stop calling get()"

    def _is_ready(self) -> bool:
        return self._ready_count() >= self._min

    def _ready_count(self) -> int:
        return len(self._idle) + len(self._in_use)


def _start_timer(seconds: float | None) -> gevent.Timeout:
    """A started gevent Timeout; with None it never fires (and costs no timer)."""
    timer = gevent.Timeout(seconds)
    timer.start()
    return timer


def _stack_text(stack: tuple[str, ...] | None) -> str:
    if not stack:
        return " (set leak_timeout to record where connections are taken)"
    return "; taken at:\n" + "".join(stack)
