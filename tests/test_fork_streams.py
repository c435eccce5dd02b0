"""A forked child never touches its parent's connections (issue 11, item 1).

``os.fork()`` inside a ``with pool.get()`` block, with Python's at-fork hooks (``gevent.fork``)
and without them (``fork(2)`` straight from libc, as uWSGI does): leaving the inherited block in
the child, normally, with an exception or through ``sys.exit``, runs no hook on the parent's
connection and sends nothing on it; the server (in its own process) records every command of
every connection and every connection that ended, so a byte or a FIN from the child shows. The
parent's connection keeps working afterwards. Real PostgreSQL and Redis cover the cases seen in
production: a rollback of the parent's transaction, a QUIT on the parent's connection.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.event
import pytest
from gevent import socket

from geventconnpool import ConnectionPool
from geventconnpool.testing import ping

from .apps.recording_server import NamedSocketPool, RemoteServer, local_port
from .conftest import wait_until
from .servers import postgres_server, redis_server  # noqa: F401  (fixtures, found by name)
from .test_fork import _libc_fork, _read_all, _reap

FORKS: dict[str, Callable[[], int]] = {"hooks": gevent.fork, "no-hooks": _libc_fork}
CHILD_TIMEOUT = 10.0


class CountingPool(NamedSocketPool):
    """Records every hook call with the connection it got; keepalive says who pings."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self.calls: list[tuple[str, int]] = []  # (hook, id(conn))
        super().__init__(*args, **kw)

    def _keepalive(self, conn: socket.socket) -> None:
        conn.sendall(b"PING pid-%d\r\n" % os.getpid())  # the server records who pinged
        reply = b""
        while not reply.endswith(b"\r\n") or reply.count(b"\r\n") < 2:
            chunk = conn.recv(64)
            if not chunk:
                raise ConnectionError("closed during PING")
            reply += chunk

    def _close_connection(self, conn: socket.socket) -> None:
        self.calls.append(("_close_connection", id(conn)))
        try:
            conn.sendall(b"QUIT pid-%d\r\n" % os.getpid())  # a goodbye the server records
        finally:
            conn.close()

    def _is_disconnect(self, exc: BaseException) -> bool:
        self.calls.append(("_is_disconnect", 0))
        return super()._is_disconnect(exc)


class ReleasingPool(CountingPool):
    """With an ``_on_release`` hook, so returns take the pool's general release path."""

    def _on_release(self, conn: socket.socket) -> bool:
        self.calls.append(("_on_release", id(conn)))
        return True


@pytest.fixture(scope="module")
def remote() -> Iterator[RemoteServer]:
    with RemoteServer() as srv:
        yield srv


@pytest.fixture
def closing() -> Iterator[list[ConnectionPool[Any]]]:
    made: list[ConnectionPool[Any]] = []
    yield made
    for pool in made:
        pool.close()


def _report(w: int, report: dict[str, Any]) -> None:
    data = json.dumps(report).encode()
    while data:
        data = data[os.write(w, data) :]


def _collect(r: int, pid: int) -> dict[str, Any]:
    try:
        raw = _read_all(r, CHILD_TIMEOUT + 10)
    finally:
        os.close(r)
        _reap(pid)
    report: dict[str, Any] = json.loads(raw)
    assert report.get("ok"), "the child failed:\n" + report.get("error", repr(report))
    return report


def _child_report(pool: CountingPool, watched: list[object], extra: Any = None) -> dict[str, Any]:
    """What the child saw: every hook call, and those on the parent's connections."""
    gevent.sleep(0.05)  # let the loop run: the at-fork callback, the new scheduler, refills
    ids = {id(conn) for conn in watched}
    return {
        "ok": True,
        "pid": os.getpid(),
        "calls": pool.calls,
        "on_parent": [name for name, cid in pool.calls if cid in ids],
        "extra": extra,
    }


def _fork_inside_block(
    pool: CountingPool, remote: RemoteServer, fork: Callable[[], int], how: str
) -> dict[str, Any]:
    """Fork inside ``with pool.get()``; the child leaves the block ``how``; the parent then
    pings on the connection it still holds. Returns the child's report and what the server saw."""
    r, w = os.pipe()
    pid = -1
    try:
        with pool.get(timeout=5) as conn:
            port = local_port(conn)
            said_before = list(remote.peers()["said"].get(port, []))
            pool.calls.clear()  # from here on: the child's calls (and the parent's)
            pid = fork()
            if pid == 0:
                os.close(r)
                if how == "raise":
                    raise ConnectionResetError("the child's request failed")
                if how == "exit":
                    sys.exit(3)
            else:
                os.close(w)
                report = _collect(r, pid)
                ping(conn)  # the parent's connection still answers, after the child is gone
    except (ConnectionResetError, SystemExit):
        if pid != 0:
            raise
    finally:
        if pid == 0:  # the child left the block: report, and never return into pytest
            code = 1
            try:
                with gevent.Timeout(CHILD_TIMEOUT):
                    _report(w, _child_report(pool, [conn]))
                code = 0
            except BaseException:
                _report(w, {"ok": False, "error": traceback.format_exc()})
            finally:
                os._exit(code)
    report["port"] = port
    report["said_before"] = said_before
    return report


@pytest.mark.parametrize("how", ["normal", "raise", "exit"])
@pytest.mark.parametrize("fork", sorted(FORKS))
@pytest.mark.parametrize("pool_class", [CountingPool, ReleasingPool], ids=["plain", "on_release"])
def test_child_leaving_an_inherited_block_leaves_the_parent_connection_alone(
    remote: RemoteServer, closing: list[Any], pool_class: type[CountingPool], fork: str, how: str
) -> None:
    pool = pool_class(1, address=remote.address)
    closing.append(pool)
    pool.wait_ready(5)

    report = _fork_inside_block(pool, remote, FORKS[fork], how)

    assert report["calls"] == [], report  # no hook ran in the child, on any connection
    peers = remote.peers()
    port = report["port"]
    assert peers["said"][port] == [*report["said_before"], "PING"]  # the parent's ping only
    assert port in peers["open"] and port not in peers["ended"]  # no FIN, no QUIT
    stats = pool.stats()
    assert stats.discarded.total == 0 and stats.created == 1  # the parent kept its connection


def _hold_all(pool: ConnectionPool[Any], n: int) -> list[Any]:
    """Take ``n`` connections at once (so each is a different one); return them."""
    conns: list[Any] = []
    done = gevent.event.Event()

    def use_one() -> None:
        with pool.get(timeout=5) as conn:
            conns.append(conn)
            done.wait()

    users = [gevent.spawn(use_one) for _ in range(n)]
    wait_until(lambda: len(conns) == n or any(g.dead for g in users), what="all taken")
    done.set()
    gevent.joinall(users, raise_error=True)
    return conns


def _run_child(fork: Callable[[], int], body: Callable[[], Any]) -> dict[str, Any]:
    r, w = os.pipe()
    pid = fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            with gevent.Timeout(CHILD_TIMEOUT):
                report = {"ok": True, "pid": os.getpid(), "result": body()}
        except BaseException:
            report = {"ok": False, "error": traceback.format_exc()}
        try:
            _report(w, report)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    return _collect(r, pid)


def test_hookless_child_does_not_keepalive_the_parent_connections(
    remote: RemoteServer, closing: list[Any]
) -> None:
    """The child's copy of the scheduler must not ping the parent's sockets (0 in 0.5 s)."""
    pool = CountingPool(2, address=remote.address, keepalive=0.02, keepalive_jitter=0.0)
    closing.append(pool)
    pool.wait_ready(5)
    inherited = _hold_all(pool, 2)
    ports = {local_port(conn) for conn in inherited}
    wait_until(lambda: all(len(_said_pings(remote, p)) >= 1 for p in ports), what="pings")

    def idle_in_child() -> dict[str, Any]:
        gevent.sleep(0.5)
        return _child_report(pool, inherited)

    pool.calls.clear()
    report = _run_child(_libc_fork, idle_in_child)

    child = f"pid-{report['pid']}"
    said = remote.peers()["said"]
    assert all(child not in said[p] for p in ports)  # "PING pid-<child>" never on the parent's
    assert report["result"]["on_parent"] == []
    assert sum(f"PING {child}" in cmds for cmds in said.values()) >= 1  # it pinged its own
    peers = remote.peers()
    assert ports <= set(peers["open"]) and not ports & set(peers["ended"])
    with pool.get(timeout=5) as conn:
        ping(conn)


def _said_pings(remote: RemoteServer, port: str) -> list[str]:
    said: list[str] = remote.peers()["said"].get(port, [])
    return [c for c in said if c.startswith("PING")]


ACTIONS: dict[str, Callable[[ConnectionPool[Any]], None]] = {
    "close": lambda pool: pool.close(),
    "invalidate": lambda pool: pool.invalidate(),
    "resize": lambda pool: pool.resize(min_size=0, max_size=1),
}


@pytest.mark.parametrize("action", sorted(ACTIONS))
@pytest.mark.parametrize("fork", sorted(FORKS))
def test_close_in_the_child_sends_nothing_on_the_parent_connections(
    remote: RemoteServer, closing: list[Any], fork: str, action: str
) -> None:
    """close(), invalidate() or resize() as the child's first call: nothing of the parent's."""
    pool = ReleasingPool(2, address=remote.address)
    closing.append(pool)
    pool.wait_ready(5)
    conns = _hold_all(pool, 2)
    ports = [local_port(conn) for conn in conns]
    before = remote.peers()["said"]

    def close_at_once() -> dict[str, Any]:
        ACTIONS[action](pool)  # the first thing the child does: before any loop callback ran
        return _child_report(pool, conns)

    pool.calls.clear()
    report = _run_child(FORKS[fork], close_at_once)

    assert report["result"]["on_parent"] == [], report
    peers = remote.peers()
    assert all(peers["said"][p] == before[p] for p in ports)  # no QUIT, no byte
    assert set(ports) <= set(peers["open"]) and not set(ports) & set(peers["ended"])
    assert {local_port(conn) for conn in _hold_all(pool, 2)} == set(ports)
    for conn in conns:
        ping(conn)  # both still answer (the parent sent nothing since: no reply is pending)


# --------------------------------------------------------------------------- real servers
def test_child_does_not_roll_back_the_parent_transaction(
    postgres_server: Any,  # noqa: F811
) -> None:
    import psycopg2  # in the test extra

    from geventconnpool.contrib.dbapi import DbApiPool

    pool = DbApiPool(psycopg2.connect, postgres_server.dsn, size=1)
    try:
        with pool.get(timeout=10) as conn:
            cur = conn.cursor()
            cur.execute("CREATE TABLE IF NOT EXISTS fork_streams (pid int)")
            cur.execute("DELETE FROM fork_streams")
            conn.commit()
        r, w = os.pipe()
        pid = -1
        try:
            with pool.get(timeout=10) as conn:
                cur = conn.cursor()
                cur.execute("INSERT INTO fork_streams VALUES (%s)", (os.getpid(),))  # open txn
                pid = gevent.fork()
                if pid != 0:  # the child just leaves the block
                    os.close(w)
                    _collect(r, pid)
                    conn.commit()  # still the parent's own transaction
        finally:
            if pid == 0:
                _report(w, {"ok": True})
                os._exit(0)
        with pool.get(timeout=10) as conn:
            cur = conn.cursor()
            cur.execute("SELECT pid FROM fork_streams")
            assert cur.fetchall() == [(os.getpid(),)]
        assert pool.stats().discarded.total == 0
    finally:
        pool.close()


def test_child_raising_in_an_inherited_redis_block_sends_no_quit(
    redis_server: Any,  # noqa: F811
) -> None:
    from geventconnpool.contrib.redis import RedisPool

    pool = RedisPool(port=redis_server.port, size=1)
    try:
        r, w = os.pipe()
        pid = -1
        try:
            with pool.get(timeout=5) as conn:
                conn.execute("CLIENT", "SETNAME", "fork-streams-parent")
                pid = gevent.fork()
                if pid == 0:
                    raise ConnectionResetError("the child's command failed")
                os.close(w)
                _collect(r, pid)
                assert conn.execute("PING") == "PONG"  # the same session: no QUIT from the child
                assert conn.execute("CLIENT", "GETNAME") == b"fork-streams-parent"
        except ConnectionResetError:
            if pid != 0:
                raise
        finally:
            if pid == 0:
                _report(w, {"ok": True})
                os._exit(0)
        assert pool.stats().discarded.total == 0
    finally:
        pool.close()
