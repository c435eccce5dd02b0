"""The pool's short-lived greenlets: one connect attempt, one keepalive ping.

Each runs the user's hook under its own ``connect_timeout`` and reports the outcome to the pool
(``_connect_ended``, ``_connect_killed``, ``_ping_ended``), which books it in the state and acts
on the state's plan: this module does the I/O and reports, nothing else. A kill (close(), a
fork) is reported as such and re-raised.
"""

from __future__ import annotations

import os
import traceback
from typing import Any, Protocol, TypeVar

import gevent
from greenlet import GreenletExit

from ._records import Attempt, Conn
from .errors import PoolError

C = TypeVar("C")


class Owner(Protocol[C]):
    """What the connector needs of its pool."""

    connect_timeout: float | None

    def _new_connection(self) -> C: ...
    def _on_connect(self, conn: C) -> None: ...
    def _keepalive(self, conn: C) -> None: ...
    def _connect_ended(
        self, attempt: Attempt, conn: C | None, error: BaseException | None
    ) -> None: ...
    def _connect_killed(self, attempt: Attempt, conn: C | None) -> None: ...
    def _ping_ended(
        self, rec: Conn[C], reason: str | None, error: BaseException | None
    ) -> None: ...


def start_timer(seconds: float | None) -> gevent.Timeout:
    """A started gevent Timeout; with None it never fires (and costs no timer)."""
    timer = gevent.Timeout(seconds)
    timer.start()
    return timer


def connect(pool: Owner[Any], attempt: Attempt) -> None:
    """One connect attempt: ``_new_connection()`` then ``_on_connect()``, under connect_timeout.

    Only a kill (``GreenletExit``: close(), a fork, a killed connector) ends the attempt without
    a verdict; anything else a hook raises, BaseExceptions included (its own ``gevent.Timeout``,
    a custom one), is a failed connect: backoff, ``fail_fast``, ``connect_failures``, the
    PoolTimeout's cause. KeyboardInterrupt and SystemExit are booked, then re-raised."""
    conn: Any = None
    error: BaseException | None = None
    escalate: BaseException | None = None
    timer = start_timer(pool.connect_timeout)
    try:
        conn = pool._new_connection()
        if conn is None:
            raise PoolError("_new_connection() returned None")
        if attempt.pid != os.getpid():  # the process forked meanwhile: the parent's socket
            pool._connect_killed(attempt, conn)
            return
        pool._on_connect(conn)
    except GreenletExit:  # killed by close(), a fork or a kill: the attempt just ends
        pool._connect_killed(attempt, conn)
        raise
    except gevent.Timeout as t:
        if t is timer:
            error = TimeoutError(f"connect timed out after {pool.connect_timeout}s")
        else:  # the hook's own timeout escaped: its connect failed
            error = without_frames(t)
    except (KeyboardInterrupt, SystemExit) as e:
        error = escalate = e
    except BaseException as e:  # Exception, or a hook's own BaseException: a failed connect
        error = without_frames(e)
    finally:
        timer.close()
    if conn is not None and attempt.pid != os.getpid():  # forked during _on_connect
        pool._connect_killed(attempt, conn)  # the parent's socket: forgotten, never closed here
        return
    pool._connect_ended(attempt, conn, error)  # both: _on_connect failed, the pool closes conn
    if escalate is not None:
        raise escalate


def ping(pool: Owner[Any], rec: Conn[Any]) -> None:
    """Run ``_keepalive`` on one connection, bounded by ``connect_timeout``.

    A kill, KeyboardInterrupt or SystemExit interrupts the ping (the connection is discarded and
    the exception goes on); anything else the hook raises, BaseExceptions included, is a broken
    connection, replaced and logged.
    """
    reason: str | None = None
    error: BaseException | None = None
    timer = start_timer(pool.connect_timeout)
    try:
        pool._keepalive(rec.conn)
    except (GreenletExit, KeyboardInterrupt, SystemExit):
        pool._ping_ended(rec, "interrupted", None)
        raise
    except gevent.Timeout as t:  # ours, or the hook's own that escaped
        late = TimeoutError(f"keepalive timed out after {t.seconds}s") if t is timer else t
        reason, error = "keepalive", without_frames(late)
    except BaseException as e:
        reason, error = "keepalive", without_frames(e)
    finally:
        timer.close()
    pool._ping_ended(rec, reason, error)


def without_frames(error: BaseException) -> BaseException:
    """``error`` kept for later (a PoolTimeout's cause) with no frame attached.

    A traceback keeps its frames, and through ``f_back`` the frames of their callers, with all
    their locals: the connect greenlet's, which hold the pool. So the traceback is replaced by a
    note saying where the error was raised (``clear_frames`` cannot clear a frame still running).
    """
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        tb = e.__traceback__
        if tb is not None:
            where = traceback.format_tb(tb)[-3:]
            e.__traceback__ = None
            notes = [*getattr(e, "__notes__", ()), "raised at:\n" + "".join(where).rstrip()]
            setattr(e, "__notes__", notes)  # noqa: B010  (add_note() is 3.11+)
        e = e.__cause__ or e.__context__
    return error
