"""The servers chaos runs talk to: the embedded PING server and a real redis-server (Debian's)."""

from __future__ import annotations

import os
import shutil
import time
from typing import Protocol

import gevent
from gevent import socket as gsocket
from gevent import subprocess

from geventconnpool.testing import PingServer, free_port, ping

REDIS_CANDIDATES = ("/usr/bin/redis-server", "/usr/local/bin/redis-server")
START_DEADLINE = 10.0  # seconds for redis-server to accept connections after it is started


class Backend(Protocol):
    """A server on 127.0.0.1 that can be stopped and started again on the same port."""

    name: str

    @property
    def address(self) -> tuple[str, int]: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


def in_ci() -> bool:
    """True under CI (``CI=true``), where a missing redis-server is a failure, not a skip."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def find_redis_server() -> str | None:
    """Path of the redis-server binary, or None if it is not installed."""
    found = shutil.which("redis-server")
    if found:
        return found
    for path in REDIS_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return None


class PingBackend:
    """The embedded PING server (in this process)."""

    name = "ping"

    def __init__(self) -> None:
        self.server = PingServer()
        self.server.start()

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def close(self) -> None:
        self.server.stop()


class RedisBackend:
    """A real redis-server on 127.0.0.1 and a free port: no persistence, stopped by SIGTERM."""

    name = "redis"

    def __init__(self, binary: str | None = None) -> None:
        path = binary or find_redis_server()
        if path is None:
            raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
        self.binary = path
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def start(self) -> None:
        """Start redis-server and wait until it answers PING."""
        if self.process is not None:
            return
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--maxclients", "10000"]
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_DEADLINE
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise RuntimeError(f"redis-server exited at start with status {code}")
            try:
                with gsocket.create_connection(self.address, timeout=1.0) as sock:
                    ping(sock, b"*1\r\n$4\r\nPING\r\n")
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not answer within {START_DEADLINE}s")
                gevent.sleep(0.02)

    def stop(self) -> None:
        """Stop redis-server (SIGTERM; SIGKILL after 5 s): every client sees its socket close."""
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        self.stop()


def make_backend(name: str) -> PingBackend | RedisBackend:
    """``ping`` or ``redis``; raises FileNotFoundError when redis-server is missing."""
    if name == "ping":
        return PingBackend()
    if name == "redis":
        return RedisBackend()
    raise ValueError(f"unknown backend {name!r} (ping or redis)")
