"""A pool of DB-API 2 connections for gevent: :class:`DbApiPool`, for any driver's ``connect``.

::

    import psycopg2, psycogreen.gevent
    psycogreen.gevent.patch_psycopg()          # make psycopg2 cooperative
    pool = DbApiPool(psycopg2.connect, "host=127.0.0.1 dbname=app", size=10, timeout=5)
    with pool.get() as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.commit()

Driver arguments are positional (``*connect_args``) or in ``connect_kwargs={...}`` (a mapping,
or a callable returning one at each connect: how credentials rotate); keyword arguments are
pool options, as for every ready-made pool. On release an open transaction is
rolled back, and a connection still in a transaction after the release hooks is discarded, so no
transaction state passes from one holder to the next. A connection whose query was interrupted
(a ``gevent.Timeout`` caught inside the ``with`` block) refuses further use and is discarded.
Keepalive and the checkout check run ``SELECT 1``. :meth:`DbApiPool._is_disconnect` tells a lost
connection from an SQL error. The driver must be cooperative: psycopg2 with psycogreen, or a
pure-Python driver (pg8000) under ``gevent.monkey.patch_all()``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, ParamSpec, TypeVar
from urllib.parse import unquote, urlsplit

from ..errors import PoolError
from ..pool import ConnectionPool
from ..retry import retry

__all__ = [
    "DbApiPool",
    "TransactionLeftOpen",
    "default_name",
    "driver_module",
    "in_transaction",
    "is_disconnect",
    "sqlstate_of",
]

log = logging.getLogger("geventconnpool.contrib.dbapi")
P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C")

#: SQLSTATE codes (or class prefixes) that mean the session is gone: class 08 (connection
#: exception), admin/crash shutdown, cannot connect now, idle-session and idle-in-transaction
#: timeouts.
DISCONNECT_SQLSTATES: tuple[str, ...] = ("08", "57P01", "57P02", "57P03", "57P05", "25P03")

#: Lower-case fragments of driver messages that mean the connection is lost (psycopg2, pg8000,
#: and the usual libpq/MySQL wording), for errors that carry no SQLSTATE.
DISCONNECT_MESSAGES: tuple[str, ...] = (
    "server closed the connection",
    "terminating connection",
    "connection already closed",
    "connection is closed",
    "connection not open",
    "could not receive data from server",
    "could not send data to server",
    "no connection to the server",
    "network error",
    "communication error",
    "lost connection",
    "server has gone away",
    "connection reset",
    "broken pipe",
    "ssl syscall error",
    "ssl connection has been closed",
    "eof detected",
    "interrupted mid-exchange",
)

_DISCONNECT_CLASS_NAMES = frozenset({"OperationalError", "InterfaceError"})

_UNSET: Any = object()

# libpq's PQtransactionStatus values, as psycopg2 reports them.
_TX_IDLE, _TX_ACTIVE, _TX_UNKNOWN = 0, 1, 4

#: Options of :class:`~geventconnpool.ConnectionPool`: the keyword arguments DbApiPool accepts
#: besides its own, so a driver argument given there is a TypeError, not a silent mistake.
_POOL_OPTIONS = frozenset(inspect.signature(ConnectionPool.__init__).parameters) - {"self"}
_POSTGRES_DRIVERS = frozenset({"psycopg2", "psycopg", "pg8000", "psycopg2cffi", "pgdb"})
_DSN_PAIR = re.compile(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")
_warned_no_wait_callback = False
#: Driver keyword arguments that say where the database is, and the DSN field each stands for.
_NAME_KWARGS = (
    ("host", "host"),
    ("port", "port"),
    ("dbname", "dbname"),
    ("database", "dbname"),
    ("db", "dbname"),
    ("unix_sock", "host"),
)


class TransactionLeftOpen(PoolError):
    """A new connection was still in a transaction after ``_on_connect``."""


def in_transaction(conn: Any) -> bool | None:
    """Whether ``conn`` is inside a transaction, as the driver tells: True also while a command
    runs or when the state is unknown (a bad connection); None if the driver does not say.

    psycopg2 ``get_transaction_status()``; psycopg 3 ``info.transaction_status``; pg8000 and
    sqlite3 ``in_transaction`` (pg8000 before 1.31: ``_in_transaction``).
    """
    status = getattr(conn, "get_transaction_status", None)
    if callable(status):
        return bool(status() != _TX_IDLE)
    info_status = getattr(getattr(conn, "info", None), "transaction_status", None)
    if info_status is not None:
        return int(info_status) != _TX_IDLE
    for attr in ("in_transaction", "_in_transaction"):
        value = getattr(conn, attr, None)
        if isinstance(value, bool):
            return value
    return None


def _dsn_fields(dsn: str) -> dict[str, str]:
    """host/port/dbname from a libpq DSN: ``key=value`` pairs or a ``postgresql://`` URI."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        fields = {"dbname": unquote(parts.path.lstrip("/"))}
        try:
            fields["host"] = parts.hostname or ""
            fields["port"] = str(parts.port or "")
        except ValueError:
            pass
        return {k: v for k, v in fields.items() if v}
    found = {k: v.strip("'") for k, v in _DSN_PAIR.findall(dsn)}
    return {k: found[k] for k in ("host", "hostaddr", "port", "dbname") if k in found}


def default_name(
    driver: ModuleType | None, connect_args: tuple[Any, ...], connect_kwargs: Mapping[str, Any]
) -> str:
    """``postgresql 127.0.0.1:5432/app`` from the DSN and keyword arguments; the driver module's
    name when there is no address to show. Never includes a password."""
    module = (driver.__name__ if driver is not None else "dbapi").split(".")[0]
    postgres = module in _POSTGRES_DRIVERS
    fields: dict[str, Any] = {}
    if connect_args and isinstance(connect_args[0], str):
        fields.update(_dsn_fields(connect_args[0]))
    for key, alias in _NAME_KWARGS:
        if connect_kwargs.get(key) is not None:
            fields[alias] = connect_kwargs[key]
    host = fields.get("host") or fields.get("hostaddr")
    if host is None:
        return "postgresql" if postgres else module
    where = str(host)
    if not where.startswith("/"):
        port = fields.get("port") or ("5432" if postgres else None)
        where = f"{where}:{port}" if port else where
    if fields.get("dbname"):
        where = f"{where}/{fields['dbname']}"
    return f"{'postgresql' if postgres else module} {where}"


def _warn_if_psycopg2_blocks(driver: ModuleType | None, name: str) -> None:
    """psycopg2 without a wait callback blocks the hub: one WARNING per process, naming the fix."""
    global _warned_no_wait_callback
    if _warned_no_wait_callback or driver is None or driver.__name__.split(".")[0] != "psycopg2":
        return
    extensions = sys.modules.get("psycopg2.extensions")
    get_wait_callback = getattr(extensions, "get_wait_callback", None)
    if get_wait_callback is None or get_wait_callback() is not None:
        return
    _warned_no_wait_callback = True
    log.warning(
        "pool %r: psycopg2 has no wait callback, so every query blocks the whole process and "
        "the pool's connections are used one at a time; call "
        "psycogreen.gevent.patch_psycopg() (pip install psycogreen) before using the pool",
        name,
    )


class _GuardedStream:
    """pg8000's socket file, refusing all use once a read or write was interrupted part-way.

    pg8000 keeps no state saying an exchange is under way: after a ``gevent.Timeout`` during a
    query, the next query would read the previous one's late reply. Reads and writes are the
    only places such an interrupt lands, so one that escapes them marks the stream broken.
    """

    __slots__ = ("_error", "_raw", "broken")

    def __init__(self, raw: Any, error: type[Exception]) -> None:
        self._raw = raw
        self._error = error
        self.broken: str | None = None

    def _call(self, method: str, *args: Any) -> Any:
        if self.broken is not None:
            raise self._error(
                f"connection unusable: {self.broken} (interrupted mid-exchange); leave the "
                "`with pool.get()` block so the pool discards it"
            )
        try:
            return getattr(self._raw, method)(*args)
        except BaseException as exc:
            self.broken = f"a {method}() was interrupted by {type(exc).__name__}"
            raise

    def read(self, *args: Any) -> Any:
        return self._call("read", *args)

    def write(self, data: Any) -> Any:
        return self._call("write", data)

    def flush(self) -> Any:
        return self._call("flush")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def _guard(conn: Any, driver: ModuleType | None) -> None:
    """Wrap a pg8000 connection's socket file in :class:`_GuardedStream` (others: no-op)."""
    raw = getattr(conn, "_sock", None)
    error = getattr(driver, "InterfaceError", None)
    if (
        driver is None
        or not driver.__name__.startswith("pg8000")
        or not hasattr(conn, "_usock")
        or not all(hasattr(raw, m) for m in ("read", "write", "flush"))
        or not (isinstance(error, type) and issubclass(error, Exception))
    ):
        return
    conn._sock = _GuardedStream(raw, error)


def _broken_stream(conn: Any) -> str | None:
    stream = getattr(conn, "_sock", None)
    return stream.broken if isinstance(stream, _GuardedStream) else None


def driver_module(connect: Callable[..., Any]) -> ModuleType | None:
    """The DB-API module that defines ``connect``'s exceptions (``psycopg2``, ``pg8000`` ...)."""
    while isinstance(connect, functools.partial):
        connect = connect.func
    name = getattr(connect, "__module__", None) or ""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module = sys.modules.get(".".join(parts[:i]))
        if module is not None and hasattr(module, "OperationalError"):
            return module
    return None


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE an exception carries: psycopg2's ``pgcode``, psycopg 3's ``sqlstate``,
    pg8000's ``args[0]['C']``; else None."""
    for attr in ("pgcode", "sqlstate"):
        code = getattr(exc, attr, None)
        if isinstance(code, str) and code:
            return code
    if exc.args and isinstance(exc.args[0], Mapping):
        code = exc.args[0].get("C")
        if isinstance(code, str) and code:
            return code
    return None


def is_disconnect(
    exc: BaseException,
    sqlstates: tuple[str, ...] = DISCONNECT_SQLSTATES,
    messages: tuple[str, ...] = DISCONNECT_MESSAGES,
) -> bool:
    """True if ``exc`` means the database connection is lost, False for SQL errors.

    Socket errors are disconnects. A disconnect SQLSTATE is one whatever its class. Otherwise
    only an ``OperationalError``/``InterfaceError`` can be one: when its cursor's connection is
    closed (psycopg2), or its message says so.
    """
    if isinstance(exc, (OSError, EOFError)):
        return True
    code = sqlstate_of(exc)
    if code is not None:
        return code.startswith(sqlstates)
    names = {cls.__name__ for cls in type(exc).__mro__}
    if not names & _DISCONNECT_CLASS_NAMES:
        return False
    cursor = getattr(exc, "cursor", None)
    if cursor is not None and getattr(getattr(cursor, "connection", None), "closed", False):
        return True
    text = " ".join(str(a) for a in exc.args).lower()
    return any(fragment in text for fragment in messages)


def _check_after(hook: Callable[[Any, Any], Any], which: str) -> Callable[[Any, Any], Any]:
    """Wrap an ``_on_connect``/``_on_release`` so the transaction check runs after the outermost
    one returns, even when a subclass overrides it (and calls ``super()`` anywhere in it)."""

    @functools.wraps(hook)
    def checked(self: DbApiPool[Any], conn: Any) -> Any:
        key = id(conn)
        if key in self._in_hook:  # a super() call from an override: the outer call checks
            return hook(self, conn)
        self._in_hook.add(key)
        try:
            result = hook(self, conn)
            if which == "connect":
                self._check_connected(conn)
            elif result is not False and not self._check_released(conn):
                result = False
        finally:
            self._in_hook.discard(key)
        return result

    checked._dbapi_checked = True  # type: ignore[attr-defined]
    return checked


class DbApiPool(ConnectionPool[C]):
    """A pool of connections made by ``connect(*connect_args, **connect_kwargs)`` (any DB-API 2
    driver), generic over the driver's connection type.

    Keyword arguments are pool options (``size``, ``timeout``, ``keepalive`` ... as for
    :class:`~geventconnpool.ConnectionPool`); driver arguments go positionally or in
    ``connect_kwargs``, so a misplaced one is a ``TypeError`` naming it. ``ping_query`` (default
    ``"SELECT 1"``; None to use the zero round-trip socket probe instead) is what keepalive and
    the checkout check run. ``exc_classes`` defaults to the driver's ``OperationalError`` and
    ``InterfaceError`` plus ``OSError``: pass ``pool.exc_classes`` to ``@retry``. The default
    name is the address, ``postgresql 127.0.0.1:5432/app``.

    After ``_on_connect`` and after ``_on_release`` (yours too, if you override them) the driver's
    transaction status is checked: a new connection still in a transaction fails its connect
    (:class:`TransactionLeftOpen`), a released one still in a transaction is discarded. Drivers
    that do not expose the status get a ``rollback()`` after an overridden hook instead.

    The form of 1.0.0.dev0, ``DbApiPool(connect, *args, pool_options={...}, **driver_kwargs)``,
    still works with a ``DeprecationWarning``.
    """

    ping_query: str | None = "SELECT 1"
    disconnect_sqlstates: tuple[str, ...] = DISCONNECT_SQLSTATES
    disconnect_messages: tuple[str, ...] = DISCONNECT_MESSAGES

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for which in ("connect", "release"):
            hook = cls.__dict__.get(f"_on_{which}")
            if hook is not None and not getattr(hook, "_dbapi_checked", False):
                setattr(cls, f"_on_{which}", _check_after(hook, which))

    def __init__(
        self,
        connect: Callable[..., C],
        *connect_args: Any,
        connect_kwargs: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
        ping_query: Any = _UNSET,
        pool_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        if not callable(connect):
            raise TypeError(f"connect must be callable, got {connect!r}")
        kwargs_provider = connect_kwargs if callable(connect_kwargs) else None
        driver_kwargs, options = _split_options(
            None if kwargs_provider is not None else connect_kwargs,  # type: ignore[arg-type]
            pool_options,
            options,
        )
        _check_password(driver_kwargs)
        if ping_query is _UNSET:
            ping_query = type(self).ping_query
        if ping_query is not None and (not isinstance(ping_query, str) or not ping_query.strip()):
            raise ValueError(f"ping_query must be a non-empty string or None, got {ping_query!r}")
        self._connect = connect
        self._connect_args = connect_args
        self._connect_kwargs: Any = kwargs_provider or driver_kwargs
        self.ping_query = ping_query
        self.driver = driver_module(connect)
        self._autocommit: Any = _UNSET
        self._in_hook: set[int] = set()  # ids of connections inside a checked hook
        options.setdefault("exc_classes", self._driver_exc_classes())
        options.setdefault("name", default_name(self.driver, connect_args, driver_kwargs))
        super().__init__(**options)
        _warn_if_psycopg2_blocks(self.driver, str(self.name))

    def _driver_exc_classes(self) -> tuple[type[BaseException], ...]:
        classes: list[type[BaseException]] = []
        for name in ("OperationalError", "InterfaceError"):
            cls = getattr(self.driver, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                classes.append(cls)
        classes.append(OSError)
        return tuple(classes)

    # -- transaction checks -------------------------------------------------------------------

    def _check_connected(self, conn: C) -> None:
        state = in_transaction(conn)
        if state is None:
            if self._overrides("_on_connect"):
                conn.rollback()  # type: ignore[attr-defined]
            return
        if state:
            raise TransactionLeftOpen(
                f"pool {self.name!r}: a new connection is still in a transaction after "
                "_on_connect(); commit there (or use autocommit) so no holder inherits it"
            )

    def _check_released(self, conn: C) -> bool:
        """False (discard) if ``conn`` is closed, out of step, or still in a transaction after
        the release hooks (an override may ignore what ``super()._on_release`` returned)."""
        if getattr(conn, "closed", 0) or _broken_stream(conn):
            return False
        state = in_transaction(conn)
        if state is None:
            if self._overrides("_on_release"):
                conn.rollback()  # type: ignore[attr-defined]
            return True
        if state:
            self._log.warning(
                "pool %r: connection still in a transaction after release; discarded "
                "(an _on_release() that runs SQL must commit or roll back)",
                self.name,
            )
            return False
        return True

    def _overrides(self, hook: str) -> bool:
        return getattr(type(self), hook) is not getattr(DbApiPool, hook)

    # -- hooks --------------------------------------------------------------------------------

    def _new_connection(self) -> C:
        conn = self._connect(*self._connect_args, **self._current_connect_kwargs())
        _guard(conn, self.driver)
        return conn

    # -- credentials: read at each connect ---------------------------------------------------

    @property
    def connect_kwargs(self) -> Mapping[str, Any] | Callable[[], Mapping[str, Any]]:
        """The driver's keyword arguments for new connections: a copy of the mapping, or the
        callable that returns them at each connect (as psycopg_pool's ``kwargs``).

        Settable, to rotate credentials: ``pool.connect_kwargs = {**pool.connect_kwargs,
        "password": new}`` (then ``pool.invalidate()`` to replace the open connections), or
        once and for all ``pool.connect_kwargs = lambda: {..., "password": vault.read()}``.
        """
        kwargs = self._connect_kwargs
        return kwargs if callable(kwargs) else dict(kwargs)

    @connect_kwargs.setter
    def connect_kwargs(self, value: Mapping[str, Any] | Callable[[], Mapping[str, Any]]) -> None:
        if callable(value):
            self._connect_kwargs = value
            return
        driver_kwargs, _ = _split_options(value, None, {})  # (driver and pool may share names)
        _check_password(driver_kwargs)
        self._connect_kwargs = driver_kwargs

    def _current_connect_kwargs(self) -> Mapping[str, Any]:
        kwargs = self._connect_kwargs
        if not callable(kwargs):
            return kwargs  # type: ignore[no-any-return]
        got = kwargs()
        if not isinstance(got, Mapping):
            raise TypeError(
                f"pool {self.name!r}: the connect_kwargs callable must return a mapping, "
                f"not {type(got).__name__}"
            )
        _check_password(got)
        return got

    def __setattr__(self, name: str, value: Any) -> None:
        """``pool.password = ...`` (and user, host, ...) would be ignored: say where it goes."""
        if (
            name in _DRIVER_ONLY
            and not hasattr(type(self), name)
            and type(self)._new_connection is DbApiPool._new_connection
        ):
            raise AttributeError(
                f"DbApiPool does not use a {name!r} attribute: it is a driver argument; set "
                f"pool.connect_kwargs = {{**pool.connect_kwargs, {name!r}: ...}} (or pass a "
                "callable as connect_kwargs=), then pool.invalidate() to reconnect"
            )
        super().__setattr__(name, value)

    def _ping(self, conn: C) -> None:
        """Run ``ping_query`` and end the transaction it may have opened."""
        assert self.ping_query is not None
        cur = conn.cursor()  # type: ignore[attr-defined]
        try:
            cur.execute(self.ping_query)
            cur.fetchall()
        finally:
            try:
                cur.close()
            except Exception:
                pass
        if not getattr(conn, "autocommit", False):
            conn.rollback()  # type: ignore[attr-defined]

    def _keepalive(self, conn: C) -> None:
        if self.ping_query is None:
            if not super()._check(conn):
                raise ConnectionError("database connection is closed")
            return
        if getattr(conn, "closed", 0):
            raise ConnectionError("database connection is closed")
        try:
            self._ping(conn)
        except Exception as exc:
            raise ConnectionError(f"keepalive {self.ping_query!r} failed: {exc}") from exc

    def _check(self, conn: C) -> bool:
        if getattr(conn, "closed", 0) or _broken_stream(conn):
            return False
        if self.ping_query is None:
            return super()._check(conn)
        self._ping(conn)
        return True

    def _on_connect(self, conn: C) -> None:
        if self._autocommit is _UNSET:  # what a fresh connection has: restored on release
            self._autocommit = getattr(conn, "autocommit", None)

    def _on_release(self, conn: C) -> bool:
        if getattr(conn, "closed", 0):
            return False  # psycopg2 closes itself when a green query is interrupted
        broken = _broken_stream(conn)
        if broken:
            self._log.info("pool %r: %s; connection discarded", self.name, broken)
            return False
        ok = self._end_transaction(conn)
        if ok and isinstance(self._autocommit, bool) and conn.autocommit != self._autocommit:  # type: ignore[attr-defined]
            conn.autocommit = self._autocommit  # type: ignore[attr-defined]
        return ok

    def _end_transaction(self, conn: C) -> bool:
        """Roll back whatever transaction is open; False if the connection is unusable."""
        status = getattr(conn, "get_transaction_status", None)
        if callable(status):  # psycopg2: libpq knows the server-side state, even in autocommit
            state = status()
            if state == _TX_IDLE:
                return True
            if state in (_TX_ACTIVE, _TX_UNKNOWN):
                return False  # a command still running, or the connection is bad
            if getattr(conn, "autocommit", False):
                cur = conn.cursor()  # type: ignore[attr-defined]
                try:
                    cur.execute("ROLLBACK")
                finally:
                    cur.close()
            else:
                conn.rollback()  # type: ignore[attr-defined]
            return bool(status() == _TX_IDLE)
        conn.rollback()  # type: ignore[attr-defined]
        return True

    def _close_connection(self, conn: C) -> None:
        if _broken_stream(conn):  # no goodbye on a stream out of step: just the socket
            sock = getattr(conn, "_usock", None)
            if sock is not None:
                sock.close()
            return
        super()._close_connection(conn)

    def _is_disconnect(self, exc: BaseException) -> bool:
        if isinstance(exc, PoolError):
            return False  # PoolTimeout is an OSError, but not this connection's failure
        return is_disconnect(exc, self.disconnect_sqlstates, self.disconnect_messages)

    def retrying(
        self, max_failures: int = 3, interval: float = 0.05, max_interval: float = 1.0
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """A decorator that re-runs a function when it fails with a lost connection.

        Unlike ``@retry(exc_classes=pool.exc_classes)``, which goes by class, this asks
        :meth:`_is_disconnect`, so SQL errors (even ``OperationalError`` ones, and pg8000's
        ``DatabaseError`` carrying a disconnect SQLSTATE) are told apart. Pool errors are never
        retried. At most ``max_failures`` retries, with exponential backoff from ``interval``
        (doubling, jittered, up to ``max_interval``); each retry is one INFO line on the pool's
        logger. It is :func:`~geventconnpool.retry` with ``on=pool._is_disconnect``.
        """
        if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 0:
            raise ValueError(f"max_failures must be an int >= 0, got {max_failures!r}")
        where = _format_literal(f"pool {self.name!r}")
        return retry(
            on=self._is_disconnect,
            max_failures=max_failures,
            interval=interval,
            backoff=2.0,
            max_interval=max_interval,
            jitter=0.5,
            logger=self._log,
            retry_log_message=(
                f"{where}: {{func}} lost its connection ({{err!r}}); "
                f"attempt {{attempt}} of {max_failures + 1} failed"
            ),
            max_failure_log_level=logging.INFO,  # the caller gets the error: no louder line
            max_failure_log_message=f"{where}: {{func}} gave up after {max_failures} retries",
        )


def _format_literal(text: str) -> str:
    """``text`` escaped for use inside a ``str.format`` template (a pool name may hold braces)."""
    return text.replace("{", "{{").replace("}", "}}")


def _split_options(
    connect_kwargs: Mapping[str, Any] | None,
    legacy: Mapping[str, Any] | None,
    options: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(driver keyword arguments, pool options) from the new form or the deprecated one."""
    if connect_kwargs is not None and not isinstance(connect_kwargs, Mapping):
        raise TypeError(f"connect_kwargs must be a mapping, not {type(connect_kwargs).__name__}")
    driver_kwargs = dict(connect_kwargs or {})
    if legacy is not None:  # 1.0.0.dev0: pool_options={...}, driver arguments as keywords
        if not isinstance(legacy, Mapping):
            raise TypeError(f"pool_options must be a mapping, not {type(legacy).__name__}")
        warnings.warn(
            "DbApiPool(..., pool_options={...}, **driver_kwargs) is deprecated: pass pool options "
            "as keyword arguments and driver arguments in connect_kwargs={...}",
            DeprecationWarning,
            stacklevel=3,
        )
        driver_kwargs.update(options)
        options = dict(legacy)
    for key in options:
        if key not in _POOL_OPTIONS:
            raise TypeError(
                f"DbApiPool got an unexpected keyword argument {key!r}: keyword arguments are "
                f"pool options; pass driver arguments as connect_kwargs={{{key!r}: ...}}"
            )
    return driver_kwargs, options


#: Names that are driver arguments: as pool attributes they would be ignored, so writing one
#: raises AttributeError pointing at connect_kwargs.
_DRIVER_ONLY = frozenset(
    {"password", "passwd", "user", "username", "host", "port", "dbname", "database", "dsn"}
)


def _check_password(driver_kwargs: Mapping[str, Any]) -> None:
    """A password is a str (or bytes, which pg8000 accepts); the value is never echoed."""
    password = driver_kwargs.get("password")
    if password is not None and not isinstance(password, (str, bytes)):
        raise TypeError(f"connect_kwargs['password'] must be a str, not {type(password).__name__}")


for _which in ("connect", "release"):  # DbApiPool's own hooks are checked the same way
    setattr(DbApiPool, f"_on_{_which}", _check_after(getattr(DbApiPool, f"_on_{_which}"), _which))
