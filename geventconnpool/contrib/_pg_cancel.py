"""PostgreSQL: a query whose greenlet is killed (or times out) is cancelled at the server.

Without the cancel, a connection interrupted mid-query is discarded but the server runs the
query to its end, holding its transaction and locks, before it notices the client is gone.
libpq's ``PQcancel`` blocks (it opens a connection of its own to the server), so it runs in
gevent's threadpool while the hub keeps serving.

* psycopg2 waits through a wait callback: :func:`psycopg2_wait_callback` is psycogreen's
  gevent callback plus the cancel when the wait is interrupted (psycopg2 then closes the
  connection itself). :func:`patch_psycopg2` installs it.
* psycopg 3 (monkey-patched) leaves an interrupted connection with its query still running:
  :func:`cancel_running_query` cancels it, for the pool to call before closing it.

Shared by ``contrib.sqlalchemy`` and ``contrib.django``; the drivers are never imported here.
"""

from __future__ import annotations

import logging
from typing import Any

from gevent.hub import get_hub
from gevent.socket import wait_read, wait_write
from greenlet import getcurrent

__all__ = ["cancel_running_query", "mid_query", "patch_psycopg2", "psycopg2_wait_callback"]

log = logging.getLogger("geventconnpool.contrib")

TX_ACTIVE = 1  # libpq PQTRANS_ACTIVE: a command is in progress (psycopg2 and psycopg 3 alike)
_POLL_OK, _POLL_READ, _POLL_WRITE = 0, 1, 2  # psycopg2.extensions.POLL_*


def mid_query(connection: Any) -> bool:
    """A command is still running on ``connection``, as psycopg 3 reports it
    (``info.transaction_status`` ACTIVE), and the connection can cancel it."""
    try:
        status = connection.info.transaction_status
        return int(status) == TX_ACTIVE and callable(getattr(connection, "cancel", None))
    except Exception:  # another driver, or a closed connection: nothing to cancel
        return False


def cancel_running_query(connection: Any) -> bool:
    """Cancel the query still running on a psycopg 3 ``connection`` (one being discarded after
    an interrupt); True if a cancel request reached the server.

    From the hub (a loop callback, which cannot wait for the threadpool) nothing is cancelled.
    A failed cancel is logged at DEBUG and is no error: the connection is closed anyway.
    """
    if not mid_query(connection):
        return False
    if getcurrent() is get_hub():  # never a cancel racing with the close that follows
        log.debug("a running query is not cancelled from the hub; the connection is closed")
        return False
    return _cancel_in_threadpool(connection)


def _cancel_in_threadpool(connection: Any) -> bool:
    try:
        get_hub().threadpool.apply(connection.cancel)
    except Exception:
        log.debug("cancelling the running query failed", exc_info=True)
        return False
    return True


def psycopg2_wait_callback(conn: Any, timeout: float | None = None) -> None:
    """psycogreen's gevent wait callback, plus: a wait interrupted (greenlet killed, a
    ``gevent.Timeout``) first cancels the running query at the server.

    psycopg2 closes a connection whose wait callback raised; without the cancel the server runs
    the query to its end, holding its transaction and locks, before it notices the client is
    gone.
    """
    try:
        while True:
            state = conn.poll()
            if state == _POLL_OK:
                return
            if state == _POLL_READ:
                wait_read(conn.fileno(), timeout=timeout)
            elif state == _POLL_WRITE:
                wait_write(conn.fileno(), timeout=timeout)
            else:
                raise OSError(f"psycopg2: bad result from poll(): {state!r}")
    except BaseException:
        if conn.get_transaction_status() == TX_ACTIVE:  # a query runs: cancel it
            _cancel_in_threadpool(conn)
        raise


def patch_psycopg2() -> None:
    """Make psycopg2 cooperative under gevent with :func:`psycopg2_wait_callback`: instead of
    ``psycogreen.gevent.patch_psycopg()``, which does the same without the cancel."""
    import psycopg2.extensions

    psycopg2.extensions.set_wait_callback(psycopg2_wait_callback)
