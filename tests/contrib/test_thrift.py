"""ThriftPool and its per-call proxy against a real thriftpy2 server on loopback (kv.thrift)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import pytest

thriftpy2 = pytest.importorskip("thriftpy2")

from thriftpy2.thrift import TApplicationException  # noqa: E402
from thriftpy2.transport import TTransportException  # noqa: E402

from geventconnpool import PoolTimeout  # noqa: E402
from geventconnpool.contrib.thrift import ThriftPool  # noqa: E402
from tests.servers import LOOPBACK, ThriftServer, wait_until  # noqa: E402

pytestmark = pytest.mark.timeout(30)

kv_thrift = thriftpy2.load(str(Path(__file__).with_name("kv.thrift")), module_name="kv_thrift")


class Handler:
    def __init__(self) -> None:
        self.store: dict[str, str] = {}
        self.events: list[str] = []
        self.got_event = gevent.event.Event()
        self.calls: dict[str, int] = {}
        self.drop_next: Any = None  # called inside the next ping(): drops connections mid-call

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def ping(self) -> str:
        self._count("ping")
        if self.drop_next is not None:
            drop, self.drop_next = self.drop_next, None
            drop()  # after the hand-out probe: only the call itself can see it
        return "pong"

    def put(self, key: str, value: str) -> None:
        self.store[key] = value

    def get(self, key: str) -> str:
        self._count("get")
        if key not in self.store:
            raise kv_thrift.KeyNotFound(key=key)
        return self.store[key]

    def add(self, a: int, b: int) -> int:
        return a + b

    def echo(self, text: str) -> str:
        return text

    def record(self, event: str) -> None:
        self.events.append(event)
        self.got_event.set()

    def recorded(self) -> list[str]:
        return list(self.events)

    def crash(self) -> None:
        self._count("crash")
        raise RuntimeError("handler bug")

    def slow(self, seconds: float) -> None:
        gevent.sleep(seconds)


@pytest.fixture(params=[False, True], ids=["buffered", "framed"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[ThriftServer, Handler, bool]]:
    handler = Handler()
    server = ThriftServer(kv_thrift.KV, handler, framed=request.param)
    try:
        yield server, handler, request.param
    finally:
        server.stop()


@pytest.fixture
def pool(served: tuple[ThriftServer, Handler, bool], closing: list[Any]) -> ThriftPool:
    server, _, framed = served
    made = ThriftPool(kv_thrift.KV, LOOPBACK, server.port, framed=framed, size=2, ping="ping")
    closing.append(made)
    made.wait_ready(timeout=5)
    return made


def test_calls_through_a_checked_out_client(pool: ThriftPool) -> None:
    with pool.get() as client:
        assert client.ping() == "pong"
        client.put("k", "v")
        assert client.get("k") == "v"
        assert client.add(40, 2) == 42
        assert client.echo("héllo") == "héllo"


def test_proxy_checks_out_per_call(pool: ThriftPool) -> None:
    kv = pool.proxy()
    assert kv.ping() == "pong"
    kv.put("a", "1")
    assert kv.get("a") == "1"
    assert sorted(m for m in dir(kv) if not m.startswith("_")) == sorted(
        kv_thrift.KV.thrift_services
    )
    stats = pool.stats()
    assert stats.in_use == 0  # nothing held between calls
    assert stats.acquired >= 3


def test_proxy_shared_by_many_greenlets(pool: ThriftPool, served: Any) -> None:
    server, _, _ = served
    kv = pool.proxy()
    jobs = [gevent.spawn(kv.add, i, i) for i in range(200)]
    gevent.joinall(jobs, raise_error=True)
    assert [j.value for j in jobs] == [2 * i for i in range(200)]
    assert pool.stats().created == 2
    assert server.accepted == 2


def test_oneway_call(pool: ThriftPool, served: Any) -> None:
    _, handler, _ = served
    kv = pool.proxy()
    assert kv.record("deployed") is None  # returns at once, no reply is read
    assert handler.got_event.wait(5)
    assert handler.events == ["deployed"]
    assert kv.recorded() == ["deployed"]  # the stream is in sync after a oneway call
    stats = pool.stats()
    assert stats.created == 2
    assert stats.discarded.total == 0


def test_declared_exception_keeps_the_connection(pool: ThriftPool, served: Any) -> None:
    server, _, _ = served
    kv = pool.proxy()
    with pytest.raises(kv_thrift.KeyNotFound) as info:
        kv.get("missing")
    assert info.value.key == "missing"
    with pool.get() as client:
        with pytest.raises(kv_thrift.KeyNotFound):
            client.get("missing")
        assert client.ping() == "pong"  # same client, still in step with the server
    stats = pool.stats()
    assert stats.discarded.total == 0
    assert stats.created == 2
    assert server.accepted == 2


def test_undeclared_server_exception_keeps_the_connection_and_is_not_retried(
    pool: ThriftPool, served: Any
) -> None:
    server, handler, _ = served
    kv = pool.proxy(retries=3)
    with pytest.raises(TApplicationException) as info:
        kv.crash()
    assert info.value.type == TApplicationException.INTERNAL_ERROR
    assert handler.calls["crash"] == 1  # a server error is an answer: not retried
    assert kv.ping() == "pong"
    assert pool.stats().discarded.total == 0
    assert server.accepted == 2


def test_proxy_retries_on_a_dropped_connection(served: Any, closing: list[Any]) -> None:
    server, handler, framed = served
    pool = ThriftPool(
        kv_thrift.KV, LOOPBACK, server.port, framed=framed, size=1, check_idle_after=None
    )
    closing.append(pool)
    kv = pool.proxy(retries=2, retry_interval=0)
    assert kv.ping() == "pong"
    handler.drop_next = server.close_all  # the server drops the connection in the middle of ping
    assert kv.ping() == "pong"  # first attempt fails on the dead connection, the retry works
    assert handler.calls["ping"] == 3
    assert pool.stats().discarded.error == 1
    assert pool.stats().created == 2


def test_proxy_retries_are_logged_on_the_pool_logger(
    served: Any, closing: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    server, handler, framed = served
    pool = ThriftPool(
        kv_thrift.KV, LOOPBACK, server.port, framed=framed, size=1, check_idle_after=None,
        name="kv",
    )  # fmt: skip
    closing.append(pool)
    kv = pool.proxy(retries=1, retry_interval=0)
    assert kv.ping.__name__ == "ping"
    kv.ping()
    handler.drop_next = server.close_all
    with caplog.at_level(logging.INFO, logger="geventconnpool"):
        assert kv.ping() == "pong"
    lines = [(r.name, r.levelno, r.getMessage()) for r in caplog.records if "ping()" in r.msg]
    assert len(lines) == 1, lines
    logger, level, text = lines[0]
    assert (logger, level) == ("geventconnpool.kv", logging.INFO)
    assert text.startswith("pool 'kv': ping() failed (") and text.endswith("attempt 1 of 2")


def test_without_retries_the_connection_error_reaches_the_caller(
    served: Any, closing: list[Any]
) -> None:
    server, handler, framed = served
    pool = ThriftPool(
        kv_thrift.KV, LOOPBACK, server.port, framed=framed, size=1, check_idle_after=None
    )
    closing.append(pool)
    kv = pool.proxy(retries=0)
    kv.ping()
    handler.drop_next = server.close_all
    with pytest.raises((TTransportException, OSError)):
        kv.ping()
    assert kv.ping() == "pong"  # the broken one was discarded, a fresh one is used
    assert pool.stats().discarded.error == 1


def test_pool_timeout_is_not_retried(pool: ThriftPool) -> None:
    kv = pool.proxy(retries=5, timeout=0.05)
    holds = [pool.get(), pool.get()]
    for h in holds:
        h.__enter__()
    try:
        with pytest.raises(PoolTimeout):
            kv.ping()
        assert pool.stats().timeouts == 1  # one get(), not six
    finally:
        for h in holds:
            h.__exit__(None, None, None)


def test_half_written_request_discards_the_connection(pool: ThriftPool) -> None:
    with pool.get() as client:
        first = client
        with pytest.raises(Exception):  # noqa: B017 - the driver's own type error
            client.echo(12345)  # not a string: fails while the request is being written
    kv = pool.proxy()
    assert kv.echo("clean") == "clean"  # no garbage from the half-written request
    assert pool.stats().discarded.release == 1
    with pool.get() as client:
        assert client is not first


def test_ping_keepalive_replaces_dropped_connections(served: Any, closing: list[Any]) -> None:
    server, handler, framed = served
    pool = ThriftPool(
        kv_thrift.KV, LOOPBACK, server.port, framed=framed, size=2, ping="ping", keepalive=0.05
    )
    closing.append(pool)
    pool.wait_ready(timeout=5)
    wait_until(lambda: len(server.open) == 2, 5, "the server to serve both connections")
    server.close_all()
    wait_until(
        lambda: pool.stats().discarded.keepalive >= 2 and pool.stats().idle == 2,
        10,
        "keepalive to find both dropped connections and the pool to refill",
    )
    assert handler.calls.get("ping", 0) >= 1  # the new connections are pinged too
    assert pool.proxy().ping() == "pong"


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="thriftpy2 service"):
        ThriftPool(object(), LOOPBACK, 1, size=1)
    with pytest.raises(ValueError, match="ping"):
        ThriftPool(kv_thrift.KV, LOOPBACK, 1, ping="nope", size=1)
