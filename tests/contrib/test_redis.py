"""RedisPool against a real redis-server (Debian's), started by the fixture on 127.0.0.1."""

from __future__ import annotations

import re
import ssl
from typing import Any

import gevent
import gevent.event
import gevent.server
import gevent.socket
import pytest

from geventconnpool import PoolUnavailable, retry
from geventconnpool.contrib.redis import (
    ProtocolError,
    RedisConnection,
    RedisConnectionError,
    RedisPool,
    ResponseError,
    encode_command,
)
from tests.servers import LOOPBACK, RedisServer, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


def ping_calls(server: RedisServer) -> int:
    """How many PING commands the server has executed (INFO commandstats)."""
    info = server.command("INFO", "commandstats").decode()
    match = re.search(r"cmdstat_ping:calls=(\d+)", info)
    return int(match.group(1)) if match else 0


def test_commands_pipelines_and_types(redis_server: RedisServer, closing: list[Any]) -> None:
    pool = RedisPool(LOOPBACK, redis_server.port, size=2)
    closing.append(pool)
    with pool.get() as conn:
        assert conn.execute("SET", "t:key", "value") == "OK"
        assert conn.execute("GET", "t:key") == b"value"
        assert conn.execute("GET", "t:missing") is None
        assert conn.execute("DEL", "t:n") in (0, 1)
        assert conn.execute("INCRBY", "t:n", 5) == 5
        assert conn.execute("RPUSH", "t:list", b"a", "b", 3) == 3
        assert conn.execute("LRANGE", "t:list", 0, -1) == [b"a", b"b", b"3"]
        assert conn.pipeline(("INCR", "t:n"), ("INCR", "t:n"), ("GET", "t:n")) == [6, 7, b"7"]
        conn.execute("DEL", "t:list")


def test_error_reply_keeps_the_connection(redis_server: RedisServer, closing: list[Any]) -> None:
    pool = RedisPool(LOOPBACK, redis_server.port, size=1)
    closing.append(pool)
    with pytest.raises(ResponseError, match="unknown command"), pool.get() as conn:
        conn.execute("NOSUCHCOMMAND")
    with pool.get() as again:
        assert again is conn
        assert again.execute("PING") == "PONG"
    stats = pool.stats()
    assert stats.created == 1
    assert stats.discarded.error == 0


def test_unread_replies_discard_the_connection(
    redis_server: RedisServer, closing: list[Any]
) -> None:
    pool = RedisPool(LOOPBACK, redis_server.port, size=1)
    closing.append(pool)
    with pool.get() as conn:
        conn.send(("PING",))  # and leaves without reading the reply
    with pool.get() as fresh:
        assert fresh is not conn
        assert fresh.execute("ECHO", "mine") == b"mine"  # not the stale +PONG
    assert pool.stats().discarded.release == 1


def test_keepalive_sends_ping_and_expects_pong(
    redis_server: RedisServer, closing: list[Any]
) -> None:
    before = ping_calls(redis_server)
    pool = RedisPool(LOOPBACK, redis_server.port, size=2, keepalive=0.05, keepalive_jitter=0)
    closing.append(pool)
    pool.wait_ready(timeout=5)
    wait_until(lambda: ping_calls(redis_server) >= before + 4, 10, "keepalive PINGs")
    assert pool.stats().discarded.keepalive == 0


def test_keepalive_replaces_connections_the_server_killed(
    redis_server: RedisServer, closing: list[Any]
) -> None:
    pool = RedisPool(
        LOOPBACK, redis_server.port, size=2, keepalive=0.05, client_name="gcp-keepalive"
    )
    closing.append(pool)
    pool.wait_ready(timeout=5)
    created = pool.stats().created
    killed = redis_server.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    assert killed.startswith(b":"), killed
    wait_until(lambda: pool.stats().discarded.keepalive >= 2, 10, "keepalive discards")
    wait_until(lambda: pool.stats().idle == 2, 10, "a full pool again")
    assert pool.stats().created >= created + 2
    with pool.get() as conn:
        assert conn.execute("CLIENT", "GETNAME") == b"gcp-keepalive"


def test_checkout_check_sends_a_real_ping(redis_server: RedisServer, closing: list[Any]) -> None:
    pool = RedisPool(LOOPBACK, redis_server.port, size=1, check_idle_after=0)
    closing.append(pool)
    pool.wait_ready(timeout=5)
    before = ping_calls(redis_server)
    with pool.get() as conn:
        conn.execute("ECHO", "x")
    assert ping_calls(redis_server) == before + 1


def test_check_failure_is_hidden_from_the_caller(
    redis_server: RedisServer, closing: list[Any]
) -> None:
    pool = RedisPool(LOOPBACK, redis_server.port, size=1, check_idle_after=0, client_name="gcp-c")
    closing.append(pool)
    with pool.get() as first:
        first.execute("PING")
    redis_server.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    with pool.get() as conn:  # no error: the check found the dead one and replaced it
        assert conn is not first
        assert conn.execute("PING") == "PONG"
    assert pool.stats().discarded.check == 1


def test_unix_socket_db_and_client_name(redis_server: RedisServer, closing: list[Any]) -> None:
    pool = RedisPool(
        unix_socket_path=redis_server.unix_socket, db=3, client_name="gcp-unix", size=1
    )
    closing.append(pool)
    with pool.get() as conn:
        assert conn.execute("CLIENT", "GETNAME") == b"gcp-unix"
        conn.execute("SET", "t:db3", "here")
    tcp = RedisPool(LOOPBACK, redis_server.port, size=1)  # db 0
    closing.append(tcp)
    with tcp.get() as conn:
        assert conn.execute("GET", "t:db3") is None
        assert conn.execute("SELECT", 3) == "OK"
        assert conn.execute("GET", "t:db3") == b"here"
        conn.execute("DEL", "t:db3")
        conn.execute("SELECT", 0)


def test_auth_is_sent_on_connect(fresh_redis: RedisServer, closing: list[Any]) -> None:
    fresh_redis.command("CONFIG", "SET", "requirepass", "s3cret")
    anonymous = RedisPool(LOOPBACK, fresh_redis.port, size=1)
    closing.append(anonymous)
    with pytest.raises(ResponseError, match="NOAUTH"), anonymous.get() as conn:
        conn.execute("PING")
    wrong = RedisPool(
        LOOPBACK, fresh_redis.port, password="nope", size=1, fail_fast=True, fail_fast_after=1
    )
    closing.append(wrong)
    with pytest.raises(PoolUnavailable) as info, wrong.get(timeout=5):
        pass
    assert isinstance(info.value.__cause__, ResponseError)
    assert "WRONGPASS" in str(info.value.__cause__)
    good = RedisPool(LOOPBACK, fresh_redis.port, password="s3cret", size=1)
    closing.append(good)
    with good.get() as conn:
        assert conn.execute("PING") == "PONG"


def test_server_restart_mid_run_with_retry(fresh_redis: RedisServer, closing: list[Any]) -> None:
    """50 greenlets x 40 INCRs through @retry while the server is killed and restarted."""
    pool = RedisPool(LOOPBACK, fresh_redis.port, size=5, reconnect_delay=0.02)
    closing.append(pool)
    pool.wait_ready(timeout=5)
    halfway = gevent.event.Event()
    restarted = gevent.event.Event()
    done = [0]
    retried = [0]

    @retry(exc_classes=(OSError,), max_failures=50, interval=0.02, max_interval=0.2)
    def incr() -> int:
        try:
            with pool.get(timeout=10) as conn:
                value: int = conn.execute("INCR", "t:counter")
                return value
        except OSError:
            retried[0] += 1
            raise

    def worker() -> None:
        for i in range(40):
            incr()
            done[0] += 1
            if done[0] == 1000:
                halfway.set()
            if i == 20:
                restarted.wait()  # every worker makes requests after the restart too

    workers = [gevent.spawn(worker) for _ in range(50)]
    halfway.wait(timeout=20)
    fresh_redis.restart()  # kill -9 and start again on the same port: the data is gone
    restarted.set()
    gevent.joinall(workers, raise_error=True, timeout=40)
    assert all(w.successful() for w in workers)
    assert done[0] == 2000
    stats = pool.stats()  # noticed by a caller (retried) or by the hand-out probe (check)
    assert stats.discarded.error + stats.discarded.check >= 1, "the restart was never noticed"
    assert stats.open <= 5
    with pool.get() as conn:  # the counter restarted with the server
        assert 0 < int(conn.execute("GET", "t:counter")) <= 2000
    wait_until(lambda: pool.stats().idle == 5, 10, "a full pool again")


def test_server_restart_costs_sequential_callers_at_most_one_error(
    fresh_redis: RedisServer, closing: list[Any]
) -> None:
    pool = RedisPool(LOOPBACK, fresh_redis.port, size=4, check_idle_after=60)
    closing.append(pool)
    pool.wait_ready(timeout=5)
    held = [pool.get() for _ in range(4)]
    for ctx in held:  # all four connections used once, so all are old
        ctx.__enter__().execute("PING")
    for ctx in held:
        ctx.__exit__(None, None, None)
    fresh_redis.restart()
    errors = 0
    for _ in range(20):
        try:
            with pool.get(timeout=5) as conn:
                assert conn.execute("PING") == "PONG"
        except RedisConnectionError:
            errors += 1
    assert errors <= 1


def test_resp_encoding() -> None:
    assert encode_command(["SET", b"k", 1, 2.5]) == (
        b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n$3\r\n2.5\r\n"
    )
    with pytest.raises(TypeError):
        encode_command(["SET", None])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        encode_command([])


def test_garbage_from_the_server_is_a_connection_error() -> None:
    def serve(sock: Any, _address: Any) -> None:
        sock.recv(1024)
        sock.sendall(b"?not resp\r\n")

    server = gevent.server.StreamServer((LOOPBACK, 0), serve)
    server.start()
    conn = RedisConnection(gevent.socket.create_connection((LOOPBACK, server.server_port)))
    try:
        with pytest.raises(ProtocolError, match="unknown reply type"):
            conn.execute("PING")
        assert isinstance(ProtocolError("x"), OSError)  # so the pool discards the connection
    finally:
        conn.close()
        server.stop(timeout=0)


def test_tls_to_a_real_redis_verifies_and_resumes(
    tls_redis: RedisServer, tls_ca: Any, closing: list[Any]
) -> None:
    assert tls_redis.tls_port is not None
    untrusted = RedisPool(
        LOOPBACK, tls_redis.tls_port, tls=True, size=1, fail_fast=True, fail_fast_after=1
    )
    closing.append(untrusted)
    with pytest.raises(PoolUnavailable) as info, untrusted.get(timeout=5):
        pass
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)

    ctx = ssl.create_default_context()
    tls_ca.configure_trust(ctx)
    pool = RedisPool(LOOPBACK, tls_redis.tls_port, ssl_context=ctx, size=1, check_idle_after=0)
    closing.append(pool)
    with pool.get() as conn:
        assert conn.execute("PING") == "PONG"
        assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
    for _ in range(2):
        pool.invalidate()
        with pool.get() as conn:  # check_idle_after=0: the TLS-aware probe ran, then PING
            assert conn.execute("ECHO", "over tls") == b"over tls"
            assert conn.sock.session_reused
    assert pool.tls_stats().resumed == 2
    assert pool.stats().discarded.check == 0
