"""Write a chaos run's figures: Markdown and JSON reports, and the table in docs/reliability.rst."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import gevent
import greenlet

from .contract import ContractResult
from .scenarios import ScenarioResult
from .soak import SoakResult

DOCS_START = ".. chaos-figures-start"
DOCS_END = ".. chaos-figures-end"
README_START = ".. chaos-summary-start"
README_END = ".. chaos-summary-end"


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
    for word in out.split():
        if word.startswith("v="):
            return word[2:]
    return out.strip() or "unknown"


# -- formatting ---------------------------------------------------------------------------------
def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def _recovery(r: ScenarioResult) -> str:
    return "never" if r.recovery_s is None else f"{r.recovery_s * 1000:.0f} ms"


def _window(r: ScenarioResult) -> str:
    if r.scenario == "baseline":
        return "none"
    if r.fault_end == r.fault_start:
        return f"at {r.fault_start:g}"
    return f"{r.fault_start:g} to {r.fault_end:g}"


def _failed(r: ScenarioResult) -> str:
    if not r.failed:
        return "0"
    kinds = ", ".join(f"{k} {v}" for k, v in r.failed_by_type.items())
    return f"{r.failed} ({kinds})"


SCENARIO_HEAD = [
    "scenario",
    "backend",
    "fault (s)",
    "attempted",
    "succeeded",
    "failed, visible to the caller",
    "hung",
    "full again after",
    "peak conns / max",
    "fds start / end",
    "p50 / p99 ms",
    "result",
]


def scenario_rows(results: Iterable[ScenarioResult]) -> list[list[str]]:
    return [
        [
            r.scenario,
            r.backend,
            _window(r),
            str(r.attempted),
            str(r.succeeded),
            _failed(r),
            str(r.hung),
            _recovery(r),
            f"{max(r.peak_open, r.peak_sockets)} / {r.max_size}",
            f"{r.fds_start} / {r.fds_end}",
            f"{_ms(r.p50_ms)} / {_ms(r.p99_ms)}",
            "pass" if r.passed else "FAIL",
        ]
        for r in results
    ]


CONTRACT_HEAD = ["case", "T (s)", "get() calls", "worst (s)", "bound (s)", "outcomes", "result"]


def contract_rows(results: Iterable[ContractResult], known: dict[str, str]) -> list[list[str]]:
    rows = []
    for c in results:
        verdict = "pass" if c.passed else "FAIL"
        if not c.passed and contract_key(c) in known:
            verdict = "FAIL (known bug)"
        outcomes = ", ".join(f"{k} {v}" for k, v in c.outcomes.items())
        if c.hung:
            outcomes += f", hung {c.hung}"
        rows.append(
            [
                c.case,
                f"{c.timeout:g}",
                str(c.calls + c.hung),
                f"{c.max_s:.4f}",
                f"{c.bound:g}",
                outcomes,
                verdict,
            ]
        )
    return rows


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return lines


def _rst_table(title: str, head: list[str], rows: list[list[str]]) -> list[str]:
    lines = [f".. list-table:: {title}", "   :header-rows: 1", ""]
    for row in [head, *rows]:
        lines.append(f"   * - {row[0]}")
        lines += [f"     - {cell}" for cell in row[1:]]
    return [*lines, ""]


def _soak_summary(s: SoakResult) -> list[str]:
    faults = ", ".join(f"{k} {v}" for k, v in sorted(s.faults.items()))
    outcomes = ", ".join(f"{k} {v}" for k, v in s.outcomes.items())
    held = sum(1 for i in s.identities if i["holds"])
    return [
        f"{s.checkouts:,} checkouts in {s.seconds:.0f} s by {s.workers} greenlets "
        f"(bound: {s.target_checkouts:,} checkouts or {s.max_seconds:.0f} s).",
        f"Random faults: {faults or 'none'}.",
        f"Checkouts ended: {outcomes}.",
        f"Counter identities: {held} of {len(s.identities)} hold.",
        f"RSS after warm-up {s.rss_warm_kb:,} kB, at the end {s.rss_end_kb:,} kB "
        f"({s.rss_end_kb - s.rss_warm_kb:+,} kB); gc objects of geventconnpool classes after "
        f"warm-up {sum(s.objects_warm.values())}, at the end {sum(s.objects_end.values())}.",
        f"File descriptors: {s.fds_start} at start, {s.fds_end} at the end.",
        f"Result: {'pass' if s.passed else 'FAIL: ' + '; '.join(s.problems)}.",
    ]


def markdown(report: Report) -> str:
    env = report.environment
    s = report.settings
    out = [
        "# Chaos report" + (" (quick)" if report.quick else ""),
        "",
        f"Produced by `{report.command}` on {env.get('date')} at commit {env.get('commit')} "
        f"(Python {env.get('python')}, gevent {env.get('gevent')}, greenlet "
        f"{env.get('greenlet')}, redis-server {env.get('redis')}, {env.get('cpus')} CPUs, "
        f"{env.get('platform')}).",
        "",
        f"Each scenario: {s.get('seconds')} s, {s.get('workers')} greenlets doing ECHO requests "
        f"through `@retry` (max_failures={s.get('retries')}) on a pool with "
        f"min_size={s.get('min_size')}, max_size={s.get('max_size')}, get timeout "
        f"{s.get('get_timeout')} s and a {s.get('io_timeout')} s deadline per request, behind "
        f"the FaultProxy. A request taking longer than {s.get('hard_bound')} s counts as hung.",
        "",
        "## Scenarios",
        "",
        *_md_table(SCENARIO_HEAD, scenario_rows(report.scenarios)),
        "",
    ]
    out += [f"- {r.scenario}: {r.what}" for r in report.scenarios if r.backend == "ping"]
    out += [f"- skipped: {why}" for why in report.skipped]
    if report.contract:
        out += ["", "## Backend-down contract", ""]
        out += _md_table(CONTRACT_HEAD, contract_rows(report.contract, report.known))
        out += [""] + [f"- {k}: {v}" for k, v in report.known.items()]
    if report.soak is not None:
        out += ["", "## Soak", ""] + [f"- {line}" for line in _soak_summary(report.soak)]
        out += ["", "| identity | left | right | holds |", "|---|---|---|---|"]
        out += [
            f"| {i['identity']} | {i['left']} | {i['right']} | {i['holds']} |"
            for i in report.soak.identities
        ]
    failures = report.failures()
    out += ["", "## Verdict", ""]
    out += [f"- FAIL: {f}" for f in failures] or ["All promises kept (known bugs listed above)."]
    return "\n".join(out) + "\n"


def rst_figures(report: Report) -> str:
    env = report.environment
    out = [
        DOCS_START,
        "",
        f"Latest figures: ``{report.command}``, {env.get('date')}, commit {env.get('commit')}, "
        f"Python {env.get('python')}, gevent {env.get('gevent')}, redis-server "
        f"{env.get('redis')}, {env.get('cpus')} CPUs.",
        "",
        *_rst_table("Chaos scenarios", SCENARIO_HEAD, scenario_rows(report.scenarios)),
    ]
    if report.contract:
        rows = contract_rows(report.contract, report.known)
        out += _rst_table("Backend-down contract", CONTRACT_HEAD, rows)
        out += [f"* {k}: {v}" for k, v in report.known.items()] + [""]
    if report.soak is not None:
        out += ["Soak:", ""] + [f"* {line}" for line in _soak_summary(report.soak)] + [""]
    out.append(DOCS_END)
    return "\n".join(out)


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
    """Write ``<stem>.md`` and ``<stem>.json`` (and the figures into ``docs``, the summary into
    ``readme``); return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    md, js = directory / f"{stem}.md", directory / f"{stem}.json"
    md.write_text(markdown(report))
    js.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    written = [md, js]
    if docs is not None and docs.exists():
        text = docs.read_text()
        start, end = text.find(DOCS_START), text.find(DOCS_END)
        if start >= 0 and end > start:
            docs.write_text(text[:start] + rst_figures(report) + text[end + len(DOCS_END) :])
            written.append(docs)
        else:
            print(
                f"{docs}: no {DOCS_START} / {DOCS_END} markers; figures not written",
                file=sys.stderr,
            )
    if readme is not None and readme.exists():
        summary = readme_summary(report.as_dict())
        if replace_between(readme, README_START, README_END, summary):
            written.append(readme)
    return written
