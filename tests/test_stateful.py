"""A Hypothesis state machine drives a small pool through random steps and checks it after each.

Steps: a greenlet acquires (waiting for ever, or with a short timeout), a holder releases, a
holder fails with an exception of ``exc_classes`` inside its block, a holder or a waiter is killed,
a waiter is interrupted by an outer ``Timeout``, short timeouts expire, the pool is resized or
closed. After every step: ``idle + in_use + connecting == open``; ``open <= max_size`` (after a
shrink, the surplus is only connections still in use, and it never grows); no connection is held
by two greenlets or handed out closed; waiters are served first come, first served; the counters
add up; and after ``close()`` every connection not held is closed, and all of them once returned.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import gevent
import greenlet
from gevent.event import Event
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from geventconnpool import PoolClosed, PoolTimeout
from geventconnpool._records import greenlet_label

from .conftest import FakeConn, FakePool

SETTLE = 2.0  # seconds for the pool and the actors to come to rest after a step


class Broken(ConnectionResetError):
    """Raised inside a holder's block: an exception of exc_classes (OSError)."""


@dataclass(eq=False)
class Actor:
    """A greenlet that gets a connection, holds it until told, then returns it (or fails)."""

    seq: int
    timeout: float | None
    state: str = "starting"  # starting, waiting, holding, then done, failed, timed out...
    waited: bool = False
    conn: FakeConn | None = None
    release: Event = field(default_factory=Event)
    fail: bool = False
    g: gevent.Greenlet[..., None] | None = None


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.pool: FakePool | None = None
        self.actors: list[Actor] = []
        self.seqs = itertools.count()
        self.served_waiters: list[int] = []  # seq of each actor that waited, as it was served
        self.prev_open = 0
        self.forced_close = False  # close(timeout) expired: held connections closed in hand

    # -- set-up and the actors ----------------------------------------------------------------
    @initialize(min_size=st.integers(0, 2), extra=st.integers(0, 2))
    def make_pool(self, min_size: int, extra: int) -> None:
        self.pool = FakePool(min_size=min_size, max_size=max(1, min_size + extra))
        self.settle()

    @property
    def p(self) -> FakePool:
        assert self.pool is not None
        return self.pool

    def run_actor(self, a: Actor) -> None:
        try:
            with self.p.get(a.timeout) as conn:
                a.conn = conn
                if a.waited:
                    self.served_waiters.append(a.seq)
                a.state = "holding"
                a.release.wait()
                if a.fail:
                    raise Broken("the connection broke")
            a.state = "done"
        except Broken:
            a.state = "failed"
        except PoolTimeout:
            a.state = "timed out"
        except PoolClosed:
            a.state = "closed"
        except gevent.Timeout:
            a.state = "interrupted"
        except greenlet.GreenletExit:
            a.state = "killed"
            raise

    def in_queue(self, a: Actor) -> bool:
        label = greenlet_label(a.g)  # as dump() shows a waiting greenlet
        return label is not None and any(w.greenlet == label for w in self.p.dump().waiters)

    def settled(self, a: Actor) -> bool:
        """At rest: queued, holding or ended; not between being handed something and resuming."""
        if a.g is not None and a.g.dead:
            return True
        if a.state == "waiting":
            return self.in_queue(a)
        return a.state != "starting"

    def settle(self) -> None:
        """Run the hub until every actor waits, holds or ended, and no connect is in flight."""
        with gevent.Timeout(SETTLE, AssertionError(f"the pool did not settle: {self.pool!r}")):
            for spin in itertools.count():
                gevent.sleep(0 if spin < 20 else 0.001)  # most steps settle within a few turns
                for a in self.actors:
                    if a.state == "starting" and self.in_queue(a):
                        a.state, a.waited = "waiting", True
                s = self.p.stats()
                busy = s.connecting or (s.waiting and s.idle)
                if not busy and all(self.settled(a) for a in self.actors):
                    return

    def live(self, state: str) -> list[Actor]:
        return [a for a in self.actors if a.state == state and a.g is not None and not a.g.dead]

    # -- rules -----------------------------------------------------------------------------------
    @rule(timeouts=st.lists(st.sampled_from([None, None, 0, 0.02]), min_size=1, max_size=3))
    def acquire(self, timeouts: list[float | None]) -> None:
        """One to three greenlets call get(), one after the other."""
        for timeout in timeouts:
            a = Actor(next(self.seqs), timeout)
            self.actors.append(a)
            a.g = gevent.spawn(self.run_actor, a)
            self.settle()

    @precondition(lambda self: bool(self.live("holding")))
    @rule(data=st.data(), fail=st.booleans())
    def release(self, data: st.DataObject, fail: bool) -> None:
        a = data.draw(st.sampled_from(self.live("holding")))
        a.fail = fail
        a.release.set()
        self.settle()

    @precondition(lambda self: bool(self.live("holding")))
    @rule(data=st.data())
    def kill_holder(self, data: st.DataObject) -> None:
        a = data.draw(st.sampled_from(self.live("holding")))
        assert a.g is not None
        a.g.kill()
        self.settle()

    @precondition(lambda self: bool(self.live("holding")) and bool(self.live("waiting")))
    @rule(data=st.data(), outer_timeout=st.booleans())
    def release_to_a_waiter_interrupted_meanwhile(
        self, data: st.DataObject, outer_timeout: bool
    ) -> None:
        """The oldest waiter is handed the returned connection and interrupted before it resumes."""
        holder = data.draw(st.sampled_from(self.live("holding")))
        oldest = min(self.live("waiting"), key=lambda a: a.seq)
        assert oldest.g is not None
        holder.release.set()
        oldest.g.kill(
            exception=gevent.Timeout() if outer_timeout else greenlet.GreenletExit(), block=False
        )
        self.settle()

    @precondition(lambda self: bool(self.live("waiting")))
    @rule(data=st.data(), outer_timeout=st.booleans())
    def interrupt_waiter(self, data: st.DataObject, outer_timeout: bool) -> None:
        a = data.draw(st.sampled_from(self.live("waiting")))
        assert a.g is not None
        if outer_timeout:
            a.g.kill(exception=gevent.Timeout())
        else:
            a.g.kill()
        self.settle()

    @precondition(lambda self: any(a.timeout for a in self.live("waiting")))
    @rule()
    def let_short_timeouts_expire(self) -> None:
        gevent.sleep(0.03)
        self.settle()

    @rule(min_size=st.integers(0, 3), extra=st.integers(0, 2))
    def resize(self, min_size: int, extra: int) -> None:
        try:
            self.p.resize(min_size=min_size, max_size=max(1, min_size + extra))
        except PoolClosed:
            assert self.p.closed
        self.settle()

    @rule(timeout=st.sampled_from([None, 0.01]))
    def close(self, timeout: float | None) -> None:
        holding = bool(self.live("holding"))
        self.p.close(timeout)
        if timeout is not None and holding:
            self.forced_close = True
        self.settle()

    # -- invariants --------------------------------------------------------------------------
    @invariant()
    def counts_add_up(self) -> None:
        if self.pool is None:
            return
        s = self.p.stats()
        assert s.idle + s.in_use + s.connecting == s.open, s
        assert s.created == s.idle + s.in_use + s.discarded.total, s

    @invariant()
    def open_stays_within_max_size(self) -> None:
        if self.pool is None:
            return
        s = self.p.stats()
        if s.open > s.max_size:
            assert s.idle == 0, f"idle connections above max_size after a shrink: {s}"
            assert s.open <= self.prev_open, f"the pool grew above max_size: {s}"
        self.prev_open = s.open

    @invariant()
    def every_connection_in_use_has_a_holder(self) -> None:
        if self.pool is None or self.p.closed:
            return
        holding = len(self.live("holding"))
        assert self.p.stats().in_use == holding, f"{self.p.stats()} with {holding} holders"

    @invariant()
    def no_connection_has_two_holders_or_is_closed_in_hand(self) -> None:
        held = [a.conn for a in self.live("holding") if a.conn is not None]
        assert len({c.id for c in held}) == len(held), f"shared connections: {held}"
        if not self.forced_close:
            assert not [c for c in held if c.closed], f"closed connections handed out: {held}"

    @invariant()
    def waiters_are_served_in_order(self) -> None:
        assert self.served_waiters == sorted(self.served_waiters), self.served_waiters
        waiting = [a.seq for a in self.live("waiting")]
        later = [a.seq for a in self.live("holding") if waiting and a.seq > min(waiting)]
        assert not later, f"actors {later} got a connection while older {waiting} still wait"

    @invariant()
    def closed_pool_leaves_only_held_connections_open(self) -> None:
        if self.pool is None or not self.p.closed:
            return
        assert not self.live("waiting"), "greenlets still wait on a closed pool"
        held = {id(a.conn) for a in self.live("holding")}
        still_open = [c for c in self.p.made if not c.closed and id(c) not in held]
        assert not still_open, f"open after close(): {still_open}"
        if not held:
            assert self.p.stats().open == 0, self.p.stats()

    def teardown(self) -> None:
        if self.pool is not None:
            self.pool.close()  # waiters get PoolClosed
        for a in self.actors:
            a.release.set()
        gevent.joinall([a.g for a in self.actors if a.g is not None], timeout=SETTLE)
        if self.pool is not None:
            assert all(c.closed for c in self.pool.made), "connections left open at the end"
        gevent.killall([a.g for a in self.actors if a.g is not None])


PoolMachine.TestCase.settings = settings(max_examples=50, stateful_step_count=30, deadline=None)
test_pool_state_machine = PoolMachine.TestCase
