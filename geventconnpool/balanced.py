"""Replicas: :class:`BalancedPool` spreads checkouts over equivalent endpoints, one pool each.

::

    replicas = BalancedPool(
        [("10.0.0.1", 6379), ("10.0.0.2", 6379), ("10.0.0.3", 6379)],
        lambda ep: RedisPool(*ep, max_size=10, fail_fast=True, name=f"redis-{ep[0]}:{ep[1]}"),
    )
    with replicas.get(timeout=2) as conn:
        conn.execute("GET", "key")

- **Choice**: power of two random choices on the checkouts outstanding per endpoint (Finagle's
  P2C least-loaded): two endpoints drawn at random, the less loaded one wins, so a slow replica,
  whose checkouts last longer, gets less traffic.
- **Passive outlier ejection** (Envoy's outlier detection): ``consecutive_failures`` connect
  failures or disconnects in a row eject an endpoint for ``base_ejection_time`` times the number
  of times it was ejected (capped at ``max_ejection_time``); at most ``max_ejection_percent`` of
  the endpoints are ejected at once. When its time is up, the background greenlet probes it and
  brings it back on success.
- **DNS**: given a host name, the addresses are re-resolved every ``resolve_interval`` seconds
  and after an ejection; the pools of addresses that disappeared are closed gracefully (their
  connections in use are closed when they come back).

Failures are seen through the endpoint pools' documented hooks: ``_new_connection`` and
``_on_connect`` raising (a failed connect), ``_on_discard`` with reason ``error`` (a disconnect
inside ``with``). A clean exit from ``with`` resets the count.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import gevent
import gevent.socket

from ._loop import Loop
from ._multi import combine_stats, counters_only, override_hook
from ._options import DEFAULT_TIMEOUT, check_int, check_name, check_seconds
from .errors import PoolClosed, PoolUnavailable
from .pool import ConnectionPool
from .stats import PoolStats

__all__ = ["BalancedPool", "Endpoint", "EndpointState", "resolve_host"]

C = TypeVar("C")
Endpoint = tuple[str, int]
Resolver = Callable[[str], Sequence[str]]

_UNSET: Any = object()
_numbers = itertools.count(1)
_monotonic = time.monotonic
log = logging.getLogger("geventconnpool.balanced")


def resolve_host(host: str) -> list[str]:
    """The default resolver: every address of ``host`` (gevent's ``getaddrinfo``), in order."""
    out: list[str] = []
    for info in gevent.socket.getaddrinfo(host, None, 0, gevent.socket.SOCK_STREAM):
        addr = str(info[4][0])
        if addr not in out:
            out.append(addr)
    return out


@dataclass(frozen=True, slots=True)
class EndpointState:
    """One endpoint as :meth:`BalancedPool.endpoints` reports it."""

    endpoint: Endpoint
    pool_name: str
    outstanding: int  # checkouts in progress: waiting for a connection or holding one
    consecutive_failures: int
    ejected: bool
    ejections: int  # times ejected (the ejection time is base_ejection_time times this)
    ejected_for: float  # seconds left before the next probe; 0.0 when not ejected


class _Endpoint(Generic[C]):
    __slots__ = (
        "address", "ejected", "ejected_until", "ejections", "failures", "outstanding", "pool",
        "returned_at",
    )  # fmt: skip

    def __init__(self, address: Endpoint, pool: ConnectionPool[C]) -> None:
        self.address = address
        self.pool = pool
        self.outstanding = 0
        self.failures = 0  # connect failures and disconnects in a row
        self.ejected = False
        self.ejected_until = 0.0
        self.ejections = 0
        self.returned_at = _monotonic()  # when it last came back (or was added)


class _BalancedCheckout(Generic[C]):
    """The context manager returned by :meth:`BalancedPool.get`."""

    __slots__ = ("_bp", "_ep", "_inner", "_timeout")

    def __init__(self, bp: BalancedPool[C], timeout: float | None) -> None:
        self._bp = bp
        self._timeout = timeout
        self._ep: _Endpoint[C] | None = None
        self._inner: Any = None

    def __enter__(self) -> C:
        if self._ep is not None:
            raise RuntimeError("this get() context is already entered; call get() again")
        bp = self._bp
        deadline = None if self._timeout is None else _monotonic() + self._timeout
        tried: list[_Endpoint[C]] = []
        while True:
            ep = bp._choose(tried)
            remaining = None if deadline is None else max(0.0, deadline - _monotonic())
            ep.outstanding += 1
            try:
                inner = ep.pool.get(remaining)
                conn = inner.__enter__()
            except (PoolUnavailable, PoolClosed) as exc:
                ep.outstanding -= 1
                bp._refused(ep, exc)
                tried.append(ep)
                if not bp._has_other(tried):
                    raise
                continue
            except BaseException:
                ep.outstanding -= 1
                raise
            self._ep, self._inner = ep, inner
            return conn

    def __exit__(self, exc_type: type[BaseException] | None, *rest: Any) -> None:
        ep, inner = self._ep, self._inner
        if ep is None:
            return
        self._ep = self._inner = None
        try:
            inner.__exit__(exc_type, *rest)
        finally:
            ep.outstanding -= 1
            if exc_type is None:
                ep.failures = 0
            if ep.pool.closed:
                self._bp._drop_retired()

    def __del__(self) -> None:
        ep = self._ep
        if ep is not None:  # entered, never exited, now garbage: no longer outstanding
            self._ep = None
            ep.outstanding -= 1


@dataclass(frozen=True, slots=True)
class _Settings(Generic[C]):
    """BalancedPool's checked options (ejection, probes, DNS)."""

    ARGUMENTS: ClassVar[frozenset[str]] = frozenset(
        (
            "consecutive_failures", "base_ejection_time", "max_ejection_time",
            "max_ejection_percent", "probe_interval", "probe_timeout", "probe",
            "resolve_interval", "resolver",
        )
    )  # fmt: skip

    threshold: int  # consecutive_failures
    base: float  # base_ejection_time
    cap: float  # max_ejection_time
    max_percent: int  # max_ejection_percent
    probe_interval: float
    probe_timeout: float
    probe: Callable[[C], object] | None
    resolve_interval: float | None
    resolver: Resolver

    @classmethod
    def check(cls, **given: Any) -> _Settings[C]:
        """Check each argument; the error names it."""
        max_percent = check_int("max_ejection_percent", given["max_ejection_percent"], 0) or 0
        if max_percent > 100:
            raise ValueError(f"max_ejection_percent must be <= 100, got {max_percent}")
        probe, resolver = given["probe"], given["resolver"]
        if probe is not None and not callable(probe):
            raise TypeError(f"probe must be callable (conn -> anything), not {probe!r}")
        if resolver is not None and not callable(resolver):
            raise TypeError(f"resolver must be callable (host -> addresses), not {resolver!r}")
        return cls(
            threshold=check_int("consecutive_failures", given["consecutive_failures"], 1) or 1,
            base=_seconds("base_ejection_time", given["base_ejection_time"]),
            cap=_seconds("max_ejection_time", given["max_ejection_time"]),
            max_percent=max_percent,
            probe_interval=_seconds("probe_interval", given["probe_interval"]),
            probe_timeout=_seconds("probe_timeout", given["probe_timeout"]),
            probe=probe,
            resolve_interval=check_seconds(
                "resolve_interval", given["resolve_interval"], allow_zero=False
            ),
            resolver=resolver or resolve_host,
        )


class BalancedPool(Generic[C]):
    """Checkouts spread over equivalent endpoints by P2C least-loaded, with outlier ejection.

    ``endpoints``: a list of ``(host, port)``, or a host name (with ``port=``) whose addresses
    are the endpoints. ``factory(endpoint)`` makes the pool of one endpoint; name it after the
    endpoint (metrics, logs), and give it ``fail_fast=True`` so that a dead endpoint refuses at
    once and the caller is sent elsewhere instead of waiting out its deadline.
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint] | str,
        factory: Callable[[Endpoint], ConnectionPool[C]],
        *,
        port: int | None = None,
        consecutive_failures: int = 5,
        base_ejection_time: float = 30.0,
        max_ejection_time: float = 300.0,
        max_ejection_percent: int = 50,
        probe_interval: float = 1.0,
        probe_timeout: float = 2.0,
        probe: Callable[[C], object] | None = None,
        resolve_interval: float | None = 30.0,
        resolver: Resolver | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        name: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not callable(factory):
            raise TypeError(f"factory must be callable (endpoint -> pool), not {factory!r}")
        self._host, self._port, fixed = _check_endpoints(endpoints, port)
        given = {k: v for k, v in locals().items() if k in _Settings.ARGUMENTS}
        self._s: _Settings[C] = _Settings.check(**given)
        self.timeout = check_seconds("timeout", timeout)
        self.name: str = check_name(name) or f"balanced-{next(_numbers)}"
        self._factory = factory
        self._rng = rng or random.Random()
        self._init_state()
        self._worker = Loop(self, _background_turn, name=f"{self.name!r}", start=False, logger=log)
        if fixed is not None:
            self._apply(fixed)
        else:
            self._resolve()
        self._worker.start()

    def _init_state(self) -> None:
        """The state: endpoints in rotation and retired, counters of dropped ones, DNS times."""
        self._active: list[_Endpoint[C]] = []  # endpoints in rotation (ejected ones included)
        self._retired: list[_Endpoint[C]] = []  # gone from DNS: closed, connections still out
        self._gone = combine_stats(self.name, [])  # counters of retired pools already dropped
        self._closed = False
        self._resolved_at = -math.inf  # when DNS was last asked
        self._resolve_soon = False  # an ejection asks for an early re-resolve
        self._last_resolve_error: BaseException | None = None

    # ------------------------------------------------------------------ public API
    def get(self, timeout: float | None = _UNSET) -> _BalancedCheckout[C]:
        """``with bp.get() as conn:`` a connection from the chosen endpoint's pool.

        ``timeout`` bounds the whole call, including trying another endpoint when the first one
        refuses (``PoolUnavailable``); the ``timeout`` option applies when it is not given.
        """
        if timeout is _UNSET:
            timeout = self.timeout
        elif timeout is not None:
            timeout = check_seconds("timeout", timeout)
        if self._closed:
            raise PoolClosed(self._closed_message())
        return _BalancedCheckout(self, timeout)

    def stats(self, endpoint: Endpoint = _UNSET) -> PoolStats:
        """The stats of one endpoint's pool, or (no argument) of all combined.

        The combined view includes retired endpoints (their counters are kept) and is
        ``available`` while some endpoint is in rotation and available.
        """
        if endpoint is not _UNSET:
            for ep in (*self._active, *self._retired):
                if ep.address == tuple(endpoint):
                    return ep.pool.stats()
            raise KeyError(f"{self.name!r} has no endpoint {endpoint!r}")
        live = [(ep, ep.pool.stats()) for ep in (*self._active, *self._retired)]
        available = any(s.available and not ep.ejected for ep, s in live if ep in self._active)
        parts = [s for _, s in live]
        return combine_stats(
            self.name, [*parts, self._gone], closed=self._closed, available=available
        )

    def endpoints(self) -> list[EndpointState]:
        """The endpoints in rotation, with their load and ejection state."""
        now = _monotonic()
        return [
            EndpointState(
                endpoint=ep.address,
                pool_name=str(ep.pool.name),
                outstanding=ep.outstanding,
                consecutive_failures=ep.failures,
                ejected=ep.ejected,
                ejections=ep.ejections,
                ejected_for=max(0.0, ep.ejected_until - now) if ep.ejected else 0.0,
            )
            for ep in self._active
        ]

    def pool(self, endpoint: Endpoint) -> ConnectionPool[C]:
        """The pool of an endpoint in rotation (for ``wait_ready()``, ``dump()``, metrics)."""
        for ep in self._active:
            if ep.address == tuple(endpoint):
                return ep.pool
        raise KeyError(f"{self.name!r} has no endpoint {endpoint!r} in rotation")

    def pools(self) -> list[ConnectionPool[C]]:
        """The pools of the endpoints in rotation."""
        return [ep.pool for ep in self._active]

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float | None = None) -> None:
        """Close every endpoint's pool (each as ``pool.close(timeout)``); idempotent."""
        timeout = check_seconds("timeout", timeout)
        if not self._closed:
            self._closed = True
            worker = self._worker.stop()
            if worker is not None:
                worker.kill(block=False)  # it may be blocked in a probe
            self._retired.extend(self._active)
            self._active = []
        closers = [gevent.spawn(ep.pool.close, timeout) for ep in self._retired]
        gevent.joinall(closers, raise_error=True)
        self._drop_retired()

    def __enter__(self) -> BalancedPool[C]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        closed = " closed" if self._closed else ""
        ejected = sum(ep.ejected for ep in self._active)
        outstanding = sum(ep.outstanding for ep in (*self._active, *self._retired))
        return (
            f"<{type(self).__name__} {self.name!r}{closed} endpoints={len(self._active)} "
            f"ejected={ejected} retiring={len(self._retired)} outstanding={outstanding}>"
        )

    # ------------------------------------------------------------------ choice
    def _choose(self, tried: list[_Endpoint[C]]) -> _Endpoint[C]:
        """P2C least-loaded among endpoints in rotation, not ejected, not tried yet.

        If every untried endpoint is ejected, they are used anyway (better than nothing).
        """
        if self._closed:
            raise PoolClosed(self._closed_message())
        fresh = [ep for ep in self._active if ep not in tried]
        candidates = [ep for ep in fresh if not ep.ejected] or fresh
        if not candidates:
            if self._host is not None:
                self._resolve_soon = True
                self._worker.wake()
            raise PoolUnavailable(
                f"{self.name!r}: no endpoint to use ({len(self._active)} in rotation, "
                f"{len(tried)} refused); is the service up, does its name resolve?"
            ) from self._last_resolve_error
        if len(candidates) == 1:
            return candidates[0]
        a, b = self._rng.sample(candidates, 2)
        return a if a.outstanding <= b.outstanding else b

    def _has_other(self, tried: list[_Endpoint[C]]) -> bool:
        return any(ep not in tried for ep in self._active)

    # ------------------------------------------------------------------ failures, ejection
    def _hook(self, pool: ConnectionPool[C]) -> None:
        """See connect failures and disconnects of ``pool`` through its hooks."""
        ref = weakref.ref(self)

        def failed(p: ConnectionPool[C]) -> None:
            bp = ref()
            if bp is not None:
                bp._failure(p)

        def new_connection(p: ConnectionPool[C], original: Callable[..., Any]) -> Any:
            try:
                return original(p)
            except Exception:
                failed(p)
                raise

        def on_connect(p: ConnectionPool[C], original: Callable[..., Any], conn: Any) -> None:
            try:
                original(p, conn)
            except Exception:
                failed(p)
                raise

        def on_discard(
            p: ConnectionPool[C], original: Callable[..., Any], conn: Any, why: str
        ) -> None:
            if why == "error":
                failed(p)
            original(p, conn, why)

        override_hook(pool, "_new_connection", new_connection)
        override_hook(pool, "_on_connect", on_connect)
        override_hook(pool, "_on_discard", on_discard)

    def _failure(self, pool: ConnectionPool[C]) -> None:
        """A connect failed or a connection broke on ``pool``'s endpoint. Never switches."""
        for ep in self._active:
            if ep.pool is pool:
                ep.failures += 1
                if ep.failures >= self._s.threshold and not ep.ejected:
                    self._eject(ep)
                return

    def _refused(self, ep: _Endpoint[C], exc: BaseException) -> None:
        """``ep``'s pool refused a get(): PoolUnavailable means its backend is down."""
        if isinstance(exc, PoolUnavailable) and not ep.ejected and ep in self._active:
            ep.failures = max(ep.failures, self._s.threshold)
            self._eject(ep)

    def _eject(self, ep: _Endpoint[C]) -> None:
        """Take ``ep`` out of rotation for a while, unless too many are out already."""
        ejected = sum(e.ejected for e in self._active)
        limit = math.floor(len(self._active) * self._s.max_percent / 100)
        if self._s.max_percent:
            limit = max(1, limit)
        if ejected >= limit:
            return
        now = _monotonic()
        if now - ep.returned_at > self._s.cap:
            ep.ejections = 0  # healthy for a long while: start over at the base time
        ep.ejections += 1
        ep.ejected = True
        ep.ejected_until = now + min(self._s.base * ep.ejections, self._s.cap)
        log.warning(
            "%r: endpoint %s:%d ejected for %.3gs after %d failures in a row (ejection #%d)",
            self.name,
            *ep.address,
            ep.ejected_until - now,
            ep.failures,
            ep.ejections,
        )
        if self._host is not None:
            self._resolve_soon = True
        self._worker.wake()

    def _probe_due(self, now: float) -> None:
        """Probe every ejected endpoint whose time is up; bring back those that answer."""
        for ep in [e for e in self._active if e.ejected and e.ejected_until <= now]:
            try:
                with ep.pool.get(self._s.probe_timeout) as conn:
                    if self._s.probe is not None:
                        self._s.probe(conn)
            except Exception as exc:
                ep.ejected_until = _monotonic() + self._s.probe_interval
                log.debug("%r: probe of %s:%d failed: %r", self.name, *ep.address, exc)
                continue
            if ep in self._active:
                ep.ejected = False
                ep.failures = 0
                ep.returned_at = _monotonic()
                log.info("%r: endpoint %s:%d is back in rotation", self.name, *ep.address)

    # ------------------------------------------------------------------ DNS
    def _resolve(self) -> None:
        """Ask the resolver for the host's addresses and apply them (may switch greenlets)."""
        assert self._host is not None and self._port is not None
        self._resolved_at = _monotonic()
        self._resolve_soon = False
        try:
            addresses = list(dict.fromkeys(self._s.resolver(self._host)))
        except Exception as exc:
            self._last_resolve_error = exc
            log.warning("%r: resolving %r failed: %r", self.name, self._host, exc)
            return
        if not addresses:
            log.warning(
                "%r: %r resolved to no address; keeping the old ones", self.name, self._host
            )
            return
        self._last_resolve_error = None
        self._apply([(addr, self._port) for addr in addresses])

    def _apply(self, wanted: list[Endpoint]) -> None:
        """Make pools for new endpoints; retire the pools of endpoints no longer wanted."""
        if self._closed:
            return
        have = {ep.address: ep for ep in self._active}
        for address in wanted:
            if address not in have:
                pool = self._factory(address)
                if not isinstance(pool, ConnectionPool):
                    raise TypeError(f"factory({address!r}) must return a ConnectionPool")
                self._hook(pool)
                self._active.append(_Endpoint(address, pool))
                log.info("%r: endpoint %s:%d added", self.name, *address)
        gone = [ep for ep in self._active if ep.address not in wanted]
        if gone:
            self._active = [ep for ep in self._active if ep.address in wanted]
            self._retired.extend(gone)
            for ep in gone:
                log.info("%r: endpoint %s:%d retired (no longer resolved)", self.name, *ep.address)
                ep.pool.close()
            self._drop_retired()

    def _drop_retired(self) -> None:
        """Forget retired pools with no connection out; keep their counters."""
        for ep in list(self._retired):
            s = ep.pool.stats()
            if ep.outstanding == 0 and s.closed and s.in_use == 0:
                self._retired.remove(ep)
                self._gone = combine_stats(self.name, [self._gone, counters_only(s)])

    # ------------------------------------------------------------------ background
    def _tick(self) -> float:
        """One round of background work; returns seconds until the next one is due."""
        now = _monotonic()
        self._probe_due(now)
        if self._host is not None and now - self._resolved_at >= self._resolve_gap():
            self._resolve()
        self._drop_retired()
        return self._next_due()

    def _next_due(self) -> float:
        now = _monotonic()
        due = [ep.ejected_until - now for ep in self._active if ep.ejected]
        if self._host is not None:
            due.append(self._resolved_at + self._resolve_gap() - now)
        if self._retired:
            due.append(1.0)
        return max(0.01, min([*due, 60.0]))

    def _resolve_gap(self) -> float:
        """Seconds between resolves: ``resolve_interval``, or at most 1 s after a failure."""
        interval = math.inf if self._s.resolve_interval is None else self._s.resolve_interval
        return min(interval, 1.0) if self._resolve_soon else interval

    def _closed_message(self) -> str:
        return f"{self.name!r} is closed; create a new BalancedPool or stop calling get()"


def _background_turn(bp: BalancedPool[Any]) -> float:
    """The worker's turn (a :class:`~geventconnpool._loop.Loop`): probes, DNS, retired pools."""
    return bp._tick()


def _seconds(name: str, value: Any) -> float:
    seconds = check_seconds(name, value, optional=False, allow_zero=False)
    assert seconds is not None
    return seconds


def _check_endpoints(
    endpoints: Any, port: Any
) -> tuple[str | None, int | None, list[Endpoint] | None]:
    """(host, port, None) for a host name, (None, None, endpoints) for a list."""
    if isinstance(endpoints, str):
        if not endpoints:
            raise ValueError("endpoints must be a host name or a list of (host, port)")
        checked = check_int("port", port, 1)
        assert checked is not None
        if checked > 65535:
            raise ValueError(f"port must be <= 65535, got {port}")
        return endpoints, checked, None
    if port is not None:
        raise TypeError("port= goes with a host name; a list gives (host, port) pairs")
    if isinstance(endpoints, (bytes, dict)) or not isinstance(endpoints, Sequence):
        raise TypeError(
            f"endpoints must be a host name or a list of (host, port), not {endpoints!r}"
        )
    out: list[Endpoint] = []
    for item in endpoints:
        ok = isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)
        if not ok or isinstance(item[1], bool) or not isinstance(item[1], int):
            raise TypeError(f"each endpoint must be a (host, port) pair, not {item!r}")
        if not 0 < item[1] <= 65535:
            raise ValueError(f"endpoint {item!r}: port must be in 1..65535")
        if (item[0], item[1]) in out:
            raise ValueError(f"endpoint {item!r} is listed twice")
        out.append((item[0], item[1]))
    if not out:
        raise ValueError("endpoints must not be empty")
    return None, None, out
