"""``single``: one greenlet, one connection, sequential PINGs (what a pool costs uncontended)."""

from __future__ import annotations

from typing import Any

from bench.workloads import ping


def run(make: Any, p: dict[str, Any]) -> dict[str, Any]:
    """The ``ping`` loop with one greenlet on a pool of one connection."""
    with make(1, 1) as impl:
        return {"1": ping.measure(impl, 1, p)}
