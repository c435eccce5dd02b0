"""The server the children talk to: a real redis-server, or the embedded PING server.

Either runs in its own process on 127.0.0.1 and a free port, pinned to its own CPU (and the
children to another) when ``taskset`` and two CPUs exist. The embedded one is
``geventconnpool.testing.PingServer`` (on the same ``LoopbackServer`` base as the tests'
in-process servers), run alone by ``bench/embedded.py``; this module only starts and stops
processes: :func:`redis_command` and :func:`wait_listening` serve ``bench.replicas`` too.
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

from geventconnpool.testing import free_port

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
APT_HINT = "sudo apt-get install -y redis-server"


@dataclass
class Server:
    """A running server process: what it is, where it listens, and how the children are pinned."""

    kind: str
    version: str
    port: int
    proc: subprocess.Popen[bytes]
    client_prefix: tuple[str, ...]
    pinning: str

    def close(self) -> None:
        """Stop the server and reap it."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def cpu_prefixes(pin: bool) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """``taskset`` prefixes for the server and the children, and what was decided."""
    taskset = shutil.which("taskset")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not pin or taskset is None or len(cpus) < 2:
        why = "--no-pin" if not pin else "no taskset" if taskset is None else "one CPU"
        return (), (), f"not pinned ({why})"
    server, client = (taskset, "-c", str(cpus[0])), (taskset, "-c", str(cpus[1]))
    return server, client, f"server on CPU {cpus[0]}, clients on CPU {cpus[1]}"


def redis_command(binary: str, port: int) -> list[str]:
    """A throwaway redis-server on ``HOST:port``: no persistence, in the foreground."""
    return [binary, "--save", "", "--appendonly", "no", "--bind", HOST, "--port", str(port)]


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Return once something accepts connections on ``port``; kill ``proc`` and raise if it
    exits or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.01)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"the server did not listen on {HOST}:{port} within {timeout} s")


def open_server(choice: str, pin: bool) -> Server:
    """Start redis-server (``redis``), the embedded PING server (``embedded``), or redis if
    installed (``auto``); exits with the apt command if ``redis`` is asked for and missing."""
    server_prefix, client_prefix, pinning = cpu_prefixes(pin)
    binary = shutil.which("redis-server")
    if choice == "redis" and binary is None:
        raise SystemExit(f"redis-server not found; install it with: {APT_HINT}")
    port = free_port()
    if choice == "embedded" or binary is None:
        cmd = [sys.executable, "-m", "bench.embedded", str(port)]
        kind, version = "embedded", "geventconnpool.testing.PingServer"
    else:
        cmd = redis_command(binary, port)
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
        kind, version = "redis", out.stdout.partition(" v=")[2].split(" ")[0] or "?"
    proc = subprocess.Popen([*server_prefix, *cmd], cwd=REPO, stdout=subprocess.DEVNULL)
    wait_listening(port, proc)
    return Server(kind, version, port, proc, client_prefix, pinning)
