"""The TCP options are declared once (``contrib.tcp.TcpOptions``) and taken as keywords by
``SocketConnector``, ``TcpPool`` and ``SslPool`` alike, with the same checks and messages."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from geventconnpool.contrib.tcp import SocketConnector, SslPool, TcpOptions, TcpPool

FIELDS = [f.name for f in dataclasses.fields(TcpOptions)]
GIVEN: dict[str, Any] = {
    "tcp_nodelay": False,
    "tcp_keepalive": True,
    "tcp_keepalive_idle": 30,
    "tcp_keepalive_interval": 7,
    "tcp_keepalive_count": 4,
    "socket_timeout": 2.5,
    "source_address": ("127.0.0.1", 0),
}


def test_no_constructor_repeats_the_tcp_options() -> None:
    assert sorted(GIVEN) == sorted(FIELDS)
    for cls in (SocketConnector, TcpPool, SslPool):
        params = set(inspect.signature(cls.__init__).parameters)
        assert not params & set(FIELDS), f"{cls.__name__} declares {params & set(FIELDS)}"


@pytest.mark.parametrize("cls", [TcpPool, SslPool])
def test_every_tcp_option_reaches_the_connector(cls: type[Any]) -> None:
    pool = cls("127.0.0.1", 9, size=1, open=False, **GIVEN)
    assert pool.connector.tcp == TcpOptions(**GIVEN)
    assert pool.connector.socket_timeout == 2.5
    assert "tcp_keepalive" not in vars(pool)  # not mistaken for a pool option
    pool.close()


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"tcp_keepalive_idle": 0}, "tcp_keepalive_idle"),
        ({"tcp_keepalive_count": 1.5}, "tcp_keepalive_count"),
        ({"tcp_keepalive_interval": True}, "tcp_keepalive_interval"),
        ({"socket_timeout": -1}, "socket_timeout"),
        ({"source_address": "127.0.0.1"}, "source_address"),
    ],
)
@pytest.mark.parametrize("make", ["connector", "TcpPool", "SslPool"])
def test_each_entry_point_refuses_a_bad_tcp_option_naming_it(
    options: dict[str, Any], name: str, make: str
) -> None:
    with pytest.raises((TypeError, ValueError), match=name):
        if make == "connector":
            SocketConnector("127.0.0.1", 9, **options)
        else:
            {"TcpPool": TcpPool, "SslPool": SslPool}[make]("127.0.0.1", 9, size=1, **options)


def test_a_misspelt_tcp_option_is_refused_not_ignored() -> None:
    with pytest.raises(TypeError, match="tcp_keepalive_idel"):
        TcpPool("127.0.0.1", 9, size=1, open=False, tcp_keepalive_idel=30)
    with pytest.raises(TypeError, match="tcp_keepalive_idel"):
        SocketConnector("127.0.0.1", 9, tcp_keepalive_idel=30)
