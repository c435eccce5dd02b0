"""Interrupt every pool operation at each of its greenlet switches; the pool must survive all.

For k = 1, 2, 3, ... an operation runs once on a fresh pool of real sockets to the PING server
while a ``greenlet.settrace`` hook counts the switches of the operation's greenlets (the caller,
and the pool's connect and keepalive greenlets it starts); at the k-th switch it interrupts that
greenlet with an outer ``gevent.Timeout``, ``GreenletExit`` (a kill) or an ``OSError`` from the
backend, until the operation runs to its end without reaching a k-th switch. Two ways to
interrupt: *wake* raises the exception right where the greenlet is switched back into (as if
whatever woke it had failed); *park* throws it into the greenlet while it is blocked at its k-th
switch, before anything woke it (as gevent delivers a kill or an expiring Timeout).

After every run the pool's invariants are checked, and the first violation fails the test with
the operation, the interrupt, k and what went wrong:

- no slot lost: ``max_size`` greenlets can hold a connection each at the same time, at once;
- no socket leaked: the process's descriptors match the pool's own count, and reach the
  baseline again after ``close()``; every socket the pool opened is closed;
- no connection handed to two holders, or checked or pinged while someone holds it;
- an outer ``gevent.Timeout`` comes out of the operation as the same object;
- a connection interrupted while in use (or checked, pinged, released) is never used again, and
  no reply meant for one request is read by another (every request is an ``ECHO`` of a token);
- an interrupt of one of the pool's own greenlets is invisible to the caller;
- the pool's own greenlets are gone after ``close()``.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import gevent
import greenlet
import pytest
from gevent import socket as gsocket
from gevent.event import Event
from gevent.hub import get_hub
from greenlet import getcurrent

from geventconnpool import ConnectionPool, PoolClosed, PoolError
from geventconnpool.testing import PingServer, open_fds

from .conftest import FakeConn, FakePool, wait_until
from .servers import (
    redis_server,  # noqa: F401  (a fixture, found by name)
    resp_command,
)

KINDS = ("timeout", "kill", "backend")
MAX_K = 200  # no operation switches this often; reaching it means the harness is broken
RUN_DEADLINE = 10.0  # one run of an operation takes milliseconds; this long means it hung
SLOT_DEADLINE = 3.0  # max_size greenlets must all hold a connection within this
SETTLE_DEADLINE = 3.0  # descriptors and background greenlets must settle within this
_tokens = itertools.count(1)


class InjectedError(ConnectionResetError):
    """The backend error the harness raises at a switch point inside backend I/O."""


@dataclass
class Fired:
    """The interrupt of one run: where it landed and what it was."""

    role: str
    target: greenlet.greenlet
    exc: BaseException
    conn_id: int | None

    def __str__(self) -> str:
        using = f" while using connection #{self.conn_id}" if self.conn_id is not None else ""
        return f"{type(self.exc).__name__} into the {self.role} greenlet{using}"


@dataclass
class Probe:
    """Counts the switches of the tracked greenlets, fires the interrupt, records violations."""

    kind: str
    mode: str  # "wake" or "park"
    k: int
    roles: dict[greenlet.greenlet, str] = field(default_factory=dict)
    in_backend: dict[greenlet.greenlet, int] = field(default_factory=dict)
    using: dict[greenlet.greenlet, int] = field(default_factory=dict)
    holders: dict[int, greenlet.greenlet] = field(default_factory=dict)
    poisoned: dict[int, str] = field(default_factory=dict)
    parked: dict[greenlet.greenlet, int] = field(default_factory=dict)  # greenlet -> park serial
    violations: list[str] = field(default_factory=list)
    count: int = 0
    fired: Fired | None = None
    missed: bool = False  # park mode: the greenlet was woken before the throw could land
    outer: gevent.Timeout = field(default_factory=lambda: gevent.Timeout(RUN_DEADLINE * 6))
    forced_close: bool = False  # close(timeout) expiring closes connections still held
    tracked_once: set[str] = field(default_factory=set)

    # -- what the pool's hooks and the callers report ----------------------------------------
    def track(self, role: str, *, once: bool = False) -> None:
        """Count the current greenlet's switches from now on (``once``: only the first such)."""
        if once:
            if role in self.tracked_once:
                return
            self.tracked_once.add(role)
        self.roles[getcurrent()] = role

    @contextmanager
    def backend(self) -> Iterator[None]:
        """Backend I/O: where the ``backend`` kind of interrupt may land."""
        me = getcurrent()
        self.in_backend[me] = self.in_backend.get(me, 0) + 1
        try:
            yield
        finally:
            self.in_backend[me] -= 1

    @contextmanager
    def use(self, cid: int, what: str) -> Iterator[None]:
        """The current greenlet works on connection ``cid`` (``what``: hand-out, check...)."""
        self.touch(cid, what)
        me = getcurrent()
        before = self.using.get(me)
        self.using[me] = cid
        try:
            yield
        finally:
            if before is None:
                self.using.pop(me, None)
            else:
                self.using[me] = before

    def touch(self, cid: int, what: str) -> None:
        """Connection ``cid`` is about to be used: it must be neither poisoned nor held by another.

        Closing a poisoned connection is what should happen to it, so "closed" is not a use.
        """
        why = self.poisoned.get(cid)
        if why is not None and what != "closed":
            self.violations.append(f"connection #{cid} was used again ({what}) after {why}")
        holder = self.holders.get(cid)
        if what == "closed" and self.forced_close:
            return
        if holder is not None and holder is not getcurrent() and not holder.dead:
            self.violations.append(
                f"connection #{cid} {what} by {getcurrent()!r} while {holder!r} holds it"
            )

    @contextmanager
    def hold(self, cid: int, what: str) -> Iterator[None]:
        """The current greenlet holds connection ``cid`` (a caller's ``with`` block, a ping)."""
        with self.use(cid, what):
            self.holders[cid] = getcurrent()
            try:
                yield
            finally:
                if self.holders.get(cid) is getcurrent():
                    del self.holders[cid]

    def closing(self, cid: int) -> None:
        """``_close_connection`` runs on connection ``cid`` (the fork runs watch it)."""

    def poison(self, cid: int, why: str) -> None:
        self.poisoned.setdefault(cid, why)

    # -- the trace hook -----------------------------------------------------------------------
    def trace(self, event: str, args: tuple[greenlet.greenlet, greenlet.greenlet]) -> None:
        if self.fired is not None or event not in ("switch", "throw"):
            return
        origin, target = args
        if self.mode == "park":
            self.parked.pop(target, None)
            if origin in self.roles and not origin.dead and event == "switch":
                self._count_park(origin)
            return
        role = self.roles.get(target)
        if role is None or (self.kind == "backend" and not self.in_backend.get(target)):
            return
        self.count += 1
        if self.count == self.k:
            raise self._fire(role, target)

    def _count_park(self, origin: greenlet.greenlet) -> None:
        """``origin`` is blocking at a switch: at the k-th, throw into it while it is parked."""
        self.count += 1
        serial = self.count
        self.parked[origin] = serial
        if serial == self.k:
            get_hub().loop.run_callback(self._throw_parked, origin, serial)

    def _throw_parked(self, target: greenlet.greenlet, serial: int) -> None:
        if target.dead or self.parked.get(target) != serial:
            self.missed = True  # woken by the pool first: this switch cannot be caught parked
            return
        exc = self._fire(self.roles[target], target)
        target.throw(exc)

    def _fire(self, role: str, target: greenlet.greenlet) -> BaseException:
        exc: BaseException
        if self.kind == "timeout":
            exc = self.outer if role == "caller" else gevent.Timeout()
        elif self.kind == "kill":
            exc = greenlet.GreenletExit()
        else:
            exc = InjectedError(f"injected at switch {self.count}")
        cid = self.using.get(target)
        self.fired = Fired(role, target, exc, cid)
        if cid is not None:
            self.poison(cid, f"an interrupt ({type(exc).__name__}) while it was in use")
        return exc

    @contextmanager
    def installed(self) -> Iterator[None]:
        old = greenlet.settrace(self.trace)
        try:
            yield
        finally:
            greenlet.settrace(old)


# -- the backend: ECHO requests over real sockets -----------------------------------------------
def echo(sock: gsocket.socket, probe: Probe, cid: int) -> None:
    """One request: ``ECHO <token>``; a reply with another token means a stale reply was read."""
    token = b"t%d.%d" % (next(_tokens), os.getpid())  # the pid: a forked child's bytes show
    expected = b"$%d\r\n%s\r\n" % (len(token), token)
    with probe.backend():
        sock.sendall(b"ECHO " + token + b"\r\n")
        reply = b""
        while len(reply) < len(expected):
            chunk = sock.recv(len(expected) - len(reply))
            if not chunk:
                raise ConnectionResetError(f"connection #{cid} closed by the server")
            reply += chunk
    if reply != expected:
        probe.violations.append(
            f"connection #{cid} read {reply!r} for {token!r}: a reply left over from an "
            "interrupted request, so an interrupted connection was reused"
        )
        raise ConnectionResetError("stale reply")


class HarnessPool(ConnectionPool[gsocket.socket]):
    """Sockets to the PING server; every hook does real I/O and reports to the probe."""

    SPAWN_FREQUENCY = 0.0

    def __init__(self, *args: Any, address: tuple[str, int], probe: Probe, **kwargs: Any) -> None:
        self.address = address
        self.probe = probe
        self.sockets: list[gsocket.socket] = []
        self.ids: dict[gsocket.socket, int] = {}
        self.connectors: list[greenlet.greenlet] = []
        self.ports: dict[int, str] = {}  # cid -> the "ip:port" the server sees
        self.gate: Event | None = None  # if set: connects beyond ``gate_after`` wait on it
        self.gate_after = 0
        self.ping_gate: Event | None = None  # if set: keepalive pings wait on it
        self.track_connects = False
        self.track_pings = False
        super().__init__(*args, **kwargs)

    def cid(self, sock: gsocket.socket) -> int:
        return self.ids[sock]

    def _new_connection(self) -> gsocket.socket:
        self.connectors.append(getcurrent())
        if self.track_connects:
            self.probe.track("connect")
        if self.gate is not None and len(self.sockets) >= self.gate_after:
            self.gate.wait()
        sock = gsocket.socket(gsocket.AF_INET, gsocket.SOCK_STREAM)
        self.sockets.append(sock)
        self.ids[sock] = len(self.sockets)
        try:
            with self.probe.backend():
                sock.connect(self.address)
            host, port = sock.getsockname()[:2]
            self.ports[self.ids[sock]] = f"{host}:{port}"
        except BaseException:
            sock.close()
            raise
        return sock

    def _on_connect(self, conn: gsocket.socket) -> None:
        cid = self.cid(conn)
        with self.probe.use(cid, "set up"):
            echo(conn, self.probe, cid)

    def _keepalive(self, conn: gsocket.socket) -> None:
        if self.track_pings:
            self.probe.track("keepalive", once=True)
        cid = self.cid(conn)
        with self.probe.hold(cid, "pinged"):
            if self.ping_gate is not None:
                self.ping_gate.wait()
            echo(conn, self.probe, cid)

    def _check(self, conn: gsocket.socket) -> bool:
        cid = self.cid(conn)
        with self.probe.use(cid, "checked"):
            echo(conn, self.probe, cid)
        return True

    def _close_connection(self, conn: gsocket.socket) -> None:
        self.probe.closing(self.cid(conn))
        conn.close()


class ReleasePool(HarnessPool):
    """``_on_release`` resets the session with a round trip."""

    def _on_release(self, conn: gsocket.socket) -> bool | None:
        cid = self.cid(conn)
        with self.probe.use(cid, "released"):
            echo(conn, self.probe, cid)
        return None


class GracefulPool(HarnessPool):
    """Closing a connection says goodbye first (a round trip), as some protocols do.

    ``failing_checks`` connections fail their checkout check (and so are discarded).
    """

    failing_checks = 0

    def _close_connection(self, conn: gsocket.socket) -> None:
        cid = self.cid(conn)
        self.probe.closing(cid)
        try:
            if conn.fileno() >= 0:
                with self.probe.use(cid, "closed"), self.probe.backend():
                    conn.sendall(b"PING\r\n")  # a goodbye; what comes back does not matter
                    conn.recv(64)
        finally:
            conn.close()

    def _check(self, conn: gsocket.socket) -> bool:
        if self.failing_checks > 0:
            self.failing_checks -= 1
            return False
        return super()._check(conn)


@contextmanager
def checkout(pool: HarnessPool, timeout: float = 5.0) -> Iterator[gsocket.socket]:
    """``pool.get()`` with the probe's bookkeeping: the block holds the connection."""
    with pool.get(timeout) as conn:
        cid = pool.cid(conn)
        with pool.probe.hold(cid, "handed out"):
            yield conn


def request(pool: HarnessPool, timeout: float = 5.0) -> None:
    """One ECHO round trip on a pooled connection."""
    with checkout(pool, timeout) as conn:
        echo(conn, pool.probe, pool.cid(conn))


# -- the operations ----------------------------------------------------------------------------
@dataclass
class Env:
    """One run: the pool, its probe and the helper greenlets the operation needs."""

    pool: HarnessPool
    probe: Probe
    helpers: list[gevent.Greenlet[..., Any]] = field(default_factory=list)
    caller_done: Event = field(default_factory=Event)


@dataclass(frozen=True)
class Op:
    name: str
    run: Callable[[Env], None]  # runs in the caller greenlet
    options: dict[str, Any]
    prepare: Callable[[Env], None] | None = None
    pool_class: type[HarnessPool] = HarnessPool
    track_caller: bool = True
    track_connects: bool = False
    track_pings: bool = False
    gated: bool = False  # the 4th connect and every keepalive ping hang until the pool closes
    forced_close: bool = False  # the operation closes connections that are still held


def _ready(env: Env) -> None:
    env.pool.wait_ready(5)


def _run_request(env: Env) -> None:
    request(env.pool)


def _prepare_blocker(env: Env) -> None:
    """The only connection is held until the caller waits for it, then returned."""
    _ready(env)
    held = Event()

    def blocker() -> None:
        with checkout(env.pool) as conn:
            held.set()
            wait_until(lambda: env.pool._state.waiting or env.caller_done.is_set(), RUN_DEADLINE)
            echo(conn, env.probe, env.pool.cid(conn))

    env.helpers.append(gevent.spawn(blocker))
    held.wait(5)


def _run_keepalive(env: Env) -> None:
    """Wait until the first keepalive ping is over (the pinger is the tracked greenlet)."""
    pool = env.pool
    wait_until(
        lambda: (
            "keepalive" in env.probe.tracked_once
            and not [g for g, r in env.probe.roles.items() if r == "keepalive" and not g.dead]
        ),
        RUN_DEADLINE,
        "the first keepalive ping to end",
    )
    request(pool)


def _prepare_holder(release_after_close: bool) -> Callable[[Env], None]:
    """While close() runs: a connection is in use, one is pinged, a connect hangs."""

    def prepare(env: Env) -> None:
        pool = env.pool
        wait_until(lambda: pool.stats().idle >= 3, 5, "three idle connections")
        held = Event()

        def holder() -> None:
            try:
                with checkout(pool) as conn:
                    held.set()
                    wait_until(lambda: pool.closed, RUN_DEADLINE)
                    if release_after_close:
                        wait_until(env.caller_done.is_set, RUN_DEADLINE)
                    echo(conn, env.probe, pool.cid(conn))
            except OSError:
                if not release_after_close:
                    raise  # closed under the holder only when close(timeout) expired

        env.helpers.append(gevent.spawn(holder))
        held.wait(5)
        wait_until(lambda: pool.stats().connecting == 1, 5, "the hanging connect")
        wait_until(lambda: pool.stats().checking == 1, 5, "the hanging keepalive ping")

    return prepare


def _gate(pool: HarnessPool) -> None:
    """Three connects succeed, the fourth hangs; keepalive pings hang."""
    pool.gate = Event()
    pool.gate_after = 3
    pool.ping_gate = Event()


def _run_close(timeout: float) -> Callable[[Env], None]:
    def run(env: Env) -> None:
        env.pool.close(timeout=timeout)

    return run


def _run_resize(env: Env) -> None:
    pool = env.pool
    pool.resize(min_size=3, max_size=3)
    pool.wait_ready(5)
    with checkout(pool) as conn:
        pool.resize(min_size=0, max_size=1)
        echo(conn, env.probe, pool.cid(conn))
    pool.resize(min_size=2, max_size=2)
    pool.wait_ready(5)
    request(pool)


class AppError(ConnectionResetError):
    """The application found its connection broken."""


def _run_failing_request(env: Env) -> None:
    """A request that finds its connection broken: the pool discards it (a graceful close)."""
    try:
        with checkout(env.pool) as conn:
            echo(conn, env.probe, env.pool.cid(conn))
            raise AppError("broken")
    except AppError:
        pass


def _prepare_failing_check(env: Env) -> None:
    _ready(env)
    assert isinstance(env.pool, GracefulPool)
    env.pool.failing_checks = 1


def _run_invalidate(env: Env) -> None:
    pool = env.pool
    with checkout(pool) as conn:
        before = {pool.cid(rec.conn) for rec in pool._state.idle} | {pool.cid(conn)}
        pool.invalidate()
        for cid in before:
            env.probe.poison(cid, "invalidate()")
        echo(conn, env.probe, pool.cid(conn))
    pool.wait_ready(5)
    request(pool)


_CLOSE_OPTIONS = {"size": 4, "keepalive": 0.02, "keepalive_jitter": 0.0}
OPS = [
    Op("get_nowait", _run_request, {"size": 2}, _ready),
    Op("get_wait", _run_request, {"size": 1}, _prepare_blocker),
    Op("connect", _run_request, {"min_size": 0, "max_size": 2}, track_connects=True),
    Op("check", _run_request, {"size": 2, "check_idle_after": 0}, _ready),
    Op("check_wait", _run_request, {"size": 1, "check_idle_after": 0}, _prepare_blocker),
    Op(
        "keepalive",
        _run_keepalive,
        {"size": 2, "keepalive": 0.02, "keepalive_jitter": 0.0},
        _ready,
        track_caller=False,
        track_pings=True,
    ),
    Op("release", _run_request, {"size": 2}, _ready, pool_class=ReleasePool),
    Op("close", _run_close(5.0), _CLOSE_OPTIONS, _prepare_holder(False), GracefulPool, gated=True),
    Op(
        "close_expired",
        _run_close(0.05),
        _CLOSE_OPTIONS,
        _prepare_holder(True),
        GracefulPool,
        gated=True,
        forced_close=True,
    ),
    Op("resize", _run_resize, {"min_size": 1, "max_size": 2}, _ready),
    Op("invalidate", _run_invalidate, {"size": 2}, _ready),
    Op("discard_error", _run_failing_request, {"size": 2}, _ready, pool_class=GracefulPool),
    Op(
        "discard_check",
        _run_request,
        {"size": 2, "check_idle_after": 0},
        _prepare_failing_check,
        pool_class=GracefulPool,
    ),
]
SEQUENCES = [(kind, "wake") for kind in KINDS] + [("timeout", "park"), ("kill", "park")]


# -- one run and its checks ---------------------------------------------------------------------
def run_once(op: Op, kind: str, mode: str, k: int, server: PingServer) -> Probe:
    """Run ``op`` once, interrupted at switch ``k``; raise AssertionError on any violation."""
    probe = Probe(kind, mode, k, forced_close=op.forced_close)
    fds_before = open_fds()
    pool = op.pool_class(
        address=server.address,
        probe=probe,
        reconnect_delay=0.002,
        reconnect_max_delay=0.01,
        **op.options,
    )
    if op.gated:
        _gate(pool)
    env = Env(pool, probe)
    where = f"{op.name}: {kind} ({mode}) at switch k={k}"
    try:
        if op.prepare is not None:
            op.prepare(env)
        pool.track_connects = op.track_connects
        pool.track_pings = op.track_pings
        caught = _run_traced(op, env)
        what = f"{where}, {probe.fired or 'not interrupted'}"
        _check_outcome(probe, caught, what)
        _fail_on(probe, what)
        gevent.joinall(env.helpers, timeout=RUN_DEADLINE)
        assert all(g.dead for g in env.helpers), f"{what}: a helper greenlet hung"
        _fail_on(probe, what)
        if pool.closed:
            _check_closed(pool, what)
        else:
            _check_slots(pool, what)
            _fail_on(probe, what)
            _check_descriptors(pool, server, fds_before, what)
            pool.close()
        _check_all_closed(pool, server, fds_before, what)
    finally:
        _clean_up(env, server)
    return probe


def _clean_up(env: Env, server: PingServer) -> None:
    """Whatever happened, leave nothing behind that could upset the next run's counts."""
    pool = env.pool
    for gate in (pool.gate, pool.ping_gate):
        if gate is not None:
            gate.set()
    pool.close()
    gevent.killall(env.helpers)
    env.probe.outer.close()
    for sock in pool.sockets:
        sock.close()
    wait_until(lambda: server.active == 0, SETTLE_DEADLINE, "the server to see every close")


def _run_traced(op: Op, env: Env) -> BaseException | None:
    """Run the operation in a tracked caller greenlet; return what it raised (None if nothing)."""
    probe = env.probe
    caught: list[BaseException] = []

    def caller() -> None:
        if op.track_caller:
            probe.track("caller")
        probe.outer.start()
        try:
            op.run(env)
        except BaseException as e:
            caught.append(e)
            if not isinstance(e, greenlet.GreenletExit):
                return  # recorded; the greenlet ends cleanly
            raise
        finally:
            probe.outer.close()
            env.caller_done.set()

    with probe.installed():
        g = gevent.spawn(caller)
        g.join(RUN_DEADLINE)
    hung = not g.dead
    if hung:
        g.kill()
    assert not hung, f"{op.name}: the operation hung for {RUN_DEADLINE}s ({probe.fired})"
    return caught[0] if caught else None


def _check_outcome(probe: Probe, caught: BaseException | None, what: str) -> None:
    fired = probe.fired
    if fired is None or fired.role != "caller":
        # Not interrupted, or one of the pool's own greenlets was: the caller must not notice.
        assert caught is None, f"{what}: the operation failed: {caught!r}"
        return
    if probe.kind == "timeout":
        assert caught is probe.outer, (
            f"{what}: the outer gevent.Timeout came out as {caught!r}, not the same object"
        )
    elif probe.kind == "kill":
        assert caught is None or isinstance(caught, greenlet.GreenletExit), (
            f"{what}: a kill came out as {caught!r}"
        )
    else:
        # An injected backend error is either handled by the pool (a failed check is replaced)
        # or reaches the caller as itself; never as something else.
        assert caught is None or caught is fired.exc or isinstance(caught, PoolError), (
            f"{what}: the backend error came out as {caught!r}"
        )


def _fail_on(probe: Probe, what: str) -> None:
    assert not probe.violations, f"{what}: {probe.violations[0]}"


def _check_slots(pool: HarnessPool, what: str) -> None:
    """``max_size`` greenlets hold a connection each, all at once."""
    n = pool.max_size
    holding: list[int] = []
    errors: list[BaseException] = []
    go = Event()

    def take() -> None:
        try:
            with checkout(pool, SLOT_DEADLINE) as conn:
                echo(conn, pool.probe, pool.cid(conn))
                holding.append(pool.cid(conn))
                go.wait()
        except Exception as e:
            errors.append(e)

    takers = [gevent.spawn(take) for _ in range(n)]
    try:
        wait_until(lambda: len(holding) + len(errors) >= n, SLOT_DEADLINE + 1, "the slot check")
    finally:
        go.set()
        gevent.joinall(takers, timeout=SLOT_DEADLINE)
    _fail_on(pool.probe, what)  # a reused connection, say, is the cause of any error below
    assert not errors, (
        f"{what}: slot lost: {len(holding)} of max_size={n} connections could be held at once "
        f"({errors[0]!r}; {pool!r})"
    )
    assert len(set(holding)) == n, f"{what}: connections {holding} handed to two holders"


def _check_descriptors(pool: HarnessPool, server: PingServer, base: int, what: str) -> None:
    """Every open descriptor is the pool's: its connections (and the server's ends of them)."""

    def settled() -> bool:
        s = pool.stats()
        mine = s.idle + s.in_use
        return s.connecting == 0 and server.active == mine and open_fds() == base + 2 * mine

    try:
        wait_until(settled, SETTLE_DEADLINE)
    except AssertionError:
        pooled = {rec.conn for rec in pool._state.idle} | {rec.conn for rec in pool._state.held}
        stray = [pool.cid(s) for s in pool.sockets if s.fileno() >= 0 and s not in pooled]
        raise AssertionError(
            f"{what}: socket leaked: {open_fds() - base} descriptors open for {pool!r} "
            f"(server has {server.active}); open sockets the pool does not know: {stray}"
        ) from None


def _check_closed(pool: HarnessPool, what: str) -> None:
    with pytest.raises(PoolClosed), pool.get(0):
        pass
    s = pool.stats()
    assert s.open == 0 and s.in_use == 0, f"{what}: {pool!r} still has connections after close"


def _check_all_closed(pool: HarnessPool, server: PingServer, base: int, what: str) -> None:
    """After close(): every socket closed, descriptors back to the baseline, no greenlet left."""
    assert pool.closed
    left = [pool.cid(s) for s in pool.sockets if s.fileno() >= 0]
    assert not left, f"{what}: connections {left} still open after close()"
    try:
        wait_until(lambda: open_fds() == base and server.active == 0, SETTLE_DEADLINE)
    except AssertionError:
        raise AssertionError(
            f"{what}: {open_fds() - base} descriptors leaked after close() "
            f"(server still has {server.active} connections)"
        ) from None
    greenlets = [pool._maint._greenlet, *pool._busy, *pool.connectors]
    wait_until(lambda: all(g is None or g.dead for g in greenlets), SETTLE_DEADLINE)
    stats = pool.stats()
    assert stats.created == stats.discarded.total, (
        f"{what}: created={stats.created} but discarded={stats.discarded} after close()"
    )


def sweep(op: Op, kind: str, mode: str, server: PingServer) -> int:
    """Interrupt at k = 1, 2, ... until a run is not interrupted; returns how many runs fired."""
    fired = 0
    for k in range(1, MAX_K + 1):
        probe = run_once(op, kind, mode, k, server)
        if probe.fired is not None:
            fired += 1
        elif not probe.missed:
            return fired
    raise AssertionError(f"{op.name}: {kind} ({mode}) still interrupting at k={MAX_K}")


# -- the tests ----------------------------------------------------------------------------------
KNOWN_BUGS: dict[tuple[str, str, str], str] = {}  # (op, kind, mode) -> an open bug


def _cases() -> list[Any]:
    cases = []
    for op in OPS:
        for kind, mode in SEQUENCES:
            bug = KNOWN_BUGS.get((op.name, kind, mode))
            marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
            cases.append(pytest.param(op, kind, mode, marks=marks, id=f"{op.name}-{kind}-{mode}"))
    return cases


@pytest.fixture(scope="module")
def echo_server() -> Iterator[PingServer]:
    with PingServer() as srv:
        yield srv


@pytest.mark.parametrize(("op", "kind", "mode"), _cases())
def test_interrupt_at_every_switch_leaves_pool_whole(
    op: Op, kind: str, mode: str, echo_server: PingServer
) -> None:
    fired = sweep(op, kind, mode, echo_server)
    if kind == "backend" and op.name in ("close", "close_expired"):
        return  # close() itself does no backend I/O: nothing to interrupt
    assert fired >= 1, f"{op.name}: no switch point was ever interrupted by {kind} ({mode})"


# -- minimal reproductions of what the sweep found ---------------------------------------------
class SlowStopPingPool(FakePool):
    """Keepalive pings hang, and take 50 ms to stop when killed."""

    def _keepalive(self, conn: FakeConn) -> None:
        try:
            Event().wait()
        except greenlet.GreenletExit:
            gevent.sleep(0.05)
            raise


def test_close_interrupted_then_called_again_closes_every_connection(
    pools: list[ConnectionPool[Any]],
) -> None:
    pool = SlowStopPingPool(2, keepalive=0.01, keepalive_jitter=0.0)
    pools.append(pool)
    wait_until(lambda: pool.stats().checking == 1, 5, "a keepalive ping in flight")
    with pytest.raises(gevent.Timeout), gevent.Timeout(0.01):
        pool.close()  # interrupted while it waits for the ping to stop
    pool.close()
    wait_until(lambda: pool.stats().checking == 0, 5, "the ping to stop")
    assert [c for c in pool.made if not c.closed] == []


class SlowGoodbyePool(FakePool):
    """Every checkout check fails; closing a connection takes 50 ms (a goodbye round trip)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.closes: dict[int, int] = {}
        super().__init__(*args, **kwargs)

    def _check(self, conn: FakeConn) -> bool:
        return False

    def _close_connection(self, conn: FakeConn) -> None:
        self.closes[conn.id] = self.closes.get(conn.id, 0) + 1
        gevent.sleep(0.05)
        conn.close()


def test_interrupt_while_closing_a_connection_that_failed_its_check_discards_it_once(
    pools: list[ConnectionPool[Any]],
) -> None:
    pool = SlowGoodbyePool(1, check_idle_after=0)
    pools.append(pool)
    pool.wait_ready(5)
    first = pool.made[0]
    with pytest.raises(gevent.Timeout), gevent.Timeout(0.01), pool.get():
        pass  # never reached: the check fails, and closing the connection is interrupted
    stats = pool.stats()
    assert pool.closes[first.id] == 1
    assert stats.created == stats.idle + stats.in_use + stats.discarded.total


def test_killed_connect_attempt_is_replaced_at_once(pools: list[ConnectionPool[Any]]) -> None:
    pool = FakePool(min_size=0, max_size=1)
    pools.append(pool)
    pool.gate = Event()  # the first connect hangs
    got: list[FakeConn] = []

    def waiter() -> None:
        with pool.get(5) as conn:
            got.append(conn)

    g = gevent.spawn(waiter)
    wait_until(lambda: pool.stats().connecting == 1, 5, "the connect")
    (connector,) = pool._busy
    pool.gate = None  # the replacement connects at once
    connector.kill()
    g.join(0.3)
    assert got, f"the waiter was not served within 0.3 s: {pool!r}"


# -- a fork at every switch point ---------------------------------------------------------------
# The operation's greenlet forks at its k-th switch (gevent.fork, and fork(2) without Python's
# at-fork hooks, as uWSGI does). The child goes on with the operation, then reports through a
# pipe every use of a connection the parent had opened (handed out, checked, pinged, released
# through a hook, closed through _close_connection, set up) and leaves with os._exit; the
# parent checks the report, then that each of its connections still answers its own requests
# (no reply stolen or left over by the child), and that the server saw no byte from the child
# on any of them. At the fork the child closes its copies of the parent's descriptors and kills
# the test's helper greenlets: an application greenlet that forked in the middle of its own
# request, or a copy of one that holds a connection, is the application's business; what is
# checked is that the pool itself never uses, hands out or closes a parent connection.
# Each operation waits at least once for the pool (a switch whatever the timing; a recv from
# the server in another process may or may not switch).
def _prepare_gated_pings(env: Env) -> None:
    """Keepalive pings wait for a gate opened once one waits: a switch whatever the timing."""
    _ready(env)
    pool = env.pool
    gate = pool.ping_gate = Event()

    def open_gate() -> None:
        wait_until(lambda: pool.stats().checking >= 1, RUN_DEADLINE, "a keepalive ping")
        gate.set()

    env.helpers.append(gevent.spawn(open_gate))


FORK_OPS = [op for op in OPS if op.name in ("get_wait", "check_wait", "connect")]
FORK_OPS += [
    Op(
        "keepalive",
        _run_keepalive,
        {"size": 2, "keepalive": 0.02, "keepalive_jitter": 0.0},
        _prepare_gated_pings,
        track_caller=False,
        track_pings=True,
    ),
    Op("release_wait", _run_request, {"size": 1}, _prepare_blocker, pool_class=ReleasePool),
    Op("discard_wait", _run_failing_request, {"size": 1}, _prepare_blocker, GracefulPool),
]
FORK_MAX_K = 40
CHILD_WINDOW = 1.0  # the child's run of the rest of the operation ends within this


def _libc_fork() -> int:
    """fork(2) straight from libc: Python's at-fork hooks (so the pool's) do not run."""
    import ctypes

    pid = int(ctypes.CDLL(None, use_errno=True).fork())
    if pid == 0:
        gevent.reinit()
    return pid


FORKS: dict[str, Callable[[], int]] = {"hooks": gevent.fork, "no-hooks": _libc_fork}


@dataclass
class ForkProbe(Probe):
    """Forks (instead of interrupting) at the k-th switch; in the child, flags parent uses."""

    fork: Callable[[], int] = gevent.fork
    pool: HarnessPool | None = None
    helpers: list[gevent.Greenlet[..., Any]] = field(default_factory=list)
    parent_pid: int = field(default_factory=os.getpid)
    parent_cids: set[int] = field(default_factory=set)
    child_pid: int = 0
    pipe_r: int = -1
    pipe_w: int = -1
    done: Event = field(default_factory=Event)  # the child's caller greenlet ended

    def trace(self, event: str, args: tuple[greenlet.greenlet, greenlet.greenlet]) -> None:
        if self.fired is not None or event not in ("switch", "throw"):
            return
        _origin, target = args
        role = self.roles.get(target)
        if role is None:
            return
        self.count += 1
        if self.count == self.k:
            self.fired = Fired(role, target, RuntimeError("fork"), self.using.get(target))
            self._fork_here()

    def _fork_here(self) -> None:
        assert self.pool is not None
        self.parent_cids = set(self.pool.ids.values())
        self.pipe_r, self.pipe_w = os.pipe()
        pid = self.fork()
        if pid:
            self.child_pid = pid
            os.close(self.pipe_w)
            return
        os.close(self.pipe_r)
        for sock in self.pool.sockets:  # nothing in the child can talk on the parent's
            if sock.fileno() >= 0:
                os.close(sock.detach())
        for g in self.helpers:
            g.kill(block=False)
        gevent.spawn(self._child_report)

    def closing(self, cid: int) -> None:
        if os.getpid() != self.parent_pid and cid in self.parent_cids:
            self.violations.append(f"the child closed the parent's connection #{cid}")

    def touch(self, cid: int, what: str) -> None:
        if os.getpid() != self.parent_pid and cid in self.parent_cids:
            self.violations.append(f"the child {what} the parent's connection #{cid}")
        super().touch(cid, what)

    def _child_report(self) -> None:
        """In the child: once the operation ended (or CHILD_WINDOW passed), report and exit."""
        code = 1
        try:
            self.done.wait(CHILD_WINDOW)
            gevent.sleep(0.02)  # the child pool's background work (keepalive, refill) may run
            mine = [v for v in self.violations if v.startswith("the child")]
            data = json.dumps({"pid": os.getpid(), "violations": mine}).encode()
            while data:
                data = data[os.write(self.pipe_w, data) :]
            code = 0
        finally:
            os._exit(code)

    def child_report(self) -> dict[str, Any]:
        """In the parent: the child's report (it has exited and is reaped)."""
        from .test_fork import _read_all, _reap

        try:
            raw = _read_all(self.pipe_r, CHILD_WINDOW + 10)
        finally:
            os.close(self.pipe_r)
            _reap(self.child_pid)
        assert raw, "the child died without a report"
        report: dict[str, Any] = json.loads(raw)
        return report


def run_fork_once(op: Op, fork: str, k: int, remote: Any) -> ForkProbe:
    probe = ForkProbe("fork", "wake", k, fork=FORKS[fork])
    pool = op.pool_class(
        address=remote.address,
        probe=probe,
        reconnect_delay=0.002,
        reconnect_max_delay=0.01,
        **op.options,
    )
    probe.pool = pool
    env = Env(pool, probe)
    probe.helpers = env.helpers
    where = f"{op.name}: fork ({fork}) at switch k={k}"
    try:
        if op.prepare is not None:
            op.prepare(env)
        pool.track_connects = op.track_connects
        pool.track_pings = op.track_pings
        caught = _run_fork_traced(op, env)
        what = f"{where}, in the {probe.fired.role if probe.fired else '-'} greenlet"
        assert caught is None, f"{what}: the operation failed in the parent: {caught!r}"
        gevent.joinall(env.helpers, timeout=RUN_DEADLINE)
        if probe.fired is not None:
            report = probe.child_report()
            assert not report["violations"], f"{what}: {report['violations'][0]}"
        _fail_on(probe, what)
        _check_slots(pool, what)  # every parent connection still answers its own requests
        if probe.fired is not None:
            said = remote.peers()["said"]
            child = f".{report['pid']}"
            for cid, port in pool.ports.items():
                spoken = [c for c in said.get(port, []) if c.endswith(child)]
                assert not spoken, f"{what}: the child sent {spoken} on parent connection #{cid}"
    finally:
        for gate in (pool.gate, pool.ping_gate):
            if gate is not None:
                gate.set()
        pool.close()
        gevent.killall(env.helpers)
        probe.outer.close()
        for sock in pool.sockets:
            sock.close()
    return probe


def _run_fork_traced(op: Op, env: Env) -> BaseException | None:
    probe = env.probe
    assert isinstance(probe, ForkProbe)
    caught: list[BaseException] = []

    def caller() -> None:
        if op.track_caller:
            probe.track("caller")
        try:
            op.run(env)
        except Exception as e:
            caught.append(e)
        finally:
            probe.done.set()

    with probe.installed():
        g = gevent.spawn(caller)
        g.join(RUN_DEADLINE)
    if os.getpid() != probe.parent_pid:  # the child: its reporter ends the process
        gevent.sleep(CHILD_WINDOW + 5)
        os._exit(3)
    assert g.dead, f"{op.name}: the operation hung for {RUN_DEADLINE}s"
    return caught[0] if caught else None


@pytest.fixture(scope="module")
def recording_server() -> Iterator[Any]:
    from .apps.recording_server import RemoteServer

    with RemoteServer() as srv:
        yield srv


@pytest.mark.parametrize("fork", sorted(FORKS))
@pytest.mark.parametrize("op", FORK_OPS, ids=[op.name for op in FORK_OPS])
def test_fork_at_every_switch_never_touches_the_parent_connections(
    op: Op, fork: str, recording_server: Any
) -> None:
    forked = 0
    for k in range(1, FORK_MAX_K + 1):
        probe = run_fork_once(op, fork, k, recording_server)
        if probe.fired is None:
            break
        forked += 1
    else:
        raise AssertionError(f"{op.name}: still forking at k={FORK_MAX_K}")
    assert forked >= 1, f"{op.name}: no switch point was reached"


# -- an interrupt inside a contrib call ---------------------------------------------------------
# RedisPool's execute() / pipeline() against a real redis-server, interrupted at each switch of
# the calling greenlet with a gevent.Timeout that the caller catches inside the ``with`` block
# (raised where the greenlet resumes, "wake", or thrown into it while it is blocked, "park").
# The next command on that connection must raise a connection error (one of the pool's
# exc_classes), never return the interrupted command's late reply, and the pool must discard the
# connection when the block ends. ``CLIENT PAUSE 50`` (from another connection) delays the
# replies, so the call always waits for them: a switch whatever the machine's speed.
REDIS_CALLS: dict[str, Callable[[Any], Any]] = {
    "execute": lambda conn: conn.execute("GET", "slow"),
    "pipeline": lambda conn: conn.pipeline(("GET", "slow"), ("GET", "slow"), ("PING",)),
}


class _RedisInterrupter:
    """Raises (or throws) ``timeout`` into ``target`` at its k-th switch back in."""

    def __init__(self, target: greenlet.greenlet, k: int, mode: str) -> None:
        self.target, self.k, self.mode = target, k, mode
        self.count = 0
        self.timeout = gevent.Timeout()  # never started: only raised by this hook
        self.fired = False
        self.armed = False

    def trace(self, event: str, args: tuple[greenlet.greenlet, greenlet.greenlet]) -> None:
        if self.fired or not self.armed or event not in ("switch", "throw"):
            return
        origin, target = args
        if self.mode == "wake" and target is self.target:
            self.count += 1
            if self.count == self.k:
                self.fired = True
                raise self.timeout
        elif self.mode == "park" and origin is self.target and event == "switch":
            self.count += 1
            if self.count == self.k:
                get_hub().loop.run_callback(self._throw)

    def _throw(self) -> None:
        if self.armed and not self.target.dead:  # still inside the call
            self.fired = True
            self.target.throw(self.timeout)


def _redis_interrupted_once(port: int, call: str, mode: str, k: int) -> tuple[bool, bool]:
    """One run: did the call reach a k-th switch, and did the interrupt land inside the call."""
    from geventconnpool.contrib.redis import RedisPool

    pool = RedisPool(port=port, size=1, name=f"interrupt-{call}-{mode}-{k}")
    try:
        with pool.get(timeout=5) as conn:
            conn.execute("SET", "slow", "value-of-slow")
            conn.execute("SET", "other", "value-of-other")
        before = pool.stats().discarded.total
        hook = _RedisInterrupter(getcurrent(), k, mode)
        old = greenlet.settrace(hook.trace)
        try:
            with pool.get(timeout=5) as conn:
                try:
                    resp_command(("127.0.0.1", port), "CLIENT", "PAUSE", "50")
                    hook.armed = True
                    REDIS_CALLS[call](conn)
                    hook.armed = False
                except gevent.Timeout as t:
                    hook.armed = False
                    assert t is hook.timeout, f"{call} ({mode}) k={k}: {t!r} is not ours"
                    with pytest.raises(pool.exc_classes) as info:
                        reply = conn.execute("GET", "other")
                        pytest.fail(f"{call} ({mode}) k={k}: after the interrupt: {reply!r}")
                    assert "broken" in str(info.value), info.value
        finally:
            greenlet.settrace(old)
        if hook.fired:
            assert pool.stats().discarded.total == before + 1, pool.stats().discarded
            with pool.get(timeout=5) as conn:  # a new connection, in step with the server
                assert conn.execute("GET", "other") == b"value-of-other"
        return hook.count >= k, hook.fired
    finally:
        pool.close()


@pytest.mark.parametrize("mode", ["wake", "park"])
@pytest.mark.parametrize("call", sorted(REDIS_CALLS))
def test_interrupted_redis_call_poisons_its_connection(
    call: str,
    mode: str,
    redis_server: Any,  # noqa: F811
) -> None:
    fired = 0
    for k in range(1, 21):
        reached, landed = _redis_interrupted_once(redis_server.port, call, mode, k)
        fired += landed
        if not reached:
            break
    else:
        raise AssertionError(f"{call} ({mode}): still interrupting at k=20")
    assert fired >= 1, f"{call} ({mode}): no switch point was interrupted"
