"""``python -m bench.replicas``: BalancedPool over three real redis-servers, on loopback.

Two scenarios, each bounded in time (about 10 s in all), 200 greenlets sending ``PING``:

- **kill**: one server is killed with SIGKILL while loaded, then restarted on the same port.
  Reports the requests that failed (next to the requests that were in flight on it), how fast it
  was ejected (traffic moved away) and how fast it served again after the restart; once
  without and once with ``@retry``.
- **slow**: one server sits behind :class:`~geventconnpool.testing.FaultProxy` adding latency;
  reports its share of the traffic next to the fair share (1/3).

The scenario functions are also what ``tests/test_balanced.py`` asserts on.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gevent import monkey

if __name__ == "__main__":
    monkey.patch_all()

import gevent
from gevent.event import Event

from geventconnpool import BalancedPool, retry
from geventconnpool.contrib.redis import RedisConnection, RedisPool
from geventconnpool.testing import FaultProxy

Endpoint = tuple[str, int]


def make_balanced(
    endpoints: Sequence[Endpoint], **options: object
) -> BalancedPool[RedisConnection]:
    """The BalancedPool both scenarios use: RedisPools of 10, fail_fast, quick ejection."""

    def factory(ep: Endpoint) -> RedisPool:
        return RedisPool(
            ep[0],
            ep[1],
            max_size=10,
            min_size=1,  # a fail_fast pool reconnects in the background only up to min_size
            fail_fast=True,
            connect_timeout=1.0,
            reconnect_max_delay=0.2,
            name=f"redis-{ep[0]}:{ep[1]}",
        )

    settings: dict[str, object] = {
        "consecutive_failures": 3,
        "base_ejection_time": 0.5,
        "probe_interval": 0.1,
        "probe_timeout": 0.5,
        "probe": lambda conn: conn.execute("PING"),
        "name": "replicas",
    }
    settings.update(options)
    return BalancedPool(list(endpoints), factory, **settings)  # type: ignore[arg-type]


class Load:
    """``n`` greenlets sending PING through ``bp`` until :meth:`stop`; counts what happens."""

    def __init__(self, bp: BalancedPool[RedisConnection], n: int, *, use_retry: bool) -> None:
        self.bp = bp
        self.ok = 0
        self.failed = 0
        self.errors: list[str] = []
        self._stop = Event()
        request = self._request
        if use_retry:
            request = retry(max_failures=3, interval=0.01)(request)
        self._greenlets = [gevent.spawn(self._run, request) for _ in range(n)]

    def _request(self) -> None:
        with self.bp.get(timeout=5) as conn:
            conn.execute("PING")

    def _run(self, request: Callable[[], None]) -> None:
        for _ in range(1_000_000):  # bounded; stop() ends it long before
            if self._stop.is_set():
                return
            try:
                request()
                self.ok += 1
            except Exception as exc:
                self.failed += 1
                if len(self.errors) < 5:
                    self.errors.append(repr(exc))
            gevent.sleep(0)

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> float:
        """Seconds until ``predicate()`` holds (checked every 5 ms); raises after ``timeout``."""
        start = time.monotonic()
        while not predicate():
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            gevent.sleep(0.005)
        return time.monotonic() - start

    def stop(self) -> None:
        self._stop.set()
        gevent.joinall(self._greenlets, timeout=10)
        gevent.killall(self._greenlets, timeout=5)


@dataclass(frozen=True)
class KillResult:
    requests: int  # requests completed or failed over the whole run
    failed: int
    in_flight: int  # checkouts in progress on the victim when it was killed (waiting or holding)
    holding: int  # of those, the ones holding a connection to it
    ejected_after: float  # seconds from the kill to its ejection: no new traffic from then on
    back_after: float  # seconds from its restart to its first request served again
    errors: tuple[str, ...]


def kill_and_restart(
    endpoints: Sequence[Endpoint],
    kill: Callable[[], None],
    revive: Callable[[], None],
    *,
    victim: int = 1,
    greenlets: int = 200,
    use_retry: bool = False,
    down: float = 1.0,
) -> KillResult:
    """Load, kill ``endpoints[victim]``, wait ``down`` seconds, revive it; measure."""
    bp = make_balanced(endpoints)
    load = Load(bp, greenlets, use_retry=use_retry)
    try:
        load.wait_for(lambda: load.ok >= 3000, 20, "warm-up traffic")
        address = endpoints[victim]
        in_flight = next(e.outstanding for e in bp.endpoints() if e.endpoint == address)
        holding = bp.stats(address).in_use
        kill()
        ejected = load.wait_for(
            lambda: any(e.ejected for e in bp.endpoints() if e.endpoint == address), 10, "ejection"
        )
        gevent.sleep(down)
        revive()
        served = bp.stats(address).acquired
        back = load.wait_for(
            lambda: bp.stats(address).acquired > served + 10, 15, "traffic back on the victim"
        )
        gevent.sleep(0.3)
    finally:
        load.stop()
        bp.close()
    return KillResult(
        load.ok + load.failed, load.failed, in_flight, holding, ejected, back, tuple(load.errors)
    )


@dataclass(frozen=True)
class SlowResult:
    requests: int
    shares: tuple[float, ...]  # of the traffic, per endpoint, in the order given
    slow_share: float
    delay: float


def slow_replica_share(
    endpoints: Sequence[Endpoint],
    *,
    slow: int = 2,
    delay: float = 0.002,
    greenlets: int = 200,
    requests: int = 12_000,
) -> SlowResult:
    """Put ``endpoints[slow]`` behind a FaultProxy adding ``delay`` per chunk; measure shares."""
    with FaultProxy(endpoints[slow]) as proxy:
        proxy.delay(delay)
        routed = [*endpoints[:slow], proxy.address, *endpoints[slow + 1 :]]
        bp = make_balanced(routed)
        load = Load(bp, greenlets, use_retry=False)
        try:
            load.wait_for(lambda: load.ok >= requests, 30, f"{requests} requests")
        finally:
            load.stop()
            counts = [bp.stats(ep).acquired for ep in routed]
            bp.close()
    total = sum(counts)
    shares = tuple(c / total for c in counts)
    return SlowResult(total, shares, shares[slow], delay)


# -- the command ---------------------------------------------------------------------------------


class _Redis:
    """A redis-server of the bench's own, on 127.0.0.1; ``kill()`` sends SIGKILL."""

    def __init__(self, binary: str, port: int) -> None:
        self.binary = binary
        self.port = port
        self.proc: object = None
        self.start()

    def start(self) -> None:
        import subprocess

        from bench.servers import redis_command, wait_listening

        cmd = redis_command(self.binary, self.port)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.proc = proc
        wait_listening(self.port, proc, 10.0)

    def kill(self) -> None:
        proc = self.proc
        if proc is not None:
            os.kill(proc.pid, signal.SIGKILL)  # type: ignore[attr-defined]
            proc.wait()  # type: ignore[attr-defined]
            self.proc = None


def main(argv: Sequence[str] | None = None) -> int:
    from bench.servers import HOST, free_port

    parser = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__)
    parser.add_argument("--greenlets", type=int, default=200)
    parser.add_argument("--delay", type=float, default=0.002, help="latency of the slow one (s)")
    args = parser.parse_args(argv)
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(binary, os.X_OK):
        print("redis-server is not installed: sudo apt-get install -y redis-server")
        return 2
    servers = [_Redis(binary, free_port()) for _ in range(3)]
    endpoints = [(HOST, s.port) for s in servers]
    try:
        print(f"3 redis-servers on {HOST}, {args.greenlets} greenlets, RedisPool(max_size=10)")
        for use_retry in (False, True):
            r = kill_and_restart(
                endpoints,
                servers[1].kill,
                servers[1].start,
                greenlets=args.greenlets,
                use_retry=use_retry,
            )
            label = "with @retry   " if use_retry else "without @retry"
            ejected = max(r.ejected_after * 1000, 5)  # polled every 5 ms
            print(
                f"kill -9 one, {label}: {r.failed} of {r.requests} requests failed "
                f"({r.in_flight} in flight on it, {r.holding} holding a connection); ejected "
                f"within {ejected:.0f} ms; served again {r.back_after * 1000:.0f} ms after restart"
            )
        s = slow_replica_share(endpoints, delay=args.delay, greenlets=args.greenlets)
        shares = ", ".join(f"{x:.1%}" for x in s.shares)
        print(
            f"one behind a proxy adding {s.delay * 1000:g} ms per chunk: traffic shares {shares} "
            f"(slow one {s.slow_share:.1%}, fair share 33.3%) over {s.requests} requests"
        )
    finally:
        for server in servers:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
