"""Write a chaos run's figures: a Markdown report, JSON, and the tables in docs/reliability.rst.

Each part (scenarios, contract, soak) becomes one table of rows plus a few notes; the same rows
render as Markdown (the report) and as reStructuredText ``csv-table`` blocks (the docs).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import gevent
import greenlet

from .budget import BudgetRun, ratio_line, summary
from .contract import ContractResult
from .exhaustion import ExhaustionResult
from .hooks import (
    CHURN,
    FRACTION,
    GET_TIMEOUT,
    MIN_SIZE,
    RECONNECT_DELAY,
    RECOVERY_BOUND,
    SLACK,
    HookResult,
)
from .scenarios import ScenarioResult
from .soak import SoakResult

DOCS_START = ".. chaos-figures-start"
DOCS_END = ".. chaos-figures-end"
README_START = ".. chaos-summary-start"
README_END = ".. chaos-summary-end"
Table = tuple[str, list[str], list[list[str]], list[str]]  # title, head, rows, notes


@dataclass
class Report:
    """Everything one ``python -m tests.chaos`` run measured."""

    command: str
    quick: bool
    settings: dict[str, Any]
    scenarios: list[ScenarioResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    contract: list[ContractResult] = field(default_factory=list)
    known: dict[str, str] = field(default_factory=dict)  # contract case@T -> the known bug
    soak: SoakResult | None = None
    budget: list[BudgetRun] = field(default_factory=list)  # plain @retry, then with a budget
    exhaustion: ExhaustionResult | None = None
    hooks: list[HookResult] = field(default_factory=list)
    seconds: float = 0.0  # the whole run, wall clock
    environment: dict[str, str] = field(default_factory=dict)

    def failures(self) -> list[str]:
        """Every broken promise that is not a known bug (those are listed apart)."""
        out = [f"{r.scenario}/{r.backend}: {p}" for r in self.scenarios for p in r.problems]
        for c in self.contract:
            if c.problems and contract_key(c) not in self.known:
                out += [f"contract {contract_key(c)}: {p}" for p in c.problems]
        if self.soak is not None:
            out += [f"soak: {p}" for p in self.soak.problems]
        out += [f"budget/{r.label}: {p}" for r in self.budget for p in r.problems]
        if self.exhaustion is not None:
            out += [f"exhaustion: {p}" for p in self.exhaustion.problems]
        out += [f"hooks/{r.hook} ({r.error}): {p}" for r in self.hooks for p in r.problems]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "quick": self.quick,
            "seconds": round(self.seconds, 1),
            "environment": self.environment,
            "settings": self.settings,
            "scenarios": [r.as_dict() for r in self.scenarios],
            "skipped": self.skipped,
            "contract": [c.as_dict() for c in self.contract],
            "known_bugs": self.known,
            "soak": None if self.soak is None else self.soak.as_dict(),
            "budget": [r.as_dict() for r in self.budget],
            "exhaustion": None if self.exhaustion is None else self.exhaustion.as_dict(),
            "hooks": [r.as_dict() for r in self.hooks],
            "failures": self.failures(),
            "passed": not self.failures(),
        }


def contract_key(c: ContractResult) -> str:
    return f"{c.case}@{c.timeout:g}"


def environment() -> dict[str, str]:
    """Where the figures come from."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit or "unknown",
        "python": platform.python_version(),
        "gevent": gevent.__version__,
        "greenlet": greenlet.__version__,
        "platform": platform.platform(terse=True),
        "cpus": str(os.cpu_count()),
        "redis": _redis_version(),
    }


def _redis_version() -> str:
    from .backends import find_redis_server

    path = find_redis_server()
    if path is None:
        return "not installed"
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout
    return next((w[2:] for w in out.split() if w.startswith("v=")), out.strip() or "unknown")


def scenario_table(report: Report) -> Table:
    head = ["scenario", "backend", "fault (s)", "attempted", "succeeded",
            "failed, visible to the caller", "hung", "full again after", "peak conns / max",
            "fds start / end", "p50 / p99 ms", "result"]  # fmt: skip
    rows = []
    for r in report.scenarios:
        window = f"{r.fault_start:g} to {r.fault_end:g}"
        if r.scenario == "baseline" or r.fault_end == r.fault_start:
            window = "none" if r.scenario == "baseline" else f"at {r.fault_start:g}"
        kinds = ", ".join(f"{k} {v}" for k, v in r.failed_by_type.items())
        ms = " / ".join("n/a" if v is None else f"{v:.0f}" for v in (r.p50_ms, r.p99_ms))
        rows.append([
            r.scenario, r.backend, window,
            str(r.attempted), str(r.succeeded), f"{r.failed} ({kinds})" if r.failed else "0",
            str(r.hung), "never" if r.recovery_s is None else f"{r.recovery_s * 1000:.0f} ms",
            f"{max(r.peak_open, r.peak_sockets)} / {r.max_size}", f"{r.fds_start} / {r.fds_end}",
            ms, "pass" if r.passed else "FAIL",
        ])  # fmt: skip
    notes = [f"{r.scenario}: {r.what}" for r in report.scenarios if r.backend == "ping"]
    return "Chaos scenarios", head, rows, notes + [f"skipped: {why}" for why in report.skipped]


def contract_table(report: Report) -> Table:
    head = ["case", "T (s)", "get() calls", "worst (s)", "bound (s)", "outcomes", "result"]
    rows = []
    for c in report.contract:
        outcomes = ", ".join(f"{k} {v}" for k, v in c.outcomes.items())
        known = not c.passed and contract_key(c) in report.known
        rows.append([
            c.case, f"{c.timeout:g}", str(c.calls + c.hung), f"{c.max_s:.4f}", f"{c.bound:g}",
            outcomes + (f", hung {c.hung}" if c.hung else ""),
            "pass" if c.passed else "FAIL (known bug)" if known else "FAIL",
        ])  # fmt: skip
    return "Backend-down contract", head, rows, [f"{k}: {v}" for k, v in report.known.items()]


def soak_table(s: SoakResult) -> Table:
    faults = ", ".join(f"{k} {v}" for k, v in sorted(s.faults.items())) or "none"
    held = sum(1 for i in s.identities if i["holds"])
    notes = [
        f"{s.checkouts:,} checkouts in {s.seconds:.0f} s by {s.workers} greenlets "
        f"(bound: {s.target_checkouts:,} checkouts or {s.max_seconds:.0f} s).",
        f"Random faults: {faults}.",
        f"Checkouts ended: {', '.join(f'{k} {v}' for k, v in s.outcomes.items())}.",
        f"Counter identities: {held} of {len(s.identities)} hold.",
        f"RSS after warm-up {s.rss_warm_kb:,} kB, at the end {s.rss_end_kb:,} kB "
        f"({s.rss_end_kb - s.rss_warm_kb:+,} kB); gc objects of geventconnpool classes after "
        f"warm-up {sum(s.objects_warm.values())}, at the end {sum(s.objects_end.values())}.",
        f"File descriptors: {s.fds_start} at start, {s.fds_end} at the end.",
        f"Result: {'pass' if s.passed else 'FAIL: ' + '; '.join(s.problems)}.",
    ]
    rows = [[str(i[k]) for k in ("identity", "left", "right", "holds")] for i in s.identities]
    return "Soak", ["identity", "left", "right", "holds"], rows, notes


def tables(report: Report) -> list[Table]:
    out = [scenario_table(report)]
    if report.contract:
        out.append(contract_table(report))
    if report.soak is not None:
        out.append(soak_table(report.soak))
    if report.budget:
        notes = [summary(r) for r in report.budget]
        if len(report.budget) == 2:
            notes.append(ratio_line(*report.budget))
        out.append(("Retry budget", ["run", "summary"], [], notes))
    if report.exhaustion is not None:
        out.append(exhaustion_table(report.exhaustion))
    if report.hooks:
        out.append(hooks_table(report.hooks))
    return out


def _kb(n: float) -> str:
    return f"{n / 1024:,.0f}"


def exhaustion_line(r: ExhaustionResult) -> str:
    """One line for the console."""
    return (
        f"exhaustion: {r.timed_out:,} timed out + {r.killed:,} killed in {r.seconds:g} s; traced "
        f"kB after warm-up {_kb(r.traced_warm)}, peak {_kb(r.traced_peak)}, end "
        f"{_kb(r.traced_exhausted)}, after release {_kb(r.traced_after)} "
        f"({r.bytes_per_get:,.1f} bytes per get()); RSS kB {r.rss_warm_kb:,} -> "
        f"{r.rss_exhausted_kb:,} -> {r.rss_after_kb:,}; held at once after "
        f"{r.held_at_once}/{r.max_size}: "
        + ("pass" if r.passed else "FAIL " + "; ".join(r.problems))
    )


def exhaustion_table(r: ExhaustionResult) -> Table:
    head = [
        "gave up (timed out + killed)",
        "late / stuck",
        "handed out while held",
        "traced kB: warm-up / peak / end / after release",
        "bytes kept per get()",
        "RSS kB: warm-up / end / after release",
        "served after / held at once",
        "result",
    ]
    row = [
        f"{r.gave_up:,} ({r.timed_out:,} + {r.killed:,})", f"{r.late} / {r.stuck}",
        str(r.handed_out),
        " / ".join(_kb(v) for v in (r.traced_warm, r.traced_peak, r.traced_exhausted,
                                    r.traced_after)),
        f"{r.bytes_per_get:,.1f}",
        f"{r.rss_warm_kb:,} / {r.rss_exhausted_kb:,} / {r.rss_after_kb:,}",
        f"{r.served_after:,} / {r.held_at_once} of {r.max_size}",
        "pass" if r.passed else "FAIL",
    ]  # fmt: skip
    notes = [
        f"All {r.max_size} connections held while rounds of {r.round_size} fresh greenlets each "
        f"call get(timeout={r.timeout:g}) and time out, and rounds of {r.round_size} greenlets "
        f"waiting in get() are killed once all are in line ({r.seconds:g} s). Memory is traced "
        "by tracemalloc after a gc, with the load paused: after the first tenth (the baseline), "
        "at the end of the exhaustion, and after the holders released and 1,000 requests ran "
        f"one by one on the fast path; allowed growth 256 kB however many get()s gave up.",
        f"Stats: {_stats_line(r.stats)}.",
        *(f"FAIL: {p}" for p in r.problems),
    ]
    return "Exhausted pool", head, [row], notes


def _stats_line(s: dict[str, Any]) -> str:
    keys = ("open", "idle", "in_use", "waiting", "acquired", "created", "timeouts")
    return ", ".join(f"{k} {s[k]}" for k in keys if k in s) or "none"


def hook_line(r: HookResult) -> str:
    """One line per hook run for the console."""
    outcomes = ", ".join(f"{k} {v}" for k, v in r.outcomes.items())
    return (
        f"hooks/{r.hook} ({r.error}): raised {r.raised}; {r.attempted} requests ({outcomes}); "
        f"connects {r.connects} ({r.connects_raised} raised, connect_failures "
        f"{r.stats.get('connect_failures')}); connects/s {r.per_second(r.connects_fraction):,.0f}"
        f" at {FRACTION:g}, {r.per_second(r.connects_always):,.0f} on every call (bound "
        f"{r.bound_always} in {r.stop_at - r.always_at:g} s); served again after "
        f"{_ms(r.recovery_s)}; held at once {r.held_at_once}/{r.max_size}; greenlets died "
        f"{sum(r.hub_errors.values())}: "
        + ("pass" if r.passed else "FAIL " + "; ".join(r.problems))
    )


def _ms(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds * 1000:.0f} ms"


def hooks_table(results: list[HookResult]) -> Table:
    head = ["hook", "raises", "requests", "outcomes", "connects (raised) / connect_failures",
            f"connects/s: raising on {FRACTION:g} / on every call", "attempts / bound (every call)",
            "worst get() (s)", "served again after", "held at once", "greenlets died / log lines",
            "result"]  # fmt: skip
    rows = []
    for r in results:
        outcomes = ", ".join(f"{k} {v}" for k, v in r.outcomes.items())
        rows.append([
            r.hook, r.error, str(r.attempted), outcomes,
            f"{r.connects} ({r.connects_raised}) / {r.stats.get('connect_failures')}",
            f"{r.per_second(r.connects_fraction):,.0f} / {r.per_second(r.connects_always):,.0f}",
            f"{r.connects_always} / {r.bound_always}", f"{r.worst_get_s:.3f}",
            _ms(r.recovery_s), f"{r.held_at_once} / {r.max_size}",
            f"{sum(r.hub_errors.values())} / {sum(r.log_records.values())}",
            "pass" if r.passed else "FAIL",
        ])  # fmt: skip
    first = results[0]
    notes = [
        f"Each hook in its own {first.seconds:g} s run: {first.workers} greenlets (5 for "
        "_keepalive, so connections idle long enough to be pinged) do ECHO requests on a pool "
        f"of {MIN_SIZE} to {first.max_size} (reconnect_delay {RECONNECT_DELAY:g} s) against the "
        f"PING server; {CHURN:.0%} of requests find their connection broken (discarded, "
        f"replaced). The hook raises on {FRACTION:g} of its calls "
        f"from {first.fraction_at:g} s, on every call from {first.always_at:g} s, and stops at "
        f"{first.stop_at:g} s. HookFault is a BaseException subclass (not an Exception); "
        "HookError an Exception (the reference run).",
        "Bound on connect attempts while the hook raises on every call: max_size + "
        "max(max_connecting, min_size) x (1 + t / min(reconnect_delay x 0.5, 0.2 s)) + one per "
        "used connection closed meanwhile (a connection that served a request or a ping is "
        "replaced at once, as after any error); a connect that raises, or a new connection "
        "failing its first check, waits for the backoff.",
        f"Every get() must end within {GET_TIMEOUT + SLACK:g} s; requests must be served again "
        f"within {RECOVERY_BOUND:g} s of the hook stopping; then max_size greenlets hold a "
        "connection at once. Greenlets died: tracebacks the hub printed (a pool greenlet "
        "killed by the hook's error); log lines: the pool's own, any level.",
        *(f"FAIL {r.hook} ({r.error}): {p}" for r in results for p in r.problems),
    ]
    return "BaseException from a hook", head, rows, notes


def provenance(report: Report, code: str) -> str:
    env = report.environment
    return (
        f"{code}{report.command}{code} on {env.get('date')} at commit {env.get('commit')} "
        f"(Python {env.get('python')}, gevent {env.get('gevent')}, greenlet {env.get('greenlet')}, "
        f"redis-server {env.get('redis')}, {env.get('cpus')} CPUs, {env.get('platform')})."
    )


def markdown(report: Report) -> str:
    s = report.settings
    out = [
        "# Chaos report" + (" (quick)" if report.quick else ""),
        f"Produced by {provenance(report, '`')}",
        f"Each scenario: {s.get('seconds')} s, {s.get('workers')} greenlets doing ECHO requests "
        f"through `@retry` (max_failures={s.get('retries')}) on a pool with "
        f"min_size={s.get('min_size')}, max_size={s.get('max_size')}, get timeout "
        f"{s.get('get_timeout')} s and a {s.get('io_timeout')} s deadline per request, behind "
        f"the FaultProxy. A request taking longer than {s.get('hard_bound')} s counts as hung.",
    ]
    for title, head, rows, notes in tables(report):
        lines = [head, ["---"] * len(head), *rows]
        out += [f"## {title}", "\n".join("| " + " | ".join(r) + " |" for r in lines)]
        out += ["\n".join(f"- {n}" for n in notes)] if notes else []
    verdict = [f"- FAIL: {f}" for f in report.failures()] or ["All promises kept."]
    return "\n\n".join([*out, "## Verdict", "\n".join(verdict)]) + "\n"


def _csv(cells: list[str]) -> str:
    return ", ".join('"' + c.replace('"', '""') + '"' for c in cells)


def rst_figures(report: Report) -> str:
    """The docs' block: the scenario and contract tables as ``csv-table``; the soak's summary."""
    out = [DOCS_START, "", f"Latest figures: {provenance(report, '``')}", ""]
    for title, head, rows, notes in tables(report):
        if title == "Soak" or not rows:  # a summary in notes only: a table needs rows
            out += [f"{title}:", "", *(f"* {n}" for n in notes), ""]
            continue
        out += [f".. csv-table:: {title}", f"   :header: {_csv(head)}", ""]
        out += [*(f"   {_csv(r)}" for r in rows), ""]
        if title != "Chaos scenarios" and notes:  # the docs describe the scenarios themselves
            out += [*(f"* {n}" for n in notes), ""]
    return "\n".join([*out, DOCS_END])


def readme_summary(data: dict[str, Any]) -> str:
    """The README's few lines about the latest full run, from its JSON report (``as_dict()``):
    the one place the README states chaos figures, so they cannot disagree with the report."""
    env, scenarios, soak = data["environment"], data["scenarios"], data.get("soak")
    passed = sum(1 for s in scenarios if s["passed"])
    recoveries = [s["recovery_s"] for s in scenarios if s.get("recovery_s") is not None]
    lines = [
        README_START,
        "",
        f"Latest run: ``{data['command']}``, {env['date']}, commit {env['commit']}, Python "
        f"{env['python']}, gevent {env['gevent']}, greenlet {env.get('greenlet', '?')}"
        + (f", {data['seconds']:.0f} s in all" if data.get("seconds") else "")
        + ".",
        "",
        f"- chaos: {passed} of {len(scenarios)} scenarios passed; requests hung: "
        f"{sum(s['hung'] for s in scenarios)}; peak connections above ``max_size``: "
        f"{sum(max(s['peak_open'], s['peak_sockets']) > s['max_size'] for s in scenarios)}; "
        f"descriptors leaked: {sum(s['fds_end'] != s['fds_start'] for s in scenarios)}; "
        f"slowest return to a full pool after a fault: {max(recoveries, default=0) * 1000:.0f} ms.",
    ]
    if data.get("contract"):
        worst = max(c["max_s"] - c["timeout"] for c in data["contract"])
        lines.append(
            f"- backend down: {len(data['contract'])} cases, slowest ``get(timeout=T)`` ended "
            f"T + {worst * 1000:.0f} ms after it was called."
        )
    if soak is not None:
        faults = sum(soak["faults"].values())
        held = sum(1 for i in soak["identities"] if i.get("holds", i.get("passed")))
        lines.append(
            f"- soak: {soak['checkouts']:,} checkouts in {soak['seconds']:.0f} s with {faults} "
            f"random faults; {held} of {len(soak['identities'])} counter identities hold; "
            f"descriptors {soak['fds_start']} at the start, {soak['fds_end']} at the end; "
            f"{'pass' if soak['passed'] else 'FAIL'}."
        )
    ex = data.get("exhaustion")
    if ex is not None:
        lines.append(
            f"- exhausted pool: {ex['gave_up']:,} ``get()`` calls timed out or were killed while "
            f"every connection was held; {ex['bytes_per_get']:,.1f} bytes kept per call; "
            f"{'pass' if ex['passed'] else 'FAIL'}."
        )
    hooks = data.get("hooks") or []
    if hooks:
        passed = sum(1 for h in hooks if h["passed"])
        lines.append(
            f"- a hook raising a BaseException: {passed} of {len(hooks)} hooks passed (no connect "
            "storm, no lost slot, every ``get()`` within its timeout, served again after)."
        )
    return "\n".join([*lines, "", README_END])


def replace_between(path: Path, start: str, end: str, block: str) -> bool:
    """Replace the text from the ``start`` marker to the ``end`` marker in ``path``."""
    text = path.read_text()
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        print(f"{path}: no {start} / {end} markers; figures not written", file=sys.stderr)
        return False
    path.write_text(text[:i] + block + text[j + len(end) :])
    return True


def write(
    report: Report, directory: Path, stem: str, docs: Path | None, readme: Path | None = None
) -> list[Path]:
    """Write ``<stem>.md`` and ``<stem>.json`` (the figures into ``docs``, the summary into
    ``readme``); return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    md, js = directory / f"{stem}.md", directory / f"{stem}.json"
    md.write_text(markdown(report))
    js.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    written = [md, js]
    for path, start, end, block in (
        (docs, DOCS_START, DOCS_END, lambda: rst_figures(report)),
        (readme, README_START, README_END, lambda: readme_summary(report.as_dict())),
    ):
        if path is not None and path.exists() and replace_between(path, start, end, block()):
            written.append(path)
    return written
