"""SQLAlchemy on this pool: :class:`GeventPool`, a ``sqlalchemy.pool.Pool`` for gevent apps.

::

    from sqlalchemy import create_engine
    from geventconnpool.contrib.sqlalchemy import GeventPool, patch_psycopg2

    patch_psycopg2()     # psycopg2 through gevent (or gevent.monkey.patch_all() for pure Python)

    engine = create_engine(
        "postgresql+psycopg2://app@127.0.0.1/app",
        poolclass=GeventPool,
        pool_size=5, max_overflow=5, pool_timeout=5, pool_recycle=3600, pool_pre_ping=True,
        geventconnpool_options={"fail_fast": True, "leak_timeout": 30},
    )

SQLAlchemy's pool arguments map to ours (``docs/guides/sqlalchemy.rst`` has the table):
``pool_size`` -> ``min_size``, ``pool_size + max_overflow`` -> ``max_size``, ``pool_timeout`` ->
``timeout``, ``pool_recycle`` -> ``max_lifetime``, ``pool_use_lifo`` -> ``lifo``. Every other
option of :class:`~geventconnpool.ConnectionPool` is reachable through
``geventconnpool_options={...}`` (or as a keyword argument of ``GeventPool(creator, ...)``
given as ``create_engine(url, pool=...)``). ``pool_pre_ping``, ``pool_reset_on_return``,
``echo_pool``, ``pool_logging_name`` and the pool events are SQLAlchemy's own and behave as on
``QueuePool``.

How it works: our pool holds SQLAlchemy's own ``_ConnectionRecord`` objects, one per server
connection, and never lets a record outlive its DB-API connection. A record SQLAlchemy
invalidated (``Connection.invalidate()``, disconnect detection, a failed reset) comes back
without a connection and is discarded from our pool; a replacement is a new record, opened by
our pool's connector (so the ``connect`` event fires once per server connection). A record is
handed to one greenlet at a time, because our pool hands out each connection to one holder.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import gevent.lock

from ._extras import install_command, missing_extra
from ._pg_cancel import cancel_running_query, patch_psycopg2, psycopg2_wait_callback

try:
    import sqlalchemy
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise missing_extra("sqlalchemy", "sqlalchemy", __name__, exc) from exc
if int(sqlalchemy.__version__.split(".")[0]) < 2:  # pragma: no cover - tested with 2.x only
    raise ImportError(
        f"{__name__} needs SQLAlchemy 2.0 or later, found {sqlalchemy.__version__}; "
        f"upgrade it with: {install_command('sqlalchemy')}",
        name="sqlalchemy",
    )
import sqlalchemy.exc as sa_exc
from sqlalchemy.pool import ConnectionPoolEntry, Pool
from sqlalchemy.pool.base import _ConnectionRecord

from .. import _fork
from .._options import BY_NAME, check_int
from .._probe import socket_is_quiet
from .._state import Checkout
from ..errors import PoolClosed, PoolError, PoolExhausted, PoolTimeout, PoolUnavailable
from ..pool import ConnectionPool
from ..stats import PoolStats

__all__ = [
    "SQLALCHEMY_ARGUMENTS",
    "GeventPool",
    "GeventPoolClosed",
    "GeventPoolExhausted",
    "GeventPoolTimeout",
    "GeventPoolUnavailable",
    "patch_psycopg2",
    "psycopg2_wait_callback",
]

_UNSET: Any = object()

#: SQLAlchemy's pool argument (as ``create_engine`` spells it) and the option of ours it sets.
SQLALCHEMY_ARGUMENTS: Mapping[str, str] = {
    "pool_size": "min_size (and, with max_overflow, max_size = pool_size + max_overflow)",
    "max_overflow": "max_size = pool_size + max_overflow",
    "pool_timeout": "timeout",
    "pool_recycle": "max_lifetime",
    "pool_use_lifo": "lifo",
}

#: Our options, as ConnectionPool's keyword arguments, that GeventPool passes on: every option
#: of the table but ``exc_classes`` (a DB-API driver's errors are SQLAlchemy's to classify).
_OUR_OPTIONS = frozenset({"size", *BY_NAME} - {"exc_classes"})


# ---------------------------------------------------------------------- errors
class GeventPoolTimeout(PoolTimeout, sa_exc.TimeoutError):
    """No connection within ``pool_timeout``: what ``QueuePool`` raises
    (``sqlalchemy.exc.TimeoutError``), and our :class:`~geventconnpool.errors.PoolTimeout`."""


class GeventPoolExhausted(PoolExhausted, sa_exc.TimeoutError):
    """``max_waiting`` greenlets already wait: refused at once, as a timeout of 0 would be."""


class GeventPoolUnavailable(PoolUnavailable, sa_exc.TimeoutError):
    """``fail_fast``: the database is considered down, so no connection is waited for; the
    last connect error is the ``__cause__``."""


class GeventPoolClosed(PoolClosed, sa_exc.InvalidRequestError):
    """The pool underneath was closed by hand (``engine.pool.pool.close()``); ``dispose()``
    never leaves a caller with it: waiters move to the new pool."""


_TRANSLATED: tuple[tuple[type[PoolError], type[PoolError]], ...] = (
    (PoolTimeout, GeventPoolTimeout),
    (PoolExhausted, GeventPoolExhausted),
    (PoolUnavailable, GeventPoolUnavailable),
    (PoolClosed, GeventPoolClosed),
)


def _translate(err: PoolError) -> PoolError:
    """Our error as the class that is also SQLAlchemy's; same message, same cause."""
    for ours, theirs in _TRANSLATED:
        if isinstance(err, ours) and not isinstance(err, theirs):
            new = theirs(*err.args)
            new.__cause__ = err.__cause__
            return new
    return err


class _Invalidated(Exception):
    """A record came back invalidated by SQLAlchemy: our pool discards it (a disconnect)."""


# ---------------------------------------------------------------------- the pool underneath
class _RecordPool(ConnectionPool[_ConnectionRecord]):
    """Our pool of SQLAlchemy connection records, one record per server connection."""

    def __init__(self, owner: GeventPool, **options: Any) -> None:
        self._owner = owner
        super().__init__(open=False, **options)

    def _new_connection(self) -> _ConnectionRecord:
        return self._owner._new_record()

    def _close_connection(self, conn: _ConnectionRecord) -> None:
        conn.close()  # fires the "close" event; a no-op on a record already invalidated

    def _forget_connection(self, conn: _ConnectionRecord) -> None:
        dbapi = conn.dbapi_connection
        if dbapi is not None:  # in a forked child: no event, no goodbye, only our descriptor
            _fork.forget(dbapi)

    def _check(self, conn: _ConnectionRecord) -> bool:
        """Zero-round-trip check of an idle record: it still has a live, quiet connection."""
        dbapi = conn.dbapi_connection
        if dbapi is None or self._owner._stale(conn) or getattr(dbapi, "closed", False):
            return False
        return socket_is_quiet(dbapi.fileno()) if hasattr(dbapi, "fileno") else True

    def _keepalive(self, conn: _ConnectionRecord) -> None:
        """The dialect's ping (``SELECT 1``), then a rollback: an idle connection stays idle."""
        dbapi = conn.dbapi_connection
        if dbapi is None:
            raise ConnectionError("the connection record was invalidated")
        try:
            alive = self._owner._dialect._do_ping_w_event(dbapi)
            if alive is not False:
                dbapi.rollback()
        except Exception as e:
            raise ConnectionError(f"keepalive ping failed: {e!r}") from e
        if alive is False:  # the dialect saw a disconnect
            raise ConnectionError("keepalive ping: the dialect reports a disconnect")

    def _is_disconnect(self, exc: BaseException) -> bool:
        return isinstance(exc, _Invalidated)


# ---------------------------------------------------------------------- SQLAlchemy's Pool
class GeventPool(Pool):
    """A ``sqlalchemy.pool.Pool`` backed by :class:`~geventconnpool.ConnectionPool`.

    ``create_engine(url, poolclass=GeventPool, pool_size=5, max_overflow=10, pool_timeout=30,
    pool_recycle=-1, pool_use_lifo=..., geventconnpool_options={...})``; or
    ``create_engine(url, pool=GeventPool(creator, max_size=20, fail_fast=True))``.

    The pool opens nothing until its first checkout in the process that uses it, so an engine
    made at import time under ``gunicorn --preload`` leaves the master with no connection. Then
    it keeps ``min_size`` connections open (QueuePool grows to ``pool_size`` lazily).
    """

    _is_asyncio = False  # as QueuePool: create_async_engine() refuses this pool

    def __init__(
        self,
        creator: Callable[..., Any],
        pool_size: int = _UNSET,
        max_overflow: int = _UNSET,
        timeout: float | None = _UNSET,
        use_lifo: bool = _UNSET,
        geventconnpool_options: Mapping[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        ours = _options_given(geventconnpool_options, kw)
        recycle = kw.pop("recycle", -1)
        super().__init__(creator, recycle=-1, **kw)  # recycling is ours (max_lifetime)
        self._sqla_args = {
            "pool_size": pool_size,
            "max_overflow": max_overflow,
            "timeout": timeout,
            "use_lifo": use_lifo,
            "recycle": recycle,
        }
        self._given = dict(ours)
        self._options = _map_options(pool_size, max_overflow, timeout, use_lifo, recycle, ours)
        if "name" not in self._options and self._orig_logging_name:
            self._options["name"] = self._orig_logging_name
        self._first_connect = gevent.lock.Semaphore()  # see _new_record
        self._connected_once = False
        self._out: dict[ConnectionPoolEntry, Checkout[_ConnectionRecord]] = {}
        self._inner = _RecordPool(self, **self._options)
        self._options["name"] = self._inner.name  # a recreated pool keeps the name

    # ------------------------------------------------------------------ our pool, exposed
    @property
    def pool(self) -> ConnectionPool[Any]:
        """The :class:`~geventconnpool.ConnectionPool` underneath (``stats()``, ``dump()``,
        ``resize()``, metrics); a new one after :meth:`dispose`."""
        return self._inner

    def stats(self) -> PoolStats:
        """Our pool's snapshot: sizes, waiters, counters (a :class:`~geventconnpool.PoolStats`)."""
        return self._inner.stats()

    @property
    def name(self) -> str:
        """The pool's name, in our log lines, errors and metrics."""
        return self._inner.name

    # ------------------------------------------------------------------ Pool protocol
    def _do_get(self) -> _ConnectionRecord:
        """Check a entry out of our pool; a entry SQLAlchemy already condemned is discarded
        and the next one taken (under the same deadline)."""
        inner = self._inner
        deadline = None if inner.timeout is None else time.monotonic() + inner.timeout
        checkout = inner.get()  # the first try: pool_timeout, as the error message says
        while True:
            try:
                entry = checkout.__enter__()
            except PoolClosed as err:
                if inner is self._inner:
                    raise _translate(err) from err.__cause__
                inner = self._inner  # dispose() replaced the pool while we waited: wait there
                checkout = inner.get(_left(deadline))
                continue
            except PoolError as err:
                raise _translate(err) from err.__cause__
            if self._stale(entry):  # invalidated by an older _invalidate() while idle: rare
                checkout.__exit__(_Invalidated, _Invalidated("stale entry"), None)
                checkout = inner.get(_left(deadline))
                continue
            # SQLAlchemy skips the pre-ping on a entry's first checkout ("fresh"), right for
            # QueuePool, which connects at checkout; ours opens min_size connections ahead of
            # use, which may have died idle since. One ping more per connection, at most.
            entry.fresh = False
            self._out[entry] = checkout
            return entry

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        """A record comes back (SQLAlchemy has reset it): kept, or discarded if invalidated."""
        checkout = self._out.pop(record, None)
        if checkout is None:  # not handed out by this pool (a forked child's inherited one)
            return
        if self._stale(record):
            checkout.__exit__(_Invalidated, _Invalidated("invalidated"), None)
        else:
            checkout.__exit__(None, None, None)

    def _invalidate(
        self, connection: Any, exception: BaseException | None = None, _checkin: bool = True
    ) -> None:
        """Pool-wide invalidation (a disconnect seen by the engine, a failed pre-ping): as in
        SQLAlchemy, only when ``connection`` is newer than the last one; our pool then replaces
        every connection it has now (idle ones close at once, in-use ones on return)."""
        rec = getattr(connection, "_connection_record", None)
        newer = rec is None or self._invalidate_time < rec.starttime
        super()._invalidate(connection, exception, _checkin)
        if newer:
            self._inner.invalidate()

    def dispose(self) -> None:
        """Close the idle connections now and the checked-out ones when they come back; the
        pool stays usable (a fresh pool underneath opens on the next checkout)."""
        old, self._inner = self._inner, _RecordPool(self, **self._options)
        old.close()
        self.logger.info("Pool disposed. %s", self.status())

    def recreate(self) -> GeventPool:
        """A new GeventPool with the same arguments, events and dialect (``engine.dispose()``)."""
        self.logger.info("Pool recreating")
        args = {k: v for k, v in self._sqla_args.items() if v is not _UNSET}
        return self.__class__(
            self._creator,
            geventconnpool_options=self._given | {"name": self._options["name"]},
            echo=self.echo,
            logging_name=self._orig_logging_name,
            reset_on_return=self._reset_on_return,
            pre_ping=self._pre_ping,
            _dispatch=self.dispatch,
            dialect=self._dialect,
            **args,
        )

    def status(self) -> str:
        """``GeventPool 'name' open=6 idle=2 in_use=4 connecting=0 waiting=0 min_size=5
        max_size=15 timeouts=0``: our pool's state, as in its repr."""
        s = self._inner.stats()
        closed = " closed" if s.closed else ""
        down = "" if s.available else " backend-down"
        return (
            f"GeventPool {s.name!r}{closed}{down} open={s.open} idle={s.idle} "
            f"in_use={s.in_use} connecting={s.connecting} waiting={s.waiting} "
            f"min_size={s.min_size} max_size={s.max_size} timeouts={s.timeouts}"
        )

    def __repr__(self) -> str:
        if "_inner" not in self.__dict__:  # a constructor that failed
            return f"<{type(self).__name__} (not constructed)>"
        return f"<{self.status()}>"

    # QueuePool's size helpers, for code that reads them (monitoring, Flask-SQLAlchemy users).
    def size(self) -> int:
        """``min_size`` (QueuePool: ``pool_size``)."""
        return self._inner.stats().min_size

    def timeout(self) -> float | None:
        """The checkout deadline in seconds (``pool_timeout``)."""
        return self._inner.timeout

    def checkedin(self) -> int:
        """Idle connections."""
        return self._inner.stats().idle

    def checkedout(self) -> int:
        """Connections held by callers."""
        return len(self._out)

    def overflow(self) -> int:
        """Open connections beyond ``min_size`` (negative while below it, as QueuePool's)."""
        s = self._inner.stats()
        return s.open - s.min_size

    def _close_connection(self, connection: Any, *, terminate: bool = False) -> None:
        """Close a DB-API connection; one invalidated while its query still runs (a greenlet
        killed or timed out in ``execute``, with psycopg 3) first has that query cancelled.

        Without the cancel the server runs the query to its end, holding the transaction and
        its locks, before it notices the client is gone. ``cancel()`` (libpq's ``PQcancel``)
        blocks, so it runs in gevent's threadpool. psycopg2 closes such a connection itself:
        :func:`patch_psycopg2`'s wait callback cancels its query instead.
        """
        if terminate:
            cancel_running_query(connection)
        super()._close_connection(connection, terminate=terminate)

    # ------------------------------------------------------------------ records
    def _new_record(self) -> _ConnectionRecord:
        """A new record, which connects and fires ``connect`` (and ``first_connect``).

        SQLAlchemy runs the first ``connect`` listeners under a ``threading.Lock``; two
        greenlets of one thread contending for it would block the hub for ever. So until one
        record connected, records are made one at a time under a gevent lock.
        """
        if self._connected_once:
            return _ConnectionRecord(self)
        with self._first_connect:
            rec = _ConnectionRecord(self)
            self._connected_once = True
            return rec

    def _stale(self, rec: ConnectionPoolEntry) -> bool:
        """SQLAlchemy condemned ``rec``: invalidated (no connection), soft-invalidated, or older
        than the last pool-wide invalidation. (``_ConnectionRecord.get_connection`` would then
        reconnect in place; we discard it instead, so a record is one server connection.)"""
        if rec.dbapi_connection is None:
            return True
        start = getattr(rec, "starttime", 0.0)
        return bool(
            self._invalidate_time > start or getattr(rec, "_soft_invalidate_time", 0.0) > start
        )


def _left(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (None: no deadline)."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _options_given(options: Mapping[str, Any] | None, kw: dict[str, Any]) -> dict[str, Any]:
    """Our options from ``geventconnpool_options`` and from keyword arguments (removed from
    ``kw``); an unknown name, or one given both ways, is a TypeError naming it."""
    ours = dict(options or {})
    for key in ours:
        if key not in _OUR_OPTIONS:
            known = ", ".join(sorted(_OUR_OPTIONS))
            raise TypeError(f"geventconnpool_options: unknown option {key!r} (known: {known})")
    for key in [k for k in kw if k in _OUR_OPTIONS]:
        if key in ours:
            raise TypeError(f"{key} given twice: as {key}= and in geventconnpool_options")
        ours[key] = kw.pop(key)
    return ours


def _map_options(
    pool_size: Any,
    max_overflow: Any,
    timeout: Any,
    use_lifo: Any,
    recycle: Any,
    ours: dict[str, Any],
) -> dict[str, Any]:
    """SQLAlchemy's arguments as our options; our own options win where both say something."""
    options = dict(ours)
    sizes_given = {"size", "min_size", "max_size"} & set(ours)
    lo = 5 if pool_size is _UNSET else check_int("pool_size", pool_size, 0)
    extra = 10 if max_overflow is _UNSET else check_int("max_overflow", max_overflow, -1)
    assert lo is not None and extra is not None
    if "size" not in ours:
        if "max_size" not in ours:
            if lo == 0 or extra == -1:
                raise sa_exc.ArgumentError(
                    "GeventPool needs a bound: pool_size=0 or max_overflow=-1 (no limit) is "
                    "not supported; give pool_size >= 1 and max_overflow >= 0, or max_size in "
                    "geventconnpool_options"
                )
            options["max_size"] = lo + extra
        if "min_size" not in ours:
            options["min_size"] = min(max(lo, 0), options["max_size"])
    elif sizes_given == {"size"} and (pool_size is not _UNSET or max_overflow is not _UNSET):
        raise TypeError("give size in geventconnpool_options or pool_size/max_overflow, not both")
    if timeout is not _UNSET:
        if "timeout" in ours:
            raise TypeError("timeout given twice: as pool_timeout= and in geventconnpool_options")
        options["timeout"] = timeout
    elif "timeout" not in ours:
        options["timeout"] = 30.0  # QueuePool's default
    if use_lifo is not _UNSET:
        if "lifo" in ours:
            raise TypeError("lifo given twice: as pool_use_lifo= and in geventconnpool_options")
        options["lifo"] = use_lifo
    if recycle is not None and recycle != -1:
        if "max_lifetime" in ours:
            raise TypeError(
                "max_lifetime given twice: as pool_recycle= and in geventconnpool_options"
            )
        if isinstance(recycle, (int, float)) and not isinstance(recycle, bool) and recycle <= 0:
            raise ValueError(f"pool_recycle must be -1 (off) or > 0 seconds, got {recycle!r}")
        options["max_lifetime"] = recycle
    return options
