"""The client side of chaos runs: a pool of RESP sockets and one request through ``@retry``."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent import socket as gsocket

from geventconnpool import ConnectionPool, retry

TOKEN_SIZE = 16
REPLY_SIZE = len(b"$%d\r\n" % TOKEN_SIZE) + TOKEN_SIZE + 2  # the ECHO reply, in bytes
_tokens = itertools.count(1)


class ReplyMismatch(ConnectionError):
    """A reply that does not answer this request: the connection is out of step."""


def echo(sock: gsocket.socket, deadline: float) -> None:
    """``ECHO <token>`` as a RESP array; the whole exchange must end within ``deadline`` s."""
    token = b"%0*d" % (TOKEN_SIZE, next(_tokens) % 10**TOKEN_SIZE)
    request = b"*2\r\n$4\r\nECHO\r\n$%d\r\n%s\r\n" % (TOKEN_SIZE, token)
    expected = b"$%d\r\n%s\r\n" % (TOKEN_SIZE, token)
    with gevent.Timeout(deadline, TimeoutError(f"no reply within {deadline}s")):
        sock.sendall(request)
        reply = b""
        while len(reply) < len(expected):
            chunk = sock.recv(len(expected) - len(reply))
            if not chunk:
                raise ConnectionResetError(f"connection closed after {len(reply)} reply bytes")
            reply += chunk
    if reply != expected:
        raise ReplyMismatch(f"expected {expected!r}, got {reply!r}")


class ChaosPool(ConnectionPool[gsocket.socket]):
    """Plain TCP sockets to ``address``; counts connects for the soak's accounting checks."""

    def __init__(
        self, *args: Any, address: tuple[str, int], io_timeout: float = 0.5, **kwargs: Any
    ) -> None:
        self.address = address
        self.io_timeout = io_timeout
        self.connects_ok = 0
        self.connects_failed = 0  # errors raised by _new_connection (timeouts are counted apart)
        self.connects_timed_out = 0  # the pool's connect_timeout fired inside _new_connection
        super().__init__(*args, **kwargs)

    def _new_connection(self) -> gsocket.socket:
        sock = gsocket.socket(gsocket.AF_INET, gsocket.SOCK_STREAM)
        try:
            sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
            sock.connect(self.address)
        except gevent.Timeout:
            sock.close()
            self.connects_timed_out += 1
            raise
        except Exception:
            sock.close()
            self.connects_failed += 1
            raise
        except BaseException:
            sock.close()
            raise
        self.connects_ok += 1
        return sock

    def _keepalive(self, conn: gsocket.socket) -> None:
        echo(conn, self.io_timeout)


@dataclass
class Tally:
    """What the requests of one run came to."""

    attempted: int = 0
    succeeded: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # visible errors, by type
    hung: int = 0
    latencies: list[float] = field(default_factory=list)  # of successful requests

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())


@dataclass(frozen=True)
class RequestPolicy:
    """How one request is bounded: get() timeout, I/O deadline, retries; and the hang bound."""

    get_timeout: float = 1.0
    io_timeout: float = 0.5
    retries: int = 2
    retry_interval: float = 0.01

    @property
    def hard_bound(self) -> float:
        """No request may take longer: every attempt's waits plus the retry sleeps, plus 2 s."""
        attempts = self.retries + 1
        sleeps = sum(self.retry_interval * 2**i for i in range(self.retries))
        return attempts * (self.get_timeout + self.io_timeout) + sleeps + 2.0


def make_request(pool: ChaosPool, policy: RequestPolicy) -> Any:
    """A function doing one request on ``pool`` through ``@retry`` (OSError retried)."""

    @retry(max_failures=policy.retries, interval=policy.retry_interval, backoff=2.0, jitter=0.5)
    def request() -> None:
        with pool.get(policy.get_timeout) as conn:
            echo(conn, policy.io_timeout)

    return request


def timed_request(request: Any, policy: RequestPolicy, tally: Tally) -> None:
    """Run one request under the hard bound and count how it ended."""
    tally.attempted += 1
    start = time.monotonic()
    bound = gevent.Timeout(policy.hard_bound)
    bound.start()
    try:
        request()
    except gevent.Timeout as t:
        if t is not bound:
            raise
        tally.hung += 1
    except Exception as e:
        tally.failed[type(e).__name__] += 1
    else:
        tally.succeeded += 1
        tally.latencies.append(time.monotonic() - start)
    finally:
        bound.close()


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values`` (nearest rank), or None if there are none."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]
