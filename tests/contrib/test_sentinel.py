"""SentinelRedisPool against real redis-server processes: a master, a replica, three sentinels.

The tests that leave the cluster as they found it share one (``cluster``, checked intact before
and after each test); the failover tests each start their own (``redis_sentinel``): they force
``SENTINEL FAILOVER`` (and a master crash) under write load, bounded in time
(tests/contrib/sentinel_load.py), and check failed writes and recovery.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.socket
import pytest

from geventconnpool import ConnectionPool, PoolTimeout
from geventconnpool.contrib.redis import RedisConnectionError
from geventconnpool.contrib.sentinel import (
    MasterNotFoundError,
    NotMasterError,
    ReadOnlyError,
    SentinelConnection,
    SentinelRedisPool,
)
from geventconnpool.contrib.tcp import SocketConnector
from tests.servers import SentinelCluster, free_port, resp_call, sentinel_cluster, wait_until

from .sentinel_load import run_failover

pytestmark = pytest.mark.redis

FAST = {"reconnect_delay": 0.02, "reconnect_max_delay": 0.25, "connect_timeout": 1.0}


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    """One master, replica and three sentinels for every test of this file that does not fail
    them over (starting one takes seconds)."""
    with sentinel_cluster(tmp_path_factory) as cluster:
        yield cluster


@pytest.fixture
def cluster(shared_cluster: SentinelCluster) -> Iterator[SentinelCluster]:
    """The shared cluster, its master still the master before and after the test: a test that
    fails it over must take ``redis_sentinel``, a cluster of its own."""
    assert shared_cluster.master_address() == shared_cluster.master.address
    yield shared_cluster
    assert shared_cluster.master_address() == shared_cluster.master.address, (
        "the test failed the shared cluster over: give it redis_sentinel"
    )


def make_pool(
    cluster: SentinelCluster, closing: list[ConnectionPool[Any]], **options: Any
) -> SentinelRedisPool:
    pool = SentinelRedisPool(cluster.sentinel_addresses, cluster.service, **{**FAST, **options})
    closing.append(pool)
    return pool


def test_connects_to_the_master_the_sentinels_name(
    cluster: SentinelCluster, closing: list[ConnectionPool[Any]]
) -> None:
    pool = make_pool(cluster, closing, size=2)
    with pool.get(5) as conn:
        assert conn.execute("SET", "k", "v") == "OK"
        assert isinstance(conn, SentinelConnection)
        assert conn.address == cluster.master.address
    assert pool.master_address == cluster.master.address
    wait_until(lambda: resp_call(cluster.replica.address, "GET", "k") == b"v", 5, "sync")


def test_a_replica_is_a_failed_connect_never_a_connection(
    cluster: SentinelCluster, closing: list[ConnectionPool[Any]]
) -> None:
    replica = cluster.replica.address

    refused: list[NotMasterError] = []

    class Misled(SentinelRedisPool):
        def discover_master(self) -> tuple[str, int]:
            return replica  # as a stale sentinel could

        def _on_connect(self, conn: Any) -> None:
            try:
                super()._on_connect(conn)
            except NotMasterError as exc:
                refused.append(exc)
                raise

    pool = Misled(cluster.sentinel_addresses, cluster.service, size=1, watch=False, **FAST)
    closing.append(pool)
    wait_until(lambda: len(refused) >= 2, 5, "two connects refused as not the master")
    with pytest.raises(PoolTimeout):  # and a get() is never handed the replica
        pool.get(0.05).__enter__()
    assert refused and "not the master" in str(refused[0])
    assert pool.stats().connect_failures >= len(refused) and pool.stats().open == 0


def test_readonly_reply_from_a_replica_raises_readonlyerror(
    cluster: SentinelCluster,
) -> None:
    connector = SocketConnector(*cluster.replica.address)
    conn = SentinelConnection(connector.connect(5), connector)
    try:
        with pytest.raises(ReadOnlyError) as info:
            conn.execute("SET", "k", "v")
        assert isinstance(info.value, OSError) and isinstance(info.value, RedisConnectionError)
        assert "READONLY" in str(info.value)
        # reads still work (a key no test writes: the cluster is shared); other errors unchanged
        assert conn.execute("GET", "never-written") is None
    finally:
        conn.close()


def test_a_dead_sentinel_is_skipped_and_the_answering_one_asked_first(
    cluster: SentinelCluster, closing: list[ConnectionPool[Any]]
) -> None:
    dead = ("127.0.0.1", free_port())
    pool = SentinelRedisPool([dead, *cluster.sentinel_addresses], cluster.service, size=1, **FAST)
    closing.append(pool)
    assert pool.discover_master() == cluster.master.address
    assert pool.sentinels[0] == cluster.sentinel_addresses[0]
    with pool.get(5) as conn:
        assert conn.execute("PING") == "PONG"


def test_no_sentinel_answers_names_the_service_and_fails_the_get() -> None:
    pool = SentinelRedisPool([("127.0.0.1", free_port())], "nosuch", size=1, watch=False, **FAST)
    try:
        with pytest.raises(MasterNotFoundError, match="nosuch"):
            pool.discover_master()
        with pytest.raises(PoolTimeout):
            pool.get(0.5).__enter__()
    finally:
        pool.close()


def test_unknown_service_name_is_not_a_master(
    cluster: SentinelCluster, closing: list[ConnectionPool[Any]]
) -> None:
    pool = SentinelRedisPool(cluster.sentinel_addresses, "other", size=1, watch=False)
    closing.append(pool)
    with pytest.raises(MasterNotFoundError, match="no master named 'other'"):
        pool.discover_master()


def test_switch_master_invalidates_connections_to_the_old_master(
    redis_sentinel: SentinelCluster, closing: list[ConnectionPool[Any]]
) -> None:
    pool = make_pool(redis_sentinel, closing, min_size=4, max_size=4)
    pool.wait_ready(10)
    redis_sentinel.failover()
    wait_until(lambda: pool.switches == 1, 20, "+switch-master to reach the pool")
    assert pool.master_address == redis_sentinel.replica.address
    assert pool.stats().discarded.invalidated >= 4  # the idle ones, at once
    with pool.get(5) as conn:
        assert isinstance(conn, SentinelConnection)
        assert conn.address == redis_sentinel.replica.address
        assert conn.execute("SET", "after", "1") == "OK"


def test_watchers_hold_no_strong_reference_and_stop_on_close(
    cluster: SentinelCluster,
) -> None:
    pool = SentinelRedisPool(cluster.sentinel_addresses, cluster.service, size=1)
    with gevent.Timeout(10):
        while pool.master_address is None:  # the watchers' first subscription asks for it
            gevent.sleep(0.01)
    assert pool.watching == 3
    pool.close()
    with gevent.Timeout(5):
        while pool.watching:
            gevent.sleep(0.01)
    ref = weakref.ref(pool)
    del pool
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize(
    ("args", "kwargs", "name"),
    [
        (([], "m"), {}, "sentinels"),
        (("127.0.0.1:26379", "m"), {}, "sentinels"),
        (([("127.0.0.1", 0)], "m"), {}, "port"),
        (([("127.0.0.1", 26379)], ""), {}, "service_name"),
        (([("127.0.0.1", 26379)], "m"), {"sentinel_timeout": 0}, "sentinel_timeout"),
        (([("127.0.0.1", 26379)], "m"), {"host": "x"}, "host"),
    ],
)
def test_bad_arguments_are_rejected(args: Any, kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises((TypeError, ValueError), match=name):
        SentinelRedisPool(*args, **kwargs)


def test_failover_under_write_load_with_retry_fails_no_write(
    redis_sentinel: SentinelCluster,
) -> None:
    run = run_failover(redis_sentinel, writers=30, use_retry=True, after=1.0)
    assert run.failed == 0, run.line()
    assert run.recovery_s is not None and run.recovery_s < 10, run.line()
    assert run.switches_seen == 1 and run.invalidated > 0, run.line()
    # once the pool heard +switch-master, only writes already in flight may reach the old master
    assert run.writes_to_old_after_heard <= 20, run.line()


def test_master_crash_under_write_load_with_retry_fails_no_write(
    redis_sentinel: SentinelCluster,
) -> None:
    run = run_failover(redis_sentinel, writers=30, use_retry=True, crash=True, after=1.0)
    assert run.failed == 0, run.line()
    assert run.recovery_s is not None and run.recovery_s < 15, run.line()
