"""The gunicorn/uWSGI guide's recipe under a real ``uwsgi --master --gevent``, with and without
``--lazy-apps``: the guide's own app block and its own command, as written (only the ports, the
path of ``app.py`` and the number of workers put in).

The master must hold 0 connections to the server and each worker a pool of its own, opened by the
guide's warm-up before any request (``@postfork`` without ``--lazy-apps``, the worker's import
with it); requests are served. Connections are attributed to processes through ``/proc``: the
server's peer ports, matched to the sockets each process holds.

uWSGI comes with the ``test`` extra (built from source, it needs a C compiler); a missing
``uwsgi`` fails under ``CI=true`` and skips elsewhere.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
from gevent import socket, subprocess

from geventconnpool.testing import PingServer, free_port

from .servers import CI, wait_until
from .test_docs import parse_blocks

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "usage" / "gunicorn.rst"
WORKERS = 2
SIZE = 4  # the guide's pool size

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(120)]  # docs recipe


def uwsgi_binary() -> str:
    found = shutil.which("uwsgi") or shutil.which("uwsgi", path=os.path.dirname(sys.executable))
    if found is None:
        message = "uwsgi is not installed (pip install -e '.[test]'; it needs a C compiler)"
        if CI:
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    return found


def guide_command() -> list[str]:
    """The guide's uWSGI command line, split as a shell would."""
    lines = [line.strip() for line in GUIDE.read_text().splitlines()]
    [command] = [line for line in lines if line.startswith("uwsgi --master")]
    return shlex.split(command)


def guide_app(port: int) -> str:
    """The guide's app block, its Redis port replaced by the test server's."""
    block = parse_blocks(GUIDE)[0]
    assert "def app(environ, start_response)" in block.code and "postfork" in block.code
    return re.sub(r"(?<!\d)6379(?!\d)", str(port), block.code)


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def local_ports_by_inode() -> dict[str, int]:
    """Every IPv4 TCP socket of the machine: inode -> local port."""
    ports = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        ports[fields[9]] = int(fields[1].split(":")[1], 16)
    return ports


def connections_by_process(server: PingServer, pids: list[int]) -> dict[int, int]:
    """How many of the server's open connections each of ``pids`` holds."""
    peer_ports = {port for _, port in server.peers}
    by_inode = local_ports_by_inode()
    return {
        pid: sum(1 for inode in socket_inodes(pid) if by_inode.get(inode) in peer_ports)
        for pid in pids
    }


class Uwsgi:
    def __init__(self, app: Path, log: Path, *extra: str) -> None:
        self.http = ("127.0.0.1", free_port())
        argv = guide_command()
        argv[0] = uwsgi_binary()
        argv[argv.index("--processes") + 1] = str(WORKERS)
        argv[argv.index("--gevent") + 1] = "10"
        argv[argv.index("--http") + 1] = f"{self.http[0]}:{self.http[1]}"
        argv[argv.index("--wsgi-file") + 1] = str(app)
        self.log = log
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        with log.open("wb") as out:
            self.proc = subprocess.Popen([*argv, *extra], cwd=app.parent, env=env, stdout=out,
                                         stderr=out)  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def workers(self) -> list[int]:
        """The workers' pids, from uWSGI's log (the HTTP router is a child of the master too)."""
        return [
            int(pid) for pid in re.findall(r"spawned uWSGI worker \d+ \(pid: (\d+)", self.output())
        ]

    def processes(self) -> list[int]:
        """The master and every child of it (workers, the HTTP router)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [self.proc.pid, *(int(pid) for pid in children.read_text().split())]

    def get(self) -> bytes:
        with socket.create_connection(self.http, timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), data
        return body

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # uWSGI: SIGINT stops, SIGTERM reloads
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def uwsgi(server: PingServer, tmp_path: Path) -> Iterator[list[Uwsgi]]:
    started: list[Uwsgi] = []
    yield started
    for u in started:
        u.stop()


@pytest.mark.parametrize("lazy_apps", [False, True], ids=["master-imports", "lazy-apps"])
def test_the_guide_recipe_under_uwsgi(
    uwsgi: list[Uwsgi], server: PingServer, tmp_path: Path, lazy_apps: bool
) -> None:
    app = tmp_path / "app.py"
    app.write_text(guide_app(server.address[1]))
    u = Uwsgi(app, tmp_path / "uwsgi.log", *(["--lazy-apps"] if lazy_apps else []))
    uwsgi.append(u)

    def warm() -> bool:
        assert u.proc.poll() is None, f"uwsgi exited:\n{u.output()}"
        return len(u.workers()) == WORKERS and server.active == WORKERS * SIZE

    # Before any request: each worker's warm-up opened its own pool.
    wait_until(warm, 60, f"{WORKERS} workers with a pool of {SIZE} each", poll=0.05)
    held = connections_by_process(server, u.processes())
    expected = {pid: SIZE if pid in u.workers() else 0 for pid in u.processes()}
    assert held == expected, (held, u.workers(), u.output())

    replies = [g.get() for g in [gevent.spawn(u.get) for _ in range(20)]]
    assert replies == [b"+PONG\r\n"] * 20, u.output()
    held = connections_by_process(server, u.processes())
    expected = {pid: SIZE if pid in u.workers() else 0 for pid in u.processes()}
    assert held == expected, (held, u.workers(), u.output())
    assert server.active == WORKERS * SIZE  # no third pool: the master's never opened
    assert u.stop() == 0, u.output()
    assert "Traceback" not in u.output(), u.output()


def test_the_guide_command_names_the_callable() -> None:
    argv = guide_command()
    assert argv[argv.index("--callable") + 1] == "app"
    assert "--master" in argv and "--gevent" in argv


FILL_IN_MASTER = """
if uwsgi is not None and uwsgi.worker_id() == 0:
    # A worker's first connect can hang until connect_timeout when the master ran gevent before
    # uWSGI forked (see the guide): keep that short here.
    pool.connect_timeout = 2
    pool.wait_ready(10)  # what the guide warns against: the master fills its pool before forking
"""


def test_a_pool_filled_in_the_master_keeps_its_connections_there(
    uwsgi: list[Uwsgi], server: PingServer, tmp_path: Path
) -> None:
    """What the guide says next to the recipe: the master's idle connections stay for its whole
    life, and the workers never use them (each opens its own)."""
    app = tmp_path / "app.py"
    app.write_text(guide_app(server.address[1]) + FILL_IN_MASTER)
    u = Uwsgi(app, tmp_path / "uwsgi.log")
    uwsgi.append(u)

    def warm() -> bool:
        assert u.proc.poll() is None, f"uwsgi exited:\n{u.output()}"
        return len(u.workers()) == WORKERS and server.active == (WORKERS + 1) * SIZE

    wait_until(warm, 60, "the master's pool and one per worker", poll=0.05)
    replies = [g.get() for g in [gevent.spawn(u.get) for _ in range(20)]]
    assert replies == [b"+PONG\r\n"] * 20, u.output()
    held = connections_by_process(server, u.processes())
    assert held[u.proc.pid] == SIZE, (held, u.output())  # still there, after the requests
    assert all(held[pid] == SIZE for pid in u.workers()), (held, u.output())
    assert server.active == (WORKERS + 1) * SIZE
    assert u.stop() == 0, u.output()
