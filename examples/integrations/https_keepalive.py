"""HTTPS keep-alive: pool ``http.client.HTTPSConnection`` objects, no TLS handshake per call.

The use case of geventconnpool 0.2.1's README: a gevent web app calling an HTTPS API. Without
a pool every call opens a connection and does a full TLS handshake; with one, calls reuse open
connections. Self-contained: a local HTTPS server (gevent's pywsgi, certificate from
``trustme``) counts the handshakes. Needs: ``trustme`` (``pip install trustme``, or the ``test``
extra); no server. Run it from the repository root::

    python examples/integrations/https_keepalive.py
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # http.client and ssl become cooperative, as in a gevent web app

import http.client  # noqa: E402
import socket  # noqa: E402
import ssl  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.pywsgi  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/_needs.py
import _needs  # noqa: E402

_needs.package("trustme", "pip install trustme  (or: pip install -e '.[test]')")
import trustme  # noqa: E402

from geventconnpool import ConnectionPool, retry  # noqa: E402
from geventconnpool.contrib.tcp import probe_socket  # noqa: E402

HOST = "127.0.0.1"
REQUESTS = 200


class HTTPSPool(ConnectionPool[http.client.HTTPSConnection]):
    """Open HTTPS connections to one host; a dead idle one is replaced before hand-out."""

    exc_classes = (OSError, http.client.HTTPException)  # either means: connection unusable

    def __init__(self, host: str, port: int, context: ssl.SSLContext, **options: Any) -> None:
        self.host, self.port, self.context = host, port, context
        super().__init__(**options)

    def _new_connection(self) -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=10)
        conn.connect()  # TCP and the TLS handshake happen here, in the pool, not in a request
        return conn

    def _check(self, conn: http.client.HTTPSConnection) -> bool:
        return conn.sock is not None and probe_socket(conn.sock)  # no round trip


class CountingHandler(gevent.pywsgi.WSGIHandler):
    connections = 0  # one per TLS handshake: pywsgi makes a handler per accepted connection

    def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
        type(self).connections += 1
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as real HTTP servers do
        super().__init__(sock, *args, **kwargs)


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = b'{"ok": true}'
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "12")])
    return [body]


def get(conn: http.client.HTTPSConnection) -> bytes:
    conn.request("GET", "/api")
    response = conn.getresponse()
    body = response.read()  # read it all: the connection is then ready for the next request
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}")
    return body


def main() -> None:
    ca = trustme.CA()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(HOST).configure_cert(server_ctx)
    server = gevent.pywsgi.WSGIServer(
        (HOST, 0), app, ssl_context=server_ctx, handler_class=CountingHandler, log=None
    )
    server.start()
    port = server.server_port
    client_ctx = ssl.create_default_context()  # verifies the certificate and host name
    ca.configure_trust(client_ctx)

    def unpooled() -> bytes:
        conn = http.client.HTTPSConnection(HOST, port, context=client_ctx, timeout=10)
        try:
            return get(conn)
        finally:
            conn.close()

    start = time.monotonic()
    gevent.joinall([gevent.spawn(unpooled) for _ in range(REQUESTS)], raise_error=True)
    took = time.monotonic() - start
    print(
        f"without a pool: {REQUESTS} requests, {CountingHandler.connections} TLS handshakes, "
        f"{took:.2f}s"
    )

    CountingHandler.connections = 0
    with HTTPSPool(HOST, port, client_ctx, size=4) as pool:

        @retry(exc_classes=pool.exc_classes, max_failures=2)  # e.g. the server closed it
        def pooled() -> bytes:
            with pool.get(timeout=10) as conn:
                return get(conn)

        start = time.monotonic()
        gevent.joinall([gevent.spawn(pooled) for _ in range(REQUESTS)], raise_error=True)
        took = time.monotonic() - start
        print(
            f"with a pool of 4: {REQUESTS} requests, {CountingHandler.connections} TLS handshakes, "
            f"{took:.2f}s"
        )
    server.stop()


if __name__ == "__main__":
    main()
