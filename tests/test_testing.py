"""Tests for geventconnpool.testing: the loopback PingServer and the FaultProxy."""

from __future__ import annotations

import time
from collections.abc import Iterator

import gevent
import pytest
from gevent import socket as gsocket

from geventconnpool.testing import FaultProxy, PingServer, free_port, open_fds, ping

RESP_PING = b"*1\r\n$4\r\nPING\r\n"
SHORT = 0.2  # how long "nothing arrives" is awaited


def connect(address: tuple[str, int]) -> gsocket.socket:
    """A gevent client socket connected to ``address``."""
    return gsocket.create_connection(address)


def recv_exactly(sock: gsocket.socket, n: int) -> bytes:
    """Read exactly ``n`` bytes, failing on EOF."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"EOF after {data!r}"
        data += chunk
    return data


def recv_until(sock: gsocket.socket, suffix: bytes) -> bytes:
    """Read byte by byte until the data read ends with ``suffix``, failing on EOF."""
    data = b""
    while not data.endswith(suffix):
        data += recv_exactly(sock, 1)
    return data


def recv_until_eof(sock: gsocket.socket) -> bytes:
    """Read everything until the peer closes."""
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def assert_silent(sock: gsocket.socket) -> None:
    """Assert nothing (not even EOF) arrives on ``sock`` for SHORT seconds."""
    with pytest.raises(gevent.Timeout), gevent.Timeout(SHORT):
        sock.recv(1)


@pytest.fixture
def server() -> Iterator[PingServer]:
    with PingServer() as srv:
        yield srv


@pytest.fixture
def proxy(server: PingServer) -> Iterator[FaultProxy]:
    with FaultProxy(server.address) as prx:
        yield prx


# -- PingServer ---------------------------------------------------------------------------


def test_ping_inline_and_resp(server: PingServer) -> None:
    assert server.address[0] == "127.0.0.1"
    assert server.address[1] > 0
    with connect(server.address) as sock:
        ping(sock)
        ping(sock, RESP_PING)
        ping(sock, b"ping\n")  # case-insensitive, bare LF like redis-cli's inline form
        # several pipelined commands in one write are answered in order
        sock.sendall(b"PING\r\n" + RESP_PING + b"\r\nPING\r\n")
        assert recv_exactly(sock, 21) == b"+PONG\r\n" * 3


def test_echo_and_other_commands(server: PingServer) -> None:
    with connect(server.address) as sock:
        sock.sendall(b"*2\r\n$4\r\nECHO\r\n$5\r\nhe\r\no\r\n")
        assert recv_exactly(sock, 11) == b"$5\r\nhe\r\no\r\n"
        sock.sendall(b"ECHO hi\r\n")
        assert recv_exactly(sock, 8) == b"$2\r\nhi\r\n"
        sock.sendall(b"PING hey\r\n")
        assert recv_exactly(sock, 9) == b"$3\r\nhey\r\n"
        sock.sendall(b"*3\r\n$6\r\nCLIENT\r\n$7\r\nSETINFO\r\n$8\r\nLIB-NAME\r\n")
        assert recv_exactly(sock, 5) == b"+OK\r\n"
        err = b"-ERR unknown command\r\n"
        sock.sendall(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n")
        hello = recv_until(sock, b"$7\r\nmodules\r\n*0\r\n")
        assert hello.startswith(b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n")
        assert b"$5\r\nproto\r\n:3\r\n" in hello
        sock.sendall(b"HELLO 4\r\n")
        assert recv_until(sock, b"\r\n").startswith(b"-NOPROTO")
        sock.sendall(b"FLUSHALL\r\n")
        assert recv_exactly(sock, len(err)) == err
        ping(sock)
        sock.sendall(b"QUIT\r\n")
        assert recv_until_eof(sock) == b"+OK\r\n"


def test_protocol_error_closes_connection(server: PingServer) -> None:
    with connect(server.address) as sock:
        sock.sendall(b"*1\r\n#4\r\nPING\r\n")
        assert recv_until_eof(sock).startswith(b"-ERR Protocol error")


def test_ping_raises_connection_error(server: PingServer) -> None:
    with connect(server.address) as sock, pytest.raises(ConnectionError, match="unexpected reply"):
        ping(sock, b"NOPE\r\n")
    with connect(server.address) as sock:
        ping(sock)
        server.drop_all()
        with pytest.raises(ConnectionError):  # EOF, or a reset if the PING races the close
            ping(sock)


def test_counters_and_peers(server: PingServer) -> None:
    assert (server.accepted, server.active, server.peers) == (0, 0, [])
    with connect(server.address) as a, connect(server.address) as b:
        ping(a)
        ping(b)
        assert server.accepted == 2
        assert server.active == 2
        assert server.peers == [a.getsockname(), b.getsockname()]
        a.sendall(b"QUIT\r\n")
        assert recv_until_eof(a) == b"+OK\r\n"
        ping(b)  # the server has handled QUIT on `a` (served in order per connection)
    server.drop_all()
    assert server.active == 0
    assert server.accepted == 2


def test_drop_all_gives_clients_eof(server: PingServer) -> None:
    with connect(server.address) as a, connect(server.address) as b:
        ping(a)
        ping(b)
        assert server.drop_all() == 2
        assert server.active == 0
        assert a.recv(10) == b""
        assert b.recv(10) == b""
        with connect(server.address) as c:  # still listening
            ping(c)
        assert server.accepted == 3


def test_restart_keeps_port(server: PingServer) -> None:
    address = server.address
    with connect(address) as old:
        ping(old)
        server.restart()
        assert server.address == address
        assert old.recv(10) == b""
    with connect(address) as new:
        ping(new)
    assert server.accepted == 2


def test_stop_is_idempotent_and_refuses(server: PingServer) -> None:
    with connect(server.address) as sock:
        ping(sock)
        server.stop()
        server.stop()
        assert sock.recv(10) == b""
    assert server.active == 0
    with pytest.raises(ConnectionRefusedError):
        connect(server.address)


def test_server_delay() -> None:
    with PingServer(delay=0.05) as srv, connect(srv.address) as sock:
        start = time.monotonic()
        ping(sock)
        assert time.monotonic() - start >= 0.05
        srv.delay = 0.0
        ping(sock)


def test_start_twice_and_address_before_start() -> None:
    srv = PingServer()
    with pytest.raises(RuntimeError):
        _ = srv.address
    with srv, pytest.raises(RuntimeError):
        srv.start()
    assert "PingServer" in repr(srv)


def test_redis_py_client_works() -> None:
    redis = pytest.importorskip("redis")

    def use_redis(port: int, protocol: int | None) -> tuple[object, object, object]:
        # redis-py uses blocking sockets: run it in a real thread so the hub keeps serving.
        kwargs = {} if protocol is None else {"protocol": protocol}
        client = redis.Redis(host="127.0.0.1", port=port, db=1, client_name="t", **kwargs)
        try:
            return client.ping(), client.echo("hi"), client.ping()
        finally:
            client.close()

    with PingServer() as srv:
        for protocol in (None, 2, 3):  # the installed version's default, RESP2, RESP3
            result = gevent.get_hub().threadpool.apply(use_redis, (srv.address[1], protocol))
            assert result == (True, b"hi", True)
        assert srv.accepted == 3


# -- FaultProxy ---------------------------------------------------------------------------


def test_proxy_forwards(server: PingServer, proxy: FaultProxy) -> None:
    assert proxy.address != server.address
    assert proxy.mode == "normal"
    with connect(proxy.address) as sock:
        ping(sock)
        big = b"x" * 200_000
        sock.sendall(b"*2\r\n$4\r\nECHO\r\n$%d\r\n%s\r\n" % (len(big), big))
        expected = b"$%d\r\n%s\r\n" % (len(big), big)
        assert recv_exactly(sock, len(expected)) == expected
        assert (proxy.accepted, proxy.active) == (1, 1)
        assert (server.accepted, server.active) == (1, 1)
        assert proxy.peers == [sock.getsockname()]
        sock.sendall(b"QUIT\r\n")  # server closes: the proxy closes the client side too
        assert recv_until_eof(sock) == b"+OK\r\n"
    with connect(proxy.address) as sock:
        ping(sock)
        assert proxy.accepted == 2


def test_proxy_closes_client_when_target_is_down(server: PingServer, proxy: FaultProxy) -> None:
    server.stop()
    with connect(proxy.address) as sock:
        assert sock.recv(10) == b""
    assert proxy.active == 0


def test_refuse_and_restore(server: PingServer, proxy: FaultProxy) -> None:
    address = proxy.address
    with connect(address) as existing:
        ping(existing)
        proxy.refuse()
        assert proxy.mode == "refuse"
        with pytest.raises(ConnectionRefusedError):
            connect(address)
        ping(existing)  # established connections are not affected
        proxy.restore()
        assert proxy.mode == "normal"
        assert proxy.address == address
        with connect(address) as sock:
            ping(sock)


def test_hang_accepts(server: PingServer, proxy: FaultProxy) -> None:
    with connect(proxy.address) as existing:
        ping(existing)
        proxy.hang_accepts()
        assert proxy.mode == "hang_accepts"
        with connect(proxy.address) as hung:  # connect succeeds...
            hung.sendall(b"PING\r\n")
            assert_silent(hung)  # ...but nothing ever comes back
            assert proxy.accepted == 2
            assert server.accepted == 1  # never forwarded
            ping(existing)  # established connections are not affected
            proxy.restore()  # the held connection is forwarded after all
            assert recv_exactly(hung, 7) == b"+PONG\r\n"


def test_blackhole_and_restore(server: PingServer, proxy: FaultProxy) -> None:
    with connect(proxy.address) as sock:
        ping(sock)
        proxy.blackhole()
        assert proxy.mode == "blackhole"
        sock.sendall(b"PING\r\n")
        assert_silent(sock)
        with connect(proxy.address) as new:
            new.sendall(b"PING\r\n")
            assert_silent(new)
            assert server.accepted == 1
            proxy.restore()
            assert recv_exactly(sock, 7) == b"+PONG\r\n"
            assert recv_exactly(new, 7) == b"+PONG\r\n"
        ping(sock)


def test_blackhole_holds_both_directions() -> None:
    # A raw target under the test's control shows exactly which bytes get through.
    with gsocket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with FaultProxy(listener.getsockname()) as prx, connect(prx.address) as client:
            upstream, _ = listener.accept()
            with upstream:
                upstream.sendall(b"a")
                assert recv_exactly(client, 1) == b"a"
                prx.blackhole()
                upstream.sendall(b"b")
                client.sendall(b"c")
                assert_silent(client)
                assert_silent(upstream)
                prx.restore()
                assert recv_exactly(client, 1) == b"b"
                assert recv_exactly(upstream, 1) == b"c"


def test_delay(server: PingServer, proxy: FaultProxy) -> None:
    with connect(proxy.address) as sock:
        ping(sock)
        proxy.delay(0.1)
        assert proxy.mode == "delay(0.1s)"
        start = time.monotonic()
        ping(sock)
        assert time.monotonic() - start >= 0.1
        proxy.delay(0)
        assert proxy.mode == "normal"
        ping(sock)
    with pytest.raises(ValueError):
        proxy.delay(-1)


def test_reset_all(server: PingServer, proxy: FaultProxy) -> None:
    with connect(proxy.address) as a, connect(proxy.address) as b:
        ping(a)
        ping(b)
        assert proxy.reset_all() == 2
        assert proxy.active == 0
        with pytest.raises(ConnectionResetError):
            a.recv(10)
        with pytest.raises(ConnectionResetError):
            ping(b)
    with connect(proxy.address) as c:
        ping(c)


def test_close_after_cuts_reply(server: PingServer, proxy: FaultProxy) -> None:
    with connect(proxy.address) as early:
        ping(early)
        proxy.close_after(10)  # counted from now on open connections
        assert proxy.mode == "close_after(10)"
        ping(early)  # 7 bytes: 3 left
        with pytest.raises(ConnectionError, match="closed by peer after b'\\+PO'"):
            ping(early)
    with connect(proxy.address) as sock, pytest.raises(ConnectionError):
        ping(sock, b"ECHO 0123456789\r\n")
    with connect(proxy.address) as sock:
        sock.sendall(b"ECHO 0123456789\r\n")
        assert recv_until_eof(sock) == b"$10\r\n01234"
    proxy.close_after(None)
    with connect(proxy.address) as sock:
        ping(sock)
        ping(sock)
    proxy.close_after(0)
    with connect(proxy.address) as sock:
        sock.sendall(b"PING\r\n")
        assert recv_until_eof(sock) == b""


def test_faults_combine_and_restore_clears_all(server: PingServer, proxy: FaultProxy) -> None:
    proxy.delay(0.01)
    proxy.close_after(100)
    proxy.refuse()
    assert proxy.mode == "refuse+delay(0.01s)+close_after(100)"
    proxy.hang_accepts()  # listens again
    assert proxy.mode == "hang_accepts+delay(0.01s)+close_after(100)"
    proxy.restore()
    assert proxy.mode == "normal"
    with connect(proxy.address) as sock:
        for _ in range(20):
            ping(sock)


def test_free_port_and_open_fds() -> None:
    port = free_port()
    assert 0 < port < 65536
    with PingServer(port=port) as srv:
        assert srv.address == ("127.0.0.1", port)
    before = open_fds()
    sock = gsocket.socket()
    assert open_fds() == before + 1
    sock.close()
    assert open_fds() == before


def cycle(hold: bool) -> None:
    """Start a server and a proxy, use every feature, optionally leave connections held, stop."""
    with PingServer() as srv, FaultProxy(srv.address) as prx:
        clients = [connect(prx.address) for _ in range(3)] + [connect(srv.address)]
        try:
            for sock in clients:
                ping(sock)
            prx.reset_all()
            srv.drop_all()
            prx.refuse()
            prx.restore()
            with connect(prx.address) as sock:
                ping(sock)
            srv.restart()
            if hold:  # leave held connections and blocked pumps behind for stop() to clean up
                clients.append(connect(prx.address))
                ping(clients[-1])
                prx.hang_accepts()
                clients.append(connect(prx.address))
                clients[-1].sendall(b"PING\r\n")
                assert_silent(clients[-1])  # accepted by the proxy and held at its gate
                prx.blackhole()
                clients[-2].sendall(b"PING\r\n")
                assert_silent(clients[-2])  # held inside a pump
        finally:
            for sock in clients:
                sock.close()


def test_no_fd_leak_after_stop() -> None:
    cycle(hold=False)  # warm up: the hub and its loop open descriptors on first use
    before = open_fds()
    cycle(hold=True)
    cycle(hold=False)
    assert open_fds() == before
