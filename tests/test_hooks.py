"""The hooks a subclass overrides, each against its contract, on real sockets to the PING server."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from gevent import socket

from geventconnpool import ConnectionPool, PoolTimeout
from geventconnpool.stats import DISCARD_REASONS
from geventconnpool.testing import PingServer, ping

from .conftest import SocketPool, wait_until, warmest


def _setup(conn: socket.socket) -> None:
    """Session setup on the wire: SELECT 1, answered +OK."""
    conn.sendall(b"SELECT 1\r\n")
    reply = conn.recv(16)
    if reply != b"+OK\r\n":
        raise ConnectionError(f"SELECT answered {reply!r}")


class HookPool(SocketPool):
    """Every hook records its calls; a test sets the ``*_result`` / ``*_error`` attributes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.connected: list[socket.socket] = []
        self.connect_errors: list[BaseException] = []  # raised by the next _on_connect calls
        self.acquire_calls: list[socket.socket] = []
        self.acquire_result: Callable[[socket.socket], bool | None] = lambda conn: None
        self.release_calls: list[socket.socket] = []
        self.release_result: Callable[[socket.socket], bool | None] = lambda conn: None
        self.discards: list[tuple[socket.socket, str, bool]] = []  # conn, reason, closed then
        super().__init__(*args, **kwargs)

    def _on_connect(self, conn: socket.socket) -> None:
        if self.connect_errors:
            raise self.connect_errors.pop(0)
        _setup(conn)
        self.connected.append(conn)

    def _on_acquire(self, conn: socket.socket) -> bool | None:
        self.acquire_calls.append(conn)
        return self.acquire_result(conn)

    def _on_release(self, conn: socket.socket) -> bool | None:
        self.release_calls.append(conn)
        return self.release_result(conn)

    def _on_discard(self, conn: socket.socket, reason: str) -> None:
        self.discards.append((conn, reason, conn.fileno() == -1))


@pytest.fixture
def make_hooked(
    server: PingServer, pools: list[ConnectionPool[Any]]
) -> Iterator[Callable[..., HookPool]]:
    def make(*args: Any, cls: type[HookPool] = HookPool, **kwargs: Any) -> HookPool:
        pool = cls(*args, address=server.address, **kwargs)
        pools.append(pool)
        return pool

    yield make


def _raise(exc: BaseException) -> Callable[[Any], bool | None]:
    def hook(conn: Any) -> bool | None:
        raise exc

    return hook


def _reject(*rejected: socket.socket) -> Callable[[socket.socket], bool | None]:
    return lambda conn: conn not in rejected


# --------------------------------------------------------------------------- _on_connect
def test_on_connect_runs_once_per_connection_before_its_first_use(
    make_hooked: Callable[..., HookPool],
) -> None:
    pool = make_hooked(2)
    pool.wait_ready(5)
    for _ in range(5):
        with pool.get(timeout=5) as conn:
            assert conn in pool.connected  # set up before we see it
            ping(conn)  # and the setup's reply was consumed
    assert len(pool.connected) == pool.stats().created == 2


def test_on_connect_raising_is_a_failed_attempt(make_hooked: Callable[..., HookPool]) -> None:
    pool = make_hooked(1, reconnect_delay=0.01, connect_timeout=5)
    pool.connect_errors[:] = [ConnectionError("auth failed"), ConnectionError("auth failed")]
    with pool.get(timeout=5) as conn:  # waits through two failed attempts
        assert conn in pool.connected
        ping(conn)
    stats = pool.stats()
    assert stats.connect_failures == 2 and stats.created == 1
    failed = [s for s in pool.opened if s not in pool.connected]
    assert len(failed) == 2 and all(s.fileno() == -1 for s in failed)  # closed by the pool


def test_on_connect_error_is_the_cause_of_the_timeout(
    make_hooked: Callable[..., HookPool],
) -> None:
    pool = make_hooked(1, reconnect_delay=0.01, reconnect_max_delay=0.02)
    pool.connect_errors[:] = [PermissionError("bad password")] * 1000
    with pytest.raises(PoolTimeout) as raised, pool.get(timeout=0.3):
        pass
    assert isinstance(raised.value.__cause__, PermissionError)
    assert pool.stats().connect_failures >= 2 and pool.stats().created == 0


def test_on_connect_is_bounded_by_connect_timeout(make_hooked: Callable[..., HookPool]) -> None:
    class Hanging(HookPool):
        def _on_connect(self, conn: socket.socket) -> None:
            conn.recv(16)  # the server never says anything first: hangs

    pool = make_hooked(1, cls=Hanging, connect_timeout=0.05, reconnect_delay=10)
    wait_until(lambda: pool.stats().connect_failures == 1, what="the timed-out setup")
    assert pool.stats().created == 0
    assert len(pool.opened) == 1 and pool.opened[0].fileno() == -1


# --------------------------------------------------------------------------- _on_acquire
def test_on_acquire_runs_before_every_hand_out(make_hooked: Callable[..., HookPool]) -> None:
    pool = make_hooked(2)
    pool.wait_ready(5)
    for _ in range(4):
        with pool.get(timeout=5) as conn:
            assert pool.acquire_calls[-1] is conn
    assert len(pool.acquire_calls) == 4


def test_on_acquire_false_discards_and_the_next_is_tried(
    make_hooked: Callable[..., HookPool],
) -> None:
    pool = make_hooked(3)
    pool.wait_ready(5)
    top = warmest(pool)
    pool.acquire_calls.clear()
    pool.acquire_result = _reject(top)
    with pool.get(timeout=5) as conn:
        assert conn is not top
        ping(conn)
    assert top.fileno() == -1
    assert pool.stats().discarded.check == 1
    assert [(c, r) for c, r, _ in pool.discards] == [(top, "check")]


def test_on_acquire_raising_discards_and_the_next_is_tried(
    make_hooked: Callable[..., HookPool],
) -> None:
    pool = make_hooked(2)
    pool.wait_ready(5)
    calls = 0

    def fail_once(conn: socket.socket) -> bool | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("ROLLBACK failed")
        return True

    pool.acquire_result = fail_once
    with pool.get(timeout=5) as conn:
        ping(conn)
    assert pool.stats().discarded.check == 1 and len(pool.acquire_calls) == 2
    assert pool.acquire_calls[0].fileno() == -1 and pool.acquire_calls[1] is conn


def test_on_acquire_rejection_waits_for_a_new_one_in_the_same_get(
    make_hooked: Callable[..., HookPool],
) -> None:
    pool = make_hooked(1)
    pool.wait_ready(5)
    [first] = pool.connected
    pool.acquire_result = _reject(first)
    with pool.get(timeout=5) as conn:  # the only one is rejected: a replacement is made
        assert conn is not first and conn in pool.connected
        ping(conn)
    assert pool.acquire_calls == [first, conn]  # the brand-new one was offered to the hook too
    assert pool.stats().created == 2


def test_on_acquire_rejecting_all_times_out_at_the_get_deadline(
    make_hooked: Callable[..., HookPool],
) -> None:
    pool = make_hooked(2, reconnect_delay=0.01)
    pool.wait_ready(5)
    pool.acquire_result = lambda conn: False
    start = time.monotonic()
    with pytest.raises(PoolTimeout), pool.get(timeout=0.3):
        pass
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 1.0  # one deadline for the whole get(), not one per connection
    assert pool.stats().discarded.check >= 2


# --------------------------------------------------------------------------- _on_release
def test_on_release_false_discards(make_hooked: Callable[..., HookPool]) -> None:
    pool = make_hooked(1)
    pool.release_result = lambda conn: False
    with pool.get(timeout=5) as conn:
        ping(conn)
    assert pool.release_calls == [conn] and conn.fileno() == -1
    assert pool.stats().discarded.release == 1
    assert [(c, r) for c, r, _ in pool.discards] == [(conn, "release")]
    with pool.get(timeout=5) as fresh:
        assert fresh is not conn
        ping(fresh)


def test_on_release_raising_discards_and_does_not_reach_the_caller(
    make_hooked: Callable[..., HookPool],
) -> None:
    pool = make_hooked(1)
    pool.release_result = _raise(ConnectionError("ROLLBACK failed"))
    with pool.get(timeout=5) as conn:  # leaves without an exception
        ping(conn)
    assert conn.fileno() == -1 and pool.stats().discarded.release == 1


def test_on_release_none_keeps_the_connection(make_hooked: Callable[..., HookPool]) -> None:
    pool = make_hooked(1)
    with pool.get(timeout=5) as first:
        ping(first)
    with pool.get(timeout=5) as second:
        assert second is first
    assert pool.release_calls == [first, first] and pool.stats().discarded.total == 0


def test_on_release_resets_after_an_application_error(
    make_hooked: Callable[..., HookPool],
) -> None:
    """A "bad query" (not a disconnect) keeps the connection, so it must be reset first."""
    pool = make_hooked(1)
    with pytest.raises(KeyError), pool.get(timeout=5) as conn:
        raise KeyError("bad query")
    assert pool.release_calls == [conn]
    with pool.get(timeout=5) as again:
        assert again is conn


def test_on_release_is_skipped_for_a_disconnect(make_hooked: Callable[..., HookPool]) -> None:
    pool = make_hooked(1)
    with pytest.raises(ConnectionResetError), pool.get(timeout=5) as conn:
        raise ConnectionResetError("peer reset")
    assert pool.release_calls == [] and conn.fileno() == -1


# --------------------------------------------------------------------------- _on_discard
def test_on_discard_reasons_are_the_stats_names(make_hooked: Callable[..., HookPool]) -> None:
    pool = make_hooked(2, max_lifetime=60)
    pool.wait_ready(5)
    with pytest.raises(OSError), pool.get(timeout=5):
        raise OSError("connection lost")  # error
    pool.release_result = lambda conn: False
    with pool.get(timeout=5):
        pass  # release
    pool.release_result = lambda conn: None
    wait_until(lambda: pool.stats().idle == 2, what="refill")
    pool.acquire_result = _reject(warmest(pool))
    with pool.get(timeout=5):
        pass  # check
    pool.acquire_result = lambda conn: None
    wait_until(lambda: pool.stats().idle == 2, what="refill")
    pool._state.idle[0].expires_at = 0.0
    pool._maint.wake()
    wait_until(lambda: pool.stats().discarded.lifetime == 1, what="expiry")  # lifetime
    wait_until(lambda: pool.stats().idle == 2, what="refill")
    pool.invalidate()  # invalidated, x2
    wait_until(lambda: pool.stats().idle == 2, what="refill")
    pool.close()  # closed, x2

    reasons = Counter(reason for _, reason, _ in pool.discards)
    assert set(reasons) <= set(DISCARD_REASONS)
    counted = {r: getattr(pool.stats().discarded, r) for r in DISCARD_REASONS}
    assert reasons == Counter({r: n for r, n in counted.items() if n})
    assert reasons == Counter(error=1, release=1, check=1, lifetime=1, invalidated=2, closed=2)


def test_on_discard_is_called_after_the_connection_is_closed(
    make_hooked: Callable[..., HookPool],
) -> None:
    pool = make_hooked(3)
    pool.wait_ready(5)
    pool.invalidate()
    assert len(pool.discards) == 3 and all(closed for _, _, closed in pool.discards)


def test_on_discard_raising_is_logged_and_ignored(
    make_hooked: Callable[..., HookPool], caplog: pytest.LogCaptureFixture
) -> None:
    class Raising(HookPool):
        def _on_discard(self, conn: socket.socket, reason: str) -> None:
            raise RuntimeError("metrics backend down")

    pool = make_hooked(1, cls=Raising)
    with pytest.raises(OSError), pool.get(timeout=5):
        raise OSError("lost")
    with pool.get(timeout=5) as conn:  # the pool goes on
        ping(conn)
    assert any("_on_discard" in r.getMessage() and r.exc_info for r in caplog.records)


# --------------------------------------------------------------------------- _is_disconnect
class DriverError(Exception):
    """One exception class for everything, as some drivers have; ``code`` tells them apart."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class ClassifyingPool(HookPool):
    exc_classes = (DriverError,)

    def _is_disconnect(self, exc: BaseException) -> bool:
        return isinstance(exc, DriverError) and exc.code == "connection lost"


def test_is_disconnect_true_discards(make_hooked: Callable[..., HookPool]) -> None:
    pool = make_hooked(1, cls=ClassifyingPool)
    with pytest.raises(DriverError), pool.get(timeout=5) as conn:
        raise DriverError("connection lost")
    assert conn.fileno() == -1 and pool.stats().discarded.error == 1
    assert [(c, r) for c, r, _ in pool.discards] == [(conn, "error")]


def test_is_disconnect_false_keeps_a_bad_query_connection(
    make_hooked: Callable[..., HookPool],
) -> None:
    pool = make_hooked(1, cls=ClassifyingPool)
    with pytest.raises(DriverError), pool.get(timeout=5) as conn:
        raise DriverError("syntax error")  # same class, not a disconnect
    with pool.get(timeout=5) as again:
        assert again is conn
        ping(again)
    assert pool.stats().discarded.total == 0


def test_is_disconnect_overrides_exc_classes(make_hooked: Callable[..., HookPool]) -> None:
    class OnlyResets(HookPool):
        def _is_disconnect(self, exc: BaseException) -> bool:
            return isinstance(exc, ConnectionResetError)

    pool = make_hooked(1, cls=OnlyResets)  # exc_classes stays (OSError,)
    with pytest.raises(FileNotFoundError), pool.get(timeout=5) as conn:
        raise FileNotFoundError("an OSError the classifier says is not a disconnect")
    with pool.get(timeout=5) as again:
        assert again is conn
    assert pool.stats().discarded.total == 0


def test_default_is_disconnect_uses_exc_classes(make_hooked: Callable[..., HookPool]) -> None:
    pool = make_hooked(1, exc_classes=(TimeoutError,))
    with pytest.raises(TimeoutError), pool.get(timeout=5) as conn:
        raise TimeoutError("read timed out")
    assert conn.fileno() == -1
    with pytest.raises(ConnectionResetError), pool.get(timeout=5) as other:
        raise ConnectionResetError("not in exc_classes")
    with pool.get(timeout=5) as again:
        assert again is other
    assert pool.stats().discarded.error == 1


def test_another_pools_timeout_is_not_a_disconnect(
    make_hooked: Callable[..., HookPool], make_pool: Callable[..., SocketPool]
) -> None:
    """PoolTimeout is a TimeoutError (an OSError) but says nothing about this connection."""
    pool, other = make_hooked(1), make_pool(1)
    held, timing_out = other.get(timeout=5), other.get(timeout=0.01)
    with held, pytest.raises(PoolTimeout), pool.get(timeout=5) as conn, timing_out:
        pass  # other's only connection is held: the inner get() times out inside pool's block
    with pool.get(timeout=5) as again:
        assert again is conn
    assert pool.stats().discarded.total == 0


def test_is_disconnect_raising_discards_to_be_safe(make_hooked: Callable[..., HookPool]) -> None:
    class Broken(HookPool):
        def _is_disconnect(self, exc: BaseException) -> bool:
            raise AttributeError("classifier bug")

    pool = make_hooked(1, cls=Broken)
    with pytest.raises(ValueError), pool.get(timeout=5) as conn:
        raise ValueError("anything")
    assert conn.fileno() == -1 and pool.stats().discarded.error == 1
