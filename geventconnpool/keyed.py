"""Keyed pools: :class:`PoolMap`, one pool per key (a host, a tenant's database), made on first use.

::

    pools = PoolMap(lambda host: TcpPool(host, 80, max_size=4), max_total=100, max_pools=1000)
    with pools.get("example.org", timeout=2) as sock:
        ...

Each key's pool caps its own connections (its ``max_size``); ``max_total`` caps them all
together. The cap is kept by a token ledger (``_room.py``) through the pools' documented hooks:
every pool the factory makes has its ``_new_connection`` and ``_close_connection`` wrapped so
that opening a socket takes a token and closing it gives the token back. A caller whose key needs a
new socket while the cap is reached waits for a token *before* it waits in its key's pool, in
its own greenlet under its own ``get(key, timeout=...)`` deadline (``PoolTimeout`` when it
passes): waiting for room is never a failed connect. Meanwhile the map closes idle connections
of other keys to make room: a key never starves because others hold *idle* connections.

Pools unused for ``max_pool_idle`` seconds, and the least recently used ones beyond
``max_pools``, are closed and forgotten. A pool evicted while one of its connections is out is
closed the way ``close()`` always closes: the holder keeps using its connection, which is closed
when it comes back.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Generic, TypeVar

import gevent

from ._loop import Loop
from ._multi import combine_stats, counters_only, override_hook
from ._options import check_int, check_name, check_seconds
from ._room import Ledger, RoomMaker, Tokens
from .errors import PoolClosed
from .pool import ConnectionPool
from .stats import PoolStats

__all__ = ["PoolMap"]

K = TypeVar("K", bound=Hashable)
C = TypeVar("C")

_UNSET: Any = object()
_numbers = itertools.count(1)
_monotonic = time.monotonic


class _Entry(Generic[K, C]):
    """One key's pool, its counts (callers, sockets, tokens) and when it was last used."""

    __slots__ = ("key", "last_used", "ledger", "pool")

    def __init__(self, key: K, pool: ConnectionPool[C]) -> None:
        self.key = key
        self.pool = pool
        self.ledger = Ledger()
        self.last_used = _monotonic()

    def idle_surplus(self) -> int:
        """Idle sockets no caller of this key holds or waits for (the room maker's question;
        the PoolStats snapshot is only built when the counts say there may be some)."""
        led = self.ledger
        unheld = led.held - led.busy  # sockets beyond one per caller (holding or waiting)
        return 0 if unheld <= 0 else min(unheld, self.pool.stats().idle)


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
            if pools._max_pools is not None:
                pools._trim_pools()  # may switch (closing evicted pools): inside the try
            inner = pools._checkout(entry, self._timeout)
            conn: C = inner.__enter__()
        except BaseException:
            pools._stopped_waiting(entry)
            pools._leave(entry)
            raise
        pools._stopped_waiting(entry)
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
        cap = check_int("max_total", max_total, 1, optional=True)
        line = check_int("max_total_waiting", max_total_waiting, 0, optional=True)
        if line is not None and cap is None:
            raise ValueError("max_total_waiting needs max_total (the cap the callers wait for)")
        self._max_pools = check_int("max_pools", max_pools, 1, optional=True)
        self._max_pool_idle = check_seconds("max_pool_idle", max_pool_idle, allow_zero=False)
        self.name: str = check_name(name) or f"poolmap-{next(_numbers)}"
        self._factory = factory
        self._entries: OrderedDict[K, _Entry[K, C]] = OrderedDict()  # least recently used first
        self._retiring: dict[Ledger, _Entry[K, C]] = {}  # closed, connections still out
        self._evicted = 0  # pools closed by max_pools, max_pool_idle or to make room
        self._gone = combine_stats(self.name, [])  # counters of pools closed and dropped
        self._closed = False
        self._tokens = None if cap is None else Tokens(self.name, cap, line)
        self._room = None if cap is None else RoomMaker(self, self.name)
        self._reaper: Loop[PoolMap[K, C]] | None = None
        if self._max_pool_idle is not None:
            self._reaper = Loop(self, _reap_turn, name=f"{self.name!r}: reaper")

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
        entry.ledger.waiting -= 1
        self._leave(entry)  # may evict LRU pools beyond max_pools, never this one
        return entry.pool

    def stats(self, key: K = _UNSET) -> PoolStats:
        """The stats of ``key``'s live pool, or (no argument) of all pools combined.

        The combined view sums every pool's numbers, including pools already closed (their
        counters are kept), so its counters never go backwards; it adds the callers refused
        (``exhausted``) or timed out (``timeouts``) while waiting for room under ``max_total``.
        """
        if key is not _UNSET:
            entry = self._entries.get(key)
            if entry is None:
                raise KeyError(f"{self.name!r} has no pool for {key!r} (never used, or closed)")
            return entry.pool.stats()
        parts = [e.pool.stats() for e in self._all_entries()]
        combined = combine_stats(self.name, [*parts, self._gone], closed=self._closed)
        tokens = self._tokens
        if tokens is None:
            return combined
        return dataclasses.replace(
            combined,
            exhausted=combined.exhausted + tokens.exhausted,
            timeouts=combined.timeouts + tokens.timeouts,
        )

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
            for loop in (self._reaper, self._room):
                if loop is not None:
                    loop.stop()
            if self._tokens is not None:
                self._tokens.close(PoolClosed(self._closed_message()))
            self._forget(list(self._entries.values()))
        closers = [gevent.spawn(e.pool.close, timeout) for e in list(self._retiring.values())]
        gevent.joinall(closers, raise_error=True)
        for entry in list(self._retiring.values()):
            self._drop_if_done(entry)

    def __enter__(self) -> PoolMap[K, C]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        tokens = self._tokens
        cap = "" if tokens is None else f"/{tokens.cap}"
        closed = " closed" if self._closed else ""
        busy = sum(e.ledger.busy for e in self._entries.values())
        return (
            f"<{type(self).__name__} {self.name!r}{closed} pools={len(self._entries)} "
            f"retiring={len(self._retiring)} open={self.total}{cap} busy={busy} "
            f"waiting_for_room={0 if tokens is None else len(tokens.line)}>"
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
        entry.ledger.busy += 1
        entry.ledger.waiting += 1
        entry.last_used = _monotonic()
        return entry

    def _trim_pools(self) -> None:
        """Close the least recently used pools beyond ``max_pools`` (may switch greenlets)."""
        if self._max_pools is not None and len(self._entries) > self._max_pools:
            self._evict_lru()

    def _checkout(self, entry: _Entry[K, C], timeout: float | None) -> Any:
        """The key pool's get() context, after taking the token its connect will need (if
        the cap is reached: waiting in line, under the caller's deadline)."""
        pool = entry.pool
        if timeout is _UNSET:
            timeout = pool.timeout
        tokens = self._tokens
        if tokens is not None and entry.ledger.short(pool.max_size):  # else: no token needed
            started = _monotonic()
            tokens.reserve(entry.ledger, pool.max_size, timeout, self._reclaimable)
            if timeout is not None:
                timeout = max(0.0, timeout - (_monotonic() - started))
        return pool.get(timeout)

    def _stopped_waiting(self, entry: _Entry[K, C]) -> None:
        """A caller of ``entry`` got its connection or gave up: spare tokens may go back."""
        ledger = entry.ledger
        ledger.waiting -= 1
        if ledger.spare and self._tokens is not None:
            self._tokens.trim_soon(ledger, entry.pool.max_size)

    def _leave(self, entry: _Entry[K, C]) -> None:
        """A caller is done with ``entry`` (returned its connection, or failed to get one)."""
        entry.ledger.busy -= 1
        entry.last_used = _monotonic()
        if self._entries.get(entry.key) is entry:
            self._entries.move_to_end(entry.key)
        else:
            self._drop_if_done(entry)
        tokens = self._tokens
        if tokens is not None:
            if entry.ledger.spare:
                tokens.trim_soon(entry.ledger, entry.pool.max_size)
            if tokens.line and self._room is not None:
                self._room.wake()  # one of its connections may be idle now
        if self._max_pools is not None:
            self._trim_pools()

    def _create(self, key: K) -> _Entry[K, C]:
        """Make ``key``'s pool with the factory and hook it up to the token ledger."""
        pool = self._factory(key)  # may switch greenlets: another caller may create it too
        if not isinstance(pool, ConnectionPool):
            raise TypeError(f"factory({key!r}) must return a ConnectionPool, not {pool!r}")
        if self._tokens is not None and pool.min_size:
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
        entry: _Entry[K, C] = _Entry(key, pool)
        _hook(self, key, entry.ledger, pool)
        self._entries[key] = entry
        return entry

    # ------------------------------------------------------------------ sockets (the hooks)
    def _socket_opening(self, ledger: Ledger, pool: ConnectionPool[C]) -> None:
        """A connect of ``ledger``'s pool is about to open a socket: it holds a token."""
        if self._tokens is None:
            ledger.held += 1
        else:
            self._tokens.connect_started(ledger, pool.max_size)

    def _socket_gone(self, key: K, ledger: Ledger, pool: ConnectionPool[C]) -> None:
        """A socket of ``ledger``'s pool closed, or its connect failed: its token goes back
        (kept for the pool's retry while one of its callers waits). Never switches."""
        if self._tokens is None:
            ledger.held -= 1
        else:
            live = (entry := self._entries.get(key)) is not None and entry.ledger is ledger
            self._tokens.socket_gone(ledger, pool.max_size, live)
        retired = self._retiring.get(ledger)
        if retired is not None:
            self._drop_if_done(retired)

    # ------------------------------------------------------------------ making room
    def _room_candidates(self) -> Iterator[_Entry[K, C]]:
        """The live entries, least recently used first (for the room maker)."""
        return iter(list(self._entries.values()))

    def _reclaimable(self) -> bool:
        """Some key has an idle socket to spare (asked only when the line is full)."""
        return any(not e.ledger.asking and e.idle_surplus() for e in self._entries.values())

    def _reclaim(self, entry: _Entry[K, C]) -> None:
        """Close ``entry``'s idle connections: the whole pool if nobody uses it. May switch."""
        if entry.ledger.busy == 0:
            self._retire([entry])
        else:
            entry.pool.close_idle(keep=entry.ledger.waiting)

    # ------------------------------------------------------------------ eviction
    def _evict_lru(self) -> None:
        """Close least recently used pools beyond max_pools; a pool with callers waiting in it
        is skipped (they would get PoolClosed), so max_pools can be exceeded while all wait."""
        assert self._max_pools is not None
        excess = len(self._entries) - self._max_pools
        self._retire([e for e in self._entries.values() if e.ledger.waiting == 0][:excess])

    def _reap_idle(self, limit: float) -> None:
        """Close pools unused for ``limit`` seconds (oldest first; stops at a recent one)."""
        now = _monotonic()
        victims = []
        for entry in self._entries.values():
            if now - entry.last_used < limit:
                break
            if entry.ledger.busy == 0:
                victims.append(entry)
        self._retire(victims)

    def _retire(self, victims: list[_Entry[K, C]]) -> None:
        """Evict: forget every victim's key at once (no switch, so no caller can enter one of
        them meanwhile), then close their pools (which may switch greenlets)."""
        self._evicted += len(victims)
        self._forget(victims)
        self._close_retired(victims)

    def _close_retired(self, victims: list[_Entry[K, C]]) -> None:
        """Close forgotten pools; if the caller is interrupted, a greenlet closes the rest."""
        for i, entry in enumerate(victims):
            try:
                entry.pool.close()
            except BaseException:
                gevent.spawn(self._close_retired, victims[i:])
                raise
            self._drop_if_done(entry)

    def _forget(self, victims: list[_Entry[K, C]]) -> None:
        """Take the victims out of the map; they are kept (for stats) until their sockets close."""
        for entry in victims:
            if self._entries.get(entry.key) is entry:
                del self._entries[entry.key]
            self._retiring[entry.ledger] = entry
            if self._tokens is not None:
                self._tokens.give_back_spare(entry.ledger)

    def _drop_if_done(self, entry: _Entry[K, C]) -> None:
        """A retired pool with no socket and no caller left: keep its counters, drop it."""
        if entry.ledger.held or entry.ledger.busy or not entry.pool.closed:
            return
        if self._tokens is not None:  # granted to a connect its closing pool killed
            self._tokens.give_back_spare(entry.ledger)
        if self._retiring.pop(entry.ledger, None) is not None:
            self._gone = combine_stats(self.name, [self._gone, counters_only(entry.pool.stats())])

    def _all_entries(self) -> list[_Entry[K, C]]:
        return [*self._entries.values(), *self._retiring.values()]

    def _closed_message(self) -> str:
        return f"{self.name!r} is closed; create a new PoolMap or stop calling get()"


def _hook(pools: PoolMap[Any, Any], key: Any, ledger: Ledger, pool: ConnectionPool[Any]) -> None:
    """Wrap ``pool``'s connect and close hooks: a socket open holds one token of the map.

    The wrappers hold the map weakly and not the pool (no cycle through the pool's dict).
    """
    ref = weakref.ref(pools)

    def new_connection(p: ConnectionPool[Any], original: Callable[..., Any]) -> Any:
        owner = ref()
        if owner is None:
            return original(p)
        owner._socket_opening(ledger, p)
        del owner  # a connect may last: do not keep the map alive meanwhile
        try:
            conn = original(p)
        except BaseException:
            _gone(ref, key, ledger, p)
            raise
        if conn is None:
            _gone(ref, key, ledger, p)
        else:
            ledger.conns.add(id(conn))
        return conn

    def close_connection(p: ConnectionPool[Any], original: Callable[..., Any], conn: Any) -> None:
        try:
            original(p, conn)
        finally:
            if id(conn) in ledger.conns:
                ledger.conns.discard(id(conn))
                _gone(ref, key, ledger, p)

    override_hook(pool, "_new_connection", new_connection)
    override_hook(pool, "_close_connection", close_connection)


def _gone(ref: weakref.ref[PoolMap[Any, Any]], key: Any, ledger: Ledger, pool: Any) -> None:
    owner = ref()
    if owner is not None:
        owner._socket_gone(key, ledger, pool)


def _reap_turn(pools: PoolMap[Any, Any]) -> float:
    """The reaper's turn: close pools idle past ``max_pool_idle``; look again in half that."""
    limit = pools._max_pool_idle
    if limit is None:
        return math.inf
    pools._reap_idle(limit)
    return min(limit / 2, 30.0)
