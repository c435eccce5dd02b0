"""``slow``: a slow backend. Each request holds its connection for a PING plus 5-50 ms.

200 greenlets over a pool of 20, as in ``ping``; the extra hold time (uniform, from a seeded
generator so every implementation sees the same sequence) stands for a query that takes a
while. With waits a hundred times longer than in ``ping``, it shows whether a fairness rule
keeps waits even without costing throughput.
"""

from __future__ import annotations

import random
from typing import Any

import gevent

from bench.workloads.ping import loop


def run(make: Any, p: dict[str, Any]) -> dict[str, Any]:
    """Each greenlet count in ``p["greenlets"]`` on one pool of ``p["size"]`` connections."""
    low, high = p["hold_ms"]
    rng = random.Random(1)

    def slow() -> None:
        gevent.sleep(rng.uniform(low, high) / 1e3)

    with make(p["size"], p["size"]) as impl:
        loop(impl, p["greenlets"][0], p["warmup"], 10**9, slow)
        return {str(n): loop(impl, n, p["duration"], p["max_ops"], slow) for n in p["greenlets"]}
