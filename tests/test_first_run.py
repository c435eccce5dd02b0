"""What a newcomer sees on a first run (issue 21): a bounded wait by default, a backend that is down
reported on stderr without any logging configured, and a pool that cannot connect refused when it
is made."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import pytest

from geventconnpool import ConnectionPool, PoolClosed, PoolTimeout, PoolWarning
from geventconnpool._options import BY_NAME, DEFAULT_TIMEOUT

from .conftest import FakeConn, FakePool, wait_until

ROOT = Path(__file__).resolve().parent.parent
MakeFake = Callable[..., FakePool]


# ------------------------------------------------------------------ 1. a bounded wait by default


def test_the_default_timeout_of_get_is_30_seconds(make_fake: MakeFake) -> None:
    assert DEFAULT_TIMEOUT == 30.0 and BY_NAME["timeout"].default == 30.0
    assert ConnectionPool.timeout == 30.0
    assert make_fake(1, open=False).timeout == 30.0


def test_timeout_none_keeps_the_wait_for_ever(make_fake: MakeFake) -> None:
    pool = make_fake(1, timeout=None, reconnect_delay=0.001, reconnect_max_delay=0.001)
    assert pool.timeout is None
    pool.fail = ConnectionRefusedError(111, "Connection refused")
    pool.invalidate()
    waiter = gevent.spawn(lambda: pool.get().__enter__())
    # many more failed connects than any finite timeout would need to be given up on: still waits
    wait_until(lambda: pool.stats().connect_failures >= 50, 10, "50 failed connects")
    assert not waiter.ready() and pool.stats().waiting == 1
    pool.close()
    with pytest.raises(PoolClosed):
        waiter.get(timeout=5)


def test_the_pool_timeout_names_the_last_connect_error(make_fake: MakeFake) -> None:
    pool = make_fake(1, open=False, reconnect_delay=0.001, reconnect_max_delay=0.01)
    pool.fail = ConnectionRefusedError(111, "Connection refused")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PoolWarning)
        with pytest.raises(PoolTimeout) as info:
            with pool.get(timeout=0.3):
                pass
    message = str(info.value)
    assert "no connection within 0.3s" in message
    assert "the last failed with ConnectionRefusedError(111, 'Connection refused')" in message
    assert "is the backend up?" in message
    assert info.value.__cause__ is pool.fail


# ------------------------------------------------------------------ 1. the backend down on stderr


def test_a_failed_connect_warns_once_per_outage(make_fake: MakeFake) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        pool = make_fake(1, name="orders", reconnect_delay=0.001, reconnect_max_delay=0.001)
        pool.wait_ready(5)
        assert seen == []  # a healthy pool says nothing
        pool.fail = ConnectionRefusedError(111, "Connection refused")
        pool.invalidate()
        wait_until(lambda: not pool.stats().available, 5, "the backend considered down")
        wait_until(lambda: pool.stats().connect_failures >= 10, 5, "10 failed connects")
        assert [w.category for w in seen] == [PoolWarning]  # one, not one per attempt
        text = str(seen[0].message)
        assert text.startswith("pool 'orders': connect failed: ConnectionRefusedError(111, ")
        assert "is the backend up?" in text
        pool.fail = None  # the backend is back...
        wait_until(lambda: pool.stats().available and pool.stats().idle == 1, 5, "recovery")
        assert len(seen) == 1
        pool.fail = TimeoutError("timed out")  # ...and down again: a new outage, a new warning
        pool.invalidate()
        wait_until(lambda: pool.stats().connect_failures >= 20, 5, "10 more failed connects")
        assert [str(w.message).split(": ")[2] for w in seen] == [
            "ConnectionRefusedError(111, 'Connection refused'); is the backend up? The pool "
            "retries in the background and get() raises PoolTimeout after its timeout; this is "
            "printed once per outage (the logger 'geventconnpool' has every attempt)",
            "TimeoutError('timed out'); is the backend up? The pool retries in the background "
            "and get() raises PoolTimeout after its timeout; this is printed once per outage "
            "(the logger 'geventconnpool' has every attempt)",
        ]


def test_warnings_turned_into_errors_do_not_break_the_pool(make_fake: MakeFake) -> None:
    # pytest runs with filterwarnings=error, as does `python -W error`: the warning is raised in a
    # connect greenlet, where nobody could catch it; the pool drops it and goes on.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pool = make_fake(1, open=False, reconnect_delay=0.001, reconnect_max_delay=0.001)
        pool.fail = ConnectionRefusedError(111, "Connection refused")
        pool.open()
        wait_until(lambda: pool.stats().connect_failures >= 3, 5, "3 failed connects")
        pool.fail = None
        with pool.get(timeout=5) as conn:
            assert isinstance(conn, FakeConn)


DOWN_BACKEND = """
import sys, time
from gevent import socket
from geventconnpool import ConnectionPool, PoolTimeout

class Pool(ConnectionPool[socket.socket]):
    def _new_connection(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", int(sys.argv[1])))

pool = Pool(2)
start = time.monotonic()
print("get", flush=True)
try:
    with pool.get() as conn:  # the default timeout
        pass
except PoolTimeout as exc:
    print(f"after {time.monotonic() - start:.1f}s: {exc}", flush=True)
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_newcomer_whose_backend_is_down_sees_it_on_stderr_then_a_pool_timeout() -> None:
    """No logging configured, no warning filter: the defaults of a plain ``python app.py``."""
    from geventconnpool.testing import free_port

    proc = subprocess.Popen(
        [sys.executable, "-c", DOWN_BACKEND, str(free_port())],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == "get\n"
        started = time.monotonic()
        line = proc.stderr.readline()  # blocks until the warning is printed
        seen_after = time.monotonic() - started
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert re.match(
        r"geventconnpool:0: PoolWarning: pool 'pool-\d+': connect failed: "
        r"ConnectionRefusedError\(111, 'Connection refused'\); is the backend up\?",
        line,
    ), line + err
    assert seen_after < 10, f"the warning came {seen_after:.1f}s after get() began"
    assert err == "", err  # once per outage: nothing more on stderr
    match = re.fullmatch(r"after (\d+\.\d)s: (.*)\n", out)
    assert match is not None, out
    assert 29.5 <= float(match[1]) < 40, out
    assert "no connection within 30.0s" in match[2], out
    assert "the last failed with ConnectionRefusedError(111, 'Connection refused')" in out


# ------------------------------------------------------------------ 2. a pool that cannot connect


def test_connection_pool_itself_is_refused_when_made() -> None:
    with pytest.raises(TypeError, match=r"ConnectionPool does not implement _new_connection\(\)"):
        ConnectionPool(5)


def test_a_misspelt_new_connection_is_named_when_the_pool_is_made() -> None:
    class Misspelt(ConnectionPool[Any]):
        def _new_conection(self) -> object:
            return object()

    with pytest.raises(TypeError) as info:
        Misspelt(5, open=False)
    assert str(info.value).startswith(
        "Misspelt does not implement _new_connection() "
        "(is '_new_conection' a misspelling of it?): subclass ConnectionPool"
    )


def test_a_subclass_of_a_subclass_inherits_its_new_connection(make_fake: MakeFake) -> None:
    class Child(FakePool):
        pass

    with Child(1) as pool, pool.get(timeout=5) as conn:
        assert isinstance(conn, FakeConn)


def test_every_ready_made_pool_implements_new_connection() -> None:
    import importlib
    import pkgutil

    import geventconnpool.contrib

    modules = [geventconnpool, geventconnpool.testing]
    for info in pkgutil.iter_modules(geventconnpool.contrib.__path__):
        if not info.name.startswith("_"):
            try:
                modules.append(importlib.import_module(f"geventconnpool.contrib.{info.name}"))
            except ImportError:  # an extra that is not installed
                continue
    pools = [
        obj
        for module in modules
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, ConnectionPool) and obj is not ConnectionPool
    ]
    assert pools, "no ready-made pool found"
    for cls in pools:
        assert cls._new_connection is not ConnectionPool._new_connection, cls
