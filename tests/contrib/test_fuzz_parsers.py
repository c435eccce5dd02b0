"""Every parser of network input, fuzzed (issue 19): any bytes give a value or the documented
error class, within the documented deadline and memory, and the next caller gets its own reply.

RESP (``contrib/_resp.py``): a value, or a ``RedisConnectionError`` (``ProtocolError``,
``RedisTimeoutError``, "connection closed"), never a ``ValueError`` or ``RecursionError``.
Thrift (``contrib/_thrift_reader.py``): the message bytes, or ``TProtocolException`` /
``TTransportException``. Redis URLs: keyword arguments or a ``ValueError`` (never a piece of the
password). The test servers' line protocols (``geventconnpool.testing``'s RESP command reader,
``tests/servers.py``'s LineServer): commands or their ``ProtocolError``, however the bytes are
split. Sentinel answers and messages are fuzzed in test_sentinel_hostile.py.
``HYPOTHESIS_PROFILE=slow`` runs 20x the examples (tests/contrib/_fuzz.py).
"""

from __future__ import annotations

import struct
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.socket
import pytest
from hypothesis import given
from hypothesis import strategies as st

from geventconnpool import testing as gtesting
from geventconnpool.contrib._redis_url import parse_redis_url
from geventconnpool.contrib._resp import (
    Limits,
    ProtocolError,
    RedisConnectionError,
    RedisError,
    RedisTimeoutError,
    RespReader,
)
from geventconnpool.contrib.redis import RedisPool
from tests.servers import LOOPBACK, LineServer

from ._fakes import HostileRedis, close_after
from ._fuzz import fuzz, fuzz_timeout

SMALL = Limits(max_bulk_length=4096, max_elements=64, max_depth=8, max_line_length=1024)


def resp_read(data: bytes, limits: Limits = SMALL, timeout: float = 2.0) -> Any:
    """Parse ``data`` (then EOF) with a RespReader over a real socket pair."""
    ours, theirs = gevent.socket.socketpair()
    try:
        writer = gevent.spawn(_write_and_close, theirs, data)
        try:
            return RespReader(ours, limits, timeout).read()
        finally:
            writer.kill()
    finally:
        ours.close()
        theirs.close()


def _write_and_close(sock: Any, data: bytes) -> None:
    try:
        sock.sendall(data)
        sock.shutdown(2)
    except OSError:
        pass


# -- RESP ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        b":" + b"1" * 4301 + b"\r\n",
        b":-" + b"9" * 5000 + b"\r\n",
        b":" + b"1" * 20 + b"\r\n",  # 20 digits: more than any int64
        b"*1\r\n:" + b"7" * 10000 + b"\r\n",
        b"$" + b"1" * 5000 + b"\r\n",
        b"*" + b"1" * 5000 + b"\r\n",
    ],
    ids=["4301 digits", "negative 5000 digits", "20 digits", "in an array", "bulk", "array"],
)
def test_an_oversized_integer_is_a_protocol_error_not_a_value_error(reply: bytes) -> None:
    # issue 19 (5): int() of more than 4,300 digits raises ValueError, which neither
    # `except RedisError` nor @retry's connection errors catch.
    with pytest.raises(ProtocolError):
        resp_read(reply, limits=Limits(1 << 20, 1 << 20, 8, 1 << 20))


def test_the_largest_integers_still_parse() -> None:
    assert resp_read(b":9223372036854775807\r\n") == 2**63 - 1
    assert resp_read(b":-9223372036854775808\r\n") == -(2**63)


@fuzz_timeout
@given(st.binary(max_size=300))
@fuzz(200)
def test_any_bytes_are_a_reply_or_a_connection_error(data: bytes) -> None:
    try:
        value = resp_read(data)
    except RedisConnectionError:
        return
    assert value is None or isinstance(value, (bytes, str, int, list, RedisError))


def _encode(value: Any) -> bytes:
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    return b"*%d\r\n%s" % (len(value), b"".join(_encode(v) for v in value))


REPLIES = st.recursive(
    st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.binary(max_size=30)),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=20,
)


@fuzz_timeout
@given(REPLIES, st.data())
@fuzz(200)
def test_valid_replies_round_trip_and_their_mutants_fail_cleanly(value: Any, data: Any) -> None:
    raw = _encode(value)
    assert resp_read(raw) == value
    cut = data.draw(st.integers(0, len(raw) - 1))  # truncated: the server closed mid-reply
    with pytest.raises(RedisConnectionError):
        resp_read(raw[:cut])
    pos = data.draw(st.integers(0, len(raw) - 1))
    flipped = raw[:pos] + bytes([raw[pos] ^ data.draw(st.integers(1, 255))]) + raw[pos + 1 :]
    try:
        resp_read(flipped)
    except RedisConnectionError:
        pass


@pytest.mark.parametrize(
    "claim",
    [b"$4096\r\n", b"*64\r\n" + b"$4096\r\n", b"*8\r\n" * 8, b"+" + b"x" * 1000],
    ids=["bulk", "array of bulks", "nested arrays", "long line"],
)
def test_claims_cost_no_memory_before_their_bytes_arrive(claim: bytes) -> None:
    # A reply that claims the largest sizes the limits allow, then stops: the reader allocates
    # for what arrived, never for what was claimed (the limits here are small; the same code
    # path guards 64 MiB claims).
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        with pytest.raises(RedisConnectionError):
            resp_read(claim, limits=SMALL)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024


def test_a_trickled_reply_fails_within_one_deadline_for_the_whole_reply() -> None:
    ours, theirs = gevent.socket.socketpair()

    def trickle() -> None:
        for byte in b"*3\r\n$5\r\nhello\r\n:1\r\n:2\r\n":
            theirs.sendall(bytes([byte]))
            gevent.sleep(0.05)

    writer = gevent.spawn(trickle)
    started = time.monotonic()
    try:
        with pytest.raises(RedisTimeoutError):
            RespReader(ours, SMALL, 0.3).read()
    finally:
        writer.kill()
        ours.close()
        theirs.close()
    assert time.monotonic() - started < 0.3 + 1.0  # one deadline, not one per byte


# -- RESP through the pool: the next caller gets its own reply -----------------------------------


@pytest.fixture
def hostile() -> Iterator[HostileRedis]:
    server = HostileRedis()
    yield server
    server.stop()


@fuzz_timeout
@given(garbage=st.binary(max_size=200), close=st.booleans(), token=st.binary(min_size=1))
@fuzz(60)
def test_after_any_reply_the_next_caller_gets_its_own(
    hostile: HostileRedis, garbage: bytes, close: bool, token: bytes
) -> None:
    pool = RedisPool(LOOPBACK, hostile.port, max_size=1, socket_timeout=0.2, timeout=5)
    try:
        hostile.script = [close_after(garbage) if close else garbage + b"\r\n"]
        started = time.monotonic()
        with pool.get() as conn:
            try:
                conn.execute("GET", "k")
            except RedisError:
                pass
        assert time.monotonic() - started < 0.2 + 2.0  # socket_timeout bounds the whole reply
        assert not hostile.script
        with pool.get() as conn:
            assert conn.execute("ECHO", token) == token
    finally:
        pool.close()


# -- Thrift reader -------------------------------------------------------------------------------

thriftpy2 = pytest.importorskip("thriftpy2")

from thriftpy2.protocol.exc import TProtocolException  # noqa: E402
from thriftpy2.transport import TTransportException  # noqa: E402

from geventconnpool.contrib._thrift_reader import ThriftLimits, read_message  # noqa: E402

THRIFT_LIMITS = ThriftLimits(max_message_size=8192, string_length_limit=1024)
REPLY_HEADER = struct.pack("!iI", -0x7FFEFFFE, 4) + b"echo" + struct.pack("!i", 1)


def thrift_read(data: bytes, framed: bool, deadline: float = 2.0) -> bytes:
    ours, theirs = gevent.socket.socketpair()
    try:
        writer = gevent.spawn(_write_and_close, theirs, data)
        try:
            return read_message(
                ours,
                THRIFT_LIMITS,
                framed=framed,
                deadline=time.monotonic() + deadline,
                expect="echo",
                pending=bytearray(),
            )
        finally:
            writer.kill()
    finally:
        ours.close()
        theirs.close()


@fuzz_timeout
@given(
    body=st.binary(max_size=300),
    header=st.booleans(),
    framed=st.booleans(),
)
@fuzz(200)
def test_any_thrift_reply_is_a_message_or_a_thrift_error(
    body: bytes, header: bool, framed: bool
) -> None:
    # With the valid header, the fuzz reaches the struct walker (random bytes alone stop at
    # the version word).
    data = (REPLY_HEADER if header else b"") + body
    if framed:
        data = struct.pack("!i", len(data)) + data
    try:
        message = thrift_read(data, framed)
    except (TProtocolException, TTransportException):
        return
    assert len(message) <= THRIFT_LIMITS.max_message_size


def test_a_thrift_reply_of_a_huge_list_costs_no_memory_before_it_arrives() -> None:
    # A list<string> claiming a million elements (over the limit: refused at once) and one just
    # within the limit whose bytes never come: both end without allocating what was claimed.
    for count in (1_000_000, 100):
        body = b"\x0f\x00\x00" + b"\x0b" + struct.pack("!i", count)
        tracemalloc.start()
        try:
            with pytest.raises((TProtocolException, TTransportException)):
                thrift_read(REPLY_HEADER + body, framed=False)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 512 * 1024


# -- Redis URLs ----------------------------------------------------------------------------------

URL_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)


@fuzz_timeout
@given(st.one_of(URL_TEXT, st.sampled_from(["redis://", "rediss://", "unix://"]).map(str)))
@fuzz(100)
def test_any_string_is_url_arguments_or_a_value_error(url: str) -> None:
    for candidate in (url, "redis://" + url, "rediss://" + url, "unix://" + url):
        try:
            kwargs = parse_redis_url(candidate)
        except ValueError:
            continue
        assert isinstance(kwargs, dict)
        assert 0 <= kwargs.get("db", 0) < 2**31


@fuzz_timeout
@given(st.text(alphabet="QXab12#/?@:%&=", min_size=1, max_size=12))
@fuzz(100)
def test_a_raw_password_never_appears_in_an_error(tail: str) -> None:
    password = "QX" + tail  # "QX" appears in no message we write
    for url in (
        f"redis://:{password}@localhost:6379/0",
        f"redis://user:{password}@localhost",
        f"rediss://:{password}@localhost?ssl_cert_reqs=none",
        f"unix://:{password}@/tmp/redis.sock",
    ):
        try:
            parse_redis_url(url)
        except ValueError as exc:
            assert "QX" not in str(exc)


# -- the test servers' line protocols ------------------------------------------------------------


@fuzz_timeout
@given(st.binary(max_size=400), st.lists(st.integers(1, 50), max_size=10))
@fuzz(200)
def test_the_ping_servers_command_reader_gives_the_same_answer_however_split(
    data: bytes, cuts: list[int]
) -> None:
    def parse(chunks: list[bytes]) -> tuple[list[list[bytes]], bool]:
        reader = gtesting._CommandReader()
        commands: list[list[bytes]] = []
        try:
            for chunk in chunks:
                commands += reader.feed(chunk)
        except gtesting.ProtocolError:
            return commands, True
        return commands, False

    chunks, rest = [], data
    for cut in cuts:
        chunks.append(rest[:cut])
        rest = rest[cut:]
    chunks.append(rest)
    assert parse(chunks) == parse([data])


@pytest.fixture
def line_server_() -> Iterator[LineServer]:
    server = LineServer()
    yield server
    server.stop()


@fuzz_timeout
@given(st.binary(max_size=200).filter(lambda b: b"QUIT" not in b))
@fuzz(40)
def test_the_line_server_answers_every_line_and_then_the_next_ping(
    line_server_: LineServer, data: bytes
) -> None:
    sock = gevent.socket.create_connection((LOOPBACK, line_server_.port), timeout=2)
    try:
        sock.sendall(data + b"\nPING\n")
        lines = (data + b"\n").count(b"\n") + 1
        received = b""
        while received.count(b"\n") < lines:
            chunk = sock.recv(4096)
            assert chunk, "the server closed the connection"
            received += chunk
        assert received.endswith(b"PONG\n")
    finally:
        sock.close()
