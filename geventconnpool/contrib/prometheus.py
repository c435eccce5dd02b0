"""Prometheus export of ``pool.stats()``, with OpenTelemetry's database-client metric names.

Install the extra::

    pip install "geventconnpool[prometheus] @ git+https://github.com/geventconnpool/geventconnpool"

and register each pool::

    from geventconnpool.contrib.prometheus import register

    register(pool)  # into prometheus_client's default REGISTRY

The names follow OpenTelemetry's semantic conventions for database client connection pools
(``db.client.connection.*``), written the Prometheus way (dots become underscores, seconds get
``_seconds``, counters ``_total``), labelled by ``pool_name`` (and ``state`` for the count):

=================================================  =======  ======================================
Prometheus name                                    type     value
=================================================  =======  ======================================
``db_client_connection_count{state="idle"}``       gauge    idle connections
``db_client_connection_count{state="used"}``       gauge    connections in use (callers, pings)
``db_client_connection_pending_requests``          gauge    greenlets waiting in ``get()``
``db_client_connection_max``                       gauge    ``max_size``
``db_client_connection_idle_max``                  gauge    most idle connections kept: max_size
``db_client_connection_idle_min``                  gauge    ``min_size``
``db_client_connection_timeouts_total``            counter  ``get()`` calls that timed out
``db_client_connection_create_time_seconds``       summary  connect time (sum, count)
``db_client_connection_wait_time_seconds``         summary  time spent in ``get()`` (sum, count)
``db_client_connection_use_time_seconds``          summary  time held by callers (sum, count)
=================================================  =======  ======================================

The pool keeps totals, not distributions, so the three times are summaries without quantiles
(``_sum`` and ``_count``: ``rate(_sum) / rate(_count)`` is the mean). Also exported, under
``geventconnpool_``: ``connections_connecting``, ``backend_available``, ``wait_seconds_max``,
``connections_created_total``, ``connect_failures_total``, ``exhausted_total``,
``unavailable_total`` and ``connections_discarded_total{reason=...}`` (reasons as in
``stats().discarded``).

The collector holds its pools weakly: a pool that is garbage-collected or closed disappears from
the export; nothing here keeps a pool alive.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

try:  # the `prometheus` extra: an ImportError that says how to install it
    import prometheus_client  # noqa: F401
except ImportError as exc:
    from ._extras import missing_extra

    raise missing_extra("prometheus_client", "prometheus", __name__, exc) from exc

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from ..pool import ConnectionPool
from ..stats import DISCARD_REASONS, PoolStats

__all__ = ["PoolCollector", "register", "unregister"]

_POOL = ["pool_name"]
_collectors: weakref.WeakKeyDictionary[CollectorRegistry, PoolCollector] = (
    weakref.WeakKeyDictionary()
)
_collectors_lock = threading.Lock()


class PoolCollector(Collector):
    """Exports the stats of every pool added to it; register it once in a registry.

    ``registry.register(PoolCollector(pool_a, pool_b))``, or let :func:`register` do it.
    """

    def __init__(self, *pools: ConnectionPool[Any]) -> None:
        self._refs: dict[int, weakref.ref[ConnectionPool[Any]]] = {}
        self._lock = threading.Lock()
        for pool in pools:
            self.add(pool)

    def add(self, pool: ConnectionPool[Any]) -> None:
        """Export ``pool`` too (adding it twice is harmless).

        Raises ValueError if another live pool with the same name is exported here: their
        series would collide. Give pools distinct ``name=`` values.
        """
        if not isinstance(pool, ConnectionPool):
            raise TypeError(f"expected a ConnectionPool, got {type(pool).__name__}")
        key = id(pool)
        with self._lock:
            for other in self._live():
                if other is not pool and other.name == pool.name:
                    raise ValueError(
                        f"a pool named {pool.name!r} is already exported by this collector; "
                        "give each pool a distinct name="
                    )
            self._refs[key] = weakref.ref(pool, self._forget)

    def remove(self, pool: ConnectionPool[Any]) -> None:
        """Stop exporting ``pool`` (no error if it was not exported)."""
        with self._lock:
            ref = self._refs.get(id(pool))
            if ref is not None and ref() is pool:
                self._refs.pop(id(pool), None)

    @property
    def pools(self) -> list[ConnectionPool[Any]]:
        """The pools exported now: added, still alive and not closed."""
        with self._lock:
            return self._live()

    def describe(self) -> Iterable[Metric]:
        """The metric names, without samples (lets a registry detect duplicates cheaply)."""
        return list(_Families())

    def collect(self) -> Iterable[Metric]:
        """One family per metric, one sample (or one per state/reason) per pool."""
        families = _Families()
        for pool in self.pools:
            _add_samples(families, pool.stats())
        return list(families)

    def _live(self) -> list[ConnectionPool[Any]]:
        pools = []
        for key, ref in list(self._refs.items()):
            pool = ref()
            if pool is None or pool.closed:
                self._refs.pop(key, None)  # closed for good: its counters are final and gone
            else:
                pools.append(pool)
        return pools

    def _forget(self, dead: weakref.ref[ConnectionPool[Any]]) -> None:
        """A pool was garbage-collected: drop its entry (a new pool may reuse its id).

        Runs wherever the garbage collector runs, perhaps inside one of our locked sections, so
        it takes no lock: single dict operations are atomic.
        """
        for key, ref in list(self._refs.items()):
            if ref is dead:
                self._refs.pop(key, None)


def register(pool: ConnectionPool[Any], registry: CollectorRegistry = REGISTRY) -> PoolCollector:
    """Export ``pool`` through ``registry``'s :class:`PoolCollector`, made on first use."""
    with _collectors_lock:
        collector = _collectors.get(registry)
        if collector is None:
            collector = PoolCollector()
            registry.register(collector)
            _collectors[registry] = collector
    collector.add(pool)
    return collector


def unregister(pool: ConnectionPool[Any], registry: CollectorRegistry = REGISTRY) -> None:
    """Stop exporting ``pool`` through ``registry``."""
    with _collectors_lock:
        collector = _collectors.get(registry)
    if collector is not None:
        collector.remove(pool)


class _Families:
    """The metric families of one scrape, by short name."""

    def __init__(self) -> None:
        g, c, s = GaugeMetricFamily, CounterMetricFamily, SummaryMetricFamily
        db = "db_client_connection_"
        own = "geventconnpool_"
        self.count = g(
            db + "count", "Connections open, by state (idle, used).", labels=[*_POOL, "state"]
        )
        self.pending = g(
            db + "pending_requests", "Requests waiting for a connection.", labels=_POOL
        )
        self.max = g(db + "max", "Most open connections allowed (max_size).", labels=_POOL)
        self.idle_max = g(db + "idle_max", "Most idle connections kept (max_size).", labels=_POOL)
        self.idle_min = g(db + "idle_min", "Fewest idle connections kept (min_size).", labels=_POOL)
        self.timeouts = c(db + "timeouts", "get() calls that timed out.", labels=_POOL)
        self.create = s(db + "create_time_seconds", "Time to create a connection.", labels=_POOL)
        self.wait = s(db + "wait_time_seconds", "Time to obtain a connection.", labels=_POOL)
        self.use = s(db + "use_time_seconds", "Time a connection was held.", labels=_POOL)
        self.connecting = g(own + "connections_connecting", "Connects in flight.", labels=_POOL)
        self.available = g(
            own + "backend_available", "0 while the backend is considered down.", labels=_POOL
        )
        self.wait_max = g(own + "wait_seconds_max", "Longest wait in get().", labels=_POOL)
        self.created = c(own + "connections_created", "Connections opened.", labels=_POOL)
        self.failures = c(own + "connect_failures", "Failed connect attempts.", labels=_POOL)
        self.exhausted = c(
            own + "exhausted", "get() calls refused by max_waiting (PoolExhausted).", labels=_POOL
        )
        self.unavailable = c(
            own + "unavailable", "get() calls failed fast (PoolUnavailable).", labels=_POOL
        )
        self.discarded = c(
            own + "connections_discarded",
            "Connections closed by the pool, by reason.",
            labels=[*_POOL, "reason"],
        )

    def __iter__(self) -> Iterator[Metric]:
        return iter(vars(self).values())


def _add_samples(f: _Families, s: PoolStats) -> None:
    name = [s.name]
    callers = s.in_use - s.checking
    f.count.add_metric([s.name, "idle"], s.idle)
    f.count.add_metric([s.name, "used"], s.in_use)
    f.pending.add_metric(name, s.waiting)
    f.max.add_metric(name, s.max_size)
    f.idle_max.add_metric(name, s.max_size)
    f.idle_min.add_metric(name, s.min_size)
    f.timeouts.add_metric(name, s.timeouts)
    f.create.add_metric(name, s.created, s.connect_seconds_total)
    f.wait.add_metric(name, s.acquired, s.wait_seconds_total)
    finished = max(0, s.acquired - callers - s.discarded.leaked)  # uses that ended
    f.use.add_metric(name, finished, s.use_seconds_total)
    f.connecting.add_metric(name, s.connecting)
    f.available.add_metric(name, 1 if s.available else 0)
    f.wait_max.add_metric(name, s.wait_seconds_max)
    f.created.add_metric(name, s.created)
    f.failures.add_metric(name, s.connect_failures)
    f.exhausted.add_metric(name, s.exhausted)
    f.unavailable.add_metric(name, s.unavailable)
    for reason in DISCARD_REASONS:
        f.discarded.add_metric([s.name, reason], getattr(s.discarded, reason))
