"""The pool's bookkeeping, on PoolState alone: fake connection objects, no sockets, no hub.

Each test drives the state through its methods with an explicit clock and checks what it
decided (the Plan) and what it now holds.
"""

from __future__ import annotations

from typing import Any

import pytest

from geventconnpool import _state as _state_module
from geventconnpool._records import INF, Attempt, Conn, PoolEvent, Waiter
from geventconnpool._state import HANDOFF, SLOW, WAITER_RETRY, Checkout, Plan, Policy, PoolState

PID = 4242
HOLDER = object()  # the greenlet a connection is handed to


def closed(plan: Plan[object]) -> list[tuple[object, str | None]]:
    """What a plan closes: (connection, discard reason)."""
    return [(d.conn, d.reason) for d in plan.close]


def make_state(min_size: int = 0, max_size: int = 4, **policy: Any) -> PoolState[object]:
    values: dict[str, Any] = {
        "check_after": 1.0,
        "fail_fast": False,
        "fail_fast_after": 3,
        "fair_after": 0.03,
        "fair_floor": 0.03,  # a fixed bound; the adaptive one has tests of its own
        "keepalive": None,
        "keepalive_jitter": 0.0,
        "leak_timeout": None,
        "lifetime_jitter": 0.0,
        "lifo": True,
        "max_connecting": 2,
        "max_idle": None,
        "max_lifetime": None,
        "max_waiting": None,
        "reconnect_delay": 0.1,
        "reconnect_max_delay": 30.0,
        "spawn_frequency": 0.0,
    }
    values.update(policy)
    state: PoolState[object] = PoolState(min_size, max_size, Policy(**values), PID)
    state.open(0.0)
    state.connecting.clear()  # tests add connections themselves
    return state


def add_idle(state: PoolState[object], now: float = 0.0, n: int = 1) -> list[Conn[object]]:
    """Open ``n`` connections through the state, as connects that succeed at ``now``."""
    recs = []
    for _ in range(n):
        attempt = Attempt(state.generation, now, state.pid)
        state.connecting[attempt] = None  # as plan_connects() books a connect it starts
        plan = state.connect_done(attempt, object(), None, now)
        assert not plan.close and not plan.forget  # it joined the pool
        recs.append(state.idle[-1])
    return recs


def queue_waiter(state: PoolState[object], since: float) -> Waiter[object]:
    w: Waiter[object] = Waiter(since)
    state.wait(w, since, first=False)
    return w


# ---------------------------------------------------------------------- the hot path
def test_take_hands_out_the_warmest_fresh_idle_connection() -> None:
    state = make_state()
    cold, warm = add_idle(state, n=2)
    assert state.take(0.5, HOLDER) is warm
    assert state.held == {warm} and list(state.idle) == [cold]


def test_take_leaves_a_connection_that_needs_a_check_to_the_slow_path() -> None:
    state = make_state()
    (rec,) = add_idle(state)
    assert state.take(5.0, HOLDER) is None  # idle longer than check_after
    assert list(state.idle) == [rec]
    assert state.vet_reason(rec, 5.0) == "check"


def test_put_back_with_nobody_waiting_parks_the_connection_idle() -> None:
    state = make_state()
    add_idle(state)
    rec = state.take(0.1, HOLDER)
    assert rec is not None
    assert state.put_back(rec, 0.2) is None
    assert list(state.idle) == [rec] and not state.held
    assert state.counters.returned == 1


# ---------------------------------------------------------------------- fairness
def test_a_waiter_that_waited_fair_after_gets_the_connection_directly() -> None:
    state = make_state(fair_after=0.03)
    add_idle(state)
    rec = state.take(0.0, HOLDER)
    assert rec is not None
    w = queue_waiter(state, since=0.0)
    assert state.put_back(rec, 0.05) is w
    assert w.rec is rec and w.gone and state.waiting == 0
    assert rec in state.held and not state.idle


def test_a_young_waiter_may_be_overtaken_and_one_handoff_per_turn_is_asked() -> None:
    state = make_state(fair_after=0.03, max_size=2)
    add_idle(state, n=2)
    a, b = state.take(0.0, HOLDER), state.take(0.0, HOLDER)
    assert a is not None and b is not None
    w = queue_waiter(state, since=0.01)
    assert state.put_back(a, 0.02) is HANDOFF  # parked: the releaser may take it back
    assert state.put_back(b, 0.02) is None  # a hand-off is already pending
    assert state.take(0.02, HOLDER) is b  # barging: a newcomer takes the warmest
    assert state.handoff(0.02) == [w]  # what is still idle goes to the waiter
    assert w.rec is a and not state.idle and not state.handoff_pending


def test_fair_after_zero_is_strict_fifo() -> None:
    state = make_state(fair_after=0.0)
    add_idle(state)
    rec = state.take(0.0, HOLDER)
    assert rec is not None
    first, second = queue_waiter(state, 0.0), queue_waiter(state, 0.0)
    assert state.put_back(rec, 0.0) is first
    assert second.rec is None and state.waiting == 1


def test_handoff_serves_the_oldest_waiters_first_and_skips_those_who_left() -> None:
    state = make_state(max_size=3)
    add_idle(state, n=2)
    gone, old, young = (
        queue_waiter(state, 0.0),
        queue_waiter(state, 0.01),
        queue_waiter(state, 0.02),
    )
    state.leave(gone, 0.02)
    woken = state.handoff(0.03)
    assert woken == [old, young]
    assert state.waiting == 0 and old.rec is not None and young.rec is not None


def test_a_waiter_that_leaves_after_being_served_passes_the_connection_on() -> None:
    state = make_state(fair_after=0.0)
    add_idle(state)
    rec = state.take(0.0, HOLDER)
    assert rec is not None
    served, next_in_line = queue_waiter(state, 0.0), queue_waiter(state, 0.0)
    assert state.put_back(rec, 0.0) is served
    assert state.leave(served, 0.0) is next_in_line  # interrupted before it ran
    assert next_in_line.rec is rec and served.rec is None


def test_a_waiter_that_leaves_unserved_is_no_longer_counted() -> None:
    state = make_state(max_waiting=1)
    add_idle(state)
    state.take(0.0, HOLDER)
    w = queue_waiter(state, 0.0)
    assert state.refuse() == "exhausted"
    state.leave(w, 0.1)
    assert state.waiting == 0 and state.refuse() is None
    assert state.counters.exhausted == 1


# ---------------------------------------------------------------------- returning
def test_a_connection_returned_after_its_lifetime_while_a_waiter_is_queued() -> None:
    """The newcomer's question: it is closed ("lifetime") and a replacement connect starts at
    once for the waiter; the waiter is not given the expired connection."""
    state = make_state(max_size=1, max_lifetime=10.0)
    add_idle(state)
    rec = state.take(0.0, HOLDER)
    assert rec is not None
    w = queue_waiter(state, 5.0)
    plan = state.release(rec, 11.0, None)
    assert closed(plan) == [(rec.conn, "lifetime")]
    assert len(plan.connect) == 1 and w.rec is None
    assert state.counters.discarded["lifetime"] == 1 and not state.held


def test_put_back_leaves_expired_invalidated_or_surplus_connections_to_release() -> None:
    state = make_state(max_size=2, max_lifetime=10.0)
    add_idle(state, n=2)
    a, b = state.take(0.0, HOLDER), state.take(0.0, HOLDER)
    assert a is not None and b is not None
    assert state.put_back(a, 20.0) is SLOW  # expired
    state.invalidate(0.0)
    assert state.put_back(b, 1.0) is SLOW  # from before invalidate()
    assert closed(state.release(b, 1.0, None)) == [(b.conn, "invalidated")]


def test_release_with_a_reason_discards_and_replaces() -> None:
    state = make_state(min_size=1, max_size=1)
    add_idle(state)
    rec = state.take(0.0, HOLDER)
    assert rec is not None
    plan = state.release(rec, 0.1, "error")
    assert closed(plan) == [(rec.conn, "error")] and len(plan.connect) == 1


def test_a_disconnect_makes_every_open_connection_suspect() -> None:
    state = make_state(max_size=2)
    a, b = add_idle(state, n=2)
    state.disconnect()
    assert state.take(0.1, HOLDER) is None  # the warmest must be checked first
    assert state.vet_reason(b, 0.1) == "check" and a.suspect


# ---------------------------------------------------------------------- connecting
def test_growth_is_lazy_a_connect_per_uncovered_waiter_at_most_max_connecting() -> None:
    state = make_state(max_size=10, max_connecting=2)
    plans = [state.wait(Waiter(0.0), 0.0, False) for _ in range(5)]
    assert [len(p.connect) for p in plans] == [1, 1, 0, 0, 0]
    assert len(state.connecting) == 2


def test_filling_to_min_size_is_staggered_but_replacements_start_at_once() -> None:
    state = make_state(min_size=3, max_size=3, spawn_frequency=0.1)
    state.connecting.clear()
    assert len(state.plan_connects(1.0).connect) == 1
    assert len(state.plan_connects(1.05).connect) == 0  # stagger
    assert len(state.plan_connects(1.1).connect) == 1
    state.connecting.clear()
    add_idle(state, 1.2)
    rec = state.take(1.2, HOLDER)
    assert rec is not None
    plan = state.release(rec, 1.21, "error")  # a replacement skips the stagger
    assert len(plan.connect) == 1


def test_a_never_wait_get_still_starts_a_connect() -> None:
    state = make_state(max_size=2, max_waiting=0)
    assert state.refuse() == "exhausted"
    assert len(state.no_wait(0.0).connect) == 1


def test_failed_connects_back_off_but_waiters_retry_every_waiter_retry() -> None:
    state = make_state(max_size=2, reconnect_delay=5.0)
    attempt = state.plan_connects(0.0, extra=1).connect[0]
    plan = state.connect_done(attempt, None, OSError("refused"), 0.0)
    assert PoolEvent.FAILED in plan.events and not plan.close
    assert not state.plan_connects(0.1, extra=0).connect  # background: respects backoff
    state.wait(Waiter(0.1), 0.1, False)
    assert not state.plan_connects(0.1).connect
    assert len(state.plan_connects(WAITER_RETRY + 0.01).connect) == 1


def test_a_new_connection_refused_at_its_first_hand_out_counts_as_a_failed_connect() -> None:
    state = make_state(max_size=1, fail_fast_after=2)
    for i in range(2):
        (rec,) = add_idle(state, now=float(i))
        state.take_any()
        state.drop(rec, "check", float(i))
    assert state.counters.connect_failures == 2 and state.health.rejected == 2
    assert state.health.down and state.health.retry_at > 1.0


def test_the_backend_is_down_after_fail_fast_after_failures_and_waiters_fail() -> None:
    state = make_state(max_size=1, fail_fast=True, fail_fast_after=2, max_connecting=1)
    w = queue_waiter(state, 0.0)
    plan: Plan[object] = Plan()
    for t in (0.0, 1.0):
        state.connecting.clear()
        attempt = state.plan_connects(t + WAITER_RETRY).connect[0]
        plan = state.connect_done(attempt, None, OSError("refused"), t + WAITER_RETRY)
    assert state.health.down and PoolEvent.DOWN in plan.events
    assert plan.wake == [w] and w.refused is not None and state.waiting == 0
    assert state.refuse() == "down"


def test_a_connect_finished_after_close_or_invalidate_is_not_kept() -> None:
    state = make_state(max_size=2)
    a = state.plan_connects(0.0, extra=1).connect[0]
    state.invalidate(0.0)
    conn = object()
    assert closed(state.connect_done(a, conn, None, 0.1)) == [(conn, "invalidated")]
    b = state.plan_connects(0.2, extra=1).connect[0]
    state.close(0.2)
    assert closed(state.connect_done(b, conn, None, 0.3)) == [(conn, "closed")]


# ---------------------------------------------------------------------- whole-pool changes
def test_close_fails_waiters_and_closes_idle_and_returns_later() -> None:
    state = make_state(max_size=2)
    a, _ = add_idle(state, n=2)
    held = state.take(0.0, HOLDER)
    w = queue_waiter(state, 0.0)
    plan = state.close(0.1)
    assert plan.wake == [w] and w.refused is not None
    assert [c for c, _ in closed(plan)] == [a.conn] and not state.idle
    assert held is not None
    assert closed(state.release(held, 0.2, None)) == [(held.conn, "closed")]


def test_resize_down_closes_surplus_idle_and_slows_returns_until_within_bounds() -> None:
    state = make_state(max_size=3)
    add_idle(state, n=3)
    a, b = state.take(0.0, HOLDER), state.take(0.0, HOLDER)
    plan = state.resize(0, 1, 0.0)
    assert len(plan.close) == 1 and state.open_count == 2 and not state.fast_put
    assert a is not None and state.put_back(a, 0.1) is SLOW
    assert closed(state.release(a, 0.1, None)) == [(a.conn, "idle")]
    assert state.fast_put and b is not None and state.put_back(b, 0.2) is None


def test_after_fork_the_child_forgets_every_inherited_connection() -> None:
    state = make_state(max_size=3)
    add_idle(state, n=2)
    held = state.take(0.0, HOLDER)
    queue_waiter(state, 0.0)
    inherited = state.after_fork(PID + 1)
    assert len(inherited) == 2
    assert state.open_count == 0 and state.waiting == 0 and state.pid == PID + 1
    assert held is not None and not state.owns(held)
    assert not state.release(held, 0.1, "error")  # nothing to do: no hook, no close


# ---------------------------------------------------------------------- background work
def test_due_closes_expired_idle_connections_and_says_when_next() -> None:
    state = make_state(max_size=2, max_lifetime=10.0)
    add_idle(state, 0.0)
    add_idle(state, 5.0)
    plan, next_at = state.due(11.0)
    assert [reason for _, reason in closed(plan)] == ["lifetime"]
    assert next_at == pytest.approx(15.0)


def test_due_reaps_the_coldest_connections_above_min_size_only() -> None:
    state = make_state(min_size=1, max_size=3, max_idle=10.0)
    cold, mid, warm = add_idle(state, 0.0, n=3)
    plan, _ = state.due(20.0)
    assert [c for c, _ in closed(plan)] == [cold.conn, mid.conn]
    assert list(state.idle) == [warm]


def test_keepalive_leaves_one_idle_when_pings_are_staggered() -> None:
    state = make_state(max_size=2, keepalive=5.0)
    (first,) = add_idle(state, 0.0)
    (second,) = add_idle(state, 1.0)
    plan, _ = state.due(5.5)
    assert plan.ping == [first] and list(state.idle) == [second]
    plan, _ = state.due(6.5)  # the second is due while the first one's ping is still out
    assert list(state.idle) == [second] and plan.ping == ()


def test_max_lifetime_with_jitter_spreads_expiry() -> None:
    state = make_state(max_size=20, max_lifetime=100.0, lifetime_jitter=0.2)
    lifetimes = [rec.expires_at - rec.created_at for rec in add_idle(state, n=20)]
    assert all(80.0 <= life <= 100.0 for life in lifetimes)
    assert len({round(life, 6) for life in lifetimes}) > 1


def test_keepalive_jitter_spreads_pings() -> None:
    state = make_state(max_size=20, keepalive=10.0, keepalive_jitter=0.3)
    intervals = [rec.keepalive_every for rec in add_idle(state, n=20)]
    assert all(7.0 <= i <= 10.0 for i in intervals) and len(set(intervals)) > 1


def test_keepalive_pings_due_connections_but_leaves_one_for_callers() -> None:
    state = make_state(max_size=3, keepalive=5.0)
    recs = add_idle(state, 0.0, n=3)
    plan, _ = state.due(6.0)
    assert plan.ping == recs[:2] and list(state.idle) == [recs[2]]
    assert not state.ping_done(recs[0], 6.1, None).close
    assert state.idle[0] is recs[0]  # back at the cold end


def test_a_connection_opened_for_a_waiter_goes_to_it_and_no_extra_connect_starts() -> None:
    state = make_state(max_size=4, fair_after=10.0)
    w: Waiter[object] = Waiter(0.0)
    (attempt,) = state.wait(w, 0.0, first=False).connect
    plan = state.connect_done(attempt, object(), None, 0.001)
    assert not plan.close and plan.wake == [w] and w.rec is not None
    assert not plan.connect and not state.connecting and not state.idle


# ---------------------------------------------------------------------- the hot path's copies
class _SlowPaths:
    """Checkout's pool: records what was left to the slow paths."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def _check_fork(self) -> None:
        self.calls.append("fork")

    def _acquire_slow(self, timeout: float | None, start: float) -> Conn[object]:
        self.calls.append("acquire")
        return Conn(object(), start, INF, 0, PID)

    def _after_put_back(self, todo: object) -> None:
        self.calls.append(f"after:{type(todo).__name__}")

    def _release(self, rec: Conn[object], exc: BaseException | None, now: float) -> None:
        self.calls.append("release")

    def _reclaim_leaked(self, rec: Conn[object]) -> None:
        self.calls.append("leaked")


def _fields(state: PoolState[object]) -> tuple[Any, ...]:
    """Everything take/put_back may change, records by position (their ids differ)."""
    c = state.counters

    def rec(r: Conn[object]) -> tuple[Any, ...]:
        return tuple(getattr(r, f) for f in Conn.__slots__ if f not in ("id", "conn"))

    return (
        [rec(r) for r in state.idle],
        sorted(rec(r) for r in state.held),
        state.waiting,
        tuple(getattr(c, f) for f in c.__slots__ if f != "discarded"),
        state.handoff_pending,
    )


@pytest.mark.parametrize("lifo", [True, False])
@pytest.mark.parametrize("case", ["fresh", "stale", "waiter", "expired"])
def test_checkout_inlines_take_and_put_back_exactly(
    monkeypatch: pytest.MonkeyPatch, lifo: bool, case: str
) -> None:
    """Checkout's enter/exit (the hot path, inlined) change the state as take()/put_back()."""
    now = 2.0 if case == "stale" else 0.5
    monkeypatch.setattr(_state_module, "_monotonic", lambda: now)
    monkeypatch.setattr(_state_module, "getcurrent", lambda: HOLDER)
    monkeypatch.setattr(_state_module, "_getpid", lambda: PID)
    twins = []
    for _ in range(2):
        state = make_state(max_size=3, lifo=lifo, fair_after=0.0, max_lifetime=1.0)
        add_idle(state, 0.0)
        add_idle(state, 0.1)
        twins.append(state)
    by_method, by_checkout = twins
    pool = _SlowPaths()
    checkout = Checkout(pool, by_checkout, None)
    conn = checkout.__enter__()
    rec = by_method.take(now, HOLDER)
    assert (rec is None) == (pool.calls == ["acquire"])
    assert _fields(by_method) == _fields(by_checkout)
    if rec is None:
        return
    assert rec.conn is not conn  # twins: their own objects
    if case == "waiter":
        for state in twins:
            queue_waiter(state, 0.0)
    if case == "expired":
        now = 1.5
    checkout.__exit__(None, None, None)
    answer = by_method.put_back(rec, now)
    expected = {None: [], SLOW: ["release"]}.get(answer, [f"after:{type(answer).__name__}"])
    assert pool.calls == expected, (answer, pool.calls)
    if answer is not SLOW:
        assert _fields(by_method) == _fields(by_checkout)
