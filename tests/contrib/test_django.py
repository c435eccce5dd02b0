"""The Django backend ``geventconnpool.contrib.django.postgresql`` against a real PostgreSQL.

Each behaviour is a scenario of ``tests/contrib/django_project/scenarios.py``, run in a
gevent-patched process of its own with psycopg 3 and with psycopg2 (+ psycogreen); the test
asserts on the JSON line it prints. The settings checks run here, in process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("django")

from geventconnpool.contrib.django._pool import check_pool_options
from tests.servers import PostgresServer

ROOT = Path(__file__).resolve().parents[2]


def _driver(name: str) -> Any:
    missing = importlib.util.find_spec(name) is None
    return pytest.param(name, marks=pytest.mark.skipif(missing, reason=f"{name} not installed"))


DRIVERS = [_driver("psycopg"), _driver("psycopg2")]

#: The scenario processes turn deprecations into errors, as pytest does here (pyproject's
#: filterwarnings): a Django release deprecating something the backend (or the test project)
#: uses fails these tests in ``make ci-django``, before the release that removes it.
STRICT_WARNINGS = {"PYTHONWARNINGS": "error::DeprecationWarning,error::PendingDeprecationWarning"}

pytestmark = [pytest.mark.postgres]


def run(
    port: int,
    name: str,
    driver: str,
    pool: dict[str, Any] | None = None,
    timeout: float = 50,
    **env: str,
) -> dict[str, Any]:
    """Run one scenario; its JSON result (the process's stderr on failure)."""
    environ = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "GCP_PG_PORT": str(port),
        "GCP_DJANGO_DRIVER": driver,
        "GCP_DB_TIME_ZONE": "Asia/Tokyo",
        "GCP_POOL": json.dumps(pool or {"max_size": 10, "timeout": 5}),
        **STRICT_WARNINGS,
        **env,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "tests.contrib.django_project.scenarios", name],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"scenario {name} ({driver}) failed:\n{proc.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["driver"] == driver, result
    return result


# -- settings -------------------------------------------------------------------------------------


def test_defaults_are_lazy_bounded_and_probed() -> None:
    assert check_pool_options("default", True) == {
        "max_size": 10,
        "min_size": 0,
        "timeout": 10.0,
        "check_idle_after": 0.0,
        "reset": "DISCARD ALL",
    }
    assert check_pool_options("default", {"max_size": 3})["min_size"] == 0
    assert check_pool_options("default", {"size": 4}).get("min_size") is None  # size: min = max


@pytest.mark.parametrize(
    ("pool", "error", "message"),
    [
        (
            {"max_size": 0},
            ValueError,
            "DATABASES['default']['OPTIONS']['pool']['max_size'] must be >= 1, got 0",
        ),
        (
            {"max_size": "10"},
            TypeError,
            "DATABASES['default']['OPTIONS']['pool']['max_size'] must be an int",
        ),
        (
            {"timeout": -1},
            ValueError,
            "DATABASES['default']['OPTIONS']['pool']['timeout'] must be >= 0 seconds",
        ),
        ({"timeout": float("nan")}, ValueError, "['pool']['timeout'] must be a finite number"),
        ({"fail_fast": 1}, TypeError, "['pool']['fail_fast'] must be True or False"),
        (
            {"maxsize": 10},
            ValueError,
            "DATABASES['default']['OPTIONS']['pool'] has no option 'maxsize'",
        ),
        ({"open": True}, ValueError, "['pool']['open'] cannot be set"),
        (
            {"min_size": 5, "max_size": 2},
            ValueError,
            "DATABASES['default']['OPTIONS']['pool']: min_size (5) must not exceed max_size (2)",
        ),
        ({"reset": 1}, TypeError, "['pool']['reset'] must be an SQL command"),
        ({"name": ""}, TypeError, "['pool']['name'] must be a non-empty str"),
        (20, TypeError, "DATABASES['default']['OPTIONS']['pool'] must be a dict of pool options"),
    ],
)
def test_bad_settings_name_the_setting(pool: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        check_pool_options("default", pool)
    assert message in str(info.value)


def test_backend_raises_improperly_configured_and_hides_pool_from_django() -> None:
    from django.core.exceptions import ImproperlyConfigured

    from geventconnpool.contrib.django.postgresql.base import DatabaseWrapper

    entry: dict[str, Any] = {"NAME": "app", "OPTIONS": {"pool": {"max_size": -1}}}
    with pytest.raises(ImproperlyConfigured, match=r"\['pool'\]\['max_size'\] must be >= 1"):
        DatabaseWrapper(entry, "default")
    entry = {"NAME": "app", "OPTIONS": {"pool": {"max_size": 3}, "sslmode": "disable"}}
    wrapper = DatabaseWrapper(entry, "replica")
    assert entry["OPTIONS"] == {"sslmode": "disable"}  # Django's code never sees "pool"
    assert wrapper.pool is None  # nor uses its own psycopg_pool
    assert DatabaseWrapper(entry, "replica")._gcp_config["max_size"] == 3  # later wrappers too


# -- the cancel of a killed greenlet's query (contrib/_pg_cancel.py), with fake connections ----


class _FakePgConn:
    """What cancel_running_query looks at: libpq's transaction status and cancel()."""

    def __init__(self, status: int, fail: bool = False) -> None:
        self.info = type("Info", (), {"transaction_status": status})()
        self.fail = fail
        self.cancelled_in: list[int] = []

    def cancel(self) -> None:
        import threading

        self.cancelled_in.append(threading.get_native_id())
        if self.fail:
            raise OSError("cancel refused")


def test_cancel_running_query_only_for_a_running_query_and_never_from_the_hub() -> None:
    import threading

    import gevent
    import gevent.event

    from geventconnpool.contrib._pg_cancel import cancel_running_query

    running, idle = _FakePgConn(1), _FakePgConn(0)
    assert gevent.spawn(cancel_running_query, running).get(timeout=10) is True
    assert len(running.cancelled_in) == 1  # in gevent's threadpool: PQcancel blocks
    assert running.cancelled_in[0] != threading.get_native_id()
    assert gevent.spawn(cancel_running_query, idle).get(timeout=10) is False
    assert idle.cancelled_in == []
    refused = _FakePgConn(1, fail=True)  # no error out of it: the connection is closed anyway
    assert gevent.spawn(cancel_running_query, refused).get(timeout=10) is False
    from_hub = _FakePgConn(1)  # a loop callback cannot wait for the threadpool: no cancel
    results: list[bool] = []
    done = gevent.event.Event()

    def in_hub() -> None:
        results.append(cancel_running_query(from_hub))
        done.set()

    gevent.get_hub().loop.run_callback(in_hub)
    assert done.wait(10)
    gevent.get_hub().threadpool.join()  # a cancel started in a thread all the same would show
    assert results == [False] and from_hub.cancelled_in == []
    assert cancel_running_query(object()) is False  # another driver: nothing to cancel


# -- behaviours, with both drivers --------------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_request_checks_out_and_gives_back(postgres_server: PostgresServer, driver: str) -> None:
    for max_age in ("0", "600"):  # CONN_MAX_AGE > 0: back at the end of the request all the same
        seen = run(postgres_server.port, "lifecycle", driver, GCP_CONN_MAX_AGE=max_age)
        assert seen["in_use_during"] == 1, seen
        assert seen["in_use_after_request"] == 0 and seen["idle_after_request"] == 1, seen
        assert seen["in_use_after_close"] == 0, seen
        assert seen["created"] == 1, seen  # one server connection served every checkout


@pytest.mark.parametrize("driver", DRIVERS)
def test_request_state_never_reaches_the_next(postgres_server: PostgresServer, driver: str) -> None:
    seen = run(postgres_server.port, "state_reset", driver, {"max_size": 1, "timeout": 5})
    assert seen["same_connection"], seen
    assert seen["search_path"] == '"$user", public', seen
    assert seen["statement_timeout"] == "0", seen
    assert seen["timezone"] == "Asia/Tokyo", seen  # Django's setting survives the reset
    assert seen["temp_tables"] == 0 and seen["advisory_locks"] == 0, seen
    assert seen["uncommitted_rows"] == 0, seen  # a raw BEGIN + INSERT was rolled back


@pytest.mark.parametrize("driver", DRIVERS)
def test_transactions_behave_as_on_djangos_backend(
    postgres_server: PostgresServer, driver: str
) -> None:
    seen = run(postgres_server.port, "transactions", driver)
    assert seen["ours"] == seen["django"], seen
    assert seen["ours"]["calls"] == ["before-commit", "outer", "inner-kept"], seen
    assert seen["in_use"] == 0, seen


@pytest.mark.parametrize("driver", DRIVERS)
def test_connection_setup_runs_once_per_server_connection(
    postgres_server: PostgresServer, driver: str
) -> None:
    seen = run(postgres_server.port, "setup_once", driver, {"max_size": 3, "timeout": 5})
    assert seen["acquired"] >= 30, seen
    assert 1 <= seen["setup_calls"] == seen["created_here"] <= 3, seen
    assert seen["timezones"] == ["Asia/Tokyo"], seen


@pytest.mark.parametrize("driver", DRIVERS)
def test_greenlets_that_never_close_do_not_leak(
    postgres_server: PostgresServer, driver: str
) -> None:
    seen = run(postgres_server.port, "never_closed", driver, {"max_size": 5, "timeout": 5})
    assert seen["errors"] == [], seen
    assert seen["returned"], seen
    assert seen["sessions"] <= 5, seen
    assert seen["next_request_ok"], seen


@pytest.mark.parametrize("driver", DRIVERS)
def test_pool_timeout_is_a_django_operational_error(
    postgres_server: PostgresServer, driver: str
) -> None:
    seen = run(postgres_server.port, "pool_timeout", driver, {"max_size": 1, "timeout": 0.3})
    assert seen["raised"] == "django.db.utils.OperationalError", seen
    assert seen["cause"] == "PoolTimeout", seen
    assert f"pool {seen['pool_name']!r}: no connection within 0.3s" in seen["message"], seen
    assert seen["message"].startswith("database 'default': "), seen


@pytest.mark.parametrize("driver", DRIVERS)
def test_200_greenlets_never_exceed_max_size(postgres_server: PostgresServer, driver: str) -> None:
    seen = run(postgres_server.port, "load", driver, {"max_size": 10, "timeout": 5})
    assert seen["requests"] == 600 and seen["error_count"] == 0, seen
    assert 1 <= seen["peak_sessions"] <= 10, seen
    assert seen["max_wait"] < seen["timeout"], seen
    assert seen["in_use_after"] == 0, seen


@pytest.mark.parametrize("driver", DRIVERS)
def test_terminated_sessions_fail_only_requests_in_flight(
    postgres_server: PostgresServer, driver: str
) -> None:
    seen = run(postgres_server.port, "terminate", driver, {"max_size": 10, "timeout": 5})
    assert seen["gone"] and seen["terminated"] == 10 and seen["idle_before"] >= 5, seen
    assert seen["failed_before_kill"] == 0, seen  # each failure was under way at the kill
    assert seen["failed"] <= seen["terminated"], seen  # a dead session fails one request at most
    assert seen["failed_after"] == 0 and seen["requests_after"] >= 10, seen


@pytest.mark.parametrize("driver", DRIVERS)
def test_greenlet_killed_mid_transaction_leaves_nothing(
    postgres_server: PostgresServer, driver: str
) -> None:
    seen = run(postgres_server.port, "killed_mid_transaction", driver)
    for how in ("idle", "active"):
        assert seen[how]["busy_before_kill"] == 1, seen  # the transaction was open
        assert seen[how]["returned"] and seen[how]["no_open_transaction"], seen
        assert seen[how]["rows"] == 0, seen


@pytest.mark.parametrize("driver", DRIVERS)
def test_greenlet_killed_mid_query_has_its_query_cancelled(
    postgres_server: PostgresServer, driver: str
) -> None:
    """Without the cancel the server runs the killed greenlet's pg_sleep(30) to its end (and
    keeps its row lock): psycopg2 through the backend's wait callback, psycopg 3 through the
    pool cancelling before it closes the connection."""
    seen = run(postgres_server.port, "killed_mid_query", driver)
    for how in ("autocommit", "atomic"):
        assert seen[how]["running_before_kill"] and seen[how]["killed"], seen
        assert seen[how]["cleared"] and seen[how]["cleared_after"] < 1.5, seen
        assert seen[how]["lock_free"] and seen[how]["returned"], seen


def test_psycogreens_wait_callback_is_replaced_by_the_cancelling_one(
    postgres_server: PostgresServer,
) -> None:
    """Apps coming from django-db-geventpool call psycogreen's patch_psycopg() themselves: the
    backend swaps its callback for the one that cancels a killed greenlet's query."""
    pytest.importorskip("psycopg2")
    pytest.importorskip("psycogreen")
    seen = run(postgres_server.port, "killed_mid_query", "psycopg2", GCP_PSYCOGREEN="1")
    for how in ("autocommit", "atomic"):
        assert seen[how]["cleared"] and seen[how]["cleared_after"] < 1.5, seen


@pytest.mark.parametrize("driver", DRIVERS)
def test_forked_child_never_uses_the_parents_connections(
    postgres_server: PostgresServer, driver: str
) -> None:
    seen = run(postgres_server.port, "fork", driver)
    assert "child_error" not in seen, seen
    assert seen["child_pid"] not in (seen["idle_pid"], seen["held_pid"]), seen
    assert seen["parent_still_works"], seen


@pytest.mark.parametrize("driver", DRIVERS)
def test_djangos_test_runner_creates_migrates_and_drops(
    postgres_server: PostgresServer, driver: str
) -> None:
    test_db = f"test_gcp_{driver}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "GCP_PG_PORT": str(postgres_server.port),
        "GCP_DJANGO_DRIVER": driver,
        "GCP_TEST_DB": test_db,
        "GCP_POOL": json.dumps({"max_size": 4, "timeout": 5}),
        **STRICT_WARNINGS,
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.contrib.django_project.manage",
            "test",
            "--noinput",
            "-v",
            "2",
            "tests.contrib.django_project.shop",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "Applying shop.0001_initial... OK" in out, out[-4000:]
    assert "Ran 3 tests" in out and "OK" in out, out[-4000:]
    assert f"Destroying test database for alias 'default' ('{test_db}')" in out, out[-4000:]
    import psycopg2

    admin = psycopg2.connect(postgres_server.dsn)
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (test_db,))
            assert cur.fetchone()[0] == 0  # dropped: the pool had let go of its connections
    finally:
        admin.close()


@pytest.mark.parametrize("driver", DRIVERS)
def test_callers_own_timeout_comes_out_as_itself(
    postgres_server: PostgresServer, driver: str
) -> None:
    seen = run(postgres_server.port, "outer_timeout", driver, {"max_size": 1, "timeout": 5})
    assert seen["same_timeout"], seen  # not turned into an OperationalError, not swallowed
    assert seen["waiting_after"] == 0 and seen["in_use_during"] == 1, seen  # no stray waiter
    assert seen["pool_timeouts"] == 0, seen
    assert seen["next_request_ok"] and seen["in_use_after"] == 0, seen


@pytest.mark.parametrize("driver", DRIVERS)
def test_memory_flat_over_10k_checkouts(postgres_server: PostgresServer, driver: str) -> None:
    seen = run(postgres_server.port, "memory", driver, {"max_size": 10, "timeout": 5})
    assert seen["checkouts"] >= 10_000, seen
    assert seen["growth_bytes"] < 256 * 1024, seen  # measured: about 20 KB
    assert seen["leases_alive"] == 0 and seen["forgotten"] == 0, seen
    assert seen["in_use"] == 0 and seen["open"] <= 10, seen


@pytest.mark.parametrize("driver", DRIVERS)
def test_driver_is_made_cooperative(postgres_server: PostgresServer, driver: str) -> None:
    seen = run(postgres_server.port, "lifecycle", driver)  # psycopg2: no patch_psycopg() anywhere
    assert seen["cooperative"], seen


@pytest.mark.parametrize("driver", DRIVERS)
def test_backend_down_is_an_operational_error_naming_the_cause(
    postgres_server: PostgresServer, driver: str
) -> None:
    from geventconnpool.testing import free_port

    nowhere = free_port()  # nothing listens there
    seen = run(nowhere, "backend_down", driver, {"max_size": 2, "timeout": 0.5})
    assert seen["raised"] == "OperationalError" and seen["cause"] == "PoolTimeout", seen
    assert "no connection within 0.5s" in seen["message"], seen
    assert "connects are failing" in seen["message"], seen
    assert seen["waited"] < 5, seen


def test_psycopg_imported_before_patching_is_reported(postgres_server: PostgresServer) -> None:
    """psycopg 3 imported before monkey.patch_all() blocks the process: one WARNING says so."""
    pytest.importorskip("psycopg")
    code = """
import logging, os, psycopg
from gevent import monkey
monkey.patch_all()
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.contrib.django_project.settings"
import django
django.setup()
from django.db import connection
with connection.cursor() as cur:
    cur.execute("SELECT 1")
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GCP_PG_PORT": str(postgres_server.port)}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "WARNING geventconnpool.contrib.django psycopg was imported before gevent" in proc.stderr


@pytest.mark.parametrize("driver", DRIVERS)
def test_real_os_threads_connect_without_the_pool(
    postgres_server: PostgresServer, driver: str
) -> None:
    seen = run(postgres_server.port, "os_thread", driver)
    assert seen["thread_pid"] > 0, seen  # connected and queried, unpooled
    assert seen["acquired_in_thread"] == 0 and seen["created_in_thread"] == 0, seen
    assert seen["main_still_pooled"], seen
