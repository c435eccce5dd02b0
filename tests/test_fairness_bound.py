"""The adaptive fairness bound on its own: a fake clock and running totals, no hub, no pool."""

from __future__ import annotations

import pytest

from geventconnpool._fairness import FLOOR, MULTIPLE, WINDOW, FairBound


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
