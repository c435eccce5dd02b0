"""Shared fixtures: real servers on loopback, pools over them, sync points that wait on state."""

from __future__ import annotations

import gc
import itertools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from gevent import socket
from gevent.event import Event

import geventconnpool
from geventconnpool import ConnectionPool
from geventconnpool.testing import FaultProxy, PingServer, ping

from .servers import wait_until

__all__ = [
    "FakeConn",
    "FakePool",
    "SocketPool",
    "hold",
    "live_greenlets",
    "wait_until",
    "warmest",
]


#: Fixtures that start a real server (tests/servers.py) or need an optional extra: a test using
#: one is ``integration``.
SERVER_FIXTURES = frozenset(
    {
        "redis_server",
        "fresh_redis",
        "redis_trio",
        "tls_redis",
        "redis_sentinel",
        "postgres_server",
        "pgbouncer",
        "tls_ca",
    }
)
#: Markers that name a real server: they make a test ``integration`` too.
SERVER_MARKERS = frozenset({"redis", "postgres"})
CONTRIB = Path(__file__).parent / "contrib"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every test exactly one of ``core`` and ``integration`` (pyproject.toml says what
    each means), so that ``-m core`` selects by rule rather than by a hand-kept list of files.

    ``integration``: marked so (explicitly or by ``redis``/``postgres``), using a fixture of
    :data:`SERVER_FIXTURES`, or under tests/contrib. Everything else is ``core``: it runs
    against the installed package with nothing but the test tools (scripts/ci-package).
    """
    for item in items:
        names = {mark.name for mark in item.iter_markers()}
        if "core" in names:
            continue
        if (
            "integration" in names
            or names & SERVER_MARKERS
            or SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
            or item.path.is_relative_to(CONTRIB)
        ):
            if "integration" not in names:
                item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.core)


def pytest_report_header() -> str:
    where = Path(geventconnpool.__file__).parent
    return f"geventconnpool {geventconnpool.__version__} from {where}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """After a run of tests/test_docs.py: how many doc blocks were skipped as fragments."""
    docs = sys.modules.get("tests.test_docs")
    if docs is not None:
        counts = docs.fragment_counts()
        where = ", ".join(f"{page} {n}" for page, n in counts.items()) or "none"
        terminalreporter.write_line(
            f"docs: {sum(counts.values())} fragment blocks skipped ({where})"
        )


def pytest_sessionstart(session: pytest.Session) -> None:
    """With ``GEVENTCONNPOOL_EXPECT_PREFIX`` (set by scripts/ci-package), refuse to test any
    ``geventconnpool`` but the one installed under that prefix: CI tests the wheel, not the
    checkout."""
    prefix = os.environ.get("GEVENTCONNPOOL_EXPECT_PREFIX")
    package = Path(geventconnpool.__file__).resolve()
    if prefix and not package.is_relative_to(Path(prefix).resolve()):
        pytest.exit(f"testing {package}, not the package installed under {prefix}", returncode=4)


class SocketPool(ConnectionPool[socket.socket]):
    """A pool of plain TCP sockets to ``address``, with a PING keepalive.

    ``opened`` lists every socket connected; with ``gate`` (an Event, also assignable later)
    each connect waits for it after the TCP connect, so a test holds connects in flight.
    """

    def __init__(
        self, *args: Any, address: tuple[str, int], gate: Event | None = None, **kwargs: Any
    ) -> None:
        self.address = address
        self.gate = gate
        self.opened: list[socket.socket] = []
        super().__init__(*args, **kwargs)

    def _new_connection(self) -> socket.socket:
        sock = socket.create_connection(self.address)
        self.opened.append(sock)
        if self.gate is not None:
            try:
                self.gate.wait()
            except BaseException:  # killed by close() while held: the pool never saw it
                sock.close()
                raise
        return sock

    def _keepalive(self, conn: socket.socket) -> None:
        ping(conn)


class FakeConn:
    """A connection object with no socket, for bookkeeping tests."""

    _ids = itertools.count(1)

    def __init__(self) -> None:
        self.id = next(self._ids)
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"<FakeConn {self.id}{' closed' if self.closed else ''}>"


class FakePool(ConnectionPool[FakeConn]):
    """A pool of FakeConns; ``fail`` makes connects raise, ``gate`` makes them wait."""

    SPAWN_FREQUENCY = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.made: list[FakeConn] = []
        self.fail: BaseException | None = None
        self.gate: Event | None = None
        self.pinged: list[FakeConn] = []
        super().__init__(*args, **kwargs)

    def _new_connection(self) -> FakeConn:
        if self.gate is not None:
            self.gate.wait()
        if self.fail is not None:
            raise self.fail
        conn = FakeConn()
        self.made.append(conn)
        return conn

    def _keepalive(self, conn: FakeConn) -> None:
        self.pinged.append(conn)


def live_greenlets() -> set[int]:
    """Ids of the gevent greenlets started and not finished: what a pool runs in the background."""
    return {id(g) for g in gc.get_objects() if issubclass(type(g), gevent.Greenlet) and g}


def hold(pool: Any, started: Event, release: Event) -> Any:
    """A greenlet that takes a connection and keeps it until ``release`` is set."""

    def run() -> None:
        with pool.get():
            started.set()
            release.wait()

    return gevent.spawn(run)


def warmest(pool: ConnectionPool[Any]) -> Any:
    """The connection the next get() hands out (LIFO): taken and given back, it stays on top."""
    with pool.get(timeout=5) as conn:
        return conn


@pytest.fixture
def server() -> Iterator[PingServer]:
    with PingServer() as srv:
        yield srv


@pytest.fixture
def proxy(server: PingServer) -> Iterator[FaultProxy]:
    with FaultProxy(server.address) as prx:
        yield prx


@pytest.fixture
def pools() -> Iterator[list[ConnectionPool[Any]]]:
    """Pools registered here are closed after the test, even when it fails."""
    made: list[ConnectionPool[Any]] = []
    yield made
    for pool in made:
        pool.close()


@pytest.fixture
def make_pool(server: PingServer, pools: list[ConnectionPool[Any]]) -> Callable[..., SocketPool]:
    """``make_pool(size, **options)``: a SocketPool to the PING server (or ``address=``)."""

    def make(*args: Any, address: tuple[str, int] | None = None, **kwargs: Any) -> SocketPool:
        pool = SocketPool(*args, address=address or server.address, **kwargs)
        pools.append(pool)
        return pool

    return make


@pytest.fixture
def make_fake(pools: list[ConnectionPool[Any]]) -> Callable[..., FakePool]:
    def make(*args: Any, **kwargs: Any) -> FakePool:
        pool = FakePool(*args, **kwargs)
        pools.append(pool)
        return pool

    return make
