"""Code written for 0.2.1 runs unchanged: its README's examples, ported to Python 3 syntax only."""

from __future__ import annotations

import functools
import logging
import socket as stdlib_socket
from typing import Any

import gevent
import pytest
from gevent import socket

import geventconnpool
from geventconnpool import DEFAULT_EXC_CLASSES, ConnectionPool, retry
from geventconnpool.testing import PingServer

from .conftest import wait_until


def test_old_import_paths_still_work() -> None:
    from geventconnpool.pool import DEFAULT_EXC_CLASSES as old_default
    from geventconnpool.pool import ConnectionPool as OldPool
    from geventconnpool.pool import retry as old_retry

    assert OldPool is ConnectionPool
    assert old_retry is retry
    assert old_default == DEFAULT_EXC_CLASSES == (stdlib_socket.error,) == (OSError,)
    for name in ("ConnectionPool", "retry", "DEFAULT_EXC_CLASSES"):
        assert name in geventconnpool.__all__


def test_readme_subclass_example(server: PingServer) -> None:
    address = server.address

    class MyPool(ConnectionPool):  # type: ignore[type-arg]
        def _new_connection(self) -> Any:
            return socket.create_connection(address)

    pool = MyPool(20)  # always keep 20 connections open
    try:
        with pool.get() as c:
            c.send(b"PING\r\n")
            if c.recv(7) != b"+PONG\r\n":
                raise socket.error("something awful happened")
        # open counts connects in flight; the server's accept loop may lag the client's connect
        wait_until(lambda: pool.stats().idle == 20, what="20 idle connections")
        wait_until(lambda: server.accepted == 20, what="20 connections accepted")
        assert pool.stats().created == 20
    finally:
        pool.close()


def test_size_exc_classes_keepalive_positional_and_keyword(server: PingServer) -> None:
    class MyPool(ConnectionPool):  # type: ignore[type-arg]
        def _new_connection(self) -> Any:
            return socket.create_connection(server.address)

        def _keepalive(self, c: Any) -> None:
            c.send(b"PING\r\n")
            if c.recv(7) != b"+PONG\r\n":
                raise socket.error

    positional = MyPool(2, (socket.error, KeyError), 30)
    keyword = MyPool(size=2, exc_classes=(socket.error,), keepalive=30)
    try:
        assert positional.size == 2 and positional.exc_classes == (socket.error, KeyError)
        assert positional.keepalive == 30
        assert keyword.size == 2 and keyword.keepalive == 30
    finally:
        positional.close()
        keyword.close()


def test_get_yields_the_connection_object_itself() -> None:
    sentinel = object()

    class ObjectPool(ConnectionPool):  # type: ignore[type-arg]
        def _new_connection(self) -> object:
            return sentinel  # not a socket: any object is a connection

    with ObjectPool(1) as pool, pool.get() as conn:
        assert conn is sentinel


def test_spawn_frequency_staggers_the_initial_fill() -> None:
    started: list[float] = []

    class Staggered(ConnectionPool):  # type: ignore[type-arg]
        SPAWN_FREQUENCY = 0.05

        def _new_connection(self) -> object:
            started.append(gevent.get_hub().loop.now())
            return object()

    t0 = gevent.get_hub().loop.now()
    with Staggered(4) as pool:
        wait_until(lambda: len(started) == 4 and pool.stats().idle == 4)
    offsets = [t - t0 for t in started]
    # connection i starts about i * SPAWN_FREQUENCY after construction, not all at once
    for i, offset in enumerate(offsets):
        assert offset >= i * 0.05 * 0.8, offsets


def test_exc_classes_override_like_imaplib(server: PingServer) -> None:
    class ProtocolError(Exception):
        pass

    class MyPool(ConnectionPool):  # type: ignore[type-arg]
        def _new_connection(self) -> Any:
            return socket.create_connection(server.address)

    pool = MyPool(1, exc_classes=(socket.error, ProtocolError))
    try:
        with pytest.raises(ProtocolError), pool.get() as first:
            raise ProtocolError("bad greeting")
        with pool.get() as second:
            assert second is not first  # discarded, a new one was opened
        assert pool.stats().discarded.error == 1
    finally:
        pool.close()


def test_readme_retry_examples(server: PingServer, caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("compat-test")
    calls = {"n": 0}

    @retry(exc_classes=(socket.error,), logger=log, max_failures=5, interval=0.001)
    def senddata(data: bytes) -> bytes:
        calls["n"] += 1
        if calls["n"] < 3:
            raise socket.error("connection reset")
        return data

    with caplog.at_level(logging.INFO, logger="compat-test"):
        assert senddata(b"x") == b"x"
    assert calls["n"] == 3
    assert caplog.text.count("Connection broken in 'senddata'") == 2

    my_retry = functools.partial(retry, exc_classes=(socket.error,), logger=log, max_failures=1)

    @my_retry
    def always_fails() -> None:
        calls["n"] += 1
        raise socket.error("down")

    calls["n"] = 0
    with pytest.raises(socket.error):
        always_fails()
    assert calls["n"] == 2  # max_failures=1: two runs, then the error


def test_readme_keepalive_example(server: PingServer) -> None:
    pinged = gevent.event.Event()

    class MyPool(ConnectionPool):  # type: ignore[type-arg]
        def _new_connection(self) -> Any:
            return socket.create_connection(server.address)

        def _keepalive(self, c: Any) -> None:
            c.send(b"PING\r\n")
            if c.recv(7) != b"+PONG\r\n":
                raise socket.error
            pinged.set()

    pool = MyPool(2, keepalive=0.05)
    try:
        assert pinged.wait(5), "keepalive never ran"
        assert pool.stats().discarded.keepalive == 0
    finally:
        pool.close()
