"""ThriftPool: every hand-out is probed (issue 19, defect 8), and any reply a hostile server
sends ends in a value or a Thrift error, with the next caller getting a clean client and its
own reply."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent.select
import pytest
from hypothesis import given
from hypothesis import strategies as st

thriftpy2 = pytest.importorskip("thriftpy2")

from thriftpy2.protocol.exc import TProtocolException  # noqa: E402
from thriftpy2.thrift import TApplicationException  # noqa: E402
from thriftpy2.transport import TTransportException  # noqa: E402

from geventconnpool.contrib.thrift import ThriftPool  # noqa: E402
from tests.servers import LOOPBACK, ScriptedServer, ThriftServer  # noqa: E402

from ._fuzz import fuzz, fuzz_timeout  # noqa: E402

kv_thrift = thriftpy2.load(str(Path(__file__).with_name("kv.thrift")), module_name="kv_thrift")


class Handler:
    def ping(self) -> str:
        return "pong"

    def echo(self, text: str) -> str:
        return f"echo-{text}"


@pytest.fixture(params=[False, True], ids=["buffered", "framed"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[ThriftServer, bool]]:
    server = ThriftServer(kv_thrift.KV, Handler(), framed=request.param)
    yield server, request.param
    server.stop()


def test_a_client_the_server_closed_while_idle_is_never_handed_out(
    served: tuple[ThriftServer, bool], closing: list[Any]
) -> None:
    # check_idle_after is far away: only the hand-out probe can see the server's FIN.
    server, framed = served
    pool = ThriftPool(
        kv_thrift.KV, LOOPBACK, server.port, framed=framed, size=1, check_idle_after=3600
    )
    closing.append(pool)
    with pool.get() as client:
        assert client.echo("a") == "echo-a"
    server.close_all()
    server.wait_for(lambda: not server.open)
    readable, _, _ = gevent.select.select([client.transport_socket], [], [], 5)
    assert readable  # the FIN has reached the idle client's socket: the sync point
    with pool.get() as fresh:
        assert fresh is not client
        assert fresh.echo("b") == "echo-b"  # on 0.2.x: TTransportException on the dead client
    assert pool.stats().discarded.check == 1


def test_a_client_with_unsolicited_bytes_is_never_handed_out(closing: list[Any]) -> None:
    server = ScriptedServer(b"junk nobody asked for")  # answers even a oneway call
    try:
        pool = ThriftPool(kv_thrift.KV, LOOPBACK, server.port, size=1, check_idle_after=3600)
        closing.append(pool)
        with pool.get() as client:
            client.record("x")  # oneway: no reply is read
        assert gevent.select.select([client.transport_socket], [], [], 5)[0]  # the junk is here
        with pool.get() as other:
            assert other is not client and other.quiet()
        assert pool.stats().discarded.check == 1
    finally:
        server.stop()


# -- a hostile server, fuzzed ------------------------------------------------------------------

REPLY_HEADER = struct.pack("!iI", -0x7FFEFFFE, 4) + b"echo" + struct.pack("!i", 0)
THRIFT_ERRORS = (TProtocolException, TTransportException, TApplicationException, OSError)


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer(b"")
    yield server
    server.stop()


@fuzz_timeout
@given(body=st.binary(max_size=200), header=st.booleans(), framed=st.booleans())
@fuzz(80)
def test_any_reply_is_a_value_or_a_thrift_error_and_the_next_client_is_clean(
    scripted: ScriptedServer, body: bytes, header: bool, framed: bool
) -> None:
    data = (REPLY_HEADER if header else b"") + body
    if framed:
        data = struct.pack("!i", len(data)) + data
    scripted.payload = data
    pool = ThriftPool(
        kv_thrift.KV,
        LOOPBACK,
        scripted.port,
        framed=framed,
        size=1,
        socket_timeout=0.2,
        max_message_size=4096,
        string_length_limit=1024,
    )
    try:
        try:
            with pool.get() as client:
                first = client
                value = client.echo("x")
            assert isinstance(value, (str, bytes)) or value is None
        except THRIFT_ERRORS:
            pass
        with pool.get() as client:  # the next caller: a client in step, nothing pending
            assert client.in_sync and client.quiet()
            if not first.in_sync:
                assert client is not first
    finally:
        pool.close()


class HostileThrift(ThriftServer):
    """A real KV server, except that the first request on a connection is answered from
    ``script`` (raw bytes, or None to close) while it has entries."""

    def __init__(self, framed: bool) -> None:
        self.script: list[bytes | None] = []
        super().__init__(kv_thrift.KV, Handler(), framed=framed)

    def serve(self, sock: Any) -> None:
        if self.script:
            answer = self.script.pop(0)
            if not sock.recv(65536):
                return
            if answer is None:
                return  # closed mid-exchange
            sock.sendall(answer)
        super().serve(sock)


@pytest.fixture(params=[False, True], ids=["buffered", "framed"])
def hostile(request: pytest.FixtureRequest) -> Iterator[HostileThrift]:
    server = HostileThrift(framed=request.param)
    yield server
    server.stop()


@fuzz_timeout
@given(body=st.binary(max_size=120), header=st.booleans(), close=st.booleans(), token=st.text())
@fuzz(40)
def test_after_any_reply_the_next_caller_gets_its_own(
    hostile: HostileThrift, body: bytes, header: bool, close: bool, token: str
) -> None:
    data = (REPLY_HEADER if header else b"") + body
    if hostile.framed:
        data = struct.pack("!i", len(data)) + data
    pool = ThriftPool(
        kv_thrift.KV,
        LOOPBACK,
        hostile.port,
        framed=hostile.framed,
        size=1,
        socket_timeout=0.2,
        max_message_size=4096,
        string_length_limit=1024,
        check_idle_after=3600,
    )
    try:
        hostile.script = [None if close else data]
        try:
            with pool.get() as client:
                client.echo("x")
        except THRIFT_ERRORS:
            pass
        assert not hostile.script
        with pool.get() as client:
            assert client.echo(token) == f"echo-{token}"
    finally:
        pool.close()
