"""geventconnpool.contrib.prometheus: scraped from a real prometheus_client registry."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from gevent.event import Event

from geventconnpool import PoolTimeout
from geventconnpool.testing import ping

from .conftest import SocketPool, wait_until

pytestmark = pytest.mark.integration  # needs the prometheus extra
prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from geventconnpool.contrib.prometheus import PoolCollector, register, unregister  # noqa: E402

MakePool = Callable[..., SocketPool]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(registry: CollectorRegistry) -> tuple[str, Samples]:
    """The text exposition, and its samples by (name, sorted labels)."""
    text = generate_latest(registry).decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


def value(samples: Samples, name: str, pool: str, **labels: str) -> float:
    return samples[(name, tuple(sorted({"pool_name": pool, **labels}.items())))]


def test_otel_names_and_types_in_the_exposition(make_pool: MakePool) -> None:
    registry = CollectorRegistry()
    pool = make_pool(1, name="db")
    register(pool, registry)
    text, _ = scrape(registry)
    for name, kind in [
        ("db_client_connection_count", "gauge"),
        ("db_client_connection_pending_requests", "gauge"),
        ("db_client_connection_max", "gauge"),
        ("db_client_connection_idle_max", "gauge"),
        ("db_client_connection_idle_min", "gauge"),
        ("db_client_connection_timeouts_total", "counter"),
        ("db_client_connection_create_time_seconds", "summary"),
        ("db_client_connection_wait_time_seconds", "summary"),
        ("db_client_connection_use_time_seconds", "summary"),
    ]:
        assert f"# TYPE {name} {kind}\n" in text
    assert 'db_client_connection_timeouts_total{pool_name="db"} 0.0' in text


def test_count_by_state_pending_and_limits(make_pool: MakePool) -> None:
    registry = CollectorRegistry()
    pool = make_pool(min_size=2, max_size=3, name="db")
    pool.wait_ready(5)
    register(pool, registry)
    release = Event()

    def hold() -> None:
        with pool.get(timeout=5) as conn:
            ping(conn)
            release.wait()

    holders = [gevent.spawn(hold) for _ in range(4)]  # three hold, one waits
    wait_until(lambda: pool.stats().waiting == 1 and pool.stats().in_use == 3, what="load")
    _, samples = scrape(registry)
    assert value(samples, "db_client_connection_count", "db", state="used") == 3
    assert value(samples, "db_client_connection_count", "db", state="idle") == 0
    assert value(samples, "db_client_connection_pending_requests", "db") == 1
    assert value(samples, "db_client_connection_max", "db") == 3
    assert value(samples, "db_client_connection_idle_max", "db") == 3
    assert value(samples, "db_client_connection_idle_min", "db") == 2
    release.set()
    gevent.joinall(holders, timeout=5, raise_error=True)
    _, samples = scrape(registry)
    assert value(samples, "db_client_connection_count", "db", state="idle") == 3
    assert value(samples, "db_client_connection_count", "db", state="used") == 0
    assert value(samples, "db_client_connection_pending_requests", "db") == 0


def test_times_and_counters_follow_stats(make_pool: MakePool) -> None:
    registry = CollectorRegistry()
    pool = make_pool(1, name="db")
    register(pool, registry)
    for _ in range(3):
        with pool.get(timeout=5) as conn:
            ping(conn)
    with pool.get(timeout=5), pytest.raises(PoolTimeout), pool.get(timeout=0.01):
        pass
    with pytest.raises(OSError), pool.get(timeout=5):
        raise OSError("lost")
    stats = pool.stats()
    _, samples = scrape(registry)
    assert value(samples, "db_client_connection_timeouts_total", "db") == 1
    assert value(samples, "db_client_connection_create_time_seconds_count", "db") == stats.created
    create_sum = value(samples, "db_client_connection_create_time_seconds_sum", "db")
    assert create_sum == pytest.approx(stats.connect_seconds_total) and create_sum > 0
    assert value(samples, "db_client_connection_wait_time_seconds_count", "db") == stats.acquired
    assert value(samples, "db_client_connection_wait_time_seconds_sum", "db") == pytest.approx(
        stats.wait_seconds_total
    )
    assert value(samples, "db_client_connection_use_time_seconds_count", "db") == 5
    assert value(samples, "db_client_connection_use_time_seconds_sum", "db") == pytest.approx(
        stats.use_seconds_total
    )
    assert value(samples, "geventconnpool_connections_discarded_total", "db", reason="error") == 1
    assert value(samples, "geventconnpool_connections_discarded_total", "db", reason="check") == 0
    assert value(samples, "geventconnpool_connections_created_total", "db") == stats.created
    assert value(samples, "geventconnpool_backend_available", "db") == 1


def test_every_registered_pool_is_labelled_by_its_name(make_pool: MakePool) -> None:
    registry = CollectorRegistry()
    a, b = make_pool(1, name="orders"), make_pool(2, name="users")
    a.wait_ready(5)
    b.wait_ready(5)
    first = register(a, registry)
    assert register(b, registry) is first  # one collector per registry
    register(a, registry)  # twice: still once in the export
    _, samples = scrape(registry)
    assert value(samples, "db_client_connection_count", "orders", state="idle") == 1
    assert value(samples, "db_client_connection_count", "users", state="idle") == 2
    names = {dict(labels)["pool_name"] for (n, labels) in samples if n.startswith("db_client")}
    assert names == {"orders", "users"}


def test_unregister_and_closed_pools_leave_the_export(make_pool: MakePool) -> None:
    registry = CollectorRegistry()
    a, b = make_pool(1, name="orders"), make_pool(1, name="users")
    register(a, registry)
    register(b, registry)
    unregister(a, registry)
    b.close()
    text, _ = scrape(registry)
    assert "orders" not in text and "users" not in text
    assert "# TYPE db_client_connection_count gauge" in text  # the families stay, empty


def test_the_collector_does_not_keep_pools_alive() -> None:
    registry = CollectorRegistry()
    collector = PoolCollector()
    registry.register(collector)
    pool: Any = SocketPool(1, address=("127.0.0.1", 1), name="gone", reconnect_delay=10)
    collector.add(pool)
    assert collector.pools == [pool]
    ref = weakref.ref(pool)
    pool.close()
    del pool
    gc.collect()
    assert ref() is None
    assert collector.pools == []
    assert "gone" not in scrape(registry)[0]


def test_two_live_pools_with_one_name_are_refused(make_pool: MakePool) -> None:
    collector = PoolCollector(make_pool(1, name="same"))
    with pytest.raises(ValueError, match="same"):
        collector.add(make_pool(1, name="same"))


def test_registering_two_collectors_for_one_registry_is_refused(make_pool: MakePool) -> None:
    registry = CollectorRegistry()
    registry.register(PoolCollector(make_pool(1, name="a")))
    with pytest.raises(ValueError, match="Duplicated"):
        registry.register(PoolCollector(make_pool(1, name="b")))
