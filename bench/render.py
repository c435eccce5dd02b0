"""The run as a reader sees it: Markdown tables, the README's table (reStructuredText), a chart."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.summary import BASE, METRIC, OURS, get

Doc = dict[str, Any]


def fx(cell: dict[str, Any], spread: bool = False) -> str:
    """A ratio to the bare queue, optionally with its per-round range."""
    if "x_bare" not in cell:
        return "-"
    lo, hi = cell["x_bare_range"]
    return f"{cell['x_bare']:.2f}x" + (f" ({lo:.2f}-{hi:.2f})" if spread and hi > lo else "")


def ms(us: float | None) -> str:
    """Microseconds as milliseconds."""
    return "-" if us is None else f"{us / 1e3:.1f}" if us >= 1e4 else f"{us / 1e3:.2f}"


def name(doc: Doc, impl: str) -> str:
    """Label and version."""
    version = next(
        (e["version"] for w in doc["results"].values() if (e := w.get(impl)) and e["version"]), ""
    )
    label = doc["labels"][impl]
    return label if not version or version in label else f"{label} ({version})"


def status(doc: Doc, workload: str, impl: str) -> str | None:
    """'n/a' or 'error' when an implementation has no figures for a workload."""
    entry = doc["results"].get(workload, {}).get(impl)
    if entry is None:
        return "-"
    text = entry["status"]
    return None if text is None else "error" if text.startswith("error") else "n/a"


def overview(doc: Doc) -> tuple[list[str], list[list[str]]]:
    """One row per implementation: the figures the README shows."""
    head = ["implementation", "ping x bare, 200 / 50 greenlets", "worst wait, ms",
            "cycle x bare, worst cell", "single x bare", "spike: opened"]  # fmt: skip
    rows = []
    for impl in doc["labels"]:
        ping = get(doc, "ping", impl)
        waits = [c["wait_us"]["max"] for c in ping.values() if c.get("wait_us")]
        cycle = [c for c in get(doc, "cycle", impl).values() if "x_bare" in c]
        worst = max(cycle, key=lambda c: c["x_bare"], default={})
        spike = get(doc, "spike", impl).get("burst")
        rows.append([
            name(doc, impl),
            status(doc, "ping", impl) or f"{fx(ping.get('200', {}))} / {fx(ping.get('50', {}))}",
            status(doc, "ping", impl) or ms(max(waits, default=None)),
            status(doc, "cycle", impl) or fx(worst),
            status(doc, "single", impl) or fx(get(doc, "single", impl).get("1", {})),
            status(doc, "spike", impl) or (f"{spike['worst']}" if spike else "-"),
        ])  # fmt: skip
    return head, rows


def targets(doc: Doc) -> tuple[list[str], list[list[str]]]:
    """The targets, met or missed, for the default pool, the fixed 30 ms bound and strict FIFO."""
    verdict = {True: "met", False: "**missed**", None: "n/a"}
    head = ["target", "wanted", "default (adaptive bound)", "", "fixed 30 ms bound", "",
            "strict FIFO (fair_after=0)", ""]  # fmt: skip
    rows = []
    for t in doc["targets"]:
        row = [t["target"], t["wanted"]]
        for i in OURS:
            row += [f"{t[i] or '-'} {t[i + '_spread']}".strip(), verdict[t[i + "_met"]]]
        rows.append(row)
    return head, rows


def ping_table(doc: Doc, cell: str) -> tuple[list[str], list[list[str]]]:
    """ping at one greenlet count: throughput and the distribution of the wait for a connection."""
    head = ["implementation", "req/s", "x bare (rounds)", "wait p50 ms", "p99", "p99.9", "max",
            "request p99 ms", "errors"]  # fmt: skip
    rows = []
    for impl in doc["labels"]:
        c = get(doc, "ping", impl).get(cell)
        if c is None:
            rows.append([name(doc, impl), status(doc, "ping", impl) or "-"] + [""] * 7)
            continue
        w = c["wait_us"]
        rows.append([name(doc, impl), f"{c['median']:,.0f}", fx(c, spread=True), ms(w.get("p50")),
                     ms(w.get("p99")), ms(w.get("p99.9")), ms(w.get("max")),
                     ms(c["latency_us"].get("p99")), str(c["errors"])])  # fmt: skip
    return head, rows


def cycle_table(doc: Doc) -> tuple[list[str], list[list[str]]]:
    """Cost per checkout/release cycle at each size and greenlet count (x bare; bare in µs)."""
    cells = list(get(doc, "cycle", BASE)) or list(get(doc, "cycle", "ours"))
    head = ["implementation"] + [f"size {c.replace('/', ', ')} gl" for c in cells]
    rows = []
    for impl in doc["labels"]:
        mine = get(doc, "cycle", impl)
        shown = [status(doc, "cycle", impl) or "-" if c not in mine
                 else f"{mine[c]['median'] / 1e3:.2f} µs" if impl == BASE
                 else fx(mine[c], spread=True) for c in cells]  # fmt: skip
        rows.append([name(doc, impl), *shown])
    return head, rows


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    """A plain Markdown table."""
    lines = [head, ["---"] * len(head), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def rst_table(head: list[str], rows: list[list[str]]) -> str:
    """A reStructuredText simple table."""
    table = [[c.replace("**", "") or "-" for c in r] for r in [head, *rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    rule = "  ".join("=" * w for w in widths)
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    return "\n".join([rule, lines[0], rule, *lines[1:], rule])


def header(doc: Doc) -> str:
    """Date, machine, versions, server and the exact command."""
    m = doc["machine"]
    quick = " **Quick run: placeholder figures, not for publication.**" if doc["quick"] else ""
    return (
        f"{doc['date']} · {m['cpu']}, {m['cores']} cores ({m['system']}, load "
        f"{m['load_at_start']:.1f} at start) · Python {m['python']}, gevent {m['gevent']}, "
        f"greenlet {m['greenlet']} · "
        f"{m['server']} · {m['pinning']} · `{doc['command']}` · {doc['elapsed_s']} s.{quick}"
    )


def markdown(doc: Doc) -> str:
    """The whole report."""
    noise = ", ".join(f"{w} ±{v / 2:.0%}" for w, v in doc["noise"].items()) or "unknown (1 round)"
    parts = [header(doc), "## Targets (issue 12)", markdown_table(*targets(doc)),
             "## Overview (ratios: medians of per-round ratios to the bare queue)",
             markdown_table(*overview(doc)),
             f"Machine noise (the bare queue's own rounds, worst cell): {noise}."]  # fmt: skip
    for cell in get(doc, "ping", BASE) or get(doc, "ping", "ours"):
        parts += [f"## ping, {cell} greenlets, pool of 20", markdown_table(*ping_table(doc, cell))]
    if "cycle" in doc["results"]:
        parts += ["## cycle (x bare, per-round range)", markdown_table(*cycle_table(doc))]
    reasons = [f"- {name(doc, i)}, {w}: {e['status']}" for w, r in doc["results"].items()
               for i, e in r.items() if e["status"]]  # fmt: skip
    return "\n\n".join([*parts, "## Not measured", "\n".join(reasons) or "-"]) + "\n"


def readme(doc: Doc) -> str:
    """The README's table, to paste: the overview, with its date, machine and command."""
    m = doc["machine"]
    warn = "\n\n**Quick run: placeholder figures, not for publication.**" if doc["quick"] else ""
    return (
        f"Measured {doc['date']} on {m['cpu']} ({m['cores']} cores), Python {m['python']}, "
        f"gevent {m['gevent']}, {m['server']}, with ``{doc['command']}``.{warn}\n\n"
        + rst_table(*overview(doc))
        + "\n"
    )


def chart(doc: Doc, path: Path) -> None:
    """ping, 200 greenlets: throughput (x bare) beside the worst wait for a connection."""
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("chart skipped: pip install matplotlib", file=sys.stderr)
        return
    cells = {i: c for i in doc["labels"] if (c := get(doc, "ping", i).get("200")) and "x_bare" in c}
    if not cells:
        return
    names = [name(doc, i) for i in cells]
    colours = ["#2b7bba" if i in OURS else "#aaa" for i in cells]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.4 * len(cells) + 1.6), sharey=True)
    bars = left.barh(names, [c["x_bare"] for c in cells.values()], color=colours)
    left.bar_label(bars, fmt=" %.2fx", fontsize=8)
    left.axvline(0.97, color="k", lw=0.8, ls=":")
    left.margins(x=0.15)
    left.set_xlabel("throughput, x bare LifoQueue (higher is better)")
    waits = [c["wait_us"]["max"] / 1e3 for c in cells.values()]
    bars = right.barh(names, waits, color=colours)
    right.bar_label(bars, fmt=" %.0f ms", fontsize=8)
    right.axvline(50, color="k", lw=0.8, ls=":")
    right.set_xscale("log")
    right.set_xlim(1, max(waits) * 4)
    right.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    right.set_xlabel("worst wait for a connection, ms (lower is better)")
    left.invert_yaxis()
    quick = " · QUICK RUN: placeholder figures" if doc["quick"] else ""
    server, date = doc["machine"]["server"], doc["date"]
    fig.suptitle(f"ping: 200 greenlets, pool of 20, {server} · {date}{quick}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def update_readme(doc: Doc, path: Path) -> None:
    """Put :func:`readme` between README.rst's ``bench-table`` markers (full runs only)."""
    text = path.read_text()
    start, end = ".. bench-table-start\n", ".. bench-table-end"
    a, b = text.find(start), text.find(end)
    if 0 <= a < b:
        note = ".. Written by the latest full ``make bench`` (also in bench/results/readme.rst)."
        path.write_text(f"{text[: a + len(start)]}\n{note}\n\n{readme(doc)}\n{text[b:]}")


def write(doc: Doc, out: Path, chart_too: bool = True) -> str:
    """latest.md, latest.json, readme.rst (and chart.png) in ``out``; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(doc)
    (out / "latest.md").write_text(text)
    (out / "latest.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "readme.rst").write_text(readme(doc))
    if chart_too:
        chart(doc, out / "chart.png")
    return text


def brief(workload: str, result: dict[str, Any]) -> str:
    """One progress line for a child's result."""
    if "cells" not in result:
        return str(result.get("skipped") or f"ERROR {result['error']}")[:300]
    key = METRIC[workload]
    return ", ".join(f"{c}: {v[key]:,.0f}" for c, v in result["cells"].items()) + f" {key}"
