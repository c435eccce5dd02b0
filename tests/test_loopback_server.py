"""``geventconnpool.testing.LoopbackServer``, the one base of the in-process test servers
(``PingServer``, ``FaultProxy``, tests/servers.py's ``LineServer``, ``ThriftServer``,
``ScriptedServer``): a subclass overrides ``serve(sock)``; the base counts accepts, open
connections and TLS handshakes, wakes ``wait_for`` on each change, and leaks no socket, not even
when it is stopped in the middle of a TLS handshake.
"""

from __future__ import annotations

import ssl
from typing import Any

import gevent
import gevent.ssl
import pytest
from gevent import socket as gsocket

from geventconnpool.testing import LoopbackServer, open_fds

from .servers import CI, tls_contexts


@pytest.fixture(scope="module")
def ca() -> Any:
    """A trustme CA (the test extra; a failure in CI, a skip elsewhere when missing)."""
    trustme = __import__("trustme") if CI else pytest.importorskip("trustme")
    return trustme.CA()


class Echo(LoopbackServer):
    """Sends back every chunk it receives."""

    def serve(self, sock: gsocket.socket) -> None:
        while data := sock.recv(4096):
            sock.sendall(data)


def fds_after_warm_up() -> int:
    """:func:`open_fds` once the hub has opened what it keeps for its first socket."""
    with Echo() as warm:
        gsocket.create_connection(warm.address).close()
        warm.wait_for(lambda: warm.accepted == 1 and warm.active == 0)
    return open_fds()


def test_a_subclass_serves_with_serve_and_the_base_counts_and_wakes_wait_for() -> None:
    before = fds_after_warm_up()
    with Echo() as server:
        assert server.port == server.address[1] > 0
        clients = [gsocket.create_connection(server.address) for _ in range(2)]
        server.wait_for(lambda: server.active == 2)
        assert server.accepted == 2 and len(server.peers) == 2
        clients[0].sendall(b"hello")
        assert clients[0].recv(5) == b"hello"
        clients[0].close()  # the client leaves: serve() returns, the server closes its side
        server.wait_for(lambda: server.active == 1)
        assert server.drop_all() == 1
        assert clients[1].recv(1) == b""  # a FIN from the server
        clients[1].close()
        assert server.active == 0 and server.accepted == 2
    assert open_fds() == before


def test_wait_for_names_what_never_happened() -> None:
    with Echo() as server, pytest.raises(AssertionError, match="never matched"):
        server.wait_for(lambda: server.active == 1, timeout=0.05)


@pytest.mark.integration  # trustme, from the test extra
def test_tls_handshakes_are_counted_full_resumed_and_failed(ca: Any) -> None:
    server_ctx, _ = tls_contexts(ca)
    client_ctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # gevent's: the handshake yields
    ca.configure_trust(client_ctx)
    client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # a session to resume after one read
    with Echo(ssl_context=server_ctx) as server:
        session = None
        for _ in range(2):
            raw = gsocket.create_connection(server.address)
            with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as tls:
                tls.sendall(b"ping")
                assert tls.recv(4) == b"ping"
                session = tls.session
        plain = gsocket.create_connection(server.address)
        plain.sendall(b"not a TLS client hello\r\n\r\n")
        server.wait_for(lambda: server.failed_handshakes == 1)
        plain.close()
        assert (server.handshakes, server.resumed, server.accepted) == (2, 1, 3)


@pytest.mark.integration  # trustme, from the test extra
def test_stopped_in_the_middle_of_a_tls_handshake_it_leaks_no_socket(ca: Any) -> None:
    server_ctx, _ = tls_contexts(ca)
    before = fds_after_warm_up()
    server = Echo(ssl_context=server_ctx).start()
    silent = gsocket.create_connection(server.address)  # connects, never says hello
    server.wait_for(lambda: server.active == 1)
    gevent.sleep(0)  # the connection's greenlet is now in the handshake, waiting to read
    server.stop()  # kills it there; an unclosed socket would be a ResourceWarning (an error)
    assert silent.recv(1) == b""
    silent.close()
    assert server.handshakes == 0 and server.active == 0
    assert open_fds() == before
