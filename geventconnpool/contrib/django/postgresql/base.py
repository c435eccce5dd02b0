"""The backend Django loads for ``ENGINE: "geventconnpool.contrib.django.postgresql"``.

Django's own PostgreSQL backend (psycopg 3, or psycopg2 when psycopg is not installed), with
its connections taken from a geventconnpool pool, one per alias and process:

* ``connect()`` (Django's first query of a request) checks a connection out; ``close()`` (the
  end of the request, or your own call) gives it back, rolled back, autocommit restored,
  ``DISCARD ALL``-ed. A broken connection is discarded and the pool checks the others.
* The time zone (and ``assume_role``) go in the connection's startup ``options``, so that they
  survive ``DISCARD ALL``: Django's per-connection setup runs once per server connection.
* ``CONN_MAX_AGE`` is ignored: the connection goes back at the end of every request (the pool
  is what persists); ``CONN_HEALTH_CHECKS`` too (the pool probes every connection it hands out).
* A greenlet that ends without closing its connection gives it back all the same.
* A greenlet killed mid-query has its query cancelled at the server (psycopg2: the wait
  callback the backend installs; psycopg 3: the pool, before it closes the connection).
* A pool error (timeout, pool closed, backend down with ``fail_fast``) reaches Django code as
  ``django.db.OperationalError``, naming the alias, the pool and the cause.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

try:
    from django.core.exceptions import ImproperlyConfigured
    from django.db.backends.base.base import NO_DB_ALIAS, BaseDatabaseWrapper
    from django.db.backends.postgresql import base as _pg
    from django.db.backends.postgresql.creation import DatabaseCreation as _PgCreation
    from django.db.backends.postgresql.psycopg_any import IsolationLevel
    from django.db.utils import OperationalError
except ImportError as exc:  # pragma: no cover - the extra is missing
    from ..._extras import missing_extra

    raise missing_extra("django", "django", __name__, exc) from exc

from ....errors import PoolError
from ..._pg_cancel import patch_psycopg2, psycopg2_wait_callback
from ...dbapi import default_name
from .._pool import (
    DjangoPgPool,
    Lease,
    close_pool,
    pool_for,
    pool_settings,
)

__all__ = ["DatabaseCreation", "DatabaseWrapper"]

log = logging.getLogger("geventconnpool.contrib.django")
is_psycopg3: bool = _pg.is_psycopg3
Database: Any = _pg.Database


class DatabaseCreation(_PgCreation):  # type: ignore[misc]
    """Django's test database creation; the pool lets go of its connections before the test
    database is dropped or cloned (Django 4.2 does not ask a backend to)."""

    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> Any:
        self.connection.close_pool()
        return super()._destroy_test_db(test_database_name, verbosity)

    def _clone_test_db(self, suffix: Any, verbosity: int, keepdb: bool = False) -> Any:
        self.connection.close()
        self.connection.close_pool()
        return super()._clone_test_db(suffix, verbosity, keepdb)


class DatabaseWrapper(_pg.DatabaseWrapper):  # type: ignore[misc]
    """Django's PostgreSQL ``DatabaseWrapper`` on a geventconnpool pool.

    ``OPTIONS["pool"]`` holds the pool's options (ConnectionPool's names, checked here, errors
    naming the setting) and ``reset``, the SQL run on every return (``"DISCARD ALL"``; None for
    nothing). Without ``OPTIONS["pool"]`` this is Django's backend unchanged. The pool of this
    alias in this process is :attr:`gevent_pool` (``stats()``, ``dump()``).
    """

    creation_class = DatabaseCreation

    def __init__(self, settings_dict: dict[str, Any], alias: str = "default") -> None:
        try:
            config = pool_settings(settings_dict, alias)
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(str(exc)) from None
        super().__init__(settings_dict, alias)
        self._gcp_config = None if alias == NO_DB_ALIAS else config
        self._gcp_lease: Lease | None = None

    # -- the pool --------------------------------------------------------------------------------

    @property
    def pool(self) -> None:
        """Django's psycopg_pool (Django >= 5.1): never, with this backend."""
        return None

    @property
    def gevent_pool(self) -> DjangoPgPool | None:
        """This alias's pool in this process (made on first use); None without OPTIONS["pool"]."""
        config = self._gcp_config
        if config is None:
            return None
        return pool_for(self.alias, self._pool_key(config), lambda: self._make_pool(config))

    def _pool_key(self, config: Mapping[str, Any]) -> str:
        """What the pool's connections depend on: a new pool when it changes."""
        sd = self.settings_dict
        options = sorted(sd["OPTIONS"].items(), key=lambda kv: str(kv[0]))
        fields = [sd.get(k) for k in ("NAME", "USER", "PASSWORD", "HOST", "PORT")]
        return repr((fields, options, self.timezone_name, sorted(config.items())))

    def _make_pool(self, config: Mapping[str, Any]) -> DjangoPgPool:
        _make_driver_cooperative()
        params = self.get_connection_params()
        if is_psycopg3:
            params["autocommit"] = True  # Django sets it again after each checkout
        timezone = self.timezone_name
        startup = [params.get("options") or ""]
        if timezone:
            startup.append(f"-c TimeZone={_escape(timezone)}")
        role = self.settings_dict["OPTIONS"].get("assume_role")
        if role:
            startup.append(f"-c role={_escape(role)}")
        params["options"] = " ".join(s for s in startup if s)
        opener = _Opener(type(self)({**self.settings_dict}, self.alias), params)
        options = {k: v for k, v in config.items() if k != "reset"}
        address = default_name(Database, (), params)
        options.setdefault("name", f"django/{self.alias} {address}")
        return DjangoPgPool(
            Database.connect,
            opener,
            connect_kwargs={k: v for k, v in params.items() if k != "password"},
            reset=config["reset"],
            timezone=timezone,
            open=False,
            **options,
        )

    def close_pool(self) -> None:
        """Close this alias's pool (idle connections now, held ones when they come back)."""
        close_pool(self.alias)
        parent = getattr(super(), "close_pool", None)  # Django >= 5.1: its own pool, if any
        if parent is not None:
            parent()

    # -- Django's connection lifecycle -------------------------------------------------------------

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if self._gcp_config is None:
            return super().get_new_connection(conn_params)
        if not _in_main_thread():  # a real OS thread has its own hub: no pool there
            _warn_thread_once(self.alias)
            self._gcp_config = None  # this wrapper (this thread's) behaves as Django's own
            return super().get_new_connection(conn_params)
        self.isolation_level = _isolation_level(self.settings_dict["OPTIONS"])
        pool = self.gevent_pool
        assert pool is not None
        try:
            lease = Lease(pool, self)
        except PoolError as exc:
            raise OperationalError(f"database {self.alias!r}: {exc}") from exc
        self._gcp_lease = lease
        return lease.conn

    def connect(self) -> None:
        super().connect()
        if self._gcp_config is not None:
            self.close_at = time.monotonic()  # back to the pool at the end of every request

    def init_connection_state(self) -> None:
        if self._gcp_config is None:
            super().init_connection_state()
        else:  # the server-version check only: the session was set up when it was opened
            BaseDatabaseWrapper.init_connection_state(self)

    def close_if_health_check_failed(self) -> None:
        if self._gcp_config is None:
            super().close_if_health_check_failed()

    def _close(self) -> None:
        lease = self._gcp_lease
        if lease is None:
            super()._close()
            return
        self._gcp_lease = None
        try:
            with self.wrap_database_errors:
                lease.release()
        finally:
            self.connection = None


class _Opener:
    """Opens and sets up one server connection with Django's own code (isolation level,
    psycopg2's jsonb loader, time zone and role): once per server connection."""

    def __init__(self, wrapper: Any, params: dict[str, Any]) -> None:
        self.wrapper = wrapper
        self.params = params

    def __call__(self) -> Any:
        wrapper = self.wrapper
        conn = _pg.DatabaseWrapper.get_new_connection(wrapper, dict(self.params))
        try:
            if not is_psycopg3:
                conn.autocommit = True
            configure = getattr(wrapper, "_configure_connection", None)
            if configure is not None:  # Django >= 5.1: time zone and role
                configure(conn)
            else:
                _configure_timezone(wrapper, conn)
        except BaseException:
            conn.close()
            raise
        return conn


def _in_main_thread() -> bool:
    """True in the process's main OS thread, where gevent apps run every greenlet (by native
    thread id: with ``threading`` monkey-patched, idents are greenlets')."""
    from gevent.monkey import get_original
    from gevent.threading import main_native_thread  # type: ignore[import-not-found]

    return bool(get_original("_thread", "get_native_id")() == main_native_thread().native_id)


_warned_threads: set[str] = set()


def _warn_thread_once(alias: str) -> None:
    if alias not in _warned_threads:
        _warned_threads.add(alias)
        log.warning(
            "database %r: used from an OS thread other than the main one (runserver's threads, "
            "a thread pool): connections there are Django's own, unpooled; the pool serves the "
            "greenlets of the main thread (run under gunicorn -k gevent, or monkey-patched)",
            alias,
        )


def _configure_timezone(wrapper: Any, conn: Any) -> None:
    """Django 4.2's ensure_timezone() on a connection of our own."""
    name = wrapper.timezone_name
    if name and conn.info.parameter_status("TimeZone") != name:
        with conn.cursor() as cursor:
            cursor.execute(wrapper.ops.set_time_zone_sql(), [name])


def _isolation_level(options: Mapping[str, Any]) -> Any:
    value = options.get("isolation_level")
    if value is None:
        return IsolationLevel.READ_COMMITTED
    try:
        return IsolationLevel(value)
    except ValueError:
        raise ImproperlyConfigured(
            f"Invalid transaction isolation level {value} specified. Use one of the "
            "psycopg.IsolationLevel values."
        ) from None


def _escape(value: str) -> str:
    """A value for libpq's ``options`` (backslash escapes spaces and backslashes)."""
    return str(value).replace("\\", "\\\\").replace(" ", "\\ ")


_warned_blocking = False


def _make_driver_cooperative() -> None:
    """psycopg2: install the wait callback that cancels a killed greenlet's query (in place of
    none, or of psycogreen's, which does the same without the cancel; a callback of another
    kind is left alone). psycopg 3: warn once if it was imported before gevent patched
    ``select`` (then every query blocks the process)."""
    global _warned_blocking
    if not is_psycopg3:
        import psycopg2.extensions

        current = psycopg2.extensions.get_wait_callback()
        if current is None or getattr(current, "__module__", None) == "psycogreen.gevent":
            patch_psycopg2()
        elif current is not psycopg2_wait_callback:
            log.info(
                "psycopg2 has a wait callback of its own (%r): a killed greenlet's query is "
                "cancelled only if it cancels it",
                current,
            )
        return
    import sys

    monkey = sys.modules.get("gevent.monkey")
    waiting = sys.modules.get("psycopg.waiting")
    if _warned_blocking or monkey is None or waiting is None:
        return
    if monkey.is_module_patched("select") and waiting.wait is getattr(waiting, "wait_c", None):
        _warned_blocking = True
        log.warning(
            "psycopg was imported before gevent's monkey.patch_all(): its queries block the "
            "whole process. Call gevent.monkey.patch_all() first (at the top of wsgi.py / "
            "manage.py), before Django or psycopg is imported."
        )
