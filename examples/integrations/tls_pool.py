"""SslPool: verified TLS connections, reused; a reconnect resumes the TLS session.

Self-contained: makes a throwaway CA and certificate with ``trustme`` and serves a line
protocol (``PING`` -> ``PONG``) over TLS on 127.0.0.1. Needs: ``trustme`` (in the ``test``
extra); no server. Run it from the repository root::

    pip install -e '.[test]'   # trustme
    python examples/integrations/tls_pool.py
"""

from __future__ import annotations

import ssl
import sys
from pathlib import Path
from typing import Any

import gevent
import gevent.server
import gevent.ssl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/_needs.py
import _needs

_needs.package("trustme", "pip install trustme  (or: pip install -e '.[test]')")
import trustme  # noqa: E402

from geventconnpool import PoolUnavailable  # noqa: E402
from geventconnpool.contrib.tcp import SslPool  # noqa: E402

HOST = "127.0.0.1"


class TlsPingServer:
    """PING -> PONG over TLS; counts handshakes as the server sees them."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.handshakes = self.resumed = 0
        self.server = gevent.server.StreamServer((HOST, 0), self.handle)
        self.server.start()
        self.port = self.server.server_port

    def handle(self, sock: Any, _address: Any) -> None:
        try:
            tls = self.context.wrap_socket(sock, server_side=True)
        except OSError:
            return  # a client that did not trust us
        self.handshakes += 1
        self.resumed += tls.session_reused
        with tls, tls.makefile("rwb") as f:
            for line in f:
                f.write(b"PONG\n" if line == b"PING\n" else b"ERR\n")
                f.flush()


def ping(pool: SslPool) -> bytes:
    with pool.get(timeout=5) as sock:
        sock.sendall(b"PING\n")
        return sock.recv(16)


def main() -> None:
    ca = trustme.CA()
    server_ctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(HOST, "localhost").configure_cert(server_ctx)
    server = TlsPingServer(server_ctx)

    client_ctx = ssl.create_default_context()  # verifies certificate and host name
    ca.configure_trust(client_ctx)  # trust our throwaway CA (a real client trusts the system's)

    with SslPool(HOST, server.port, client_ctx, size=4, name="tls") as pool:
        pool.wait_ready(timeout=5)
        jobs = [gevent.spawn(ping, pool) for _ in range(100)]
        gevent.joinall(jobs, raise_error=True)
        pongs = sum(j.value == b"PONG\n" for j in jobs)
        print(f"100 calls, {pongs} PONGs, over {pool.stats().created} verified TLS connections")

        first = pool.tls_stats()
        pool.invalidate()  # e.g. a failover: every connection is replaced
        gevent.joinall([gevent.spawn(ping, pool) for _ in range(20)], raise_error=True)
        pool.wait_ready(timeout=5)
        now = pool.tls_stats()
        print(
            f"after invalidate(): {now.handshakes - first.handshakes} new handshakes, "
            f"{now.resumed - first.resumed} resumed the saved session "
            f"(the server saw {server.resumed} resumed)"
        )

    untrusted = SslPool(HOST, server.port, size=1, fail_fast=True, fail_fast_after=1)
    with untrusted:
        try:
            with untrusted.get(timeout=5):
                pass
        except PoolUnavailable as exc:
            cause = exc.__cause__
            print(f"untrusted certificate: {type(exc).__name__} caused by {cause!r}")
    server.server.stop()


if __name__ == "__main__":
    main()
