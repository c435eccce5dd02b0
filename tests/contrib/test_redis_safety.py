"""RedisPool never crosses streams: pub/sub and other modes, interrupted calls, forks, hostile
servers (limits, deadlines), error classes, errors that say where, argument validation.

Issues 15 (items 1, 4, 7) and 11 (items 1c, 2, 3, 7).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.server
import gevent.socket
import pytest

from geventconnpool import PoolTimeout, retry
from geventconnpool.contrib._resp import Limits, RespReader
from geventconnpool.contrib.redis import (
    BusyLoadingError,
    ProtocolError,
    ReadOnlyError,
    RedisConnection,
    RedisConnectionError,
    RedisPool,
    RedisTimeoutError,
    ResponseError,
)
from geventconnpool.contrib.tcp import probe_socket
from geventconnpool.testing import FaultProxy
from tests.servers import LOOPBACK, RedisServer, free_port, wait_until

pytestmark = [pytest.mark.timeout(60)]

Handler = Callable[[Any], None]


@pytest.fixture
def fake_server() -> Iterator[Callable[[Handler], int]]:
    """Start scripted RESP servers on loopback: ``port = fake_server(handler)``."""
    servers: list[gevent.server.StreamServer] = []

    def start(handler: Handler) -> int:
        server = gevent.server.StreamServer((LOOPBACK, 0), lambda sock, _addr: handler(sock))
        server.start()
        servers.append(server)
        return int(server.server_port)

    yield start
    for server in servers:
        server.stop(timeout=0)


def read_command(sock: Any) -> bool:
    """Read (roughly) one small RESP command; False at EOF."""
    return bool(sock.recv(65536))


def replying(*replies: bytes) -> Handler:
    """A handler answering each command with the next reply (counted over every connection),
    then ``+OK`` for ever."""
    queue = list(replies)

    def handle(sock: Any) -> None:
        while read_command(sock):
            sock.sendall(queue.pop(0) if queue else b"+OK\r\n")

    return handle


# -- issue 15.1: modes and unread data --------------------------------------------------------


@pytest.mark.redis
def test_a_subscribed_connection_never_reaches_the_next_caller(
    redis_server: RedisServer, closing: list[Any]
) -> None:
    pool = RedisPool(LOOPBACK, redis_server.port, size=1)
    closing.append(pool)
    with pool.get() as conn:
        conn.send(("SUBSCRIBE", "t:news"))
        assert conn.read_reply() == [b"subscribe", b"t:news", 1]
        assert conn.mode == "subscribed"
    redis_server.command("PUBLISH", "t:news", "hello")
    with pool.get() as conn:
        assert conn.execute("SET", "t:k", "v") == "OK"  # not [b'message', b't:news', b'hello']
    assert pool.stats().discarded.release == 1


@pytest.mark.redis
def test_a_fully_unsubscribed_connection_is_kept(
    redis_server: RedisServer, closing: list[Any]
) -> None:
    pool = RedisPool(LOOPBACK, redis_server.port, size=1)
    closing.append(pool)
    with pool.get() as conn:
        conn.send(("SUBSCRIBE", "t:a", "t:b"), ("PSUBSCRIBE", "t:p*"))
        assert [conn.read_reply()[2] for _ in range(3)] == [1, 2, 3]
        with pytest.raises(Exception, match="subscribed mode"):
            conn.execute("GET", "t:k")
        conn.send(("UNSUBSCRIBE",), ("PUNSUBSCRIBE",))
        assert sorted(conn.read_reply()[2] for _ in range(3)) == [0, 1, 2]
        assert conn.mode is None
        assert conn.execute("PING") == "PONG"
    with pool.get() as again:
        assert again is conn
    assert pool.stats().discarded.release == 0


@pytest.mark.redis
@pytest.mark.parametrize(
    "commands, mode",
    [
        ([("MONITOR",)], "monitor"),
        ([("MULTI",), ("SET", "t:m", "1")], "multi"),
        ([("SSUBSCRIBE", "t:shard")], "subscribed"),
    ],
)
def test_monitor_multi_and_shard_subscribe_are_discarded(
    redis_server: RedisServer, closing: list[Any], commands: list[tuple[str, ...]], mode: str
) -> None:
    pool = RedisPool(LOOPBACK, redis_server.port, size=1)
    closing.append(pool)
    with pool.get() as conn:
        conn.send(*commands)
        for _ in commands:
            conn.read_reply()
        assert conn.mode == mode
    with pool.get() as fresh:
        assert fresh is not conn
        assert fresh.execute("ECHO", "x") == b"x"
        assert fresh.mode is None
    assert pool.stats().discarded.release == 1


@pytest.mark.redis
def test_select_of_another_db_is_discarded(redis_server: RedisServer, closing: list[Any]) -> None:
    pool = RedisPool(LOOPBACK, redis_server.port, size=1)
    closing.append(pool)
    with pool.get() as conn:
        conn.execute("SELECT", 5)
    with pool.get() as fresh:
        assert fresh is not conn
    assert pool.stats().discarded.release == 1


@pytest.mark.redis
def test_every_hand_out_probes_for_a_dead_or_chatty_socket(
    redis_server: RedisServer, closing: list[Any]
) -> None:
    # check_idle_after=None: no checkout check at all; only the hand-out probe protects.
    pool = RedisPool(
        LOOPBACK, redis_server.port, size=1, check_idle_after=None, client_name="gcp-probe"
    )
    closing.append(pool)
    with pool.get() as first:
        first.execute("PING")
    redis_server.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    wait_until(lambda: not probe_socket(first.sock), 5, "the FIN of the killed connection")
    with pool.get() as conn:
        assert conn is not first
        assert conn.execute("PING") == "PONG"
    assert pool.stats().discarded.check == 1


# -- issue 11.2: an interrupted exchange poisons the connection ---------------------------------


@pytest.fixture
def slow_redis(redis_server: RedisServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(redis_server.address)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.mark.redis
@pytest.mark.parametrize("pipelined", [False, True])
def test_an_interrupted_call_breaks_the_connection(
    redis_server: RedisServer, slow_redis: FaultProxy, closing: list[Any], pipelined: bool
) -> None:
    redis_server.command("SET", "slow-key", "value-of-slow")
    redis_server.command("SET", "other", "value-of-other")
    pool = RedisPool(*slow_redis.address, size=1)
    closing.append(pool)
    pool.wait_ready(timeout=5)
    slow_redis.delay(0.3)
    with pytest.raises(RedisConnectionError, match="broken"), pool.get() as conn:
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(0.1):
                if pipelined:
                    conn.pipeline(("GET", "slow-key"), ("GET", "slow-key"))
                else:
                    conn.execute("GET", "slow-key")
        gevent.sleep(0.7)  # the late reply is in the socket now
        conn.execute("GET", "other")  # must not answer b"value-of-slow"
    slow_redis.delay(0)
    with pool.get() as fresh:
        assert fresh is not conn
        assert fresh.execute("GET", "other") == b"value-of-other"
    assert pool.stats().discarded.error == 1


@pytest.mark.redis
def test_a_caught_interruption_is_discarded_on_release(
    redis_server: RedisServer, slow_redis: FaultProxy, closing: list[Any]
) -> None:
    pool = RedisPool(*slow_redis.address, size=1)
    closing.append(pool)
    pool.wait_ready(timeout=5)
    slow_redis.delay(0.3)
    with pool.get() as conn:
        with gevent.Timeout(0.1, False):
            conn.execute("GET", "slow-key")
        assert conn.broken
    slow_redis.delay(0)
    with pool.get() as fresh:
        assert fresh is not conn
        assert fresh.execute("PING") == "PONG"
    assert pool.stats().discarded.release == 1


@pytest.mark.redis
def test_a_timeout_waiting_for_a_pushed_message_keeps_the_subscription(
    redis_server: RedisServer, closing: list[Any]
) -> None:
    pool = RedisPool(LOOPBACK, redis_server.port, size=1)
    closing.append(pool)
    with pool.get() as conn:
        conn.send(("SUBSCRIBE", "t:quiet"))
        conn.read_reply()
        with gevent.Timeout(0.05, False):
            conn.read_reply()  # nothing published: no byte arrived, nothing to desync
        assert not conn.broken
        redis_server.command("PUBLISH", "t:quiet", "later")
        assert conn.read_reply() == [b"message", b"t:quiet", b"later"]
    timed = RedisPool(LOOPBACK, redis_server.port, size=1, socket_timeout=0.05)
    closing.append(timed)
    with timed.get() as conn:  # the same with socket_timeout as the bound
        conn.send(("SUBSCRIBE", "t:quiet"))
        conn.read_reply()
        with pytest.raises(RedisTimeoutError):
            conn.read_reply()
        assert not conn.broken
        redis_server.command("PUBLISH", "t:quiet", "again")
        assert conn.read_reply() == [b"message", b"t:quiet", b"again"]


# -- issue 11.1c: a connection used in a forked child ------------------------------------------


@pytest.mark.redis
def test_a_forked_child_cannot_talk_through_a_reused_descriptor(
    redis_server: RedisServer, closing: list[Any]
) -> None:
    pool = RedisPool(LOOPBACK, redis_server.port, size=1)
    closing.append(pool)
    with pool.get() as conn:
        parent_id = conn.execute("CLIENT", "ID")
        old_fd = conn.fileno()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                listener = socket.create_server((LOOPBACK, 0))
                client = socket.create_connection(listener.getsockname())
                peer, _ = listener.accept()
                os.dup2(client.fileno(), old_fd)  # the old number is now the child's new socket
                try:
                    conn.execute("SET", "t:from-child", "oops")
                except RedisConnectionError as exc:
                    peer.setblocking(False)
                    try:
                        sent = peer.recv(100)
                    except BlockingIOError:
                        sent = b""
                    code = 0 if "belongs to process" in str(exc) and not sent else 3
                else:
                    code = 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        assert conn.execute("CLIENT", "ID") == parent_id  # the parent's session is untouched
        assert conn.execute("GET", "t:from-child") is None


# -- issue 11.3: hostile servers -------------------------------------------------------------


class ChunkSocket:
    """A socket stand-in returning ``data`` ``chunk`` bytes per recv()."""

    def __init__(self, data: bytes, chunk: int) -> None:
        self.data = memoryview(data)
        self.chunk = chunk
        self.recvs = 0

    def recv(self, n: int) -> bytes:
        self.recvs += 1
        piece = bytes(self.data[: min(n, self.chunk)])
        self.data = self.data[len(piece) :]
        return piece

    def settimeout(self, timeout: float | None) -> None:
        pass


def reader(data: bytes, chunk: int = 65536, **limits: int) -> RespReader:
    values = {
        "max_bulk_length": RedisPool.max_bulk_length,
        "max_elements": RedisPool.max_elements,
        "max_depth": RedisPool.max_depth,
        "max_line_length": RedisPool.max_line_length,
        **limits,
    }
    return RespReader(ChunkSocket(data, chunk), Limits(**values), None)  # type: ignore[arg-type]


def hostile(reply: bytes) -> Handler:
    def handle(sock: Any) -> None:
        read_command(sock)
        sock.sendall(reply)
        gevent.sleep(30)  # and keep the connection open, as if more was coming

    return handle


@pytest.mark.parametrize(
    "reply, match",
    [
        (b"$999999999999\r\n", "exceeds max_bulk_length"),
        (b"*999999999999\r\n", "exceeds max_elements"),
        (b"$-5\r\n", "invalid bulk string length"),
        (b"*-7\r\n", "invalid array length"),
        (b"$+5\r\nhello\r\n", "invalid bulk string length"),
        (b":1_000\r\n", "invalid integer"),
        (b"*1\r\n" * 100, "nested deeper than max_depth=64"),
        (b"+" + b"x" * 70000, "no CRLF within 65536 bytes"),
    ],
)
def test_a_hostile_reply_is_a_protocol_error_at_once(
    fake_server: Callable[[Handler], int], reply: bytes, match: str
) -> None:
    port = fake_server(hostile(reply))
    pool = RedisPool(LOOPBACK, port, size=1)
    try:
        tracemalloc.start()
        try:
            with pytest.raises(ProtocolError, match=match), pool.get(timeout=5) as conn:
                conn.execute("GET", "k")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 4 * 1024 * 1024  # nothing like the claimed size was allocated
        assert pool.stats().discarded.error == 1
    finally:
        pool.close()


def test_limits_are_overridable_by_argument_and_class_attribute(
    fake_server: Callable[[Handler], int],
) -> None:
    port = fake_server(replying(b"$20\r\n" + b"x" * 20 + b"\r\n", b"*3\r\n:1\r\n:2\r\n:3\r\n"))
    pool = RedisPool(LOOPBACK, port, size=1, max_bulk_length=10)
    try:
        with pytest.raises(ProtocolError, match="max_bulk_length=10"), pool.get() as conn:
            conn.execute("GET", "k")
    finally:
        pool.close()

    class SmallArrays(RedisPool):
        max_elements = 2

    port = fake_server(replying(b"*3\r\n:1\r\n:2\r\n:3\r\n"))
    small = SmallArrays(LOOPBACK, port, size=1)
    try:
        with pytest.raises(ProtocolError, match="max_elements=2"), small.get() as conn:
            conn.execute("LRANGE", "k", 0, -1)
    finally:
        small.close()
    with pytest.raises(ValueError, match="max_depth"):
        RedisPool(max_depth=0)


def test_an_endless_line_is_scanned_once_not_quadratically() -> None:
    # 16 MiB without CRLF, 1 KiB per recv: rescanning from the start each time would scan
    # ~128 GiB (minutes); scanning each byte once takes milliseconds.
    size = 16 * 1024 * 1024
    r = reader(b"+" + b"x" * size + b"\r\n", chunk=1024, max_line_length=size + 1)
    start = time.perf_counter()
    assert r.read() == "x" * size
    assert time.perf_counter() - start < 5
    assert r.sock.recvs > 16000  # type: ignore[attr-defined]


def test_deep_nesting_never_recurses() -> None:
    depth = 100_000
    data = b"*1\r\n" * depth + b":7\r\n"
    with pytest.raises(ProtocolError, match="nested deeper"):
        reader(data).read()
    value = reader(data, max_depth=depth).read()  # allowed: parsed without recursion
    for _ in range(depth):
        value = value[0]
    assert value == 7


def test_a_reply_deadline_covers_the_whole_reply(fake_server: Callable[[Handler], int]) -> None:
    def trickle(sock: Any) -> None:
        read_command(sock)
        for byte in b"$10\r\n0123456789\r\n":
            sock.sendall(bytes([byte]))
            gevent.sleep(0.5)

    port = fake_server(trickle)
    pool = RedisPool(LOOPBACK, port, size=1, socket_timeout=1)
    try:
        start = time.monotonic()
        with pytest.raises(RedisTimeoutError, match="socket_timeout=1"), pool.get() as conn:
            conn.execute("GET", "k")
        elapsed = time.monotonic() - start
        assert 0.9 < elapsed < 2.5, elapsed  # one deadline, not 1 s per byte
        assert pool.stats().discarded.error == 1
    finally:
        pool.close()


# -- issue 15.7: LOADING and READONLY ------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, cls",
    [
        (b"-LOADING Redis is loading the dataset in memory\r\n", BusyLoadingError),
        (b"-READONLY You can't write against a read only replica.\r\n", ReadOnlyError),
    ],
)
def test_loading_and_readonly_discard_and_are_retried(
    fake_server: Callable[[Handler], int], reply: bytes, cls: type[Exception]
) -> None:
    port = fake_server(replying(reply, reply))  # the first two commands fail
    pool = RedisPool(LOOPBACK, port, size=1)
    try:
        with pytest.raises(cls), pool.get() as conn:
            conn.execute("SET", "k", "v")
        assert issubclass(cls, RedisConnectionError)
        assert pool.stats().discarded.error == 1

        attempts = []

        @retry(exc_classes=pool.exc_classes, max_failures=3, interval=0.01)
        def write() -> str:
            attempts.append(1)
            with pool.get(timeout=5) as conn:
                result: str = conn.execute("SET", "k", "v")
                return result

        assert write() == "OK"  # the connection made for the retry answers OK
        assert len(attempts) == 2
        assert pool.stats().discarded.error == 2
    finally:
        pool.close()


def test_a_caught_loading_error_still_discards_on_release(
    fake_server: Callable[[Handler], int],
) -> None:
    port = fake_server(replying(b"-LOADING busy\r\n"))
    pool = RedisPool(LOOPBACK, port, size=1)
    try:
        with pool.get() as conn:
            with pytest.raises(BusyLoadingError):
                conn.execute("GET", "k")
        assert pool.stats().discarded.release == 1
    finally:
        pool.close()


@pytest.mark.redis
def test_wrongtype_and_err_keep_the_connection(
    redis_server: RedisServer, closing: list[Any]
) -> None:
    pool = RedisPool(LOOPBACK, redis_server.port, size=1)
    closing.append(pool)
    with pool.get() as conn:
        conn.execute("SET", "t:str", "x")
    for command in (("LPUSH", "t:str", "y"), ("NOSUCH",)):
        with pytest.raises(ResponseError) as info, pool.get() as again:
            again.execute(*command)
        assert again is conn
        assert not isinstance(info.value, RedisConnectionError)
    assert pool.stats().discarded.error == 0


# -- issue 15.4: errors that say where ---------------------------------------------------------


def test_connect_errors_and_log_lines_name_the_address(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens there
    pool = RedisPool(LOOPBACK, port, size=1, reconnect_delay=0.01)
    try:
        assert pool.name == f"redis 127.0.0.1:{port}/0"
        assert f"redis 127.0.0.1:{port}/0" in repr(pool)
        with caplog.at_level(logging.WARNING), pytest.raises(PoolTimeout) as info:
            with pool.get(timeout=0.5):
                pass
        cause = info.value.__cause__
        assert isinstance(cause, ConnectionRefusedError)
        assert f"127.0.0.1:{port}" in str(cause)
        assert isinstance(cause.__cause__, ConnectionRefusedError)  # the original, kept
        failed = [r.getMessage() for r in caplog.records if "connect failed" in r.getMessage()]
        assert failed and f"127.0.0.1:{port}" in failed[0]
    finally:
        pool.close()


def test_a_missing_unix_socket_is_named(tmp_path: Any) -> None:
    path = str(tmp_path / "nowhere.sock")
    pool = RedisPool(unix_socket_path=path, db=2, size=1, reconnect_delay=0.01)
    try:
        assert pool.name == f"redis {path}/2"
        with pytest.raises(PoolTimeout) as info, pool.get(timeout=0.5):
            pass
        assert isinstance(info.value.__cause__, FileNotFoundError)
        assert path in str(info.value.__cause__)
    finally:
        pool.close()
    named = RedisPool(size=1, name="cache", min_size=0)
    try:
        assert named.name == "cache"
    finally:
        named.close()


# -- issue 11.7: validation at construction ---------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"ssl_context": "x"}, TypeError, "ssl_context"),
        ({"password": bytearray(b"hunter2")}, TypeError, "password"),
        ({"password": b"hunter2"}, TypeError, "password"),
        ({"username": 7}, TypeError, "username"),
        ({"server_hostname": "redis.example"}, ValueError, "server_hostname"),
        ({"client_name": "has space"}, ValueError, "client_name"),
        ({"tls": "yes"}, TypeError, "tls"),
        ({"db": -1}, ValueError, "db"),
        ({"unix_socket_path": 5}, TypeError, "unix_socket_path"),
        ({"max_bulk_length": 0}, ValueError, "max_bulk_length"),
    ],
)
def test_bad_arguments_are_rejected_by_name(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match) as info:
        RedisPool(**kwargs)
    assert "hunter2" not in str(info.value)


def test_a_direct_connection_refuses_use_after_its_exchange_broke(
    fake_server: Callable[[Handler], int],
) -> None:
    port = fake_server(hostile(b"?garbage\r\n"))
    conn = RedisConnection(gevent.socket.create_connection((LOOPBACK, port)))
    try:
        with pytest.raises(ProtocolError):
            conn.execute("PING")
        with pytest.raises(RedisConnectionError, match="broken"):
            conn.execute("PING")
        assert conn.reusable() is not None
    finally:
        conn.close()
