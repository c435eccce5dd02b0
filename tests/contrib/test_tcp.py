"""TcpPool and SslPool against real TCP and TLS servers on loopback (certificates from trustme)."""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

import gevent
import gevent.select
import gevent.server
import pytest

from geventconnpool import ConnectionPool, PoolTimeout, PoolUnavailable
from geventconnpool.contrib.tcp import SslPool, TcpPool, probe_socket, probe_tls_socket
from tests.servers import LOOPBACK, LineServer, tls_contexts, wait_until

pytestmark = pytest.mark.timeout(30)


def ping(sock: Any) -> bytes:
    sock.sendall(b"PING\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(64)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def wait_readable(sock: Any, timeout: float = 5.0) -> None:
    """Wait until the kernel has bytes (or EOF) for ``sock``: an event, not a sleep."""
    readable, _, _ = gevent.select.select([sock.fileno()], [], [], timeout)
    assert readable, "socket never became readable"


# -- TcpPool ---------------------------------------------------------------------------------


def test_tcp_pool_serves_many_greenlets_over_few_sockets(
    line_server: LineServer, closing: list[Any]
) -> None:
    pool = TcpPool(LOOPBACK, line_server.port, size=3)
    closing.append(pool)
    pool.wait_ready(timeout=5)

    def work() -> bytes:
        with pool.get() as sock:
            return ping(sock)

    jobs = [gevent.spawn(work) for _ in range(30)]
    gevent.joinall(jobs, raise_error=True)
    assert [j.value for j in jobs] == [b"PONG\n"] * 30
    assert pool.stats().created == 3
    assert line_server.accepted == 3


def test_tcp_nodelay_is_on_and_keepalive_off_by_default(
    line_server: LineServer, closing: list[Any]
) -> None:
    pool = TcpPool(LOOPBACK, line_server.port, size=1)
    closing.append(pool)
    with pool.get() as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


@pytest.mark.skipif(not hasattr(socket, "TCP_KEEPIDLE"), reason="no TCP_KEEPIDLE here")
def test_tcp_keepalive_sets_idle_interval_count(
    line_server: LineServer, closing: list[Any]
) -> None:
    pool = TcpPool(
        LOOPBACK,
        line_server.port,
        tcp_keepalive=True,
        tcp_keepalive_idle=30,
        tcp_keepalive_interval=7,
        tcp_keepalive_count=4,
        size=1,
    )
    closing.append(pool)
    with pool.get() as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 7
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"host": ""}, "host"),
        ({"tcp_keepalive_idle": 0}, "tcp_keepalive_idle"),
        ({"tcp_keepalive_count": 1.5}, "tcp_keepalive_count"),
        ({"socket_timeout": -1}, "socket_timeout"),
    ],
)
def test_bad_socket_options_are_rejected_by_name(kwargs: dict[str, Any], word: str) -> None:
    args: dict[str, Any] = {"host": LOOPBACK, "port": 1, "size": 1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=word):
        TcpPool(**args)


def test_socket_closed_by_the_server_is_replaced_on_checkout(
    line_server: LineServer, closing: list[Any]
) -> None:
    pool = TcpPool(LOOPBACK, line_server.port, size=1, check_idle_after=0)
    closing.append(pool)
    with pool.get() as first:
        assert ping(first) == b"PONG\n"
    line_server.close_all()
    wait_readable(first)  # the FIN has arrived
    assert probe_socket(first) is False
    with pool.get() as sock:
        assert sock is not first
        assert ping(sock) == b"PONG\n"
    stats = pool.stats()
    assert stats.discarded.check == 1
    assert stats.created == 2


def test_connect_timeout_bounds_a_hanging_handshake(closing: list[Any]) -> None:
    # A server that accepts and never speaks: TCP connects, the TLS handshake hangs.
    held: list[Any] = []
    server = gevent.server.StreamServer(
        (LOOPBACK, 0), lambda s, a: held.append(s) or gevent.sleep(30)
    )
    server.start()
    try:
        pool = SslPool(
            LOOPBACK,
            server.server_port,
            size=1,
            connect_timeout=0.2,
            fail_fast=True,
            fail_fast_after=1,
        )
        closing.append(pool)
        with pytest.raises(PoolUnavailable) as info, pool.get(timeout=5):
            pass
        assert isinstance(info.value.__cause__, (TimeoutError, socket.timeout))
        assert pool.stats().connect_failures >= 1
        assert held, "the server saw the connect"
    finally:
        server.stop(timeout=0)
        for sock in held:
            sock.close()


# -- SslPool: verification -------------------------------------------------------------------


def test_tls_verifies_the_certificate_by_default(
    tls_server: tuple[LineServer, ssl.SSLContext], closing: list[Any]
) -> None:
    server, _ = tls_server
    pool = SslPool(LOOPBACK, server.port, size=1)  # system CAs: trustme's CA is not among them
    closing.append(pool)
    with pytest.raises(PoolTimeout) as info:
        pool.wait_ready(timeout=0.5)
    cause = info.value.__cause__
    assert isinstance(cause, ssl.SSLCertVerificationError), repr(cause)
    assert "certificate verify failed" in str(cause)
    assert server.handshakes == 0


def test_tls_verifies_the_host_name(
    tls_server: tuple[LineServer, ssl.SSLContext], closing: list[Any]
) -> None:
    server, client_ctx = tls_server
    pool = SslPool(
        LOOPBACK,
        server.port,
        client_ctx,
        server_hostname="db.example.org",
        size=1,
        fail_fast=True,
        fail_fast_after=1,
    )
    closing.append(pool)
    with pytest.raises(PoolUnavailable) as info, pool.get(timeout=5):
        pass
    cause = info.value.__cause__
    assert isinstance(cause, ssl.SSLCertVerificationError), repr(cause)
    assert "db.example.org" in str(cause)


def test_tls_with_a_trusted_ca_works(
    tls_server: tuple[LineServer, ssl.SSLContext], closing: list[Any]
) -> None:
    server, client_ctx = tls_server
    pool = SslPool(LOOPBACK, server.port, client_ctx, size=2)
    closing.append(pool)
    with pool.get() as sock:
        assert ping(sock) == b"PONG\n"
        assert sock.getpeercert()["subjectAltName"]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_verify_false_connects_and_warns_once(
    tls_server: tuple[LineServer, ssl.SSLContext],
    closing: list[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, _ = tls_server
    with caplog.at_level(logging.WARNING, logger="geventconnpool"):
        pool = SslPool(LOOPBACK, server.port, verify=False, size=2, name="insecure")
        closing.append(pool)
        for _ in range(3):
            with pool.get() as sock:
                assert ping(sock) == b"PONG\n"
        pool.invalidate()
        with pool.get() as sock:
            assert ping(sock) == b"PONG\n"
    warnings = [r for r in caplog.records if "verification is OFF" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert warnings[0].levelno == logging.WARNING
    assert "insecure" in warnings[0].getMessage()
    assert pool.handshakes >= 2  # several connections, one warning


def test_verify_false_needs_the_default_context() -> None:
    with pytest.raises(ValueError, match="verify=False"):
        SslPool(LOOPBACK, 1, ssl.create_default_context(), verify=False, size=1)


# -- SslPool: session resumption ---------------------------------------------------------------


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_reconnect_resumes_the_tls_session(tls_ca: Any, closing: list[Any], version: str) -> None:
    server_ctx, client_ctx = tls_contexts(tls_ca)
    client_ctx.maximum_version = client_ctx.minimum_version = getattr(ssl.TLSVersion, version)
    server = LineServer(server_ctx)
    try:
        pool = SslPool(LOOPBACK, server.port, client_ctx, size=1)
        closing.append(pool)
        with pool.get() as sock:
            assert sock.version() == version.replace("_", ".")
            assert not sock.session_reused
            assert ping(sock) == b"PONG\n"  # TLS 1.3: reading processes the session ticket
        for round_ in range(1, 4):
            pool.invalidate()  # failover-style: every connection is replaced
            with pool.get() as sock:
                assert ping(sock) == b"PONG\n"
                assert sock.session_reused, f"round {round_}: full handshake again"
        assert pool.resumed == 3
        assert pool.tls_stats().handshakes == 4
        assert pool.tls_stats().resumed == 3
        assert server.resumed == 3  # the server agrees
    finally:
        server.stop()


def test_without_a_saved_session_every_handshake_is_full(
    tls_server: tuple[LineServer, ssl.SSLContext], closing: list[Any]
) -> None:
    server, client_ctx = tls_server

    class NoResume(SslPool):
        def _close_connection(self, conn: Any) -> None:
            conn.close()  # never remembers the session

    pool = NoResume(LOOPBACK, server.port, client_ctx, size=1)
    closing.append(pool)
    for _ in range(3):
        with pool.get() as sock:
            ping(sock)
        pool.invalidate()
    assert server.handshakes == 3
    assert server.resumed == 0


# -- SslPool: the zero round-trip check under TLS 1.3 ------------------------------------------


def test_tls13_session_tickets_do_not_fail_the_checkout_check(
    tls_server: tuple[LineServer, ssl.SSLContext], closing: list[Any]
) -> None:
    server, client_ctx = tls_server
    opened: list[Any] = []

    class Recording(SslPool):
        def _on_connect(self, conn: Any) -> None:
            opened.append(conn)

    pool = Recording(LOOPBACK, server.port, client_ctx, size=1, check_idle_after=0)
    closing.append(pool)
    pool.wait_ready(timeout=5)
    (conn,) = opened
    assert conn.version() == "TLSv1.3"
    wait_readable(conn)  # the server's NewSessionTicket records, unread
    assert ConnectionPool._check(pool, conn) is False  # the plain socket probe would discard it
    with pool.get() as sock:  # check_idle_after=0: the TLS-aware check runs now
        assert sock is conn
        assert ping(sock) == b"PONG\n"
    stats = pool.stats()
    assert stats.discarded.check == 0
    assert stats.created == 1
    assert conn.session.has_ticket


def test_tls_connection_closed_by_the_server_fails_the_check(
    tls_server: tuple[LineServer, ssl.SSLContext], closing: list[Any]
) -> None:
    server, client_ctx = tls_server
    pool = SslPool(LOOPBACK, server.port, client_ctx, size=1, check_idle_after=0)
    closing.append(pool)
    with pool.get() as first:
        ping(first)
    server.close_all()
    server.wait_for(lambda: not server.open)
    wait_readable(first)
    assert probe_tls_socket(first) is False
    with pool.get() as sock:
        assert sock is not first
        assert ping(sock) == b"PONG\n"
    assert pool.stats().discarded.check == 1


def test_unsolicited_tls_data_fails_the_check(
    tls_server: tuple[LineServer, ssl.SSLContext], closing: list[Any]
) -> None:
    server, client_ctx = tls_server
    pool = SslPool(LOOPBACK, server.port, client_ctx, size=1)
    closing.append(pool)
    with pool.get() as sock:
        ping(sock)
        sock.sendall(b"PING\n")  # a reply nobody will read
    wait_readable(sock)
    assert probe_tls_socket(sock) is False


# -- construction, names and connect errors (issues 11.7 and 15.4) -------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "error", "word"),
    [
        (TcpPool, {"source_address": "bad"}, TypeError, "source_address"),
        (TcpPool, {"source_address": ("127.0.0.1", 70000)}, ValueError, "source_address"),
        (TcpPool, {"source_address": (1, 0)}, TypeError, "source_address"),
        (TcpPool, {"server_hostname": "db.example.org"}, ValueError, "server_hostname"),
        (SslPool, {"server_hostname": ""}, ValueError, "server_hostname"),
        (SslPool, {"server_hostname": b"x"}, TypeError, "server_hostname"),
        (SslPool, {"ssl_context": "x"}, TypeError, "ssl_context"),
        (TcpPool, {"sizee": 1}, TypeError, "sizee"),
    ],
)
def test_bad_arguments_are_rejected_at_construction(
    cls: Any, kwargs: dict[str, Any], error: type, word: str
) -> None:
    with pytest.raises(error, match=word):
        cls(LOOPBACK, 1, size=1, **kwargs)


def test_source_address_is_used(line_server: LineServer, closing: list[Any]) -> None:
    pool = TcpPool(LOOPBACK, line_server.port, size=1, source_address=("127.0.0.1", 0))
    closing.append(pool)
    with pool.get() as sock:
        assert sock.getsockname()[0] == "127.0.0.1"


def test_default_names_are_the_address(line_server: LineServer, closing: list[Any]) -> None:
    tcp = TcpPool(LOOPBACK, line_server.port, size=1)
    tls = SslPool(LOOPBACK, line_server.port, size=1, min_size=0)
    named = TcpPool(LOOPBACK, line_server.port, size=1, name="edge")
    closing.extend([tcp, tls, named])
    assert tcp.name == f"tcp 127.0.0.1:{line_server.port}"
    assert tls.name == f"tls 127.0.0.1:{line_server.port}"
    assert named.name == "edge"
    assert f"'tcp 127.0.0.1:{line_server.port}'" in repr(tcp)
    assert tcp.stats().name == tcp.name


def test_connect_errors_name_the_address_and_keep_their_class(
    closing: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    from tests.servers import free_port

    port = free_port()
    pool = TcpPool(LOOPBACK, port, size=1)
    closing.append(pool)
    with pytest.raises(PoolTimeout) as info:
        pool.wait_ready(timeout=0.5)
    cause = info.value.__cause__
    assert isinstance(cause, ConnectionRefusedError), repr(cause)
    assert f"127.0.0.1:{port}" in str(cause)
    assert isinstance(cause.__cause__, ConnectionRefusedError)  # the original
    assert isinstance(cause, pool.exc_classes)
    lines = [r.getMessage() for r in caplog.records if "connect failed" in r.getMessage()]
    assert lines, caplog.text
    assert all(f"127.0.0.1:{port}" in line for line in lines), lines


def test_unix_socket_connect_error_names_the_path(tmp_path: Any) -> None:
    from geventconnpool.contrib.tcp import SocketConnector

    path = str(tmp_path / "missing.sock")
    with pytest.raises(FileNotFoundError, match=r"missing\.sock") as info:
        SocketConnector(None, None, unix_socket=path).connect(1.0)
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert info.value.errno == info.value.__cause__.errno


def test_tls_verification_error_names_the_address(tls_ca: Any, closing: list[Any]) -> None:
    server_ctx, _ = tls_contexts(tls_ca)
    server = LineServer(server_ctx)
    try:
        pool = SslPool(LOOPBACK, server.port, size=1)  # the default context does not trust tls_ca
        closing.append(pool)
        wait_until(lambda: pool.stats().connect_failures >= 1, 5, "a failed TLS connect")
        with pytest.raises(PoolTimeout) as info:  # now, not after waiting out a timeout
            pool.wait_ready(timeout=0.01)
        cause = info.value.__cause__
        assert isinstance(cause, ssl.SSLCertVerificationError), repr(cause)
        assert f"127.0.0.1:{server.port}" in str(cause)
        assert cause.verify_code == info.value.__cause__.__cause__.verify_code  # type: ignore[union-attr]
    finally:
        server.stop()


def test_ipv6_addresses_are_bracketed(closing: list[Any]) -> None:
    pool = TcpPool("::1", 7000, size=1, min_size=0)
    closing.append(pool)
    assert pool.name == "tcp [::1]:7000"
