"""Snapshots of a pool: ``stats()`` (numbers, O(1)) and ``dump()`` (every connection and waiter)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = [
    "DISCARD_REASONS",
    "ConnectionInfo",
    "Counters",
    "Discarded",
    "PoolDump",
    "PoolStats",
    "WaiterInfo",
]

#: Why the pool closed a connection; the fields of :class:`Discarded` and the ``reason`` given to
#: ``_on_discard``.
DISCARD_REASONS = (
    "error",  # an exception that _is_disconnect() calls a disconnect, inside `with pool.get()`
    "interrupted",  # a BaseException (Timeout, kill) while the connection was in use or checked
    "check",  # the checkout check (_check) or _on_acquire failed
    "keepalive",  # _keepalive failed
    "lifetime",  # max_lifetime reached
    "idle",  # idle above min_size for max_idle seconds, or above max_size after resize()
    "closed",  # the pool was closed
    "invalidated",  # pool.invalidate()
    "release",  # _on_release failed or returned False
    "leaked",  # its get() context was garbage-collected without being exited
)


@dataclass(frozen=True, slots=True)
class Discarded:
    """Connections the pool closed since it started, by reason."""

    error: int = 0
    interrupted: int = 0
    check: int = 0
    keepalive: int = 0
    lifetime: int = 0
    idle: int = 0
    closed: int = 0
    invalidated: int = 0
    release: int = 0
    leaked: int = 0

    @property
    def total(self) -> int:
        """All discarded connections."""
        return sum(dataclasses.astuple(self))


@dataclass(frozen=True, slots=True)
class PoolStats:
    """An immutable snapshot of a pool's state and counters, taken in O(1) by ``pool.stats()``."""

    name: str
    open: int  # idle + in_use + connecting
    idle: int
    in_use: int  # held by callers, or by the pool's own keepalive (see ``checking``)
    connecting: int
    waiting: int
    min_size: int
    max_size: int
    available: bool  # False while the backend is considered down (fail_fast_after failed connects)
    closed: bool
    checking: int  # of in_use, held by the pool's keepalive
    acquired: int  # successful get()s
    created: int
    connect_failures: int
    timeouts: int
    exhausted: int
    unavailable: int
    discarded: Discarded
    wait_seconds_total: float
    wait_seconds_max: float
    use_seconds_total: float
    connect_seconds_total: float  # time spent in successful connects
    returned: int = 0  # connections given back to the pool (not discarded) after use

    @property
    def invalidated(self) -> int:
        """Connections closed because of ``pool.invalidate()``."""
        return self.discarded.invalidated

    def as_dict(self) -> dict[str, object]:
        """The snapshot as plain data (for JSON or a metrics exporter)."""
        return dataclasses.asdict(self)


class Counters:
    """The mutable counters behind :class:`PoolStats`; only the pool changes them."""

    __slots__ = (
        "acquired",
        "connect_failures",
        "connect_seconds",
        "created",
        "discarded",
        "exhausted",
        "returned",
        "timeouts",
        "unavailable",
        "use_seconds",
        "wait_max",
        "wait_seconds",
    )

    def __init__(self) -> None:
        self.acquired = 0
        self.created = 0
        self.connect_failures = 0
        self.timeouts = 0
        self.exhausted = 0
        self.unavailable = 0
        self.returned = 0
        self.wait_seconds = 0.0
        self.wait_max = 0.0
        self.use_seconds = 0.0
        self.connect_seconds = 0.0
        self.discarded = dict.fromkeys(DISCARD_REASONS, 0)


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """One connection in :class:`PoolDump`."""

    id: int
    state: str  # "idle", "in_use", "keepalive" or "connecting"
    age: float  # seconds since it was opened (for "connecting": since the attempt started)
    idle_for: float | None  # seconds since it was last returned; None when not idle
    uses: int
    holder: str | None = None  # repr of the greenlet holding it
    held_for: float | None = None
    taken_at: tuple[str, ...] | None = None  # where get() was called (with leak_timeout set)
    holder_stack: tuple[str, ...] | None = None  # where the holder greenlet is now


@dataclass(frozen=True, slots=True)
class WaiterInfo:
    """One greenlet waiting in ``get()``."""

    greenlet: str
    waited_for: float


@dataclass(frozen=True, slots=True)
class PoolDump:
    """A live view of a pool for an operator: ``print(pool.dump())``."""

    stats: PoolStats
    connections: tuple[ConnectionInfo, ...] = field(default_factory=tuple)
    waiters: tuple[WaiterInfo, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        s = self.stats
        lines = [
            f"pool {s.name!r}: open={s.open} idle={s.idle} in_use={s.in_use} "
            f"connecting={s.connecting} waiting={s.waiting} max={s.max_size} "
            f"available={s.available} closed={s.closed}"
        ]
        for c in self.connections:
            line = f"  #{c.id} {c.state:<10} age={c.age:.3f}s uses={c.uses}"
            if c.idle_for is not None:
                line += f" idle={c.idle_for:.3f}s"
            if c.holder is not None:
                line += f" holder={c.holder} held={c.held_for or 0.0:.3f}s"
            lines.append(line)
            for title, stack in (("taken at", c.taken_at), ("holder now at", c.holder_stack)):
                if stack:
                    lines.append(f"    {title}:")
                    lines.extend("      " + frame for frame in stack)
        for w in self.waiters:
            lines.append(f"  waiter {w.greenlet} waiting {w.waited_for:.3f}s")
        return "\n".join(lines)
