"""ThriftPool never crosses streams: interrupted calls poison their client, a forked child cannot
use its parent's client, and hostile replies are refused within limits and one deadline."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import gevent.select
import gevent.server
import pytest

thriftpy2 = pytest.importorskip("thriftpy2")

from thriftpy2.protocol.exc import TProtocolException  # noqa: E402
from thriftpy2.transport import TTransportException  # noqa: E402

from geventconnpool import PoolTimeout  # noqa: E402
from geventconnpool.contrib.thrift import ThriftLimits, ThriftPool  # noqa: E402
from tests.servers import LOOPBACK, ScriptedServer, ThriftServer, free_port  # noqa: E402

pytestmark = pytest.mark.timeout(30)

kv_thrift = thriftpy2.load(str(Path(__file__).with_name("kv.thrift")), module_name="kv_thrift")


class Handler:
    """echo() answers at once, or after 0.3 s for a text starting with "slow"."""

    def __init__(self) -> None:
        self.echoed: list[str] = []

    def ping(self) -> str:
        return "pong"

    def echo(self, text: str) -> str:
        self.echoed.append(text)
        if text.startswith("slow"):
            gevent.sleep(0.3)
        return f"echo-{text}"


@pytest.fixture(params=[False, True], ids=["buffered", "framed"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[ThriftServer, Handler, bool]]:
    handler = Handler()
    server = ThriftServer(kv_thrift.KV, handler, framed=request.param)
    try:
        yield server, handler, request.param
    finally:
        server.stop()


def make_pool(served: Any, closing: list[Any], **options: Any) -> ThriftPool:
    server, _, framed = served
    options.setdefault("size", 1)
    pool = ThriftPool(kv_thrift.KV, LOOPBACK, server.port, framed=framed, **options)
    closing.append(pool)
    return pool


# -- interrupted calls ---------------------------------------------------------------------------


def test_a_caught_timeout_poisons_the_client(served: Any, closing: list[Any]) -> None:
    pool = make_pool(served, closing)
    with pool.get() as client:
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(0.05):
                client.echo("slow-A1")
        assert client.in_sync is False
        with pytest.raises(TTransportException, match="interrupted") as info:
            client.echo("A2")  # would read "echo-slow-A1" as its own reply
        assert isinstance(info.value, pool.exc_classes)
        with pytest.raises(TTransportException):
            client.echo("A3")  # and stays unusable
    with pool.get() as other:
        assert other is not client
        assert other.echo("B") == "echo-B"
    assert pool.stats().discarded.total == 1


def test_a_caught_timeout_then_release_never_reaches_the_next_holder(
    served: Any, closing: list[Any]
) -> None:
    pool = make_pool(served, closing, check_idle_after=None)  # no checkout probe to help
    with pool.get() as client:
        with contextlib.suppress(gevent.Timeout):
            with gevent.Timeout(0.05):
                client.echo("slow-A1")
    with pool.get() as client_b:
        assert client_b is not client
        assert client_b.echo("B") == "echo-B"
    assert pool.stats().discarded.release == 1


def test_proxy_holder_b_never_gets_the_reply_meant_for_a(served: Any, closing: list[Any]) -> None:
    _, handler, _ = served
    pool = make_pool(served, closing, check_idle_after=None)
    kv = pool.proxy(retries=0)
    with contextlib.suppress(gevent.Timeout):
        with gevent.Timeout(0.05):
            kv.echo("slow-A2")
    results = [gevent.spawn(kv.echo, name) for name in ("B", "C")]
    gevent.joinall(results, raise_error=True)
    assert [g.value for g in results] == ["echo-B", "echo-C"]
    assert pool.stats().discarded.total == 1
    assert handler.echoed[0] == "slow-A2"


def test_killed_caller_leaves_no_late_reply(served: Any, closing: list[Any]) -> None:
    pool = make_pool(served, closing, check_idle_after=None)
    kv = pool.proxy(retries=0)
    sent = gevent.event.Event()

    def caller() -> None:
        with pool.get() as client:
            sent.set()
            client.echo("slow-killed")

    g = gevent.spawn(caller)
    assert sent.wait(5)
    gevent.sleep(0.01)  # the request is on the wire, the reply not yet
    g.kill()
    assert kv.echo("after") == "echo-after"


# -- fork ---------------------------------------------------------------------------------------


def _libc_fork() -> int:
    import ctypes

    return int(ctypes.CDLL(None, use_errno=True).fork())


def _in_child(fork: Callable[[], int], body: Callable[[], Any]) -> Any:
    r, w = os.pipe()
    pid = fork()
    if pid == 0:
        try:
            os.close(r)
            try:
                report: dict[str, Any] = {"ok": True, "result": body()}
            except BaseException as exc:
                report = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            os.write(w, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    with gevent.Timeout(20):
        while True:
            gevent.socket.wait_read(r)
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
    os.close(r)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    return json.loads(data)


@pytest.mark.parametrize("fork", [os.fork, _libc_fork], ids=["os.fork", "no-at-fork-hooks"])
def test_a_client_used_in_a_forked_child_raises_before_any_io(
    served: Any, closing: list[Any], fork: Callable[[], int]
) -> None:
    _, handler, _ = served
    pool = make_pool(served, closing)
    with pool.get() as client:
        assert client.echo("parent-1") == "echo-parent-1"

        def child() -> dict[str, Any]:
            old_fd = client.fileno()
            spare = socket.socket()
            os.dup2(spare.fileno(), old_fd)  # the child reuses the number for another socket
            result: dict[str, Any] = {"error": None}
            try:
                client.echo("child")
            except TTransportException as exc:
                result["error"] = str(exc)
            client.close()  # only forgotten: the socket now using that number stays open
            result["detached"] = client.fileno() == -1  # nor closed later, by the collector
            try:
                os.fstat(old_fd)
                result["reused_fd_open"] = True
            except OSError:
                result["reused_fd_open"] = False
            spare.close()
            return result

        report = _in_child(fork, child)
        assert report["ok"], report
        assert report["result"]["error"] is not None
        assert "forked" in report["result"]["error"]
        assert report["result"]["reused_fd_open"] is True, report
        assert report["result"]["detached"] is True, report
        assert client.echo("parent-2") == "echo-parent-2"  # the parent's session is intact
    assert handler.echoed == ["parent-1", "parent-2"]  # not one byte from the child
    assert pool.stats().discarded.total == 0


# -- hostile servers: limits and one deadline ---------------------------------------------------


def reply(name: bytes, body: bytes, *, framed: bool, mtype: int = 2) -> bytes:
    """A binary-protocol reply message (strict header) around a struct ``body``."""
    message = struct.pack("!Ii", 0x80010000 | mtype, len(name)) + name + struct.pack("!i", 0)
    message += body
    return struct.pack("!i", len(message)) + message if framed else message


@pytest.fixture
def hostile() -> Iterator[Callable[[Any], ScriptedServer]]:
    made: list[ScriptedServer] = []

    def make(payload: Any) -> ScriptedServer:
        server = ScriptedServer(payload)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


def _string_field(size: int) -> bytes:
    return b"\x0b" + struct.pack("!hi", 0, size)  # field 0 (success), string of ``size`` bytes


def _list_field(etype: bytes, count: int) -> bytes:
    return b"\x0f" + struct.pack("!h", 0) + etype + struct.pack("!i", count)


def _nested_lists(depth: int) -> bytes:
    return b"\x0f" + struct.pack("!h", 0) + (b"\x0f" + struct.pack("!i", 1)) * depth


HOSTILE = {
    "2 GB string": (b"echo", _string_field(2**31 - 1)),
    "negative string": (b"echo", _string_field(-5)),
    "2 billion strings": (b"recorded", _list_field(b"\x0b", 2**31 - 1)),
    "900k strings in 1 KB": (b"recorded", _list_field(b"\x0b", 900_000)),
    "negative list": (b"recorded", _list_field(b"\x0b", -7)),
    "100 000 nested lists": (b"recorded", _nested_lists(100_000)),
    "unknown type": (b"echo", b"\x63" + struct.pack("!h", 0)),
    "reply to another call": (b"ping", _string_field(4) + b"pong\x00"),
}  # fmt: skip


@pytest.mark.parametrize("framed", [False, True], ids=["buffered", "framed"])
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_reply_is_refused_at_once(
    hostile: Any, closing: list[Any], framed: bool, case: str
) -> None:
    name, body = HOSTILE[case]
    payload = reply(name, body, framed=False)
    if framed:  # the frame claims what it holds; the hostile part is inside
        payload = struct.pack("!i", len(payload)) + payload
    server = hostile(payload)
    pool = ThriftPool(
        kv_thrift.KV,
        LOOPBACK,
        server.port,
        framed=framed,
        size=1,
        max_message_size=1024 * 1024 if case == "900k strings in 1 KB" else 16 * 1024 * 1024,
    )
    closing.append(pool)
    method = "echo" if name == b"echo" or case == "reply to another call" else "recorded"
    args = ("x",) if method == "echo" else ()
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        with gevent.Timeout(5):  # a reader that waits for the claimed bytes would hang here
            with pytest.raises(TProtocolException):
                with pool.get() as client:
                    getattr(client, method)(*args)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - t0 < 2
    assert peak < 4 * 1024 * 1024, peak  # nothing near the claimed size was allocated
    assert pool.stats().discarded.error == 1  # a protocol error is a connection error


def test_framed_frame_over_max_message_size_is_refused_at_once(
    hostile: Any, closing: list[Any]
) -> None:
    server = hostile(struct.pack("!i", 2**31 - 1) + b"\x80\x01")
    pool = ThriftPool(kv_thrift.KV, LOOPBACK, server.port, framed=True, size=1)
    closing.append(pool)
    with gevent.Timeout(5):
        with pytest.raises(TProtocolException, match="max_message_size"):
            with pool.get() as client:
                client.echo("x")
    assert pool.stats().discarded.error == 1


def test_limits_are_overridable(served: Any, closing: list[Any]) -> None:
    pool = make_pool(served, closing, string_length_limit=10)
    assert pool.limits == ThriftLimits(string_length_limit=10)
    kv = pool.proxy(retries=0)
    assert kv.echo("abcde") == "echo-abcde"  # 10 bytes
    with pytest.raises(TProtocolException, match="string_length_limit"):
        kv.echo("abcdef")  # 11 bytes
    assert pool.stats().discarded.error == 1
    assert kv.echo("ok") == "echo-ok"


def test_a_trickling_server_times_out_after_one_deadline(hostile: Any, closing: list[Any]) -> None:
    message = reply(b"echo", _string_field(1000) + b"x" * 1000 + b"\x00", framed=False)

    def trickle(sock: Any) -> None:
        for i in range(len(message)):
            sock.sendall(message[i : i + 1])
            gevent.sleep(0.1)

    server = hostile(trickle)
    pool = ThriftPool(kv_thrift.KV, LOOPBACK, server.port, size=1, socket_timeout=0.5)
    closing.append(pool)
    t0 = time.monotonic()
    with pytest.raises(TTransportException, match="timed out"):
        with pool.get() as client:
            client.echo("x")
    took = time.monotonic() - t0
    assert 0.4 < took < 1.5, took  # per recv() it would never time out
    assert pool.stats().discarded.error == 1


@pytest.mark.parametrize("glued", [True, False], ids=["same-segment", "later"])
def test_bytes_after_the_reply_poison_the_client(
    hostile: Any, closing: list[Any], glued: bool
) -> None:
    one = reply(b"echo", _string_field(2) + b"ok\x00", framed=False)
    split = [one, one[:5], one[5:]]

    def twice(sock: Any) -> None:  # a reply, then an unsolicited one in two pieces
        for chunk in split:
            sock.sendall(chunk)
            gevent.sleep(0.05)

    server = hostile(one + one if glued else twice)
    pool = ThriftPool(kv_thrift.KV, LOOPBACK, server.port, size=1, check_idle_after=None)
    closing.append(pool)
    with pool.get() as client:
        assert client.echo("x") == "ok"
        if not glued:  # wait for the unsolicited bytes (an event, not a sleep)
            assert gevent.select.select([client.fileno()], [], [], 5)[0]
        with pytest.raises(TTransportException, match="nobody asked for"):
            client.echo("y")  # never the unsolicited "ok" as its own reply
    assert pool.stats().discarded.release == 1


# -- construction ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "word"),
    [
        ({"server_hostname": "kv.example.org"}, ValueError, "server_hostname"),
        ({"server_hostname": "", "tls": True}, ValueError, "server_hostname"),
        ({"max_message_size": 0}, ValueError, "max_message_size"),
        ({"string_length_limit": "big"}, TypeError, "string_length_limit"),
        ({"container_length_limit": 1.5}, TypeError, "container_length_limit"),
        ({"framed": "yes"}, TypeError, "framed"),
        ({"ssl_context": "x"}, TypeError, "ssl_context"),
    ],
)
def test_bad_arguments_are_rejected_by_name(kwargs: dict[str, Any], error: type, word: str) -> None:
    with pytest.raises(error, match=word):
        ThriftPool(kv_thrift.KV, LOOPBACK, 9090, size=1, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "word"),
    [
        ({"timeout": "soon"}, TypeError, "timeout"),
        ({"timeout": -1}, ValueError, "timeout"),
        ({"retries": "2"}, TypeError, "retries"),
        ({"retry_interval": None}, TypeError, "retry_interval"),
        ({"retry_max_interval": "1"}, TypeError, "retry_max_interval"),
    ],
)
def test_bad_proxy_arguments_are_rejected_by_name(
    served: Any, closing: list[Any], kwargs: dict[str, Any], error: type, word: str
) -> None:
    pool = make_pool(served, closing)
    with pytest.raises(error, match=word):
        pool.proxy(**kwargs)


def test_default_name_is_the_address(served: Any, closing: list[Any]) -> None:
    server, _, _ = served
    pool = make_pool(served, closing)
    assert pool.name == f"thrift 127.0.0.1:{server.port}"
    assert f"thrift 127.0.0.1:{server.port}" in repr(pool)
    assert make_pool(served, closing, name="kv").name == "kv"


def test_connect_error_names_the_address(closing: list[Any], caplog: Any) -> None:
    port = free_port()
    pool = ThriftPool(kv_thrift.KV, LOOPBACK, port, size=1)
    closing.append(pool)
    with pytest.raises(PoolTimeout) as info:
        pool.wait_ready(timeout=0.5)
    cause = info.value.__cause__
    assert isinstance(cause, ConnectionRefusedError), repr(cause)
    assert f"127.0.0.1:{port}" in str(cause)
    assert isinstance(cause.__cause__, ConnectionRefusedError)
    lines = [r.getMessage() for r in caplog.records if "connect failed" in r.getMessage()]
    assert lines and all(f"127.0.0.1:{port}" in line for line in lines), lines


@pytest.mark.parametrize("framed", [False, True], ids=["buffered", "framed"])
def test_over_tls_with_server_hostname(tls_ca: Any, closing: list[Any], framed: bool) -> None:
    from tests.servers import tls_contexts

    server_ctx, client_ctx = tls_contexts(tls_ca, "kv.test")
    handler = Handler()
    server = ThriftServer(kv_thrift.KV, handler, framed=framed, ssl_context=server_ctx)
    try:
        pool = ThriftPool(
            kv_thrift.KV,
            LOOPBACK,
            server.port,
            framed=framed,
            ssl_context=client_ctx,
            server_hostname="kv.test",
            size=2,
            socket_timeout=5,
        )
        closing.append(pool)
        kv = pool.proxy()
        jobs = [gevent.spawn(kv.echo, "x" * 20000 + str(i)) for i in range(50)]  # > 1 TLS record
        gevent.joinall(jobs, raise_error=True)
        assert [j.value for j in jobs] == [f"echo-{'x' * 20000}{i}" for i in range(50)]
        assert pool.tls_stats().handshakes == 2
        assert pool.stats().discarded.total == 0
    finally:
        server.stop()


def test_large_replies_within_the_limits_arrive_whole(served: Any, closing: list[Any]) -> None:
    pool = make_pool(served, closing, socket_timeout=10)
    big = "é" * 1_500_000  # 3 MB of UTF-8
    with pool.get() as client:
        assert client.echo(big) == f"echo-{big}"
        assert client.echo("small") == "echo-small"
    assert pool.stats().discarded.total == 0
