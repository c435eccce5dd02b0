"""Smoke test of the benchmark harness (bench/): one quick round of every workload.

On the embedded PING server, for the bare queue and this pool (default, the fixed 30 ms bound
and ``fair_after=0``): a few seconds of measuring. It checks the
structure of the results, and that every ratio and every target verdict is computed from the
numbers the children measured, not what the numbers are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]  # runs the checkout's bench/

# The checkout's bench/ is absent where only tests/ is copied (scripts/ci-package): skipped there.
summary = pytest.importorskip("bench.summary")
METRIC, TARGETS = summary.METRIC, summary.TARGETS


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench")
    cmd = [
        sys.executable, "-m", "bench", "--quick", "--server", "embedded", "--impls",
        "bare,ours,ours_fixed,ours_fifo", "--no-chart", "--no-pin", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=140, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return out, json.loads((out / "latest.json").read_text())


def test_every_workload_measured_for_bare_and_ours(run: tuple[Path, dict[str, Any]]) -> None:
    _, doc = run
    assert set(doc["results"]) == {"ping", "slow", "cycle", "single", "spike"}
    expected = {"ping": {"200", "50"}, "slow": {"200"}, "single": {"1"}, "spike": {"burst"}}
    expected["cycle"] = {f"{s}/{g}" for s in (10, 1000, 10000) for g in (50, 200)}
    for workload, cells in expected.items():
        ours = doc["results"][workload]["ours"]
        assert ours["status"] is None, ours
        assert set(ours["cells"]) == cells
        for cell in ours["cells"].values():
            assert cell["median"] > 0 and cell["errors"] == 0 and cell["hung"] == 0
    assert doc["results"]["spike"]["bare"]["status"].startswith("n/a")  # fixed size
    for variant in ("ours_fixed", "ours_fifo"):
        assert doc["results"]["ping"][variant]["status"] is None, variant


def test_ratios_are_the_measured_numbers_divided_by_the_bare_queue(
    run: tuple[Path, dict[str, Any]],
) -> None:
    _, doc = run
    for workload in ("ping", "cycle", "single"):
        metric = METRIC[workload]
        (bare,), (ours,) = doc["raw"][workload]["bare"], doc["raw"][workload]["ours"]
        for cell, summary in doc["results"][workload]["ours"]["cells"].items():
            measured = ours["cells"][cell][metric] / bare["cells"][cell][metric]
            assert summary["x_bare"] == pytest.approx(measured), (workload, cell)
    for cell in doc["results"]["ping"]["ours"]["cells"].values():
        wait = cell["wait_us"]
        assert 0 < wait["p50"] <= wait["p99"] <= wait["p99.9"] <= wait["max"]


def test_targets_are_judged_from_this_runs_figures(run: tuple[Path, dict[str, Any]]) -> None:
    out, doc = run
    assert [t["target"] for t in doc["targets"]] == [name for name, *_ in TARGETS]
    for row, (_, _, passes, _) in zip(doc["targets"], TARGETS, strict=True):
        assert row["ours_value"] is not None, row
        assert row["ours_met"] is passes(row["ours_value"])
    ping = doc["results"]["ping"]["ours"]["cells"]
    worst_wait_ms = max(c["wait_us"]["max"] for c in ping.values()) / 1e3
    assert doc["targets"][2]["ours_value"] == pytest.approx(worst_wait_ms)
    report = (out / "latest.md").read_text()
    assert "## Targets" in report and doc["command"] in report and "Quick run" in report
    assert "bare LifoQueue" in (out / "readme.rst").read_text()
