"""Smoke test of the benchmark harness (bench/): it runs and produces numbers.

The quickest mode, on the embedded PING server, for the bare queue and this pool, on the
``cycle`` workload only: a few seconds. It checks that figures come out, not what they are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_quick_bench_produces_numbers(tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "bench", "--quick", "--server", "embedded", "--impls", "bare,ours",
        "--workloads", "cycle", "--rounds", "1", "--no-chart", "--no-pin", "--out", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=40, check=False)
    assert done.returncode == 0, done.stderr[-2000:]

    doc = json.loads((tmp_path / "latest.json").read_text())
    cycle = doc["results"]["cycle"]
    for impl in ("bare", "ours"):
        entry = cycle[impl]
        assert entry["status"] is None, entry
        assert entry["summary"]["ns_per_op"] > 0
        assert entry["summary"]["errors"] == 0
        assert entry["rounds"][0]["ops"] > 0
    assert cycle["ours"]["summary"]["x_bare"] > 0
    assert doc["meta"]["server"]["kind"] == "embedded"
    assert "cycle" in (tmp_path / "latest.md").read_text()
    assert "(this)" in done.stdout
