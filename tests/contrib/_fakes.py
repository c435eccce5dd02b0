"""Fake and hostile servers for the contrib tests: in-process, on loopback, fast.

:class:`FakeSentinel` answers ``SENTINEL get-master-addr-by-name`` with whatever bytes a test
gives it (or a callable that writes them: trickling, closing mid-reply) and pushes raw
``+switch-master`` messages to its subscribers. :class:`HostileRedis` answers the first
command(s) on each connection from a script of raw replies and then behaves (``PING``,
``ECHO``), so a test can check that the next caller on the pool gets its own reply.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import gevent
import gevent.queue

from geventconnpool.contrib._resp import Limits, RedisConnectionError, RespReader
from tests.servers import LoopbackServer

_LIMITS = Limits(max_bulk_length=1 << 20, max_elements=64, max_depth=4, max_line_length=1 << 16)
SUBSCRIBED = b"*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n"
SUB_PONG = b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"

Answer = bytes | Callable[[Any], None]


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def array(*items: bytes) -> bytes:
    return b"*%d\r\n%s" % (len(items), b"".join(items))


def master_answer(host: bytes, port: bytes) -> bytes:
    """A well-formed ``get-master-addr-by-name`` answer."""
    return array(bulk(host), bulk(port))


def switch_message(payload: bytes) -> bytes:
    """A pushed ``+switch-master`` message carrying ``payload`` (well-formed or not)."""
    return array(bulk(b"message"), bulk(b"+switch-master"), bulk(payload))


def commands(sock: Any) -> Any:
    """The commands a client sends on ``sock`` (RESP arrays), until it leaves."""
    reader = RespReader(sock, _LIMITS, None)
    while True:
        try:
            command = reader.read()
        except RedisConnectionError:
            return
        if isinstance(command, list) and command:
            name = command[0].upper() if isinstance(command[0], bytes) else command[0]
            yield [name, *command[1:]]


class FakeSentinel(LoopbackServer):
    """A sentinel that answers the master question with ``answer`` and pushes messages."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.asked = 0
        self.subscribers: list[gevent.queue.Queue[bytes | None]] = []
        super().__init__()

    def push(self, raw: bytes) -> None:
        """Send ``raw`` to every current subscriber."""
        for queue in list(self.subscribers):
            queue.put(raw)

    def serve(self, sock: Any) -> None:
        queue: gevent.queue.Queue[bytes | None] = gevent.queue.Queue()
        pusher = None
        try:
            for command in commands(sock):
                if command[0] == b"SENTINEL" and command[1:2] == [b"get-master-addr-by-name"]:
                    self.asked += 1
                    self._notify()
                    if callable(self.answer):
                        self.answer(sock)
                    else:
                        sock.sendall(self.answer)
                elif command[:1] == [b"SUBSCRIBE"]:
                    sock.sendall(SUBSCRIBED)
                    pusher = gevent.spawn(self._push, sock, queue)
                    self.subscribers.append(queue)
                    self._notify()
                elif command[:1] == [b"PING"]:
                    sock.sendall(SUB_PONG if pusher is not None else b"+PONG\r\n")
                else:
                    sock.sendall(b"-ERR unknown command\r\n")
        finally:
            if queue in self.subscribers:
                self.subscribers.remove(queue)
            if pusher is not None:
                pusher.kill()

    @staticmethod
    def _push(sock: Any, queue: gevent.queue.Queue[bytes | None]) -> None:
        for raw in queue:
            if raw is None:
                sock.close()
                return
            sock.sendall(raw)


class HostileRedis(LoopbackServer):
    """Each connection answers its first commands with the next entries of ``script`` (raw
    bytes, or a callable writing to the socket: it may trickle or close), then behaves:
    ``PING`` -> ``+PONG``, ``ECHO x`` -> ``x``, anything else -> ``+OK``. With ``only``, the
    script answers only that command (e.g. ``b"GET"``: a client's handshake is left alone)."""

    def __init__(self, script: list[Answer] | None = None, only: bytes | None = None) -> None:
        self.script: list[Answer] = list(script or [])
        self.only = only  # the command name the script answers (default: any command)
        super().__init__()

    def serve(self, sock: Any) -> None:
        for command in commands(sock):
            if self.script and (self.only is None or command[0] == self.only):
                answer = self.script.pop(0)
                if callable(answer):
                    answer(sock)
                else:
                    sock.sendall(answer)
            elif command[:1] == [b"PING"]:
                sock.sendall(b"+PONG\r\n")
            elif command[:1] == [b"ECHO"] and len(command) == 2:
                sock.sendall(bulk(command[1]))
            else:
                sock.sendall(b"+OK\r\n")


def trickle(data: bytes, every: float) -> Callable[[Any], None]:
    """An answer that sends ``data`` one byte every ``every`` seconds."""

    def send(sock: Any) -> None:
        for i in range(len(data)):
            sock.sendall(data[i : i + 1])
            gevent.sleep(every)

    return send


def close_after(data: bytes) -> Callable[[Any], None]:
    """An answer that sends ``data`` and then closes the connection (mid-reply if partial)."""

    def send(sock: Any) -> None:
        sock.sendall(data)
        sock.close()

    return send


class InThread:
    """Runs a server (made by ``factory``) in its own OS thread with its own gevent hub: for
    clients whose sockets block the calling thread (redis-py without monkey-patching), which
    would otherwise never let an in-process gevent server answer."""

    def __init__(self, factory: Callable[[], LoopbackServer]) -> None:
        self._factory = factory
        self._ready = threading.Event()
        self._stop = False
        self.server: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the server thread did not start")

    def _run(self) -> None:
        self.server = self._factory()
        self._ready.set()
        try:
            while not self._stop:
                gevent.sleep(0.02)
        finally:
            self.server.stop()

    def stop(self) -> None:
        self._stop = True
        self._thread.join(10)
