"""Ready-made pools of TCP and TLS sockets: :class:`TcpPool` and :class:`SslPool`.

No subclass needed::

    pool = SslPool("api.example.com", 443, size=10)
    with pool.get() as sock:
        sock.sendall(b"...")

TCP_NODELAY is on, OS-level TCP keepalive is optional, each connect is bounded by the pool's
``connect_timeout``, and idle sockets are checked on checkout without a round trip. TLS verifies
the certificate and host name by default and resumes the last TLS session on reconnect.
"""

from __future__ import annotations

import logging
import socket as _stdsocket
import ssl as _stdssl
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import gevent.socket
import gevent.ssl

from .._probe import readable_now
from ..pool import ConnectionPool

__all__ = [
    "SocketConnector",
    "SslPool",
    "TcpOptions",
    "TcpPool",
    "TlsStats",
    "probe_socket",
    "probe_tls_socket",
    "set_tcp_keepalive",
    "with_address",
]

log = logging.getLogger("geventconnpool.contrib.tcp")

S = TypeVar("S", bound=_stdsocket.socket)

# gevent's SSLSocket derives from gevent's socket, not from the stdlib's SSLSocket.
_TLS_SOCKETS: tuple[type[Any], ...] = (_stdssl.SSLSocket, gevent.ssl.SSLSocket)


def probe_socket(sock: _stdsocket.socket) -> bool:
    """Zero round-trip health probe of an idle socket: False if the peer closed or reset it,
    or sent bytes nobody asked for. Reads nothing from a healthy socket.

    TLS sockets are delegated to :func:`probe_tls_socket`.
    """
    if isinstance(sock, _TLS_SOCKETS):
        return probe_tls_socket(sock)
    try:
        return not readable_now(sock.fileno())
    except (OSError, ValueError):
        return False


def probe_tls_socket(sock: _stdssl.SSLSocket) -> bool:
    """Zero round-trip health probe of an idle TLS socket.

    A readable TLS socket is not necessarily dead: under TLS 1.3 the server sends
    NewSessionTicket records after the handshake. Those are consumed here by one non-blocking
    TLS read: if it yields no application data (``SSLWantReadError``) the connection is healthy;
    EOF, an error or unsolicited application data mean it is dead.
    """
    try:
        if sock.pending():
            return False  # decrypted application data nobody asked for
        if not readable_now(sock.fileno()):
            return True
        timeout = sock.gettimeout()
        sock.settimeout(0.0)
        try:
            sock.recv(1)
        except (_stdssl.SSLWantReadError, _stdssl.SSLWantWriteError):
            return True  # only TLS housekeeping records were there
        finally:
            sock.settimeout(timeout)
        return False  # b"" is EOF; anything else is unsolicited data
    except (OSError, ValueError):
        return False


def set_tcp_keepalive(
    sock: _stdsocket.socket,
    idle: int | None = None,
    interval: int | None = None,
    count: int | None = None,
) -> None:
    """Turn on OS-level TCP keepalive; set idle/interval/count where the platform has them."""
    sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_KEEPALIVE, 1)
    if idle is not None:
        if hasattr(_stdsocket, "TCP_KEEPIDLE"):
            sock.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_KEEPIDLE, idle)
        elif hasattr(_stdsocket, "TCP_KEEPALIVE"):  # macOS
            sock.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_KEEPALIVE, idle)
    if interval is not None and hasattr(_stdsocket, "TCP_KEEPINTVL"):
        sock.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_KEEPINTVL, interval)
    if count is not None and hasattr(_stdsocket, "TCP_KEEPCNT"):
        sock.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_KEEPCNT, count)


def _check_source_address(value: Any) -> tuple[str, int] | None:
    """``source_address`` is None or a ``(host, port)`` pair; port 0 lets the OS choose."""
    if value is None:
        return None
    if not isinstance(value, tuple) or len(value) != 2:
        raise TypeError(
            f"source_address must be a (host, port) tuple or None, not {type(value).__name__}"
        )
    host, port = value
    if not isinstance(host, str):
        raise TypeError(f"source_address host must be a str, not {type(host).__name__}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
        raise ValueError(f"source_address port must be an int in 0..65535, got {port!r}")
    return (host, port)


def _check_server_hostname(value: Any, tls: bool) -> str | None:
    """``server_hostname`` is a non-empty str, and only meaningful with TLS."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"server_hostname must be a str or None, not {type(value).__name__}")
    if not value:
        raise ValueError("server_hostname must be a non-empty host name, or None for the host")
    if not tls:
        raise ValueError(
            "server_hostname= is for TLS only and this pool is plaintext: "
            "pass ssl_context= (or tls=True), or drop server_hostname"
        )
    return value


def with_address(exc: OSError, address: str) -> OSError:
    """A copy of ``exc`` (same class, so ``exc_classes`` still match) whose message names
    ``address``; ``exc`` itself when its class cannot be rebuilt that way."""
    detail = exc.strerror if exc.strerror else str(exc) or type(exc).__name__
    text = f"{detail} (connecting to {address})"
    try:
        new = type(exc)(exc.errno, text) if exc.errno is not None else type(exc)(text)
    except Exception:
        return exc
    if not isinstance(new, type(exc)):  # OSError(errno, ...) may pick a subclass: keep ours
        return exc
    try:
        new.__dict__.update(exc.__dict__)  # e.g. SSLCertVerificationError.verify_code
    except (AttributeError, TypeError):
        pass
    return new


def _positive(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number or None, got {value!r}")


@dataclass(frozen=True)
class TcpOptions:
    """The TCP options of a socket, declared once for :class:`SocketConnector`,
    :class:`TcpPool`, :class:`SslPool` and the protocol pools: each takes them as keywords.

    ``tcp_keepalive`` turns on OS-level keepalive, tuned by ``tcp_keepalive_idle``,
    ``tcp_keepalive_interval`` (seconds) and ``tcp_keepalive_count`` (probes) where the platform
    has them; ``socket_timeout`` bounds each operation once connected; ``source_address`` is a
    ``(host, port)`` to bind (port 0: any).
    """

    tcp_nodelay: bool = True
    tcp_keepalive: bool = False
    tcp_keepalive_idle: int | None = None
    tcp_keepalive_interval: int | None = None
    tcp_keepalive_count: int | None = None
    socket_timeout: float | None = None
    source_address: tuple[str, int] | None = None

    def __post_init__(self) -> None:
        for name in ("tcp_keepalive_idle", "tcp_keepalive_interval", "tcp_keepalive_count"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
            _positive(name, value)
        _positive("socket_timeout", self.socket_timeout)
        object.__setattr__(self, "source_address", _check_source_address(self.source_address))

    @classmethod
    def take(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Move the TCP options out of ``options`` (a pool's keywords) into a new dict."""
        return {f.name: options.pop(f.name) for f in fields(cls) if f.name in options}

    def apply(self, sock: _stdsocket.socket) -> None:
        """Set TCP_NODELAY and keepalive on a connected TCP socket."""
        if self.tcp_nodelay:
            sock.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_NODELAY, 1)
        if self.tcp_keepalive:
            set_tcp_keepalive(
                sock, self.tcp_keepalive_idle, self.tcp_keepalive_interval, self.tcp_keepalive_count
            )


@dataclass(frozen=True)
class TlsStats:
    """TLS counters of a pool: completed handshakes, and how many of them resumed a session."""

    handshakes: int
    resumed: int


class SocketConnector:
    """Opens the sockets of a pool: TCP (or a unix socket), optionally wrapped in TLS.

    Shared by :class:`TcpPool`, :class:`SslPool` and the protocol pools built on them. Keeps the
    last resumable TLS session and passes it to the next handshake; counts handshakes.
    """

    def __init__(
        self,
        host: str | None,
        port: int | None,
        *,
        unix_socket: str | None = None,
        ssl_context: _stdssl.SSLContext | None = None,
        server_hostname: str | None = None,
        **tcp_options: Any,
    ) -> None:
        if unix_socket is None:
            if not host or not isinstance(host, str):
                raise ValueError(f"host must be a non-empty string, got {host!r}")
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise ValueError(f"port must be an int in 1..65535, got {port!r}")
        #: The TCP options (see :class:`TcpOptions`; an unknown keyword is a TypeError).
        self.tcp = TcpOptions(**tcp_options)
        if ssl_context is not None and not isinstance(ssl_context, _stdssl.SSLContext):
            raise TypeError(
                f"ssl_context must be an ssl.SSLContext or None, not {type(ssl_context).__name__}"
            )
        server_hostname = _check_server_hostname(server_hostname, ssl_context is not None)
        self.host = host
        self.port = port
        self.unix_socket = unix_socket
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname if server_hostname is not None else host
        self.session: _stdssl.SSLSession | None = None
        self.handshakes = 0
        self.resumed = 0

    @property
    def socket_timeout(self) -> float | None:
        """Per-operation timeout of connected sockets (``TcpOptions.socket_timeout``)."""
        return self.tcp.socket_timeout

    @property
    def address(self) -> str:
        """``host:port`` (``[::1]:port`` for IPv6) or the unix socket's path, for messages."""
        if self.unix_socket:
            return self.unix_socket
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"

    def connect(self, timeout: float | None) -> gevent.socket.socket:
        """Open one connected socket (TLS handshake included), bounded by ``timeout`` seconds.

        A failure raises an exception of the original class whose message names the address
        (``host:port`` or the unix socket path), with the original as ``__cause__``.
        """
        try:
            return self._connect(timeout)
        except OSError as exc:
            new = with_address(exc, self.address)
            if new is exc:
                raise
            raise new from exc

    def _connect(self, timeout: float | None) -> gevent.socket.socket:
        if self.unix_socket:
            sock = gevent.socket.socket(_stdsocket.AF_UNIX, _stdsocket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(self.unix_socket)
            except BaseException:
                sock.close()
                raise
        else:
            assert self.host is not None and self.port is not None
            sock = gevent.socket.create_connection(
                (self.host, self.port), timeout=timeout, source_address=self.tcp.source_address
            )
        try:
            if not self.unix_socket:
                self.tcp.apply(sock)
            if self.ssl_context is not None:
                sock = self._wrap(sock)
            sock.settimeout(self.tcp.socket_timeout)
        except BaseException:
            sock.close()
            raise
        return sock

    def _wrap(self, sock: gevent.socket.socket) -> gevent.socket.socket:
        # gevent's SSLSocket works with any SSLContext (gevent's own wrap_socket does this), so a
        # stdlib context handed in by the user still gives a cooperative socket.
        tls: Any = gevent.ssl.SSLSocket(
            sock=sock,
            server_hostname=self.server_hostname,
            do_handshake_on_connect=False,
            _context=self.ssl_context,
            _session=self.session,
        )
        try:  # now the TLS socket owns the descriptor: close it if the handshake fails
            tls.do_handshake()
        except BaseException:
            tls.close()
            raise
        self.handshakes += 1
        if tls.session_reused:
            self.resumed += 1
        self.remember_session(tls)
        wrapped: gevent.socket.socket = tls
        return wrapped

    def remember_session(self, sock: _stdsocket.socket) -> None:
        """Keep ``sock``'s TLS session for the next handshake, if it can be resumed.

        Under TLS 1.3 the ticket arrives after the handshake, so this is called again when the
        socket has been read from (check, release, close).
        """
        if not isinstance(sock, _TLS_SOCKETS):
            return
        try:
            session = sock.session
            if session is None:
                return
            if session.has_ticket or (sock.version() != "TLSv1.3" and session.id):
                self.session = session
        except (OSError, ValueError, AttributeError):
            pass

    def tls_stats(self) -> TlsStats:
        """Handshakes done and how many resumed a session."""
        return TlsStats(handshakes=self.handshakes, resumed=self.resumed)


def default_ssl_context(verify: bool = True) -> _stdssl.SSLContext:
    """``ssl.create_default_context()``, optionally without verification.

    A plain stdlib context is fine: sockets are wrapped by gevent's ``SSLSocket`` whatever the
    context's class.
    """
    ctx = _stdssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = _stdssl.CERT_NONE
    return ctx


def warn_if_unverified(ctx: _stdssl.SSLContext, where: str, name: str) -> None:
    """Log the one WARNING a pool gives when its TLS does not verify the server."""
    if ctx.verify_mode == _stdssl.CERT_NONE or not ctx.check_hostname:
        log.warning(
            "pool %r: TLS certificate%s verification is OFF for %s; "
            "anyone on the path can impersonate the server",
            name,
            "" if ctx.verify_mode == _stdssl.CERT_NONE else " host name",
            where,
        )


class _SocketPool(ConnectionPool[S]):
    """Shared implementation of :class:`TcpPool` and :class:`SslPool`."""

    connector: SocketConnector

    def _new_connection(self) -> S:
        sock: Any = self.connector.connect(self.connect_timeout)
        result: S = sock
        return result

    def _check(self, conn: S) -> bool:
        return probe_socket(conn)

    def _close_connection(self, conn: S) -> None:
        self.connector.remember_session(conn)  # TLS 1.3: the ticket came after the handshake
        conn.close()


class TcpPool(_SocketPool[gevent.socket.socket]):
    """A pool of plain TCP sockets to ``host:port``.

    Keyword options: those of :class:`TcpOptions` (``tcp_keepalive`` with
    ``tcp_keepalive_idle``, ``tcp_keepalive_interval``, ``tcp_keepalive_count``; ``tcp_nodelay``,
    default True; ``socket_timeout``, per operation once connected, default None;
    ``source_address``, a ``(host, port)`` tuple); ``server_hostname`` is refused (use
    :class:`SslPool` for TLS); everything else goes to
    :class:`~geventconnpool.ConnectionPool`. Connects are bounded by the pool's
    ``connect_timeout``; a failed connect names the address. The default pool name is
    ``tcp host:port``.
    """

    def __init__(
        self, host: str, port: int, *, server_hostname: str | None = None, **options: Any
    ) -> None:
        self.connector = SocketConnector(
            host,
            port,
            server_hostname=server_hostname,  # only to refuse it: a plaintext pool has no TLS
            **TcpOptions.take(options),
        )
        options.setdefault("name", f"tcp {self.connector.address}")
        super().__init__(**options)


class SslPool(_SocketPool[_stdssl.SSLSocket]):
    """A pool of TLS sockets to ``host:port``.

    ``ssl_context`` defaults to ``ssl.create_default_context()``: the certificate and
    ``server_hostname`` (default: ``host``) are verified. ``verify=False`` turns verification off
    (only with the default context) and logs a WARNING. Reconnects resume the last TLS session;
    :meth:`tls_stats` (and the ``handshakes``/``resumed`` attributes) count handshakes.
    Other keyword options are those of :class:`TcpOptions` and
    :class:`~geventconnpool.ConnectionPool`; the default pool name is
    ``tls host:port``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: _stdssl.SSLContext | None = None,
        server_hostname: str | None = None,
        *,
        verify: bool = True,
        **options: Any,
    ) -> None:
        if ssl_context is None:
            ssl_context = default_ssl_context(verify)
        elif not verify:
            raise ValueError(
                "verify=False only applies to the default context; "
                "configure verification on the ssl_context you pass"
            )
        self.connector = SocketConnector(
            host,
            port,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            **TcpOptions.take(options),
        )
        options.setdefault("name", f"tls {self.connector.address}")
        super().__init__(**options)
        warn_if_unverified(ssl_context, self.connector.address, str(self.name))

    def _check(self, conn: _stdssl.SSLSocket) -> bool:
        if probe_tls_socket(conn):
            self.connector.remember_session(conn)  # the probe may have read a new ticket
            return True
        return False

    @property
    def handshakes(self) -> int:
        """TLS handshakes completed by this pool (full and resumed)."""
        return self.connector.handshakes

    @property
    def resumed(self) -> int:
        """TLS handshakes that resumed an earlier session (no full handshake)."""
        return self.connector.resumed

    def tls_stats(self) -> TlsStats:
        """Handshake counters, a companion of :meth:`stats`."""
        return self.connector.tls_stats()
