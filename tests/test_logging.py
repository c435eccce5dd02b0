"""Logging: one logger per pool under ``geventconnpool``; a down backend does not flood the log."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest

from geventconnpool._log import RateLimitedLog
from geventconnpool.testing import FaultProxy, free_port

from .conftest import SocketPool, wait_until

MakePool = Callable[..., SocketPool]


def _records(
    caplog: pytest.LogCaptureFixture, logger: str, level: int, text: str
) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == logger and r.levelno == level and text in r.getMessage()
    ]


def test_each_pool_logs_to_a_child_of_geventconnpool(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="geventconnpool")
    pool = make_pool(1, name="orders")
    pool.wait_ready(5)
    pool.invalidate()
    [record] = _records(caplog, "geventconnpool.orders", logging.INFO, "invalidated")
    assert "'orders'" in record.getMessage()
    assert logging.getLogger("geventconnpool.orders").parent is logging.getLogger("geventconnpool")


def test_a_down_backend_logs_a_few_lines_not_one_per_attempt(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(
        2,
        name="down",
        address=("127.0.0.1", free_port()),  # nothing listens: every connect is refused
        reconnect_delay=0.001,
        reconnect_max_delay=0.005,
    )
    wait_until(lambda: pool.stats().connect_failures >= 12, what="many failed connects")
    warnings = _records(caplog, "geventconnpool.down", logging.WARNING, "")
    failed = [r for r in warnings if "connect failed" in r.getMessage()]
    down = [r for r in warnings if "considered down" in r.getMessage()]
    assert len(failed) == 1 and len(down) == 1 and len(warnings) == 2
    message = failed[0].getMessage()
    assert "'down'" in message and "ConnectionRefusedError" in message


def test_recovery_is_logged_and_the_next_outage_warns_again(
    make_pool: MakePool, proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="geventconnpool")
    proxy.refuse()
    pool = make_pool(
        1, name="flaky", address=proxy.address, reconnect_delay=0.001, reconnect_max_delay=0.005
    )
    wait_until(lambda: pool.stats().connect_failures >= 5, what="failed connects")
    proxy.restore()
    wait_until(lambda: pool.stats().idle == 1, what="the recovery")
    assert _records(caplog, "geventconnpool.flaky", logging.INFO, "backend is back")

    proxy.refuse()
    pool.invalidate()  # its replacement cannot connect
    failures = pool.stats().connect_failures
    wait_until(lambda: pool.stats().connect_failures > failures, what="a new failure")
    failed = _records(caplog, "geventconnpool.flaky", logging.WARNING, "connect failed")
    assert len(failed) == 2  # the second outage is reported at once, not after the interval


def test_rate_limited_log_reports_how_many_it_suppressed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = RateLimitedLog(logging.getLogger("geventconnpool.unit"), interval=0.05)
    for attempt in range(5):
        log.log(logging.WARNING, "connect", "connect failed (attempt %d)", attempt)
    end = time.monotonic() + 0.05
    wait_until(lambda: time.monotonic() >= end, what="the interval to pass")
    log.log(logging.WARNING, "connect", "connect failed (attempt %d)", 5)
    log.log(logging.WARNING, "other", "a different message")
    lines = [r.getMessage() for r in caplog.records if r.name == "geventconnpool.unit"]
    assert lines == [
        "connect failed (attempt 0)",
        "connect failed (attempt 5) (4 similar messages suppressed)",
        "a different message",
    ]
