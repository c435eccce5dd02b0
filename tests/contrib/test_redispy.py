"""redis-py's client on RedisPyConnectionPool, against a real redis-server (issue 15).

Runs with whatever redis-py is installed; ``PYTHONPATH=/some/redis-4.5 pytest ...`` checks an
older one (4.5, 5.x and 8.x were run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import gevent
import gevent.event
import pytest

redis = pytest.importorskip("redis")

from redis.backoff import NoBackoff  # noqa: E402
from redis.retry import Retry  # noqa: E402

from geventconnpool import PoolTimeout, retry  # noqa: E402
from geventconnpool.contrib.redispy import RedisPyConnectionPool  # noqa: E402
from tests.contrib.test_redis import ping_calls  # noqa: E402
from tests.servers import (  # noqa: E402
    LOOPBACK,
    RedisServer,
    redis_binary,
    server_missing,
    wait_until,
)

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


def make(server: RedisServer, closing: list[Any], **options: Any) -> RedisPyConnectionPool:
    pool = RedisPyConnectionPool(LOOPBACK, server.port, **options)
    closing.append(pool)
    return pool


def test_commands(redis_server: RedisServer, closing: list[Any]) -> None:
    pool = make(redis_server, closing, max_size=2)
    r = redis.Redis(connection_pool=pool)
    assert r.set("rp:k", "v") is True
    assert r.get("rp:k") == b"v"
    r.delete("rp:n")
    assert r.incrby("rp:n", 5) == 5
    assert r.mget("rp:k", "rp:missing") == [b"v", None]
    with pytest.raises(redis.ResponseError):
        r.lpush("rp:k", "x")  # WRONGTYPE keeps the connection
    text = redis.Redis(
        connection_pool=make(
            redis_server, closing, max_size=1, connection_kwargs={"decode_responses": True}
        )
    )
    assert text.get("rp:k") == "v"
    stats = pool.stats()
    assert stats.created == 1 and stats.discarded.error == 0 and stats.discarded.release == 0
    assert pool.name == f"redis 127.0.0.1:{redis_server.port}/0"


@pytest.mark.parametrize("transaction", [True, False])
def test_one_checkout_per_pipeline(
    redis_server: RedisServer, closing: list[Any], transaction: bool
) -> None:
    pool = make(redis_server, closing, max_size=2)
    r = redis.Redis(connection_pool=pool)
    before = pool.stats().acquired
    with r.pipeline(transaction=transaction) as pipe:
        for i in range(10):
            pipe.set(f"rp:p{i}", i)
        pipe.get("rp:p9")
        assert pipe.execute()[-1] == b"9"
    assert pool.stats().acquired == before + 1
    assert pool.stats().in_use == 0


def test_pubsub_gets_a_dedicated_connection_never_returned_subscribed(
    redis_server: RedisServer, closing: list[Any]
) -> None:
    pool = make(redis_server, closing, max_size=2)
    r = redis.Redis(connection_pool=pool)
    r.ping()
    pubsub = r.pubsub()
    pubsub.subscribe("rp:news")
    assert pool.stats().in_use == 1  # held by the PubSub for its whole life
    wait_until(lambda: r.publish("rp:news", "hello") == 1, 5, "the subscription")
    messages = []
    while len(messages) < 2:
        message = pubsub.get_message(timeout=5)
        assert message is not None
        messages.append(message)
    assert messages[1]["data"] == b"hello"
    pubsub.close()
    assert pool.stats().in_use == 0
    assert pool.stats().discarded.release == 1  # disconnected by redis-py, discarded by us
    r.publish("rp:news", "after")
    assert r.set("rp:k", "v") is True


def test_a_connection_released_subscribed_is_discarded(
    redis_server: RedisServer, closing: list[Any]
) -> None:
    pool = make(redis_server, closing, max_size=1)
    r = redis.Redis(connection_pool=pool)
    conn = pool.get_connection()
    conn.send_command("SUBSCRIBE", "rp:raw")
    pool.release(conn)  # without PubSub's disconnect(), confirmation unread
    wait_until(lambda: r.publish("rp:raw", "hello") == 0, 5, "the subscriber gone")
    assert r.set("rp:k", "v") is True  # not someone else's message
    assert pool.stats().discarded.release == 1


def test_socket_timeout_discards_and_recovers(
    redis_server: RedisServer, closing: list[Any]
) -> None:
    pool = make(
        redis_server,
        closing,
        max_size=1,
        timeout=5,
        connection_kwargs={"socket_timeout": 0.2, "retry": Retry(NoBackoff(), 0)},
    )
    r = redis.Redis(connection_pool=pool)
    r.delete("rp:empty")
    r.set("rp:t", "before")
    with pytest.raises(redis.TimeoutError):
        r.blpop(["rp:empty"], timeout=0.5)  # the server answers nil after 0.5 s: too late
    gevent.sleep(0.6)
    assert r.get("rp:t") == b"before"  # a fresh connection, not the late nil
    assert pool.stats().discarded.release == 1
    assert pool.stats().created == 2


def test_keepalive_sends_ping(redis_server: RedisServer, closing: list[Any]) -> None:
    before = ping_calls(redis_server)
    pool = make(redis_server, closing, size=2, keepalive=0.05, keepalive_jitter=0)
    pool.wait_ready(timeout=5)
    wait_until(lambda: ping_calls(redis_server) >= before + 4, 10, "keepalive PINGs")
    assert pool.stats().discarded.keepalive == 0


def test_checkout_check_sends_ping_and_replaces_a_killed_connection(
    redis_server: RedisServer, closing: list[Any]
) -> None:
    pool = make(
        redis_server,
        closing,
        max_size=1,
        check_idle_after=0,
        connection_kwargs={"client_name": "gcp-rp"},
    )
    r = redis.Redis(connection_pool=pool)
    first = r.client_id()
    before = ping_calls(redis_server)
    r.echo("x")
    assert ping_calls(redis_server) == before + 1  # the check: one real PING
    redis_server.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    assert r.client_id() != first  # the check found it dead; the caller saw no error
    assert pool.stats().discarded.check == 1


def test_server_restart_under_200_greenlets_with_retry(
    fresh_redis: RedisServer, closing: list[Any]
) -> None:
    # Deterministic since issue 19 (10): a connection lost in the restart is never reconnected
    # in place by redis-py, so each one the pool had is discarded (counted) when next used.
    # fail_fast=False: the callers wait through the restart instead of failing at once.
    pool = make(
        fresh_redis, closing, max_size=10, timeout=10, reconnect_delay=0.02, fail_fast=False
    )
    r = redis.Redis(connection_pool=pool)
    halfway = gevent.event.Event()
    restarted = gevent.event.Event()
    done = [0]

    @retry(exc_classes=(*pool.exc_classes, PoolTimeout), max_failures=50, interval=0.02)
    def incr() -> int:
        value: int = r.incr("rp:counter")
        return value

    def worker() -> None:
        for i in range(10):
            incr()
            done[0] += 1
            if done[0] == 1000:
                halfway.set()
            if i == 5:
                restarted.wait()  # everyone makes requests after the restart too

    workers = [gevent.spawn(worker) for _ in range(200)]
    assert halfway.wait(timeout=30)
    fresh_redis.restart()
    restarted.set()
    gevent.joinall(workers, raise_error=True, timeout=40)
    assert all(w.successful() for w in workers)
    assert done[0] == 2000
    assert 0 < int(r.get("rp:counter")) <= 2000  # the counter restarted with the server
    stats = pool.stats()
    assert stats.open <= 10
    assert stats.discarded.release + stats.discarded.check + stats.discarded.error >= 1


def test_fork_child_gets_fresh_connections_parent_untouched(
    redis_server: RedisServer, closing: list[Any]
) -> None:
    pool = make(redis_server, closing, max_size=1)
    r = redis.Redis(connection_pool=pool)
    parent_id = r.client_id()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child = redis.Redis(connection_pool=pool)
            child_id = child.client_id()
            child.set("rp:child", str(os.getpid()))
            code = 0 if child_id != parent_id else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert r.client_id() == parent_id  # same connection, still working
    assert r.get("rp:child") == str(pid).encode()
    assert pool.stats().created == 1


def test_from_url(redis_server: RedisServer, closing: list[Any]) -> None:
    pool = RedisPyConnectionPool.from_url(
        f"redis://127.0.0.1:{redis_server.port}/2?max_connections=3&socket_timeout=5",
        keepalive=30,
    )
    closing.append(pool)
    assert pool.stats().max_size == 3
    assert pool.connection_kwargs["socket_timeout"] == 5.0
    assert pool.name == f"redis 127.0.0.1:{redis_server.port}/2"
    r = redis.Redis(connection_pool=pool)
    r.set("rp:db2", "here")
    assert (
        redis.Redis(connection_pool=make(redis_server, closing, db=2, size=1)).get("rp:db2")
        == b"here"
    )
    unix = RedisPyConnectionPool.from_url(f"unix://{redis_server.unix_socket}?db=2", size=1)
    closing.append(unix)
    assert redis.Redis(connection_pool=unix).get("rp:db2") == b"here"


def test_misplaced_arguments_are_type_errors_naming_them() -> None:
    with pytest.raises(TypeError, match=r"'socket_timeout'.*connection_kwargs"):
        RedisPyConnectionPool(socket_timeout=1)
    with pytest.raises(TypeError, match="max_size"):
        RedisPyConnectionPool(max_connections=5)
    with pytest.raises(TypeError, match=r"connection_kwargs\['max_size'\] is a pool option"):
        RedisPyConnectionPool(connection_kwargs={"max_size": 3})
    with pytest.raises(TypeError, match="bogus"):
        RedisPyConnectionPool(connection_kwargs={"bogus": 1})
    with pytest.raises(TypeError, match="host"):
        RedisPyConnectionPool(connection_kwargs={"host": "x"})


def test_the_password_never_shows(redis_server: RedisServer, closing: list[Any]) -> None:
    pool = make(redis_server, closing, connection_kwargs={"password": "s3cret-pw"}, size=1)
    assert "s3cret-pw" not in repr(pool)
    assert "s3cret-pw" not in repr(redis.Redis(connection_pool=pool))
    assert "s3cret-pw" not in pool.name


def test_import_error_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "try:\n    import geventconnpool.contrib.redispy\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert 'pip install "geventconnpool[redis] @ git+https://github.com/' in out


def test_server_restart_under_200_greenlets_monkey_patched() -> None:
    """The same as a gevent app: patch_all(), so redis-py's sockets are cooperative."""
    if redis_binary() is None:
        server_missing("redis-server")
    out = subprocess.run(
        [sys.executable, "-m", "tests.contrib.redispy_run"],
        capture_output=True,
        text=True,
        timeout=55,
        check=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["ok"] == 200 and result["done"] == 2000, result
    assert 0 < result["counter"] <= 2000, result
    assert result["peak_in_use"] > 1, result  # greenlets really shared the pool concurrently
    assert result["open"] <= 10 and result["discarded"] >= 1, result
