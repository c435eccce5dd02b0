"""What ThriftPool's hand-out probe costs (issue 19, defect 8): a checkout with and without it,
and a checkout plus one ``ping()`` on loopback. Not a test: run it by hand.

    PYTHONPATH=. python -m tests.contrib.thrift_probe_bench
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import thriftpy2

from geventconnpool import ConnectionPool
from geventconnpool.contrib.thrift import ThriftPool
from tests.servers import LOOPBACK, ThriftServer

kv = thriftpy2.load(str(Path(__file__).with_name("kv.thrift")), module_name="kv_thrift")


class Handler:
    def ping(self) -> str:
        return "pong"


class NoProbe(ThriftPool):
    """ThriftPool as before issue 19: no hand-out hook (the core then skips it)."""

    _on_acquire = ConnectionPool._on_acquire  # type: ignore[assignment]


class HookOnly(ThriftPool):
    """A hand-out hook that costs nothing itself: what the core's hook path adds."""

    def _on_acquire(self, conn: Any) -> bool:
        return True


def probe_alone(port: int, n: int) -> float:
    """Nanoseconds per ``PooledClient.quiet()``: the probe itself."""
    pool = ThriftPool(kv.KV, LOOPBACK, port, size=1)
    with pool.get() as client:
        client.quiet()
        started = time.perf_counter_ns()
        for _ in range(n):
            client.quiet()
        elapsed = (time.perf_counter_ns() - started) / n
    pool.close()
    return elapsed


def per_checkout(cls: type[ThriftPool], port: int, n: int, call: bool) -> float:
    """Nanoseconds per checkout (and ``ping()`` if ``call``), after a warm-up."""
    pool = cls(kv.KV, LOOPBACK, port, size=1, check_idle_after=3600)
    pool.wait_ready(5)

    def run(count: int) -> None:
        for _ in range(count):
            with pool.get() as client:
                if call:
                    client.ping()

    run(n // 10)
    started = time.perf_counter_ns()
    run(n)
    elapsed = (time.perf_counter_ns() - started) / n
    pool.close()
    return elapsed


def main() -> None:
    server = ThriftServer(kv.KV, Handler())
    try:
        for call, n, rounds in ((False, 50_000, 7), (True, 5_000, 5)):
            results: dict[str, list[float]] = {"probe": [], "no probe": [], "hook": []}
            for _ in range(rounds):  # interleaved, so load changes hit all alike
                results["no probe"].append(per_checkout(NoProbe, server.port, n, call))
                results["probe"].append(per_checkout(ThriftPool, server.port, n, call))
                results["hook"].append(per_checkout(HookOnly, server.port, n, call))
            what = "checkout + ping()" if call else "checkout"
            medians: dict[str, Any] = {k: statistics.median(v) for k, v in results.items()}
            print(
                f"{what}: probe {medians['probe']:.0f} ns, no probe {medians['no probe']:.0f} ns "
                f"(median of {rounds}; +{medians['probe'] - medians['no probe']:.0f} ns), "
                f"an empty hook {medians['hook']:.0f} ns"
            )
        alone = statistics.median(probe_alone(server.port, 50_000) for _ in range(5))
        print(f"the probe alone (PooledClient.quiet()): {alone:.0f} ns")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
