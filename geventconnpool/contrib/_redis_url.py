"""Redis URLs as redis-py parses them, into :class:`~geventconnpool.contrib.redis.RedisPool`
keyword arguments: ``redis://``, ``rediss://`` (TLS) and ``unix://``."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

__all__ = ["parse_redis_url"]

_TRUE = {"1", "TRUE", "YES", "Y", "ON"}
_FALSE = {"0", "F", "FALSE", "N", "NO", "OFF", ""}


def _bool(value: str) -> bool:
    if value.upper() in _TRUE:
        return True
    if value.upper() in _FALSE:
        return False
    raise ValueError(value)


#: Query argument -> (RedisPool keyword, parser). redis-py's names, our keywords.
_QUERY: dict[str, tuple[str, Callable[[str], Any]]] = {
    "db": ("db", int),
    "socket_timeout": ("socket_timeout", float),
    "socket_connect_timeout": ("connect_timeout", float),
    "socket_keepalive": ("tcp_keepalive", _bool),
    "client_name": ("client_name", str),
    "max_connections": ("max_size", int),
    "timeout": ("timeout", float),
    "ssl_cert_reqs": ("ssl_cert_reqs", str),
    "ssl_check_hostname": ("ssl_check_hostname", _bool),
    "ssl_ca_certs": ("ssl_ca_certs", str),
    "ssl_certfile": ("ssl_certfile", str),
    "ssl_keyfile": ("ssl_keyfile", str),
}
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_SSL_ARGS = ("ssl_cert_reqs", "ssl_check_hostname", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def parse_redis_url(url: str) -> dict[str, Any]:
    """``url`` as RedisPool keyword arguments (password URL-unquoted, port default 6379).

    Raises ValueError for another scheme, an unknown query argument or a bad value (the message
    names the argument, never the password).
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(
            "Redis URL must specify one of the following schemes (redis://, rediss://, unix://)"
        )
    parsed = urlparse(url)
    kwargs = _query(parsed.query)
    if parsed.username:
        kwargs["username"] = unquote(parsed.username)
    if parsed.password:
        kwargs["password"] = unquote(parsed.password)
    if parsed.scheme == "unix":
        if not parsed.path:
            raise ValueError("a unix:// Redis URL needs a socket path: unix:///path/to.sock")
        kwargs["unix_socket_path"] = unquote(parsed.path)
    else:
        if parsed.hostname:
            kwargs["host"] = unquote(parsed.hostname)
        try:
            port = parsed.port
        except ValueError as exc:
            raise ValueError(f"invalid port in Redis URL: {exc}") from None
        kwargs["port"] = port or 6379
        if parsed.path and "db" not in kwargs:
            try:
                kwargs["db"] = int(unquote(parsed.path).replace("/", ""))
            except ValueError:
                pass
    tls_args = {k: kwargs.pop(k) for k in _SSL_ARGS if k in kwargs}
    if parsed.scheme == "rediss":
        kwargs["ssl_context"] = _context(tls_args)
    elif tls_args:
        raise ValueError(f"{', '.join(tls_args)} only apply to rediss:// URLs")
    return kwargs


def _query(query: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for name, values in parse_qs(query, keep_blank_values=True).items():
        if name not in _QUERY:
            raise ValueError(
                f"unsupported query argument {name!r} in Redis URL; "
                f"supported: {', '.join(sorted(_QUERY))}"
            )
        keyword, parse = _QUERY[name]
        try:
            kwargs[keyword] = parse(values[0])
        except (TypeError, ValueError):
            raise ValueError(f"Invalid value for {name!r} in connection URL.") from None
    return kwargs


def _context(tls_args: dict[str, Any]) -> ssl.SSLContext:
    reqs = tls_args.get("ssl_cert_reqs", "required").lower()
    if reqs not in _CERT_REQS:
        raise ValueError(f"ssl_cert_reqs must be none, optional or required, not {reqs!r}")
    ctx = ssl.create_default_context(cafile=tls_args.get("ssl_ca_certs"))
    if "ssl_certfile" in tls_args:
        ctx.load_cert_chain(tls_args["ssl_certfile"], tls_args.get("ssl_keyfile"))
    ctx.check_hostname = tls_args.get("ssl_check_hostname", reqs != "none")
    ctx.verify_mode = _CERT_REQS[reqs]
    return ctx
