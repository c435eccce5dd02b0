"""GeventPool under SQLAlchemy's engine and ORM against a real PostgreSQL (psycopg2 made
cooperative by psycogreen): server connections bounded, waits bounded, disconnects, killed
greenlets, dispose, reset on return, fork, Flask-SQLAlchemy."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import pytest

sqlalchemy = pytest.importorskip("sqlalchemy")

import sqlalchemy.exc as sa_exc  # noqa: E402  (after the importorskip)
from sqlalchemy import Integer, String, event, select, text  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column  # noqa: E402

from geventconnpool import PoolTimeout  # noqa: E402
from geventconnpool.contrib.sqlalchemy import (  # noqa: E402
    GeventPool,
    GeventPoolTimeout,
    patch_psycopg2,
)
from tests.servers import PostgresServer, wait_until  # noqa: E402

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
_apps = itertools.count(1)


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "gcp_sqla_items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


def url(pg: PostgresServer) -> str:
    return f"postgresql+psycopg2://{pg.user}@127.0.0.1:{pg.port}/{pg.database}"


class Server:
    """Admin queries on a connection of their own (autocommit), about one app's connections."""

    def __init__(self, psycopg2: Any, pg: PostgresServer) -> None:
        self.psycopg2, self.pg = psycopg2, pg

    def run(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        conn = self.psycopg2.connect(self.pg.dsn)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def states(self, app: str) -> list[str]:
        rows = self.run("SELECT state FROM pg_stat_activity WHERE application_name = %s", (app,))
        return [r[0] for r in rows]

    def pids(self, app: str) -> set[int]:
        rows = self.run("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,))
        return {r[0] for r in rows}

    def terminate(self, app: str) -> set[int]:
        pids = self.pids(app)
        for pid in pids:
            self.run("SELECT pg_terminate_backend(%s)", (pid,))
        return pids


@pytest.fixture(autouse=True)
def cancelling_wait_callback(psycopg2: Any) -> Iterator[None]:
    """The guide's setup: ``patch_psycopg2()`` (psycogreen's callback, cancelling on interrupt)."""
    import psycopg2.extensions

    before = psycopg2.extensions.get_wait_callback()
    patch_psycopg2()
    yield
    psycopg2.extensions.set_wait_callback(before)


@pytest.fixture
def server(psycopg2: Any, postgres_server: PostgresServer) -> Server:
    return Server(psycopg2, postgres_server)


@pytest.fixture
def make_engine(
    psycopg2: Any, postgres_server: PostgresServer
) -> Iterator[Callable[..., tuple[Any, str]]]:
    """``make_engine(**create_engine_kwargs)`` -> (engine, its application_name)."""
    engines: list[Any] = []

    def make(**kw: Any) -> tuple[Any, str]:
        app = f"gcp-sqla-{os.getpid()}-{next(_apps)}"
        kw.setdefault("poolclass", GeventPool)
        engine = sqlalchemy.create_engine(
            url(postgres_server), connect_args={"application_name": app}, **kw
        )
        engines.append(engine)
        return engine, app

    yield make
    for engine in engines:
        engine.dispose()


@pytest.fixture
def table(make_engine: Callable[..., tuple[Any, str]]) -> Iterator[None]:
    engine, _ = make_engine(pool_size=1)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    yield
    Base.metadata.drop_all(engine)


# ---------------------------------------------------------------------- under load
def test_orm_from_200_greenlets_never_exceeds_10_server_connections(
    make_engine: Callable[..., tuple[Any, str]], server: Server, table: None
) -> None:
    engine, app = make_engine(pool_size=5, max_overflow=5, pool_timeout=20)
    peak = 0
    done = gevent.event.Event()

    def watch() -> None:  # samples the server's view while the load runs
        nonlocal peak
        while not done.is_set():
            peak = max(peak, len(server.pids(app)))
            gevent.sleep(0.005)

    waits: list[float] = []

    def one(i: int) -> None:
        t0 = time.monotonic()
        with Session(engine) as session, session.begin():
            session.connection()  # checks a connection out of the pool
            waits.append(time.monotonic() - t0)
            session.add(Item(id=i, name=f"item {i}"))
            session.execute(text("SELECT pg_sleep(0.01)"))

    watcher = gevent.spawn(watch)
    try:
        gevent.joinall([gevent.spawn(one, i) for i in range(200)], raise_error=True)
    finally:
        done.set()
        watcher.join(10)
    assert len(waits) == 200 and max(waits) < 20  # every wait ended within pool_timeout
    assert 1 <= peak <= 10
    assert engine.pool.stats().max_size == 10 and engine.pool.stats().created <= 10
    with Session(engine) as session:
        assert session.scalar(select(sqlalchemy.func.count()).select_from(Item)) == 200


def test_every_wait_ends_within_its_timeout(
    make_engine: Callable[..., tuple[Any, str]],
) -> None:
    engine, _ = make_engine(pool_size=2, max_overflow=0, pool_timeout=0.3)
    outcomes: list[tuple[str, float]] = []

    def one() -> None:
        t0 = time.monotonic()
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_sleep(0.2)"))
            outcomes.append(("ok", time.monotonic() - t0))
        except sa_exc.TimeoutError as e:
            assert isinstance(e, PoolTimeout) and "no connection within 0.3s" in str(e)
            outcomes.append(("timeout", time.monotonic() - t0))

    gevent.joinall([gevent.spawn(one) for _ in range(30)], raise_error=True)
    kinds = {k for k, _ in outcomes}
    assert kinds == {"ok", "timeout"}
    assert max(t for k, t in outcomes if k == "timeout") < 0.3 + 3.0  # bounded, even loaded
    assert engine.pool.stats().timeouts == sum(1 for k, _ in outcomes if k == "timeout")


@pytest.mark.parametrize("detect", ["pool_pre_ping", "check_idle_after=0"])
def test_terminating_every_backend_fails_only_queries_in_flight(
    make_engine: Callable[..., tuple[Any, str]], server: Server, detect: str
) -> None:
    kw: dict[str, Any] = {"pool_size": 5, "max_overflow": 5, "pool_timeout": 10}
    if detect == "pool_pre_ping":
        kw["pool_pre_ping"] = True
    else:
        kw["geventconnpool_options"] = {"check_idle_after": 0}
    engine, app = make_engine(**kw)
    failures: list[float] = []  # when each failed query started
    served = 0
    stop = gevent.event.Event()
    gone_at: list[float] = []

    def worker() -> None:
        nonlocal served
        for _ in range(400):  # bounded; the test stops it earlier
            if stop.is_set():
                return
            started = time.monotonic()
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT pg_sleep(0.005)"))
                served += 1
            except sa_exc.OperationalError as e:
                assert e.connection_invalidated, e
                failures.append(started)

    workers = [gevent.spawn(worker) for _ in range(20)]
    wait_until(lambda: served >= 50 and len(server.pids(app)) == 10, 20, "load on 10 connections")
    old = server.terminate(app)
    wait_until(lambda: not (server.pids(app) & old), 10, "the old backends gone")
    gone_at.append(time.monotonic())
    after = served
    wait_until(lambda: served >= after + 200, 30, "200 more queries served")
    stop.set()
    gevent.joinall(workers, raise_error=True)
    assert len(failures) <= 10  # at most one per connection that was in use at that moment
    assert [t for t in failures if t > gone_at[0]] == []  # none that started afterwards
    assert not server.pids(app) & old


@pytest.mark.parametrize("detect", ["pool_pre_ping", "check_idle_after=0", "neither"])
def test_backends_terminated_while_idle(
    make_engine: Callable[..., tuple[Any, str]], server: Server, detect: str
) -> None:
    """No query in flight, so nothing saw the disconnect: SQLAlchemy's pre-ping or our
    zero-round-trip check finds the dead connections at checkout; with neither, the first
    query fails (and invalidates the others, so only one fails)."""
    kw: dict[str, Any] = {"pool_size": 4, "max_overflow": 0, "pool_timeout": 10}
    options = {"check_idle_after": 0 if detect == "check_idle_after=0" else 100}
    kw["geventconnpool_options"] = options
    kw["pool_pre_ping"] = detect == "pool_pre_ping"
    engine, app = make_engine(**kw)
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    wait_until(lambda: len(server.pids(app)) == 4, 10, "4 idle connections")
    old = server.terminate(app)
    wait_until(lambda: not (server.pids(app) & old), 10, "the old backends gone")
    failed = 0
    for _ in range(8):
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except sa_exc.OperationalError as e:
            assert e.connection_invalidated
            failed += 1
    assert failed == (1 if detect == "neither" else 0)


def test_killed_greenlet_mid_transaction_leaves_nothing(
    make_engine: Callable[..., tuple[Any, str]], server: Server, table: None
) -> None:
    engine, app = make_engine(pool_size=2, max_overflow=0, pool_timeout=5)
    in_tx = gevent.event.Event()

    def in_query() -> None:
        with Session(engine) as session:
            session.add(Item(id=1, name="never committed"))
            session.flush()
            in_tx.set()
            session.execute(text("SELECT pg_sleep(30)"))  # killed here, in the query

    def between_statements() -> None:
        with Session(engine) as session:
            session.add(Item(id=2, name="never committed"))
            session.flush()
            in_tx.set()
            gevent.sleep(30)  # killed here, idle in transaction

    for body in (in_query, between_statements):
        in_tx.clear()
        g = gevent.spawn(body)
        in_tx.wait(10)
        wait_until(
            lambda: "idle in transaction" in server.states(app) or "active" in server.states(app),
            10,
            "transaction open at the server",
        )
        g.kill(block=True, timeout=10)
        assert g.dead
        assert engine.pool.checkedout() == 0 and engine.pool.stats().in_use == 0
        wait_until(
            lambda: not {"idle in transaction", "active"} & set(server.states(app)),
            10,
            "no open transaction at the server",
        )
    with Session(engine) as session:
        assert session.scalars(select(Item)).all() == []
    assert engine.pool.stats().open <= 2


def test_invalidate_and_disconnect_discard_the_connection(
    make_engine: Callable[..., tuple[Any, str]], server: Server
) -> None:
    engine, app = make_engine(pool_size=1, max_overflow=0, pool_timeout=5)
    seen: list[str] = []
    for name in ("invalidate", "close", "connect"):
        event.listen(engine.pool, name, lambda *a, _n=name: seen.append(_n))
    with engine.connect() as conn:
        first = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        assert seen == ["connect"]
        conn.invalidate()
    assert seen == ["connect", "invalidate", "close"]
    with engine.connect() as conn:
        second = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        server.run("SELECT pg_terminate_backend(%s)", (second,))
        with pytest.raises(sa_exc.OperationalError) as info:
            conn.exec_driver_sql("SELECT 1")
        assert info.value.connection_invalidated
    with engine.connect() as conn:
        third = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    assert len({first, second, third}) == 3
    assert server.pids(app) == {third}
    assert engine.pool.stats().discarded.error == 2


def test_reset_on_return_rolls_back_what_the_holder_left(
    make_engine: Callable[..., tuple[Any, str]], server: Server, table: None
) -> None:
    engine, app = make_engine(pool_size=1, max_overflow=0)
    raw = engine.raw_connection()
    with raw.cursor() as cur:
        cur.execute("INSERT INTO gcp_sqla_items VALUES (1, 'uncommitted')")
    assert server.states(app) == ["idle in transaction"]
    raw.close()  # back to the pool: SQLAlchemy's reset rolls it back
    assert server.states(app) == ["idle"]
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM gcp_sqla_items").scalar() == 0
    committing, _ = make_engine(pool_size=1, max_overflow=0, pool_reset_on_return="commit")
    raw = committing.raw_connection()
    with raw.cursor() as cur:
        cur.execute("INSERT INTO gcp_sqla_items VALUES (2, 'committed by the reset')")
    raw.close()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM gcp_sqla_items").scalar() == 1


def test_dispose_closes_server_connections_and_the_engine_still_works(
    make_engine: Callable[..., tuple[Any, str]], server: Server
) -> None:
    engine, app = make_engine(pool_size=3, max_overflow=0)
    old_pool = engine.pool
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    wait_until(lambda: len(server.pids(app)) == 3, 10, "min_size connections")
    engine.dispose()
    assert old_pool.stats().open == 0  # closed on our side at once
    wait_until(lambda: server.pids(app) == set(), 10, "the server to see them closed")
    assert engine.pool is not old_pool and isinstance(engine.pool, GeventPool)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1


def test_recycle_replaces_the_server_connection(
    make_engine: Callable[..., tuple[Any, str]],
) -> None:
    engine, _ = make_engine(
        pool_size=1,
        max_overflow=0,
        pool_recycle=0.3,
        geventconnpool_options={"lifetime_jitter": 0.0},
    )
    with engine.connect() as conn:
        first = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()

    def replaced() -> bool:
        with engine.connect() as conn:
            return bool(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() != first)

    wait_until(replaced, 10, "a new server connection after pool_recycle", poll=0.05)
    assert engine.pool.stats().discarded.lifetime >= 1


def test_pool_timeout_is_sqlalchemys_timeout_error_naming_the_pool(
    make_engine: Callable[..., tuple[Any, str]],
) -> None:
    engine, _ = make_engine(pool_size=1, max_overflow=0, pool_timeout=0.2, pool_logging_name="db")
    with engine.connect():
        with pytest.raises(sa_exc.TimeoutError) as info:
            with engine.connect():
                pass
    err = info.value
    assert isinstance(err, GeventPoolTimeout) and isinstance(err, PoolTimeout)
    assert str(err).startswith("pool 'db': no connection within 0.2s (open=1 idle=0 in_use=1")


def test_first_connects_run_concurrently_without_blocking_the_hub(
    postgres_server: PostgresServer,
) -> None:
    """SQLAlchemy runs the first ``connect`` listeners under a threading.Lock: two greenlets
    contending for it would block the hub for ever. Run where a hang cannot stall the suite."""
    script = textwrap.dedent(
        f"""
        import gevent, psycogreen.gevent, sqlalchemy
        psycogreen.gevent.patch_psycopg()
        from geventconnpool.contrib.sqlalchemy import GeventPool
        engine = sqlalchemy.create_engine({url(postgres_server)!r}, poolclass=GeventPool,
            pool_size=8, max_overflow=0, geventconnpool_options={{"max_connecting": 8}})
        def one():
            with engine.connect() as c:
                return c.exec_driver_sql("SELECT pg_sleep(0.05), 1").all()[0][1]
        print(sum(g.get() for g in [gevent.spawn(one) for _ in range(16)]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=40,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip() == "16", done.stderr[-2000:]


def test_fork_child_opens_its_own_connections_and_parent_keeps_its_own(
    postgres_server: PostgresServer,
) -> None:
    script = textwrap.dedent(
        f"""
        import json, os, gevent, psycogreen.gevent, sqlalchemy
        psycogreen.gevent.patch_psycopg()
        from geventconnpool.contrib.sqlalchemy import GeventPool
        engine = sqlalchemy.create_engine({url(postgres_server)!r}, poolclass=GeventPool,
            pool_size=2, max_overflow=0)
        opened_before_use = engine.pool.stats().open
        def pid():
            with engine.connect() as c:
                return c.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        parent = pid()
        r, w = os.pipe()
        child = gevent.fork()
        if child == 0:
            mine = pid()
            os.write(w, json.dumps([mine, engine.pool.stats().created]).encode())
            os._exit(0)
        os.waitpid(child, 0)
        mine, created = json.loads(os.read(r, 1000))
        print(json.dumps({{"before": opened_before_use, "parent": parent, "child": mine,
                           "child_created": created, "parent_again": pid()}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=40,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["before"] == 0  # an engine made at import time opens nothing
    assert out["child"] != out["parent"] and out["child_created"] >= 1
    assert out["parent_again"] == out["parent"]  # the child never touched the parent's


def test_flask_sqlalchemy_engine_options(postgres_server: PostgresServer, psycopg2: Any) -> None:
    flask_sqlalchemy = pytest.importorskip("flask_sqlalchemy")
    flask = pytest.importorskip("flask")
    app = flask.Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = url(postgres_server)
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {
        "poolclass": GeventPool,
        "pool_size": 2,
        "max_overflow": 1,
        "pool_timeout": 5,
        "pool_pre_ping": True,
        "geventconnpool_options": {"name": "flask-db"},
    }
    db = flask_sqlalchemy.SQLAlchemy(app)
    try:
        with app.app_context():
            assert isinstance(db.engine.pool, GeventPool) and db.engine.pool.name == "flask-db"

            def one() -> int:
                with app.app_context():
                    return int(db.session.execute(text("SELECT 1")).scalar_one())

            assert sum(g.get() for g in [gevent.spawn(one) for _ in range(20)]) == 20
            assert db.engine.pool.stats().max_size == 3
    finally:
        with app.app_context():
            db.engine.dispose()


def test_keepalive_pings_idle_connections_and_leaves_no_transaction(
    make_engine: Callable[..., tuple[Any, str]], server: Server
) -> None:
    options = {"keepalive": 0.1, "keepalive_jitter": 0.0}
    engine, app = make_engine(pool_size=1, max_overflow=0, geventconnpool_options=options)
    pings: list[int] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings.append(1)
        return bool(ping(dbapi_connection))

    engine.dialect.do_ping = counted  # type: ignore[method-assign]
    with engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    wait_until(lambda: len(pings) >= 3, 10, "three keepalive pings")
    # psycopg2's ping runs in autocommit; a ping that opens a transaction is rolled back by the
    # pool (test_sqlalchemy_pool.py::test_keepalive_rolls_back_after_the_ping).
    wait_until(lambda: server.states(app) == ["idle"], 10, "the connection idle, no transaction")
    assert engine.pool.stats().discarded.keepalive == 0
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() == pid


PSYCOPG3_SCRIPT = """
import json, sys
from gevent import monkey
monkey.patch_all()  # psycopg 3 waits through select(): cooperative once patched
import time, gevent, sqlalchemy
from sqlalchemy import text
from sqlalchemy.orm import Session
from geventconnpool.contrib.sqlalchemy import GeventPool

url, app = sys.argv[1], sys.argv[2]
engine = sqlalchemy.create_engine(url, poolclass=GeventPool, pool_size=5, max_overflow=0,
                                  pool_timeout=10, connect_args={"application_name": app})
admin = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                 isolation_level="AUTOCOMMIT")

def states():
    with admin.connect() as c:
        sql = "SELECT state FROM pg_stat_activity WHERE application_name = %(a)s"
        return sorted(c.exec_driver_sql(sql, {"a": app}).scalars().all())

spans = []

def one():
    with engine.connect() as c:
        t = time.monotonic()
        pid = c.execute(text("SELECT pg_backend_pid(), pg_sleep(0.05)")).all()[0][0]
        spans.append((t, time.monotonic()))
        return pid

backends = {g.get() for g in [gevent.spawn(one) for _ in range(50)]}
overlap = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
in_tx = gevent.event.Event()

def killed(sql):
    with Session(engine) as s:
        s.execute(text("SELECT 1"))
        in_tx.set()
        s.execute(text(sql)) if sql else gevent.sleep(30)

after = []
for sql in ("SELECT pg_sleep(30)", None):  # killed in a query, then between statements
    in_tx.clear()
    g = gevent.spawn(killed, sql)
    in_tx.wait(10)
    gevent.sleep(0.2)
    g.kill()
    deadline = time.monotonic() + 10
    while set(states()) - {"idle"} and time.monotonic() < deadline:
        gevent.sleep(0.05)
    after.append(states())
print(json.dumps({"backends": len(backends), "overlap": overlap, "after": after,
                  "in_use": engine.pool.stats().in_use}))
"""


def test_psycopg3_under_monkey_patching(postgres_server: PostgresServer) -> None:
    pytest.importorskip("psycopg")
    pg = postgres_server
    url3 = f"postgresql+psycopg://{pg.user}@127.0.0.1:{pg.port}/{pg.database}"
    done = subprocess.run(
        [sys.executable, "-c", PSYCOPG3_SCRIPT, url3, f"gcp-sqla-pg3-{os.getpid()}"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["backends"] == 5  # 50 greenlets on 5 server connections
    assert out["overlap"] == 5  # the queries ran five at a time: psycopg 3 is cooperative
    for states in out["after"]:  # no query left running, no transaction left open
        assert set(states) == {"idle"}, out
    assert out["in_use"] == 0
