"""BalancedPool: P2C least-loaded choice, outlier ejection and probing, DNS, stats; and three real
redis-servers under 200 greenlets (a replica killed and restarted, a replica slowed down)."""

from __future__ import annotations

import contextlib
import gc
import os
import random
import signal
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from geventconnpool import BalancedPool, PoolClosed, PoolUnavailable
from geventconnpool.balanced import Endpoint
from tests.conftest import FakeConn, FakePool, wait_until
from tests.servers import RedisServer, redis_trio  # noqa: F401  (a fixture)

A, B, C, D = (("127.0.0.1", 7001), ("127.0.0.1", 7002), ("127.0.0.1", 7003), ("127.0.0.1", 7004))


@pytest.fixture
def made() -> Iterator[dict[Endpoint, FakePool]]:
    pools: dict[Endpoint, FakePool] = {}
    yield pools
    for pool in pools.values():
        pool.close()


@pytest.fixture
def balanced(made: dict[Endpoint, FakePool]) -> Iterator[Callable[..., BalancedPool[FakeConn]]]:
    """``balanced(endpoints, **options)``: a BalancedPool of FakePools, closed at the end."""
    out: list[BalancedPool[FakeConn]] = []

    def factory(ep: Endpoint) -> FakePool:
        made[ep] = FakePool(max_size=5, min_size=0, name=f"fake-{ep[0]}:{ep[1]}")
        return made[ep]

    def make(endpoints: Any, **options: Any) -> BalancedPool[FakeConn]:
        options.setdefault("rng", random.Random(7))
        bp: BalancedPool[FakeConn] = BalancedPool(endpoints, factory, **options)
        out.append(bp)
        return bp

    yield make
    for bp in out:
        bp.close()


def fail_on(pool: FakePool, times: int) -> None:
    """``times`` disconnects on ``pool``: an OSError inside ``with pool.get()``."""
    for _ in range(times):
        with contextlib.suppress(OSError), pool.get(timeout=1):
            raise OSError("connection reset")


def state(bp: BalancedPool[Any], ep: Endpoint) -> Any:
    return next(s for s in bp.endpoints() if s.endpoint == ep)


# -- choice ----------------------------------------------------------------------------------------


def test_p2c_spreads_checkouts_by_load(balanced: Callable[..., BalancedPool[FakeConn]]) -> None:
    bp = balanced([A, B])
    with contextlib.ExitStack() as held:
        for _ in range(6):
            held.enter_context(bp.get())
        assert [s.outstanding for s in bp.endpoints()] == [3, 3]


def test_an_endpoint_whose_checkouts_last_longer_gets_less_traffic(
    balanced: Callable[..., BalancedPool[FakeConn]], made: dict[Endpoint, FakePool]
) -> None:
    bp = balanced([A, B, C])
    with contextlib.ExitStack() as slow:
        for _ in range(300):
            ctx = bp.get()
            conn = ctx.__enter__()
            if conn in made[C].made and bp.stats(C).in_use < 5:
                slow.push(ctx.__exit__)  # C's requests stay out: C is "slow"
            else:
                ctx.__exit__(None, None, None)
        picks = {ep: bp.stats(ep).acquired for ep in (A, B, C)}
    assert sum(picks.values()) == 300
    assert picks[C] < 0.6 * 300 / 3, picks  # far below its fair share
    assert min(picks[A], picks[B]) > 100, picks


# -- outlier ejection --------------------------------------------------------------------------


def test_consecutive_disconnects_eject_an_endpoint_and_traffic_moves_away(
    balanced: Callable[..., BalancedPool[FakeConn]], made: dict[Endpoint, FakePool]
) -> None:
    bp = balanced([A, B], consecutive_failures=3, base_ejection_time=30)
    fail_on(made[A], 2)
    assert not state(bp, A).ejected and state(bp, A).consecutive_failures == 2
    fail_on(made[A], 1)
    s = state(bp, A)
    assert s.ejected and s.ejections == 1 and 29 < s.ejected_for <= 30
    before = bp.stats(A).acquired
    for _ in range(20):
        with bp.get():
            pass
    assert bp.stats(A).acquired == before
    assert "ejected=1" in repr(bp)


def test_connect_failures_count_too(
    balanced: Callable[..., BalancedPool[FakeConn]], made: dict[Endpoint, FakePool]
) -> None:
    bp = balanced([A, B], consecutive_failures=2)
    made[A].fail = OSError("connection refused")
    with contextlib.suppress(Exception), made[A].get(timeout=0.5):
        pass
    wait_until(lambda: state(bp, A).ejected, what="A ejected after failed connects")


def test_a_clean_exit_resets_the_failure_count(
    balanced: Callable[..., BalancedPool[FakeConn]],
) -> None:
    bp = balanced([A], consecutive_failures=3)
    for _ in range(2):
        with contextlib.suppress(OSError), bp.get():
            raise OSError("reset")
    assert state(bp, A).consecutive_failures == 2
    with bp.get():
        pass
    assert state(bp, A).consecutive_failures == 0
    for _ in range(2):
        with contextlib.suppress(OSError), bp.get():
            raise OSError("reset")
    assert not state(bp, A).ejected


def test_never_more_than_max_ejection_percent_are_ejected(
    balanced: Callable[..., BalancedPool[FakeConn]], made: dict[Endpoint, FakePool]
) -> None:
    bp = balanced([A, B, C, D], consecutive_failures=1, max_ejection_percent=50)
    for ep in (A, B, C):
        fail_on(made[ep], 1)
    assert [s.ejected for s in bp.endpoints()] == [True, True, False, False]
    none = balanced([C, D], consecutive_failures=1, max_ejection_percent=0)
    fail_on(made[C], 3)
    assert not any(s.ejected for s in none.endpoints())


def test_ejection_time_grows_with_each_ejection_and_is_capped(
    balanced: Callable[..., BalancedPool[FakeConn]], made: dict[Endpoint, FakePool]
) -> None:
    bp = balanced(
        [A, B], consecutive_failures=1, base_ejection_time=0.05, max_ejection_time=0.12,
        probe_interval=0.01,
    )  # fmt: skip
    for n, expected in ((1, 0.05), (2, 0.10), (3, 0.12)):
        fail_on(made[A], 1)
        s = state(bp, A)
        assert s.ejected and s.ejections == n
        assert expected - 0.03 < s.ejected_for <= expected
        wait_until(lambda: not state(bp, A).ejected, what="A back after its probe")


def test_an_ejected_endpoint_returns_only_once_a_probe_succeeds(
    balanced: Callable[..., BalancedPool[FakeConn]], made: dict[Endpoint, FakePool]
) -> None:
    probed: list[FakeConn] = []
    bp = balanced(
        [A, B], consecutive_failures=1, base_ejection_time=0.02, probe_interval=0.02,
        probe_timeout=0.05, probe=probed.append,
    )  # fmt: skip
    made[A].fail = OSError("connection refused")
    fail_on(made[A], 1)
    assert state(bp, A).ejected
    wait_until(lambda: made[A].stats().connect_failures >= 3, what="probes that fail")
    assert state(bp, A).ejected and not probed
    made[A].fail = None
    wait_until(lambda: not state(bp, A).ejected, what="A back in rotation")
    assert probed and probed[0] in made[A].made


def test_a_fail_fast_refusal_sends_the_caller_to_another_endpoint(
    made: dict[Endpoint, FakePool],
) -> None:
    def factory(ep: Endpoint) -> FakePool:
        made[ep] = FakePool(max_size=2, min_size=0, fail_fast=True, fail_fast_after=1)
        return made[ep]

    bp = BalancedPool([A, B], factory, rng=random.Random(3))
    try:
        made[A].fail = OSError("refused")
        with contextlib.suppress(Exception), made[A].get(timeout=0.3):
            pass
        assert not made[A].stats().available
        for _ in range(10):
            with bp.get(timeout=1) as conn:
                assert conn in made[B].made
        assert state(bp, A).ejected
    finally:
        bp.close()


# -- DNS -------------------------------------------------------------------------------------------


def test_a_host_name_is_re_resolved_and_gone_addresses_retire_gracefully(
    balanced: Callable[..., BalancedPool[FakeConn]], made: dict[Endpoint, FakePool]
) -> None:
    answers = [["127.0.0.1", "127.0.0.2"]]
    bp = balanced("replicas.test", port=6379, resolver=lambda host: answers[-1],
                  resolve_interval=0.02)  # fmt: skip
    assert [s.endpoint for s in bp.endpoints()] == [("127.0.0.1", 6379), ("127.0.0.2", 6379)]
    old = made[("127.0.0.1", 6379)]
    with old.get():
        pass
    with contextlib.ExitStack() as held:
        conns = [held.enter_context(bp.get()) for _ in range(2)]  # one on each endpoint
        answers.append(["127.0.0.2", "127.0.0.3"])
        wait_until(lambda: ("127.0.0.3", 6379) in [s.endpoint for s in bp.endpoints()])
        assert ("127.0.0.1", 6379) not in [s.endpoint for s in bp.endpoints()]
        assert old.closed and "retiring=1" in repr(bp)
        kept = next(c for c in conns if c in old.made)
        assert not kept.closed  # still the holder's
    assert kept.closed  # closed when it came back
    assert "retiring=0" in repr(bp)
    assert bp.stats().acquired == 3  # the retired pool's counters are kept


def test_an_ejection_triggers_an_early_re_resolve(
    balanced: Callable[..., BalancedPool[FakeConn]], made: dict[Endpoint, FakePool]
) -> None:
    calls: list[str] = []

    def resolver(host: str) -> list[str]:
        calls.append(host)
        return ["127.0.0.1", "127.0.0.2"]

    bp = balanced("replicas.test", port=6379, resolver=resolver, resolve_interval=1000,
                  consecutive_failures=1)  # fmt: skip
    assert calls == ["replicas.test"]
    fail_on(made[("127.0.0.1", 6379)], 1)
    assert state(bp, ("127.0.0.1", 6379)).ejected
    wait_until(lambda: len(calls) == 2, timeout=5, what="a re-resolve after the ejection")


def test_a_failing_resolver_keeps_the_old_addresses_and_recovers(
    balanced: Callable[..., BalancedPool[FakeConn]],
) -> None:
    answers: list[Any] = [OSError("no DNS")]

    def resolver(host: str) -> list[str]:
        if isinstance(answers[-1], Exception):
            raise answers[-1]
        return list(answers[-1])

    bp = balanced("replicas.test", port=6379, resolver=resolver, resolve_interval=0.02)
    with pytest.raises(PoolUnavailable, match="no endpoint") as info:
        with bp.get():
            pass
    assert isinstance(info.value.__cause__, OSError)
    answers.append(["127.0.0.1"])
    wait_until(lambda: len(bp.endpoints()) == 1, what="resolved at last")
    with bp.get():
        pass
    answers.append([])  # an empty answer is not believed
    answers.append(OSError("DNS down again"))
    with bp.get():
        pass
    assert [s.endpoint for s in bp.endpoints()] == [("127.0.0.1", 6379)]


# -- stats, close, input ------------------------------------------------------------------------


def test_stats_per_endpoint_and_combined(
    balanced: Callable[..., BalancedPool[FakeConn]],
) -> None:
    bp = balanced([A, B], name="replicas")
    with bp.get(), bp.get():
        assert bp.stats(A).in_use == 1 and bp.stats(B).in_use == 1
        total = bp.stats()
        assert total.in_use == 2 and total.max_size == 10 and total.name == "replicas"
    assert bp.stats().acquired == 2 and bp.stats().available
    assert [s.pool_name for s in bp.endpoints()] == ["fake-127.0.0.1:7001", "fake-127.0.0.1:7002"]
    with pytest.raises(KeyError):
        bp.stats(C)


def test_close_closes_every_endpoint(
    balanced: Callable[..., BalancedPool[FakeConn]], made: dict[Endpoint, FakePool]
) -> None:
    bp = balanced([A, B])
    bp.close()
    assert all(p.closed for p in made.values()) and bp.closed and bp.stats().closed
    with pytest.raises(PoolClosed):
        with bp.get():
            pass
    bp.close()


def test_bad_input_is_refused_at_construction() -> None:
    def factory(ep: Endpoint) -> FakePool:
        return FakePool(1)

    bad: list[tuple[Any, dict[str, Any], type[Exception], str]] = [
        ([], {}, ValueError, "must not be empty"),
        ([("h", "80")], {}, TypeError, "pair"),
        ([("h", 0)], {}, ValueError, "port"),
        ([A, A], {}, ValueError, "twice"),
        ("host", {}, TypeError, "port"),
        ([A], {"port": 80}, TypeError, "port= goes with a host name"),
        ([A], {"consecutive_failures": 0}, ValueError, "consecutive_failures"),
        ([A], {"max_ejection_percent": 101}, ValueError, "max_ejection_percent"),
        ([A], {"base_ejection_time": 0}, ValueError, "base_ejection_time"),
        ([A], {"resolver": 3}, TypeError, "resolver"),
    ]
    for endpoints, options, error, text in bad:
        with pytest.raises(error, match=text):
            BalancedPool(endpoints, factory, **options)
    with pytest.raises(TypeError, match="factory"):
        BalancedPool([A], None)  # type: ignore[arg-type]


# -- three real redis-servers, 200 greenlets ------------------------------------------------------


def _killer(server: RedisServer) -> Callable[[], None]:
    def kill() -> None:
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGKILL)  # a crash: no goodbye to the clients
        server.stop()  # reaps it

    return kill


@pytest.mark.redis
@pytest.mark.parametrize("use_retry", [False, True], ids=["plain", "retry"])
def test_killing_a_replica_fails_at_most_its_in_flight_requests(
    redis_trio: list[RedisServer],  # noqa: F811
    use_retry: bool,
) -> None:
    from bench.replicas import kill_and_restart  # the checkout's bench/: integration tests only

    endpoints = [s.address for s in redis_trio]
    r = kill_and_restart(endpoints, _killer(redis_trio[1]), redis_trio[1].start,
                         use_retry=use_retry, down=0.5)  # fmt: skip
    assert r.requests > 3000
    assert r.failed <= r.in_flight, r
    if use_retry:
        assert r.failed == 0, r
    assert r.ejected_after < 2.0, r
    assert r.back_after < 5.0, r


@pytest.mark.redis
def test_a_slow_replica_gets_less_than_60_percent_of_its_fair_share(
    redis_trio: list[RedisServer],  # noqa: F811
) -> None:
    from bench.replicas import slow_replica_share  # the checkout's bench/

    r = slow_replica_share([s.address for s in redis_trio], delay=0.002, requests=6000)
    assert r.requests >= 6000
    assert r.slow_share < 0.6 / 3, r


def test_the_background_greenlet_does_not_keep_the_balanced_pool_alive(
    made: dict[Endpoint, FakePool],
) -> None:
    def factory(ep: Endpoint) -> FakePool:
        made[ep] = FakePool(max_size=1, min_size=0)
        return made[ep]

    bp = BalancedPool([A, B], factory, consecutive_failures=1)
    fail_on(made[A], 1)  # an ejection: the background greenlet has work scheduled
    ref = weakref.ref(bp)
    del bp
    gc.collect()
    assert ref() is None


def test_a_leaked_get_context_is_no_longer_outstanding(
    balanced: Callable[..., BalancedPool[FakeConn]],
) -> None:
    bp = balanced([A])
    bp.get().__enter__()  # entered, never exited, dropped at once
    gc.collect()
    assert state(bp, A).outstanding == 0
