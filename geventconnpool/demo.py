"""``python -m geventconnpool demo``: what a pool buys, measured in a few seconds on loopback.

Many greenlets send PINGs through a :class:`~geventconnpool.ConnectionPool`, then the same
workload opens a new connection per request; a table shows both side by side. Halfway through
the pooled run the embedded server drops every connection once: requests wrapped in
:func:`~geventconnpool.retry` still all succeed, and the pool replaces what it lost.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import gevent
import gevent.event
from gevent import socket as gsocket

from .errors import PoolTimeout
from .pool import ConnectionPool
from .retry import retry
from .stats import PoolStats
from .testing import PingServer, ping

__all__ = ["INTERRUPTED", "QUICK", "DemoOptions", "PhaseResult", "run"]

DEFAULT_PORT = 6379  # with --host but no --port: a Redis server
REQUEST_TIMEOUT = 5.0  # bounds each connect, get() and reply
RETRIES = 5  # @retry(max_failures=...) around every request
_WIDTH = 26  # label column of the table
_COLUMN = 24  # each result column
#: The exit code after Ctrl-C, as a shell reports a process killed by SIGINT.
INTERRUPTED = 130
#: The counts of ``--quick`` (about a second).
QUICK = {"greenlets": 50, "requests": 3_000, "compare_requests": 500}


@dataclass(frozen=True)
class DemoOptions:
    """What ``python -m geventconnpool demo`` was asked to do."""

    greenlets: int = 500
    requests: int = 50_000
    size: int = 20
    compare_requests: int = 5_000
    host: str | None = None  # None (and port None): start the embedded PingServer
    port: int | None = None
    compare: bool = True
    drop: bool = True
    max_seconds: float = 120.0

    @property
    def external(self) -> bool:
        """True when aimed at a server of the user's (``--host``/``--port``)."""
        return self.host is not None or self.port is not None


@dataclass
class PhaseResult:
    """The outcome of one workload."""

    label: str
    planned: int
    ok: int = 0
    errors: int = 0
    attempts: int = 0  # calls of the request function, retries included
    running: int = 0  # requests in progress (after a timed-out run: the interrupted ones)
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # whole requests, waits included
    #: Per successful attempt, the time spent with a connection: pooled, from get()'s return to
    #: the end of the PING; a new connection per request, the connect and the PING.
    on_connection: list[float] = field(default_factory=list)
    connections: int = 0  # connections opened
    timed_out: bool = False
    interrupted: bool = False  # stopped by Ctrl-C
    first_error: str | None = None
    dropped: int | None = None  # connections the server dropped halfway (None: no drop)
    dropped_at: int | None = None  # after how many completed requests
    created_at_drop: int = 0  # connections the pool had opened when the server dropped them
    stats: PoolStats | None = None  # the pool's, at the end of the run (pooled phase only)

    @property
    def failed(self) -> int:
        """Requests that did not succeed: errors, and requests never run (time guard)."""
        return self.planned - self.ok

    @property
    def not_run(self) -> int:
        """Requests never completed because the time guard (--max-seconds) stopped the run."""
        return self.planned - self.ok - self.errors

    @property
    def retried(self) -> int:
        """Extra attempts made by ``@retry``."""
        return self.attempts - self.ok - self.errors - self.running

    @property
    def rate(self) -> float:
        """Successful requests per second."""
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    @property
    def replaced(self) -> int:
        """Connections the pool opened after the drop (to replace the dropped ones)."""
        if self.stats is None or self.dropped is None:
            return 0
        return self.stats.created - self.created_at_drop

    def percentile(self, q: float, of: list[float] | None = None) -> float:
        """Latency (seconds) at quantile ``q`` (nearest rank) of ``latencies`` (or ``of``); 0
        without data."""
        values = sorted(self.latencies if of is None else of)
        if not values:
            return 0.0
        return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


class DemoPool(ConnectionPool[gsocket.socket]):
    """A pool of TCP connections to a PING server."""

    SPAWN_FREQUENCY = 0.005  # fill fast: 0.2.1's 0.1 s would stagger 20 connects over 2 s

    def __init__(self, size: int, address: tuple[str, int]) -> None:
        self.address = address
        super().__init__(size, name="demo", timeout=REQUEST_TIMEOUT)

    def _new_connection(self) -> gsocket.socket:
        return connect(self.address)


def connect(address: tuple[str, int]) -> gsocket.socket:
    """A TCP connection to ``address`` with TCP_NODELAY; its I/O times out after a while."""
    sock = gsocket.create_connection(address, timeout=REQUEST_TIMEOUT)
    sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
    return sock


class Progress:
    """A live one-line progress display: redrawn with ``\\r`` on a TTY, else a line a second."""

    def __init__(self, out: TextIO, result: PhaseResult) -> None:
        self.out = out
        self.result = result
        self.tty = out.isatty()
        self.interval = 0.1 if self.tty else 1.0
        self.started = time.perf_counter()
        self._greenlet: gevent.Greenlet[[], None] | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._loop)

    def stop(self) -> None:
        """Stop redrawing and print the final state on its own line."""
        if self._greenlet is not None:
            self._greenlet.kill()
        self._show(final=True)

    def note(self, text: str) -> None:
        """Print an event on its own line, under the progress line."""
        prefix = "\r" + " " * 79 + "\r" if self.tty else ""
        self.out.write(f"{prefix}  ! {text}\n")
        self.out.flush()

    def line(self) -> str:
        r = self.result
        done = r.ok + r.errors
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        return (
            f"  {r.label:<28} {done:>7,}/{r.planned:<7,} {100 * done / r.planned:3.0f}%"
            f" {done / elapsed:>8,.0f} req/s  errors {r.errors}"
        )

    def _loop(self) -> None:
        while True:
            gevent.sleep(self.interval)
            self._show(final=False)

    def _show(self, final: bool) -> None:
        text = self.line()
        if self.tty:
            self.out.write("\r" + text.ljust(79) + ("\n" if final else ""))
        else:
            self.out.write(text + "\n")
        self.out.flush()


def drive(
    result: PhaseResult,
    request: Callable[[], None],
    greenlets: int,
    deadline: float,
    progress: Progress,
    on_success: Callable[[int], None] | None = None,
    stop: gevent.event.Event | None = None,
) -> None:
    """Run ``result.planned`` requests from ``greenlets`` greenlets, until done, ``deadline``,
    or ``stop`` is set (Ctrl-C)."""
    issued = [0]
    stop = stop if stop is not None else gevent.event.Event()

    def worker() -> None:
        while issued[0] < result.planned and not stop.is_set():
            issued[0] += 1
            start = time.perf_counter()
            result.running += 1
            try:
                request()
            except Exception as exc:
                result.running -= 1
                result.errors += 1
                result.first_error = result.first_error or repr(exc)
                continue
            result.running -= 1
            result.latencies.append(time.perf_counter() - start)
            result.ok += 1
            if on_success is not None:
                on_success(result.ok)

    progress.start()
    begin = time.perf_counter()
    workers = [gevent.spawn(worker) for _ in range(min(greenlets, result.planned))]
    finished = gevent.spawn(gevent.joinall, workers)
    waitables: list[Any] = [finished, stop]
    gevent.wait(waitables, timeout=max(0.0, deadline - time.monotonic()), count=1)
    result.seconds = time.perf_counter() - begin
    if not all(w.dead for w in workers):
        result.interrupted = stop.is_set()
        result.timed_out = not result.interrupted
        gevent.killall(workers, block=True, timeout=REQUEST_TIMEOUT)
    finished.kill()
    progress.stop()


def pooled_phase(
    opts: DemoOptions,
    address: tuple[str, int],
    server: PingServer | None,
    deadline: float,
    out: TextIO,
    stop: gevent.event.Event | None = None,
) -> PhaseResult:
    """The workload through a pool of ``opts.size`` connections, with the drop halfway."""
    result = PhaseResult(f"pool of {_n(opts.size, 'connection')}", opts.requests)
    pool = DemoPool(opts.size, address)
    try:
        try:  # start with a full pool, as an application would after its startup
            pool.wait_ready(timeout=max(0.1, min(REQUEST_TIMEOUT, deadline - time.monotonic())))
        except PoolTimeout:
            pass  # still filling: the first requests wait for their connections

        @retry(max_failures=RETRIES, interval=0.005, backoff=2.0)
        def request() -> None:
            result.attempts += 1
            with pool.get() as sock:
                start = time.perf_counter()
                ping(sock)
                result.on_connection.append(time.perf_counter() - start)

        progress = Progress(out, result)
        drive(
            result,
            request,
            opts.greenlets,
            deadline,
            progress,
            _dropper(result, server, pool, progress) if server is not None and opts.drop else None,
            stop,
        )
        result.stats = pool.stats()
        result.connections = result.stats.created
    finally:
        pool.close()
    return result


def _dropper(
    result: PhaseResult, server: PingServer, pool: DemoPool, progress: Progress
) -> Callable[[int], None]:
    """A success callback that makes ``server`` drop every connection once, halfway."""
    halfway = max(1, result.planned // 2)

    def maybe_drop(done: int) -> None:
        if done == halfway and result.dropped is None:
            result.dropped_at = done
            result.created_at_drop = pool.stats().created
            result.dropped = server.drop_all()
            progress.note(
                f"the server dropped all {_n(result.dropped, 'connection')} after {done:,} requests"
            )

    return maybe_drop


def per_connection_phase(
    opts: DemoOptions,
    address: tuple[str, int],
    deadline: float,
    out: TextIO,
    stop: gevent.event.Event | None = None,
) -> PhaseResult:
    """The same greenlets doing ``opts.compare_requests`` requests (fewer than the pooled run:
    a connection per request is slow and ties up an ephemeral port each), each opening (and
    closing) a connection of its own."""
    result = PhaseResult("new connection per request", opts.compare_requests)

    @retry(max_failures=RETRIES, interval=0.005, backoff=2.0)
    def request() -> None:
        result.attempts += 1
        start = time.perf_counter()
        sock = connect(address)
        result.connections += 1
        try:
            ping(sock)
        finally:
            sock.close()
        result.on_connection.append(time.perf_counter() - start)

    drive(result, request, opts.greenlets, deadline, Progress(out, result), stop=stop)
    return result


def preflight(address: tuple[str, int]) -> str | None:
    """One PING on a fresh connection; returns what went wrong, or None."""
    try:
        sock = connect(address)
    except OSError as exc:
        return f"cannot connect: {exc}"
    try:
        ping(sock)
    except OSError as exc:
        return f"no PONG to PING: {exc}"
    finally:
        sock.close()
    return None


def _ms(seconds: float) -> str:
    """A latency for humans: ``0.42 ms``, ``12.3 ms``, ``1.62 s``."""
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.2f} ms" if seconds < 0.01 else f"{seconds * 1000:.1f} ms"


def _n(count: int, word: str) -> str:
    """``1 connection``, ``20 connections``, ``50,000 PINGs``."""
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def _row(label: str, *cells: str) -> str:
    return f"{label:<{_WIDTH}}" + "".join(f"{cell:<{_COLUMN}}" for cell in cells).rstrip()


def _pool_rows(p: PhaseResult) -> list[tuple[str, str]]:
    """The rows only the pooled column has: waiting for a connection, the drop, the recovery."""
    s = p.stats
    if s is None:
        return []
    drop = "off" if p.dropped is None else f"{p.dropped} conns at #{p.dropped_at:,}"
    return [
        ("mean wait in get()", _ms(s.wait_seconds_total / max(s.acquired, 1))),
        ("server dropped", drop),
        ("discarded by the pool", f"{s.discarded.total:,}"),
        ("opened after the drop", "-" if p.dropped is None else f"{p.replaced:,}"),
    ]


def table(pooled: PhaseResult, other: PhaseResult | None) -> str:
    """The summary table, the pooled run and the per-connection run side by side."""
    cols = [pooled] + ([other] if other is not None else [])
    star = " (*)" if other is not None and other.planned != pooled.planned else ""
    lines = [
        _row("", *(c.label for c in cols)),
        _row("", *("-" * len(c.label) for c in cols)),
        _row("requests", f"{pooled.planned:,}", *(f"{c.planned:,}{star}" for c in cols[1:])),
        _row("errors", *(f"{c.errors:,}" for c in cols)),
        _row("requests/s", *(f"{c.rate:,.0f}" for c in cols)),
        _row("latency p50", *(_ms(c.percentile(0.50)) for c in cols)),
        _row("latency p99", *(_ms(c.percentile(0.99)) for c in cols)),
        _row("on the connection p50", *(_ms(c.percentile(0.5, c.on_connection)) for c in cols)),
        _row("connections opened", *(f"{c.connections:,}" for c in cols)),
        _row("retried by @retry", *(f"{c.retried:,}" for c in cols)),
    ]
    lines += [_row(label, value, *("-" for _ in cols[1:])) for label, value in _pool_rows(pooled)]
    if any(c.not_run for c in cols):
        why = "Ctrl-C" if any(c.interrupted for c in cols) else "--max-seconds"
        lines.append(_row(f"not run ({why})", *(f"{c.not_run:,}" for c in cols)))
    lines.append(_row("wall time", *(f"{c.seconds:.2f} s" for c in cols)))
    if star:
        lines.append(
            "(*) fewer requests (--compare-requests): a connection per request is slow and ties"
            " up\n    an ephemeral port each; compare rates and latencies, not totals."
        )
    return "\n".join(lines) + "\n"


def verdict(pooled: PhaseResult, other: PhaseResult | None, greenlets: int) -> list[str]:
    """A few sentences a newcomer can read instead of the table."""
    lines = [_latency_note(pooled, other, greenlets)]
    if other is not None and other.rate > 0 and pooled.rate > 0:
        lines.append(
            f"The pool served {pooled.rate / other.rate:.1f}x the requests per second of a new"
            f" connection per request (p99 {_ms(pooled.percentile(0.99))} vs"
            f" {_ms(other.percentile(0.99))}), opening {pooled.connections:,} connections in all."
        )
    s = pooled.stats
    if pooled.dropped is not None and s is not None:
        reasons = ", ".join(
            f"{name} {count}" for name, count in dataclasses.asdict(s.discarded).items() if count
        )
        lines.append(
            f"Recovery: the server dropped {_n(pooled.dropped, 'connection')} after"
            f" {pooled.dropped_at:,} requests; @retry re-ran {_n(pooled.retried, 'request')}, the"
            f" pool discarded {_n(s.discarded.total, 'connection')} ({reasons or 'none'}) and"
            f" opened {pooled.replaced} to replace them ({s.open}/{s.max_size} open at the end)."
        )
    return [*lines, _outcome([pooled] if other is None else [pooled, other])]


def _latency_note(pooled: PhaseResult, other: PhaseResult | None, greenlets: int) -> str:
    """What the latency rows mean: the pool's is mostly the wait for a connection, measured."""
    s = pooled.stats
    size = s.max_size if s is not None else 0
    wait = s.wait_seconds_total / max(s.acquired, 1) if s is not None else 0.0
    users = _n(min(greenlets, pooled.planned), "greenlet")
    note = (
        f"Latencies include the wait in pool.get(): {users} share {_n(size, 'connection')}, so a"
        f" pooled request's latency (median {_ms(pooled.percentile(0.5))}) is its wait for a"
        f" connection (mean {_ms(wait)}) plus its time on one (median"
        f" {_ms(pooled.percentile(0.5, pooled.on_connection))}, row 'on the connection')."
    )
    if other is not None and other.on_connection:
        note += (
            f" A new connection per request waits for no other greenlet, but pays a connect"
            f" every time ({_ms(other.percentile(0.5, other.on_connection))} median for connect"
            f" and PING) and has the server hold up to {users}' connections at once."
        )
    return note


def _outcome(results: list[PhaseResult]) -> str:
    """The last line: every request succeeded, or what did not."""
    errors = sum(r.errors for r in results)
    not_run = sum(r.not_run for r in results)
    if not errors and not not_run:
        return "Every request succeeded."
    first = next((r.first_error for r in results if r.first_error), None)
    parts = []
    if errors:
        parts.append(f"{errors:,} requests failed" + (f" (first error: {first})" if first else ""))
    if not_run and any(r.interrupted for r in results):
        parts.append(f"{not_run:,} requests were not run: the demo was interrupted (Ctrl-C)")
    elif not_run:
        parts.append(f"{not_run:,} requests were not run: the demo hit --max-seconds")
    stopped = any(r.interrupted for r in results)
    return ("INTERRUPTED: " if stopped else "FAILED: ") + "; ".join(parts) + "."


def _header(opts: DemoOptions, address: tuple[str, int], embedded: bool, out: TextIO) -> None:
    host, port = address
    where = "embedded PING server (in this process)" if embedded else "PING server"
    out.write(
        f"geventconnpool demo: {_n(opts.greenlets, 'greenlet')}, {_n(opts.requests, 'PING')}"
        f" through a pool of {_n(opts.size, 'connection')}\n{where} on {host}:{port}"
    )
    if not embedded:
        out.write(" (no drop: only the embedded server can drop connections on cue)")
    elif opts.drop:
        out.write("; it drops every connection once, halfway")
    out.write("\n\n")
    out.flush()


def run(opts: DemoOptions, out: TextIO, err: TextIO) -> int:
    """Run the demo; returns the exit code: 0 when every request succeeded, 130 after Ctrl-C
    (with the summary so far), else 1."""
    deadline = time.monotonic() + opts.max_seconds
    server = None if opts.external else PingServer().start()
    stop = gevent.event.Event()
    restore = _stop_on_ctrl_c(stop)
    try:
        if server is not None:
            address = server.address
        else:
            address = (opts.host or "127.0.0.1", opts.port or DEFAULT_PORT)
        _header(opts, address, server is not None, out)
        problem = preflight(address)
        if problem is not None:
            err.write(f"error: {address[0]}:{address[1]}: {problem}\n")
            return 1
        return _phases(opts, address, server, deadline, out, stop)
    finally:
        restore()
        if server is not None:
            server.stop()


def _stop_on_ctrl_c(stop: gevent.event.Event) -> Callable[[], None]:
    """Make the first SIGINT set ``stop`` (a second one interrupts as usual); returns the undo.

    Without it, ``KeyboardInterrupt`` lands in whichever greenlet runs, and the demo ends with a
    traceback and no summary. Only the main thread may install signal handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, previous)
        stop.set()

    def restore() -> None:
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, on_sigint)
    return restore


def _phases(
    opts: DemoOptions,
    address: tuple[str, int],
    server: PingServer | None,
    deadline: float,
    out: TextIO,
    stop: gevent.event.Event,
) -> int:
    pooled = pooled_phase(opts, address, server, deadline, out, stop)
    other = None
    if opts.compare and time.monotonic() < deadline and not stop.is_set():
        other = per_connection_phase(opts, address, deadline, out, stop)
    interrupted = stop.is_set()
    timed_out = pooled.timed_out or (other is not None and other.timed_out)
    timed_out = not interrupted and (timed_out or (opts.compare and other is None))
    if interrupted:
        out.write("  ! interrupted (Ctrl-C): the summary so far\n")
    if timed_out:
        out.write(f"  ! stopped by --max-seconds ({opts.max_seconds:g} s)\n")
    out.write(
        "\n"
        + table(pooled, other)
        + "\n"
        + "\n".join(textwrap.fill(line, 100) for line in verdict(pooled, other, opts.greenlets))
        + "\n"
    )
    out.flush()
    if interrupted:
        return INTERRUPTED
    failed = pooled.failed + (other.failed if other is not None else 0)
    return 1 if failed or timed_out else 0
