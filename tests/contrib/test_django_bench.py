"""``python -m bench.django_view`` runs (a few requests, our backend only) and reports figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("django")
pytest.importorskip("psycopg")

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_django_view_bench_smoke(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "bench.django_view", "--impls", "ours", "--rounds", "1"]
    cmd += ["--greenlets", "30", "--requests", "3", "--deadline", "20", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=55, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((tmp_path / "django.json").read_text())
    ours = doc["results"]["ours"]
    assert ours["failed"] == 0 and ours["hung"] == 0, ours
    assert ours["req_per_s"] > 0 and 1 <= ours["peak_sessions"] <= 10, ours
    assert doc["raw"]["ours"][0]["ok"] == 90, doc["raw"]
    report = (tmp_path / "django.md").read_text()
    assert "| geventconnpool Django backend |" in report, report
