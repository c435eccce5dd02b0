"""Loopback test servers for geventconnpool's tests, demo, benchmarks and users' own tests.

:class:`PingServer` is a tiny Redis-compatible PING/PONG server and :class:`FaultProxy` is a TCP
proxy that injects network faults (refused connects, hung accepts, blackholes, latency, resets,
truncated replies) on command, so pool behaviour under failure can be tested without a real
network.  Both build on :class:`LoopbackServer`, the base for a server of your own (override
:meth:`~LoopbackServer.serve`), over TCP or TLS.  Everything binds to loopback, runs in gevent
greenlets of the calling thread's hub, and stops cleanly without leaking file descriptors.
"""

from __future__ import annotations

import errno
import os
import ssl
import struct
import time
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

import gevent
import gevent.ssl
from gevent import socket as gsocket
from gevent.event import Event
from gevent.greenlet import Greenlet
from greenlet import getcurrent
from greenlet import greenlet as RawGreenlet

__all__ = ["FaultProxy", "LoopbackServer", "PingServer", "free_port", "open_fds", "ping"]

_RECV_SIZE = 65536
_MAX_INLINE = 64 * 1024  # longest inline command line accepted before replying a protocol error
_MAX_BULK = 1024 * 1024  # largest RESP bulk string accepted by PingServer
_MAX_ARGS = 1024  # most elements of one command array (Redis allows 1M; PING needs two)
_MAX_COMMAND = 2 * 1024 * 1024  # most bytes of one command, all its arguments together
_PONG = b"+PONG\r\n"
_OK = b"+OK\r\n"
_ERR_UNKNOWN = b"-ERR unknown command\r\n"
# accept() errors after which the listener is still usable; anything else means it was closed.
_TRANSIENT_ACCEPT_ERRNOS = frozenset(
    {errno.ECONNABORTED, errno.EPROTO, errno.EINTR, errno.EAGAIN, errno.EPERM}
)
_RESOURCE_ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class _Stream(Protocol):
    """The part of a connected socket that :func:`ping` needs (stdlib, gevent or SSL socket)."""

    def sendall(self, data: bytes, /) -> object: ...

    def recv(self, bufsize: int, /) -> bytes: ...


def open_fds() -> int:
    """Return how many file descriptors this process has open, for leak checks in tests.

    Reads ``/proc/self/fd`` (Linux) or ``/dev/fd`` (BSD, macOS); the descriptor used to list the
    directory is not counted.
    """
    for path in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(path)) - 1
        except FileNotFoundError:
            continue
    raise NotImplementedError("open_fds() needs /proc/self/fd or /dev/fd")


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now.

    Another process may take it before the caller binds it; prefer port 0 where an API allows.
    """
    with gsocket.socket(_family(host), gsocket.SOCK_STREAM) as sock:
        sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def ping(sock: _Stream, payload: bytes = b"PING\r\n") -> None:
    """Send ``payload`` (a PING) on a connected socket and read exactly ``+PONG\\r\\n``.

    Raises :class:`ConnectionError` (an :class:`OSError`) on EOF or on any other reply, so a
    pool's health check can treat every failure alike; the socket should be discarded after that.
    """
    sock.sendall(payload)
    reply = b""
    while len(reply) < len(_PONG):
        chunk = sock.recv(len(_PONG) - len(reply))
        if not chunk:
            raise ConnectionError(f"connection closed by peer after {reply!r} (expected +PONG)")
        reply += chunk
        if not _PONG.startswith(reply):
            raise ConnectionError(f"unexpected reply {reply!r} (expected +PONG)")


def _family(host: str) -> int:
    """Address family for a literal loopback host (IPv6 if it contains a colon)."""
    return int(gsocket.AF_INET6 if ":" in host else gsocket.AF_INET)


def _close_socket(sock: gsocket.socket, *, rst: bool = False) -> None:
    """Close ``sock``; with ``rst`` make the kernel send a TCP RST instead of a FIN."""
    if rst:
        try:
            sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    try:
        sock.close()
    except OSError:
        pass


def _kill_others(greenlets: list[Greenlet[..., None]]) -> None:
    """Kill ``greenlets`` (except the calling one) and wait until they are dead."""
    current = getcurrent()
    others: list[RawGreenlet] = [g for g in greenlets if g is not current and not g.dead]
    if others:
        gevent.killall(others, block=True)


class _ServerSide:
    """One accepted connection: the sockets and greenlets it owns, torn down together.

    Sockets are registered here *before* any greenlet could block, and :meth:`close` kills the
    greenlets first and then closes the sockets itself, so a greenlet killed before it ever ran
    (and whose ``finally`` therefore never runs) cannot leak a descriptor.
    """

    __slots__ = ("budget", "closing", "greenlets", "owner", "peer", "socks")

    def __init__(self, owner: LoopbackServer, sock: gsocket.socket, peer: tuple[str, int]) -> None:
        self.owner = owner
        self.peer = peer
        self.socks: list[gsocket.socket] = [sock]
        self.greenlets: list[Greenlet[..., None]] = []
        self.closing = False
        self.budget: int | None = None  # FaultProxy.close_after: server->client bytes left

    @property
    def client(self) -> gsocket.socket:
        """The accepted (client-facing) socket; the TLS one once the handshake is done."""
        return self.socks[0]

    def spawn(self, func: Callable[..., None], *args: object) -> None:
        """Start a greenlet that belongs to this connection (killed by :meth:`close`)."""
        g: Greenlet[..., None] = Greenlet(func, *args)
        self.greenlets.append(g)
        g.start()

    def close(self, *, rst: bool = False) -> None:
        """Kill this connection's greenlets, close its sockets and forget it; idempotent."""
        if self.closing:
            return
        self.closing = True
        try:
            _kill_others(self.greenlets)
        finally:
            for sock in self.socks:
                _close_socket(sock, rst=rst)
            self.owner._conns.pop(self, None)
            self.owner._notify()


class LoopbackServer:
    """A TCP (or TLS) server on loopback, serving each connection in its own greenlet: the base
    of :class:`PingServer`, :class:`FaultProxy` and servers of your own.

    Subclass it and override :meth:`serve`; ``start()`` (or ``with``) binds and accepts in the
    background, :meth:`stop` closes everything. It counts what a test asserts on: connections
    ``accepted``, open (:attr:`active`, :attr:`peers`), and with ``ssl_context`` (a server-side
    :class:`ssl.SSLContext`, stdlib or gevent's) TLS ``handshakes``, the ``resumed`` ones and
    ``failed_handshakes``. :meth:`wait_for` waits for a condition on
    those, woken by every accept, handshake and close rather than polling.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._host = host
        self._port = port
        self._listener: gsocket.socket | None = None
        self._acceptor: Greenlet[..., None] | None = None
        self._conns: dict[_ServerSide, None] = {}
        self._started = False
        self._changed = Event()  # set and cleared at once on every accept, handshake and close
        self.ssl_context = ssl_context
        self.accepted = 0
        """Connections accepted since :meth:`start` (keeps counting across restarts)."""
        self.handshakes = 0
        """TLS handshakes that succeeded (with ``ssl_context``)."""
        self.resumed = 0
        """Of :attr:`handshakes`, those that resumed a TLS session."""
        self.failed_handshakes = 0
        """TLS handshakes that failed; the connection was closed."""

    # -- public API -----------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The ``(host, port)`` the server listens on; known once started, kept after stop."""
        if self._port == 0:
            raise RuntimeError(f"{type(self).__name__} has not been started")
        return (self._host, self._port)

    @property
    def port(self) -> int:
        """The port of :attr:`address`."""
        return self.address[1]

    @property
    def active(self) -> int:
        """Number of accepted connections currently open."""
        return len(self._conns)

    @property
    def peers(self) -> list[tuple[str, int]]:
        """Client ``(ip, port)`` of every open connection, oldest first (a snapshot)."""
        return [conn.peer for conn in self._conns]

    def start(self) -> LoopbackServer:
        """Bind and start accepting in a background greenlet; returns at once."""
        if self._started:
            raise RuntimeError(f"{type(self).__name__} is already started")
        self._listen()
        self._started = True
        self.accepted = 0
        return self

    def stop(self) -> None:
        """Stop listening and close every accepted connection; idempotent."""
        self._started = False
        self._unlisten()
        self._close_conns()

    def drop_all(self) -> int:
        """Close every open connection now (the server keeps listening); returns how many."""
        return self._close_conns()

    def wait_for(self, predicate: Callable[[], object], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` is true, checking it after every accept, handshake and
        close; :class:`AssertionError` (naming the predicate) after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self!r} never matched {predicate} in {timeout:g}s")
            self._changed.wait(min(left, 0.5))

    def serve(self, sock: gsocket.socket) -> None:
        """Talk to one client on ``sock`` (TLS once handshaken) until it leaves; the
        connection is closed when this returns, and an :class:`OSError` ends it quietly."""
        raise NotImplementedError(f"{type(self).__name__} must override serve()")

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{self._host}:{self._port}" if self._port else "unbound"
        return f"<{type(self).__name__} {where} active={self.active} accepted={self.accepted}>"

    # -- internals ------------------------------------------------------------------------

    def _listen(self) -> None:
        """Bind (SO_REUSEADDR, so the same port can be rebound) and spawn the accept loop."""
        if self._listener is not None:
            return
        sock = gsocket.socket(_family(self._host), gsocket.SOCK_STREAM)
        try:
            sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._port))
            sock.listen(128)
        except BaseException:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        self._listener = sock
        self._acceptor = Greenlet(self._accept_loop, sock)
        self._acceptor.start()

    def _unlisten(self) -> None:
        """Stop the accept loop and close the listening socket (the port number is kept)."""
        acceptor, self._acceptor = self._acceptor, None
        listener, self._listener = self._listener, None
        try:
            if acceptor is not None:
                _kill_others([acceptor])
        finally:
            if listener is not None:
                listener.close()

    def _close_conns(self, *, rst: bool = False) -> int:
        """Close every open connection (RST if ``rst``); returns how many there were."""
        conns = list(self._conns)
        for conn in conns:
            conn.close(rst=rst)
        return len(conns)

    def _accept_loop(self, listener: gsocket.socket) -> None:
        """Accept connections forever; each is registered before anything can switch away."""
        while True:
            try:
                sock, addr = listener.accept()
            except OSError as exc:
                if exc.errno in _TRANSIENT_ACCEPT_ERRNOS:
                    continue
                if exc.errno in _RESOURCE_ACCEPT_ERRNOS:
                    gevent.sleep(0.05)  # out of descriptors: back off instead of spinning
                    continue
                return  # listener closed
            self.accepted += 1
            conn = _ServerSide(self, sock, (str(addr[0]), int(addr[1])))
            self._conns[conn] = None
            try:
                sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
            except OSError:
                pass
            conn.spawn(self._run_conn, conn)
            self._notify()

    def _notify(self) -> None:
        """Wake every :meth:`wait_for`."""
        self._changed.set()
        self._changed.clear()

    def _run_conn(self, conn: _ServerSide) -> None:
        """Serve one connection and close it when serving ends (unless already being closed)."""
        try:
            if self._handshake(conn):
                self._serve(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def _handshake(self, conn: _ServerSide) -> bool:
        """With ``ssl_context``: the server side of the TLS handshake, counted; False if it
        failed. The TLS socket takes over the accepted one before the handshake can switch
        away, so that :meth:`_ServerSide.close` closes it even if this greenlet is killed."""
        if self.ssl_context is None:
            return True
        # gevent's SSLSocket, whatever the context (as gevent's own wrap_socket does): the
        # handshake yields to other greenlets with a stdlib context too.
        tls = gevent.ssl.SSLSocket(
            sock=conn.client,
            server_side=True,
            do_handshake_on_connect=False,
            _context=self.ssl_context,
        )
        conn.socks[0] = tls
        try:
            tls.do_handshake()
        except (OSError, ValueError):
            self.failed_handshakes += 1
            self._notify()
            return False
        self.handshakes += 1
        self.resumed += bool(tls.session_reused)
        self._notify()
        return True

    def _serve(self, conn: _ServerSide) -> None:
        """Serve ``conn``: :meth:`serve` on its socket, unless a subclass needs more of it."""
        self.serve(conn.client)


class ProtocolError(ValueError):
    """A client sent something :class:`PingServer` will not parse; it is dropped."""


class _CommandReader:
    """Incremental, bounded parser of Redis commands (RESP arrays or inline lines).

    Every byte is scanned once, however the input is split across reads, and nothing grows past
    the limits: a line (inline command or header) longer than ``MAX_INLINE`` bytes, an array of
    more than ``MAX_ARGS`` elements, a bulk string over ``MAX_BULK`` bytes, or a command over
    ``MAX_COMMAND`` bytes in all is a :class:`ProtocolError` at once, before the bytes it claims
    are waited for. So an absurd multibulk count or an endless line costs neither memory nor
    event-loop time.
    """

    __slots__ = ("_args", "_buf", "_count", "_pos", "_scan", "_start")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._start = 0  # where the current command begins in _buf
        self._pos = 0  # parsed up to here
        self._scan = 0  # no line end before here (resumes a search across reads)
        self._count: int | None = None  # elements of the current array, once its header is read
        self._args: list[bytes] = []

    def feed(self, data: bytes) -> list[list[bytes]]:
        """Add received bytes; return the commands now complete (possibly none)."""
        self._buf += data
        commands: list[list[bytes]] = []
        while True:
            command = self._next()
            if command is None:
                break
            commands.append(command)
        if self._start:  # drop what was consumed, once per read rather than per command
            del self._buf[: self._start]
            self._pos -= self._start
            self._scan = max(0, self._scan - self._start)
            self._start = 0
        return commands

    def _line(self, terminator: bytes) -> bytes | None:
        """The line at ``_pos`` (without its terminator), or None until it is complete."""
        end = self._buf.find(terminator, max(self._pos, self._scan))
        if end < 0:
            if len(self._buf) - self._pos > _MAX_INLINE:
                raise ProtocolError(
                    "too big inline request"
                    if self._count is None
                    else "too big bulk or multibulk header"
                )
            self._scan = max(self._pos, len(self._buf) - len(terminator) + 1)
            return None
        if end - self._pos > _MAX_INLINE:
            raise ProtocolError("too big inline request")
        line = bytes(self._buf[self._pos : end])
        self._pos = end + len(terminator)
        self._scan = self._pos
        return line

    def _next(self) -> list[bytes] | None:
        if self._pos >= len(self._buf):
            return None
        if self._count is None:
            if self._buf[self._pos] != ord("*"):
                line = self._line(b"\n")
                if line is None:
                    return None
                return self._done(line.split())
            header = self._line(b"\r\n")
            if header is None:
                return None
            self._count = _length(header[1:], _MAX_ARGS, "multibulk length")
        while len(self._args) < self._count:
            arg = self._bulk()
            if arg is None:
                return None
            self._args.append(arg)
        return self._done(self._args)

    def _bulk(self) -> bytes | None:
        if self._pos >= len(self._buf):
            return None
        if self._buf[self._pos] != ord("$"):
            raise ProtocolError(f"expected '$', got {chr(self._buf[self._pos])!r}")
        mark = self._pos
        header = self._line(b"\r\n")
        if header is None:
            return None
        size = _length(header[1:], _MAX_BULK, "bulk length")
        if self._pos + size - self._start > _MAX_COMMAND:
            raise ProtocolError("command too big")
        if len(self._buf) < self._pos + size + 2:
            self._pos = self._scan = mark  # re-read the short header when the body is here
            return None
        if self._buf[self._pos + size : self._pos + size + 2] != b"\r\n":
            raise ProtocolError("bulk string not terminated by CRLF")
        arg = bytes(self._buf[self._pos : self._pos + size])
        self._pos += size + 2
        self._scan = self._pos
        return arg

    def _done(self, args: list[bytes]) -> list[bytes]:
        self._start = self._pos
        self._count = None
        self._args = []
        return args


def _length(digits: bytes, limit: int, what: str) -> int:
    """A RESP length field: an int in 0..``limit`` (``-1``/negatives are refused)."""
    if not digits.isdigit() or len(digits) > 10:
        raise ProtocolError(f"invalid {what}")
    value = int(digits)
    if value > limit:
        raise ProtocolError(f"invalid {what}")
    return value


def _bulk(value: bytes) -> bytes:
    """Encode ``value`` as a RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _hello(args: list[bytes], resp3: bool) -> tuple[bytes, bool]:
    """Reply to ``HELLO [protover ...]`` and return the connection's new RESP3 flag."""
    if len(args) > 1:
        if args[1] not in (b"2", b"3"):
            return b"-NOPROTO unsupported protocol version\r\n", resp3
        resp3 = args[1] == b"3"
    fields = [
        (b"server", _bulk(b"redis")),
        (b"version", _bulk(b"7.2.0")),
        (b"proto", b":%d\r\n" % (3 if resp3 else 2)),
        (b"id", b":1\r\n"),
        (b"mode", _bulk(b"standalone")),
        (b"role", _bulk(b"master")),
        (b"modules", b"*0\r\n"),
    ]
    header = b"%%%d\r\n" % len(fields) if resp3 else b"*%d\r\n" % (2 * len(fields))
    return header + b"".join(_bulk(key) + value for key, value in fields), resp3


class PingServer(LoopbackServer):
    """Embedded PING/PONG server on loopback, a stand-in for redis-server in tests and benchmarks.

    Speaks the Redis inline form (``PING\\r\\n``) and RESP arrays (``*1\\r\\n$4\\r\\nPING\\r\\n``),
    both answered ``+PONG\\r\\n``, so the same client works against it and a real redis-server.
    Also: ``PING msg`` and ``ECHO msg`` reply a bulk string; ``QUIT`` replies ``+OK`` and closes;
    ``HELLO [2|3] ...`` replies the server-info map (RESP3 clients such as redis-py 8 start with
    it; credentials are accepted unchecked); ``SELECT``, ``CLIENT SETNAME`` and ``CLIENT SETINFO``
    reply ``+OK`` (what redis-py sends while connecting); anything else replies
    ``-ERR unknown command``.  Pipelined commands are answered in order.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, delay: float = 0.0) -> None:
        super().__init__(host, port)
        self.delay = delay
        """Seconds to wait before each reply; may be changed while running."""

    def start(self) -> PingServer:
        """Bind and start serving in background greenlets; returns self at once."""
        super().start()
        return self

    def __enter__(self) -> PingServer:
        return self.start()

    def restart(self) -> None:
        """Stop (closing every connection), then listen again on the same port.

        ``accepted`` keeps counting, so a test can see clients reconnect.
        """
        self._unlisten()
        self._close_conns()
        self._listen()
        self._started = True

    def _serve(self, conn: _ServerSide) -> None:
        sock = conn.client
        reader = _CommandReader()
        resp3 = False
        while True:
            data = sock.recv(_RECV_SIZE)
            if not data:
                return
            try:
                commands = reader.feed(data)
            except ProtocolError as exc:
                sock.sendall(b"-ERR Protocol error: %s\r\n" % str(exc).encode())
                return
            for args in commands:
                if not args:
                    continue  # empty inline line or empty array: Redis ignores it
                if args[0].upper() == b"HELLO":
                    reply, resp3 = _hello(args, resp3)
                    close = False
                else:
                    reply, close = self._reply(args)
                if self.delay > 0:
                    gevent.sleep(self.delay)
                sock.sendall(reply)
                if close:
                    return

    @staticmethod
    def _reply(args: list[bytes]) -> tuple[bytes, bool]:
        """The reply to one command, and whether to close the connection after sending it."""
        name = args[0].upper()
        nargs = len(args)
        if name == b"PING" and nargs <= 2:
            return (_PONG if nargs == 1 else _bulk(args[1])), False
        if name == b"ECHO":
            if nargs != 2:
                return b"-ERR wrong number of arguments for 'echo' command\r\n", False
            return _bulk(args[1]), False
        if name == b"QUIT":
            return _OK, True
        if name == b"SELECT" and nargs == 2:
            return _OK, False
        if name == b"CLIENT" and nargs >= 2 and args[1].upper() in (b"SETNAME", b"SETINFO"):
            return _OK, False
        return _ERR_UNKNOWN, False


class FaultProxy(LoopbackServer):
    """Fault-injecting TCP proxy on loopback in front of ``target`` ``(host, port)``.

    Forwards bytes both ways (two pump greenlets per connection; when either side closes, both
    are closed) and injects faults on command: :meth:`refuse`, :meth:`hang_accepts`,
    :meth:`blackhole`, :meth:`delay`, :meth:`reset_all` and :meth:`close_after`.
    :meth:`restore` clears every fault.  Fault methods may be combined (e.g. delay + close_after).
    """

    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.target = target
        self._refusing = False
        self._new_gate = Event()  # set: new connections are forwarded; clear: they hang
        self._new_gate.set()
        self._flow = Event()  # set: bytes flow; clear: every pump holds its data (blackhole)
        self._flow.set()
        self._delay = 0.0
        self._close_after: int | None = None

    def start(self) -> FaultProxy:
        """Bind and start proxying in background greenlets; returns self at once."""
        if self._started:
            raise RuntimeError("FaultProxy is already started")
        if self._refusing:
            self._started = True
            self.accepted = 0
        else:
            super().start()
        return self

    def __enter__(self) -> FaultProxy:
        return self.start()

    @property
    def mode(self) -> str:
        """The current faults as a short name for logs, e.g. ``normal`` or ``blackhole+delay``."""
        parts: list[str] = []
        if self._refusing:
            parts.append("refuse")
        if not self._flow.is_set():
            parts.append("blackhole")
        elif not self._new_gate.is_set():
            parts.append("hang_accepts")
        if self._delay > 0:
            parts.append(f"delay({self._delay:g}s)")
        if self._close_after is not None:
            parts.append(f"close_after({self._close_after})")
        return "+".join(parts) or "normal"

    def refuse(self) -> None:
        """Stop listening so new connects get ECONNREFUSED; existing connections keep working.

        The port number is kept and rebound (SO_REUSEADDR) by :meth:`restore` or any fault that
        needs a listener, such as :meth:`hang_accepts`.
        """
        self._refusing = True
        self._unlisten()

    def hang_accepts(self) -> None:
        """Accept new connections but never forward them: no byte ever comes back.

        They are held, not closed: :meth:`restore` connects them to the target after all.
        """
        self._new_gate.clear()
        self._relisten()

    def blackhole(self) -> None:
        """:meth:`hang_accepts`, and stall existing connections too.

        Bytes in both directions are held (not delivered) until :meth:`restore`, so reads on the
        client side block, as when a peer vanishes without a FIN or RST.
        """
        self._new_gate.clear()
        self._flow.clear()
        self._relisten()

    def delay(self, seconds: float) -> None:
        """Wait ``seconds`` before forwarding each chunk, in both directions (0 turns it off)."""
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        self._delay = seconds

    def reset_all(self) -> int:
        """Reset every current connection with a TCP RST on both sides; returns how many."""
        return self._close_conns(rst=True)

    def close_after(self, nbytes: int | None) -> None:
        """Cut each connection's server->client direction after ``nbytes`` more bytes.

        Once that many bytes were delivered (counted from this call for open connections, from
        the connect for new ones) the connection is closed, both sides; None turns it off.
        Lets a test cut a reply mid-way.
        """
        if nbytes is not None and nbytes < 0:
            raise ValueError("nbytes must be >= 0 or None")
        self._close_after = nbytes
        for conn in self._conns:
            conn.budget = nbytes

    def restore(self) -> None:
        """Clear every fault: listen again if refusing, forward held connections and data."""
        self._delay = 0.0
        self.close_after(None)
        self._new_gate.set()
        self._flow.set()
        self._relisten(force=True)

    # -- internals ------------------------------------------------------------------------

    def _relisten(self, *, force: bool = False) -> None:
        """Listen again after :meth:`refuse` (only while started)."""
        if self._refusing or force:
            self._refusing = False
            if self._started:
                self._listen()

    def _serve(self, conn: _ServerSide) -> None:
        """Wait for the new-connection gate, connect to the target and start both pumps."""
        conn.budget = self._close_after
        self._new_gate.wait()
        host, port = self.target
        upstream = gsocket.socket(_family(host), gsocket.SOCK_STREAM)
        conn.socks.append(upstream)  # owned by conn before connect() can switch away
        upstream.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
        upstream.connect((host, port))
        client = conn.client
        conn.spawn(self._pump, conn, client, upstream, False)
        conn.spawn(self._pump, conn, upstream, client, True)

    def _run_conn(self, conn: _ServerSide) -> None:
        # The set-up greenlet must not close the connection when it returns normally: the pumps
        # now own it.  It closes it only if connecting to the target failed (or it was killed).
        done = False
        try:
            self._serve(conn)
            done = True
        except OSError:
            pass
        finally:
            if not done:
                conn.close()

    def _pump(
        self, conn: _ServerSide, src: gsocket.socket, dst: gsocket.socket, to_client: bool
    ) -> None:
        """Copy ``src`` to ``dst`` chunk by chunk, applying faults; closes both sides at the end."""
        try:
            while True:
                data = src.recv(_RECV_SIZE)
                if not data:
                    return
                self._flow.wait()
                if self._delay > 0:
                    gevent.sleep(self._delay)
                    self._flow.wait()
                budget = conn.budget if to_client else None
                if budget is not None and len(data) >= budget:
                    dst.sendall(data[:budget])
                    return
                if budget is not None:
                    conn.budget = budget - len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()
