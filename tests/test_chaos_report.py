"""The chaos report renders every figure a run measured, in Markdown and in the docs' RST block."""

from __future__ import annotations

from pathlib import Path

from .chaos.contract import ContractResult
from .chaos.report import DOCS_END, DOCS_START, Report, write
from .chaos.scenarios import ScenarioResult
from .chaos.soak import SoakResult


def sample_report() -> Report:
    restart = ScenarioResult(
        "restart", "redis", "the backend restarts", 20, 4, 5, 500, 20, attempted=233281,
        succeeded=232223, failed=1058, failed_by_type={"ConnectionResetError": 1058},
        p50_ms=30.4, p99_ms=43.2, recovery_s=0.009, peak_open=20, fds_start=9, fds_end=9,
    )  # fmt: skip
    broken = ContractResult("refused", "connects refused", 0.5, 1.0, calls=55, max_s=0.5012,
                            outcomes={"PoolTimeout": 55}, problems=["too slow"])  # fmt: skip
    soak = SoakResult(2_000_000, 600, 100, checkouts=2_000_703, seconds=163, fds_start=9,
                      fds_end=9, identities=[{"identity": "a = b", "left": 3, "right": 3,
                                              "holds": True}])  # fmt: skip
    env = {"date": "2026-11-23 10:51 UTC", "commit": "7cc9128", "redis": "7.0.15"}
    return Report("python -m tests.chaos", False, {"seconds": 20}, [restart], [], [broken],
                  {"refused@0.5": "a known bug"}, soak, environment=env)  # fmt: skip


def test_markdown_and_docs_show_every_figure(tmp_path: Path) -> None:
    docs = tmp_path / "reliability.rst"
    docs.write_text(f"Intro\n\n{DOCS_START}\nold figures\n{DOCS_END}\n\nOutro\n")
    report = sample_report()
    write(report, tmp_path, "chaos-latest", docs)
    md, rst = (tmp_path / "chaos-latest.md").read_text(), docs.read_text()
    for figures in (md, rst):
        for figure in ("233281", "232223", "1058 (ConnectionResetError 1058)", "9 ms", "20 / 20",
                       "9 / 9", "30 / 43", "0.5012", "FAIL (known bug)", "2,000,703 checkouts",
                       "7cc9128", "7.0.15"):  # fmt: skip
            assert figure in figures, figure
    assert "old figures" not in rst and rst.startswith("Intro") and rst.endswith("Outro\n")
    assert ".. csv-table:: Chaos scenarios" in rst and "| a = b | 3 | 3 | True |" in md
    assert report.failures() == [] and "All promises kept." in md
