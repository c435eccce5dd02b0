"""A pool of DB-API 2 connections for gevent: :class:`DbApiPool`, for any driver's ``connect``.

::

    import psycopg2, psycogreen.gevent
    psycogreen.gevent.patch_psycopg()          # make psycopg2 cooperative
    pool = DbApiPool(psycopg2.connect, "host=127.0.0.1 dbname=app", pool_options={"size": 10})
    with pool.get() as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.commit()

On release an open transaction is rolled back (a connection whose rollback fails is discarded),
so no transaction state passes from one holder to the next. Keepalive and the checkout check run
``SELECT 1``. :meth:`DbApiPool._is_disconnect` tells a lost connection from an SQL error.
The driver must be cooperative: psycopg2 with psycogreen, or a pure-Python driver (pg8000)
under ``gevent.monkey.patch_all()``.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, ParamSpec, TypeVar

import gevent

from .. import _backoff
from ..errors import PoolError
from ..pool import ConnectionPool

__all__ = ["DbApiPool", "driver_module", "is_disconnect", "sqlstate_of"]

log = logging.getLogger("geventconnpool.contrib.dbapi")
P = ParamSpec("P")
R = TypeVar("R")

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
)

_DISCONNECT_CLASS_NAMES = frozenset({"OperationalError", "InterfaceError"})

_UNSET: Any = object()

# libpq's PQtransactionStatus values, as psycopg2 reports them.
_TX_IDLE, _TX_ACTIVE, _TX_UNKNOWN = 0, 1, 4


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


class DbApiPool(ConnectionPool[Any]):
    """A pool of connections made by ``connect(*args, **kwargs)`` (any DB-API 2 driver).

    Pool options go in ``pool_options`` (a mapping of :class:`~geventconnpool.ConnectionPool`
    keyword arguments), since names like ``timeout`` and ``connect_timeout`` are also driver
    arguments. ``ping_query`` (default ``"SELECT 1"``; None to use the zero round-trip socket
    probe instead) is what keepalive and the checkout check run. ``exc_classes`` defaults to the
    driver's ``OperationalError`` and ``InterfaceError`` plus ``OSError``: pass
    ``pool.exc_classes`` to ``@retry``.
    """

    ping_query: str | None = "SELECT 1"
    disconnect_sqlstates: tuple[str, ...] = DISCONNECT_SQLSTATES
    disconnect_messages: tuple[str, ...] = DISCONNECT_MESSAGES

    def __init__(
        self,
        connect: Callable[..., Any],
        *args: Any,
        pool_options: Mapping[str, Any] | None = None,
        ping_query: Any = _UNSET,
        **kwargs: Any,
    ) -> None:
        if not callable(connect):
            raise TypeError(f"connect must be callable, got {connect!r}")
        if ping_query is _UNSET:
            ping_query = type(self).ping_query
        if ping_query is not None and (not isinstance(ping_query, str) or not ping_query.strip()):
            raise ValueError(f"ping_query must be a non-empty string or None, got {ping_query!r}")
        self._connect_fn = functools.partial(connect, *args, **kwargs)
        self.ping_query = ping_query
        self.driver = driver_module(connect)
        self._autocommit: Any = _UNSET
        options = dict(pool_options or {})
        options.setdefault("exc_classes", self._driver_exc_classes())
        super().__init__(**options)

    def _driver_exc_classes(self) -> tuple[type[BaseException], ...]:
        classes: list[type[BaseException]] = []
        for name in ("OperationalError", "InterfaceError"):
            cls = getattr(self.driver, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                classes.append(cls)
        classes.append(OSError)
        return tuple(classes)

    # -- hooks --------------------------------------------------------------------------------

    def _new_connection(self) -> Any:
        return self._connect_fn()

    def _ping(self, conn: Any) -> None:
        """Run ``ping_query`` and end the transaction it may have opened."""
        assert self.ping_query is not None
        cur = conn.cursor()
        try:
            cur.execute(self.ping_query)
            cur.fetchall()
        finally:
            try:
                cur.close()
            except Exception:
                pass
        if not getattr(conn, "autocommit", False):
            conn.rollback()

    def _keepalive(self, conn: Any) -> None:
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

    def _check(self, conn: Any) -> bool:
        if getattr(conn, "closed", 0):
            return False
        if self.ping_query is None:
            return super()._check(conn)
        self._ping(conn)
        return True

    def _on_connect(self, conn: Any) -> None:
        if self._autocommit is _UNSET:  # what a fresh connection has: restored on release
            self._autocommit = getattr(conn, "autocommit", None)

    def _on_release(self, conn: Any) -> bool:
        if getattr(conn, "closed", 0):
            return False
        ok = self._end_transaction(conn)
        if ok and isinstance(self._autocommit, bool) and conn.autocommit != self._autocommit:
            conn.autocommit = self._autocommit  # a holder's switch does not outlive its hold
        return ok

    def _end_transaction(self, conn: Any) -> bool:
        """Roll back whatever transaction is open; False if the connection is unusable."""
        status = getattr(conn, "get_transaction_status", None)
        if callable(status):  # psycopg2: libpq knows the server-side state, even in autocommit
            state = status()
            if state == _TX_IDLE:
                return True
            if state in (_TX_ACTIVE, _TX_UNKNOWN):
                return False  # a command still running, or the connection is bad
            if getattr(conn, "autocommit", False):
                cur = conn.cursor()
                try:
                    cur.execute("ROLLBACK")
                finally:
                    cur.close()
            else:
                conn.rollback()
            return bool(status() == _TX_IDLE)
        conn.rollback()
        return True

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
        retried. At most ``max_failures`` retries, with exponential backoff from ``interval``.
        """
        if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 0:
            raise ValueError(f"max_failures must be an int >= 0, got {max_failures!r}")

        def decorate(fn: Callable[P, R]) -> Callable[P, R]:
            @functools.wraps(fn)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                failures = 0
                while True:
                    try:
                        return fn(*args, **kwargs)
                    except PoolError:
                        raise
                    except Exception as exc:
                        if not self._is_disconnect(exc) or failures >= max_failures:
                            raise
                        failures += 1
                        log.info(
                            "pool %r: %s lost its connection (%s); retry %d of %d",
                            self.name,
                            getattr(fn, "__qualname__", fn),
                            type(exc).__name__,
                            failures,
                            max_failures,
                        )
                        pause = _backoff.delay(failures, interval, max_interval)
                        if pause > 0:
                            gevent.sleep(pause)

            return wrapper

        return decorate
