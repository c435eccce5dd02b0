"""Credential rotation on every ready-made pool that has credentials (issue 19, defect 9).

RedisPool (and SentinelRedisPool): settable ``password``/``username``, or a
``credential_provider`` asked at each connect; the redis-py adapter: settable ``password``/
``username`` (or redis-py's own ``credential_provider`` in ``connection_kwargs``); DbApiPool:
settable ``connect_kwargs`` or a callable one. An attribute write the pool would ignore raises
AttributeError naming where to set it. Redis tests rotate real ACL users on a real redis-server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from geventconnpool import PoolError
from geventconnpool.contrib.dbapi import DbApiPool
from geventconnpool.contrib.redis import RedisPool
from geventconnpool.contrib.sentinel import SentinelRedisPool
from tests.servers import LOOPBACK, RedisServer

from ._fakes import FakeSentinel, master_answer

FAST = {"connect_timeout": 2, "reconnect_delay": 0.01, "reconnect_max_delay": 0.05, "timeout": 3}


@pytest.fixture
def acl(fresh_redis: RedisServer) -> Iterator[RedisServer]:
    """A redis-server with users ``app`` (password ``old``) and ``app2`` (``other``)."""
    fresh_redis.command("ACL", "SETUSER", "app", "on", ">old", "~*", "&*", "+@all")
    fresh_redis.command("ACL", "SETUSER", "app2", "on", ">other", "~*", "&*", "+@all")
    yield fresh_redis


def whoami(pool: RedisPool) -> Any:
    with pool.get() as conn:
        return conn.execute("ACL", "WHOAMI")


@pytest.mark.redis
def test_redis_pool_password_rotation_with_invalidate(acl: RedisServer, closing: list[Any]) -> None:
    pool = RedisPool(LOOPBACK, acl.port, username="app", password="old", size=2, **FAST)
    closing.append(pool)
    assert whoami(pool) == b"app"
    acl.command("ACL", "SETUSER", "app", "resetpass", ">new")  # the old password is gone
    pool.password = "new"  # on 0.2.x: a new attribute, ignored; every connect: WRONGPASS
    pool.invalidate()
    assert whoami(pool) == b"app"
    assert pool.password == "new" and "new" not in repr(pool)


@pytest.mark.redis
def test_redis_pool_username_and_password_rotate_together(
    acl: RedisServer, closing: list[Any]
) -> None:
    pool = RedisPool(LOOPBACK, acl.port, username="app", password="old", size=1, **FAST)
    closing.append(pool)
    assert whoami(pool) == b"app"
    pool.username, pool.password = "app2", "other"
    pool.invalidate()
    assert whoami(pool) == b"app2"


@pytest.mark.redis
def test_a_credential_provider_is_asked_at_each_connect(
    acl: RedisServer, closing: list[Any]
) -> None:
    vault = {"user": "app", "secret": "old"}
    asked: list[str] = []

    def provider() -> tuple[str, str]:
        asked.append(vault["user"])
        return vault["user"], vault["secret"]

    pool = RedisPool(LOOPBACK, acl.port, credential_provider=provider, size=1, **FAST)
    closing.append(pool)
    assert whoami(pool) == b"app"
    vault.update(user="app2", secret="other")  # rotated in the vault, the pool untouched
    pool.invalidate()
    assert whoami(pool) == b"app2"
    assert asked == ["app", "app2"]


@pytest.mark.redis
def test_redis_pys_credential_provider_objects_work_on_redis_pool(
    acl: RedisServer, closing: list[Any]
) -> None:
    credentials = pytest.importorskip("redis.credentials")
    provider = credentials.UsernamePasswordCredentialProvider("app2", "other")
    pool = RedisPool(LOOPBACK, acl.port, credential_provider=provider, size=1, **FAST)
    closing.append(pool)
    assert whoami(pool) == b"app2"


def test_credential_attributes_the_pool_would_ignore_raise(closing: list[Any]) -> None:
    pool = RedisPool(LOOPBACK, 1, credential_provider=lambda: (None, "x"), size=1, open=False)
    closing.append(pool)
    for name in ("password", "username"):
        with pytest.raises(AttributeError, match="credential_provider"):
            setattr(pool, name, "new")
    with pytest.raises(ValueError, match="not both"):
        RedisPool(LOOPBACK, 1, password="x", credential_provider=lambda: (None, "y"), open=False)
    with pytest.raises(TypeError, match="password"):
        pool.credential_provider = None
        pool.password = b"bytes"  # type: ignore[assignment]
    with pytest.raises(TypeError, match="credential_provider"):
        pool.credential_provider = "s3cret"


def test_a_malformed_provider_answer_is_a_type_error_that_never_shows_it() -> None:
    for answer in ("s3cret-a", ("u", "p", "x"), (1, "s3cret-b"), ("u", b"s3cret-c"), None):
        pool = RedisPool(LOOPBACK, 1, credential_provider=lambda a=answer: a, size=1, open=False)
        try:
            with pytest.raises(TypeError) as info:
                pool.credentials()
            assert "s3cret" not in str(info.value)
        finally:
            pool.close()


@pytest.mark.redis
def test_sentinel_pool_rotates_like_redis_pool(acl: RedisServer, closing: list[Any]) -> None:
    sentinel = FakeSentinel(master_answer(LOOPBACK.encode(), str(acl.port).encode()))
    try:
        pool = SentinelRedisPool(
            [(LOOPBACK, sentinel.port)],
            "mymaster",
            watch=False,
            username="app",
            password="old",
            size=1,
            **FAST,
        )
        closing.append(pool)
        assert whoami(pool) == b"app"
        acl.command("ACL", "SETUSER", "app", "resetpass", ">new")
        pool.password = "new"
        pool.invalidate()
        assert whoami(pool) == b"app"
    finally:
        sentinel.stop()


# -- the redis-py adapter --------------------------------------------------------------------------


@pytest.mark.redis
def test_redispy_adapter_password_rotation(acl: RedisServer, closing: list[Any]) -> None:
    redis = pytest.importorskip("redis")
    from geventconnpool.contrib.redispy import RedisPyConnectionPool

    pool = RedisPyConnectionPool(
        LOOPBACK,
        acl.port,
        connection_kwargs={"username": "app", "password": "old"},
        max_size=2,
        **FAST,
    )
    closing.append(pool.pool)
    client = redis.Redis(connection_pool=pool)
    assert client.acl_whoami() == "app"
    acl.command("ACL", "SETUSER", "app", "resetpass", ">new")
    pool.password = "new"
    pool.disconnect()
    assert client.acl_whoami() == "app"
    pool.username, pool.password = "app2", "other"
    pool.disconnect()
    assert client.acl_whoami() == "app2"


@pytest.mark.redis
def test_redispy_adapter_with_redis_pys_credential_provider(
    acl: RedisServer, closing: list[Any]
) -> None:
    redis = pytest.importorskip("redis")
    from redis.credentials import CredentialProvider

    from geventconnpool.contrib.redispy import RedisPyConnectionPool

    vault = {"user": "app", "secret": "old"}

    class Vault(CredentialProvider):  # type: ignore[misc]
        def get_credentials(self) -> tuple[str, str]:
            return vault["user"], vault["secret"]

    pool = RedisPyConnectionPool(
        LOOPBACK, acl.port, connection_kwargs={"credential_provider": Vault()}, max_size=1, **FAST
    )
    closing.append(pool.pool)
    client = redis.Redis(connection_pool=pool)
    assert client.acl_whoami() == "app"
    vault.update(user="app2", secret="other")
    pool.disconnect()
    assert client.acl_whoami() == "app2"
    with pytest.raises(AttributeError, match="credential_provider"):
        pool.password = "ignored"


# -- DbApiPool -----------------------------------------------------------------------------------


class FakeDb:
    """A DB-API connection that remembers the keyword arguments it was opened with."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.closed = 0

    def cursor(self) -> Any:
        raise AssertionError("not used: ping_query=None")

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        self.closed = 1


def fake_connect(**kwargs: Any) -> FakeDb:
    if kwargs.get("password") != SERVER["password"]:
        raise OSError("password authentication failed")
    return FakeDb(**kwargs)


SERVER = {"password": "old"}


@pytest.fixture
def fake_server() -> Iterator[dict[str, str]]:
    SERVER["password"] = "old"
    yield SERVER


def test_dbapi_connect_kwargs_rotation(fake_server: dict[str, str], closing: list[Any]) -> None:
    pool: DbApiPool[FakeDb] = DbApiPool(
        fake_connect,
        connect_kwargs={"user": "app", "password": "old"},
        size=1,
        ping_query=None,
        **FAST,
    )
    closing.append(pool)
    with pool.get() as conn:
        assert conn.kwargs["password"] == "old"
    fake_server["password"] = "new"
    pool.connect_kwargs = {**pool.connect_kwargs, "password": "new"}  # type: ignore[dict-item]
    pool.invalidate()
    with pool.get() as conn:
        assert conn.kwargs == {"user": "app", "password": "new"}


def test_dbapi_callable_connect_kwargs_are_read_at_each_connect(
    fake_server: dict[str, str], closing: list[Any]
) -> None:
    vault = {"password": "old"}
    pool: DbApiPool[FakeDb] = DbApiPool(
        fake_connect, connect_kwargs=lambda: {"user": "app", **vault}, size=1, ping_query=None
    )
    closing.append(pool)
    with pool.get() as conn:
        assert conn.kwargs["password"] == "old"
    fake_server["password"] = vault["password"] = "new"
    pool.invalidate()
    with pool.get() as conn:
        assert conn.kwargs["password"] == "new"


def test_dbapi_attribute_writes_it_would_ignore_raise(closing: list[Any]) -> None:
    pool: DbApiPool[FakeDb] = DbApiPool(
        fake_connect, connect_kwargs={"password": "old"}, size=1, ping_query=None, open=False
    )
    closing.append(pool)
    for name in ("password", "user", "host", "dsn"):
        with pytest.raises(AttributeError, match="connect_kwargs"):
            setattr(pool, name, "x")
    with pytest.raises(TypeError, match="password"):
        pool.connect_kwargs = {"password": 123}
    with pytest.raises(TypeError, match="mapping"):
        pool.connect_kwargs = ["password"]  # type: ignore[assignment]
    pool.note = "other attributes are still free"  # type: ignore[attr-defined]


def test_dbapi_a_callable_returning_garbage_is_a_failed_connect(closing: list[Any]) -> None:
    pool: DbApiPool[FakeDb] = DbApiPool(
        fake_connect, connect_kwargs=lambda: ["password"], size=1, ping_query=None, **FAST
    )
    closing.append(pool)
    with pytest.raises(PoolError) as info:
        with pool.get(timeout=0.5):
            pass
    assert isinstance(info.value.__cause__, TypeError)
