"""``python -m geventconnpool demo``: the table, the drop and recovery, the options, exit codes."""

from __future__ import annotations

import io
import itertools
import os
import pty
import re
import select
import signal
import sys
import time
from pathlib import Path

import gevent
import pytest
from gevent import subprocess

from geventconnpool import demo
from geventconnpool.__main__ import main, parse
from geventconnpool.demo import REQUEST_TIMEOUT, DemoOptions, PhaseResult
from geventconnpool.testing import PingServer, free_port

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--greenlets", "50", "--requests", "3,000", "--compare-requests", "500"]
TIMEOUT = 60.0


class Run:
    """One finished ``python -m geventconnpool demo`` process."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def row(self, label: str) -> list[str]:
        """The cells of the table row ``label`` (split on runs of 2+ spaces)."""
        for line in self.out.splitlines():
            if line.startswith(label + "  "):
                return re.split(r"\s{2,}", line[len(label) :].strip())
        raise AssertionError(f"no row {label!r} in:\n{self.out}")

    def header(self) -> list[str]:
        """The table's column titles: the line above the line of dashes."""
        lines = self.out.splitlines()
        for above, line in itertools.pairwise(lines):
            if line.strip().startswith("---"):
                return re.split(r"\s{2,}", above.strip())
        raise AssertionError(f"no table in:\n{self.out}")

    def __repr__(self) -> str:
        return f"<exit {self.code}>\n{self.out}\n{self.err}"


def run_demo(*args: str, timeout: float = TIMEOUT) -> Run:
    """Run the demo in a subprocess (gevent's: this process's own servers keep serving)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "geventconnpool", "demo", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"demo still running after {timeout}s:\n{out.decode()}{err.decode()}")
    return Run(proc.returncode, out.decode(), err.decode())


@pytest.fixture(scope="module")
def small_run() -> Run:
    """The demo with small counts, against its embedded server (run once for this module)."""
    return run_demo(*SMALL)


def test_demo_exits_zero_when_every_request_succeeds(small_run: Run) -> None:
    assert small_run.code == 0, small_run
    assert "Every request succeeded." in small_run.out


def test_demo_prints_the_summary_table_side_by_side(small_run: Run) -> None:
    assert small_run.header() == ["pool of 20 connections", "new connection per request"]
    assert small_run.row("requests") == ["3,000", "500 (*)"]
    assert "(*) fewer requests (--compare-requests)" in small_run.out
    assert all(rate(cell) > 0 for cell in small_run.row("requests/s"))
    for label in ("latency p50", "latency p99"):
        assert all(re.fullmatch(r"\d+\.\d+ m?s", cell) for cell in small_run.row(label)), label


def rate(cell: str) -> float:
    return float(cell.replace(",", ""))


def test_demo_reports_zero_errors(small_run: Run) -> None:
    assert small_run.row("errors") == ["0", "0"]


def test_demo_counts_connections_opened(small_run: Run) -> None:
    pooled, per_request = small_run.row("connections opened")
    assert 20 <= int(pooled) <= 40 + 20, small_run  # the fill, then one replacement each
    assert int(per_request.replace(",", "")) >= 500  # one per request


def test_demo_server_drops_every_connection_halfway(small_run: Run) -> None:
    assert small_run.row("server dropped")[0] == "20 conns at #1,500"
    assert "! the server dropped all 20 connections after 1,500 requests" in small_run.out


def test_demo_replaces_the_dropped_connections(small_run: Run) -> None:
    discarded = int(small_run.row("discarded by the pool")[0])
    replaced = int(small_run.row("opened after the drop")[0])
    assert discarded >= 20 and replaced >= 20, small_run
    assert "20/20 open at the end" in small_run.out


def test_demo_retries_the_requests_the_drop_broke(small_run: Run) -> None:
    retried = int(small_run.row("retried by @retry")[0])
    assert retried >= 1, small_run
    assert re.search(rf"@retry re-ran {retried} requests?,", small_run.out), small_run


def test_demo_progress_is_plain_lines_when_not_a_tty(small_run: Run) -> None:
    assert "\r" not in small_run.out
    assert re.search(r"^  pool of 20 connections +3,000/3,000 +100%", small_run.out, re.M)


def test_demo_redraws_one_progress_line_on_a_tty() -> None:
    leader, follower = pty.openpty()
    argv = [sys.executable, "-m", "geventconnpool", "demo", *SMALL, "--no-compare"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=follower, stderr=follower)
    os.close(follower)
    out = b""
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            if not select.select([leader], [], [], 0.5)[0]:
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == 0, out.decode()
    assert re.search(rb"\r  pool of 20 connections +3,000/3,000 +100%", out), out.decode()


def test_demo_uses_the_host_and_port_given(server: PingServer) -> None:
    host, port = server.address
    result = run_demo(*SMALL, "--host", host, "--port", str(port))
    assert result.code == 0, result
    assert f"PING server on {host}:{port}" in result.out
    assert server.accepted >= 20 + 500  # the pool's connections and one per request
    assert result.row("server dropped")[0] == "off"  # only the embedded server can drop


def test_demo_exits_nonzero_when_the_server_is_unreachable() -> None:
    result = run_demo("--port", str(free_port()))
    assert result.code == 1, result
    assert "cannot connect" in result.err


def test_demo_max_seconds_stops_the_run_and_fails() -> None:
    start = time.monotonic()
    result = run_demo("--requests", "100000000", "--max-seconds", "1", timeout=30)
    assert time.monotonic() - start < 20
    assert result.code == 1, result
    assert "! stopped by --max-seconds (1 s)" in result.out
    assert int(result.row("not run (--max-seconds)")[0].replace(",", "")) > 0
    assert "requests were not run: the demo hit --max-seconds" in result.out


def test_demo_no_compare_shows_only_the_pooled_column() -> None:
    result = run_demo(*SMALL, "--no-compare")
    assert result.code == 0, result
    assert result.header() == ["pool of 20 connections"]
    assert "new connection per request" not in result.out


def test_demo_no_drop_keeps_the_connections() -> None:
    result = run_demo(*SMALL, "--no-compare", "--no-drop")
    assert result.code == 0, result
    assert result.row("server dropped") == ["off"]
    assert result.row("opened after the drop") == ["-"]
    assert result.row("discarded by the pool") == ["0"]


def test_demo_exits_nonzero_when_requests_fail(
    server: PingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(sock: object) -> None:
        raise ConnectionError("no PONG")

    monkeypatch.setattr(demo, "preflight", lambda address: None)
    monkeypatch.setattr(demo, "ping", broken)
    host, port = server.address
    opts = DemoOptions(greenlets=5, requests=10, size=2, host=host, port=port, compare=False)
    out = io.StringIO()
    assert demo.run(opts, out, io.StringIO()) == 1
    assert "FAILED: 10 requests failed (first error: ConnectionError('no PONG'))" in out.getvalue()


def test_command_line_accepts_thousands_separators() -> None:
    _, args = parse(["demo", "--requests", "50,000", "--compare-requests", "5_000"])
    assert (args.requests, args.compare_requests) == (50_000, 5_000)


@pytest.mark.parametrize("option", ["--greenlets", "--requests", "--size", "--compare-requests"])
def test_command_line_rejects_counts_below_one(
    option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(["demo", option, "0"])
    assert exc.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_command_line_without_a_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "demo" in capsys.readouterr().err


def test_percentile_is_nearest_rank() -> None:
    result = PhaseResult("x", 4, latencies=[0.4, 0.1, 0.3, 0.2])
    assert (result.percentile(0.5), result.percentile(0.99), result.percentile(0.0)) == (
        0.2,
        0.4,
        0.1,
    )


def test_demo_stops_at_the_first_ctrl_c_with_its_summary_and_exit_code_130() -> None:
    argv = [sys.executable, "-m", "geventconnpool", "demo", "--requests", "100000000"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        with gevent.Timeout(TIMEOUT, AssertionError("no progress line from the demo")):
            lines = [proc.stdout.readline()]
            while not re.match(rb"  pool of 20 connections +[\d,]+/", lines[-1]):
                assert lines[-1], b"".join(lines).decode()
                lines.append(proc.stdout.readline())
        proc.send_signal(signal.SIGINT)
        interrupted_at = time.monotonic()
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = Run(proc.returncode, b"".join(lines).decode() + out.decode(), err.decode())
    assert time.monotonic() - interrupted_at < REQUEST_TIMEOUT + 5, result
    assert result.code == 130, result
    assert "Traceback" not in result.err, result
    assert "! interrupted (Ctrl-C): the summary so far" in result.out
    assert result.header() == ["pool of 20 connections"]  # the comparison never started
    assert int(result.row("not run (Ctrl-C)")[0].replace(",", "")) > 0
    assert "INTERRUPTED: " in result.out and "the demo was interrupted (Ctrl-C)" in result.out


def test_demo_quick_runs_the_small_counts() -> None:
    result = run_demo("--quick")
    assert result.code == 0, result
    assert result.row("requests") == ["3,000", "500 (*)"]
    assert "50 greenlets" in result.out


def test_version_option_prints_the_package_version() -> None:
    import geventconnpool

    proc = subprocess.run(
        [sys.executable, "-m", "geventconnpool", "--version"],
        cwd=ROOT,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc
    assert proc.stdout.decode().strip() == f"geventconnpool {geventconnpool.__version__}"


def test_demo_shows_the_time_on_the_connection_apart_from_the_wait(small_run: Run) -> None:
    """The pool's latency includes the wait for a connection; the row and the note say how much
    of it was the wait and how much the request itself (issue 21)."""
    cells = small_run.row("on the connection p50")
    assert len(cells) == 2 and all(re.fullmatch(r"\d+\.\d+ m?s", c) for c in cells), cells
    text = " ".join(small_run.out.split())
    assert re.search(
        r"50 greenlets share 20 connections, so a pooled request's latency \(median \d+\.\d+ m?s\)"
        r" is its wait for a connection \(mean \d+\.\d+ m?s\) plus its time on one \(median"
        r" \d+\.\d+ m?s, row 'on the connection'\)\. A new connection per request waits for no"
        r" other greenlet, but pays a connect every time \(\d+\.\d+ m?s median for connect and"
        r" PING\)",
        text,
    ), small_run.out


def test_the_on_connection_times_are_measured_per_request() -> None:
    with PingServer() as server:
        opts = DemoOptions(greenlets=5, requests=50, compare_requests=20, drop=False)
        deadline = time.monotonic() + 30
        out = io.StringIO()
        pooled = demo.pooled_phase(opts, server.address, server, deadline, out)
        other = demo.per_connection_phase(opts, server.address, deadline, out)
    assert len(pooled.on_connection) == pooled.ok == 50
    assert len(other.on_connection) == other.ok == 20
    # time on the connection is part of each request's latency, never more
    assert pooled.percentile(0.5, pooled.on_connection) <= pooled.percentile(1.0)
    assert other.percentile(0.5, other.on_connection) <= other.percentile(1.0)


@pytest.mark.integration  # reads README.rst: the checkout, not the installed package
def test_the_readme_says_how_many_requests_the_comparison_makes() -> None:
    readme = " ".join((ROOT / "README.rst").read_text().split())
    assert f"do {DemoOptions().compare_requests:,} requests (``--compare-requests``" in readme
    assert "Then the same workload" not in readme
