"""Quick chaos runs for ``make test``: each scenario for 3 s, a 20,000-checkout soak, 20,000
get()s giving up on an exhausted pool, and each hook raising a BaseException for 2 s.

``python -m tests.chaos`` (``make chaos``) runs the full-length ones and publishes the figures.
"""

from __future__ import annotations

import pytest

from .chaos.backends import find_redis_server, in_ci
from .chaos.exhaustion import run_exhaustion
from .chaos.hooks import HOOKS, HookError, run_hook
from .chaos.scenarios import FAULTS, ScenarioResult, run_scenario
from .chaos.soak import run_soak

QUICK_SECONDS = 3.0
QUICK_CHECKOUTS = 20_000
QUICK_GETS = 20_000  # 10,000 time out, 10,000 are killed
QUICK_HOOK_SECONDS = 2.0


def assert_promises_kept(r: ScenarioResult) -> None:
    where = f"{r.scenario}/{r.backend}"
    assert r.hung == 0, f"{where}: {r.hung} requests hung beyond {r.hard_bound}s"
    assert max(r.peak_open, r.peak_sockets) <= r.max_size, f"{where}: more than max_size open"
    assert r.fds_end == r.fds_start, f"{where}: fds {r.fds_start} at start, {r.fds_end} at end"
    assert r.recovery_s is not None, f"{where}: the pool never got back to max_size"
    assert r.succeeded_after_fault > 0, f"{where}: no request succeeded after the fault"
    assert r.passed, f"{where}: {r.problems}"


@pytest.mark.slow  # 3 s per fault
@pytest.mark.parametrize("fault", [name for name in FAULTS if name != "baseline"])
def test_quick_scenario_on_ping_server_never_hangs_overflows_or_leaks(fault: str) -> None:
    assert_promises_kept(run_scenario(fault, "ping", QUICK_SECONDS, quick=True))


@pytest.mark.redis
def test_quick_restart_of_real_redis_never_hangs_overflows_or_leaks() -> None:
    if find_redis_server() is None:
        if in_ci():
            pytest.fail("redis-server is not installed (CI=true): run `make servers`")
        pytest.skip("redis-server is not installed")
    assert_promises_kept(run_scenario("restart", "redis", QUICK_SECONDS, quick=True))


@pytest.mark.slow  # 20,000 checkouts
def test_quick_soak_counters_add_up_and_nothing_leaks() -> None:
    r = run_soak(QUICK_CHECKOUTS, max_seconds=60.0, workers=100, every=0.2)
    broken = [i for i in r.identities if not i["holds"]]
    assert not broken, f"counters do not add up: {broken}"
    assert r.fds_end == r.fds_start
    assert r.checkouts >= QUICK_CHECKOUTS
    assert r.passed, r.problems


def test_quick_exhausted_pool_keeps_memory_flat_and_loses_no_slot() -> None:
    r = run_exhaustion(QUICK_GETS, max_seconds=60.0)
    assert r.gave_up >= QUICK_GETS and not r.handed_out and not r.late
    assert r.traced_exhausted - r.traced_warm < 256 * 1024, f"{r.bytes_per_get:.0f} B per get()"
    assert r.held_at_once == r.max_size
    assert r.passed, r.problems


@pytest.mark.parametrize("hook", [pytest.param(h) for h in HOOKS])
def test_quick_hook_raising_a_base_exception_causes_no_storm_and_loses_no_slot(hook: str) -> None:
    r = run_hook(hook, QUICK_HOOK_SECONDS)
    assert r.raised, f"{hook} was never called while it was to raise"
    assert r.connects_always <= r.bound_always, f"connect storm: {r.connects_always} attempts"
    assert r.held_at_once == r.max_size and r.hung == 0 and r.late_gets == 0
    assert r.passed, r.problems


@pytest.mark.parametrize("hook", ["_new_connection", "_check"])
def test_quick_hook_raising_an_exception_keeps_the_same_bound(hook: str) -> None:
    """The reference: with an ordinary Exception the pool keeps the bound the BaseException runs
    are held to (connect failures and new connections failing their first check back off)."""
    r = run_hook(hook, QUICK_HOOK_SECONDS, error=HookError)
    assert r.raised
    assert r.connects_always <= r.bound_always, f"connect storm: {r.connects_always} attempts"
    assert r.passed, r.problems
