"""Fork safety: a forked child never uses a connection its parent opened; the parent is unharmed.

The server runs in its own process (a forked test process would run an in-process server's
greenlets too) and records which process named each connection (``CLIENT SETNAME pid-<pid>``,
sent by ``_on_connect``). Children are real ``os.fork()`` children (``gevent.fork``); they report
through a pipe and leave with ``os._exit``.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.os
import pytest
from gevent import socket
from gevent.event import Event

from geventconnpool import ConnectionPool
from geventconnpool.testing import free_port, ping

from .apps.recording_server import ROOT, NamedSocketPool, RemoteServer, local_port
from .conftest import wait_until

CHILD_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def remote() -> Iterator[RemoteServer]:
    with RemoteServer() as srv:
        yield srv


@pytest.fixture
def named_pools() -> Iterator[Callable[..., NamedSocketPool]]:
    made: list[ConnectionPool[Any]] = []

    def make(*args: Any, pool_class: type[NamedSocketPool] = NamedSocketPool, **kw: Any) -> Any:
        pool = pool_class(*args, **kw)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close()


def _read_all(fd: int, timeout: float) -> bytes:
    data = b""
    with gevent.Timeout(timeout, AssertionError("the child did not report in time")):
        while True:
            socket.wait_read(fd)
            chunk = os.read(fd, 65536)
            if not chunk:
                return data
            data += chunk


def run_in_child(body: Callable[[], Any], fork: Callable[[], int] = gevent.fork) -> Any:
    """Run ``body`` in a forked child; return what it returned (JSON), or fail with its error."""
    r, w = os.pipe()
    pid = fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(r)
            try:
                with gevent.Timeout(CHILD_TIMEOUT):
                    report = {"ok": True, "pid": os.getpid(), "result": body()}
            except BaseException:
                report = {"ok": False, "pid": os.getpid(), "error": traceback.format_exc()}
            data = json.dumps(report).encode()
            while data:
                data = data[os.write(w, data) :]
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    try:
        raw = _read_all(r, CHILD_TIMEOUT + 10)
    finally:
        os.close(r)
        _reap(pid)
    report = json.loads(raw)
    assert report["ok"], "the child failed:\n" + report["error"]
    return report["pid"], report["result"]


def _reap(pid: int) -> None:
    try:
        with gevent.Timeout(CHILD_TIMEOUT):
            gevent.os.waitpid(pid, 0)
    except gevent.Timeout:
        os.kill(pid, 9)
        gevent.os.waitpid(pid, 0)
    except ChildProcessError:  # already reaped by gevent's child watcher
        pass


def _ports(pool: ConnectionPool[Any]) -> set[str]:
    recs = list(pool._state.idle) + list(pool._state.held)
    return {local_port(rec.conn) for rec in recs}


def _hold_all(pool: ConnectionPool[Any], n: int) -> list[str]:
    """Take ``n`` connections at once, ping each, and return their local addresses."""
    ports: list[str] = []

    def use_one(done: Event) -> None:
        with pool.get(timeout=5) as conn:
            ping(conn)
            ports.append(local_port(conn))
            done.wait()

    done = Event()
    users = [gevent.spawn(use_one, done) for _ in range(n)]
    wait_until(lambda: len(ports) == n or any(g.dead for g in users), what="all taken")
    done.set()
    gevent.joinall(users, raise_error=True)
    return ports


def test_child_gets_only_connections_it_opened(named_pools: Any, remote: RemoteServer) -> None:
    pool = named_pools(3, address=remote.address)
    pool.wait_ready(5)
    parent_ports = _ports(pool)

    child, child_ports = run_in_child(lambda: _hold_all(pool, 3))

    assert len(set(child_ports)) == 3
    assert not set(child_ports) & parent_ports
    names = remote.peers()["names"]
    assert all(names[p] == [f"pid-{child}"] for p in child_ports)


def test_get_right_after_fork_does_not_hand_out_an_inherited_one(
    named_pools: Any, remote: RemoteServer
) -> None:
    """The pid check in get() covers the moment before the at-fork callback has run."""
    pool = named_pools(2, address=remote.address)
    pool.wait_ready(5)
    parent_ports = _ports(pool)

    def first_thing() -> str:
        with pool.get(timeout=5) as conn:  # no switch to the hub before this
            ping(conn)
            return local_port(conn)

    child, port = run_in_child(first_thing)
    assert port not in parent_ports
    assert remote.peers()["names"][port] == [f"pid-{child}"]


def test_child_refills_in_the_background_with_new_maintenance(
    named_pools: Any, remote: RemoteServer
) -> None:
    pool = named_pools(3, address=remote.address)
    pool.wait_ready(5)
    before = remote.peers()["accepted"]
    parent_maint = pool._maint

    def refill() -> dict[str, Any]:
        # no get() here; the counters are inherited: 3 created by the parent, 3 by the child
        wait_until(lambda: pool.stats().created == 6 and pool.stats().idle == 3, what="refill")
        return {
            "new_scheduler": pool._maint is not parent_maint,
            "running": pool._maint._greenlet is not None and not pool._maint._greenlet.dead,
            "ports": sorted(_ports(pool)),
        }

    child, report = run_in_child(refill)
    assert report["new_scheduler"] and report["running"]
    peers = remote.peers()
    assert peers["accepted"] - before == 3  # the child's three, nothing else
    assert all(peers["names"][p] == [f"pid-{child}"] for p in report["ports"])


def test_child_closes_only_its_own_descriptors(named_pools: Any, remote: RemoteServer) -> None:
    pool = named_pools(3, address=remote.address)
    pool.wait_ready(5)
    inherited = [rec.conn for rec in pool._state.idle]

    def check() -> list[int]:
        wait_until(lambda: pool.stats().created == 6 and pool.stats().idle == 3, what="refill")
        return [conn.fileno() for conn in inherited]  # -1: detached and closed in the child

    _, filenos = run_in_child(check)
    assert filenos == [-1, -1, -1]
    assert all(conn.fileno() >= 0 for conn in inherited)  # the parent's are still open


def test_parent_connections_survive_the_child(named_pools: Any, remote: RemoteServer) -> None:
    pool = named_pools(3, address=remote.address, check_idle_after=0)
    pool.wait_ready(5)
    parent_ports = _ports(pool)
    held = pool.get(timeout=5)
    held_conn = held.__enter__()  # in use across the fork

    def use_then_exit() -> int:
        _hold_all(pool, 3)
        return pool.stats().created

    run_in_child(use_then_exit)  # the child used its pool and exited (closing its descriptors)

    ping(held_conn)
    held.__exit__(None, None, None)
    assert set(_hold_all(pool, 3)) == parent_ports  # checked (check_idle_after=0) and pinged
    assert set(remote.peers()["open"]) >= parent_ports
    stats = pool.stats()
    assert stats.discarded.total == 0 and stats.created == 3


class GatedPool(NamedSocketPool):
    """Connects block after the TCP connect (before ``_on_connect``) while ``gate`` is clear."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self.gate = Event()
        super().__init__(*args, **kw)

    def _new_connection(self) -> socket.socket:
        sock = super()._new_connection()
        try:
            self.gate.wait()
        except BaseException:  # killed by close() while held: the pool never saw this socket
            sock.close()
            raise
        return sock


def test_connect_in_flight_at_fork_is_not_finished_by_the_child(
    named_pools: Any, remote: RemoteServer
) -> None:
    """The child must not run ``_on_connect`` on a socket the parent's attempt opened."""
    before = remote.peers()["accepted"]
    pool = named_pools(1, address=remote.address, pool_class=GatedPool)
    wait_until(lambda: remote.peers()["accepted"] == before + 1, what="the TCP connect")
    assert pool.stats().connecting == 1

    def open_the_gate() -> list[str]:
        pool.gate.set()  # the child's copy of the gate
        wait_until(lambda: pool.stats().idle == 1, what="the child's own connection")
        return sorted(_ports(pool))

    child, child_ports = run_in_child(open_the_gate)
    pool.gate.set()
    wait_until(lambda: pool.stats().idle == 1, what="the parent's connection")
    with pool.get(timeout=5) as conn:
        ping(conn)  # no stray reply from a child's CLIENT SETNAME in the stream
        parent_port = local_port(conn)
    names = remote.peers()["names"]
    assert names[parent_port] == [f"pid-{os.getpid()}"]
    assert [names[p] for p in child_ports] == [[f"pid-{child}"]]


def _libc_fork() -> int:
    """fork(2) without Python's at-fork hooks, as an embedding server (uWSGI) may call it."""
    pid = int(ctypes.CDLL(None, use_errno=True).fork())
    if pid == 0:
        gevent.reinit()  # gevent itself is made fork-safe; the pool's at-fork hook never runs
    return pid


def test_pid_check_catches_a_fork_without_at_fork_hooks(
    named_pools: Any, remote: RemoteServer
) -> None:
    pool = named_pools(2, address=remote.address)
    pool.wait_ready(5)
    parent_ports = _ports(pool)

    def take_one() -> str:
        with pool.get(timeout=5) as conn:  # no I/O on it: it may be the parent's
            return local_port(conn)

    _, port = run_in_child(take_one, fork=_libc_fork)
    assert port not in parent_ports


# --------------------------------------------------------------------------- gunicorn --preload
def _http_get(address: tuple[str, int]) -> dict[str, Any]:
    with gevent.Timeout(10), socket.create_connection(address) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
    result: dict[str, Any] = json.loads(body)
    return result


def _gunicorn_has(setting: str) -> bool:
    from gunicorn.config import KNOWN_SETTINGS

    return any(s.name == setting for s in KNOWN_SETTINGS)


def _wait_listening(address: tuple[str, int], proc: subprocess.Popen[bytes]) -> None:
    def up() -> bool:
        assert proc.poll() is None, "gunicorn exited"
        try:
            socket.create_connection(address, timeout=1).close()
        except OSError:
            return False
        return True

    wait_until(up, timeout=30, what="gunicorn listening")


@pytest.mark.slow
def test_gunicorn_preload_workers_use_only_their_own_connections(tmp_path: Path) -> None:
    pytest.importorskip("gunicorn")  # in the test extra
    with RemoteServer() as remote:
        _run_gunicorn_and_check(remote, tmp_path)


def _run_gunicorn_and_check(remote: RemoteServer, tmp_path: Path) -> None:
    address = ("127.0.0.1", free_port())
    log = (tmp_path / "gunicorn.log").open("wb")
    argv = [sys.executable, "-m", "gunicorn", "-k", "gevent", "--preload", "-w", "2"]
    argv += [
        "--worker-connections",
        "2",
        "-b",
        f"{address[0]}:{address[1]}",
        "--graceful-timeout",
        "5",
    ]
    if _gunicorn_has("control_socket_disable"):  # gunicorn >= 25 opens one in $HOME by default
        argv.append("--no-control-socket")
    env = {**os.environ, "GCP_PING_PORT": str(remote.address[1])}
    proc = subprocess.Popen(
        [*argv, "tests.apps.preload_app:app"], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    try:
        _wait_listening(address, proc)
        replies: list[dict[str, Any]] = []
        with gevent.Timeout(30, AssertionError("requests did not reach both workers")):
            for _ in range(50):  # bounded: 50 rounds of 4 concurrent requests at most
                batch = [gevent.spawn(_http_get, address) for _ in range(4)]
                replies += [g.get() for g in batch]
                if len({r["pid"] for r in replies}) == 2 and len(replies) >= 8:
                    break
        peers = remote.peers()
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()

    names, master = peers["names"], proc.pid
    assert {r["master"] for r in replies} == {master}
    workers = {r["pid"] for r in replies}
    assert len(workers) == 2 and master not in workers, (tmp_path / "gunicorn.log").read_text()
    used: dict[int, set[str]] = {pid: set() for pid in workers}
    for r in replies:
        used[r["pid"]].add(r["port"])
        assert names[r["port"]] == [f"pid-{r['pid']}"]  # opened and named by that worker only
    first, second = used.values()
    assert not first & second
    owners = {peer: who for peer, (who, *_) in names.items()}
    masters = {peer for peer, who in owners.items() if who == f"pid-{master}"}
    assert len(masters) == 2  # opened by the master before the fork, and never handed out
    assert masters <= set(peers["open"])  # still open: the workers closed only their own fds
    assert all(len(who) == 1 for who in names.values())  # no connection named by two processes
