"""A Sentinel failover under write load: failed writes, time to recover, writes lost.

``python -m tests.contrib.sentinel_load`` starts a master, a replica and three sentinels on
127.0.0.1 (tests/servers.py), runs ``writers`` greenlets each doing ``SET`` in a loop through a
:class:`~geventconnpool.contrib.sentinel.SentinelRedisPool`, sends ``SENTINEL FAILOVER`` after
one second and keeps writing until the new master has taken writes for ``after`` seconds. Run
once with ``@retry`` and once without; prints the figures the docs quote.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import gevent

from geventconnpool import retry
from geventconnpool.contrib.redis import RedisError
from geventconnpool.contrib.sentinel import SentinelConnection, SentinelRedisPool
from tests.servers import SentinelCluster, redis_binary, resp_call

HARD_BOUND = 40.0  # seconds: the whole run, whatever happens


@dataclass
class FailoverRun:
    """What one failover under load came to."""

    retry: bool
    watch: bool
    writers: int
    fault: str  # "failover" (SENTINEL FAILOVER) or "crash" (the master is killed)
    writes: int = 0  # acknowledged
    failed: int = 0  # raised to the caller
    failed_by_type: dict[str, int] = field(default_factory=dict)
    switch_s: float | None = None  # FAILOVER sent -> the sentinels name the new master
    recovery_s: float | None = None  # FAILOVER sent -> first write acknowledged by the new master
    max_write_s: float = 0.0  # the slowest write (retries included)
    lost: int = 0  # acknowledged writes missing from the new master afterwards
    writes_to_old_after_switch: int = 0  # acknowledged after the sentinels named the new one
    writes_to_old_after_heard: int = 0  # acknowledged after the pool got +switch-master
    switches_seen: int = 0
    invalidated: int = 0

    def line(self) -> str:
        kind = f"{self.fault}, " + ("@retry" if self.retry else "no retry")
        kind += "" if self.watch else ", watch=False"
        return (
            f"{kind}: {self.writers} writers, {self.writes} writes acknowledged, "
            f"{self.failed} failed {self.failed_by_type or ''}, switch after {self.switch_s}s, "
            f"first write on the new master after {self.recovery_s}s, slowest write "
            f"{self.max_write_s:.3f}s, writes to the old master after the switch: "
            f"{self.writes_to_old_after_switch} ({self.writes_to_old_after_heard} after the pool "
            f"heard of it), {self.lost} acknowledged writes lost"
        )


def run_failover(
    cluster: SentinelCluster,
    *,
    writers: int = 50,
    use_retry: bool = True,
    watch: bool = True,
    crash: bool = False,
    before: float = 1.0,
    after: float = 2.0,
) -> FailoverRun:
    """Write under load, fail over (or kill the master), keep writing; bounded by
    ``HARD_BOUND`` seconds. ``after``: seconds of writing once the new master took one."""
    run = FailoverRun(use_retry, watch, writers, "crash" if crash else "failover")
    old, new = cluster.master.address, cluster.replica.address
    pool = SentinelRedisPool(
        cluster.sentinel_addresses,
        cluster.service,
        watch=watch,
        min_size=10,
        max_size=20,
        timeout=5.0,  # longer than a failover after a crash (about 2.5 s here)
        connect_timeout=1.0,
        reconnect_delay=0.02,
        reconnect_max_delay=0.25,
        socket_timeout=2.0,
    )
    acknowledged: dict[str, str] = {}
    marks: dict[str, float] = {}

    def write_once(key: str, value: str) -> tuple[str, int]:
        with pool.get() as conn:
            conn.execute("SET", key, value)
            assert isinstance(conn, SentinelConnection)
            return conn.address

    write = write_once
    if use_retry:
        write = retry(
            write_once, exc_classes=(OSError,), interval=0.02, backoff=1.5, max_interval=0.25,
            deadline=15.0,
        )  # fmt: skip

    def writer(w: int) -> None:
        for i in range(1_000_000):
            if "stop" in marks:
                return
            key, start = f"k:{w}:{i}", time.monotonic()
            try:
                address = write(key, str(i))
            except (OSError, RedisError) as exc:
                name = type(exc).__name__
                run.failed += 1
                run.failed_by_type[name] = run.failed_by_type.get(name, 0) + 1
                gevent.sleep(0.01)
                continue
            now = time.monotonic()
            run.max_write_s = max(run.max_write_s, now - start)
            run.writes += 1
            acknowledged[key] = str(i)
            if address == new and "recovered" not in marks:
                marks["recovered"] = now
            if address == old and "switched" in marks:
                run.writes_to_old_after_switch += 1
            if address == old and pool.switches:
                run.writes_to_old_after_heard += 1
            gevent.sleep(0)

    crowd = [gevent.spawn(writer, w) for w in range(writers)]
    deadline = time.monotonic() + HARD_BOUND
    try:
        pool.wait_ready(10)
        gevent.sleep(before)
        marks["failover"] = time.monotonic()
        if crash:
            cluster.master.stop()  # SIGKILL: the sentinels see it down after 1 s, then fail over
        else:
            cluster.failover()
        while cluster.master_address() != new and time.monotonic() < deadline:
            gevent.sleep(0.02)
        marks["switched"] = time.monotonic()
        while "recovered" not in marks and time.monotonic() < deadline:
            gevent.sleep(0.02)
        gevent.sleep(max(0.0, min(after, deadline - time.monotonic())))
    finally:
        marks["stop"] = time.monotonic()
        gevent.joinall(crowd, timeout=10)
        gevent.killall(crowd)
        stats = pool.stats()
        run.switches_seen = pool.switches
        pool.close()
    run.invalidated = stats.discarded.invalidated
    run.switch_s = round(marks["switched"] - marks["failover"], 3)
    if "recovered" in marks:
        run.recovery_s = round(marks["recovered"] - marks["failover"], 3)
    run.lost = _count_lost(new, acknowledged)
    return run


def _count_lost(master: tuple[str, int], acknowledged: dict[str, str]) -> int:
    """Acknowledged keys whose value the new master does not have (MGET in batches)."""
    keys = list(acknowledged)
    lost = 0
    for i in range(0, len(keys), 1000):
        batch = keys[i : i + 1000]
        values: Any = resp_call(master, "MGET", *batch, timeout=10)
        lost += sum(
            1
            for k, v in zip(batch, values, strict=True)
            if v is None or v.decode() != acknowledged[k]
        )
    return lost


def main() -> int:
    binary = redis_binary()
    if binary is None:
        print("redis-server is not installed (scripts/ensure-servers)", file=sys.stderr)
        return 2
    variants = [
        {"use_retry": True},
        {"use_retry": False},
        {"use_retry": True, "watch": False},
        {"use_retry": False, "watch": False, "after": 11.0},  # until the old master is demoted
        {"use_retry": True, "crash": True},
        {"use_retry": False, "crash": True},
    ]
    for options in variants:  # type: dict[str, Any]
        cluster = SentinelCluster(binary, tempfile.mkdtemp(prefix="gcp-sentinel-"))
        try:
            cluster.start()
            print(run_failover(cluster, **options).line(), flush=True)
        finally:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
