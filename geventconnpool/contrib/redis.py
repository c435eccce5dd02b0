"""A pool of raw RESP connections to Redis: :class:`RedisPool`, no client library needed.

::

    pool = RedisPool("127.0.0.1", 6379, size=10, keepalive=30)
    with pool.get() as conn:
        conn.execute("SET", "key", "value")
        assert conn.execute("GET", "key") == b"value"

Keepalive and the checkout check send a real ``PING`` and expect ``+PONG``. Server error
replies (``-ERR ...``) raise :class:`ResponseError` and keep the connection; a lost or
desynchronised connection raises :class:`RedisConnectionError` (an ``OSError``) and is discarded.
"""

from __future__ import annotations

import ssl as _stdssl
from collections.abc import Sequence
from typing import Any

import gevent.socket

from ..errors import PoolError
from ..pool import ConnectionPool
from .tcp import (
    SocketConnector,
    TlsStats,
    default_ssl_context,
    probe_socket,
    warn_if_unverified,
)

__all__ = [
    "ProtocolError",
    "RedisConnection",
    "RedisConnectionError",
    "RedisError",
    "RedisPool",
    "ResponseError",
]

Arg = bytes | str | int | float
_CRLF = b"\r\n"


class RedisError(Exception):
    """Base class of this module's errors."""


class ResponseError(RedisError):
    """The server answered with an error reply; the connection is fine."""


class RedisConnectionError(RedisError, ConnectionError):
    """The connection is lost or unusable (an ``OSError``: the pool discards it)."""


class ProtocolError(RedisConnectionError):
    """The server sent something that is not RESP: the stream cannot be trusted any more."""


def encode_command(args: Sequence[Arg]) -> bytes:
    """One command as a RESP array of bulk strings."""
    if not args:
        raise ValueError("a command needs at least its name")
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send {type(arg).__name__} to Redis: {arg!r}")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RedisConnection:
    """One RESP2 connection. Replies: simple strings as ``str``, bulk strings as ``bytes``
    (``None`` for nil), integers as ``int``, arrays as ``list``.
    """

    def __init__(self, sock: gevent.socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()
        #: Replies still owed by the server for commands sent; non-zero on release = desync.
        self.pending = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def send(self, *commands: Sequence[Arg]) -> None:
        """Send commands without reading their replies (pipelining); see :meth:`read_reply`."""
        payload = b"".join(encode_command(c) for c in commands)
        self.pending += len(commands)
        self.sock.sendall(payload)

    def read_reply(self) -> Any:
        """Read one reply; an error reply is *returned* as a :class:`ResponseError`."""
        if self.pending <= 0:
            raise RedisError("no reply is pending on this connection")
        reply = self._read()
        self.pending -= 1
        return reply

    def execute(self, *args: Arg) -> Any:
        """Send one command and return its reply; raise :class:`ResponseError` on an error."""
        self.send(args)
        reply = self.read_reply()
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def pipeline(self, *commands: Sequence[Arg]) -> list[Any]:
        """Send several commands in one write; return their replies (errors as values)."""
        self.send(*commands)
        return [self.read_reply() for _ in commands]

    def ping(self) -> None:
        """``PING``; raises :class:`RedisConnectionError` unless the answer is ``+PONG``."""
        reply = self.execute("PING")
        if reply != "PONG":
            raise RedisConnectionError(f"PING answered {reply!r}, not PONG")

    # -- RESP parsing ------------------------------------------------------------------------

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise RedisConnectionError("connection closed by the server")
        self._buf += data

    def _line(self) -> bytes:
        while True:
            end = self._buf.find(_CRLF)
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 2]
                return line
            self._fill()

    def _exactly(self, n: int) -> bytes:
        while len(self._buf) < n + 2:
            self._fill()
        if self._buf[n : n + 2] != _CRLF:
            raise ProtocolError("bulk string not terminated by CRLF")
        data = bytes(self._buf[:n])
        del self._buf[: n + 2]
        return data

    def _read(self) -> Any:
        line = self._line()
        if not line:
            raise ProtocolError("empty line where a reply was expected")
        kind, rest = line[:1], line[1:]
        try:
            if kind == b"+":
                return rest.decode()
            if kind == b"-":
                return ResponseError(rest.decode(errors="replace"))
            if kind == b":":
                return int(rest)
            if kind == b"$":
                n = int(rest)
                return None if n < 0 else self._exactly(n)
            if kind == b"*":
                n = int(rest)
                return None if n < 0 else [self._read() for _ in range(n)]
        except ValueError as exc:
            raise ProtocolError(f"bad length or integer in reply: {line[:64]!r}") from exc
        raise ProtocolError(f"unknown reply type: {line[:64]!r}")


class RedisPool(ConnectionPool[RedisConnection]):
    """A pool of :class:`RedisConnection` to one Redis server.

    ``host``/``port`` or ``unix_socket_path``; ``db``, ``username``/``password`` (``AUTH``) and
    ``client_name`` are applied to every new connection. TLS with ``ssl_context=`` (or
    ``tls=True`` for the default verifying context). Keepalive (the pool's ``keepalive``
    option) and the checkout check send ``PING``. Other keyword options go to
    :class:`~geventconnpool.ConnectionPool`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        *,
        unix_socket_path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        client_name: str | None = None,
        tls: bool = False,
        ssl_context: _stdssl.SSLContext | None = None,
        server_hostname: str | None = None,
        tcp_keepalive: bool = False,
        socket_timeout: float | None = None,
        **pool_options: Any,
    ) -> None:
        if isinstance(db, bool) or not isinstance(db, int) or db < 0:
            raise ValueError(f"db must be a non-negative int, got {db!r}")
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
        self.db = db
        self.username = username
        self.password = password
        self.client_name = client_name
        super().__init__(**pool_options)
        if ssl_context is not None:
            warn_if_unverified(ssl_context, self.connector.address, str(self.name))

    def tls_stats(self) -> TlsStats:
        """TLS handshakes done and how many resumed a session (zeros without TLS)."""
        return self.connector.tls_stats()

    def _new_connection(self) -> RedisConnection:
        return RedisConnection(self.connector.connect(self.connect_timeout))

    def _on_connect(self, conn: RedisConnection) -> None:
        if self.password is not None:
            if self.username is not None:
                conn.execute("AUTH", self.username, self.password)
            else:
                conn.execute("AUTH", self.password)
        if self.db:
            conn.execute("SELECT", self.db)
        if self.client_name:
            conn.execute("CLIENT", "SETNAME", self.client_name)

    def _keepalive(self, conn: RedisConnection) -> None:
        conn.ping()

    def _check(self, conn: RedisConnection) -> bool:
        if not probe_socket(conn.sock):
            return False
        conn.ping()
        return True

    def _on_release(self, conn: RedisConnection) -> bool:
        # A holder that sent commands and left without reading every reply would hand the next
        # holder someone else's answers: such a connection is discarded.
        return conn.pending == 0 and not conn._buf

    def _close_connection(self, conn: RedisConnection) -> None:
        self.connector.remember_session(conn.sock)
        conn.close()

    def _is_disconnect(self, exc: BaseException) -> bool:
        if isinstance(exc, PoolError):
            return False  # from another pool's get() inside this block
        return isinstance(exc, (OSError, EOFError)) or super()._is_disconnect(exc)
