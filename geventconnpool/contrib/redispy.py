"""redis-py's client on our pool: :class:`RedisPyConnectionPool`.

::

    import redis
    from geventconnpool.contrib.redispy import RedisPyConnectionPool

    pool = RedisPyConnectionPool("127.0.0.1", 6379, max_size=20, timeout=5, keepalive=30)
    r = redis.Redis(connection_pool=pool)
    r.set("key", "value")

redis-py's own connection class (``redis.Connection``, ``SSLConnection``,
``UnixDomainSocketConnection``) speaks the protocol; our :class:`~geventconnpool.ConnectionPool`
does the pooling: fair waiting with a deadline, checkout probes, keepalive PINGs, fork safety,
fail-fast, ``stats()``. Pool options are keyword arguments (as for every ready-made pool);
redis-py connection arguments go in ``connection_kwargs={...}``. Tested with redis-py 4.5, 5.x
and 8.x.

Where it follows redis-py's own pool, so redis-py code keeps working:

- **Errors.** When no connection can be handed out, ``get_connection()`` raises an error that is
  both the pool's (``PoolTimeout``, ``PoolUnavailable``, ``PoolExhausted``) and a
  ``redis.ConnectionError``: ``except redis.ConnectionError`` and redis-py's ``Retry`` catch it.
  ``fail_fast`` is on by default, so while the server is known down it is raised at once, as
  redis-py raises ``ConnectionError`` at once when connects are refused.
- **On demand.** With only ``max_size`` given, ``min_size`` defaults to 0: connections open when
  needed, as in redis-py, and ``disconnect()`` does not reopen them (pass ``size=`` or
  ``min_size=`` to keep connections open and warm).
- **Reconnects go through the pool.** redis-py reconnects a lost connection in place (its
  ``Retry``, or the next command on a disconnected connection). A pooled connection never does:
  it raises :class:`ConnectionLost` (a ``redis.ConnectionError``), the pool discards it when it
  is released and makes a new one under its backoff, ``stats()`` and fail-fast. So retry at the
  call level (``@retry(exc_classes=pool.exc_classes)``, or redis-py's ``Retry`` around the
  call), not with ``retry=`` on the connections: in-place retries would only find the
  connection refusing. A connection dedicated to a ``PubSub`` or ``Monitor`` (never handed out
  again) keeps redis-py's reconnect-and-resubscribe.
- **Threads.** The pool belongs to the gevent hub of the thread that made it.
  ``PubSub.run_in_thread()``, or a blocking ``listen()`` in a real OS thread, calls the pool from
  another thread, which it refuses (a ``RuntimeError`` saying so). Under
  ``gevent.monkey.patch_all()`` threads are greenlets and this works; otherwise run the
  listening loop in a greenlet (``gevent.spawn``), or give that thread its own pool.
- **Credentials.** ``pool.password`` / ``pool.username`` are settable (read at each connect;
  ``disconnect()`` replaces the open connections), or use redis-py's ``credential_provider``
  in ``connection_kwargs``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable
from typing import Any

from ._extras import missing_extra

try:
    import redis
    import redis.exceptions
    from redis.connection import (
        Connection,
        UnixDomainSocketConnection,
        parse_url,
    )
    from redis.connection import ConnectionPool as _RedisPyPool
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise missing_extra("redis", "redis", __name__, exc) from exc

from ..errors import PoolError, PoolExhausted, PoolTimeout, PoolUnavailable
from ..pool import ConnectionPool
from ..stats import PoolStats

__all__ = [
    "ConnectionLost",
    "NoConnectionAvailable",
    "PoolExhaustedError",
    "PoolTimeoutError",
    "PoolUnavailableError",
    "RedisPyConnectionPool",
]


class ConnectionLost(redis.exceptions.ConnectionError):
    """A pooled connection was lost and something (redis-py's own ``Retry``, or a command sent
    on it after a disconnect) tried to reconnect it in place: pooled connections reconnect
    through the pool only (its backoff, stats, fail-fast and ``max_size``), so this connection
    is discarded when released and the next checkout gets a new one."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class NoConnectionAvailable(redis.exceptions.ConnectionError):
    """``get_connection()`` could not hand out a connection: a ``redis.ConnectionError`` (so
    ``except redis.ConnectionError`` and redis-py's ``Retry`` catch it, as they catch what
    redis-py's own pool raises) that is also the pool's error (below)."""

    def __repr__(self) -> str:  # redis-py's repr is "network:ClassName", without the message
        return f"{type(self).__name__}({str(self)!r})"


class PoolTimeoutError(NoConnectionAvailable, PoolTimeout):
    """No connection within the pool's ``timeout``: a ``PoolTimeout`` and a
    ``redis.ConnectionError``."""


class PoolUnavailableError(NoConnectionAvailable, PoolUnavailable):
    """The backend is known down (``fail_fast``, on by default here): raised at once, as
    redis-py's pool raises ``ConnectionError`` at once when the server refuses connects."""


class PoolExhaustedError(NoConnectionAvailable, PoolExhausted):
    """``max_waiting`` callers already wait (redis-py: "Too many connections")."""


_TRANSLATED: tuple[tuple[type[PoolError], type[NoConnectionAvailable]], ...] = (
    (PoolTimeout, PoolTimeoutError),
    (PoolUnavailable, PoolUnavailableError),
    (PoolExhausted, PoolExhaustedError),
)

#: The message when a pooled connection is used from another OS thread.
THREADS_HINT = (
    "; redis-py's PubSub.run_in_thread() and a blocking listen() in a real OS thread call the "
    "pool from that thread: call gevent.monkey.patch_all() first (threads are then greenlets), "
    "run the listening loop in a greenlet (gevent.spawn), or give that thread its own "
    "RedisPyConnectionPool"
)

#: The core pool's options: keyword arguments of RedisPyConnectionPool.
POOL_OPTIONS = frozenset(inspect.signature(ConnectionPool.__init__).parameters) - {"self"}
#: Commands after which a connection must not go back to the pool.
_STICKY = frozenset({"SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "MONITOR", "RESET", "QUIT"})
_MODE = "_geventconnpool_mode"  # attribute set on a redis-py connection that entered a mode
#: Modes of a connection dedicated to one PubSub/Monitor object for its whole life.
_DEDICATED = frozenset({"SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "MONITOR"})


def _connection_params(connection_class: type[Any]) -> set[str]:
    """Keyword arguments of ``connection_class`` (and its bases), for error messages."""
    names: set[str] = set()
    for klass in getattr(connection_class, "__mro__", ()):
        init = klass.__dict__.get("__init__")
        if init is not None:
            try:
                names.update(inspect.signature(init).parameters)
            except (TypeError, ValueError):
                pass
    return names - {"self", "args", "kwargs"}


def _track_modes(conn: Any) -> None:
    """Wrap ``conn.send_command`` so that SUBSCRIBE, MONITOR ... mark the connection."""
    send = conn.send_command

    def send_command(*args: Any, **kwargs: Any) -> Any:
        if args:
            name = args[0]
            if isinstance(name, bytes):
                name = name.decode("latin-1")
            if isinstance(name, str) and name.upper() in _STICKY:
                setattr(conn, _MODE, name.upper())
        return send(*args, **kwargs)

    conn.send_command = send_command


def _pong(reply: Any) -> bool:
    return reply in (b"PONG", "PONG") or (isinstance(reply, list) and reply[:1] in ([b"pong"],))


class _Backend(ConnectionPool[Any]):
    """Our pool of redis-py connections (the engine behind :class:`RedisPyConnectionPool`)."""

    def __init__(
        self, connection_class: type[Any], connection_kwargs: dict[str, Any], **options: Any
    ) -> None:
        self.connection_class = connection_class
        self.connection_kwargs = connection_kwargs  # the adapter's dict: set_retry() updates it
        self.address = str(options.get("name", "redis"))
        self.live: set[Any] = set()
        options.setdefault(
            "exc_classes",
            (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError),
        )
        super().__init__(**options)

    def make(self) -> Any:
        conn = self.connection_class(**self.connection_kwargs)
        _track_modes(conn)
        return conn

    def _new_connection(self) -> Any:
        conn = self.make()
        try:
            conn.connect()
        except redis.exceptions.RedisError as exc:
            conn.disconnect()
            raise _located(exc, self.address) from exc
        except BaseException:
            conn.disconnect()
            raise
        _refuse_reconnects(conn, self.address)
        self.live.add(conn)
        return conn

    def _keepalive(self, conn: Any) -> None:
        conn.send_command("PING", check_health=False)
        reply = conn.read_response()
        if not _pong(reply):
            raise redis.exceptions.ConnectionError(f"PING answered {reply!r}, not PONG")

    def _check(self, conn: Any) -> bool:
        self._keepalive(conn)
        return True

    def _on_acquire(self, conn: Any) -> bool:
        # Never hand out a disconnected connection (redis-py would silently reconnect it
        # outside the pool), one that entered a mode, or one with unread data (can_read()
        # is a zero round-trip poll; EOF makes it raise, which discards too).
        if conn._sock is None or getattr(conn, _MODE, None) or conn.pid != os.getpid():
            return False
        return not conn.can_read()

    def _on_release(self, conn: Any) -> bool:
        # redis-py disconnects a connection on any error or interruption, and PubSub/Monitor
        # disconnect theirs before releasing: those are discarded, never reconnected in place.
        if conn._sock is None or getattr(conn, _MODE, None):
            return False
        return not conn.can_read()

    def _close_connection(self, conn: Any) -> None:
        self.live.discard(conn)
        conn.disconnect()

    def _forget_connection(self, conn: Any) -> None:
        # redis-py's disconnect() in another process closes only this process's descriptor
        # (no shutdown(), so the parent's session goes on).
        self.live.discard(conn)
        conn.disconnect()

    def _is_disconnect(self, exc: BaseException) -> bool:
        if isinstance(exc, PoolError):
            return False
        return isinstance(exc, (*self.exc_classes, redis.exceptions.ReadOnlyError))


def _refuse_reconnects(conn: Any, address: str) -> None:
    """From now on ``conn`` never connects again by itself: redis-py reconnects a disconnected
    connection in place (in ``send_command``, ``can_read``, or its ``Retry`` after a failure),
    which would skip the pool's backoff, stats and fail-fast. Instead it raises
    :class:`ConnectionLost`; the pool discards it on release and connects a new one.

    Except a connection dedicated to pub/sub or MONITOR (it entered a mode and is never handed
    out again): it keeps redis-py's reconnect-and-resubscribe, which long-lived subscribers
    rely on; the pool discards it when it is released."""
    originals = {
        name: getattr(conn, name)
        for name in ("connect", "connect_check_health")  # the latter: redis-py >= 6
        if hasattr(conn, name)
    }

    def guard(name: str) -> Any:
        original = originals[name]

        def connect(*args: Any, **kwargs: Any) -> Any:
            if getattr(conn, _MODE, None) in _DEDICATED:
                return original(*args, **kwargs)
            raise ConnectionLost(
                f"pooled connection to {address} was lost; it is not reconnected in place (the "
                "pool replaces it: retry the call, e.g. with @retry(exc_classes=pool.exc_classes))"
            )

        return connect

    for name in originals:
        setattr(conn, name, guard(name))


_LOCATED: dict[type[BaseException], type[BaseException]] = {}


def _located(exc: BaseException, address: str) -> BaseException:
    """``exc`` as the same class (a subclass of it) whose message names the address and errno
    and whose ``repr()`` shows the message: redis-py's ``repr()`` is ``network:ConnectionError``
    only, which is what the pool's "connect failed" line printed."""
    message = str(exc) or type(exc).__name__
    errno = getattr(exc.__cause__ or exc.__context__, "errno", None)
    if errno is not None and str(errno) not in message:
        message = f"{message} (errno {errno})"
    if address not in message:
        message = f"{message} (connecting to {address})"
    cls = type(exc)
    located_cls = _LOCATED.get(cls)
    if located_cls is None:
        located_cls = _LOCATED[cls] = type(
            cls.__name__,
            (cls,),
            {"__repr__": _plain_repr, "__module__": cls.__module__, "__qualname__": cls.__name__},
        )
    try:
        located = located_cls(message)
    except Exception:  # a class whose constructor wants something else
        return exc
    located.errno = errno  # type: ignore[attr-defined]
    return located


def _plain_repr(self: BaseException) -> str:
    return f"{type(self).__name__}({str(self)!r})"


class RedisPyConnectionPool(_RedisPyPool):
    """A redis-py ``ConnectionPool`` backed by :class:`~geventconnpool.ConnectionPool`.

    ``RedisPyConnectionPool(host="127.0.0.1", port=6379, db=0, *, unix_socket_path=None,
    connection_class=redis.Connection, connection_kwargs=None, **pool_options)``:
    ``pool_options`` are the core pool's (``max_size``, ``min_size``, ``timeout``,
    ``keepalive``, ``check_idle_after``, ``fail_fast`` ...; the default ``name`` is
    ``"redis <address>/<db>"``); ``connection_kwargs`` go to ``connection_class`` (redis-py's
    ``password``, ``socket_timeout``, ``decode_responses``, ``ssl_*`` ...). A misplaced
    argument is a ``TypeError`` naming it. ``get_connection()`` waits at most ``timeout``
    seconds and then raises :class:`PoolTimeoutError` (a :class:`~geventconnpool.PoolTimeout`
    and a ``redis.ConnectionError``); with only ``max_size``, ``min_size`` defaults to 0 and
    ``fail_fast`` to True, as redis-py's own pool behaves (see the module's docstring: errors,
    reconnects through the pool, OS threads, credentials).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        db: int = 0,
        *,
        unix_socket_path: str | None = None,
        connection_class: type[Any] | None = None,
        connection_kwargs: dict[str, Any] | None = None,
        **pool_options: Any,
    ) -> None:
        if connection_class is None:
            connection_class = (
                Connection if unix_socket_path is None else UnixDomainSocketConnection
            )
        kwargs = self._split_arguments(
            connection_class, connection_kwargs, pool_options, host, port, db, unix_socket_path
        )
        super().__init__(connection_class=connection_class, **kwargs)
        if getattr(self, "cache", None) is not None:
            raise ValueError("client-side caching (cache=, cache_config=) is not supported here")
        connection_class(**self.connection_kwargs)  # unknown connection arguments fail now
        address = unix_socket_path if unix_socket_path is not None else f"{host}:{port}"
        pool_options.setdefault("name", f"redis {address}/{db}")
        if "size" not in pool_options and "min_size" not in pool_options:
            pool_options["min_size"] = 0  # as redis-py's pool: open connections on demand
        pool_options.setdefault("fail_fast", True)  # as redis-py: fail at once when it is down
        self.address = address
        self._backend = _Backend(connection_class, self.connection_kwargs, **pool_options)
        self._backend.address = address
        self._checkouts: dict[Any, Any] = {}  # connection -> its get() context

    @staticmethod
    def _split_arguments(
        connection_class: type[Any],
        connection_kwargs: dict[str, Any] | None,
        pool_options: dict[str, Any],
        host: str,
        port: int,
        db: int,
        unix_socket_path: str | None,
    ) -> dict[str, Any]:
        """Check that every argument is in its place; return the connection's arguments."""
        params = _connection_params(connection_class)
        for key in pool_options:
            if key in POOL_OPTIONS:
                continue
            if key == "max_connections":
                hint = "the pool's size is max_size=N"
            elif key in params:
                hint = (
                    f"it is a redis-py connection argument: pass connection_kwargs={{{key!r}: ...}}"
                )
            else:
                hint = "it is neither a pool option nor a redis-py connection argument"
            raise TypeError(f"RedisPyConnectionPool: unexpected keyword argument {key!r}; {hint}")
        if connection_kwargs is not None and not isinstance(connection_kwargs, dict):
            raise TypeError(
                f"connection_kwargs must be a dict, not {type(connection_kwargs).__name__}"
            )
        kwargs = dict(connection_kwargs or {})
        for key in kwargs:
            if key in POOL_OPTIONS or key == "max_connections":
                raise TypeError(
                    f"connection_kwargs[{key!r}] is a pool option: pass {key}= to "
                    "RedisPyConnectionPool itself"
                )
            if key in ("host", "port", "db", "path", "connection_class"):
                raise TypeError(
                    f"connection_kwargs[{key!r}]: pass it as RedisPyConnectionPool's own "
                    f"argument ({'unix_socket_path' if key == 'path' else key}=)"
                )
        if unix_socket_path is not None:
            kwargs["path"] = unix_socket_path
        else:
            kwargs["host"], kwargs["port"] = host, port
        kwargs["db"] = db
        return kwargs

    @classmethod
    def from_url(cls, url: str, **pool_options: Any) -> RedisPyConnectionPool:
        """A pool from a redis-py URL (``redis://``, ``rediss://``, ``unix://``), parsed by
        redis-py's own ``parse_url``; ``pool_options`` as for the constructor. The URL's
        ``max_connections`` becomes ``max_size`` and ``timeout`` the pool's wait timeout."""
        opts: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        connection_class = opts.pop("connection_class", Connection)
        if "max_connections" in opts:
            pool_options["max_size"] = opts.pop("max_connections")
        if "timeout" in opts:
            pool_options["timeout"] = opts.pop("timeout")
        where: dict[str, Any] = {"db": opts.pop("db", 0)}
        if "path" in opts:
            where["unix_socket_path"] = opts.pop("path")
        else:
            where["host"] = opts.pop("host", "localhost")
            where["port"] = opts.pop("port", 6379)
        return cls(
            **where, connection_class=connection_class, connection_kwargs=opts, **pool_options
        )

    # -- redis-py's ConnectionPool interface ----------------------------------------------------

    def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        """Check a connection out (waiting at most the pool's ``timeout``); ``release()`` it.

        Raises :class:`PoolTimeoutError`, :class:`PoolUnavailableError` (at once while the
        backend is known down) or :class:`PoolExhaustedError`: each is both the pool's error
        and a ``redis.ConnectionError``. From another OS thread: the core's RuntimeError,
        with what to do about redis-py's threads.
        """
        checkout = self._backend.get()
        try:
            conn = checkout.__enter__()
        except PoolError as exc:
            for ours, theirs in _TRANSLATED:
                if isinstance(exc, ours):
                    error = theirs(*exc.args)
                    error.__cause__ = exc.__cause__
                    error.__suppress_context__ = True
                    raise error from exc.__cause__
            raise
        except RuntimeError as exc:
            if "thread" not in str(exc):
                raise
            raise type(exc)(f"{exc}{THREADS_HINT}") from exc
        self._checkouts[conn] = checkout
        return conn

    def release(self, connection: Any) -> None:
        """Give a connection back; a disconnected or subscribed one is discarded."""
        checkout = self._checkouts.pop(connection, None)
        if checkout is not None:
            checkout.__exit__(None, None, None)

    def make_connection(self) -> Any:
        """A new, unconnected connection of ``connection_class`` (the pool opens its own)."""
        return self._backend.make()

    def owns_connection(self, connection: Any) -> bool:
        return connection in self._checkouts or connection in self._backend.live

    def disconnect(self, inuse_connections: bool = True) -> None:
        """Close the idle connections; with ``inuse_connections``, disconnect the checked-out
        ones too (they are discarded when released, as after any disconnect)."""
        self._backend.invalidate()
        if inuse_connections:
            for conn in list(self._checkouts):
                conn.disconnect()

    def reset(self) -> None:
        """redis-py calls this after a fork; our pool handles forks itself: start afresh."""
        self.pid = os.getpid()
        self._available_connections: list[Any] = []
        self._in_use_connections: set[Any] = set()
        self._created_connections = 0
        backend = getattr(self, "_backend", None)
        if backend is not None:
            backend.invalidate()

    def close(self) -> None:
        """Close the pool for good (redis-py's ``Redis.from_pool()`` client calls this)."""
        self._backend.close()

    # -- credentials: read at each connect ---------------------------------------------------

    @property
    def username(self) -> str | None:
        """The user name new connections authenticate with (settable: rotation)."""
        value: str | None = self.connection_kwargs.get("username")
        return value

    @username.setter
    def username(self, value: str | None) -> None:
        self._set_credential("username", value)

    @property
    def password(self) -> str | None:
        """The password new connections authenticate with (settable: rotation; call
        ``disconnect()`` to replace the open connections too)."""
        value: str | None = self.connection_kwargs.get("password")
        return value

    @password.setter
    def password(self, value: str | None) -> None:
        self._set_credential("password", value)

    def _set_credential(self, name: str, value: str | None) -> None:
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a str or None, not {type(value).__name__}")
        if self.connection_kwargs.get("credential_provider") is not None:
            raise AttributeError(
                f"{name} is ignored while connection_kwargs['credential_provider'] is set: "
                "rotate the credentials in the provider (redis-py asks it at each connect)"
            )
        self.connection_kwargs[name] = value

    def set_retry(self, retry: Any) -> None:
        self.connection_kwargs["retry"] = retry
        for conn in list(self._backend.live):
            conn.retry = retry

    def _get_free_connections(self) -> Iterable[Any]:
        return [c for c in self._backend.live if c not in self._checkouts]

    def _get_in_use_connections(self) -> set[Any]:
        return set(self._checkouts)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._backend!r}>"

    # -- our pool ---------------------------------------------------------------------------

    @property
    def pool(self) -> ConnectionPool[Any]:
        """The :class:`~geventconnpool.ConnectionPool` doing the work (``dump()``, ``resize()``)."""
        return self._backend

    @property
    def name(self) -> str:
        return str(self._backend.name)

    @property
    def exc_classes(self) -> tuple[type[BaseException], ...]:
        """What means "connection lost": for ``@retry(exc_classes=pool.exc_classes)``."""
        return self._backend.exc_classes

    def stats(self) -> PoolStats:
        return self._backend.stats()

    def wait_ready(self, timeout: float | None = None) -> None:
        self._backend.wait_ready(timeout)

    def __enter__(self) -> RedisPyConnectionPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
