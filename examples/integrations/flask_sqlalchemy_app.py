"""Flask + Flask-SQLAlchemy on :class:`~geventconnpool.contrib.sqlalchemy.GeventPool`, under
``gunicorn -k gevent --preload``.

The recipe (docs/guides/sqlalchemy.rst): make psycopg2 cooperative, give SQLAlchemy our pool
through ``SQLALCHEMY_ENGINE_OPTIONS``, create the app at import time. The engine opens nothing
until a request uses it, so under ``--preload`` the master, which imports this module, holds no
connection; each worker opens its own pool (at most ``POOL_SIZE`` connections) on its first
request. Run it under gunicorn yourself::

    DATABASE_URL=postgresql+psycopg2://postgres@127.0.0.1:5432/postgres \\
        gunicorn -k gevent --preload -w 2 --chdir examples/integrations flask_sqlalchemy_app:app
    curl http://127.0.0.1:8000/

Or let this script do it all (create the table, start gunicorn, send requests, check what the
server saw, stop)::

    python examples/integrations/flask_sqlalchemy_app.py --port 5432

Needs: a PostgreSQL server (``make servers-up`` starts one on 127.0.0.1:5432, user ``postgres``,
no password), and flask, flask-sqlalchemy, sqlalchemy, psycopg2, gunicorn
(``pip install "geventconnpool[sqlalchemy,postgres] @
git+https://github.com/geventconnpool/geventconnpool" flask flask-sqlalchemy gunicorn``).
Environment of the app: ``DATABASE_URL``, ``POOL_SIZE`` (per worker,
default 4).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/_needs.py
import _needs

INSTALL = (
    'pip install "geventconnpool[sqlalchemy,postgres] @ '
    'git+https://github.com/geventconnpool/geventconnpool" flask flask-sqlalchemy gunicorn'
)
for _module in ("sqlalchemy", "psycopg2", "flask", "flask_sqlalchemy", "gunicorn"):
    _needs.package(_module, INSTALL)

from geventconnpool.contrib.sqlalchemy import GeventPool, patch_psycopg2  # noqa: E402

patch_psycopg2()  # psycopg2 waits through gevent (and cancels a query whose greenlet dies)

import sqlalchemy  # noqa: E402  (after making the driver cooperative)
from flask import Flask, jsonify  # noqa: E402
from flask_sqlalchemy import SQLAlchemy  # noqa: E402
from sqlalchemy import func, select, text  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column  # noqa: E402

APP_NAME = "flask-example"  # application_name: how the server tells this app's connections


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class Visit(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "flask_example_visits"
    id: Mapped[int] = mapped_column(primary_key=True)
    worker: Mapped[int]


def create_app() -> Flask:
    """The app: our pool via SQLALCHEMY_ENGINE_OPTIONS, one route that uses the ORM."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get(
        "DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
    )
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {
        "poolclass": GeventPool,
        "pool_size": int(os.environ.get("POOL_SIZE", 4)),  # min_size and, with 0 overflow,
        "max_overflow": 0,  # max_size: at most POOL_SIZE server connections per worker
        "pool_timeout": 5,  # a request waits at most 5 s for a connection, then 503
        "pool_pre_ping": True,
        "connect_args": {"application_name": APP_NAME},
        "geventconnpool_options": {"name": "flask-db", "fail_fast": True},
    }
    db.init_app(app)

    @app.get("/")
    def index() -> Any:
        db.session.add(Visit(worker=os.getpid()))
        db.session.commit()
        backend = db.session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        visits = db.session.scalar(select(func.count()).select_from(Visit))
        s = db.engine.pool.stats()
        return jsonify(
            pid=os.getpid(),
            backend=backend,
            visits=visits,
            pool=s.name,
            open=s.open,
            created=s.created,
            max_size=s.max_size,
        )

    @app.errorhandler(sqlalchemy.exc.TimeoutError)  # our pool timeout is SQLAlchemy's
    def busy(exc: Exception) -> Any:
        return jsonify(error=str(exc)), 503

    return app


app = create_app()


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn hook, in a worker that stops: close its pool's connections."""
    with app.app_context():
        db.engine.dispose()


# --------------------------------------------------------------------------------------------
# `python examples/integrations/flask_sqlalchemy_app.py`: table, gunicorn, requests, report.


def app_connections(url: str) -> int:
    """How many connections the server has from this app (its application_name)."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %(name)s"
            return int(conn.exec_driver_sql(sql, {"name": APP_NAME}).scalar_one())
    finally:
        engine.dispose()


def reset_table(url: str) -> None:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
    finally:
        engine.dispose()


def run(url: str, requests: int, workers: int, size: int) -> int:
    """Start gunicorn, check the master holds nothing, query, check the bound; exit code."""
    import gevent.pool
    from gevent import subprocess

    from geventconnpool.testing import free_port

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/: gunicorn_app
    from gunicorn_app import http_get  # its HTTP client

    reset_table(url)
    here = Path(__file__).resolve().parent
    http = ("127.0.0.1", free_port())
    argv = ["gunicorn", "-k", "gevent", "--preload", "-w", str(workers)]
    argv += ["-b", f"{http[0]}:{http[1]}", "--chdir", str(here)]
    argv += ["-c", "python:flask_sqlalchemy_app", "flask_sqlalchemy_app:app"]
    from gunicorn.config import KNOWN_SETTINGS  # type: ignore[import-untyped]

    if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS):  # gunicorn >= 25
        argv.insert(-1, "--no-control-socket")  # it would open one in $HOME
    print(" ".join(argv))
    root = str(here.parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, DATABASE_URL=url, POOL_SIZE=str(size), PYTHONPATH=path)
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", *argv], cwd=here, env=env, stdout=log, stderr=log
        )
        try:
            wait_until_listening(http, proc, log)
            print(
                f"before any request the server sees {app_connections(url)} connections from"
                " the app: the master holds none"
            )

            def one(_: int) -> dict[str, Any]:
                status, body = http_get(http)
                answer: dict[str, Any] = json.loads(body)
                answer["status"] = status
                return answer

            answers = list(gevent.pool.Pool(20).imap(one, range(requests)))
            seen = app_connections(url)
        finally:
            stop(proc)
        if proc.returncode != 0:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace"))
    return report(answers, seen, workers, size, proc.returncode)


def stop(proc: Any) -> None:
    """Stop gunicorn (examples/gunicorn_app.py's way)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from gunicorn_app import stop as stop_gunicorn

    stop_gunicorn(proc)


def wait_until_listening(http: tuple[str, int], proc: Any, log: Any, timeout: float = 30) -> None:
    """Wait until gunicorn accepts connections, without sending a request; if it exits or
    ``timeout`` passes, exit with the last line of its output."""
    from gevent import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(http, timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(proc)
                log.seek(0)
                lines = log.read().decode(errors="replace").strip().splitlines() or ["no output"]
                raise SystemExit(f"error: gunicorn did not start: {lines[-1]}") from None
            time.sleep(0.1)


def report(answers: list[dict[str, Any]], seen: int, workers: int, size: int, code: int) -> int:
    ok = [a for a in answers if a["status"] == 200]
    by_pid: dict[int, set[int]] = {}
    for a in ok:
        by_pid.setdefault(a["pid"], set()).add(a["backend"])
    for pid, backends in sorted(by_pid.items()):
        print(f"worker pid {pid}: {len(backends)} server connection(s), pool 'flask-db'")
    most = max((a["visits"] for a in ok), default=0)
    print(f"{len(ok)}/{len(answers)} requests answered 200; {most} visits recorded")
    print(
        f"after the requests the server sees {seen} connections from the app"
        f" (at most {workers} workers x {size})"
    )
    print(f"gunicorn stopped (exit code {code})")
    good = len(ok) == len(answers) and seen <= workers * size
    good = good and all(len(b) <= size for b in by_pid.values())
    return 0 if good and code == 0 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a SQLAlchemy URL (else built from the options below)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--user", default="postgres")
    parser.add_argument("--db", default="postgres")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=3, help="connections per worker")
    args = parser.parse_args()
    if args.url is None:
        _needs.server((args.host, args.port), "PostgreSQL server")
    url = args.url or f"postgresql+psycopg2://{args.user}@{args.host}:{args.port}/{args.db}"
    raise SystemExit(run(url, args.requests, args.workers, args.size))
