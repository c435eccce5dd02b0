"""A child process: ``python -m bench.child '<json job>'`` runs one workload on one implementation.

It monkey-patches first, as a gevent application does, so that the threading-based pools
(generic-connection-pool, redis-py, SQLAlchemy) become cooperative. Its last stdout line is
``RESULT <json>``: ``{"version", "cells"}``, or ``{"skipped": why}``, or ``{"error": why}``.
"""

from gevent import monkey

monkey.patch_all()

import contextlib  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from typing import Any  # noqa: E402

from bench.common import Counter, fake_factory, socket_factory  # noqa: E402
from bench.impls import ADAPTERS, Impl, NotApplicable, Spec  # noqa: E402

Job = dict[str, Any]


def maker(job: Job, built: list[Impl]) -> Any:
    """The ``make`` a workload gets: builds, starts and finally closes the job's implementation."""
    cls = ADAPTERS[job["impl"]]

    @contextlib.contextmanager
    def make(
        min_size: int, max_size: int, fake: bool = False, delay: float = 0.0
    ) -> Iterator[Impl]:
        if min_size < max_size and not cls.elastic:
            raise NotApplicable("fixed size: cannot have min_size < max_size")
        counter = Counter()
        host, port = job["host"], job["port"]
        factory = fake_factory(counter, delay) if fake else socket_factory(host, port, counter)
        impl = cls(Spec(min_size, max_size, factory, counter, host, port, fake, delay))
        built.append(impl)
        try:
            impl.start()
            yield impl
        finally:
            impl.close()

    return make


def run(job: Job) -> dict[str, Any]:
    """Run the job; never raises (the parent reads what happened from the result)."""
    built: list[Impl] = []
    try:
        workload = importlib.import_module(f"bench.workloads.{job['workload']}")
        cells = workload.run(maker(job, built), job["params"])
        return {"version": built[0].version(), "cells": cells}
    except NotApplicable as exc:
        return {"skipped": f"n/a: {exc}", "anywhere": exc.anywhere}
    except ModuleNotFoundError as exc:  # a peer, or a module of ours that is not written yet
        if exc.name != "geventconnpool":
            return {"skipped": f"not installed: {exc}", "anywhere": True}
        return {"error": f"{exc}", "traceback": traceback.format_exc(-6)}
    except Exception as exc:  # an ImportError inside a package is a bug, not a missing peer
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(-6)}


if __name__ == "__main__":
    print("RESULT " + json.dumps(run(json.loads(sys.argv[1]))), flush=True)
