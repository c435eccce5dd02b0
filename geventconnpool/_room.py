"""PoolMap's ``max_total``: the token ledger, and the room maker that closes idle sockets.

One token is one socket open or being opened, by any key's pool. :class:`Tokens` keeps the
count: tokens nobody holds (``free``), and the callers waiting in line for one. A caller whose
key needs a new socket takes a token *before* it waits in its key's pool, in its own greenlet
and under its own ``get()`` deadline (:meth:`Tokens.reserve`); the token waits in the key's
:class:`Ledger` as ``spare`` until the pool's connect attempt turns it into a socket
(:meth:`Tokens.connect_started`). So waiting for room never runs under ``connect_timeout`` and is
never booked as a failed connect (issue 19, defect 3).

:class:`RoomMaker` runs while callers wait in line: it closes idle sockets of other keys, least
recently used first (the whole pool when nobody uses it), so that a key never starves because
others hold *idle* connections. Nothing here switches greenlets except the waits.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from gevent.event import Event
from gevent.hub import get_hub

from ._loop import Loop
from .errors import PoolExhausted, PoolTimeout

_ROOM_POLL = 0.05  # seconds between looks for idle sockets while callers wait for room


class Ledger:
    """One key's counts: its callers, its sockets and the tokens it holds. All plain ints."""

    __slots__ = ("asking", "busy", "conns", "held", "spare", "waiting")

    def __init__(self) -> None:
        self.busy = 0  # callers inside pools.get(key): waiting for a connection or holding one
        self.waiting = 0  # of busy, those still waiting
        self.held = 0  # tokens backing a socket of this pool (open or being opened)
        self.spare = 0  # tokens taken for this pool's next connects, not a socket yet
        self.asking = 0  # this pool's callers waiting in line for a token
        self.conns: set[int] = set()  # id() of the connections that hold a token

    def need(self, max_size: int) -> int:
        """Tokens this pool may turn into sockets now: one per caller in the pool (not in line)
        that no idle or connecting socket covers, up to the pool's ``max_size``."""
        holders = self.busy - self.waiting
        # idle or connecting sockets serve the waiting callers; fewer sockets than holders is
        # a holder whose connection was just closed, before it left the map
        unheld = max(0, self.held - holders)
        in_pool = self.waiting - self.asking
        return max(0, min(in_pool, max_size - holders) - unheld)

    def short(self, max_size: int) -> int:
        """Tokens missing for the connects this pool may start (0: every one has its token).

        ``need() - spare``, written out: it runs on every ``get(key)`` under ``max_total``."""
        holders = self.busy - self.waiting
        unheld = self.held - holders
        if unheld < 0:
            unheld = 0
        in_pool = self.waiting - self.asking
        room = max_size - holders
        return max(0, (in_pool if in_pool < room else room) - unheld - self.spare)

    def surplus(self, max_size: int) -> int:
        """Spare tokens no connect of this pool can use now: to be given back."""
        return max(0, self.spare - self.need(max_size))


class _InLine:
    """A caller (or a connect) waiting for a token; ``granted`` once a token went to its ledger."""

    __slots__ = ("event", "granted", "ledger")

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.event = Event()
        self.granted = False


class Tokens:
    """The ``max_total`` count: free tokens and the line of callers waiting for one (FIFO)."""

    def __init__(self, name: str, cap: int, line_limit: int | None) -> None:
        self.name = name
        self.cap = cap
        self.line_limit = line_limit  # max_total_waiting: refuse at once beyond it
        self.free = cap
        self.line: deque[_InLine] = deque()
        self.exhausted = 0  # callers refused by line_limit
        self.timeouts = 0  # callers whose deadline passed in line
        self.closed_error: BaseException | None = None
        self.on_short: Callable[[], None] = _nothing  # wake the room maker

    # -- a caller ----------------------------------------------------------------------------
    def reserve(
        self,
        ledger: Ledger,
        max_size: int,
        timeout: float | None,
        reclaimable: Callable[[], bool],
    ) -> None:
        """Before a caller waits in its key's pool: take the token its connect will need, if
        any, waiting in line up to ``timeout`` seconds. Raises PoolTimeout, or PoolExhausted
        when ``max_total_waiting`` callers wait already and no idle socket can make room."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while ledger.short(max_size):
            if self.free > 0 and not self.line:
                self.free -= 1
                ledger.spare += 1
                continue
            limit = self.line_limit
            if limit is not None and len(self.line) >= limit and not reclaimable():
                self.exhausted += 1
                raise PoolExhausted(
                    f"{self.name!r}: all max_total={self.cap} connections are in use and "
                    f"{len(self.line)} callers already wait for room "
                    f"(max_total_waiting={limit}); shed load or raise max_total"
                )
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self.wait(ledger, left):
                self.timeouts += 1
                raise PoolTimeout(
                    f"{self.name!r}: no room under max_total={self.cap} within {timeout}s "
                    f"({len(self.line)} other callers wait for room); "
                    "return connections sooner, raise max_total or wait longer"
                )

    def wait(self, ledger: Ledger, timeout: float | None) -> bool:
        """Wait in line for a token for ``ledger`` (it lands in ``ledger.spare``); False when
        ``timeout`` passed. A caller interrupted or timed out leaves the line at once."""
        if self.closed_error is not None:
            raise self.closed_error
        w = _InLine(ledger)
        self.line.append(w)
        ledger.asking += 1
        self.on_short()
        try:
            w.event.wait(timeout)
        finally:
            ledger.asking -= 1
            if not w.granted and self.closed_error is None:  # close() emptied the line
                self.line.remove(w)
        if self.closed_error is not None:
            raise self.closed_error
        return w.granted

    def trim_soon(self, ledger: Ledger, max_size: int) -> None:
        """A caller stopped waiting: give back the spare tokens nobody needs any more, on the
        next loop turn, after any connect its pool already spawned has taken its token."""
        if ledger.spare:
            get_hub().loop.run_callback(self.trim, ledger, max_size)

    def trim(self, ledger: Ledger, max_size: int) -> None:
        for _ in range(ledger.surplus(max_size)):
            ledger.spare -= 1
            self._give()

    # -- a pool's sockets (through its hooks) ------------------------------------------------
    def connect_started(self, ledger: Ledger, max_size: int) -> None:
        """A connect attempt of ``ledger``'s pool is about to open a socket: it takes a token.

        Normally one a caller took for it (spare). A connect no caller took one for (the pool's
        own, a connection taken around the map) takes a free one or waits in line; if it is
        interrupted there (its pool closed), a token granted meanwhile goes back.
        """
        if ledger.spare == 0 and (self.free == 0 or self.line):
            try:
                self.wait(ledger, None)
            except BaseException:
                self.trim(ledger, max_size)
                raise
        if ledger.spare:
            ledger.spare -= 1
        else:
            self.free -= 1
        ledger.held += 1

    def socket_gone(self, ledger: Ledger, max_size: int, live: bool) -> None:
        """A socket of ``ledger``'s pool closed or never opened. Its token stays with the pool
        when a caller of the pool waits for a connect (the retry or the replacement needs it),
        else it goes to the first in line or back to ``free``. Never switches greenlets."""
        ledger.held -= 1
        if live and ledger.short(max_size):
            ledger.spare += 1
        else:
            self._give()

    def give_back_spare(self, ledger: Ledger) -> None:
        """``ledger``'s pool is retired: its spare tokens go back."""
        while ledger.spare:
            ledger.spare -= 1
            self._give()

    def _give(self) -> None:
        if self.line:
            w = self.line.popleft()
            w.granted = True
            w.ledger.spare += 1
            w.event.set()
        else:
            self.free += 1

    def close(self, error: BaseException) -> None:
        """Everyone in line gets ``error``."""
        self.closed_error = error
        while self.line:
            self.line.popleft().event.set()


class Reclaimable(Protocol):
    """One key's pool as the room maker sees it."""

    ledger: Ledger

    def idle_surplus(self) -> int: ...


class Room(Protocol):
    """What the room maker needs of its map."""

    _tokens: Tokens | None

    @property
    def closed(self) -> bool: ...

    def _room_candidates(self) -> Iterable[Reclaimable]: ...
    def _reclaim(self, entry: Any) -> None: ...


class RoomMaker(Loop[Room]):
    """While callers wait in line, closes idle sockets of other keys, least recently used first.

    The map gives its live entries LRU first (``_room_candidates``) and closes an unused pool
    or the idle surplus of a used one (``_reclaim``, which may switch greenlets). With nothing
    to reclaim it looks again when woken (a caller left a key) and at least every
    ``_ROOM_POLL`` seconds: a connection can turn idle unseen (a connect that completes after
    its caller gave up). Asleep for good while nobody waits in line.
    """

    def __init__(self, owner: Room, name: str) -> None:
        super().__init__(owner, name=f"{name!r}: room maker")
        assert owner._tokens is not None
        owner._tokens.on_short = self.wake  # the maker does not hold the tokens: no cycle

    def turn(self, owner: Room) -> float | None:
        """One look for room: reclaim the first candidate with idle sockets to spare."""
        tokens = owner._tokens
        if tokens is None or not tokens.line:
            return math.inf  # nobody waits: sleep until woken
        for entry in owner._room_candidates():
            if entry.ledger.asking == 0 and entry.idle_surplus():
                owner._reclaim(entry)
                return 0.0  # look again at once if callers still wait
        return _ROOM_POLL


def _nothing() -> None:
    pass
