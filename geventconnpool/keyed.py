"""Keyed pools: :class:`PoolMap`, one pool per key (a host, a tenant's database), made on first use.

::

    pools = PoolMap(lambda host: TcpPool(host, 80, max_size=4), max_total=100, max_pools=1000)
    with pools.get("example.org", timeout=2) as sock:
        ...

Each key's pool caps its own connections (its ``max_size``); ``max_total`` caps them all
together. The cap is kept through the pools' documented hooks: every pool the factory makes has
its ``_new_connection`` and ``_close_connection`` wrapped so that opening a socket takes a token
from the map and closing it gives the token back. A connect that finds no token waits for one
(inside the pool's connect attempt, so a caller's ``get(key, timeout=...)`` waits under its own
deadline and raises ``PoolTimeout`` as usual), while the map closes idle connections of other
keys to make room: a key never starves because others hold *idle* connections.

Pools unused for ``max_pool_idle`` seconds, and the least recently used ones beyond
``max_pools``, are closed and forgotten. A pool evicted while one of its connections is out is
closed the way ``close()`` always closes: the holder keeps using its connection, which is closed
when it comes back.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import gevent
from gevent.event import Event

from ._multi import combine_stats, counters_only, override_hook
from ._options import check_int, check_name, check_seconds
from .errors import PoolClosed, PoolExhausted
from .pool import ConnectionPool
from .stats import PoolStats

__all__ = ["PoolMap"]

K = TypeVar("K", bound=Hashable)
C = TypeVar("C")

_UNSET: Any = object()
_numbers = itertools.count(1)
_monotonic = time.monotonic
_ROOM_POLL = 0.05  # seconds between looks for idle connections while connects wait for room


class _Ledger:
    """The tokens one pool holds: one per socket it is opening or has open."""

    __slots__ = ("conns", "held", "waiting")

    def __init__(self) -> None:
        self.held = 0  # tokens held by this pool's connects and connections
        self.conns: set[int] = set()  # id() of the connections that hold a token
        self.waiting = 0  # this pool's connects waiting for a token


class _Entry(Generic[K, C]):
    """One key's pool and what the map knows about its use."""

    __slots__ = ("busy", "key", "last_used", "ledger", "pool", "waiting")

    def __init__(self, key: K, pool: ConnectionPool[C], ledger: _Ledger) -> None:
        self.key = key
        self.pool = pool
        self.ledger = ledger
        self.busy = 0  # callers inside pools.get(key): waiting for a connection or holding one
        self.waiting = 0  # of busy, those still waiting
        self.last_used = _monotonic()


class _TokenWaiter:
    """A connect attempt waiting for room under ``max_total``."""

    __slots__ = ("error", "event", "granted", "ledger")

    def __init__(self, ledger: _Ledger) -> None:
        self.ledger = ledger
        self.event = Event()
        self.granted = False
        self.error: BaseException | None = None


class _KeyedCheckout(Generic[K, C]):
    """The context manager returned by :meth:`PoolMap.get`."""

    __slots__ = ("_entry", "_inner", "_key", "_map", "_timeout")

    def __init__(self, pools: PoolMap[K, C], key: K, timeout: float | None) -> None:
        self._map = pools
        self._key = key
        self._timeout = timeout
        self._entry: _Entry[K, C] | None = None
        self._inner: Any = None

    def __enter__(self) -> C:
        if self._entry is not None:
            raise RuntimeError("this get() context is already entered; call pools.get() again")
        pools = self._map
        entry = pools._enter(self._key)
        try:
            pool = entry.pool
            inner = pool.get() if self._timeout is _UNSET else pool.get(self._timeout)
            counted = pools._check_room(entry)
            try:
                conn = inner.__enter__()
            finally:
                pools._room_waiting -= counted
        except BaseException:
            entry.waiting -= 1
            pools._leave(entry)
            raise
        entry.waiting -= 1
        self._entry, self._inner = entry, inner
        return conn

    def __exit__(self, *exc_info: Any) -> None:
        entry, inner = self._entry, self._inner
        if entry is None:
            return
        self._entry = self._inner = None
        try:
            inner.__exit__(*exc_info)
        finally:
            self._map._leave(entry)

    def __del__(self) -> None:
        entry = self._entry
        if entry is not None:  # entered, never exited, now garbage (the pool reclaims the
            self._entry = None  # connection itself): the map forgets the caller too
            gevent.get_hub().loop.run_callback(self._map._leave, entry)


class PoolMap(Generic[K, C]):
    """One pool per key, made on first use by ``factory(key)``; caps per key and in total.

    ``max_total``: the most connections open (or being opened) across all keys; ``None`` for no
    cap. ``max_total_waiting``: when that many callers already wait for room under
    ``max_total``, ``get()`` raises :class:`PoolExhausted` at once (``0``: never wait for room).
    ``max_pools``: the most pools kept; the least recently used beyond it is closed.
    ``max_pool_idle``: seconds a key may go unused before its pool is closed (``None``: never).
    """

    def __init__(
        self,
        factory: Callable[[K], ConnectionPool[C]],
        *,
        max_total: int | None = None,
        max_total_waiting: int | None = None,
        max_pools: int | None = None,
        max_pool_idle: float | None = 300.0,
        name: str | None = None,
    ) -> None:
        if not callable(factory):
            raise TypeError(f"factory must be callable (key -> pool), not {factory!r}")
        self._max_total = check_int("max_total", max_total, 1, optional=True)
        self._max_total_waiting = check_int(
            "max_total_waiting", max_total_waiting, 0, optional=True
        )
        if self._max_total_waiting is not None and self._max_total is None:
            raise ValueError("max_total_waiting needs max_total (the cap the callers wait for)")
        self._max_pools = check_int("max_pools", max_pools, 1, optional=True)
        self._max_pool_idle = check_seconds("max_pool_idle", max_pool_idle, allow_zero=False)
        self.name: str = check_name(name) or f"poolmap-{next(_numbers)}"
        self._factory = factory

        # --- The state (changed without switching greenlets, except where noted) ---
        self._entries: OrderedDict[K, _Entry[K, C]] = OrderedDict()  # least recently used first
        self._retiring: dict[_Ledger, _Entry[K, C]] = {}  # closed, connections still out
        self._free = self._max_total or 0  # tokens nobody holds (with max_total)
        self._token_waiters: deque[_TokenWaiter] = deque()  # connects waiting for room, FIFO
        self._room_waiting = 0  # callers in get() that found the total cap reached
        self._exhausted = 0  # get()s refused by max_total_waiting
        self._evicted = 0  # pools closed by max_pools, max_pool_idle or to make room
        self._gone = combine_stats(self.name, [])  # counters of pools closed and dropped
        self._closed = False
        self._room_maker: gevent.Greenlet[Any, None] | None = None
        self._room_hint = Event()  # wakes the room maker: a connection may have turned idle
        self._reaper: gevent.Greenlet[Any, None] | None = None
        if self._max_pool_idle is not None:
            self._reaper = gevent.spawn(_reap_loop, weakref.ref(self), self._max_pool_idle)

    # ------------------------------------------------------------------ public API
    def get(self, key: K, timeout: float | None = _UNSET) -> _KeyedCheckout[K, C]:
        """``with pools.get(key) as conn:``; ``timeout`` as in the pool's ``get()``.

        Raises ``PoolTimeout`` (also when the total cap kept it waiting past its deadline),
        ``PoolExhausted`` (``max_total_waiting``), ``PoolUnavailable`` or ``PoolClosed``.
        """
        if timeout is not _UNSET and timeout is not None:
            timeout = check_seconds("timeout", timeout)
        return _KeyedCheckout(self, key, timeout)

    def pool(self, key: K) -> ConnectionPool[C]:
        """The live pool of ``key`` (made now if needed): for ``wait_ready()``, ``dump()``...

        Take connections with :meth:`get`, not from this pool directly, or eviction cannot see
        them.
        """
        entry = self._enter(key)
        entry.waiting -= 1
        self._leave(entry)
        return entry.pool

    def stats(self, key: K = _UNSET) -> PoolStats:
        """The stats of ``key``'s live pool, or (no argument) of all pools combined.

        The combined view sums every pool's numbers, including pools already closed (their
        counters are kept), so its counters never go backwards.
        """
        if key is not _UNSET:
            entry = self._entries.get(key)
            if entry is None:
                raise KeyError(f"{self.name!r} has no pool for {key!r} (never used, or closed)")
            return entry.pool.stats()
        parts = [e.pool.stats() for e in self._all_entries()]
        combined = combine_stats(self.name, [*parts, self._gone], closed=self._closed)
        return _with_exhausted(combined, self._exhausted)

    @property
    def total(self) -> int:
        """Connections open or being opened across every pool (what ``max_total`` caps)."""
        return sum(e.ledger.held for e in self._all_entries())

    @property
    def evicted(self) -> int:
        """Pools closed by ``max_pools``, ``max_pool_idle`` or to make room under ``max_total``."""
        return self._evicted

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keys(self) -> list[K]:
        """The keys with a live pool, least recently used first."""
        return list(self._entries)

    def close(self, timeout: float | None = None) -> None:
        """Close every pool (each as ``pool.close(timeout)``); later get()s raise PoolClosed."""
        timeout = check_seconds("timeout", timeout)
        if not self._closed:
            self._closed = True
            while self._token_waiters:
                w = self._token_waiters.popleft()
                w.error = PoolClosed(self._closed_message())
                w.event.set()
            if self._reaper is not None:
                self._reaper.kill(block=False)
            for entry in list(self._entries.values()):
                self._retire(entry, close=False)
        closers = [gevent.spawn(e.pool.close, timeout) for e in list(self._retiring.values())]
        gevent.joinall(closers, raise_error=True)
        for entry in list(self._retiring.values()):
            self._drop_if_done(entry)

    def __enter__(self) -> PoolMap[K, C]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        cap = "" if self._max_total is None else f"/{self._max_total}"
        closed = " closed" if self._closed else ""
        busy = sum(e.busy for e in self._entries.values())
        return (
            f"<{type(self).__name__} {self.name!r}{closed} pools={len(self._entries)} "
            f"retiring={len(self._retiring)} open={self.total}{cap} busy={busy} "
            f"waiting_for_room={len(self._token_waiters)}>"
        )

    # ------------------------------------------------------------------ get() bookkeeping
    def _enter(self, key: K) -> _Entry[K, C]:
        """The entry of ``key`` (made if new), marked busy and waiting, moved to the MRU end."""
        if self._closed:
            raise PoolClosed(self._closed_message())
        entry = self._entries.get(key)
        if entry is None:
            entry = self._create(key)
        else:
            self._entries.move_to_end(key)
        entry.busy += 1
        entry.waiting += 1
        entry.last_used = _monotonic()
        if self._max_pools is not None and len(self._entries) > self._max_pools:
            self._evict_lru()
        return entry

    def _leave(self, entry: _Entry[K, C]) -> None:
        """A caller is done with ``entry`` (returned its connection, or failed to get one)."""
        entry.busy -= 1
        entry.last_used = _monotonic()
        if self._entries.get(entry.key) is entry:
            self._entries.move_to_end(entry.key)
        else:
            self._drop_if_done(entry)
        if self._token_waiters:
            self._start_room_maker()
        if self._max_pools is not None and len(self._entries) > self._max_pools:
            self._evict_lru()

    def _create(self, key: K) -> _Entry[K, C]:
        """Make ``key``'s pool with the factory and hook it up to the token ledger."""
        pool = self._factory(key)  # may switch greenlets: another caller may create it too
        if not isinstance(pool, ConnectionPool):
            raise TypeError(f"factory({key!r}) must return a ConnectionPool, not {pool!r}")
        if self._max_total is not None and pool.min_size:
            pool.close()
            raise ValueError(
                f"factory({key!r}) made a pool with min_size={pool.min_size}; with max_total "
                "the pools must have min_size=0, or idle connections could not make room"
            )
        raced = self._entries.get(key)
        if raced is not None or self._closed:
            pool.close()
            if raced is None:
                raise PoolClosed(self._closed_message())
            self._entries.move_to_end(key)
            return raced
        ledger = _Ledger()
        self._hook(pool, ledger)
        entry: _Entry[K, C] = _Entry(key, pool, ledger)
        self._entries[key] = entry
        return entry

    def _check_room(self, entry: _Entry[K, C]) -> int:
        """Before a caller waits in ``entry``'s pool: refuse it (PoolExhausted) if it would wait
        for room under max_total and ``max_total_waiting`` callers already do; else return 1
        if it counts as waiting for room (0 if not)."""
        limit = self._max_total_waiting
        if limit is None or self._free > 0:
            return 0
        s = entry.pool.stats()
        if s.idle or s.open >= s.max_size or self._reclaimable() is not None:
            return 0
        if self._room_waiting >= limit:
            self._exhausted += 1
            raise PoolExhausted(
                f"{self.name!r}: all max_total={self._max_total} connections are in use and "
                f"{self._room_waiting} callers already wait for room "
                f"(max_total_waiting={limit}); shed load or raise max_total"
            )
        self._room_waiting += 1
        return 1

    # ------------------------------------------------------------------ tokens (max_total)
    def _hook(self, pool: ConnectionPool[C], ledger: _Ledger) -> None:
        """Wrap the pool's connect and close hooks: a socket open holds one token."""
        ref = weakref.ref(self)

        def new_connection(p: ConnectionPool[C], original: Callable[..., Any]) -> Any:
            pools = ref()
            if pools is None:
                return original(p)
            pools._take_token(ledger)
            try:
                conn = original(p)
            except BaseException:
                pools._give_token(ledger)
                raise
            if conn is None:
                pools._give_token(ledger)
            else:
                ledger.conns.add(id(conn))
            return conn

        def close_connection(p: ConnectionPool[C], original: Callable[..., Any], conn: Any) -> None:
            try:
                original(p, conn)
            finally:
                if id(conn) in ledger.conns:
                    ledger.conns.discard(id(conn))
                    pools = ref()
                    if pools is not None:
                        pools._give_token(ledger)

        override_hook(pool, "_new_connection", new_connection)
        override_hook(pool, "_close_connection", close_connection)

    def _take_token(self, ledger: _Ledger) -> None:
        """Called by a connect attempt before it opens a socket; waits while the cap is reached."""
        if self._max_total is None:
            ledger.held += 1
            return
        if self._closed:
            raise PoolClosed(self._closed_message())
        if self._free > 0 and not self._token_waiters:
            self._free -= 1
            ledger.held += 1
            return
        w = _TokenWaiter(ledger)
        self._token_waiters.append(w)
        ledger.waiting += 1
        self._start_room_maker()
        try:
            w.event.wait()
        except BaseException:
            if w.granted:
                self._give_token(ledger)
            else:
                self._token_waiters.remove(w)
            raise
        finally:
            ledger.waiting -= 1
        if w.error is not None:
            raise w.error

    def _give_token(self, ledger: _Ledger) -> None:
        """A socket of ``ledger``'s pool closed (or never opened): its token goes to the oldest
        waiting connect, else back to the free count. Never switches greenlets."""
        ledger.held -= 1
        if self._max_total is not None:
            if self._token_waiters:
                w = self._token_waiters.popleft()
                w.granted = True
                w.ledger.held += 1
                w.event.set()
            else:
                self._free += 1
        entry = self._retiring.get(ledger)
        if entry is not None:
            self._drop_if_done(entry)

    # ------------------------------------------------------------------ making room
    def _start_room_maker(self) -> None:
        """Look for room now: start the room maker, or wake it if it is running."""
        if self._closed:
            return
        if self._room_maker is None:
            self._room_maker = gevent.spawn(self._make_room)
        else:
            self._room_hint.set()

    def _make_room(self) -> None:
        """While connects wait for a token, close idle connections of other keys (LRU first).

        With nothing to reclaim it looks again on the next release through the map, and at
        least every ``_ROOM_POLL`` seconds: a connection can turn idle unseen (a connect that
        completes after its caller gave up).
        """
        try:
            while self._token_waiters and not self._closed:
                entry = self._reclaimable()
                if entry is None:
                    self._room_hint.clear()
                    self._room_hint.wait(_ROOM_POLL)
                    continue
                self._reclaim(entry)
        finally:
            self._room_maker = None

    def _reclaimable(self) -> _Entry[K, C] | None:
        """The least recently used pool with idle connections and no connect waiting for room."""
        for entry in self._entries.values():
            holding = entry.busy - entry.waiting
            has_spare = entry.ledger.held > holding and not entry.ledger.waiting
            if has_spare and entry.pool.stats().idle:
                return entry
        return None

    def _reclaim(self, entry: _Entry[K, C]) -> None:
        """Close ``entry``'s idle connections: the whole pool if nobody uses it. May switch."""
        if entry.busy == 0:
            self._evicted += 1
            self._retire(entry)
            return
        pool = entry.pool
        s = pool.stats()
        keep = max(1, s.open - s.idle)
        if keep >= s.open:
            return
        lo, hi = pool.min_size or 0, pool.max_size or keep
        pool.resize(min_size=min(lo, keep), max_size=keep)  # closes the idle surplus now
        pool.resize(min_size=lo, max_size=hi)

    # ------------------------------------------------------------------ eviction
    def _evict_lru(self) -> None:
        """Close least recently used pools beyond max_pools; a pool with callers waiting in it
        is skipped (they would get PoolClosed), so max_pools can be exceeded while all wait."""
        assert self._max_pools is not None
        excess = len(self._entries) - self._max_pools
        victims = [e for e in self._entries.values() if e.waiting == 0][:excess]
        for entry in victims:
            self._evicted += 1
            self._retire(entry)

    def _reap_idle(self, limit: float) -> None:
        """Close pools unused for ``limit`` seconds (oldest first; stops at a recent one)."""
        now = _monotonic()
        victims = []
        for entry in self._entries.values():
            if now - entry.last_used < limit:
                break
            if entry.busy == 0:
                victims.append(entry)
        for entry in victims:
            self._evicted += 1
            self._retire(entry)

    def _retire(self, entry: _Entry[K, C], *, close: bool = True) -> None:
        """Forget ``entry``'s key and close its pool; kept (for stats) until its sockets close.

        Closing may switch greenlets; the entry leaves the map before that.
        """
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]
        self._retiring[entry.ledger] = entry
        if close:
            entry.pool.close()
            self._drop_if_done(entry)

    def _drop_if_done(self, entry: _Entry[K, C]) -> None:
        """A retired pool with no socket and no caller left: keep its counters, drop it."""
        if entry.ledger.held or entry.busy or not entry.pool.closed:
            return
        if self._retiring.pop(entry.ledger, None) is not None:
            self._gone = combine_stats(self.name, [self._gone, counters_only(entry.pool.stats())])

    def _all_entries(self) -> list[_Entry[K, C]]:
        return [*self._entries.values(), *self._retiring.values()]

    def _closed_message(self) -> str:
        return f"{self.name!r} is closed; create a new PoolMap or stop calling get()"


def _with_exhausted(stats: PoolStats, extra: int) -> PoolStats:
    return dataclasses.replace(stats, exhausted=stats.exhausted + extra)


def _reap_loop(ref: weakref.ref[PoolMap[Any, Any]], limit: float) -> None:
    """The map's one background greenlet: close pools idle past ``limit``; holds a weakref."""
    period = min(limit / 2, 30.0)
    while True:
        gevent.sleep(period)
        pools = ref()
        if pools is None or pools.closed:
            return
        pools._reap_idle(limit)
        del pools
