"""The backend's behaviours as scenarios, each run in a gevent-patched process of its own:

    GCP_PG_PORT=5432 python -m tests.contrib.django_project.scenarios NAME

prints one JSON line (what the scenario saw); tests/contrib/test_django.py runs each scenario
with psycopg 3 and with psycopg2 (``GCP_DJANGO_DRIVER``) and asserts on what it printed. A
process of its own: Django's settings are per process, and psycopg 3 only cooperates with gevent
when it is imported after ``monkey.patch_all()``.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.contrib.django_project.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.core.signals import request_finished, request_started  # noqa: E402
from django.db import OperationalError, connection, connections, transaction  # noqa: E402

from tests.contrib.django_project.shop.models import Item  # noqa: E402

APP = "gcp-django"  # application_name of the backend's connections (settings.py)
SCENARIOS: dict[str, Callable[[], dict[str, Any]]] = {}


def scenario(func: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    SCENARIOS[func.__name__] = func
    return func


def admin(sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """One statement on a connection outside the pool (Django's own backend, alias 'plain')."""
    plain = connections["plain"]
    try:
        with plain.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []
    finally:
        plain.close()


def app_sessions(state: str | None = None) -> int:
    sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
    if state is None:
        return int(admin(sql, (APP,))[0][0])
    return int(admin(sql + " AND state = %s", (APP, state))[0][0])


def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(0.01)
    return True


def request() -> None:
    """What Django does around a request: close_old_connections on start and finish."""
    request_started.send(sender=None)


def end_request() -> None:
    request_finished.send(sender=None)


def pool() -> Any:
    return connection.gevent_pool


# -- lifecycle ------------------------------------------------------------------------------------


@scenario
def lifecycle() -> dict[str, Any]:
    """First use checks out; the end of the request and close() give back (CONN_MAX_AGE too)."""
    request()
    Item.objects.count()
    during = pool().stats().in_use
    end_request()
    after_request = pool().stats()
    Item.objects.count()
    connection.close()
    after_close = pool().stats()
    return {
        "driver": connection.Database.__name__,
        "cooperative": _cooperative(),
        "in_use_during": during,
        "in_use_after_request": after_request.in_use,
        "idle_after_request": after_request.idle,
        "in_use_after_close": after_close.in_use,
        "created": after_close.created,
        "acquired": after_close.acquired,
        "conn_max_age": connection.settings_dict["CONN_MAX_AGE"],
    }


def _cooperative() -> bool:
    """Whether the driver's queries yield to other greenlets: psycopg2 has a wait callback (the
    backend installs psycogreen's), psycopg 3 does not use its blocking C wait."""
    if connection.Database.__name__ == "psycopg2":
        import psycopg2.extensions

        return psycopg2.extensions.get_wait_callback() is not None
    import psycopg.waiting

    return psycopg.waiting.wait is not getattr(psycopg.waiting, "wait_c", None)


@scenario
def backend_down() -> dict[str, Any]:
    """No server at the address: the request gets OperationalError saying connects fail."""
    start = time.monotonic()
    try:
        connection.ensure_connection()
        return {"raised": None}
    except OperationalError as exc:
        return {
            "raised": type(exc).__name__,
            "message": str(exc),
            "cause": type(exc.__cause__).__name__,
            "waited": time.monotonic() - start,
        }


@scenario
def state_reset() -> dict[str, Any]:
    """What a request changes on its session does not reach the next request (one connection)."""
    admin("CREATE TABLE IF NOT EXISTS leak_probe (v int)")
    admin("TRUNCATE leak_probe")
    request()
    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid1 = cur.fetchone()[0]
        cur.execute("SET search_path TO pg_catalog")
        cur.execute("SET statement_timeout = 1234")
        cur.execute("SET TimeZone = 'America/Lima'")
        cur.execute("CREATE TEMP TABLE scratch (v int)")
        cur.execute("SELECT pg_advisory_lock(42)")
        cur.execute("BEGIN")
        cur.execute("INSERT INTO public.leak_probe VALUES (1)")
    end_request()
    request()
    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid2 = cur.fetchone()[0]
        cur.execute("SHOW search_path")
        search_path = cur.fetchone()[0]
        cur.execute("SHOW statement_timeout")
        statement_timeout = cur.fetchone()[0]
        cur.execute("SHOW TimeZone")
        timezone = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'scratch'")
        temp_tables = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        advisory = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM leak_probe")
        rows = cur.fetchone()[0]
    end_request()
    return {
        "same_connection": pid1 == pid2,
        "search_path": search_path,
        "statement_timeout": statement_timeout,
        "timezone": timezone,
        "temp_tables": temp_tables,
        "advisory_locks": advisory,
        "uncommitted_rows": rows,
        "created": pool().stats().created,
    }


def _transactions(alias: str) -> dict[str, Any]:
    """atomic(), savepoints and on_commit on ``alias``; what a run leaves in the table."""
    conn = connections[alias]
    calls: list[str] = []
    Item.objects.using(alias).filter(name__startswith="tx-").delete()
    with transaction.atomic(using=alias):
        Item.objects.using(alias).create(name="tx-outer")
        transaction.on_commit(lambda: calls.append("outer"), using=alias)
        try:
            with transaction.atomic(using=alias):
                Item.objects.using(alias).create(name="tx-inner-rolled-back")
                transaction.on_commit(lambda: calls.append("inner-rolled-back"), using=alias)
                raise ValueError("roll back the savepoint")
        except ValueError:
            pass
        with transaction.atomic(using=alias):
            Item.objects.using(alias).create(name="tx-inner-kept")
            transaction.on_commit(lambda: calls.append("inner-kept"), using=alias)
        # savepoint() before Django 6.1, which deprecates it for savepoint_create()
        create = getattr(transaction, "savepoint_create", transaction.savepoint)
        sid = create(using=alias)
        Item.objects.using(alias).create(name="tx-manual-savepoint")
        transaction.savepoint_rollback(sid, using=alias)
        calls.append("before-commit")
    try:
        with transaction.atomic(using=alias):
            Item.objects.using(alias).create(name="tx-all-rolled-back")
            transaction.on_commit(lambda: calls.append("never"), using=alias)
            raise ValueError("roll back all")
    except ValueError:
        pass
    transaction.set_autocommit(False, using=alias)
    Item.objects.using(alias).create(name="tx-manual-commit")
    transaction.commit(using=alias)
    transaction.set_autocommit(True, using=alias)
    names = sorted(
        Item.objects.using(alias).filter(name__startswith="tx-").values_list("name", flat=True)
    )
    conn.close()
    return {"calls": calls, "rows": names}


@scenario
def transactions() -> dict[str, Any]:
    """The same transaction code on this backend and on Django's own."""
    ours = _transactions("default")
    theirs = _transactions("plain")
    return {"ours": ours, "django": theirs, "in_use": pool().stats().in_use}


@scenario
def setup_once() -> dict[str, Any]:
    """Django's per-connection setup runs once per server connection, not per checkout."""
    from django.db.backends.postgresql import base as pg

    from geventconnpool.contrib.django.postgresql import base as ours

    calls = {"setup": 0}
    created_before = pool().stats().created  # main() migrated first
    name = "_configure_connection" if hasattr(pg.DatabaseWrapper, "_configure_connection") else None
    original: Any = getattr(pg.DatabaseWrapper, name) if name else ours._configure_timezone

    def counting(*args: Any) -> Any:
        calls["setup"] += 1
        return original(*args)

    if name:
        setattr(pg.DatabaseWrapper, name, counting)
    else:
        ours._configure_timezone = counting  # type: ignore[assignment]
    timezones = set()

    def one() -> None:
        for _ in range(5):
            with connection.cursor() as cur:
                cur.execute("SHOW TimeZone")
                timezones.add(cur.fetchone()[0])
                gevent.sleep(0.001)
            connection.close()

    gevent.joinall([gevent.spawn(one) for _ in range(6)], raise_error=True)
    stats = pool().stats()
    return {
        "setup_calls": calls["setup"],
        "created_here": stats.created - created_before,
        "acquired": stats.acquired,
        "timezones": sorted(timezones),
    }


# -- leaks, timeouts, load ------------------------------------------------------------------------


@scenario
def never_closed() -> dict[str, Any]:
    """100 greenlets query and never close: the connections come back, nothing wedges."""
    max_size = pool().max_size
    sessions: list[int] = []

    def one(i: int) -> int:
        n = Item.objects.filter(n=i).count()
        with connection.cursor() as cur:
            cur.execute("SELECT pg_sleep(0.002)")
        return n

    jobs = [gevent.spawn(one, i) for i in range(100)]
    gevent.joinall(jobs)
    errors = [repr(j.exception) for j in jobs if j.exception is not None]
    returned = wait_until(lambda: pool().stats().in_use == 0, 10)
    sessions.append(app_sessions())
    start = time.monotonic()
    job = gevent.spawn(lambda: Item.objects.count())
    job.join(timeout=10)
    return {
        "errors": errors,
        "returned": returned,
        "max_size": max_size,
        "sessions": max(sessions),
        "next_request_ok": job.successful(),
        "next_request_seconds": time.monotonic() - start,
        "discarded_leaked": pool().stats().discarded.leaked,
    }


@scenario
def pool_timeout() -> dict[str, Any]:
    """A request that cannot get a connection in time gets django.db.OperationalError."""
    held = gevent.event.Event()
    release = gevent.event.Event()

    def holder() -> None:
        Item.objects.count()
        held.set()
        release.wait(30)
        connection.close()

    hold = gevent.spawn(holder)
    held.wait(10)
    start = time.monotonic()
    try:
        Item.objects.count()
        outcome: dict[str, Any] = {"raised": None}
    except OperationalError as exc:
        outcome = {"raised": type(exc).__module__ + "." + type(exc).__name__, "message": str(exc)}
        outcome["cause"] = type(exc.__cause__).__name__
    outcome["waited"] = time.monotonic() - start
    outcome["timeout"] = pool().timeout
    outcome["pool_name"] = pool().name
    release.set()
    hold.join(10)
    connection.close()
    return outcome


@scenario
def load() -> dict[str, Any]:
    """200 greenlets of ORM queries on max_size=10: never more than 10 server sessions, and
    every wait ends within the timeout."""
    stop = gevent.event.Event()
    peak = [0]

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], app_sessions())
            gevent.sleep(0.005)

    sampler = gevent.spawn(sample)
    waits: list[float] = []
    errors: list[str] = []

    def one(i: int) -> None:
        for _ in range(3):
            request()
            start = time.monotonic()
            try:
                Item.objects.filter(n=i).exists()
                waits.append(time.monotonic() - start)
                with connection.cursor() as cur:
                    cur.execute("SELECT pg_sleep(0.003)")
            except OperationalError as exc:
                errors.append(str(exc))
                waits.append(time.monotonic() - start)
            finally:
                end_request()

    jobs = [gevent.spawn(one, i) for i in range(200)]
    gevent.joinall(jobs, raise_error=True)
    stop.set()
    sampler.join(5)
    stats = pool().stats()
    return {
        "peak_sessions": peak[0],
        "max_size": pool().max_size,
        "timeout": pool().timeout,
        "max_wait": max(waits),
        "requests": len(waits),
        "errors": errors[:3],
        "error_count": len(errors),
        "wait_seconds_max": stats.wait_seconds_max,
        "in_use_after": stats.in_use,
    }


def _burst(n: int, results: list[tuple[float, float, bool, str]]) -> None:
    """``n`` requests that all hold their connection at once (``n`` distinct connections)."""
    arrived = [0]
    everyone = gevent.event.Event()

    def one() -> None:
        request()
        start = time.monotonic()
        try:
            with connection.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
            results.append((start, time.monotonic(), True, ""))
        except Exception as exc:
            results.append((start, time.monotonic(), False, repr(exc)[:120]))
        finally:
            arrived[0] += 1
            if arrived[0] == n:
                everyone.set()
            everyone.wait(10)
            end_request()

    gevent.joinall([gevent.spawn(one) for _ in range(n)], raise_error=True)


@scenario
def terminate() -> dict[str, Any]:
    """pg_terminate_backend of every app session under load: only requests under way while it
    happens (between the call and the sessions' end) fail; every request that starts after the
    sessions are gone succeeds, also on the connections that were idle in the pool when their
    sessions were terminated (the checkout probe finds them dead)."""
    results: list[tuple[float, float, bool, str]] = []  # (start, end, ok, error)
    max_size = pool().max_size
    _burst(max_size, [])  # max_size connections open, most of them idle from now on
    stop = gevent.event.Event()
    started = gevent.event.Event()

    def loop() -> None:
        while not stop.is_set():
            request()
            start = time.monotonic()
            try:
                with connection.cursor() as cur:
                    cur.execute("SELECT pg_sleep(0.002), 1")
                    cur.fetchone()
                results.append((start, time.monotonic(), True, ""))
            except Exception as exc:
                results.append((start, time.monotonic(), False, repr(exc)[:120]))
            finally:
                end_request()
            if len(results) >= 30:
                started.set()
            gevent.sleep(0.01)  # paced: most connections stay idle, as between bursts of traffic

    jobs = [gevent.spawn(loop) for _ in range(3)]
    started.wait(30)
    idle_before = pool().stats().idle
    sql = "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
    pids = [r[0] for r in admin(sql, (APP,))]
    kill_started = time.monotonic()
    admin("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
    gone = wait_until(
        lambda: not admin("SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s::int[])", (pids,)), 10
    )
    killed_at = time.monotonic()
    _burst(max_size, results)  # needs every connection, the ones idle since the kill too
    stop.set()
    gevent.joinall(jobs, raise_error=True)
    failed = [r for r in results if not r[2]]
    after = [r for r in results if r[0] > killed_at]
    return {
        "terminated": len(pids),
        "idle_before": idle_before,
        "gone": gone,
        "requests": len(results),
        "failed": len(failed),
        "failed_after": len([r for r in failed if r[0] > killed_at]),
        "failed_before_kill": len([r for r in failed if r[1] < kill_started]),
        "requests_after": len(after),
        "errors": sorted({r[3] for r in failed})[:3],
        "max_size": max_size,
        "discarded": str(pool().stats().discarded),
    }


@scenario
def killed_mid_transaction() -> dict[str, Any]:
    """A greenlet killed inside atomic() (idle in transaction, then mid-query) leaves nothing
    behind: no held connection, no open transaction, no row."""
    Item.objects.filter(name__startswith="killed").delete()
    connection.close()
    inside = gevent.event.Event()

    def idle_in_tx() -> None:
        with transaction.atomic():
            Item.objects.create(name="killed-idle")
            inside.set()
            gevent.sleep(60)

    def mid_query() -> None:
        with transaction.atomic():
            Item.objects.create(name="killed-active")
            inside.set()
            with connection.cursor() as cur:
                cur.execute("SELECT pg_sleep(0.5)")

    out: dict[str, Any] = {}
    for name, body in (("idle", idle_in_tx), ("active", mid_query)):
        inside.clear()
        job = gevent.spawn(body)
        inside.wait(10)
        gevent.sleep(0.05)
        before = app_sessions("idle in transaction") + app_sessions("active")
        job.kill(block=True, timeout=10)
        returned = wait_until(lambda: pool().stats().in_use == 0, 10)
        clean = wait_until(
            lambda: app_sessions("idle in transaction") == 0 and app_sessions("active") == 0, 10
        )
        out[name] = {
            "busy_before_kill": before,
            "returned": returned,
            "no_open_transaction": clean,
            "rows": Item.objects.filter(name__startswith="killed").count(),
        }
        connection.close()
    return out


@scenario
def killed_mid_query() -> dict[str, Any]:
    """A greenlet killed while the server runs its ``SELECT pg_sleep(30)`` (in autocommit, and
    inside atomic() holding a row lock): the query is cancelled at the server, so within about a
    second no query of ours is active and the row lock is free, not 30 s later."""
    Item.objects.filter(name="locked").delete()
    row = Item.objects.create(name="locked")
    connection.close()
    sleeping = "SELECT pg_sleep(30)"
    sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND query = %s"

    def running() -> bool:  # the killed greenlet's query, still running at the server
        return bool(admin(sql + " AND state = 'active'", (APP, sleeping))[0][0])

    def autocommit() -> None:
        with connection.cursor() as cur:
            cur.execute(sleeping)

    def in_atomic() -> None:
        with transaction.atomic():
            Item.objects.select_for_update().get(pk=row.pk)
            with connection.cursor() as cur:
                cur.execute(sleeping)

    out: dict[str, Any] = {}
    for name, body in (("autocommit", autocommit), ("atomic", in_atomic)):
        job = gevent.spawn(body)
        started = wait_until(running, 10)
        start = time.monotonic()
        job.kill(block=True, timeout=10)
        cleared = wait_until(lambda: not running(), 5)
        out[name] = {
            "running_before_kill": started,
            "killed": job.dead,
            "cleared": cleared,
            "cleared_after": round(time.monotonic() - start, 3),
            "lock_free": _row_lock_free(row.pk),
            "returned": wait_until(lambda: pool().stats().in_use == 0, 10),
        }
    out["discarded"] = str(pool().stats().discarded)
    return out


def _row_lock_free(pk: int) -> bool:
    """Whether another session can lock the row at once (``FOR UPDATE NOWAIT``)."""
    try:
        admin("SELECT id FROM shop_item WHERE id = %s FOR UPDATE NOWAIT", (pk,))
    except OperationalError:
        return False
    return True


@scenario
def outer_timeout() -> dict[str, Any]:
    """A gevent.Timeout of the caller's own, while it waits for a connection, comes out as that
    same Timeout (not an OperationalError) and leaves no waiter behind."""
    held = gevent.event.Event()
    release = gevent.event.Event()

    def holder() -> None:
        Item.objects.count()
        held.set()
        release.wait(30)
        connection.close()

    hold = gevent.spawn(holder)
    held.wait(10)
    mine = gevent.Timeout(0.2)
    caught: Any = None
    mine.start()
    try:
        Item.objects.count()
    except gevent.Timeout as exc:
        caught = exc
    finally:
        mine.cancel()
    during = pool().stats()
    release.set()
    hold.join(10)
    after_ok = Item.objects.count() >= 0
    connection.close()
    return {
        "same_timeout": caught is mine,
        "waiting_after": during.waiting,
        "in_use_during": during.in_use,
        "next_request_ok": after_ok,
        "in_use_after": pool().stats().in_use,
        "pool_timeouts": pool().stats().timeouts,
    }


@scenario
def memory() -> dict[str, Any]:
    """10^4 checkouts from 100 greenlets, each ending without closing its last one: memory
    stays flat, nothing accumulates in the backend's bookkeeping."""
    import gc
    import tracemalloc

    from geventconnpool.contrib.django import _pool as internals

    def batch(greenlets: int, per: int) -> None:
        def one() -> None:
            for i in range(per):
                with connection.cursor() as cur:
                    cur.execute("SELECT 1")
                if i < per - 1:
                    connection.close()  # the last one is left open: the greenlet's end returns it

        gevent.joinall([gevent.spawn(one) for _ in range(greenlets)], raise_error=True)
        wait_until(lambda: pool().stats().in_use == 0, 10)

    batch(100, 10)  # warm up: the pool full, Django's caches filled
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    batch(100, 100)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    stats = pool().stats()
    return {
        "checkouts": stats.acquired,
        "growth_bytes": after - before,
        "leases_alive": len(internals._leases),
        "forgotten": len(internals._forgotten),
        "in_use": stats.in_use,
        "open": stats.open,
    }


@scenario
def os_thread() -> dict[str, Any]:
    """From a real OS thread (gevent's threadpool) the backend connects as Django's own does:
    no pool, no cross-thread use of the main thread's pool."""
    Item.objects.count()
    connection.close()
    before = pool().stats()

    def in_thread() -> int:
        with connection.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            pid = int(cur.fetchone()[0])
        unpooled = connection.gevent_pool is None
        connection.close()
        return pid if unpooled else -1

    pid = gevent.get_hub().threadpool.apply(in_thread)
    after = pool().stats()
    return {
        "thread_pid": pid,
        "acquired_in_thread": after.acquired - before.acquired,
        "created_in_thread": after.created - before.created,
        "main_still_pooled": connection.gevent_pool is not None,
    }


@scenario
def fork() -> dict[str, Any]:
    """A forked child never uses the parent's connections, held or idle."""
    ready, release = gevent.event.Event(), gevent.event.Event()
    pids: dict[str, int] = {}

    def holder() -> None:
        with connection.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            pids["idle_pid"] = cur.fetchone()[0]
        ready.set()
        release.wait(30)
        connection.close()  # back to the pool: idle across the fork

    job = gevent.spawn(holder)
    ready.wait(10)
    with connection.cursor() as cur:  # held by this wrapper across the fork
        cur.execute("SELECT pg_backend_pid()")
        held_pid = cur.fetchone()[0]
    release.set()
    job.join(10)
    idle_pid = pids["idle_pid"]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            with connection.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                child_pid = cur.fetchone()[0]
            connection.close()
            os.write(write, json.dumps({"child_pid": child_pid}).encode())
        except BaseException as exc:
            os.write(write, json.dumps({"child_error": repr(exc)}).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = json.loads(os.read(read, 4096) or b"{}")
    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        after_pid = cur.fetchone()[0]
    connection.close()
    return {
        "idle_pid": idle_pid,
        "held_pid": held_pid,
        **child,
        "parent_still_works": after_pid == held_pid,
    }


def main() -> None:
    name = sys.argv[1]
    if os.environ.get("GCP_PSYCOGREEN"):  # the user's own psycogreen patch, as in its docs
        import psycogreen.gevent

        psycogreen.gevent.patch_psycopg()
    if name != "backend_down":
        call_command("migrate", verbosity=0)
        connection.close()
    result = SCENARIOS[name]()
    result["driver"] = connection.Database.__name__
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
