"""Redis URLs as redis-py parses them, into :class:`~geventconnpool.contrib.redis.RedisPool`
keyword arguments: ``redis://``, ``rediss://`` (TLS) and ``unix://``."""

from __future__ import annotations

import difflib
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

__all__ = ["parse_redis_url"]

#: The highest database number: Redis's SELECT takes a signed 32-bit index.
MAX_DB = 2**31 - 1
_UNENCODED = (
    "Redis URL: the credentials seem to contain an unencoded '#', '/', '?' or '@' (they end "
    "up after the host); percent-encode them in the password and user name (%23, %2F, %3F, %40)"
)

_TRUE = {"1", "TRUE", "YES", "Y", "ON"}
_FALSE = {"0", "F", "FALSE", "N", "NO", "OFF", ""}


def _bool(value: str) -> bool:
    if value.upper() in _TRUE:
        return True
    if value.upper() in _FALSE:
        return False
    raise ValueError(value)


def parse_db(value: str) -> int:
    """A database number: ASCII digits, 0..MAX_DB (the URL's path or its ``db`` argument)."""
    digits = value.lstrip("0") or "0"  # int("0003") is 3, as redis-py reads it
    if not (value.isascii() and value.isdigit()) or len(digits) > 10 or int(digits) > MAX_DB:
        raise ValueError(value)
    return int(value)


#: Query argument -> (RedisPool keyword, parser). redis-py's names, our keywords.
_QUERY: dict[str, tuple[str, Callable[[str], Any]]] = {
    "db": ("db", parse_db),
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

    Raises ValueError for another scheme, an unknown query argument or a bad value, a database
    number outside 0..2**31-1, a TLS file that cannot be loaded: the message names the argument,
    and never quotes the part of the URL where a password could be (credentials with an
    unencoded ``#``, ``/``, ``?`` or ``@`` spill into the path, query or fragment: refused).
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(
            "Redis URL must specify one of the following schemes (redis://, rediss://, unix://)"
        )
    parsed = urlparse(url)
    _refuse_spilled_credentials(parsed)
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
        except ValueError:  # never quote it: with an unencoded '#' it is part of a password
            raise ValueError(
                "invalid port in Redis URL (not a number in 0..65535); if the password "
                "contains '#', '/' or '?', percent-encode them (%23, %2F, %3F)"
            ) from None
        kwargs["port"] = port or 6379
        db = unquote(parsed.path).replace("/", "")
        if db and "db" not in kwargs:
            try:
                kwargs["db"] = parse_db(db)
            except ValueError:
                raise ValueError(
                    f"db: the Redis URL's path must be a database number in 0..{MAX_DB} "
                    "(redis://host:port/N)"
                ) from None
    tls_args = {k: kwargs.pop(k) for k in _SSL_ARGS if k in kwargs}
    if parsed.scheme == "rediss":
        kwargs["ssl_context"] = _context(tls_args)
    elif tls_args:
        raise ValueError(f"{', '.join(tls_args)} only apply to rediss:// URLs")
    return kwargs


def _refuse_spilled_credentials(parsed: Any) -> None:
    """Refuse a URL whose credentials spilled past the host (an unencoded ``#``, ``/``, ``?``):
    parsing on would put pieces of the password into error messages, or connect elsewhere."""
    if parsed.fragment:
        raise ValueError(_UNENCODED)
    if "@" in parsed.netloc:
        return
    if parsed.scheme == "unix":
        if parsed.netloc:  # unix://[user:password@]/path: anything else before the path spilled
            raise ValueError(_UNENCODED)
    elif "@" in parsed.path or any(
        "@" in name for name in parse_qs(parsed.query, keep_blank_values=True)
    ):
        raise ValueError(_UNENCODED)


def _query(query: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for name, values in parse_qs(query, keep_blank_values=True).items():
        if name not in _QUERY:
            # The name itself is never shown: with an unencoded '?' in a password, it is a
            # piece of the password. A close supported name is suggested instead.
            close = difflib.get_close_matches(name, _QUERY, n=1, cutoff=0.75)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                "unsupported query argument in Redis URL (its name is not shown: it may be part "
                "of a password with an unencoded '?', which must be percent-encoded as %3F); "
                f"{hint}supported: {', '.join(sorted(_QUERY))}"
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
    cafile = tls_args.get("ssl_ca_certs")
    try:
        ctx = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:  # SSLError is an OSError; both say so
        raise ValueError(f"ssl_ca_certs: cannot load {cafile!r}: {_why(exc)}") from exc
    if "ssl_certfile" in tls_args:
        certfile, keyfile = tls_args["ssl_certfile"], tls_args.get("ssl_keyfile")
        try:
            ctx.load_cert_chain(certfile, keyfile)
        except (OSError, ssl.SSLError) as exc:
            which = "ssl_certfile" if keyfile is None else "ssl_certfile/ssl_keyfile"
            raise ValueError(
                f"{which}: cannot load {certfile!r}"
                f"{'' if keyfile is None else f' / {keyfile!r}'}: {_why(exc)}"
            ) from exc
    elif "ssl_keyfile" in tls_args:
        raise ValueError("ssl_keyfile needs ssl_certfile (the certificate it is the key of)")
    ctx.check_hostname = tls_args.get("ssl_check_hostname", reqs != "none")
    ctx.verify_mode = _CERT_REQS[reqs]
    return ctx


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
