"""Real servers for the integration tests, all on 127.0.0.1 (or unix sockets) and free ports.

- :class:`RedisServer`: Debian's ``redis-server``, ``--save '' --appendonly no``.
- :class:`PostgresServer`: ``initdb`` into a temporary directory and ``pg_ctl start``; as the
  ``postgres`` user (via ``runuser``) when we are root, since PostgreSQL refuses root.
- :class:`PgBouncerServer`: Debian's ``pgbouncer`` in transaction pooling mode in front of it.
- :class:`SentinelCluster`: a Redis master, a replica and three ``redis-server --sentinel``.
- :class:`LoopbackServer`: the base of the in-process servers, ``geventconnpool.testing``'s
  (127.0.0.1, TCP or TLS, counting connections and TLS handshakes, full and resumed), started
  at construction: :class:`LineServer` (``PING`` -> ``PONG``), :class:`ThriftServer` (a
  thriftpy2 service), :class:`ScriptedServer` (a canned reply to every request: hostile
  servers).

The pytest fixtures at the bottom start them and stop them at the end (even when tests fail).
A missing server binary is a test failure when ``CI=true``, a skip with the install command
otherwise. Import the fixtures in a conftest (``tests/contrib/conftest.py`` does).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import gevent
import gevent.socket
import gevent.ssl
import pytest

from geventconnpool import testing
from geventconnpool.testing import free_port

CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
INSTALL_COMMAND = (
    "scripts/ensure-servers  (as root: apt-get update && apt-get install -y "
    "redis-server postgresql pgbouncer)"
)
LOOPBACK = "127.0.0.1"

_running: list[Any] = []  # servers to stop at interpreter exit, should a teardown be skipped


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_running):
        with contextlib.suppress(Exception):
            server.stop()


def server_missing(what: str) -> NoReturn:
    """Fail (in CI) or skip (elsewhere) a test whose server is not installed."""
    message = f"{what} is not installed; run {INSTALL_COMMAND}"
    if CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


def wait_until(
    predicate: Callable[[], object], timeout: float = 5.0, what: str = "", *, poll: float = 0.001
) -> None:
    """Yield to other greenlets until ``predicate()`` is true; AssertionError after ``timeout``.

    For state that only a query can see (a pool's ``stats()``, a server coming up, a
    server-side counter), where there is no event to wait on; ``poll`` is the pause between
    two queries (raise it for a costly predicate).
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or predicate}")
        gevent.sleep(poll)


# -- Redis ---------------------------------------------------------------------------------------


def redis_binary() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )


def resp_command(address: Any, *args: str, timeout: float = 5.0) -> bytes:
    """Send one command on a fresh connection; return the raw first reply line (admin use)."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = gevent.socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
        payload = b"*%d\r\n" % len(args) + b"".join(
            b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args
        )
        sock.sendall(payload)
        data = b""
        while True:
            if b"\r\n" in data:
                head = data.split(b"\r\n", 1)[0]
                if not head.startswith(b"$") or len(data) >= len(head) + 4 + int(head[1:]):
                    return data
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    finally:
        sock.close()


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1 and a unix socket."""

    def __init__(
        self, binary: str, workdir: str, tls_ca: Any = None, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.binary = binary
        self.workdir = workdir
        self.extra_args = list(extra_args)  # e.g. ("--replicaof", host, port)
        self.port = free_port()
        self.tls_port: int | None = None
        self.tls_args: list[str] = []
        if tls_ca is not None:  # a TLS port too (certificate from trustme); the plain one stays
            self.tls_port = free_port()
            cert = tls_ca.issue_cert(LOOPBACK, "localhost")
            files = {name: os.path.join(workdir, name) for name in ("cert", "key", "ca")}
            cert.cert_chain_pems[0].write_to_path(files["cert"])
            cert.private_key_pem.write_to_path(files["key"])
            tls_ca.cert_pem.write_to_path(files["ca"])
            self.tls_args = [
                "--tls-port", str(self.tls_port),
                "--tls-cert-file", files["cert"],
                "--tls-key-file", files["key"],
                "--tls-ca-cert-file", files["ca"],
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        self.unix_socket = os.path.join(workdir, "redis.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def address(self) -> tuple[str, int]:
        return (LOOPBACK, self.port)

    def start(self) -> None:
        assert self.proc is None, "already running"
        log = open(os.path.join(self.workdir, "redis.log"), "ab")  # noqa: SIM115
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--unixsocket", self.unix_socket,
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.workdir,
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", "",
            *self.tls_args,
            *self.extra_args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        if self not in _running:
            _running.append(self)
        self.starts += 1

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_tail()}")
            try:
                return resp_command(self.address, "PING", timeout=1.0).startswith(b"+PONG")
            except OSError:
                return False

        wait_until(ready, 15.0, f"redis-server on port {self.port}", poll=0.02)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()  # a hard stop, like a crash: no goodbye to the clients
        proc.wait(timeout=15)
        if self in _running:
            _running.remove(self)

    def restart(self) -> None:
        self.stop()
        self.start()

    def command(self, *args: str) -> bytes:
        return resp_command(self.address, *args)

    def client_count(self) -> int:
        info = resp_command(self.address, "INFO", "clients")
        for line in info.decode(errors="replace").splitlines():
            if line.startswith("connected_clients:"):
                return int(line.split(":", 1)[1]) - 1  # minus this admin connection
        raise RuntimeError(f"no connected_clients in {info!r}")

    def log_tail(self) -> str:
        try:
            return Path(self.workdir, "redis.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""


# -- Redis Sentinel ------------------------------------------------------------------------------


def resp_call(address: tuple[str, int], *args: str, timeout: float = 5.0) -> Any:
    """One command on a fresh connection, its reply parsed (arrays as lists); admin use."""
    from geventconnpool.contrib.redis import RedisConnection

    sock = gevent.socket.create_connection(address, timeout=timeout)
    try:
        sock.settimeout(timeout)
        return RedisConnection(sock).execute(*args)
    finally:
        sock.close()


class SentinelServer:
    """One ``redis-server --sentinel`` process monitoring ``service`` on 127.0.0.1."""

    def __init__(self, binary: str, workdir: str, service: str, master: tuple[str, int]) -> None:
        self.binary = binary
        self.workdir = workdir
        self.service = service
        self.port = free_port()
        self.myid = os.urandom(20).hex()
        self.config = os.path.join(workdir, "sentinel.conf")
        Path(self.config).write_text(
            f"port {self.port}\n"
            f"bind {LOOPBACK}\n"
            f"dir {workdir}\n"
            "daemonize no\n"
            f"sentinel myid {self.myid}\n"
            f"sentinel monitor {service} {master[0]} {master[1]} 2\n"
            f"sentinel down-after-milliseconds {service} 1000\n"
            f"sentinel failover-timeout {service} 10000\n"
            f"sentinel parallel-syncs {service} 1\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def know(self, peers: list[SentinelServer]) -> None:
        """Name the other sentinels in the configuration (before :meth:`start`): otherwise
        each learns of the others from their hello messages, sent every 2 seconds."""
        with open(self.config, "a") as config:
            for peer in peers:
                if peer is not self:
                    config.write(
                        f"sentinel known-sentinel {self.service} {LOOPBACK} {peer.port} "
                        f"{peer.myid}\n"
                    )

    @property
    def address(self) -> tuple[str, int]:
        return (LOOPBACK, self.port)

    def start(self) -> None:
        log = open(os.path.join(self.workdir, "sentinel.log"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [self.binary, self.config, "--sentinel"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        _running.append(self)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=15)
        if self in _running:
            _running.remove(self)

    def log_tail(self) -> str:
        try:
            return Path(self.workdir, "sentinel.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""


class SentinelCluster:
    """A master, a replica and three sentinels, all on 127.0.0.1 free ports.

    :meth:`start` waits until the replica is in sync and every sentinel knows the replica and
    the two other sentinels, so that ``SENTINEL FAILOVER`` can succeed at once.
    """

    service = "mymaster"

    def __init__(self, binary: str, workdir: str) -> None:
        self.workdir = workdir
        # A master starts a diskless full sync 5 s after a replica asks (in case more come):
        # without the wait, the replica is in sync in milliseconds (either may be the master).
        no_wait = ("--repl-diskless-sync-delay", "0")
        self.master = RedisServer(binary, self._dir("master"), extra_args=no_wait)
        self.replica = RedisServer(
            binary,
            self._dir("replica"),
            extra_args=(*no_wait, "--replicaof", LOOPBACK, str(self.master.port)),
        )
        self.sentinels = [
            SentinelServer(binary, self._dir(f"sentinel{i}"), self.service, self.master.address)
            for i in range(3)
        ]
        for sentinel in self.sentinels:
            sentinel.know(self.sentinels)

    def _dir(self, name: str) -> str:
        path = os.path.join(self.workdir, name)
        os.makedirs(path, exist_ok=True)
        return path

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [s.address for s in self.sentinels]

    def start(self, timeout: float = 30.0) -> None:
        self.master.start()
        self.replica.start()
        for sentinel in self.sentinels:
            sentinel.start()
        wait_until(
            self._ready, timeout, "the sentinels to know the master, replica and peers", poll=0.02
        )

    def _ready(self) -> bool:
        try:
            info = resp_call(self.replica.address, "INFO", "replication", timeout=1.0)
            if b"master_link_status:up" not in info:
                return False
            for sentinel in self.sentinels:
                if sentinel.proc is not None and sentinel.proc.poll() is not None:
                    raise RuntimeError(f"sentinel exited: {sentinel.log_tail()}")
                replicas = resp_call(sentinel.address, "SENTINEL", "REPLICAS", self.service)
                peers = resp_call(sentinel.address, "SENTINEL", "SENTINELS", self.service)
                if len(replicas) != 1 or len(peers) != 2:
                    return False
                flags = dict(zip(replicas[0][::2], replicas[0][1::2], strict=True)).get(
                    b"flags", b""
                )
                if flags != b"slave":
                    return False
            return True
        except OSError:
            return False

    def master_address(self) -> tuple[str, int]:
        """The master's address according to the first sentinel that answers."""
        for sentinel in self.sentinels:
            try:
                host, port = resp_call(
                    sentinel.address, "SENTINEL", "get-master-addr-by-name", self.service
                )
            except OSError:
                continue
            return (host.decode(), int(port))
        raise RuntimeError("no sentinel answers")

    def failover(self) -> None:
        """Ask a sentinel to promote the replica (returns at once; the switch follows)."""
        resp_call(self.sentinels[0].address, "SENTINEL", "FAILOVER", self.service)

    def stop(self) -> None:
        for server in (*self.sentinels, self.replica, self.master):
            with contextlib.suppress(Exception):
                server.stop()


# -- PostgreSQL ----------------------------------------------------------------------------------


def postgres_bindir() -> str | None:
    """Directory with initdb and pg_ctl: Debian's newest /usr/lib/postgresql/N/bin, or PATH."""

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    for bindir in candidates:
        if os.access(os.path.join(bindir, "initdb"), os.X_OK):
            return bindir
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 and a unix socket in a temporary directory."""

    user = "postgres"
    database = "postgres"

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.base = tempfile.mkdtemp(prefix="gcp-pg-")
        self.datadir = os.path.join(self.base, "data")
        self.logfile = os.path.join(self.base, "server.log")
        self.as_user: list[str] = []
        self.running = False
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                server_missing("the `postgres` system user (from Debian's postgresql package)")
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        os.chmod(self.base, 0o700)

    @property
    def socket_dir(self) -> str:
        return self.base

    @property
    def dsn(self) -> str:
        return f"host={LOOPBACK} port={self.port} user={self.user} dbname={self.database}"

    @property
    def params(self) -> dict[str, Any]:
        return {"host": LOOPBACK, "port": self.port, "user": self.user, "database": self.database}

    def _run(self, *argv: str) -> None:
        result = subprocess.run(
            [*self.as_user, *argv],
            cwd=self.base,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed ({result.returncode}):\n"
                f"{result.stdout.decode(errors='replace')}\n{self.log_tail()}"
            )

    def start(self) -> None:
        bin_ = self.bindir
        if not os.path.exists(os.path.join(self.datadir, "PG_VERSION")):
            self._run(
                f"{bin_}/initdb",
                "-D",
                self.datadir,
                "-U",
                self.user,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            )
        options = (
            f"-c listen_addresses={LOOPBACK} -p {self.port} -k {self.socket_dir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200 -c shared_buffers=32MB"
        )
        self._run(
            f"{bin_}/pg_ctl",
            "-D",
            self.datadir,
            "-l",
            self.logfile,
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        )
        self.running = True
        if self not in _running:
            _running.append(self)

    def stop(self) -> None:
        if self.running:
            self.running = False
            with contextlib.suppress(Exception):
                self._run(
                    f"{self.bindir}/pg_ctl", "-D", self.datadir, "-m", "immediate", "-w", "stop"
                )
        if self in _running:
            _running.remove(self)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self) -> str:
        try:
            return Path(self.logfile).read_text(errors="replace")[-3000:]
        except OSError:
            return ""


# -- PgBouncer -----------------------------------------------------------------------------------


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
    )


class PgBouncerServer:
    """PgBouncer on 127.0.0.1 in front of a :class:`PostgresServer`, transaction pooling.

    ``pool_size`` server connections at most (per database/user pair, and in total for the
    database), ``max_client_conn`` clients. Database ``postgres`` (user ``postgres``, trust
    auth); runs as the ``postgres`` user (``-u``) when we are root, as PgBouncer refuses root.
    ``settings`` override or add ``[pgbouncer]`` settings, ``databases`` add entries.
    """

    def __init__(
        self,
        binary: str,
        postgres: PostgresServer,
        *,
        pool_size: int = 10,
        max_client_conn: int = 2000,
        settings: dict[str, str] | None = None,
        databases: dict[str, str] | None = None,
    ) -> None:
        self.binary = binary
        self.postgres = postgres
        self.port = free_port()
        self.base = tempfile.mkdtemp(prefix="gcp-pgbouncer-")
        self.config = os.path.join(self.base, "pgbouncer.ini")
        self.logfile = os.path.join(self.base, "pgbouncer.log")
        values = {
            "listen_addr": LOOPBACK,
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": os.path.join(self.base, "userlist.txt"),
            "pool_mode": "transaction",
            "default_pool_size": str(pool_size),
            "max_db_connections": str(pool_size),
            "max_client_conn": str(max_client_conn),
            "server_login_retry": "1",
            "admin_users": "postgres",
            "ignore_startup_parameters": "extra_float_digits,options",
            "logfile": self.logfile,
            "pidfile": os.path.join(self.base, "pgbouncer.pid"),
            **(settings or {}),
        }
        Path(self.base, "userlist.txt").write_text('"postgres" ""\n')
        database = f"host={LOOPBACK} port={postgres.port} dbname=postgres user=postgres"
        lines = ["[databases]", f"postgres = {database}"]
        lines += [f"{name} = {spec}" for name, spec in (databases or {}).items()]
        lines += ["", "[pgbouncer]"]
        lines += [f"{key} = {value}" for key, value in values.items()]
        Path(self.config).write_text("\n".join(lines) + "\n")
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for path in (self.base, self.config, os.path.join(self.base, "userlist.txt")):
                os.chown(path, pw.pw_uid, pw.pw_gid)
            self.as_user = ["-u", "postgres"]  # pgbouncer switches user itself: we keep its pid
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"host={LOOPBACK} port={self.port} user=postgres dbname=postgres"

    def start(self) -> None:
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen(
            [self.binary, *self.as_user, self.config],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if self not in _running:
            _running.append(self)

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {self.log_tail()}")
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=1):
                    return True
            except OSError:
                return False

        wait_until(ready, 15.0, f"pgbouncer on port {self.port}", poll=0.02)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()  # a crash: clients see their connections close
            proc.wait(timeout=15)
        if self in _running:
            _running.remove(self)

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self) -> str:
        try:
            return Path(self.logfile).read_text(errors="replace")[-3000:]
        except OSError:
            return ""


# -- loopback servers run in this process (gevent StreamServer) ----------------------------------


class LoopbackServer(testing.LoopbackServer):
    """:class:`geventconnpool.testing.LoopbackServer` on 127.0.0.1, started at construction;
    with the names the tests use for what the base counts (``open``, ``close_all``)."""

    def __init__(self, *, port: int = 0, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(LOOPBACK, port, ssl_context=ssl_context)
        self.start()

    @property
    def open(self) -> list[tuple[str, int]]:
        """The client address of every open connection."""
        return self.peers

    def close_all(self) -> None:
        """Close every open connection from the server side (a FIN, like a server restart)."""
        self.drop_all()


class LineServer(LoopbackServer):
    """``PING\\n`` -> ``PONG\\n``, ``ECHO x\\n`` -> ``x\\n``, ``QUIT\\n`` closes; TCP or TLS."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(ssl_context=ssl_context)

    def serve(self, sock: Any) -> None:
        buf = b""
        while True:
            data = sock.recv(4096)
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line == b"PING":
                    sock.sendall(b"PONG\n")
                elif line.startswith(b"ECHO "):
                    sock.sendall(line[5:] + b"\n")
                elif line == b"QUIT":
                    return
                else:
                    sock.sendall(b"ERR\n")


def tls_contexts(ca: Any, hostname: str = LOOPBACK) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a certificate for ``hostname``, client context trusting ``ca``)."""
    cert = ca.issue_cert(hostname, "localhost")
    server_ctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # gevent's: cooperative
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


# -- Thrift --------------------------------------------------------------------------------------


class ThriftServer(LoopbackServer):
    """Serve a thriftpy2 ``service`` with ``handler`` (binary protocol, buffered or framed
    transport) from gevent greenlets; an undeclared handler exception becomes a
    ``TApplicationException(INTERNAL_ERROR)`` reply, as in real servers."""

    def __init__(
        self,
        service: Any,
        handler: Any,
        *,
        framed: bool = False,
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        from thriftpy2.thrift import TProcessor

        self.service = service
        self.handler = handler
        self.framed = framed
        self.processor = TProcessor(service, handler)
        super().__init__(port=port, ssl_context=ssl_context)

    def serve(self, sock: Any) -> None:
        from thriftpy2.protocol import TBinaryProtocol
        from thriftpy2.transport import TBufferedTransport, TFramedTransport, TSocket
        from thriftpy2.transport.base import TTransportException

        tsock = TSocket(sock=sock)
        trans = TFramedTransport(tsock) if self.framed else TBufferedTransport(tsock)
        proto = TBinaryProtocol(trans)
        with contextlib.suppress(TTransportException, EOFError):
            while True:
                self._one_call(proto)

    def _one_call(self, proto: Any) -> None:
        from thriftpy2.thrift import TApplicationException

        api, seqid, result, call = self.processor.process_in(proto)
        if isinstance(result, TApplicationException):
            self.processor.send_exception(proto, api, result, seqid)
            return
        try:
            result.success = call()
        except TApplicationException as exc:
            self.processor.send_exception(proto, api, exc, seqid)
            return
        except Exception as exc:
            if not self.processor.handle_exception(exc, result):
                error = TApplicationException(TApplicationException.INTERNAL_ERROR, str(exc))
                self.processor.send_exception(proto, api, error, seqid)
                return
        if not result.oneway:
            self.processor.send_result(proto, api, result, seqid)


class ScriptedServer(LoopbackServer):
    """Answers every request (whatever was received) with ``payload``: bytes, or a callable
    writing to the socket; then waits for the next one. For hostile or broken servers."""

    def __init__(self, payload: bytes | Callable[[Any], None]) -> None:
        self.payload = payload
        super().__init__()

    def serve(self, sock: Any) -> None:
        while sock.recv(65536):
            if callable(self.payload):
                self.payload(sock)
            else:
                sock.sendall(self.payload)


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server for the whole session (tests must not restart it: use ``fresh_redis``)."""
    binary = redis_binary()
    if binary is None:
        server_missing("redis-server")
    server = RedisServer(binary, str(tmp_path_factory.mktemp("redis")))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may stop and restart."""
    binary = redis_binary()
    if binary is None:
        server_missing("redis-server")
    server = RedisServer(binary, str(tmp_path_factory.mktemp("redis")))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    """Three redis-servers of this test's own (equivalent replicas), each on its own port; a
    test may kill (``os.kill(server.proc.pid, SIGKILL)``) and restart them."""
    binary = redis_binary()
    if binary is None:
        server_missing("redis-server")
    servers = [RedisServer(binary, str(tmp_path_factory.mktemp(f"redis{i}"))) for i in range(3)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def tls_redis(tmp_path_factory: pytest.TempPathFactory, tls_ca: Any) -> Iterator[RedisServer]:
    """A redis-server with a TLS port (``tls_port``) whose certificate ``tls_ca`` signed."""
    binary = redis_binary()
    if binary is None:
        server_missing("redis-server")
    server = RedisServer(binary, str(tmp_path_factory.mktemp("redis-tls")), tls_ca=tls_ca)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def sentinel_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    """A started :class:`SentinelCluster`, stopped on exit; skips (fails in CI) without
    redis-server. For fixtures of any scope."""
    binary = redis_binary()
    if binary is None:
        server_missing("redis-server")
    cluster = SentinelCluster(binary, str(tmp_path_factory.mktemp("sentinel")))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    """A master, a replica and three sentinels of this test's own (it may fail them over)."""
    with sentinel_cluster(tmp_path_factory) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster for the whole session, destroyed at its end."""
    bindir = postgres_bindir()
    if bindir is None:
        server_missing("PostgreSQL (initdb, pg_ctl)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        server_missing("runuser (util-linux), to run PostgreSQL as `postgres`")
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pgbouncer(postgres_server: PostgresServer) -> Iterator[PgBouncerServer]:
    """PgBouncer of this test's own (transaction pooling, 10 server connections) in front of
    the session's PostgreSQL; the test may restart it."""
    binary = pgbouncer_binary()
    if binary is None:
        server_missing("pgbouncer")
    server = PgBouncerServer(binary, postgres_server)
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def tls_ca() -> Any:
    """A trustme CA for the session."""
    trustme = pytest.importorskip("trustme") if not CI else __import__("trustme")
    return trustme.CA()


@pytest.fixture
def line_server() -> Iterator[LineServer]:
    server = LineServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tls_server(tls_ca: Any) -> Iterator[tuple[LineServer, ssl.SSLContext]]:
    """(a TLS line server with a certificate for 127.0.0.1, a client context trusting it)."""
    server_ctx, client_ctx = tls_contexts(tls_ca)
    server = LineServer(server_ctx)
    try:
        yield server, client_ctx
    finally:
        server.stop()
