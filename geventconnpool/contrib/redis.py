"""A pool of raw RESP connections to Redis: :class:`RedisPool`, no client library needed.

::

    pool = RedisPool("127.0.0.1", 6379, size=10, keepalive=30)
    with pool.get() as conn:
        conn.execute("SET", "key", "value")
        assert conn.execute("GET", "key") == b"value"

Keepalive and the checkout check send a real ``PING`` and expect ``+PONG``. Server error
replies (``-ERR ...``) raise :class:`ResponseError` and keep the connection; a lost,
desynchronised or interrupted connection raises :class:`RedisConnectionError` (an ``OSError``)
and is discarded, and so is one left subscribed, in ``MONITOR``, inside ``MULTI`` or holding
unread data. See ``docs/guides/redis.rst``.
"""

from __future__ import annotations

import logging
import os
import ssl as _stdssl
from collections.abc import Sequence
from typing import Any, ClassVar

import gevent.socket
import gevent.ssl

from .._probe import FdProbe
from ..errors import PoolError
from ..pool import ConnectionPool
from ._redis_url import MAX_DB, parse_redis_url
from ._resp import (
    Arg,
    BusyLoadingError,
    Limits,
    ProtocolError,
    ReadOnlyError,
    RedisConnectionError,
    RedisError,
    RedisTimeoutError,
    ResponseError,
    RespReader,
    encode_command,
)
from .tcp import (
    SocketConnector,
    TlsStats,
    default_ssl_context,
    probe_socket,
    probe_tls_socket,
    warn_if_unverified,
)

__all__ = [
    "BusyLoadingError",
    "ProtocolError",
    "ReadOnlyError",
    "RedisConnection",
    "RedisConnectionError",
    "RedisError",
    "RedisPool",
    "RedisTimeoutError",
    "ResponseError",
    "encode_command",
]

log = logging.getLogger("geventconnpool.contrib.redis")

#: Commands that change what the connection is (a mode, or the session the pool set up).
_SUBSCRIBE = frozenset({"SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE"})
_TRACKED = _SUBSCRIBE | {"MONITOR", "MULTI", "EXEC", "DISCARD", "RESET", "QUIT", "SELECT"}
_TRACKED |= {"HELLO", "CLIENT"}
_SUB_REPLIES = {b"subscribe": 0, b"psubscribe": 0, b"unsubscribe": 0, b"punsubscribe": 0}
_SUB_REPLIES |= {b"ssubscribe": 1, b"sunsubscribe": 1}
_UNSUB_REPLIES = frozenset({b"unsubscribe", b"punsubscribe", b"sunsubscribe"})

_TLS_SOCKETS = (_stdssl.SSLSocket, gevent.ssl.SSLSocket)

#: The reply limits' defaults (RedisPool class attributes, keyword arguments too).
DEFAULT_LIMITS = Limits(
    max_bulk_length=64 * 1024 * 1024,
    max_elements=4 * 1024 * 1024,
    max_depth=64,
    max_line_length=64 * 1024,
)


def _command_name(name: Arg) -> str:
    if isinstance(name, str):
        return name.upper()
    if isinstance(name, bytes):
        return name.decode("latin-1").upper()
    return str(name)


class RedisConnection:
    """One RESP2 connection. Replies: simple strings as ``str``, bulk strings as ``bytes``
    (``None`` for nil), integers as ``int``, arrays as ``list``.

    It knows its state: commands sent and replies owed (``pending``), the mode it is in
    (:attr:`mode`: subscribed, monitor, multi), and whether it is *broken*: a request/reply
    exchange interrupted part-way (a ``gevent.Timeout``, any exception), a protocol error, or use
    from a forked child. A broken connection raises :class:`RedisConnectionError` on any use,
    so nobody ever reads a late reply meant for someone else.
    """

    def __init__(
        self,
        sock: gevent.socket.socket,
        *,
        where: str = "redis",
        limits: Limits = DEFAULT_LIMITS,
        socket_timeout: float | None = None,
        db: int = 0,
    ) -> None:
        self.sock = sock
        self.where = where
        self.reader = RespReader(sock, limits, socket_timeout)
        #: Replies still owed by the server for commands sent; non-zero on release = desync.
        self.pending = 0
        self.pid = os.getpid()
        self.broken: str | None = None  # why any further use raises
        self.condemned: str | None = None  # why it must not go back to the pool
        self._db = str(db)
        self._subscribed = self._monitor = self._multi = False
        self._subs = [0, 0]  # channels+patterns, shard channels (from the server's replies)
        self._poller: Any = None  # a poll object for this socket, made on the first probe

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    @property
    def mode(self) -> str | None:
        """``"subscribed"``, ``"monitor"``, ``"multi"`` or None (a normal connection)."""
        if self._subscribed:
            return "subscribed"
        if self._monitor:
            return "monitor"
        return "multi" if self._multi else None

    def reusable(self) -> str | None:
        """None if the next holder may get this connection, else why not."""
        if self.broken or self.condemned:
            return self.broken or self.condemned
        if self.pending:
            return f"{self.pending} repl{'y' if self.pending == 1 else 'ies'} left unread"
        if self.reader.buffered():
            return "unread data"
        mode = self.mode
        return f"left in {mode} mode" if mode else None

    def idle_and_quiet(self) -> bool:
        """True if this connection may be handed out: this process's, settled (nothing owed,
        no mode, not broken) and with no byte waiting in its socket. No round trip."""
        if (
            self.pending
            or self.broken
            or self.condemned
            or self._subscribed
            or self._monitor
            or self._multi
            or self.reader.buffered()
            or self.pid != os.getpid()
        ):
            return False
        if isinstance(self.sock, _TLS_SOCKETS):
            return probe_tls_socket(self.sock)
        probe = self._poller
        if probe is None:  # one poll object per connection: the probe is a single poll(0)
            probe = self._poller = FdProbe(self.sock.fileno())
        return not probe.readable()

    def check_usable(self) -> None:
        """Raise :class:`RedisConnectionError` if this connection must not be used any more."""
        pid = os.getpid()
        if pid != self.pid:
            raise RedisConnectionError(
                f"connection to {self.where} belongs to process {self.pid}, not {pid}; "
                "get a new one from the pool in this process"
            )
        if self.broken:
            raise RedisConnectionError(
                f"connection to {self.where} is broken ({self.broken}); leave the `with` "
                "block so the pool discards it, and get another"
            )

    def send(self, *commands: Sequence[Arg]) -> None:
        """Send commands without reading their replies (pipelining); see :meth:`read_reply`."""
        self.check_usable()
        payload = b"".join(encode_command(c) for c in commands)
        for command in commands:
            name = _command_name(command[0])
            if name in _TRACKED:
                self._track(name, command)
        self.pending += len(commands)
        try:
            self.sock.sendall(payload)
        except BaseException as exc:
            self.broken = f"interrupted while sending ({type(exc).__name__})"
            raise

    def _track(self, name: str, command: Sequence[Arg]) -> None:
        arg1 = _command_name(command[1]) if len(command) > 1 else None
        if name == "HELLO" and arg1 not in (None, "2"):
            raise RedisError("RedisPool speaks RESP2 only; for RESP3 use the redis-py adapter")
        if name == "CLIENT" and arg1 == "REPLY":
            raise RedisError("CLIENT REPLY would break the reply accounting; it is refused")
        if name in _SUBSCRIBE:
            self._subscribed = True
        elif name == "MONITOR":
            self._monitor = True
        elif name == "MULTI":
            self._multi = True
        elif name in ("EXEC", "DISCARD"):
            self._multi = False
        elif name == "SELECT":
            if arg1 != self._db:
                self.condemned = f"SELECT {arg1} (the pool's connections use db {self._db})"
            else:
                self.condemned = None
        elif name in ("RESET", "QUIT"):  # the session the pool set up is gone
            self.condemned = f"{name} was sent"

    def read_reply(self) -> Any:
        """Read one reply; an error reply is *returned* as a :class:`RedisError` instance.

        In subscribed or MONITOR mode this also reads pushed messages. An interruption while
        reading breaks the connection, except while waiting for a pushed message of which no
        byte has arrived (a ``gevent.Timeout`` around a pub/sub read is fine).
        """
        self.check_usable()
        pushes = (self._subscribed or self._monitor) and self.pending <= 0
        if self.pending <= 0 and not pushes:
            raise RedisError("no reply is pending on this connection")
        reader = self.reader
        received, consumed = reader.received, reader.consumed
        try:
            reply = reader.read()
        except BaseException as exc:
            untouched = reader.received == received and reader.consumed == consumed
            lost = isinstance(exc, RedisConnectionError) and not isinstance(exc, RedisTimeoutError)
            if not (pushes and untouched) or lost:
                self.broken = f"interrupted while reading a reply ({type(exc).__name__})"
            raise
        if self.pending > 0:
            self.pending -= 1
        if isinstance(reply, RedisConnectionError):  # LOADING, READONLY
            self.condemned = str(reply)
        elif self._subscribed and isinstance(reply, list):
            self._track_subscriptions(reply)
        return reply

    def _track_subscriptions(self, reply: list[Any]) -> None:
        if len(reply) != 3 or not isinstance(reply[2], int):
            return
        slot = _SUB_REPLIES.get(reply[0]) if isinstance(reply[0], bytes) else None
        if slot is None:
            return
        self._subs[slot] = reply[2]
        if reply[0] in _UNSUB_REPLIES and self._subs == [0, 0]:
            self._subscribed = False  # every subscription confirmed gone: a normal connection
            self.pending = 0

    def execute(self, *args: Arg) -> Any:
        """Send one command and return its reply; raise :class:`ResponseError` (or
        :class:`BusyLoadingError`, :class:`ReadOnlyError`) on an error reply."""
        self._refuse_in_push_mode()
        self.send(args)
        reply = self.read_reply()
        if isinstance(reply, RedisError):
            raise reply
        return reply

    def pipeline(self, *commands: Sequence[Arg]) -> list[Any]:
        """Send several commands in one write; return their replies (error replies as values).

        LOADING and READONLY are raised (after every reply was read): the connection is not
        usable, whatever the other replies say.
        """
        self._refuse_in_push_mode()
        self.send(*commands)
        replies = [self.read_reply() for _ in commands]
        for reply in replies:
            if isinstance(reply, RedisConnectionError):
                raise reply
        return replies

    def _refuse_in_push_mode(self) -> None:
        mode = self.mode
        if mode in ("subscribed", "monitor"):
            raise RedisError(
                f"connection is in {mode} mode: replies and pushed messages interleave; "
                "use send() and read_reply()"
            )

    def ping(self) -> None:
        """``PING``; raises :class:`RedisConnectionError` unless the answer is ``+PONG``."""
        reply = self.execute("PING")
        if reply != "PONG":
            raise RedisConnectionError(f"PING to {self.where} answered {reply!r}, not PONG")

    def forget(self) -> None:
        """In a forked child: close only this process's descriptor; any further use raises."""
        self.broken = "inherited from the parent process"
        try:
            fd = self.sock.detach()
            if fd >= 0:
                os.close(fd)
        except (OSError, ValueError):
            pass


def _check_type(name: str, value: Any, kinds: Any, what: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
        raise TypeError(f"{name} must be {what} or None, not {type(value).__name__}")


def _limit(name: str, value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class RedisPool(ConnectionPool[RedisConnection]):
    """A pool of :class:`RedisConnection` to one Redis server.

    ``host``/``port`` or ``unix_socket_path``; ``db``, ``username``/``password`` (``AUTH``) and
    ``client_name`` are applied to every new connection. Credentials rotate: assign
    ``pool.password`` / ``pool.username`` (read at each connect; call :meth:`invalidate` to
    replace the open connections too), or pass ``credential_provider=``, a callable returning
    ``(username, password)`` (or an object with redis-py's ``get_credentials()``) that is
    called at each connect, so a rotated secret is picked up without touching the pool.
    TLS with ``ssl_context=`` (or ``tls=True`` for the default verifying context). Keepalive
    (the pool's ``keepalive`` option) and the checkout check send ``PING``; every hand-out
    first probes the socket for unread data (no round trip). The reply limits
    (``max_bulk_length``, ``max_elements``, ``max_depth``, ``max_line_length``) default to the
    class attributes of the same names.
    Other keyword options go to :class:`~geventconnpool.ConnectionPool`; the default ``name``
    is ``"redis <address>/<db>"``.
    """

    #: Largest bulk string accepted. Redis's own ``proto-max-bulk-len`` is 512 MiB, but a client
    #: holds each reply whole in memory, once per connection: 64 MiB keeps a hostile or broken
    #: server from taking gigabytes while fitting any sane value; raise it if you store bigger.
    max_bulk_length: ClassVar[int] = DEFAULT_LIMITS.max_bulk_length
    #: Most elements in one array (4 Mi: ~0.3 GB of Python objects); use SCAN beyond that.
    max_elements: ClassVar[int] = DEFAULT_LIMITS.max_elements
    #: Deepest nesting of arrays (real replies nest fewer than 10 levels).
    max_depth: ClassVar[int] = DEFAULT_LIMITS.max_depth
    #: Longest line without CRLF (64 KiB, as Redis's own limit for inline requests).
    max_line_length: ClassVar[int] = DEFAULT_LIMITS.max_line_length

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        *,
        unix_socket_path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        credential_provider: Any = None,
        client_name: str | None = None,
        tls: bool = False,
        ssl_context: _stdssl.SSLContext | None = None,
        server_hostname: str | None = None,
        tcp_keepalive: bool = False,
        socket_timeout: float | None = None,
        max_bulk_length: int | None = None,
        max_elements: int | None = None,
        max_depth: int | None = None,
        max_line_length: int | None = None,
        **pool_options: Any,
    ) -> None:
        self._validate(db, username, password, client_name, tls, ssl_context, server_hostname)
        _check_type("unix_socket_path", unix_socket_path, str, "a str")
        if ssl_context is None and tls:
            ssl_context = default_ssl_context()
        self.connector = SocketConnector(
            host,
            port,
            unix_socket=unix_socket_path,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            tcp_keepalive=tcp_keepalive,
            socket_timeout=socket_timeout,
        )
        self.limits = Limits(
            _limit("max_bulk_length", max_bulk_length, type(self).max_bulk_length),
            _limit("max_elements", max_elements, type(self).max_elements),
            _limit("max_depth", max_depth, type(self).max_depth),
            _limit("max_line_length", max_line_length, type(self).max_line_length),
        )
        self.db = db
        self._username = username
        self._password = password
        self._provider: Any = None
        self.credential_provider = credential_provider
        self.client_name = client_name
        self.socket_timeout = socket_timeout
        if "name" not in pool_options and getattr(type(self), "name", None) is None:
            pool_options["name"] = f"redis {self.address}/{db}"
        super().__init__(**pool_options)
        if ssl_context is not None:
            warn_if_unverified(ssl_context, self.connector.address, str(self.name))

    @staticmethod
    def _validate(
        db: Any,
        username: Any,
        password: Any,
        client_name: Any,
        tls: Any,
        ssl_context: Any,
        server_hostname: Any,
    ) -> None:
        if isinstance(db, bool) or not isinstance(db, int) or not 0 <= db <= MAX_DB:
            raise ValueError(
                f"db must be an int in 0..{MAX_DB} (Redis's SELECT takes a 32-bit index), "
                f"got {db!r}"
            )
        _check_type("username", username, str, "a str")
        _check_type("password", password, str, "a str")  # the value itself is never shown
        _check_type("client_name", client_name, str, "a str")
        if client_name is not None and (not client_name or " " in client_name):
            raise ValueError(f"client_name must be non-empty without spaces, got {client_name!r}")
        if not isinstance(tls, bool):
            raise TypeError(f"tls must be True or False, not {type(tls).__name__}")
        _check_type("ssl_context", ssl_context, _stdssl.SSLContext, "an ssl.SSLContext")
        _check_type("server_hostname", server_hostname, str, "a str")
        if server_hostname is not None and ssl_context is None and not tls:
            raise ValueError(
                "server_hostname is only used by TLS: pass tls=True or ssl_context= too "
                "(without them the connection would silently be plaintext)"
            )

    # -- credentials: read at each connect ---------------------------------------------------

    @property
    def username(self) -> str | None:
        """The ``AUTH`` user name of new connections (settable; None: the default user)."""
        return self._username

    @username.setter
    def username(self, value: str | None) -> None:
        _check_type("username", value, str, "a str")
        self._refuse_with_provider("username")
        self._username = value

    @property
    def password(self) -> str | None:
        """The ``AUTH`` password of new connections (settable: rotation; never logged)."""
        return self._password

    @password.setter
    def password(self, value: str | None) -> None:
        _check_type("password", value, str, "a str")
        self._refuse_with_provider("password")
        self._password = value

    @property
    def credential_provider(self) -> Any:
        """A callable returning ``(username, password)``, or an object with redis-py's
        ``get_credentials()`` (``(password,)`` or ``(username, password)``), asked at each
        connect; None to use :attr:`username` and :attr:`password`."""
        return self._provider

    @credential_provider.setter
    def credential_provider(self, value: Any) -> None:
        if value is not None and not (callable(value) or hasattr(value, "get_credentials")):
            raise TypeError(
                "credential_provider must be a callable returning (username, password) or an "
                f"object with get_credentials(), not {type(value).__name__}"
            )
        if value is not None and (self._username is not None or self._password is not None):
            raise ValueError(
                "pass either username/password or credential_provider, not both: the provider "
                "gives both at each connect"
            )
        self._provider = value

    def _refuse_with_provider(self, name: str) -> None:
        if getattr(self, "_provider", None) is not None:
            raise AttributeError(
                f"{name} is ignored while credential_provider is set: rotate the credentials "
                "in the provider (or set pool.credential_provider = None first)"
            )

    def credentials(self) -> tuple[str | None, str | None]:
        """``(username, password)`` for the next connect: the provider's answer, else the
        attributes. A provider's malformed answer is a ``TypeError`` (its value never shown)."""
        provider = self._provider
        if provider is None:
            return self._username, self._password
        got = provider.get_credentials() if hasattr(provider, "get_credentials") else provider()
        if isinstance(got, (tuple, list)) and len(got) == 1:
            got = (None, got[0])
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise TypeError(
                "credential_provider must return (username, password) or (password,), "
                f"not a {type(got).__name__}"
            )
        username, password = got
        _check_type("credential_provider's username", username, str, "a str")
        _check_type("credential_provider's password", password, str, "a str")
        return username, password

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisPool:
        """A pool from a redis-py style URL: ``redis://[user[:password]@]host[:port][/db]``,
        ``rediss://`` (TLS) or ``unix://[user[:password]@]/path?db=N``.

        Query arguments as redis-py's (``db``, ``socket_timeout``, ``socket_connect_timeout``,
        ``socket_keepalive``, ``client_name``, ``ssl_cert_reqs``, ``ssl_check_hostname``,
        ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``max_connections``, ``timeout``)
        win over ``options``, as in redis-py; ``options`` gives the rest (pool options too).
        """
        return cls(**{**options, **parse_redis_url(url)})

    @property
    def address(self) -> str:
        """``host:port`` (``[v6]:port``) or the unix socket's path: for messages and the name."""
        c = self.connector
        if c.unix_socket:
            return c.unix_socket
        return f"[{c.host}]:{c.port}" if c.host and ":" in c.host else f"{c.host}:{c.port}"

    def tls_stats(self) -> TlsStats:
        """TLS handshakes done and how many resumed a session (zeros without TLS)."""
        return self.connector.tls_stats()

    def _new_connection(self) -> RedisConnection:
        try:
            sock = self.connector.connect(self.connect_timeout)
        except OSError as exc:
            located = _located(exc, f"redis at {self.address}")
            if located is exc:
                raise
            raise located from exc
        return RedisConnection(
            sock,
            where=self.address,
            limits=self.limits,
            socket_timeout=self.socket_timeout,
            db=self.db,
        )

    def _on_connect(self, conn: RedisConnection) -> None:
        try:
            username, password = self.credentials()
            if password is not None:
                if username is not None:
                    conn.execute("AUTH", username, password)
                else:
                    conn.execute("AUTH", password)
            if self.db:
                conn.execute("SELECT", self.db)
            if self.client_name:
                conn.execute("CLIENT", "SETNAME", self.client_name)
        except RedisError as exc:
            if self.address in str(exc):
                raise
            raise type(exc)(f"{exc} (setting up a connection to {self.address})") from exc

    def _keepalive(self, conn: RedisConnection) -> None:
        conn.ping()

    def _check(self, conn: RedisConnection) -> bool:
        if not probe_socket(conn.sock):
            return False
        conn.ping()
        return True

    def _on_acquire(self, conn: RedisConnection) -> bool:
        # Every hand-out: never give out a broken, inherited or unsettled connection, nor one
        # with bytes nobody asked for (a pushed message, an error before a server-side close).
        # The probe is one poll() of the socket: no round trip (cost in docs/guides/redis.rst).
        return conn.idle_and_quiet()

    def _on_release(self, conn: RedisConnection) -> bool:
        # A holder that left replies unread, or left the connection subscribed, in MONITOR,
        # inside MULTI, on another db or broken would hand the next holder someone else's
        # bytes or state: such a connection is discarded.
        why = conn.reusable()
        if why is not None:
            log.debug("pool %r: discarding a returned connection: %s", self.name, why)
            return False
        return True

    def _forget_connection(self, conn: RedisConnection) -> None:
        conn.forget()

    def _close_connection(self, conn: RedisConnection) -> None:
        self.connector.remember_session(conn.sock)
        conn.close()

    def _is_disconnect(self, exc: BaseException) -> bool:
        if isinstance(exc, PoolError):
            return False  # from another pool's get() inside this block
        return isinstance(exc, (OSError, EOFError)) or super()._is_disconnect(exc)


def _located(exc: OSError, where: str) -> OSError:
    """``exc`` again (same class) with ``where`` in its message, unless it already says it."""
    if where.split(" at ")[-1] in str(exc):
        return exc
    try:
        if exc.errno is not None and exc.strerror:
            located = type(exc)(exc.errno, f"{exc.strerror} (connecting to {where})")
        else:
            located = type(exc)(f"{exc or type(exc).__name__} (connecting to {where})")
    except Exception:  # a class whose constructor wants something else
        located = RedisConnectionError(f"{exc!r} (connecting to {where})")
    return located
