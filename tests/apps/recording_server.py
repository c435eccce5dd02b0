"""A PING server in its own process that records which process opened each connection.

Clients name themselves with ``CLIENT SETNAME pid-<pid>`` (:class:`NamedSocketPool` does it in
``_on_connect``); ``PEERS`` answers, as JSON, every connection the server has seen and its name.
Tests that fork need the server outside the forking process: a forked child would otherwise run
the server's greenlets too. Run as ``python -m tests.apps.recording_server``: it prints
``PORT <n>`` and serves until its standard input is closed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import gevent
from gevent import socket
from greenlet import getcurrent

from geventconnpool import ConnectionPool
from geventconnpool.testing import PingServer, ping

ROOT = Path(__file__).resolve().parents[2]


def _addr(address: tuple[Any, ...]) -> str:
    return f"{address[0]}:{address[1]}"


class RecordingServer(PingServer):
    """PingServer that remembers each connection's ``CLIENT SETNAME`` and answers ``PEERS``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.names: dict[str, list[str]] = {}  # "ip:port" -> every name it was given, in order
        self._serving: dict[Any, str] = {}  # serving greenlet -> its connection's "ip:port"
        self._control: set[str] = set()  # connections that asked PEERS (not clients)
        self.said: dict[str, list[str]] = {}  # "ip:port" -> every command it sent, in order
        self.ended: list[str] = []  # connections the client closed (FIN) or QUIT, in order

    def _serve(self, conn: Any) -> None:
        me = getcurrent()
        self._serving[me] = _addr(conn.peer)
        try:
            super()._serve(conn)
        finally:
            peer = self._serving.pop(me, None)
            if peer is not None and peer not in self._control:
                self.ended.append(peer)

    def _reply(self, args: list[bytes]) -> tuple[bytes, bool]:  # type: ignore[override]
        peer = self._serving.get(getcurrent(), "?")
        command = args[0].upper()
        if command != b"PEERS":
            self.said.setdefault(peer, []).append(b" ".join(args).decode(errors="replace"))
        if command == b"CLIENT" and len(args) == 3 and args[1].upper() == b"SETNAME":
            self.names.setdefault(peer, []).append(args[2].decode())
        elif command == b"PEERS":
            self._control.add(peer)
            report = {
                "accepted": self.accepted - len(self._control),
                "open": sorted(p for p in map(_addr, self.peers) if p != peer),
                "names": self.names,
                "said": self.said,
                "ended": self.ended,
            }
            body = json.dumps(report).encode()
            return b"$%d\r\n%s\r\n" % (len(body), body), False
        return PingServer._reply(args)


class NamedSocketPool(ConnectionPool[socket.socket]):
    """Sockets to ``address`` that introduce themselves as ``pid-<pid of the opening process>``."""

    def __init__(self, *args: Any, address: tuple[str, int], **kwargs: Any) -> None:
        self.address = address
        super().__init__(*args, **kwargs)

    def _new_connection(self) -> socket.socket:
        return socket.create_connection(self.address)

    def _on_connect(self, conn: socket.socket) -> None:
        conn.sendall(b"CLIENT SETNAME pid-%d\r\n" % os.getpid())
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = conn.recv(16)
            if not chunk:
                raise ConnectionError("closed during CLIENT SETNAME")
            reply += chunk
        if reply != b"+OK\r\n":
            raise ConnectionError(f"CLIENT SETNAME answered {reply!r}")

    def _keepalive(self, conn: socket.socket) -> None:
        ping(conn)


def local_port(conn: socket.socket) -> str:
    """The ``ip:port`` the server sees for ``conn``."""
    return _addr(conn.getsockname())


class RemoteServer:
    """Starts :class:`RecordingServer` in a child process and queries it."""

    def __init__(self, timeout: float = 20.0) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.apps.recording_server"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self._proc.poll() is not None:
                self.close()
                raise RuntimeError(f"recording server did not start: {line!r}")
            socket.wait_read(fd, left)
            chunk = os.read(fd, 64)
            if not chunk:
                self.close()
                raise RuntimeError(f"recording server exited: {line!r}")
            line += chunk
        self.address = ("127.0.0.1", int(line.split()[1]))

    def peers(self) -> dict[str, Any]:
        """``{"accepted": n, "open": ["ip:port", ...], "names": {"ip:port": [name, ...]},
        "said": {"ip:port": [command, ...]}, "ended": ["ip:port", ...]}``."""
        with gevent.Timeout(10), socket.create_connection(self.address) as sock:
            sock.sendall(b"PEERS\r\n")
            data = b""
            while b"\r\n" not in data:
                data += sock.recv(65536)
            header, _, rest = data.partition(b"\r\n")
            size = int(header[1:])
            while len(rest) < size + 2:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("PEERS reply cut short")
                rest += chunk
        result: dict[str, Any] = json.loads(rest[:size])
        return result

    def close(self) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def __enter__(self) -> RemoteServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def main() -> None:
    server = RecordingServer().start()
    print("PORT", server.address[1], flush=True)
    while True:  # until the parent closes our stdin
        socket.wait_read(0)
        if not os.read(0, 4096):
            break
    server.stop()


if __name__ == "__main__":
    main()
