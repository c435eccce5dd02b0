"""RedisPool.from_url: the cases of redis-py's URL-parsing tests (TestConnectionPoolURLParsing,
TestConnectionPoolUnixSocketURLParsing, TestSSLConnectionURLParsing), in our keywords."""

from __future__ import annotations

import logging
import ssl
from typing import Any

import pytest

from geventconnpool.contrib._redis_url import parse_redis_url
from geventconnpool.contrib.redis import RedisPool, ResponseError
from tests.servers import LOOPBACK, RedisServer


@pytest.mark.parametrize(
    "url, expected",
    [
        ("redis://localhost", {"host": "localhost", "port": 6379}),
        ("redis://", {"port": 6379}),
        ("redis://%2Fvar%2Frun%2Fredis.sock", {"host": "/var/run/redis.sock", "port": 6379}),
        ("redis://myuser:@localhost", {"host": "localhost", "port": 6379, "username": "myuser"}),
        ("redis://:mypassword@localhost", {"host": "localhost", "port": 6379, "password": "mypassword"}),  # noqa: E501
        (
            "redis://my%2Fusername:my%2Fpassword@localhost",
            {"host": "localhost", "port": 6379, "username": "my/username", "password": "my/password"},  # noqa: E501
        ),
        ("redis://[::1]", {"host": "::1", "port": 6379}),
        ("redis://localhost:6380", {"host": "localhost", "port": 6380}),
        ("redis://localhost/2", {"host": "localhost", "port": 6379, "db": 2}),
        ("redis://localhost?db=3", {"host": "localhost", "port": 6379, "db": 3}),
        ("redis://localhost/2?db=3", {"host": "localhost", "port": 6379, "db": 3}),
        ("redis://localhost/%32", {"host": "localhost", "port": 6379, "db": 2}),
        (
            "redis://localhost?socket_timeout=20&socket_connect_timeout=10&socket_keepalive=&"
            "client_name=test&max_connections=10&timeout=5",
            {
                "host": "localhost",
                "port": 6379,
                "socket_timeout": 20.0,
                "connect_timeout": 10.0,
                "tcp_keepalive": False,
                "client_name": "test",
                "max_size": 10,
                "timeout": 5.0,
            },
        ),
        ("redis://localhost?socket_keepalive=Yes", {"host": "localhost", "port": 6379, "tcp_keepalive": True}),  # noqa: E501
        ("unix:///socket", {"unix_socket_path": "/socket"}),
        (
            "unix://myuser:mypassword@/socket",
            {"unix_socket_path": "/socket", "username": "myuser", "password": "mypassword"},
        ),
        ("unix:///socket?db=1", {"unix_socket_path": "/socket", "db": 1}),
        ("unix:///my%2Fpath%2Fto%2F..%2F+_%2B%3D%24ocket", {"unix_socket_path": "/my/path/to/../+_+=$ocket"}),  # noqa: E501
        ("unix:///socket?client_name=test", {"unix_socket_path": "/socket", "client_name": "test"}),
    ],
)  # fmt: skip
def test_parses_like_redis_py(url: str, expected: dict[str, Any]) -> None:
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize(
    "url, match",
    [
        ("localhost", "redis://, rediss://, unix://"),
        ("http://localhost", "redis://, rediss://, unix://"),
        ("redis://localhost?socket_timeout=_", "socket_timeout"),
        ("redis://localhost?socket_connect_timeout=abc", "socket_connect_timeout"),
        ("redis://localhost?socket_keepalive=maybe", "socket_keepalive"),
        ("redis://localhost?db=x", "db"),
        ("redis://localhost?no_such_option=1", "unsupported query argument"),
        ("redis://localhost?socket_timout=1", "did you mean 'socket_timeout'"),
        ("redis://localhost?ssl_cert_reqs=none", "rediss"),
        ("redis://localhost:99999", "port"),
        ("unix://", "socket path"),
    ],
)
def test_bad_urls_are_value_errors_naming_the_part(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_redis_url(url)


def test_rediss_builds_a_verifying_context_and_ssl_query_args() -> None:
    default = parse_redis_url("rediss://localhost")["ssl_context"]
    assert isinstance(default, ssl.SSLContext)
    assert default.verify_mode == ssl.CERT_REQUIRED and default.check_hostname
    none = parse_redis_url("rediss://localhost?ssl_cert_reqs=none")["ssl_context"]
    assert none.verify_mode == ssl.CERT_NONE and not none.check_hostname
    optional = parse_redis_url("rediss://localhost?ssl_cert_reqs=optional")["ssl_context"]
    assert optional.verify_mode == ssl.CERT_OPTIONAL
    loose = parse_redis_url("rediss://localhost?ssl_check_hostname=False")["ssl_context"]
    assert loose.verify_mode == ssl.CERT_REQUIRED and not loose.check_hostname
    with pytest.raises(ValueError, match="ssl_cert_reqs"):
        parse_redis_url("rediss://localhost?ssl_cert_reqs=sometimes")


def test_query_arguments_win_over_keywords_as_in_redis_py() -> None:
    pool = RedisPool.from_url("redis://127.0.0.1:1/4?client_name=fromurl", db=1, size=1, min_size=0)
    try:
        assert pool.db == 4 and pool.client_name == "fromurl"
        assert pool.name == "redis 127.0.0.1:1/4"
    finally:
        pool.close()


@pytest.mark.redis
def test_from_url_against_a_real_server_never_shows_the_password(
    fresh_redis: RedisServer, closing: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    fresh_redis.command("CONFIG", "SET", "requirepass", "pa:ss/w@rd")
    url = f"redis://default:pa%3Ass%2Fw%40rd@{LOOPBACK}:{fresh_redis.port}/3?client_name=gcp-url"
    pool = RedisPool.from_url(url, size=1)
    closing.append(pool)
    with pool.get() as conn:
        assert conn.execute("CLIENT", "GETNAME") == b"gcp-url"
        conn.execute("SET", "t:url", "db3")
    unix = RedisPool.from_url(f"unix://:pa%3Ass%2Fw%40rd@{fresh_redis.unix_socket}?db=3", size=1)
    closing.append(unix)
    with unix.get() as conn:
        assert conn.execute("GET", "t:url") == b"db3"
    wrong = RedisPool.from_url(f"redis://:wrong-secret@{LOOPBACK}:{fresh_redis.port}", size=1)
    closing.append(wrong)
    with caplog.at_level(logging.DEBUG), pytest.raises(Exception) as info:
        with wrong.get(timeout=1):
            pass
    assert isinstance(info.value.__cause__, ResponseError)
    assert f"{LOOPBACK}:{fresh_redis.port}" in str(info.value.__cause__)
    for text in (repr(pool), repr(unix), repr(wrong), pool.name, str(info.value), caplog.text):
        assert "pa:ss/w@rd" not in text and "wrong-secret" not in text


# -- issue 19 (6): no piece of a password in errors; TLS files and db numbers named --------------

SECRET = "S3cr"  # the first characters of each password below: none may appear in an error


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}#et@localhost:6379/0",
        f"redis://:{SECRET}/et@localhost:6379/0",
        f"redis://:{SECRET}?et@localhost:6379/0",
        f"redis://user:{SECRET}#x/y?z@localhost",
        f"redis://user:{SECRET}?a=b&c@localhost",
        f"rediss://:{SECRET}#et@localhost",
        f"unix://:{SECRET}/et@/tmp/redis.sock",
        f"unix://:{SECRET}#et@/tmp/redis.sock",
        f"redis://:9{SECRET}/et@localhost",
        f"redis://:QX?{SECRET}=@localhost:6379/0",  # found by the slow fuzz profile
        f"redis://:QX?a=b&{SECRET}@localhost",
    ],
)
def test_an_unencoded_password_never_leaks_into_the_error(url: str) -> None:
    with pytest.raises(ValueError) as info:
        RedisPool.from_url(url, size=1, open=False)
    message = str(info.value)
    assert SECRET not in message and "et@" not in message
    assert "percent-encode" in message
    assert (info.value.__cause__ is None and info.value.__context__ is None) or (
        SECRET not in str(info.value.__context__)
    )


@pytest.mark.parametrize(
    "query, argument",
    [
        ("ssl_ca_certs=/nonexistent/ca.pem", "ssl_ca_certs"),
        ("ssl_certfile=/nonexistent/cert.pem", "ssl_certfile"),
        ("ssl_certfile=/nonexistent/cert.pem&ssl_keyfile=/nonexistent/key.pem", "ssl_keyfile"),
        ("ssl_keyfile=/nonexistent/key.pem", "ssl_keyfile"),
        ("ssl_ca_certs=SELF", "ssl_ca_certs"),  # a file that exists but holds no certificate
        ("ssl_certfile=SELF", "ssl_certfile"),
    ],
)
def test_a_bad_tls_file_is_a_value_error_naming_the_argument(query: str, argument: str) -> None:
    query = query.replace("SELF", __file__)
    with pytest.raises(ValueError, match=argument):
        RedisPool.from_url(f"rediss://localhost?{query}", size=1, open=False)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost/2147483648",
        "redis://localhost?db=2147483648",
        "redis://localhost/99999999999999999999",
        "redis://localhost?db=-1",
        "redis://localhost/-1",
        "redis://localhost/1_0",
        "redis://localhost/%D9%A3",  # an Arabic-Indic digit: int() takes it, Redis does not
    ],
)
def test_a_database_number_no_redis_has_is_refused_naming_db(url: str) -> None:
    with pytest.raises(ValueError, match="db"):
        RedisPool.from_url(url, size=1, open=False)


def test_the_largest_database_number_is_accepted_and_the_pool_refuses_beyond() -> None:
    assert parse_redis_url("redis://localhost/2147483647")["db"] == 2**31 - 1
    assert parse_redis_url("redis://localhost?db=000000000003")["db"] == 3  # as int() reads it
    for db in (2**31, -1, 2**64):
        with pytest.raises(ValueError, match="db"):
            RedisPool("localhost", db=db, size=1, open=False)
