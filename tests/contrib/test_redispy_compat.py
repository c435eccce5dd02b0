"""RedisPyConnectionPool behaves as redis-py's own pool where redis-py code depends on it
(issue 19, defects 10, 11 and 12): errors redis-py code catches, connections opened on demand,
no reconnect outside the pool, threads explained, connect failures that name the address."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import gevent
import pytest
from hypothesis import given
from hypothesis import strategies as st

redis = pytest.importorskip("redis")

from redis.backoff import NoBackoff  # noqa: E402
from redis.retry import Retry  # noqa: E402

from geventconnpool import PoolError, PoolTimeout, PoolUnavailable, retry  # noqa: E402
from geventconnpool.contrib import redispy as adapter  # noqa: E402
from geventconnpool.contrib.redispy import RedisPyConnectionPool  # noqa: E402
from tests.servers import LOOPBACK, RedisServer, free_port, resp_call  # noqa: E402

from ._fuzz import fuzz, fuzz_timeout  # noqa: E402

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


def make(port: int, closing: list[Any], **options: Any) -> RedisPyConnectionPool:
    pool = RedisPyConnectionPool(LOOPBACK, port, **options)
    closing.append(pool)
    return pool


def server_connections(server: RedisServer) -> int:
    info = resp_call(server.address, "INFO", "stats").decode()
    for line in info.splitlines():
        if line.startswith("total_connections_received:"):
            return int(line.split(":")[1])
    raise AssertionError("no total_connections_received in INFO")


# -- 10: no reconnect in place ---------------------------------------------------------------


def test_redis_pys_retry_never_reconnects_a_pooled_connection_in_place(
    fresh_redis: RedisServer, closing: list[Any]
) -> None:
    # redis-py's Retry reconnects a connection in place after a failure; a pooled connection
    # reconnects only through the pool, so every connection the server sees is one the pool
    # made (and counted, with its backoff and fail-fast).
    pool = make(fresh_redis.port, closing, max_size=1, timeout=5)
    pool.set_retry(Retry(NoBackoff(), 3))
    client = redis.Redis(connection_pool=pool, single_connection_client=True)
    assert client.ping()
    before_server, before_pool = server_connections(fresh_redis), pool.stats().created
    fresh_redis.command("CLIENT", "KILL", "TYPE", "normal")  # the server drops our connection
    with pytest.raises(redis.ConnectionError) as info:
        client.ping()  # 0.2.x: redis-py reconnected in place, outside the pool's accounting
    assert isinstance(info.value, adapter.ConnectionLost)
    client.close()  # releases the lost connection: discarded
    assert pool.stats().discarded.release == 1

    @retry(exc_classes=pool.exc_classes, max_failures=2, interval=0)
    def ping() -> Any:
        return redis.Redis(connection_pool=pool).ping()

    assert ping()
    made_by_pool = pool.stats().created - before_pool
    assert made_by_pool == 1
    # the server's count also has the CLIENT KILL and the INFO connections of this test
    assert server_connections(fresh_redis) - before_server == made_by_pool + 2


# -- 11 (a): what redis-py code catches ------------------------------------------------------


def test_a_down_server_raises_a_redis_connection_error_promptly(closing: list[Any]) -> None:
    pool = make(free_port(), closing, max_size=2, timeout=5, reconnect_delay=0.01)
    client = redis.Redis(connection_pool=pool)
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError) as info:
        client.ping()
    assert isinstance(info.value, PoolError)
    assert time.monotonic() - started < 4  # not the pool's whole 5 s timeout
    # fail_fast: once the backend is known down, at once
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError) as info:
        client.ping()
    assert isinstance(info.value, PoolUnavailable)
    assert time.monotonic() - started < 0.5
    assert "connect" in repr(info.value.__cause__) or info.value.__cause__ is None


def test_redis_pys_retry_catches_what_the_pool_raises(closing: list[Any]) -> None:
    pool = make(free_port(), closing, max_size=1, timeout=0.3, reconnect_delay=0.01)
    client = redis.Redis(connection_pool=pool)
    failures: list[BaseException] = []
    with pytest.raises(redis.ConnectionError):
        Retry(NoBackoff(), 2).call_with_retry(client.ping, failures.append)
    assert len(failures) == 3  # 0.2.x: PoolTimeout escaped the Retry at the first attempt
    for error in failures:
        assert isinstance(error, (PoolTimeout, PoolUnavailable))


def test_a_pool_timeout_with_a_healthy_server_is_both_too(
    redis_server: RedisServer, closing: list[Any]
) -> None:
    pool = make(redis_server.port, closing, max_size=1, timeout=0.05)
    held = pool.get_connection()
    try:
        with pytest.raises(redis.ConnectionError) as info:
            pool.get_connection()
        assert isinstance(info.value, PoolTimeout)
        assert isinstance(info.value, adapter.PoolTimeoutError)
        assert "PoolTimeoutError(" in repr(info.value)
    finally:
        pool.release(held)


# -- 11 (b): on demand, as redis-py ----------------------------------------------------------


def test_with_only_max_size_connections_open_on_demand_and_disconnect_reopens_none(
    redis_server: RedisServer, closing: list[Any]
) -> None:
    pool = make(redis_server.port, closing, max_size=10)
    gevent.idle()
    assert pool.stats().open == 0  # 0.2.x: 10 connections opened up front
    client = redis.Redis(connection_pool=pool)
    assert client.ping()
    assert pool.stats().open == 1
    pool.disconnect()
    gevent.idle()
    stats = pool.stats()
    assert stats.open == 0 and stats.connecting == 0  # 0.2.x: all 10 reopened
    with_size = make(redis_server.port, closing, size=2)
    with_size.wait_ready(5)
    assert with_size.stats().open == 2  # an explicit size still keeps them open


# -- 11 (c): OS threads ----------------------------------------------------------------------


def test_a_real_os_thread_gets_an_error_that_says_what_to_do(
    redis_server: RedisServer, closing: list[Any]
) -> None:
    pool = make(redis_server.port, closing, max_size=1)
    errors: list[BaseException] = []

    def in_a_thread() -> None:
        try:
            pool.get_connection()
        except BaseException as exc:  # reported to the test
            errors.append(exc)

    thread = threading.Thread(target=in_a_thread)  # a real OS thread: not monkey-patched here
    thread.start()
    thread.join(10)
    assert len(errors) == 1
    message = str(errors[0])
    assert isinstance(errors[0], RuntimeError)
    assert "run_in_thread" in message and "monkey.patch_all()" in message
    assert "create one pool per thread" in message


# -- 12: connect failures name the address and errno -------------------------------------------


def test_connect_failures_in_the_log_name_the_address_and_errno(
    closing: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    pool = make(port, closing, max_size=1, timeout=0.3, reconnect_delay=0.01, fail_fast=False)
    with caplog.at_level(logging.WARNING, logger="geventconnpool"), pytest.raises(PoolTimeout):
        pool.get_connection()
    lines = [r.getMessage() for r in caplog.records if "connect failed" in r.getMessage()]
    assert lines, caplog.text
    assert f"{LOOPBACK}:{port}" in lines[0] and "111" in lines[0], lines[0]
    assert "network:ConnectionError" not in caplog.text


# -- a hostile server through the adapter ------------------------------------------------------


@pytest.fixture
def hostile() -> Any:
    from ._fakes import HostileRedis, InThread

    # its own thread: redis-py's sockets block this one (no monkey-patching in the tests)
    runner = InThread(lambda: HostileRedis(only=b"GET"))
    yield runner.server
    runner.stop()


@fuzz_timeout
@given(garbage=st.binary(max_size=200), close=st.booleans(), token=st.binary(min_size=1))
@fuzz(50)
def test_after_any_reply_through_the_adapter_the_next_caller_gets_its_own(
    hostile: Any, garbage: bytes, close: bool, token: bytes
) -> None:
    from ._fakes import close_after

    pool = RedisPyConnectionPool(
        LOOPBACK,
        hostile.port,
        max_size=1,
        timeout=5,
        connection_kwargs={"socket_timeout": 0.2, "protocol": 2},  # the fake speaks RESP2
    )
    try:
        client = redis.Redis(connection_pool=pool)
        hostile.script = [close_after(garbage) if close else garbage + b"\r\n"]
        started = time.monotonic()
        try:
            client.get("k")
        except (redis.RedisError, UnicodeDecodeError):
            pass  # redis-py's own parser decides what the garbage means
        assert time.monotonic() - started < 0.2 + 2.0
        assert not hostile.script
        assert client.echo(token) == token
    finally:
        pool.close()


def test_a_subscriber_keeps_redis_pys_reconnect_and_resubscribe(
    fresh_redis: RedisServer, closing: list[Any]
) -> None:
    # A PubSub's connection is dedicated for its life (never handed out again): redis-py's own
    # reconnect-and-resubscribe after a lost connection is kept for it.
    pool = make(fresh_redis.port, closing, max_size=2, timeout=5)
    client = redis.Redis(connection_pool=pool)
    pubsub = client.pubsub()
    pubsub.subscribe("news")
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    fresh_redis.command("CLIENT", "KILL", "TYPE", "pubsub")
    with pytest.raises(redis.ConnectionError):  # redis-py reports the loss once ...
        for _ in range(50):
            pubsub.get_message(timeout=0.1)
    resubscribed = pubsub.get_message(timeout=2)  # ... then reconnects and resubscribes
    assert resubscribed is not None and resubscribed["type"] == "subscribe"
    client.publish("news", "hello")
    message = pubsub.get_message(timeout=2)
    assert message is not None and message["data"] == b"hello"
    pubsub.close()
