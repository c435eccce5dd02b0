"""The 0.2.1 README's examples, run on Python 3: the 2014 code, ported to Python 3 syntax only.

It shows that code written for geventconnpool 0.2.1 runs unchanged. What differs from the 2014
text, and why:

* Python 3: bytes on the wire (``b"..."``); ``socket.error`` is still there (an alias of OSError).
* The peer: the 2014 examples talk to an imaginary server at ``('test.example.org', 2485)``;
  here they talk to a PING server (the embedded one, or ``--host``/``--port``), so ``"PING\\n"``
  and ``"PONG\\n"`` (or ``"OK"``) become Redis's ``b"PING\\r\\n"`` and ``b"+PONG\\r\\n"``
  (``recv(5)`` and ``recv(2)``: ``recv(7)``), and ``c.select('INBOX')`` (IMAP) the same PING.
* Times: ``retry(interval=2)`` becomes ``interval=0.02`` and ``keepalive=30`` becomes
  ``keepalive=0.2`` so that the script runs in seconds.
* Added around the 2014 code, marked ``# (demo)``: the server dropping every connection, so the
  retries and the keepalive have something to do, checks, prints and ``pool.close()``.
* Not run: the STARTTLS/login and boto examples, which need services this script does not have.

Run it from the repository root::

    python examples/legacy_021.py                  # against an embedded PING server
    python examples/legacy_021.py --port 6379      # against a real Redis server

Needs: the package alone (no extra, no server: it embeds a PING server); with ``--host``/``--port``
a server that answers ``PING`` with ``+PONG``, such as Redis (``redis-server --port 6379``).
"""

import argparse
import contextlib
import functools
import imaplib
import logging
import sys
import time

import _needs  # (demo) examples/_needs.py: one-line errors naming the fix
import gevent
from gevent import socket

from geventconnpool import ConnectionPool, retry
from geventconnpool.testing import FaultProxy, PingServer

# (demo) the server: embedded, or a real one behind a proxy that can cut its connections
parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--host", help="a PING server (e.g. Redis) instead of the embedded one")
parser.add_argument("--port", type=int, help="its port (default 6379)")
args = parser.parse_args()
backend = contextlib.ExitStack()
if args.host is None and args.port is None:
    server = backend.enter_context(PingServer())
    ADDRESS, drop_all = server.address, server.drop_all
else:
    _needs.ping_server((args.host or "127.0.0.1", args.port or 6379))  # (demo)
    proxy = backend.enter_context(FaultProxy((args.host or "127.0.0.1", args.port or 6379)))
    ADDRESS, drop_all = proxy.address, proxy.reset_all
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="log: %(message)s")
logging.getLogger("geventconnpool").setLevel(logging.WARNING)


def wait_until(what, done):  # (demo)
    deadline = time.monotonic() + 10
    while not done():
        if time.monotonic() > deadline:
            sys.exit(f"error: timed out waiting until {what}")
        gevent.sleep(0.01)


# ---- Quickstart ----------------------------------------------------------------------------


class MyPool(ConnectionPool):
    def _new_connection(self):
        return socket.create_connection(ADDRESS)


pool = MyPool(20)  # always keep 20 connections open

with pool.get() as c:
    c.send(b"PING\r\n")
    if c.recv(7) != b"+PONG\r\n":
        raise socket.error("something awful happened")
print("ok: quickstart, a PING through MyPool(20)")  # (demo)
pool.close()  # (demo)

pool = MyPool(20, exc_classes=(socket.error, imaplib.IMAP4.error))

# ---- Automatic retrying --------------------------------------------------------------------


@retry
def senddata(data):
    with pool.get() as c:
        c.send(data)
        if c.recv(7) != b"+PONG\r\n":
            raise socket.error("something awful happened")


log = logging.getLogger()


@retry(exc_classes=(socket.error, imaplib.IMAP4.error), logger=log, max_failures=5, interval=0.02)
def senddata_logged(data):
    with pool.get() as c:
        c.send(data)
        if c.recv(7) != b"+PONG\r\n":
            raise socket.error("something awful happened")


myretry = functools.partial(
    retry, exc_classes=(socket.error, imaplib.IMAP4.error), logger=log, interval=0.02
)


@myretry
def senddata_partial(data):
    with pool.get() as c:
        c.send(data)
        if c.recv(7) != b"+PONG\r\n":
            raise socket.error("something awful happened")


for func in (senddata, senddata_logged, senddata_partial):  # (demo)
    with pool.get() as c:  # this connection is now the warmest: the next one handed out
        c.send(b"PING\r\n")
        c.recv(7)
    errors_before = pool.stats().discarded.error
    print(f"(the server drops its {drop_all()} connection(s) to the pool)")
    func(b"PING\r\n")
    retried = pool.stats().discarded.error - errors_before
    print(f"ok: {func.__name__} succeeded after the drop, retried {retried} time(s)")
pool.close()  # (demo)

# ---- Keepalive -----------------------------------------------------------------------------


class MyPool(ConnectionPool):
    def _new_connection(self):
        s = socket.create_connection(ADDRESS)
        s._sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return s


pool = MyPool(2)
with pool.get() as c:  # (demo)
    assert c.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
print("ok: TCP keepalive on through s._sock.setsockopt")  # (demo)
pool.close()  # (demo)


class MyPool(ConnectionPool):
    def _new_connection(self):
        return socket.create_connection(ADDRESS)

    def _keepalive(self, c):
        c.send(b"PING\r\n")
        if c.recv(7) != b"+PONG\r\n":
            raise socket.error


pool = MyPool(20, keepalive=0.2)

wait_until("the pool is full", lambda: pool.stats().idle == 20)  # (demo)
print(f"(the server drops all {drop_all()} connections)")  # (demo)
wait_until(
    "the keepalive replaced every connection",
    lambda: pool.stats().discarded.keepalive == 20 and pool.stats().idle == 20,
)
print("ok: _keepalive found the 20 dropped connections; the pool replaced them")  # (demo)
pool.close()  # (demo)
backend.close()  # (demo)
