"""The Django backend's pool side: settings, one pool per alias, and the lease a wrapper holds.

Django-free on purpose (the backend module, ``postgresql/base.py``, is the only one that speaks
Django): :func:`pool_settings` reads and checks ``OPTIONS["pool"]``, :class:`DjangoPgPool` is a
:class:`~geventconnpool.contrib.dbapi.DbApiPool` that resets a connection on return,
:func:`pool_for` keeps one pool per alias, and a :class:`Lease` is one checkout by one Django
connection wrapper, given back when Django closes it or when its greenlet ends.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import gevent
from greenlet import getcurrent
from greenlet import greenlet as RawGreenlet

from ..._options import BY_NAME, check_int, check_sizes
from .._pg_cancel import cancel_running_query
from ..dbapi import DbApiPool

__all__ = [
    "DEFAULTS",
    "SETTINGS_KEY",
    "DjangoPgPool",
    "Lease",
    "check_pool_options",
    "close_pool",
    "current_pool",
    "pool_for",
    "pool_settings",
    "setting_path",
]

log = logging.getLogger("geventconnpool.contrib.django")

#: Where the backend keeps the checked ``OPTIONS["pool"]`` once it took it out of ``OPTIONS``
#: (Django's own backend refuses ``OPTIONS["pool"]`` unless it runs psycopg_pool).
SETTINGS_KEY = "_GEVENTCONNPOOL"

#: Defaults of the backend where they differ from ConnectionPool's: lazy (no connection until a
#: request needs one, so a gunicorn master never connects), a finite wait (a request never waits
#: for ever), and the zero round-trip socket probe on every checkout (a connection the server
#: closed while idle is never handed to a query).
DEFAULTS: dict[str, Any] = {"max_size": 10, "min_size": 0, "timeout": 10.0, "check_idle_after": 0.0}

#: Keys of ``OPTIONS["pool"]`` that are the backend's own, not ConnectionPool options.
BACKEND_KEYS: dict[str, Any] = {"reset": "DISCARD ALL"}

#: ConnectionPool options the backend sets itself.
_REFUSED = {
    "open": "the backend opens each pool in the process that first uses it",
    "exc_classes": "the backend uses the driver's OperationalError and InterfaceError",
}
_SIZES = ("size", "min_size", "max_size")

# libpq's PQtransactionStatus values (psycopg2 and psycopg 3 report the same numbers).
_TX_ACTIVE, _TX_UNKNOWN = 1, 4


def setting_path(alias: str, key: str | None = None) -> str:
    """``DATABASES['default']['OPTIONS']['pool']['max_size']``: how errors name a setting."""
    path = f"DATABASES[{alias!r}]['OPTIONS']['pool']"
    return path if key is None else f"{path}[{key!r}]"


def check_pool_options(alias: str, raw: Any) -> dict[str, Any]:
    """``OPTIONS["pool"]`` checked, with the backend's defaults filled in.

    ``True`` means all defaults. Raises ValueError or TypeError whose message names the setting
    (the backend turns them into ImproperlyConfigured).
    """
    if raw is True:
        raw = {}
    if not isinstance(raw, Mapping):
        raise TypeError(
            f"{setting_path(alias)} must be a dict of pool options (or True for the defaults), "
            f"not {type(raw).__name__}"
        )
    known = set(BY_NAME) | set(BACKEND_KEYS) | {"size"}
    checked: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _REFUSED:
            raise ValueError(f"{setting_path(alias, key)} cannot be set: {_REFUSED[key]}")
        if key not in known:
            raise ValueError(
                f"{setting_path(alias)} has no option {key!r}; the options are "
                f"{', '.join(sorted(known - set(_REFUSED)))}"
            )
        checked[key] = _check_one(alias, key, value)
    if not any(k in checked for k in _SIZES):
        checked.update(max_size=DEFAULTS["max_size"], min_size=DEFAULTS["min_size"])
    elif "max_size" in checked and "min_size" not in checked and "size" not in checked:
        checked["min_size"] = min(DEFAULTS["min_size"], checked["max_size"])
    try:
        check_sizes(checked.get("size"), checked.get("min_size"), checked.get("max_size"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{setting_path(alias)}: {exc}") from None
    for key, value in {**DEFAULTS, **BACKEND_KEYS}.items():
        if key not in _SIZES:
            checked.setdefault(key, value)
    return checked


def _check_one(alias: str, key: str, value: Any) -> Any:
    path = setting_path(alias, key)
    if key == "reset":
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise TypeError(f"{path} must be an SQL command (str) or None, not {value!r}")
        return value
    if key == "size":
        return check_int(path, value, 1)
    if key == "name":
        if not isinstance(value, str) or not value:
            raise TypeError(f"{path} must be a non-empty str, not {value!r}")
        return value
    return BY_NAME[key].check(path, value)


def pool_settings(settings_dict: dict[str, Any], alias: str) -> dict[str, Any] | None:
    """The checked pool options of a ``DATABASES`` entry, taken out of its ``OPTIONS``.

    The first call moves ``OPTIONS["pool"]`` to ``settings_dict[SETTINGS_KEY]`` (the dict is the
    one every wrapper of the alias shares, so each thread sees the move); None when the entry has
    no ``OPTIONS["pool"]`` (then the backend connects as Django's own does).
    """
    options = settings_dict.get("OPTIONS") or {}
    if "pool" in options:
        raw = options["pool"]
        settings_dict[SETTINGS_KEY] = None if raw is None or raw is False else raw
        settings_dict["OPTIONS"] = {k: v for k, v in options.items() if k != "pool"}
    raw = settings_dict.get(SETTINGS_KEY)
    if raw is None:
        return None
    return check_pool_options(alias, raw)


class DjangoPgPool(DbApiPool[Any]):
    """The pool behind one database alias: connections opened (and set up) by Django's code.

    ``opener()`` opens and sets up a new server connection (Django's ``get_new_connection`` and
    per-connection configuration: time zone, role); it runs once per server connection. On
    return a connection is rolled back, its autocommit restored, ``reset`` run (``DISCARD ALL``
    by default: session settings, temporary tables, advisory locks, prepared statements, LISTEN)
    and its TimeZone compared with ``timezone``; one still running a command, broken, or whose
    time zone differs is discarded.
    """

    ping_query = None  # the socket probe: free, and it sees a connection the server closed

    def __init__(
        self,
        connect: Callable[..., Any],
        opener: Callable[[], Any],
        *,
        connect_kwargs: Mapping[str, Any],
        reset: str | None,
        timezone: str | None,
        **options: Any,
    ) -> None:
        self._opener = opener
        self.reset = reset
        self.timezone = timezone
        super().__init__(connect, connect_kwargs=connect_kwargs, **options)

    def _new_connection(self) -> Any:
        return self._opener()

    def _on_release(self, conn: Any) -> bool:
        info = getattr(conn, "info", None)
        if getattr(conn, "closed", 0) or info is None:
            return False
        if info.transaction_status in (_TX_ACTIVE, _TX_UNKNOWN):
            return False  # a command still running (an interrupted query) or a bad connection
        if super()._on_release(conn) is False:  # rollback, autocommit back on
            return False
        if self.reset is not None:
            cur = conn.cursor()
            try:
                cur.execute(self.reset)
            finally:
                cur.close()
        if self.timezone and info.parameter_status("TimeZone") != self.timezone:
            self._log.info(
                "pool %r: connection's TimeZone is %r after reset, not %r; discarded",
                self.name,
                info.parameter_status("TimeZone"),
                self.timezone,
            )
            return False
        return True

    def _close_connection(self, conn: Any) -> None:
        """Close a connection; one discarded while its query still runs (psycopg 3, a greenlet
        killed or timed out in ``execute``) first has that query cancelled at the server, which
        would otherwise run it to its end, holding its transaction and locks. (psycopg2's wait
        callback cancels the query itself and closes the connection.)"""
        cancel_running_query(conn)
        super()._close_connection(conn)


# -- one pool per alias ---------------------------------------------------------------------------

_registry: dict[str, tuple[Hashable, DjangoPgPool]] = {}


def pool_for(alias: str, key: Hashable, make: Callable[[], DjangoPgPool]) -> DjangoPgPool:
    """The pool of ``alias`` for these settings (``key``); a new one, the old one closed, when
    the settings changed (the test runner renames the database)."""
    entry = _registry.get(alias)
    if entry is not None and entry[0] == key and not entry[1].closed:
        return entry[1]
    pool = make()  # no I/O, no switch (open=False): two greenlets cannot both get here
    _registry[alias] = (key, pool)
    if entry is not None:
        entry[1].close()  # idle connections close now, held ones when they come back
    return pool


def close_pool(alias: str) -> None:
    """Close the pool of ``alias`` (before DROP DATABASE); the next use makes a new one."""
    entry = _registry.pop(alias, None)
    if entry is not None:
        entry[1].close()


def current_pool(alias: str) -> DjangoPgPool | None:
    """The pool of ``alias`` in this process, if one was made."""
    entry = _registry.get(alias)
    return None if entry is None else entry[1]


# -- leases ---------------------------------------------------------------------------------------

_leases: weakref.WeakSet[Lease] = weakref.WeakSet()


class Lease:
    """One connection checked out for one Django connection wrapper.

    Given back by :meth:`release` (Django closing its connection), or, when the greenlet that
    took it ends first, by a greenlet spawned for it: a ``gevent.Greenlet`` is watched with
    ``rawlink``, a plain greenlet with a weak reference. The lease holds only a weak reference
    to its wrapper, so that a wrapper that is garbage (in a reference cycle until the cyclic
    collector runs) does not keep the connection out.
    """

    __slots__ = ("__weakref__", "_ctx", "_owner_ref", "_unlink", "conn", "pool", "wrapper")

    def __init__(self, pool: DjangoPgPool, wrapper: Any) -> None:
        ctx = pool.get()
        self.conn = ctx.__enter__()  # PoolError, interrupts: nothing to undo
        self._ctx: Any = ctx
        self.pool = pool
        self.wrapper = weakref.ref(wrapper)
        self._unlink: Callable[[], None] | None = None
        self._owner_ref: weakref.ref[Any] | None = None
        self._watch(getcurrent())
        _leases.add(self)

    def _watch(self, owner: RawGreenlet) -> None:
        if isinstance(owner, gevent.Greenlet):
            callback = self._owner_ended
            owner.rawlink(callback)
            self._unlink = lambda: owner.unlink(callback)
        elif owner.parent is not None:  # a plain greenlet (the main one never ends)
            self._owner_ref = weakref.ref(owner, self._owner_ended)

    @property
    def held(self) -> bool:
        return self._ctx is not None

    def _owner_ended(self, _owner: Any) -> None:
        """The greenlet that took the connection ended without Django closing it."""
        if self._ctx is not None:  # runs in the hub or inside a collection: no switch here
            gevent.spawn(self._reclaim)

    def _reclaim(self) -> None:
        if self._ctx is None:
            return
        log.debug(
            "pool %r: a greenlet ended without closing its Django connection; taking it back",
            self.pool.name,
        )
        wrapper = self.wrapper()
        if wrapper is not None and wrapper.connection is self.conn:
            wrapper.connection = None  # the wrapper must not reach it through the next holder
        self.release()

    def release(self) -> None:
        """Give the connection back (idempotent); a broken one is discarded as a disconnect, so
        that the pool checks the others."""
        ctx, self._ctx = self._ctx, None
        if ctx is None:
            return
        unlink, self._unlink, self._owner_ref = self._unlink, None, None
        if unlink is not None:
            unlink()
        conn = self.conn
        info = getattr(conn, "info", None)
        if getattr(conn, "closed", 0) or (info is not None and info.transaction_status == 4):
            broken = ConnectionError("the connection is broken (closed, or its status is bad)")
            ctx.__exit__(ConnectionError, broken, None)
        else:
            ctx.__exit__(None, None, None)

    def forget(self) -> None:
        """In a forked child: drop the parent's connection without touching it."""
        ctx, self._ctx = self._ctx, None
        self._unlink = self._owner_ref = None
        if ctx is None:
            return
        wrapper = self.wrapper()
        if wrapper is not None and wrapper.connection is self.conn:
            wrapper.connection = None
        _forgotten.append(ctx)  # never collected: its __del__ would report a leak


_forgotten: list[Any] = []


def _after_fork_in_child() -> None:
    """Wrappers inherited from the parent let go of the parent's connections (the pools
    themselves forget them: geventconnpool's own fork handling, which runs first)."""
    for lease in list(_leases):
        lease.forget()
    _leases.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
