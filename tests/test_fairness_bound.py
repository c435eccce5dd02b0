"""The adaptive fairness bound: on its own, then as PoolState's rule; a fake clock, no hub."""

from __future__ import annotations

from typing import Any

import pytest

from geventconnpool._fairness import FLOOR, MULTIPLE, WINDOW, FairBound
from geventconnpool._records import Waiter
from geventconnpool._state import HANDOFF, Policy, PoolState

from .test_state import add_idle, make_state


class Totals:
    """The pool's running totals as a fake clock moves: what ``PoolState`` feeds the bound."""

    def __init__(self, bound: FairBound) -> None:
        self.bound, self.now, self.acquired, self.waited = bound, 0.0, 0, 0.0
        bound.observe(self.now, self.acquired, self.waited)

    def feed(self, mean_wait: float, windows: int, per_window: int = 100) -> None:
        """``windows`` windows of ``per_window`` checkouts that waited ``mean_wait`` on average."""
        for _ in range(windows):
            self.now += WINDOW
            self.acquired += per_window
            self.waited += per_window * mean_wait
            self.bound.observe(self.now, self.acquired, self.waited)


def feed(bound: FairBound, mean_wait: float, windows: int) -> Totals:
    totals = Totals(bound)
    totals.feed(mean_wait, windows)
    return totals


def test_the_bound_starts_at_the_floor_before_any_wait_was_seen() -> None:
    assert FairBound(0.03).bound == FLOOR


def test_the_bound_follows_a_multiple_of_the_recent_mean_wait() -> None:
    fb = FairBound(0.03)
    feed(fb, 0.003, windows=40)
    assert fb.mean == pytest.approx(0.003, rel=0.01)
    assert fb.bound == pytest.approx(MULTIPLE * 0.003, rel=0.01)


def test_a_slow_backend_is_clamped_at_the_ceiling() -> None:
    fb = FairBound(0.03)
    feed(fb, 0.2, windows=40)
    assert fb.bound == 0.03


def test_no_wait_at_all_keeps_the_bound_at_the_floor() -> None:
    fb = FairBound(0.03)
    feed(fb, 0.0, windows=20)
    assert fb.bound == FLOOR


def test_the_bound_comes_down_when_waits_get_shorter() -> None:
    fb = FairBound(0.03)
    totals = feed(fb, 0.02, windows=40)
    assert fb.bound == 0.03
    totals.feed(0.001, windows=40)
    assert fb.bound == pytest.approx(max(FLOOR, MULTIPLE * 0.001), rel=0.05)


def test_the_mean_moves_at_most_once_per_window() -> None:
    fb = FairBound(0.03)
    fb.observe(0.0, 0, 0.0)
    fb.observe(WINDOW / 2, 100, 1.0)  # a mean wait of 10 ms, but the window is not over
    assert fb.mean == 0.0
    fb.observe(WINDOW, 100, 1.0)
    assert fb.mean > 0.0


def test_a_window_without_checkouts_leaves_the_mean_alone() -> None:
    fb = FairBound(0.03)
    totals = feed(fb, 0.004, windows=30)
    before = fb.mean
    fb.observe(totals.now + WINDOW, totals.acquired, totals.waited)
    assert fb.mean == before


def test_strict_fifo_never_moves() -> None:
    fb = FairBound(0.0)
    feed(fb, 0.05, windows=10)
    assert (fb.bound, fb.adaptive) == (0.0, False)


def test_a_fixed_bound_never_moves() -> None:
    fb = FairBound(0.01, floor=0.01)
    totals = feed(fb, 0.05, windows=10)
    totals.feed(0.0, windows=10)
    assert (fb.bound, fb.adaptive) == (0.01, False)


def test_resize_keeps_the_mean_and_clamps_to_the_new_limits() -> None:
    fb = FairBound(0.03)
    feed(fb, 0.005, windows=40)
    fb.resize(0.01, FLOOR)
    assert fb.bound == 0.01
    fb.resize(0.0, FLOOR)
    assert fb.bound == 0.0
    fb.resize(0.03, 0.03)
    assert fb.bound == 0.03


def test_a_floor_above_the_ceiling_is_the_ceiling() -> None:
    assert FairBound(0.001, floor=0.005).bound == 0.001


# ---------------------------------------------------------------------- the rule in PoolState
def adaptive_state(**policy: Any) -> PoolState[object]:
    return make_state(max_size=2, **({"fair_after": 0.03, "fair_floor": FLOOR} | policy))


def checkouts(state: PoolState[object], now: float, waited: float, n: int) -> float:
    """``n`` slow-path checkouts each served ``waited`` seconds after it asked; the clock after."""
    for _ in range(n):
        rec = state.take_any()
        assert rec is not None, "the state has no idle connection to hand out"
        state.hand_out(rec, now, now - waited, object(), None)
        assert state.put_back(rec, now) is None  # nobody waits: parked idle again
        now += WINDOW / 10
    return now


def returns_to(state: PoolState[object], waited: float, now: float) -> bool:
    """A connection returned ``now``: does it go straight to a waiter that waited ``waited``?"""
    rec = state.take_any()
    assert rec is not None
    state.hand_out(rec, now, now, object(), None)
    w: Waiter[object] = Waiter(now - waited)
    state.wait(w, now - waited, first=False)
    answer = state.put_back(rec, now)
    if answer is w:
        return True
    assert answer in (HANDOFF, None) and rec in state.idle  # parked for the deferred hand-off
    state.handoff(now)
    return False


def test_the_pool_starts_with_the_floor_as_its_bound() -> None:
    state = adaptive_state()
    add_idle(state, n=2)
    assert state.fair.bound == FLOOR
    assert returns_to(state, waited=2 * FLOOR, now=0.01)  # older than the floor: served


def test_the_bound_follows_the_mean_wait_of_recent_checkouts() -> None:
    state = adaptive_state()
    add_idle(state, n=2)
    now = checkouts(state, 0.0, waited=0.004, n=300)
    assert state.fair.bound == pytest.approx(MULTIPLE * 0.004, rel=0.05)
    assert not returns_to(state, waited=0.008, now=now)  # younger than 2.5 x 4 ms: overtaken
    assert returns_to(state, waited=0.013, now=now)


def test_fast_path_checkouts_count_as_zero_waits() -> None:
    state = adaptive_state()
    add_idle(state, n=2)
    now = 0.0
    for _ in range(300):  # one slow checkout that waited 8 ms, three fast ones that did not
        now = checkouts(state, now, waited=0.008, n=1)
        for _ in range(3):
            rec = state.take(now, object())
            assert rec is not None
            state.put_back(rec, now)
    assert state.fair.mean == pytest.approx(0.002, rel=0.05)


def test_a_slow_backend_is_held_to_fair_after() -> None:
    state = adaptive_state()
    add_idle(state, n=2)
    now = checkouts(state, 0.0, waited=0.2, n=300)
    assert state.fair.bound == 0.03
    assert returns_to(state, waited=0.031, now=now)


def test_strict_fifo_and_a_fixed_bound_ignore_the_mean() -> None:
    fifo, fixed = adaptive_state(fair_after=0), adaptive_state(fair_floor=0.03)
    for state, bound in ((fifo, 0.0), (fixed, 0.03)):
        add_idle(state, n=2)
        checkouts(state, 0.0, waited=0.001, n=300)
        assert state.fair.bound == bound
    assert returns_to(fifo, waited=0.0, now=1.0)
    assert not returns_to(fixed, waited=0.02, now=1.0)


def test_a_live_change_of_the_limits_moves_the_bound_at_once() -> None:
    state = adaptive_state()
    add_idle(state, n=2)
    checkouts(state, 0.0, waited=0.004, n=300)
    policy = Policy(**{name: getattr(state.policy, name) for name in Policy.__slots__})
    policy.fair_after = 0.005
    state.configure(policy)
    assert state.fair.bound == 0.005
