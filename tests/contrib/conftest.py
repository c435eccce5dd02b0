"""Fixtures of the integration tests: real servers from tests/servers.py, and pool cleanup."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from geventconnpool import ConnectionPool
from tests.servers import (  # noqa: F401  (pytest finds fixtures by name)
    fresh_redis,
    line_server,
    pgbouncer,
    postgres_server,
    redis_sentinel,
    redis_server,
    tls_ca,
    tls_redis,
    tls_server,
)


@pytest.fixture
def closing() -> Iterator[list[ConnectionPool[Any]]]:
    """Pools appended here are closed after the test, even when it fails."""
    made: list[ConnectionPool[Any]] = []
    yield made
    for pool in made:
        pool.close()


@pytest.fixture(scope="module")
def psycopg2() -> Iterator[Any]:
    """psycopg2 with psycogreen's wait callback: its I/O yields to other greenlets."""
    module = pytest.importorskip("psycopg2")
    import psycogreen.gevent
    import psycopg2.extensions

    psycogreen.gevent.patch_psycopg()
    try:
        yield module
    finally:
        psycopg2.extensions.set_wait_callback(None)
