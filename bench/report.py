"""Turn the children's raw results into medians, ratios, targets, tables, JSON and a chart."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.plan import BASELINE, DESCRIPTIONS, LABELS, NOTES, OURS, WorkloadPlan
from bench.servers import CpuPlan, Server
from bench.stats import median, ratio

Result = dict[str, Any]
Doc = dict[str, Any]
README_START = "<!-- latest-results:start -->"
README_END = "<!-- latest-results:end -->"
PEERS = ("gcp021", "gsocketpool", "socketpool", "gcpool", "redispy", "sqlalchemy")


# ---------------------------------------------------------------- summarising rounds
def good(rounds: list[Result]) -> list[Result]:
    """The rounds that produced figures."""
    return [r for r in rounds if "skipped" not in r and "error" not in r]


def med(rounds: list[Result], key: str) -> float | None:
    """Median of one figure over the rounds that have it."""
    return median([float(r[key]) for r in rounds if r.get(key) is not None])


def summarise_loop(rounds: list[Result], keys: Sequence[str]) -> Result:
    """cycle / ping / single: medians of ``keys``, errors summed over rounds."""
    ok = good(rounds)
    out: Result = {k: med(ok, k) for k in keys}
    out["errors"] = sum(int(r.get("errors", 0)) for r in ok)
    out["hung"] = sum(int(r.get("hung", 0)) for r in ok)
    return out


def summarise_scale(rounds: list[Result]) -> Result:
    """scale: median ns per cycle for each ``size/greenlets`` cell."""
    ok = good(rounds)
    cells = sorted({c for r in ok for c in r["cells"]}, key=lambda c: tuple(map(int, c.split("/"))))
    return {
        "ns_per_op": {
            c: median([r["cells"][c]["ns_per_op"] for r in ok if c in r["cells"]]) for c in cells
        },
        "errors": sum(cell.get("errors", 0) for r in ok for cell in r["cells"].values()),
    }


def summarise_spike(rounds: list[Result]) -> Result:
    """spike: connections opened and the worst wait (median and worst over rounds)."""
    ok = good(rounds)
    peaks = {k: max((r["peaks"][k] for r in ok), default=0) for k in ("open", "waiting")}
    return {
        "opened": med(ok, "opened"),
        "opened_max": max((r["opened"] for r in ok), default=None),
        "worst_wait_ms": med(ok, "worst_wait_ms"),
        "worst_wait_ms_max": max((r["worst_wait_ms"] for r in ok), default=None),
        "burst_ms": med(ok, "burst_ms"),
        "peak_open": peaks["open"],
        "peak_waiting": peaks["waiting"],
        "errors": sum(int(r["errors"]) for r in ok),
    }


def summarise_recovery(rounds: list[Result]) -> Result:
    """recovery: the worst time back over rounds (None if a round never recovered)."""
    ok = good(rounds)
    times = [r["recovery_s"] for r in ok]
    return {
        "recovery_s": None if not ok or None in times else max(times),
        "caller_errors": sum(int(r["caller_errors"]) for r in ok),
        "attempt_failures": med(ok, "attempt_failures"),
        "opened": med(ok, "opened_during_run"),
        "hung": sum(int(r["hung"]) for r in ok),
        "slowest_request_s": max((r["slowest_request_s"] for r in ok), default=None),
        "requests_ok": med(ok, "requests_ok"),
        "downtime_s": med(ok, "downtime_s"),
    }


SUMMARISERS: dict[str, Callable[[list[Result]], Result]] = {
    "cycle": lambda rs: summarise_loop(rs, ("ns_per_op", "cpu_us_per_op", "starved")),
    "ping": lambda rs: summarise_loop(
        rs, ("req_per_s", "cpu_us_per_op", "p50_us", "p99_us", "p999_us", "max_us", "starved")
    ),
    "single": lambda rs: summarise_loop(rs, ("req_per_s", "cpu_us_per_op", "p50_us", "p99_us")),
    "scale": summarise_scale,
    "spike": summarise_spike,
    "recovery": summarise_recovery,
}


def paired(rounds: list[Result], base: list[Result], get: Callable[[Result], Any]) -> float | None:
    """Median over rounds of ``value / bare's value`` in the same round.

    Rounds are interleaved, so a round's bare run is the one next to it in time: pairing them
    cancels most of the drift of a shared machine, which a ratio of medians would not.
    """
    ratios = []
    for mine, theirs in zip(rounds, base, strict=False):
        if not good([mine]) or not good([theirs]):
            continue
        a, b = get(mine), get(theirs)
        if a is not None and b:
            ratios.append(a / b)
    return median(ratios)


def add_ratios(workload: str, summaries: dict[str, Result], raw: dict[str, list[Result]]) -> None:
    """Each implementation's ratio to the bare queue, in place (cost x, or throughput x)."""
    base = raw.get(BASELINE)
    if base is None or BASELINE not in summaries:
        return
    for impl, s in summaries.items():
        mine = raw[impl]

        def pair(key: str, rounds: list[Result] = mine) -> float | None:
            return paired(rounds, base, field_getter(key))

        if workload in ("cycle", "ping", "single"):
            s["cpu_x_bare"] = pair("cpu_us_per_op")
        if workload == "cycle":
            s["x_bare"] = pair("ns_per_op")
        elif workload in ("ping", "single"):
            s["x_bare"] = pair("req_per_s")
            s["p99_x_bare"] = pair("p99_us")
        elif workload == "scale":
            s["x_bare"] = {c: paired(mine, base, cell_getter(c)) for c in s["ns_per_op"]}


def field_getter(key: str) -> Callable[[Result], Any]:
    """Reads one figure from a round (None if the round lacks it)."""

    def get(r: Result) -> Any:
        return r.get(key)

    return get


def cell_getter(cell: str, field: str = "ns_per_op") -> Callable[[Result], Any]:
    """Reads one scale cell's figure from a round."""

    def get(r: Result) -> Any:
        return r["cells"].get(cell, {}).get(field)

    return get


def status(rounds: list[Result]) -> str | None:
    """Why an implementation has no figures for a workload, if it has none."""
    if good(rounds):
        return None
    for r in rounds:
        if "skipped" in r:
            return f"skipped: {r['skipped']}"
    for r in rounds:
        if "error" in r:
            return f"error: {r['error']}"
    return "not run"


# ---------------------------------------------------------------- the document
def machine() -> Result:
    """What the figures were measured on."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: Result = {}
    for dist in ("gevent", "greenlet"):
        try:
            from importlib.metadata import version

            versions[dist] = version(dist)
        except Exception:
            versions[dist] = "?"
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        **versions,
    }


def build(
    raw: dict[str, dict[str, list[Result]]],
    plans: dict[str, WorkloadPlan],
    impls: list[str],
    missing: dict[str, str],
    server: Server,
    cpus: CpuPlan,
    quick: bool,
    elapsed: float,
    argv: list[str],
) -> Doc:
    """Everything a reader needs, JSON-ready."""
    results: Doc = {}
    for workload, per_impl in raw.items():
        summaries = {i: SUMMARISERS[workload](rs) for i, rs in per_impl.items() if good(rs)}
        add_ratios(workload, summaries, per_impl)
        results[workload] = {
            i: {"summary": summaries.get(i), "status": status(rs), "rounds": strip(rs)}
            for i, rs in per_impl.items()
        }
    versions = {
        i: next((r["version"] for w in raw.values() for r in w.get(i, []) if "version" in r), None)
        for i in impls
    }
    doc: Doc = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "server": {"kind": server.kind, "version": server.version},
            "pinning": cpus.note,
            "pinned": cpus.pinned,
            "quick": quick,
            "command": "python -m bench " + " ".join(argv),
            "elapsed_s": round(elapsed, 1),
            "revision": git_revision(),
        },
        "plans": {
            w: {"rounds": p.rounds, "params": p.params, **p.extra}
            for w, p in plans.items()
            if w in raw
        },
        "impls": {
            i: {
                "label": LABELS[i],
                "version": versions[i],
                "note": NOTES[i],
                "missing": missing.get(i),
            }
            for i in impls
        },
        "results": results,
    }
    doc["targets"] = targets(doc)
    return doc


def strip(rounds: list[Result]) -> list[Result]:
    """Raw rounds for the JSON, without the long spike timelines except the first one."""
    out = []
    for n, r in enumerate(rounds):
        r = dict(r)
        if n and "samples" in r:
            r.pop("samples")
        out.append(r)
    return out


def summary(doc: Doc, workload: str, impl: str) -> Result | None:
    """One implementation's summary for a workload, if it has one."""
    entry = doc["results"].get(workload, {}).get(impl)
    return entry["summary"] if entry else None


def paired_in_doc(doc: Doc, workload: str, impl: str, base: str, key: str) -> float | None:
    """:func:`paired` on the rounds stored in the document (``key`` may be ``cell/key``)."""
    entries = doc["results"].get(workload, {})
    if impl not in entries or base not in entries:
        return None
    if "/" in key:
        size, greenlets, field = key.split("/")
        get = cell_getter(f"{size}/{greenlets}", field)
    else:
        get = field_getter(key)
    return paired(entries[impl]["rounds"], entries[base]["rounds"], get)


def inverse(x: float | None) -> float | None:
    """1/x, or None."""
    return None if not x else 1.0 / x


@dataclass(frozen=True)
class Target:
    """One of the issues' targets: where to read it and what passes."""

    name: str
    wanted: str
    workload: str
    key: str
    ok: Callable[[float], bool]
    cpu_key: str | None = None
    higher_is_better: bool = False


def throughput(name: str, workload: str) -> Target:
    """A "within 5% of the bare queue's throughput" target."""
    return Target(
        name, ">= 0.95x", workload, "req_per_s", lambda v: v >= 0.95, "cpu_us_per_op", True
    )


def cost(name: str, workload: str, key: str, cpu: str | None = None) -> Target:
    """An "at most 1.5x the bare queue's cost" target."""
    return Target(name, "<= 1.5x", workload, key, lambda v: v <= 1.5, cpu)


def ratio_targets(doc: Doc) -> list[Target]:
    """The ratio targets that this run measured."""
    found = [
        throughput("ping throughput vs bare queue", "ping"),
        Target("ping p99 vs bare queue", "<= 1.10x", "ping", "p99_us", lambda v: v <= 1.10),
        cost("cycle cost vs bare queue", "cycle", "ns_per_op", "cpu_us_per_op"),
    ]
    scale = summary(doc, "scale", OURS) or {}
    for cell in scale.get("ns_per_op", {}):
        size, greenlets = cell.split("/")
        found.append(
            cost(f"scale: size {size}, {greenlets} greenlet(s)", "scale", f"{cell}/ns_per_op")
        )
    found.append(throughput("single throughput vs bare queue", "single"))
    return [t for t in found if summary(doc, t.workload, OURS) is not None]


def measure(doc: Doc, t: Target) -> Result:
    """A ratio target, measured: against the bare queue, in CPU time, and against ``fair``."""

    def against(base: str, key: str) -> float | None:
        x = paired_in_doc(doc, t.workload, OURS, base, key)
        return x

    got = against(BASELINE, t.key)
    cpu = against(BASELINE, t.cpu_key) if t.cpu_key else None
    if t.higher_is_better:
        cpu = inverse(cpu)  # CPU per request, turned into a throughput ratio
    return {
        "target": t.name,
        "wanted": t.wanted,
        "got": None if got is None else f"{got:.2f}x",
        "cpu": None if cpu is None else f"{cpu:.2f}x",
        "vs_fair": None if (f := against("fair", t.key)) is None else f"{f:.2f}x",
        "met": None if got is None else t.ok(got),
    }


def targets(doc: Doc) -> list[Result]:
    """The issues' targets for this project, each measured."""
    out = [measure(doc, t) for t in ratio_targets(doc)]
    ping = summary(doc, "ping", OURS)
    if ping is not None:
        peers = [s["req_per_s"] for p in PEERS if (s := summary(doc, "ping", p))]
        lead = ratio(ping["req_per_s"], max(peers, default=None))
        out.insert(
            1,
            plain(
                "ping throughput vs best other pool (medians)",
                "> 1x",
                lead,
                lead is not None and lead > 1,
                "{:.2f}x",
            ),
        )
    spike = summary(doc, "spike", OURS)
    if spike is not None:
        got = spike["opened_max"]
        out.append(
            plain(
                "spike: connections opened (worst round)",
                "<= 10",
                got,
                got is not None and got <= 10,
                "{:.0f}",
            )
        )
    rec = summary(doc, "recovery", OURS)
    if rec is not None:
        got = rec["recovery_s"]
        ok = got is not None and got <= 1.0 and rec["hung"] == 0
        out.append(
            plain(
                "recovery: all requests succeed again (worst round), none hung",
                "<= 1 s after return",
                got,
                ok,
                "{:.2f} s",
            )
        )
    return out


def plain(name: str, wanted: str, got: float | None, met: bool, spec: str) -> Result:
    """A target that is a single figure."""
    return {
        "target": name,
        "wanted": wanted,
        "got": None if got is None else spec.format(got),
        "cpu": None,
        "vs_fair": None,
        "met": None if got is None else met,
    }


# ---------------------------------------------------------------- tables
def fmt(value: float | None, spec: str = "{:,.0f}") -> str:
    """A number for a table cell, or a dash."""
    return "-" if value is None else spec.format(value)


def fx(value: float | None) -> str:
    """A ratio for a table cell."""
    return "-" if value is None else f"{value:.2f}x"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table with padded columns (readable as plain text too)."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def label(doc: Doc, impl: str) -> str:
    """Implementation name with its version."""
    info = doc["impls"][impl]
    version = info["version"]
    if impl == OURS:
        return f"geventconnpool {version} (this)" if version else info["label"]
    return f"{info['label']} ({version})" if version else info["label"]


def why(doc: Doc, workload: str, impl: str) -> str:
    """Short reason for an empty row."""
    entry = doc["results"].get(workload, {}).get(impl)
    if entry is None or entry["status"] is None:
        return "-"
    text = str(entry["status"])
    return "n/a" if text.startswith("skipped") and "not installed" not in text else text[:60]


def ping_table(doc: Doc) -> str:
    """ping: throughput, client CPU per request, latency and fairness."""
    headers = [
        "implementation",
        "req/s",
        "x bare",
        "client CPU µs/req",
        "x bare",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "starved",
        "errors",
    ]
    rows = []
    for impl in doc["impls"]:
        p = summary(doc, "ping", impl)
        if p is None:
            rows.append([label(doc, impl), why(doc, "ping", impl)] + [""] * (len(headers) - 2))
            continue
        rows.append(
            [
                label(doc, impl),
                fmt(p["req_per_s"]),
                fx(p.get("x_bare")),
                fmt(p["cpu_us_per_op"], "{:.1f}"),
                fx(p.get("cpu_x_bare")),
                fmt(p["p50_us"]),
                fmt(p["p99_us"]),
                fmt(p["p999_us"]),
                fmt(p["starved"]),
                str(p["errors"]),
            ]
        )
    return table(headers, rows)


def cycle_single_table(doc: Doc) -> str:
    """cycle and single side by side."""
    headers = [
        "implementation",
        "cycle µs/op",
        "x bare",
        "CPU x bare",
        "single req/s",
        "x bare",
        "single p50 µs",
        "CPU x bare",
        "errors",
    ]
    rows = []
    for impl in doc["impls"]:
        c, s = (summary(doc, w, impl) or {} for w in ("cycle", "single"))
        rows.append(
            [
                label(doc, impl),
                fmt(c["ns_per_op"] / 1e3, "{:.2f}") if c else why(doc, "cycle", impl),
                fx(c.get("x_bare")),
                fx(c.get("cpu_x_bare")),
                fmt(s["req_per_s"]) if s else why(doc, "single", impl),
                fx(s.get("x_bare")),
                fmt(s.get("p50_us")),
                fx(s.get("cpu_x_bare")),
                str(int(c.get("errors", 0)) + int(s.get("errors", 0))),
            ]
        )
    return table(headers, rows)


def scale_table(doc: Doc) -> str:
    """µs per cycle (and x bare) at each pool size and greenlet count."""
    cells: list[str] = []
    for impl in doc["impls"]:
        s = summary(doc, "scale", impl)
        for c in (s or {}).get("ns_per_op", {}):
            if c not in cells:
                cells.append(c)
    headers = ["implementation"] + [f"size {c.split('/')[0]}, {c.split('/')[1]} gl" for c in cells]
    rows = []
    for impl in doc["impls"]:
        s = summary(doc, "scale", impl)
        if s is None:
            rows.append([label(doc, impl)] + [why(doc, "scale", impl)] + [""] * (len(cells) - 1))
            continue
        rows.append(
            [label(doc, impl)]
            + [
                f"{s['ns_per_op'][c] / 1e3:.2f} ({fx(s['x_bare'].get(c))})"
                if s["ns_per_op"].get(c) is not None
                else "-"
                for c in cells
            ]
        )
    return table(headers, rows)


def spike_table(doc: Doc) -> str:
    """Connections opened and waits in the spike test."""
    headers = [
        "implementation",
        "opened (median)",
        "opened (worst)",
        "peak waiting",
        "worst wait ms",
        "all served after ms",
        "errors",
    ]
    rows = []
    for impl in doc["impls"]:
        s = summary(doc, "spike", impl)
        if s is None:
            rows.append([label(doc, impl), why(doc, "spike", impl), "", "", "", "", ""])
            continue
        rows.append(
            [
                label(doc, impl),
                fmt(s["opened"]),
                fmt(s["opened_max"]),
                fmt(s["peak_waiting"]),
                fmt(s["worst_wait_ms_max"], "{:.1f}"),
                fmt(s["burst_ms"], "{:.1f}"),
                str(s["errors"]),
            ]
        )
    return table(headers, rows)


def recovery_table(doc: Doc) -> str:
    """Time back to full service after a server restart, and what callers saw."""
    headers = [
        "implementation",
        "all OK again after s",
        "errors seen by callers",
        "failed attempts (retried)",
        "connections opened",
        "hung callers",
        "slowest request s",
    ]
    rows = []
    for impl in doc["impls"]:
        s = summary(doc, "recovery", impl)
        if s is None:
            rows.append([label(doc, impl), why(doc, "recovery", impl), "", "", "", "", ""])
            continue
        rows.append(
            [
                label(doc, impl),
                fmt(s["recovery_s"], "{:.2f}") if s["recovery_s"] is not None else "never",
                str(s["caller_errors"]),
                fmt(s["attempt_failures"]),
                fmt(s["opened"]),
                str(s["hung"]),
                fmt(s["slowest_request_s"], "{:.2f}"),
            ]
        )
    return table(headers, rows)


def targets_table(doc: Doc) -> str:
    """The targets, measured (ratios are medians of per-round ratios)."""
    rows = [
        [
            t["target"],
            t["wanted"],
            t["got"] or "-",
            {True: "met", False: "MISSED", None: "not measured"}[t["met"]],
            t["cpu"] or "-",
            t["vs_fair"] or "-",
        ]
        for t in doc["targets"]
    ]
    headers = [
        "target (geventconnpool, this)",
        "wanted",
        "measured",
        "",
        "in CPU time",
        "vs FIFO reference",
    ]
    return table(headers, rows)


def header(doc: Doc) -> str:
    """Date, machine, server, pinning and command."""
    m = doc["meta"]
    mach = m["machine"]
    return (
        f"{m['date']} · {mach['cpu']}, {mach['cpus']} CPUs, {mach['system']} · Python "
        f"{mach['python']}, gevent {mach['gevent']}, greenlet {mach['greenlet']} · server: "
        f"{m['server']['kind']} {m['server']['version']} · {m['pinning']} · "
        f"`{m['command']}`{' (quick mode)' if m['quick'] else ''} · {m['elapsed_s']} s"
    )


SECTIONS: list[tuple[str, str, Callable[[Doc], str]]] = [
    (
        "ping",
        "ping: 200 greenlets over 20 connections (medians; x bare = median of per-round ratios "
        "to the bare queue; starved = greenlets served less than a tenth of their fair share)",
        ping_table,
    ),
    ("cycle", "cycle (50 greenlets over 10 sockets) and single (1 greenlet)", cycle_single_table),
    ("scale", "scale: µs per checkout/release cycle (x bare)", scale_table),
    ("spike", "spike (HikariCP's test)", spike_table),
    ("recovery", "recovery (server restart)", recovery_table),
]


def describe(doc: Doc, workload: str) -> str:
    """What a workload did in this run (recovery's timing depends on the plan)."""
    if workload != "recovery":
        return DESCRIPTIONS[workload]
    p = doc["plans"]["recovery"]
    q = p["params"]
    return (
        f"{q['greenlets']} greenlets over {q['size']} connections, PINGs with "
        f"{q['think_s'] * 1e3:g} ms think time, each request wrapped in "
        f"@retry(max_failures={q['max_failures']}, interval={q['interval']}) (0.2.1's own retry; "
        f"the same loop for the peers); the server is stopped {p['stop_after']} s in and started "
        f"again on the same port {p['down_s']} s later; 'all OK again' is the time from its "
        f"return until no attempt fails any more"
    )


def markdown(doc: Doc) -> str:
    """The whole report as Markdown."""
    parts = [header(doc), ""]
    if doc["targets"]:
        parts += ["**Targets**", "", targets_table(doc), ""]
    done = set(doc["results"])
    for first, title, make in SECTIONS:
        if first in done or (first == "cycle" and "single" in done):
            parts += [f"**{title}**", "", make(doc), ""]
    notes = [
        f"- {label(doc, i)}: {info['note']}" + (f" — {info['missing']}" if info["missing"] else "")
        for i, info in doc["impls"].items()
    ]
    work = [f"- `{w}`: {describe(doc, w)}" for w in doc["results"]]
    parts += ["**Workloads**", "", *work, "", "**Implementations**", "", *notes]
    return "\n".join(parts) + "\n"


def text(doc: Doc) -> str:
    """What the console shows (the Markdown, which reads well as text)."""
    return markdown(doc)


def brief(workload: str, result: Result) -> str:
    """One progress line's worth of a child's result."""
    if "skipped" in result:
        return f"skipped ({result['skipped']})"
    if "error" in result:
        return f"ERROR {result['error']} {result.get('stderr', '')}".strip()[:300]
    if workload == "cycle":
        return f"{result['ns_per_op'] / 1e3:.2f} µs/op, {result['errors']} errors"
    if workload in ("ping", "single"):
        return (
            f"{result['req_per_s']:,.0f} req/s, p50 {result['p50_us']:.0f} µs, "
            f"p99 {result['p99_us']:.0f} µs, {result['errors']} errors"
        )
    if workload == "scale":
        return ", ".join(f"{c}: {v['ns_per_op'] / 1e3:.1f}" for c, v in result["cells"].items())
    if workload == "spike":
        return f"opened {result['opened']}, worst wait {result['worst_wait_ms']:.1f} ms"
    rec = result["recovery_s"]
    return (
        f"back after {'never' if rec is None else f'{rec:.2f} s'}, "
        f"{result['caller_errors']} caller errors, {result['hung']} hung"
    )


# ---------------------------------------------------------------- files
def write(doc: Doc, out: Path, chart: bool) -> None:
    """latest.json, latest.md and (if asked and matplotlib is there) chart.png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    (out / "latest.md").write_text(markdown(doc))
    if chart:
        draw_chart(doc, out / "chart.png")


def draw_chart(doc: Doc, path: Path) -> None:
    """Throughput and p99 latency of ``ping`` per implementation (horizontal bars)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "chart skipped: matplotlib is not installed (pip install matplotlib)", file=sys.stderr
        )
        return
    impls = [i for i in doc["impls"] if summary(doc, "ping", i)]
    if not impls:
        return
    names = [label(doc, i) for i in impls]
    pings = [summary(doc, "ping", i) or {} for i in impls]
    rps = [p["req_per_s"] / 1e3 for p in pings]
    p99 = [p["p99_us"] / 1e3 for p in pings]
    p999 = [p["p999_us"] / 1e3 for p in pings]
    colours = ["#2b7bba" if i == OURS else "#888888" if i == BASELINE else "#c9c9c9" for i in impls]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.45 * len(impls) + 1.8), sharey=True)
    left.barh(names, rps, color=colours)
    left.set_xlabel("ping throughput, thousand req/s (higher is better)")
    right.barh(names, p99, color=colours, label="p99")
    right.plot(p999, range(len(impls)), "k|", markersize=14, label="p99.9")
    right.set_xlabel("ping latency incl. the wait for a connection, ms (lower is better)")
    right.set_xscale("log")
    right.legend(loc="lower right", fontsize=8)
    for ax, values, spec in ((left, rps, "{:.1f}k"), (right, p99, "{:.2f}")):
        for y, v in enumerate(values):
            ax.text(v, y, " " + spec.format(v), va="center", fontsize=8)
        ax.margins(x=0.18)
    left.invert_yaxis()
    m = doc["meta"]
    fig.suptitle(
        f"ping: 200 greenlets over 20 connections · {m['server']['kind']} "
        f"{m['server']['version']} · {m['date']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update_readme(doc: Doc, readme: Path) -> None:
    """Replace the results between the README's markers with this run's Markdown."""
    if not readme.is_file():
        return
    body = readme.read_text()
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    if not pattern.search(body):
        return
    fresh = f"{README_START}\n{markdown(doc)}{README_END}"
    readme.write_text(pattern.sub(lambda _: fresh, body))


def git_revision() -> str:
    """The repository's short commit, for the record (empty if unknown)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip()
    except OSError:
        return ""
