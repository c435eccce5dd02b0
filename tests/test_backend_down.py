"""Backend-down timeout contract (HikariCP's DbDownTest), quick variant.

While the backend is unreachable, ``get(timeout=T)`` returns or raises within T + 0.5 s every
time (sequential and concurrent calls); with ``fail_fast=True`` it raises PoolUnavailable within
0.1 s once the pool considers the backend down. ``python -m tests.chaos`` runs more calls at more
timeouts. These are contract checks with generous bounds, not benchmarks.
"""

from __future__ import annotations

import pytest

from .chaos.contract import CASES, Case, run_case

T = 0.2
SEQUENTIAL = 3
CONCURRENT = 10
WAITING_CASES = [c for c in CASES if not c.fail_fast]


@pytest.mark.parametrize("case", WAITING_CASES, ids=lambda c: c.name)
def test_get_ends_within_its_timeout_while_backend_is_unreachable(case: Case) -> None:
    r = run_case(case, T, SEQUENTIAL, CONCURRENT)
    assert r.calls == SEQUENTIAL + CONCURRENT and not r.hung, r.problems
    assert r.max_s <= r.bound, f"{case.name}: worst get(timeout={T}) took {r.max_s}s"
    assert r.passed, r.problems


@pytest.mark.parametrize("case", [c for c in CASES if c.fail_fast], ids=lambda c: c.name)
def test_fail_fast_get_raises_unavailable_within_milliseconds(case: Case) -> None:
    r = run_case(case, T, SEQUENTIAL, CONCURRENT)
    assert r.outcomes == {"PoolUnavailable": SEQUENTIAL + CONCURRENT}
    assert r.max_s <= 0.1, f"{case.name}: a fail-fast get() took {r.max_s}s"


TRY_GET_CASES = [c for c in CASES if c.name != "blackhole_checked"]


@pytest.mark.parametrize("case", TRY_GET_CASES, ids=lambda c: c.name)
def test_try_get_ends_at_once_while_backend_is_unreachable(case: Case) -> None:
    r = run_case(case, 0.0, SEQUENTIAL, CONCURRENT, hang=1.0)
    assert not r.hung and r.max_s <= r.bound, r.problems


BLACKHOLE_CHECKED = next(c for c in CASES if c.name == "blackhole_checked")


def test_try_get_with_io_check_ends_at_once_on_blackholed_connection() -> None:
    r = run_case(BLACKHOLE_CHECKED, 0.0, 1, 0, hang=1.0)
    assert not r.hung, r.problems
