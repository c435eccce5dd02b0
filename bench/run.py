"""``python -m bench`` / ``python bench/run.py``: run every implementation side by side.

The parent starts the server (redis-server, or the embedded PING server), then for each workload
runs the implementations interleaved, A B C A B C, each in a fresh child process
(``python -m bench.worker``) pinned to another CPU than the server. It prints a table, writes
``latest.json`` and ``latest.md`` (and ``chart.png``) to the output directory, and never installs
anything: a missing peer is reported as skipped, with the command that would install it.
"""

from __future__ import annotations

import argparse
import json
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report
from bench.plan import (
    IMPL_ORDER,
    INSTALL_HINTS,
    LABELS,
    WORKLOAD_ORDER,
    WorkloadPlan,
    full_plan,
    quick_plan,
)
from bench.servers import APT_HINT, REPO, CpuPlan, Server, ServerMissing, cpu_plan, open_server

Result = dict[str, Any]
DEFAULT_OUT = REPO / "bench" / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--server",
        choices=("auto", "redis", "embedded"),
        default="auto",
        help="redis-server, the embedded PING server, or redis if installed (default)",
    )
    p.add_argument("--quick", action="store_true", help="about 1.5 minutes: fewer, shorter rounds")
    p.add_argument("--rounds", type=int, help="rounds per workload (overrides the plan)")
    p.add_argument("--impls", help=f"comma-separated subset of: {','.join(IMPL_ORDER)}")
    p.add_argument("--workloads", help=f"comma-separated subset of: {','.join(WORKLOAD_ORDER)}")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where results go")
    p.add_argument("--no-chart", action="store_true", help="do not draw chart.png")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes with taskset")
    return p.parse_args(argv)


def subset(text: str | None, known: tuple[str, ...], what: str) -> list[str]:
    """The names in a comma-separated option, in canonical order; all of them when absent."""
    if not text:
        return list(known)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return [n for n in known if n in names]


def log(message: str) -> None:
    """Progress, on stderr (stdout gets the table)."""
    print(message, file=sys.stderr, flush=True)


def parse_result(stdout: str, stderr: str, returncode: int | None) -> Result:
    """The child's ``RESULT`` line, or an error that says what went wrong."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            result: Result = json.loads(line[len("RESULT ") :])
            return result
    tail = (stderr or stdout).strip().splitlines()[-5:]
    return {"error": f"child exited with {returncode} and no result", "stderr": "\n".join(tail)}


class Runner:
    """Runs child jobs against one server, with one CPU plan."""

    def __init__(self, server: Server, cpus: CpuPlan) -> None:
        self.server = server
        self.cpus = cpus

    def command(self, job: dict[str, Any]) -> list[str]:
        """The child's command line."""
        return [*self.cpus.client, sys.executable, "-m", "bench.worker", json.dumps(job)]

    def job(self, impl: str, workload: str, plan: WorkloadPlan) -> dict[str, Any]:
        """The JSON job a child gets."""
        return {
            "impl": impl,
            "workload": workload,
            "host": "127.0.0.1",
            "port": self.server.port,
            "params": plan.params,
        }

    def run(self, impl: str, workload: str, plan: WorkloadPlan) -> Result:
        """One child run of ``workload`` on ``impl``, with its wall time (``wall_s``)."""
        start = time.monotonic()
        result = self.run_child(impl, workload, plan)
        result["wall_s"] = round(time.monotonic() - start, 2)
        return result

    def run_child(self, impl: str, workload: str, plan: WorkloadPlan) -> Result:
        """Start the child, wait for it (bounded by the plan's timeout), parse its result."""
        job = self.job(impl, workload, plan)
        if workload == "recovery":
            return self.run_recovery(job, plan)
        try:
            done = subprocess.run(
                self.command(job),
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=plan.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {plan.timeout} s"}
        return parse_result(done.stdout, done.stderr, done.returncode)

    def run_recovery(self, job: dict[str, Any], plan: WorkloadPlan) -> Result:
        """A recovery child: wait for READY, restart the server, tell the child when it was up."""
        proc = subprocess.Popen(
            self.command(job),
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            ready, before = wait_for_line(proc, "READY", timeout=30.0)
            if not ready:
                out, err = proc.communicate(timeout=10)
                return parse_result("".join(before) + out, err, proc.returncode)
            time.sleep(plan.extra["stop_after"])
            t_down, t_up = self.server.restart(plan.extra["down_s"])
            assert proc.stdin is not None
            proc.stdin.write(f"UP {t_down} {t_up}\n")
            proc.stdin.flush()
            out, err = proc.communicate(timeout=plan.timeout)
            return parse_result(out, err, proc.returncode)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {plan.timeout} s"}
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def wait_for_line(proc: subprocess.Popen[str], word: str, timeout: float) -> tuple[bool, list[str]]:
    """Read the child's stdout until a line equal to ``word``: (found, the lines read before)."""
    assert proc.stdout is not None
    lines: list[str] = []
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            line = proc.stdout.readline()
            if not line:
                break
            if line.strip() == word:
                return True, lines
            lines.append(line)
    return False, lines


def run_workload(
    runner: Runner, workload: str, plan: WorkloadPlan, impls: list[str], missing: dict[str, str]
) -> dict[str, list[Result]]:
    """All rounds of one workload, interleaved A B C A B C; results per implementation."""
    rounds: dict[str, list[Result]] = {impl: [] for impl in impls}
    for r in range(plan.rounds):
        for impl in impls:
            if impl in missing:
                continue
            result = runner.run(impl, workload, plan)
            skipped = str(result.get("skipped", ""))
            if skipped.startswith("not installed"):
                missing[impl] = f"{skipped}; install: {INSTALL_HINTS.get(impl, '?')}"
            rounds[impl].append(result)
            brief = report.brief(workload, result)
            log(
                f"[{workload} {r + 1}/{plan.rounds}] {LABELS[impl]}: {brief} ({result['wall_s']} s)"
            )
    return rounds


def main(argv: list[str] | None = None) -> int:
    """Run the bench; 0 on success, 2 when the requested server is missing."""
    args = parse_args(argv)
    impls = subset(args.impls, IMPL_ORDER, "implementations")
    workloads = subset(args.workloads, WORKLOAD_ORDER, "workloads")
    plans = quick_plan() if args.quick else full_plan()
    if args.rounds:
        plans = {
            k: WorkloadPlan(args.rounds, p.params, p.timeout, p.extra) for k, p in plans.items()
        }
    cpus = cpu_plan(not args.no_pin)
    try:
        server = open_server(args.server, cpus)
    except ServerMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.server == "auto" and server.kind == "embedded":
        log(f"redis-server not found ({APT_HINT}): using the embedded PING server")
    log(f"server: {server.kind} {server.version} on 127.0.0.1:{server.port}; {cpus.note}")
    started = time.monotonic()
    missing: dict[str, str] = {}
    raw: dict[str, dict[str, list[Result]]] = {}
    try:
        runner = Runner(server, cpus)
        for workload in workloads:
            raw[workload] = run_workload(runner, workload, plans[workload], impls, missing)
    finally:
        server.close()
    doc = report.build(
        raw,
        plans,
        impls,
        missing,
        server,
        cpus,
        args.quick,
        time.monotonic() - started,
        argv if argv is not None else sys.argv[1:],
    )
    print(report.text(doc))
    report.write(doc, args.out, chart=not args.no_chart)
    if (
        args.out.resolve() == DEFAULT_OUT.resolve()
        and not args.quick
        and len(impls) == len(IMPL_ORDER)
        and len(workloads) == len(WORKLOAD_ORDER)
    ):
        report.update_readme(doc, REPO / "bench" / "README.md")
    log(f"wrote {args.out}/latest.json, latest.md" + ("" if args.no_chart else ", chart.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
