"""A pool of thriftpy2 clients, and a proxy that checks a client out and back in per call.

::

    kv_thrift = thriftpy2.load("kv.thrift", module_name="kv_thrift")
    pool = ThriftPool(kv_thrift.KV, "127.0.0.1", 9090, size=10)
    with pool.get() as client:          # one client for several calls
        client.put("k", "v")
    kv = pool.proxy()                   # or: each call borrows a client
    kv.get("k")

TCP (or TLS) with the binary protocol over a buffered (or framed) transport, on gevent sockets:
cooperative without monkey-patching. Transport and protocol errors discard the connection;
exceptions the service declares, and ``TApplicationException`` replies, keep it.
"""

from __future__ import annotations

import logging
import os
import ssl as _stdssl
import time
from collections.abc import Callable
from typing import Any

try:  # the `thrift` extra: an ImportError that says how to install it
    import thriftpy2  # noqa: F401
except ImportError as exc:
    from ._extras import missing_extra

    raise missing_extra("thriftpy2", "thrift", __name__, exc) from exc

import gevent.ssl
from thriftpy2.protocol import TBinaryProtocolFactory
from thriftpy2.protocol.exc import TProtocolException
from thriftpy2.thrift import TApplicationException, TClient
from thriftpy2.transport import (
    TBufferedTransportFactory,
    TFramedTransportFactory,
    TMemoryBuffer,
    TSocket,
    TTransportException,
)

from .._options import check_seconds
from .._probe import FdProbe
from ..errors import PoolError
from ..pool import ConnectionPool
from ..retry import retry
from ._thrift_reader import ThriftLimits, read_message
from .tcp import (
    SocketConnector,
    TlsStats,
    default_ssl_context,
    probe_socket,
    probe_tls_socket,
    warn_if_unverified,
)

__all__ = ["CONNECTION_ERRORS", "PooledClient", "ThriftLimits", "ThriftPool", "ThriftProxy"]

#: What a proxy retries on: the connection failed, not the call.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (TTransportException, OSError, EOFError)

# TApplicationException types that mean client and server no longer agree on the stream.
_DESYNC_TYPES = frozenset(
    {
        TApplicationException.INVALID_MESSAGE_TYPE,
        TApplicationException.WRONG_METHOD_NAME,
        TApplicationException.BAD_SEQUENCE_ID,
        TApplicationException.PROTOCOL_ERROR,
    }
)


_memory_buffer: Callable[[bytes], Any] = TMemoryBuffer
_TLS_SOCKETS = (_stdssl.SSLSocket, gevent.ssl.SSLSocket)


class PooledClient(TClient):
    """A thriftpy2 ``TClient`` that knows its socket and refuses to be used out of step.

    A call interrupted between sending its request and reading the whole reply (a
    ``gevent.Timeout``, a killed greenlet, a hostile reply) leaves the reply in flight: a later
    call on this client would read it as its own. So the client marks itself broken, and every
    later call raises ``TTransportException`` (a connection error: the pool discards it on
    release). Used in a forked child it raises too, before touching a descriptor number the
    child may have reused. Replies are read within :class:`ThriftLimits` under one deadline.
    """

    transport_socket: Any

    def __init__(
        self,
        service: Any,
        sock: Any,
        transport: Any,
        proto_factory: Any,
        *,
        framed: bool,
        limits: ThriftLimits,
        reply_timeout: float | None,
        address: str,
    ) -> None:
        super().__init__(
            service,
            proto_factory.get_protocol(_memory_buffer(b"")),  # replaced by each reply's message
            proto_factory.get_protocol(transport),
        )
        self.transport_socket = sock
        self._proto_factory = proto_factory
        self._framed = framed
        self._limits = limits
        self._reply_timeout = reply_timeout
        self._address = address
        self._pid = os.getpid()
        self._pending = bytearray()  # received, not yet part of a reply
        self._broken: str | None = None  # why this client may not be used any more
        self._probe: FdProbe | None = None  # made on the first hand-out probe

    def quiet(self) -> bool:
        """True if this client may be handed out: in step, this process's, nothing buffered,
        and no byte (nor EOF) waiting in its socket. One ``poll(0)``: no round trip."""
        if self._broken is not None or self._pending or self._pid != os.getpid():
            return False
        sock = self.transport_socket
        if isinstance(sock, _TLS_SOCKETS):
            return probe_tls_socket(sock)
        probe = self._probe
        if probe is None:
            try:
                probe = self._probe = FdProbe(sock.fileno())
            except (OSError, ValueError):
                return False
        return not probe.readable()

    @property
    def in_sync(self) -> bool:
        """False once an exchange was interrupted or the stream went out of step."""
        return self._broken is None

    def fileno(self) -> int:
        """The socket's descriptor (for the pool's default probe and fork handling)."""
        fd: int = self.transport_socket.fileno()
        return fd

    def _req(self, _api: str, *args: Any, **kwargs: Any) -> Any:
        self._ensure_usable()
        return super()._req(_api, *args, **kwargs)

    def _ensure_usable(self) -> None:
        pid = os.getpid()
        if pid != self._pid:
            self._disown()
            raise TTransportException(
                TTransportException.NOT_OPEN,
                f"thrift client of {self._address} was opened by process {self._pid} and is used "
                f"in forked process {pid}; get a client from the pool in this process",
            )
        if self._broken is not None:
            raise TTransportException(
                TTransportException.NOT_OPEN,
                f"thrift connection to {self._address} is unusable: {self._broken}; leave the "
                "`with pool.get()` block (the pool discards it) and take another",
            )

    def _send(self, _api: str, **kwargs: Any) -> None:
        if self._pending or not probe_socket(self.transport_socket):  # one poll(), no round trip
            self._broken = "the server closed it or sent bytes nobody asked for"
            self._ensure_usable()
        # Until its whole reply is read, the exchange is unfinished: an interrupt leaves it so.
        self._broken = f"an earlier {_api}() call was interrupted before its reply was read"
        super()._send(_api, **kwargs)
        if getattr(getattr(self._service, _api + "_result"), "oneway", False):
            self._broken = None

    def _recv(self, _api: str) -> Any:
        sock = self.transport_socket
        deadline = None
        if self._reply_timeout is not None:
            deadline = time.monotonic() + self._reply_timeout
        try:
            message = read_message(
                sock,
                self._limits,
                framed=self._framed,
                deadline=deadline,
                expect=_api,
                pending=self._pending,
            )
        except TProtocolException as exc:
            self._broken = f"a reply to {_api}() was refused ({exc})"
            raise
        finally:
            if deadline is not None:
                sock.settimeout(self._reply_timeout)
        self._broken = None
        if self._pending:  # a correct server never sends more than the reply
            self._broken = f"the server sent {len(self._pending)} bytes nobody asked for"
        self._iprot = self._proto_factory.get_protocol(_memory_buffer(message))
        return super()._recv(_api)

    def close(self) -> None:
        """Close the socket; in a forked child only forget it (the descriptor is the parent's,
        or by now another socket's)."""
        if os.getpid() != self._pid:
            self._disown()
            return
        self.transport_socket.close()

    def _disown(self) -> None:
        """In a forked child: make the socket object forget its descriptor number, so that no
        close (explicit or at garbage collection) can hit another socket that reuses it."""
        self._broken = "it belongs to the parent process"
        try:
            self.transport_socket.detach()
        except (OSError, ValueError, AttributeError):
            pass


class ThriftPool(ConnectionPool[PooledClient]):
    """A pool of clients of ``service`` (a thriftpy2 service class) at ``host:port``.

    ``framed=True`` uses the framed transport (default: buffered); the protocol is binary.
    ``ping`` names a service method without arguments that keepalive calls (default: none; the
    keepalive then only probes the socket). TLS with ``ssl_context=`` or ``tls=True``
    (``server_hostname`` only with TLS). ``socket_timeout`` bounds each send and each whole
    reply. Replies are checked against ``max_message_size``, ``string_length_limit`` and
    ``container_length_limit`` (defaults in :class:`ThriftLimits`) before they are read: a
    reply over a limit is a ``TProtocolException`` and the connection is discarded. Other
    keyword options go to :class:`~geventconnpool.ConnectionPool`; the default pool name is
    ``thrift host:port``.
    """

    def __init__(
        self,
        service: Any,
        host: str = "127.0.0.1",
        port: int = 9090,
        *,
        framed: bool = False,
        ping: str | None = None,
        tls: bool = False,
        ssl_context: _stdssl.SSLContext | None = None,
        server_hostname: str | None = None,
        tcp_keepalive: bool = False,
        socket_timeout: float | None = None,
        max_message_size: int = ThriftLimits.max_message_size,
        string_length_limit: int = ThriftLimits.string_length_limit,
        container_length_limit: int = ThriftLimits.container_length_limit,
        **pool_options: Any,
    ) -> None:
        methods = getattr(service, "thrift_services", None)
        if not isinstance(methods, list):
            raise TypeError(f"service must be a thriftpy2 service, got {service!r}")
        if ping is not None and ping not in methods:
            raise ValueError(f"ping: {service.__name__} has no method {ping!r}")
        for flag, value in (("framed", framed), ("tls", tls), ("tcp_keepalive", tcp_keepalive)):
            if not isinstance(value, bool):
                raise TypeError(f"{flag} must be True or False, not {type(value).__name__}")
        self.limits = ThriftLimits(max_message_size, string_length_limit, container_length_limit)
        if ssl_context is None and tls:
            ssl_context = default_ssl_context()
        self.service = service
        self.ping = ping
        self.framed = framed
        self._trans_factory: Any = (
            TFramedTransportFactory() if framed else TBufferedTransportFactory()
        )
        self._proto_factory: Any = TBinaryProtocolFactory()  # type: ignore[no-untyped-call]
        self.connector = SocketConnector(
            host,
            port,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            tcp_keepalive=tcp_keepalive,
            socket_timeout=socket_timeout,
        )
        pool_options.setdefault("exc_classes", (*CONNECTION_ERRORS, TProtocolException))
        pool_options.setdefault("name", f"thrift {self.connector.address}")
        super().__init__(**pool_options)
        if ssl_context is not None:
            warn_if_unverified(ssl_context, self.connector.address, str(self.name))

    def tls_stats(self) -> TlsStats:
        """TLS handshakes done and how many resumed a session (zeros without TLS)."""
        return self.connector.tls_stats()

    def _new_connection(self) -> PooledClient:
        sock = self.connector.connect(self.connect_timeout)
        try:
            transport = self._trans_factory.get_transport(
                TSocket(sock=sock)  # type: ignore[no-untyped-call]
            )
            return PooledClient(
                self.service,
                sock,
                transport,
                self._proto_factory,
                framed=self.framed,
                limits=self.limits,
                reply_timeout=self.connector.socket_timeout,
                address=self.connector.address,
            )
        except BaseException:
            sock.close()
            raise

    def _close_connection(self, conn: PooledClient) -> None:
        self.connector.remember_session(conn.transport_socket)
        conn.close()

    def _check(self, conn: PooledClient) -> bool:
        return conn.in_sync and probe_socket(conn.transport_socket)

    def _keepalive(self, conn: PooledClient) -> None:
        if self.ping is not None:
            getattr(conn, self.ping)()
        elif not probe_socket(conn.transport_socket):
            raise ConnectionError(f"thrift connection to {self.connector.address} was closed")

    def _on_acquire(self, conn: PooledClient) -> bool:
        # Every hand-out, as RedisPool: never give out a client whose server closed it (or sent
        # bytes nobody asked for) while it was idle. One poll(0) of the socket, no round trip
        # (its cost, measured, is in docs/guides/thrift.rst).
        return conn.quiet()

    def _on_release(self, conn: PooledClient) -> bool:
        return conn.in_sync

    def _is_disconnect(self, exc: BaseException) -> bool:
        if isinstance(exc, PoolError):
            return False
        if isinstance(exc, (TTransportException, TProtocolException, OSError, EOFError)):
            return True
        if isinstance(exc, TApplicationException):
            return exc.type in _DESYNC_TYPES
        return super()._is_disconnect(exc)

    def proxy(
        self,
        *,
        retries: int = 2,
        retry_interval: float = 0.05,
        retry_max_interval: float = 1.0,
        timeout: Any = ...,
    ) -> ThriftProxy:
        """An object with the service's methods; each call borrows a client for that call.

        ``timeout`` is the ``get()`` timeout of each call (default: the pool's).
        """
        return ThriftProxy(
            self,
            retries=retries,
            retry_interval=retry_interval,
            retry_max_interval=retry_max_interval,
            timeout=timeout,
        )


class ThriftProxy:
    """The service's methods; each call checks a client out, calls, and checks it back in.

    A call that fails because the connection failed (:data:`CONNECTION_ERRORS`) is retried up
    to ``retries`` times on another connection, with exponential backoff from
    ``retry_interval``. Exceptions the service raises, and pool errors, are never retried.
    Holds no connection between calls, so there is nothing to release when it is dropped.
    Calls are retried even if the request may have reached the server: keep ``retries=0``
    for methods that must not run twice.
    """

    def __init__(
        self,
        pool: ThriftPool,
        *,
        retries: int = 2,
        retry_interval: float = 0.05,
        retry_max_interval: float = 1.0,
        timeout: Any = ...,
    ) -> None:
        if isinstance(retries, bool) or not isinstance(retries, int):
            raise TypeError(f"retries must be an int, not {type(retries).__name__}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries!r}")
        check_seconds("retry_interval", retry_interval, optional=False)
        check_seconds("retry_max_interval", retry_max_interval, optional=False)
        if timeout is not ...:
            check_seconds("timeout", timeout)
        self._pool = pool
        self._timeout = timeout
        for name in pool.service.thrift_services:
            setattr(self, name, self._method(name, retries, retry_interval, retry_max_interval))

    def _method(
        self, name: str, retries: int, interval: float, max_interval: float
    ) -> Callable[..., Any]:
        """The service method ``name``: one checkout and call, under :func:`retry`."""
        pool, timeout = self._pool, self._timeout

        def call(*args: Any, **kwargs: Any) -> Any:
            with pool.get() if timeout is ... else pool.get(timeout) as client:
                return getattr(client, name)(*args, **kwargs)

        call.__name__ = call.__qualname__ = name
        where = f"pool {pool.name!r}".replace("{", "{{").replace("}", "}}")
        return retry(
            call,
            exc_classes=CONNECTION_ERRORS,
            max_failures=retries,
            interval=interval,
            backoff=2.0,
            max_interval=max_interval,
            jitter=0.5,
            logger=pool._log,
            retry_log_message=(
                f"{where}: {{func}}() failed ({{err!r}}); attempt {{attempt}} of {retries + 1}"
            ),
            max_failure_log_level=logging.INFO,  # the caller gets the error: no louder line
            max_failure_log_message=f"{where}: {{func}}() gave up after {retries} retries",
        )

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._pool.service.thrift_services))

    def __repr__(self) -> str:
        return f"<ThriftProxy {self._pool.service.__name__} via {self._pool.name!r}>"
