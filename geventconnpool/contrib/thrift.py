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
import ssl as _stdssl
from collections.abc import Callable
from typing import Any

import gevent

try:  # the `thrift` extra: an ImportError that says how to install it
    import thriftpy2  # noqa: F401
except ImportError as exc:
    from ._extras import missing_extra

    raise missing_extra("thriftpy2", "thrift", __name__, exc) from exc

from thriftpy2.protocol import TBinaryProtocolFactory
from thriftpy2.protocol.exc import TProtocolException
from thriftpy2.thrift import TApplicationException, TClient, TException
from thriftpy2.transport import (
    TBufferedTransportFactory,
    TFramedTransportFactory,
    TSocket,
    TTransportException,
)

from .. import _backoff
from ..errors import PoolError
from ..pool import ConnectionPool
from .tcp import (
    SocketConnector,
    TlsStats,
    default_ssl_context,
    probe_socket,
    warn_if_unverified,
)

__all__ = ["CONNECTION_ERRORS", "PooledClient", "ThriftPool", "ThriftProxy"]

log = logging.getLogger("geventconnpool.contrib.thrift")

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


class PooledClient(TClient):
    """A thriftpy2 ``TClient`` that knows its socket and whether its stream is in sync."""

    transport_socket: Any
    in_sync: bool

    def fileno(self) -> int:
        """The socket's descriptor (for the pool's default probe and fork handling)."""
        fd: int = self.transport_socket.fileno()
        return fd

    def _send(self, _api: str, **kwargs: Any) -> None:
        self.in_sync = False  # a half-written request would poison the next holder's call
        super()._send(_api, **kwargs)
        if getattr(getattr(self._service, _api + "_result"), "oneway", False):
            self.in_sync = True

    def _recv(self, _api: str) -> Any:
        try:
            result = super()._recv(_api)
        except (TTransportException, TProtocolException):
            raise
        except TException:
            # an EXCEPTION reply or a declared exception: the whole reply was read
            self.in_sync = True
            raise
        self.in_sync = True
        return result


class ThriftPool(ConnectionPool[PooledClient]):
    """A pool of clients of ``service`` (a thriftpy2 service class) at ``host:port``.

    ``framed=True`` uses the framed transport (default: buffered); the protocol is binary.
    ``ping`` names a service method without arguments that keepalive calls (default: none; the
    keepalive then only probes the socket). TLS with ``ssl_context=`` or ``tls=True``.
    Other keyword options go to :class:`~geventconnpool.ConnectionPool`.
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
        **pool_options: Any,
    ) -> None:
        methods = getattr(service, "thrift_services", None)
        if not isinstance(methods, list):
            raise TypeError(f"service must be a thriftpy2 service, got {service!r}")
        if ping is not None and ping not in methods:
            raise ValueError(f"ping: {service.__name__} has no method {ping!r}")
        if ssl_context is None and tls:
            ssl_context = default_ssl_context()
        self.service = service
        self.ping = ping
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
            client = PooledClient(self.service, self._proto_factory.get_protocol(transport))
        except BaseException:
            sock.close()
            raise
        client.transport_socket = sock
        client.in_sync = True
        return client

    def _close_connection(self, conn: PooledClient) -> None:
        self.connector.remember_session(conn.transport_socket)
        conn.transport_socket.close()

    def _check(self, conn: PooledClient) -> bool:
        return probe_socket(conn.transport_socket)

    def _keepalive(self, conn: PooledClient) -> None:
        if self.ping is not None:
            getattr(conn, self.ping)()
        elif not probe_socket(conn.transport_socket):
            raise ConnectionError("thrift connection closed by the server")

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
        """An object with the service's methods; each call borrows a client for that call."""
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
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        if not isinstance(retry_interval, (int, float)) or retry_interval < 0:
            raise ValueError(f"retry_interval must be >= 0, got {retry_interval!r}")
        self._pool = pool
        self._retries = retries
        self._interval = float(retry_interval)
        self._max_interval = float(retry_max_interval)
        self._timeout = timeout
        for name in pool.service.thrift_services:
            setattr(self, name, self._method(name))

    def _method(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return self._call(name, args, kwargs)

        call.__name__ = call.__qualname__ = name
        return call

    def _call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        attempt = 0
        while True:
            try:
                get = self._pool.get() if self._timeout is ... else self._pool.get(self._timeout)
                with get as client:
                    return getattr(client, name)(*args, **kwargs)
            except PoolError:
                raise  # PoolTimeout is an OSError too, but not a connection failure
            except CONNECTION_ERRORS as exc:
                attempt += 1
                if attempt > self._retries:
                    raise
                log.info(
                    "pool %r: %s() failed (%s: %s); retry %d of %d",
                    self._pool.name,
                    name,
                    type(exc).__name__,
                    exc,
                    attempt,
                    self._retries,
                )
                pause = _backoff.delay(attempt, self._interval, self._max_interval)
                if pause > 0:
                    gevent.sleep(pause)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._pool.service.thrift_services))

    def __repr__(self) -> str:
        return f"<ThriftProxy {self._pool.service.__name__} via {self._pool.name!r}>"
