"""From the children's raw rounds to medians, ratios to the bare queue, and the targets.

Every ratio is the median of **per-round** ratios: rounds run interleaved (A B C A B C), so each
run is divided by the bare queue's run of the same round, next to it in time, which cancels most
of a shared machine's drift. The spread of those per-round ratios, and the bare queue's own
spread over rounds, show how noisy the machine was.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable
from typing import Any

from bench.common import STEPS

Result = dict[str, Any]
BASE = "bare"
OURS = ("ours", "ours_fixed", "ours_fifo")
#: What the adaptive bound is judged against (issue 22): the fixed 30 ms bound and strict FIFO.
FIXED, FIFO = "ours_fixed", "ours_fifo"
#: The figure each workload is judged on.
METRIC = {
    "ping": "req_per_s",
    "slow": "req_per_s",
    "single": "req_per_s",
    "cycle": "ns_per_op",
    "spike": "opened",
}


def percentiles(hists: list[dict[str, int]], exact_max: float | None = None) -> dict[str, float]:
    """p50/p99/p99.9 (µs; a bucket's upper bound, within 4.4%) of merged histograms, and the
    exact maximum when given."""
    merged: Counter[int] = Counter()
    for h in hists:
        merged.update({int(k): n for k, n in h.items()})
    total, seen, out = sum(merged.values()), 0, {}
    wanted = {"p50": 0.5, "p99": 0.99, "p99.9": 0.999}
    for key in sorted(merged):
        seen += merged[key]
        for name, q in wanted.items():
            if name not in out and seen >= q * total:
                out[name] = min(2 ** (key / STEPS), exact_max or float("inf"))
    if exact_max is not None:
        out["max"] = exact_max
    return out


def cell_summary(workload: str, cell: str, mine: list[Result], base: list[Result]) -> Result:
    """One implementation's figures for one cell, over the rounds that have them."""
    metric = METRIC[workload]
    values = [r["cells"][cell] for r in mine if cell in r.get("cells", {})]
    out: Result = {
        "median": statistics.median(v[metric] for v in values),
        "errors": sum(v["errors"] for v in values),
        "hung": sum(v["hung"] for v in values),
        "first_error": next((v["first_error"] for v in values if v["first_error"]), ""),
    }
    ratios = [
        a["cells"][cell][metric] / b["cells"][cell][metric]
        for a, b in zip(mine, base, strict=False)
        if cell in a.get("cells", {}) and cell in b.get("cells", {}) and b["cells"][cell][metric]
    ]
    if ratios:
        out |= {"x_bare": statistics.median(ratios), "x_bare_range": [min(ratios), max(ratios)]}
    if workload in ("ping", "slow", "single"):
        worst = max(v["wait_max_us"] for v in values)
        out["wait_us"] = percentiles([v["wait"] for v in values], worst)
        out["latency_us"] = percentiles([v["latency"] for v in values])
    if workload == "spike":
        out["worst"] = max(v["opened"] for v in values)
        out["worst_wait_ms"] = max(v["worst_wait_ms"] for v in values)
    return out


def summarise(workload: str, rounds: dict[str, list[Result]]) -> dict[str, Result]:
    """Per implementation: its status, version and per-cell figures."""
    base = rounds.get(BASE, [])
    out = {}
    for impl, runs in rounds.items():
        ok = [r for r in runs if "cells" in r]
        entry: Result = {"status": None if ok else why(runs), "version": None, "cells": {}}
        if ok:
            entry["version"] = ok[0]["version"]
            cells = dict.fromkeys(c for r in ok for c in r["cells"])
            entry["cells"] = {c: cell_summary(workload, c, runs, base) for c in cells}
        out[impl] = entry
    return out


def why(runs: list[Result]) -> str:
    """Why an implementation has no figures: the first skip or error."""
    for r in runs:
        if "skipped" in r or "error" in r:
            return str(r.get("skipped") or f"error: {r['error']}")
    return "not run"


def drop_histograms(raw: dict[str, dict[str, list[Result]]]) -> None:
    """Remove the per-round histograms once summarised (the JSON keeps the percentiles)."""
    for rounds in raw.values():
        for cell in (
            c for runs in rounds.values() for r in runs for c in r.get("cells", {}).values()
        ):
            cell.pop("wait", None)
            cell.pop("latency", None)


def noise(results: dict[str, dict[str, Result]], raw: dict[str, Any]) -> dict[str, float]:
    """Per workload: the bare queue's spread over rounds, (max - min) / median, worst cell."""
    out = {}
    for workload, rounds in raw.items():
        metric = METRIC[workload]
        spreads = []
        for cell in results[workload].get(BASE, {}).get("cells", {}):
            values = [r["cells"][cell][metric] for r in rounds.get(BASE, []) if "cells" in r]
            if len(values) > 1:
                spreads.append((max(values) - min(values)) / statistics.median(values))
        if spreads:
            out[workload] = max(spreads)
    return out


def get(doc: Result, workload: str, impl: str) -> dict[str, Result]:
    """An implementation's cells in a workload ({} when it has none)."""
    cells: dict[str, Result] = doc["results"].get(workload, {}).get(impl, {}).get("cells", {})
    return cells


def ratio_range(cells: list[Result]) -> str:
    """The per-round spread of the ratios, for a target's row."""
    lows = [c["x_bare_range"][0] for c in cells if "x_bare_range" in c]
    highs = [c["x_bare_range"][1] for c in cells if "x_bare_range" in c]
    lo, hi = min(lows, default=0), max(highs, default=0)
    return f"(rounds {lo:.2f}-{hi:.2f})" if hi > lo else ""


def measured(doc: Result, impl: str) -> list[tuple[float | None, str]]:
    """The figure each target judges, for one implementation, with its per-round spread."""
    ping, cycle = get(doc, "ping", impl), get(doc, "cycle", impl)
    single, spike = get(doc, "single", impl), get(doc, "spike", impl)
    found: list[tuple[float | None, str]] = []
    for n in ("200", "50"):
        c = ping.get(n, {})
        found.append((c.get("x_bare"), ratio_range([c] if c else [])))
    waits = [c["wait_us"]["max"] / 1e3 for c in ping.values() if c.get("wait_us")]
    found.append((max(waits) if waits else None, ""))
    p99 = ping.get("200", {}).get("wait_us", {}).get("p99")
    found.append((None if p99 is None else p99 / 1e3, ""))
    found.append((relative(doc, "ping", impl, FIXED, "200"), ""))
    found.append((relative(doc, "ping", impl, FIXED, "50"), ""))
    ratios = [c["x_bare"] for c in cycle.values() if "x_bare" in c]
    found.append((max(ratios) if ratios else None, ratio_range(list(cycle.values()))))
    found.append((relative(doc, "cycle", impl, FIXED), ""))
    found.append((flatness(cycle), ""))
    found.append((relative(doc, "slow", impl, FIXED, "200"), ""))
    found.append((wait_relative(doc, impl, FIFO), ""))
    one = single.get("1", {})
    found.append((one.get("x_bare"), ratio_range([one] if one else [])))
    found.append((spike["burst"]["worst"] if "burst" in spike else None, ""))
    return found


def relative(doc: Result, workload: str, impl: str, other: str, cell: str = "") -> float | None:
    """``impl``'s ratio to the bare queue over ``other``'s, in one cell (all cells: the worst)."""
    mine, theirs = get(doc, workload, impl), get(doc, workload, other)
    pairs = [
        mine[c]["x_bare"] / theirs[c]["x_bare"]
        for c in ([cell] if cell else list(mine))
        if "x_bare" in mine.get(c, {}) and theirs.get(c, {}).get("x_bare")
    ]
    if not pairs and workload == "slow":  # no bare run: compare the medians directly
        pairs = [
            mine[c]["median"] / theirs[c]["median"]
            for c in ([cell] if cell else list(mine))
            if c in mine and theirs.get(c, {}).get("median")
        ]
    if not pairs:
        return None
    return max(pairs) if METRIC[workload] == "ns_per_op" else min(pairs)


def wait_relative(doc: Result, impl: str, other: str) -> float | None:
    """``impl``'s p99 wait in the slow workload over ``other``'s (200 greenlets)."""
    mine = get(doc, "slow", impl).get("200", {}).get("wait_us", {}).get("p99")
    theirs = get(doc, "slow", other).get("200", {}).get("wait_us", {}).get("p99")
    return None if mine is None or not theirs else mine / theirs


def flatness(cycle: dict[str, Result]) -> float | None:
    """Largest ratio over smallest across pool sizes, at the greenlet count where it is worst."""
    by_greenlets: dict[str, list[float]] = {}
    for cell, c in cycle.items():
        if "x_bare" in c:
            by_greenlets.setdefault(cell.split("/")[1], []).append(c["x_bare"])
    spans = [max(v) / min(v) for v in by_greenlets.values() if len(v) > 1]
    return max(spans) if spans else None


#: Issues 12 and 22's targets, in the order of :func:`measured`: (name, wanted, passes, format).
TARGETS: list[tuple[str, str, Callable[[float], bool], str]] = [
    ("ping throughput, 200 greenlets", "≥ 0.97x bare", lambda v: v >= 0.97, "{:.2f}x"),
    ("ping throughput, 50 greenlets", "≥ 0.97x bare", lambda v: v >= 0.97, "{:.2f}x"),
    ("ping: worst wait for a connection, every run", "≤ 15 ms", lambda v: v <= 15, "{:.1f} ms"),
    ("ping: p99 wait for a connection, 200 greenlets", "≤ 15 ms", lambda v: v <= 15, "{:.1f} ms"),
    ("ping throughput, 200 gl, x the fixed 30 ms bound", "≥ 0.97", lambda v: v >= 0.97, "{:.2f}"),
    ("ping throughput, 50 gl, x the fixed 30 ms bound", "≥ 0.97", lambda v: v >= 0.97, "{:.2f}"),
    (
        "cycle cost, worst of 3 sizes x 2 greenlet counts",
        "≤ 1.3x bare",
        lambda v: v <= 1.3,
        "{:.2f}x",
    ),
    ("cycle cost, worst cell, x the fixed 30 ms bound", "≤ 1.05", lambda v: v <= 1.05, "{:.2f}"),
    ("cycle flat: largest / smallest ratio across sizes", "≤ 1.15", lambda v: v <= 1.15, "{:.2f}"),
    ("slow backend throughput, x the fixed 30 ms bound", "≥ 0.97", lambda v: v >= 0.97, "{:.2f}"),
    ("slow backend p99 wait, x strict FIFO's", "≤ 1.2", lambda v: v <= 1.2, "{:.2f}"),
    ("single greenlet throughput", "≥ 0.97x bare", lambda v: v >= 0.97, "{:.2f}x"),
    ("spike: connections opened, worst round", "≤ 10", lambda v: v <= 10, "{:.0f}"),
]


def targets(doc: Result) -> list[Result]:
    """Each target, judged from this run's own figures, for the default and the strict FIFO pool."""
    rows: list[Result] = [{"target": name, "wanted": wanted} for name, wanted, _, _ in TARGETS]
    for impl in OURS:
        for row, (_, _, ok, spec), (value, spread) in zip(
            rows, TARGETS, measured(doc, impl), strict=True
        ):
            row[f"{impl}_value"] = value
            row[impl] = None if value is None else spec.format(value)
            row[f"{impl}_spread"] = spread
            row[f"{impl}_met"] = None if value is None else bool(ok(value))
    return rows
