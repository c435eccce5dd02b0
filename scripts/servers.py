"""Start and stop the Redis and PostgreSQL servers the examples and guides expect.

    python scripts/servers.py up      # redis-server on 127.0.0.1:6379, PostgreSQL on 127.0.0.1:5432
    python scripts/servers.py status
    python scripts/servers.py down    # stops both; their data is deleted

``make servers-up`` / ``make servers-down`` run these (after ``scripts/ensure-servers`` made sure
the servers are installed). PostgreSQL is a cluster of its own, in a temporary directory, with
user ``postgres`` and ``trust`` authentication on 127.0.0.1, so the DSN of the README and the
guides, ``host=127.0.0.1 port=5432 user=postgres dbname=postgres``, works with no password (a
distribution's own PostgreSQL asks for one on 127.0.0.1). Both listen on 127.0.0.1 only, keep
nothing on disk between runs, and are started the way the test fixtures (tests/servers.py) start
theirs; as root, PostgreSQL runs as the ``postgres`` user, as initdb requires.

Only the standard library: it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"
DEFAULT_DIR = Path(tempfile.gettempdir()) / f"geventconnpool-servers-{os.getuid()}"
INSTALL = "scripts/ensure-servers (as root: apt-get install -y redis-server postgresql)"


class Failed(Exception):
    """One line for the user: what went wrong and what to do."""


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((LOOPBACK, port)) == 0


def wait_for(what: str, ready: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise Failed(f"{what} did not start within {timeout:g}s")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------- Redis


def redis_binary() -> str:
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(found, os.X_OK):
        raise Failed(f"redis-server is not installed; run {INSTALL}")
    return found


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(7) == b"+PONG\r\n"
    except OSError:
        return False


def redis_up(state: Path, port: int) -> str:
    pidfile = state / "redis.pid"
    if pidfile.exists() and alive(int(pidfile.read_text())):
        return f"redis-server already running (pid {pidfile.read_text().strip()})"
    if port_in_use(port):
        raise Failed(
            f"port {port} is in use (another redis-server?); stop it, or pass --redis-port"
        )
    subprocess.run(
        [redis_binary(), "--port", str(port), "--bind", LOOPBACK, "--protected-mode", "yes",
         "--daemonize", "yes", "--pidfile", str(pidfile), "--dir", str(state),
         "--logfile", str(state / "redis.log"), "--save", "", "--appendonly", "no"],
        check=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for(f"redis-server on {LOOPBACK}:{port}", lambda: redis_ping(port) and pidfile.exists())
    return f"redis-server on {LOOPBACK}:{port} (pid {pidfile.read_text().strip()})"


def redis_down(state: Path) -> str | None:
    pidfile = state / "redis.pid"
    if not pidfile.exists():
        return None
    pid = int(pidfile.read_text())
    if alive(pid):
        os.kill(pid, signal.SIGTERM)
        wait_for(f"redis-server (pid {pid}) to exit", lambda: not alive(pid))
    pidfile.unlink(missing_ok=True)
    return f"redis-server stopped (pid {pid})"


# ----------------------------------------------------------------------------------- PostgreSQL


def postgres_bindir() -> str:
    """Debian's newest /usr/lib/postgresql/N/bin, else initdb on PATH."""

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if os.access(os.path.join(bindir, "initdb"), os.X_OK):
            return bindir
    initdb = shutil.which("initdb")
    if initdb is None:
        raise Failed(f"PostgreSQL (initdb, pg_ctl) is not installed; run {INSTALL}")
    return os.path.dirname(initdb)


def as_postgres() -> list[str]:
    """initdb and postgres refuse to run as root: run them as the ``postgres`` user then."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise Failed(f"running as root and there is no `postgres` user; run {INSTALL}")
    return ["runuser", "-u", "postgres", "--"]


def pg_run(state: Path, *argv: str) -> None:
    result = subprocess.run(
        [*as_postgres(), *argv],
        cwd=state,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        log = state / "postgres.log"
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        raise Failed(
            f"{Path(argv[0]).name} failed:\n{result.stdout.decode(errors='replace')}{tail}"
        )


def postgres_up(state: Path, port: int) -> str:
    data = state / "postgres"
    pidfile = data / "postmaster.pid"
    if pidfile.exists() and alive(int(pidfile.read_text().split()[0])):
        return f"PostgreSQL already running (pid {pidfile.read_text().split()[0]})"
    if port_in_use(port):
        raise Failed(
            f"port {port} is in use (the distribution's PostgreSQL? stop it, e.g. `service "
            f"postgresql stop`), or pass --postgres-port"
        )
    bindir = postgres_bindir()
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(state, pw.pw_uid, pw.pw_gid)
    if not (data / "PG_VERSION").exists():
        pg_run(state, f"{bindir}/initdb", "-D", str(data), "-U", "postgres", "-A", "trust",
               "-E", "UTF8", "--locale=C", "--no-sync")  # fmt: skip
    options = f"-c listen_addresses={LOOPBACK} -p {port} -k {state} -c fsync=off"
    pg_run(state, f"{bindir}/pg_ctl", "-D", str(data), "-l", str(state / "postgres.log"),
           "-w", "-t", "60", "-o", options, "start")  # fmt: skip
    (state / "postgres.bindir").write_text(bindir)
    pid = pidfile.read_text().split()[0]
    return (
        f"PostgreSQL on {LOOPBACK}:{port} (pid {pid}): "
        f"host={LOOPBACK} port={port} user=postgres dbname=postgres, no password"
    )


def postgres_down(state: Path) -> str | None:
    data = state / "postgres"
    pidfile = data / "postmaster.pid"
    if not pidfile.exists():
        return None
    pid = int(pidfile.read_text().split()[0])
    bindir_file = state / "postgres.bindir"
    bindir = bindir_file.read_text() if bindir_file.exists() else postgres_bindir()
    if alive(pid):
        pg_run(state, f"{bindir}/pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
        wait_for(f"PostgreSQL (pid {pid}) to exit", lambda: not alive(pid))
    return f"PostgreSQL stopped (pid {pid})"


# -------------------------------------------------------------------------------------- commands


def up(state: Path, redis_port: int, postgres_port: int) -> list[str]:
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    lines = [redis_up(state, redis_port)]
    try:
        lines.append(postgres_up(state, postgres_port))
    except Failed:
        redis_down(state)  # all or nothing
        raise
    return lines


def down(state: Path) -> list[str]:
    if not state.exists():
        return ["nothing to stop"]
    lines = [line for line in (redis_down(state), postgres_down(state)) if line]
    shutil.rmtree(state, ignore_errors=True)
    return lines or ["nothing to stop"]


def status(state: Path) -> list[str]:
    found = []
    redis = state / "redis.pid"
    if redis.exists() and alive(int(redis.read_text())):
        found.append(f"redis-server running (pid {redis.read_text().strip()})")
    pg = state / "postgres" / "postmaster.pid"
    if pg.exists() and alive(int(pg.read_text().split()[0])):
        found.append(f"PostgreSQL running (pid {pg.read_text().split()[0]})")
    return found or ["not running"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--postgres-port", type=int, default=5432)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"default {DEFAULT_DIR}")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            lines = up(args.dir, args.redis_port, args.postgres_port)
        elif args.command == "down":
            lines = down(args.dir)
        else:
            lines = status(args.dir)
    except Failed as exc:
        print(f"servers {args.command}: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        print(f"servers {args.command}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
