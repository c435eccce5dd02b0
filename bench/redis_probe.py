"""What RedisPool's hand-out probe costs: checkout + release, with and without it.

    python bench/redis_probe.py              # 100,000 iterations, best of 5
    python bench/redis_probe.py -n 20000

No Redis needed: the pool connects once to the embedded PING server and then only checks out
and returns; nothing is sent. Variants:

- ``RedisPool``: the shipped pool. ``_on_acquire`` (a poll() of the socket for unread data, plus
  the broken/mode/pid checks) and ``_on_release`` (the mode/unread-replies check) run on every
  hand-out and return; both hooks take the pool off its inlined fast paths.
- ``no probe``: the same without ``_on_acquire``; ``_on_release`` still runs.
- ``no hooks``: neither hook: the core's inlined fast paths (what RedisPool cost before).
"""

from __future__ import annotations

import argparse
import time

from geventconnpool import ConnectionPool
from geventconnpool.contrib.redis import RedisPool
from geventconnpool.testing import PingServer


class NoProbe(RedisPool):
    _on_acquire = ConnectionPool._on_acquire  # type: ignore[assignment]


class NoHooks(NoProbe):
    _on_release = ConnectionPool._on_release  # type: ignore[assignment]


def per_op(pool: RedisPool, n: int) -> float:
    """µs per checkout + release, over ``n`` of them."""
    start = time.perf_counter()
    for _ in range(n):
        with pool.get():
            pass
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    variants = {"RedisPool": RedisPool, "no probe": NoProbe, "no hooks": NoHooks}
    best: dict[str, float] = dict.fromkeys(variants, float("inf"))
    with PingServer() as server:
        pools = {
            label: cls(*server.address, size=1, check_idle_after=None)
            for label, cls in variants.items()
        }
        for pool in pools.values():
            pool.wait_ready(timeout=5)
        for _ in range(args.rounds):  # interleaved, so a noisy neighbour hits every variant
            for label, pool in pools.items():
                best[label] = min(best[label], per_op(pool, args.n))
        with pools["RedisPool"].get() as conn:
            start = time.perf_counter()
            for _ in range(args.n):
                conn.idle_and_quiet()
            alone = (time.perf_counter() - start) / args.n * 1e6
            start = time.perf_counter()
            for _ in range(args.n // 10):
                conn.execute("PING")
            ping = (time.perf_counter() - start) / (args.n // 10) * 1e6
        for pool in pools.values():
            pool.close()
    for label, us in best.items():
        print(f"{label:10s} {us:6.2f} µs per checkout+release")
    extra = best["RedisPool"] - best["no probe"]
    print(f"the probe itself (conn.idle_and_quiet(): checks + one poll(0)): {alone:.2f} µs")
    print(f"for scale, one PING round trip to the embedded server: {ping:.1f} µs")
    print(
        f"the probe adds {extra:.2f} µs per hand-out ({args.n} iterations, best of {args.rounds})"
    )


if __name__ == "__main__":
    main()
