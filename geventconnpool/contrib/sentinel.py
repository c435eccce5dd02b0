"""Redis behind Sentinel: :class:`SentinelRedisPool` follows the master through failovers.

::

    pool = SentinelRedisPool([("127.0.0.1", 26379)], "mymaster", size=10,
                             reconnect_max_delay=0.5)

    @retry(max_failures=20, interval=0.05, max_interval=0.5, deadline=10)
    def save(key, value):
        with pool.get() as conn:
            conn.execute("SET", key, value)

Every new connection asks the sentinels for the master (``SENTINEL get-master-addr-by-name``),
connects there and checks ``ROLE``: a server that is not the master is a failed connect, so the
pool never writes to a replica. A background greenlet subscribed to a sentinel's
``+switch-master`` channel calls :meth:`~geventconnpool.ConnectionPool.invalidate` when the
master changes, so connections to the old master are dropped (idle ones at once, busy ones when
they come back). A ``-READONLY`` reply (the old master was demoted under a connection) raises
:class:`ReadOnlyError`, a connection error: the pool discards the connection and ``@retry``
retries on the new master.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import gevent
import gevent.select
import gevent.socket

from .. import _backoff
from .._log import RateLimitedLog
from .._loop import Loop
from ._resp import Arg, ReadOnlyError
from .redis import (
    RedisConnection,
    RedisConnectionError,
    RedisError,
    RedisPool,
    RedisTimeoutError,
)
from .tcp import SocketConnector, default_ssl_context

__all__ = [
    "MasterNotFoundError",
    "NotMasterError",
    "ReadOnlyError",
    "SentinelConnection",
    "SentinelRedisPool",
]

log = logging.getLogger("geventconnpool.contrib.sentinel")

_CONNECTOR_OPTIONS = ("ssl_context", "server_hostname", "tcp_keepalive", "socket_timeout")
_WATCH_POLL = 1.0  # seconds between the watcher's checks that its pool is still alive
_WATCH_PING_EVERY = 5  # polls without a message after which the watcher PINGs its sentinel


class MasterNotFoundError(RedisConnectionError):
    """No sentinel answered with the master's address (a failed connect for the pool)."""


class NotMasterError(RedisConnectionError):
    """The server the sentinels named is not (or no longer) a master: ``ROLE`` said otherwise."""


class SentinelConnection(RedisConnection):
    """A :class:`~geventconnpool.contrib.redis.RedisConnection` that knows its server and turns
    ``-READONLY`` replies into :class:`ReadOnlyError` (an ``OSError``: discarded, retried)."""

    def __init__(self, sock: gevent.socket.socket, connector: SocketConnector) -> None:
        super().__init__(sock)
        self.connector = connector
        #: ``(host, port)`` of the server this connection talks to.
        self.address: tuple[str, int] = (str(connector.host), int(connector.port or 0))

    def execute(self, *args: Arg) -> Any:
        try:
            return super().execute(*args)
        except ReadOnlyError as exc:  # the server was demoted to a replica: say which one
            raise ReadOnlyError(f"{self.address[0]}:{self.address[1]}: {exc}") from exc


def _check_sentinels(sentinels: Any) -> list[tuple[str, int]]:
    if isinstance(sentinels, (str, bytes)) or not isinstance(sentinels, Iterable):
        raise TypeError(f"sentinels must be a list of (host, port), got {sentinels!r}")
    out: list[tuple[str, int]] = []
    for item in sentinels:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(f"sentinels must be (host, port) pairs, got {item!r}")
        host, port = item
        if not isinstance(host, str) or not host:
            raise ValueError(f"sentinel host must be a non-empty str, got {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"sentinel port must be an int in 1..65535, got {port!r}")
        out.append((host, port))
    if not out:
        raise ValueError("sentinels must name at least one (host, port)")
    return out


class _QuestionTimeout(Exception):
    """The deadline of one question to a sentinel passed (ours: never another ``Timeout``)."""


def ask_sentinel(address: tuple[str, int], timeout: float, *command: Arg) -> Any:
    """Send one command to a sentinel on a fresh connection; its reply (errors raised).

    ``timeout`` bounds the whole question (connect, send and the whole reply), not each
    ``recv``: a sentinel trickling a byte at a time cannot hold the caller longer. Raises
    ``OSError`` or :class:`RedisError` (a :class:`RedisTimeoutError` when time is up).
    """
    expired = _QuestionTimeout()
    timer = gevent.Timeout(timeout, expired)
    timer.start()
    sock = None
    try:
        sock = gevent.socket.create_connection(address, timeout=timeout)
        return RedisConnection(sock, socket_timeout=timeout).execute(*command)
    except _QuestionTimeout as exc:
        if exc is not expired:
            raise
        raise RedisTimeoutError(
            f"sentinel {address[0]}:{address[1]} gave no whole answer within "
            f"sentinel_timeout={timeout}s"
        ) from None
    finally:
        timer.cancel()
        if sock is not None:
            sock.close()


def parse_master_address(reply: Any) -> tuple[str, int]:
    """The ``(host, port)`` in a ``get-master-addr-by-name`` answer; ValueError if it is not
    one (a nil, integers, a host that is not printable ASCII/UTF-8, a port outside 1..65535)."""
    if not isinstance(reply, list) or len(reply) != 2:
        raise ValueError("no master address (a nil or not a two-element array)")
    host, port = reply
    if not isinstance(host, (bytes, str)) or not isinstance(port, (bytes, str)):
        raise ValueError("the master address is not two strings")
    try:
        host = host.decode() if isinstance(host, bytes) else host
        port = port.decode("ascii") if isinstance(port, bytes) else port
    except UnicodeDecodeError:
        raise ValueError("the master address is not valid UTF-8") from None
    if not host or len(host) > 255 or not host.isprintable() or any(c.isspace() for c in host):
        raise ValueError(f"invalid master host {host[:64]!r}")
    if not (port.isascii() and port.isdigit()) or len(port) > 5 or not 0 < int(port) < 65536:
        raise ValueError(f"invalid master port {port[:16]!r}")
    return host, int(port)


def parse_switch_master(message: Any) -> tuple[str, tuple[str, int], tuple[str, int]] | None:
    """``(service, old, new)`` from a ``+switch-master`` payload (``name old-ip old-port
    new-ip new-port``), or None if it is not one (wrong type, fields, ports or encoding)."""
    if isinstance(message, bytes):
        try:
            message = message.decode()
        except UnicodeDecodeError:
            return None
    if not isinstance(message, str):
        return None
    parts = message.split()
    if len(parts) != 5:
        return None
    try:
        old = parse_master_address([parts[1], parts[2]])
        new = parse_master_address([parts[3], parts[4]])
    except ValueError:
        return None
    return parts[0], old, new


class SentinelRedisPool(RedisPool):
    """A :class:`~geventconnpool.contrib.redis.RedisPool` whose server is the master that the
    ``sentinels`` (``[(host, port), ...]``) name for ``service_name``.

    ``sentinel_timeout`` bounds each question to a sentinel, whole (connect, send and reply):
    a sentinel that does not answer, answers slowly or answers garbage is skipped and the next
    one is asked; :class:`MasterNotFoundError` only when none answered with a valid address.
    A greenlet per sentinel (holding a weak reference to the pool) subscribes to
    ``+switch-master``; ``watch=False`` turns that off, and connections to an old master are
    then only replaced when they fail. Other keyword options are :class:`RedisPool`'s
    (``db``, ``password``, ``tls``, ... and the pool's): a low ``reconnect_max_delay`` (0.5 s)
    keeps the pool from backing off for long while a failover is in progress.
    """

    def __init__(
        self,
        sentinels: Sequence[tuple[str, int]],
        service_name: str,
        *,
        sentinel_timeout: float = 1.0,
        watch: bool = True,
        **options: Any,
    ) -> None:
        if not isinstance(service_name, str) or not service_name:
            raise ValueError(f"service_name must be a non-empty str, got {service_name!r}")
        if isinstance(sentinel_timeout, bool) or not isinstance(sentinel_timeout, (int, float)):
            raise TypeError(
                f"sentinel_timeout must be a number of seconds, not {sentinel_timeout!r}"
            )
        if not 0 < sentinel_timeout < 3600:
            raise ValueError(
                f"sentinel_timeout must be in (0, 3600) seconds, got {sentinel_timeout!r}"
            )
        if "unix_socket_path" in options or "host" in options or "port" in options:
            raise TypeError(
                "SentinelRedisPool takes no host, port or unix_socket_path: "
                "the sentinels name the master"
            )
        self.sentinels = _check_sentinels(sentinels)
        self.service_name = service_name
        self.sentinel_timeout = float(sentinel_timeout)
        #: The master's ``(host, port)`` as last reported by a sentinel (None before the first).
        self.master_address: tuple[str, int] | None = None
        #: ``+switch-master`` events seen for this service (each one invalidated the pool).
        self.switches = 0
        # Masters that a +switch-master demoted: a sentinel still naming one has not heard of
        # the switch yet (they learn from each other every 2 s), so the next one is asked.
        self._demoted: set[tuple[str, int]] = set()
        self._last_switch: tuple[tuple[str, int], tuple[str, int]] | None = None
        self._connector_options = {k: options[k] for k in _CONNECTOR_OPTIONS if k in options}
        if options.get("tls") and options.get("ssl_context") is None:
            self._connector_options["ssl_context"] = default_ssl_context()
        self._connectors: dict[tuple[str, int], SocketConnector] = {}
        # A hostile or broken sentinel may send bad messages by the thousand: one line a minute.
        self._bad_input_log = RateLimitedLog(log, interval=60.0)
        host, port = self.sentinels[0]  # RedisPool wants an address; connects never use it
        super().__init__(host, port, **options)
        self._watchers: list[_Watcher] = []
        if watch:
            self._watchers = [_Watcher(self, a) for a in self.sentinels]

    @property
    def watching(self) -> int:
        """How many ``+switch-master`` watchers (one per sentinel) are running."""
        return sum(1 for watcher in self._watchers if watcher.running)

    # -- the master --------------------------------------------------------------------------

    def discover_master(self) -> tuple[str, int]:
        """Ask the sentinels, in turn, for the master's address; the first answer wins and its
        sentinel is asked first next time. An answer naming a master that a ``+switch-master``
        demoted is stale and skipped. Raises :class:`MasterNotFoundError`."""
        errors: list[str] = []
        for address in list(self.sentinels):
            try:
                reply = ask_sentinel(
                    address,
                    self.sentinel_timeout,
                    "SENTINEL",
                    "get-master-addr-by-name",
                    self.service_name,
                )
            except (OSError, RedisError) as exc:
                errors.append(f"{address[0]}:{address[1]}: {exc or type(exc).__name__}")
                continue
            if reply is None:
                errors.append(f"{address[0]}:{address[1]}: no master named {self.service_name!r}")
                continue
            try:  # a malformed answer is this sentinel's failure: ask the next one
                master = parse_master_address(reply)
            except ValueError as exc:
                errors.append(f"{address[0]}:{address[1]}: malformed answer: {exc}")
                continue
            if master in self._demoted:
                errors.append(f"{address[0]}:{address[1]}: still names the old master")
                continue
            if address != self.sentinels[0]:
                self.sentinels.remove(address)
                self.sentinels.insert(0, address)
            self.master_address = master
            return master
        raise MasterNotFoundError(
            f"pool {self.name!r}: no sentinel knows the master of {self.service_name!r} "
            f"({'; '.join(errors)}); check the sentinels' addresses and the service name"
        )

    def _connector_for(self, address: tuple[str, int]) -> SocketConnector:
        connector = self._connectors.get(address)
        if connector is None:
            connector = SocketConnector(address[0], address[1], **self._connector_options)
            self._connectors[address] = connector
            if len(self._connectors) > 8:  # masters come and go; keep the recent ones
                self._connectors.pop(next(iter(self._connectors)))
        return connector

    # -- hooks -------------------------------------------------------------------------------

    def _new_connection(self) -> SentinelConnection:
        connector = self._connector_for(self.discover_master())
        self.connector = connector  # tls_stats() reports the current master's
        return SentinelConnection(connector.connect(self.connect_timeout), connector)

    def _on_connect(self, conn: RedisConnection) -> None:
        super()._on_connect(conn)
        role = conn.execute("ROLE")
        kind = role[0] if isinstance(role, list) and role else role
        if kind != b"master":
            where = getattr(conn, "address", "?")
            raise NotMasterError(
                f"pool {self.name!r}: {where} is a {kind!r}, not the master of "
                f"{self.service_name!r}; a failover is probably in progress (the pool retries)"
            )

    def _close_connection(self, conn: RedisConnection) -> None:
        connector = getattr(conn, "connector", self.connector)
        connector.remember_session(conn.sock)
        conn.close()

    def close(self, timeout: float | None = None) -> None:
        for watcher in self._watchers:
            greenlet = watcher.stop()
            if greenlet is not None:
                greenlet.kill(block=False)  # it blocks on its sentinel's socket
        super().close(timeout)

    # -- +switch-master ----------------------------------------------------------------------

    def _on_watch_message(self, message: Any) -> None:
        """Handle one message a watcher read on its subscription. Never raises on bad input:
        a message that is not a well-formed ``+switch-master`` is logged and ignored, so one
        hostile or broken sentinel cannot stop the watcher hearing the next real failover."""
        if not isinstance(message, list) or not message or message[0] != b"message":
            return  # a PING reply, a subscription confirmation, ...
        if len(message) != 3 or message[1] != b"+switch-master":
            self._bad_input_log.log(
                logging.WARNING, "message", "pool %r: ignoring a malformed sentinel message",
                self.name,
            )  # fmt: skip
            return
        self._switched(message[2])

    def _switched(self, message: Any) -> None:
        """Handle one ``+switch-master`` payload: ``name old-ip old-port new-ip new-port``
        (a malformed one is logged and ignored)."""
        switch = parse_switch_master(message)
        if switch is None:
            self._bad_input_log.log(
                logging.WARNING, "switch",
                "pool %r: ignoring a malformed +switch-master message %r",
                self.name,
                message[:200] if isinstance(message, (bytes, str)) else type(message).__name__,
            )  # fmt: skip
            return
        service, old, new = switch
        if service != self.service_name:
            return
        if self._last_switch == (old, new):
            return  # another sentinel's announcement of the same switch
        self._last_switch = (old, new)
        self._demoted.add(old)
        self._demoted.discard(new)
        log.info(
            "pool %r: %s switched master %s:%s -> %s:%s; replacing connections",
            self.name,
            self.service_name,
            *old,
            *new,
        )
        self.master_address = new
        self.switches += 1
        self.invalidate()

    def _resubscribed(self) -> None:
        """After (re)subscribing: if the master changed while nobody listened, invalidate."""
        before = self.master_address
        try:
            now = self.discover_master()
        except MasterNotFoundError:
            return
        if before is not None and now != before:
            self.switches += 1
            self.invalidate()


class _Watcher(Loop["SentinelRedisPool"]):
    """Follows ``+switch-master`` on one sentinel until the pool is gone, reconnecting with
    backoff. One per sentinel: the first to announce a switch wins (the others learn it up to
    2 s later from each other). The loop itself (stop on close/GC/fork, errors) is _loop.Loop's.
    """

    def __init__(self, pool: SentinelRedisPool, address: tuple[str, int]) -> None:
        name = f"pool {pool.name!r}: sentinel {address[0]}:{address[1]} watcher"
        super().__init__(pool, name=name, logger=log, error_backoff=(0.1, 5.0))
        self.address = address
        self.failures = 0  # failed subscriptions in a row

    def weak_turn(self, ref: weakref.ref[SentinelRedisPool]) -> float | None:
        """One subscription, held until it fails or the pool is gone; the backoff after it."""
        pool = ref()
        if pool is None:
            return None
        timeout = pool.sentinel_timeout
        del pool  # hold no strong reference while blocked
        try:
            _listen(ref, self.address, timeout)
            self.failures = 0
        except (OSError, RedisError) as exc:
            self.failures += 1
            log.debug("%s: %s", self.name, exc)
        return _backoff.delay(self.failures, 0.1, 5.0)


def _alive(ref: weakref.ref[SentinelRedisPool]) -> bool:
    pool = ref()
    return pool is not None and not pool.closed


def _readable(sock: gevent.socket.socket) -> bool:
    readable, _, _ = gevent.select.select([sock], [], [], _WATCH_POLL)
    return bool(readable)


def _listen(ref: weakref.ref[SentinelRedisPool], address: tuple[str, int], timeout: float) -> None:
    """Subscribe on one sentinel and handle messages; returns when the pool is gone."""
    sock = gevent.socket.create_connection(address, timeout=timeout)
    try:
        sock.settimeout(timeout)
        conn = RedisConnection(sock, socket_timeout=timeout)  # one deadline per message
        conn.send(("SUBSCRIBE", "+switch-master"))
        conn.read_reply()
        pool = ref()
        if pool is None:
            return
        pool._resubscribed()
        del pool
        quiet = 0
        while True:
            # Messages that arrived together wait in the reader's buffer, not in the socket.
            readable = conn.reader.buffered() or _readable(sock)
            if not _alive(ref):
                return
            if not readable:
                quiet += 1
                if quiet % _WATCH_PING_EVERY == 0:
                    conn.send(("PING",))  # a dead sentinel shows up as an error or EOF
                continue
            conn.pending = max(conn.pending, 1)  # a pushed message is one more reply to read
            message = conn.read_reply()
            pool = ref()
            if pool is None:
                return
            pool._on_watch_message(message)
            del pool  # hold no strong reference while blocked
    finally:
        sock.close()
