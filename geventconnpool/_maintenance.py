"""Background work of a pool: one scheduler greenlet running small periodic tasks.

Each task looks at the pool, acts on what is due (spawning a short-lived greenlet for anything
that does I/O) and says when it next needs to run. The scheduler holds only a weak reference to
its pool and ends when the pool is closed or garbage-collected.
"""

from __future__ import annotations

import logging
import select
import time
import traceback
import weakref
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event
from gevent.monkey import get_original
from greenlet import getcurrent

if TYPE_CHECKING:
    from ._records import Conn as _Conn
    from .pool import ConnectionPool

_INF = float("inf")
_MAX_SLEEP = 1.0  # wake at least this often, to notice changes nobody signalled
_MIN_SLEEP = 0.005
_poll = get_original("select", "poll")  # the real poll: a zero-timeout check must not switch
_POLL_MASK = select.POLLIN | select.POLLPRI
_log = logging.getLogger("geventconnpool")


def socket_is_quiet(fd: int) -> bool:
    """True if descriptor ``fd`` has nothing to read and no error: an idle, healthy socket."""
    if not isinstance(fd, int) or fd < 0:
        return False
    poller = _poll()
    poller.register(fd, _POLL_MASK)
    return not poller.poll(0)


class Scheduler:
    """Runs a pool's periodic tasks in one greenlet; ``wake()`` makes it look again now."""

    def __init__(self, pool: ConnectionPool[Any]) -> None:
        self._ref = weakref.ref(pool)
        self._event = Event()
        self._greenlet: gevent.Greenlet[Any, None] | None = None
        self.pingers: set[gevent.Greenlet[Any, None]] = set()

    def start(self) -> None:
        self._greenlet = gevent.spawn(_run, self._ref, self._event, self)

    def wake(self) -> None:
        if not self._event.is_set():
            self._event.set()

    def stop(self) -> list[gevent.Greenlet[Any, None]]:
        """Stop the scheduler; return the keepalives in flight, for the caller to kill."""
        if self._greenlet is not None and self._greenlet is not getcurrent():
            self._greenlet.kill(block=False)
        return list(self.pingers)


def _run(ref: weakref.ref[ConnectionPool[Any]], event: Event, sched: Scheduler) -> None:
    while True:
        pool = ref()
        if pool is None or pool.closed or pool._maint is not sched:
            return
        event.clear()
        try:
            due = run_tasks(pool, sched)
        except Exception:
            _log.exception("pool %r: maintenance task failed; going on", pool.name)
            due = _MAX_SLEEP
        del pool  # sleep without keeping the pool alive
        event.wait(min(max(due, _MIN_SLEEP), _MAX_SLEEP))


def run_tasks(pool: ConnectionPool[Any], sched: Scheduler) -> float:
    """Run every task that is due; return the seconds until one is due again."""
    now = time.monotonic()
    due = min(
        _expire(pool, now),
        _reap_idle(pool, now),
        _keepalive(pool, now, sched),
        _report_leaks(pool, now),
        _refill(pool, now),
    )
    return due - time.monotonic()


def _expire(pool: ConnectionPool[Any], now: float) -> float:
    """Close idle connections past their max_lifetime (in-use ones close on return)."""
    if pool.max_lifetime is None:
        return _INF
    expired = [rec for rec in pool._idle if rec.expires_at <= now]
    if expired:
        pool._pull_idle(expired)
        for rec in expired:
            pool._discard(rec, "lifetime", in_idle=True)
    return min((rec.expires_at for rec in pool._idle), default=_INF)


def _reap_idle(pool: ConnectionPool[Any], now: float) -> float:
    """Close connections above min_size that sat idle for max_idle seconds, coldest first."""
    max_idle = pool.max_idle
    if max_idle is None:
        return _INF
    surplus = pool._open_count() - pool._min
    stale: list[_Conn[Any]] = []
    for rec in pool._idle:  # the left end is the coldest
        if len(stale) >= surplus or now - rec.last_used < max_idle:
            break
        stale.append(rec)
    if stale:
        pool._pull_idle(stale)
        for rec in stale:
            pool._discard(rec, "idle", in_idle=True)
    if pool._open_count() <= pool._min:
        return _INF
    return min((rec.last_used + max_idle for rec in pool._idle), default=_INF)


def _keepalive(pool: ConnectionPool[Any], now: float, sched: Scheduler) -> float:
    """Ping idle connections that sat idle about ``keepalive`` seconds, one greenlet each.

    One idle connection is always left for callers when others are due, so that a keepalive
    does not make a caller wait; it gets its turn once a pinged one is back.
    """
    if pool.keepalive is None:
        return _INF
    due = [
        rec for rec in pool._idle if max(rec.last_used, rec.last_ping) + rec.keepalive_every <= now
    ]
    if due and len(due) == len(pool._idle) and len(due) > 1:
        due.pop()  # the warmest stays for callers
    pool._take_for_keepalive(due)
    for rec in due:
        pinger = gevent.spawn(_ping, pool, rec)
        sched.pingers.add(pinger)
        pinger.link(sched.pingers.discard)
    return min(
        (max(rec.last_used, rec.last_ping) + rec.keepalive_every for rec in pool._idle),
        default=now + pool.keepalive,
    )


def _ping(pool: ConnectionPool[Any], rec: _Conn[Any]) -> None:
    """Run ``_keepalive`` on one connection, bounded by ``connect_timeout``."""
    reason: str | None = None
    timer = gevent.Timeout(pool.connect_timeout)
    timer.start()
    try:
        pool._keepalive(rec.conn)
    except gevent.Timeout as t:
        if t is not timer:
            pool._keepalive_done(rec, "interrupted")
            raise
        pool._log.info("keepalive timed out on connection #%d; replacing it", rec.id)
        reason = "keepalive"
    except pool.exc_classes as e:
        pool._log.info("keepalive found connection #%d broken (%r); replacing it", rec.id, e)
        reason = "keepalive"
    except Exception:
        pool._log.exception("keepalive raised on connection #%d; replacing it", rec.id)
        reason = "keepalive"
    except BaseException:
        pool._keepalive_done(rec, "interrupted")
        raise
    finally:
        timer.close()
    pool._keepalive_done(rec, reason)


def _report_leaks(pool: ConnectionPool[Any], now: float) -> float:
    """Warn once about each connection held longer than ``leak_timeout``."""
    limit = pool.leak_timeout
    if limit is None:
        return _INF
    next_due = _INF
    for rec in pool._in_use:
        if rec.holder is None or rec.leak_reported:
            continue
        if now - rec.acquired_at >= limit:
            rec.leak_reported = True
            where = "".join(rec.taken_at or ())
            pool._log.warning(
                "pool %r: connection #%d held by %s for %.1fs (leak_timeout=%ss); taken at:\n%s",
                pool.name,
                rec.id,
                rec.holder,
                now - rec.acquired_at,
                limit,
                where or "".join(traceback.format_stack(rec.holder.gr_frame)),
            )
        else:
            next_due = min(next_due, rec.acquired_at + limit)
    return next_due


def _refill(pool: ConnectionPool[Any], now: float) -> float:
    """Start the connects the pool needs; say when backoff or the fill stagger next allows one."""
    pool._refill()
    wanted = pool._open_count() < pool._min or len(pool._waiters) > len(pool._connecting)
    if not wanted or pool._open_count() >= pool._max:
        return _INF
    return max(pool._next_attempt_at, pool._next_fill_at, now + _MIN_SLEEP)
