"""The server the children talk to: a real redis-server, or the embedded PING server.

Both run in their own process, pinned to their own CPU when :func:`cpu_plan` says so, on
127.0.0.1 and a free port. Both can be stopped and started again on the same port (``recovery``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
APT_HINT = "sudo apt-get install -y redis-server"


@dataclass(frozen=True)
class CpuPlan:
    """Where the server and the clients run: ``taskset`` prefixes, and what was decided."""

    server: tuple[str, ...]
    client: tuple[str, ...]
    note: str

    @property
    def pinned(self) -> bool:
        """Whether server and client are pinned to different CPUs."""
        return bool(self.server)


def cpu_plan(enabled: bool = True) -> CpuPlan:
    """Pin the server to one CPU and the clients to another, if taskset and 2 CPUs exist."""
    taskset = shutil.which("taskset")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not enabled:
        return CpuPlan((), (), "not pinned (--no-pin)")
    if taskset is None:
        return CpuPlan((), (), "not pinned: taskset not found")
    if len(cpus) < 2:
        return CpuPlan((), (), f"not pinned: only {len(cpus)} CPU available")
    server, client = cpus[0], cpus[1]
    return CpuPlan(
        (taskset, "-c", str(server)),
        (taskset, "-c", str(client)),
        f"pinned with taskset: server on CPU {server}, clients on CPU {client}",
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout: float) -> bool:
    """Poll until something accepts connections on the port (or the timeout passes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.002)
    return False


class Server:
    """Common interface: ``start()``, ``stop()``, ``restart(down_s)``, ``close()``."""

    kind = ""
    port = 0
    version = ""

    def start(self) -> None:
        """Start serving (on the same port as before, if there was one)."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop serving: every client connection is closed."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop for good and reap the process."""
        self.stop()

    def restart(self, down_s: float) -> tuple[float, float]:
        """Stop, stay down ``down_s`` seconds, start; monotonic times it went down and came back."""
        t_down = time.monotonic()
        self.stop()
        time.sleep(max(0.0, t_down + down_s - time.monotonic()))
        self.start()
        return t_down, time.monotonic()


class RedisServer(Server):
    """Debian's redis-server, without persistence, on 127.0.0.1 and a free port."""

    kind = "redis"

    def __init__(self, binary: str, prefix: tuple[str, ...]) -> None:
        self.binary = binary
        self.prefix = prefix
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
        self.version = (
            out.stdout.strip().split(" v=")[-1].split()[0] if " v=" in out.stdout else "?"
        )

    def start(self) -> None:
        cmd = [
            *self.prefix,
            self.binary,
            "--save",
            "",
            "--appendonly",
            "no",
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--daemonize",
            "no",
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_listening(self.port, 10.0):
            self.close()
            raise RuntimeError(f"redis-server did not listen on port {self.port} within 10 s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class EmbeddedServer(Server):
    """``geventconnpool.testing.PingServer`` in its own process (:mod:`bench.embedded`)."""

    kind = "embedded"
    version = "geventconnpool.testing.PingServer"

    def __init__(self, prefix: tuple[str, ...]) -> None:
        cmd = [*prefix, sys.executable, "-m", "bench.embedded", "--host", HOST]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        words = self._read_line().split()
        if len(words) != 2 or words[0] != "READY":
            self.close()
            raise RuntimeError(f"embedded server did not start: {' '.join(words)!r}")
        self.port = int(words[1])

    def _read_line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def _command(self, command: str, answer: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        got = self._read_line()
        if got != answer:
            raise RuntimeError(f"embedded server answered {got!r} to {command!r}")

    def start(self) -> None:
        self._command("start", "STARTED")
        if not wait_listening(self.port, 10.0):
            raise RuntimeError("embedded server did not listen again")

    def stop(self) -> None:
        self._command("stop", "STOPPED")

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ServerMissing(Exception):
    """redis-server was asked for and is not installed (the message says how to install it)."""


def open_server(choice: str, plan: CpuPlan) -> Server:
    """Start the server ``choice`` names: ``redis``, ``embedded``, or ``auto`` (redis if found)."""
    binary = shutil.which("redis-server")
    if choice == "redis" and binary is None:
        raise ServerMissing(f"redis-server not found; install it with: {APT_HINT}")
    if choice == "embedded" or binary is None:
        return EmbeddedServer(plan.server)
    server = RedisServer(binary, plan.server)
    server.start()
    return server
