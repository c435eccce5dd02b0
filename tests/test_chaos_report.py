"""The chaos report renders every figure a run measured, in Markdown and in the docs' RST block."""

from __future__ import annotations

from pathlib import Path

from .chaos.contract import ContractResult
from .chaos.exhaustion import ExhaustionResult
from .chaos.hooks import HookResult
from .chaos.report import DOCS_END, DOCS_START, Report, readme_summary, write
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
    env = {"date": "2026-11-23 10:51 UTC", "commit": "7cc9128", "redis": "7.0.15",
           "python": "3.11.7", "gevent": "26.9.0"}  # fmt: skip
    report = Report("python -m tests.chaos", False, {"seconds": 20}, [restart], [], [broken],
                    {"refused@0.5": "a known bug"}, soak, environment=env)  # fmt: skip
    report.exhaustion = ExhaustionResult(
        100_000, 300, 10, 0.01, 200, timed_out=50_000, killed=50_000, seconds=38.2,
        traced_warm=1_600_000, traced_samples=[(10_000, 1_600_000)], traced_exhausted=1_700_000,
        traced_peak=4_551_756, traced_after=614_400, rss_warm_kb=28_028, rss_exhausted_kb=31_268,
        rss_after_kb=31_228, served_after=2_000, held_at_once=10,
    )  # fmt: skip
    report.hooks = [
        HookResult("_on_connect", "HookFault", 10, 2, 4, 6, 50, 10, raised=2530, attempted=15339,
                   outcomes={"ok": 15019, "churn": 320}, connects=2860, connects_raised=2530,
                   connects_always=2464, bound_always=44, recovery_s=0.005, held_at_once=10,
                   hub_errors={"HookFault": 2530}, log_records={"WARNING": 7},
                   stats={"connect_failures": 0},
                   problems=["connect storm"]),
    ]  # fmt: skip
    return report


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
    for figures in (md, rst):  # the exhaustion and the hooks
        for figure in ("100,000 (50,000 + 50,000)", "1.1", "1,562 / 4,445 / 1,660 / 600",
                       "28,028 / 31,268 / 31,228", "2,000 / 10 of 10", "_on_connect", "HookFault",
                       "2860 (2530) / 0", "0 / 1,232", "2464 / 44", "5 ms", "10 / 10",
                       "2530 / 7"):  # fmt: skip
            assert figure in figures, figure
    assert ".. csv-table:: Exhausted pool" in rst
    assert ".. csv-table:: BaseException from a hook" in rst
    assert report.failures() == ["hooks/_on_connect (HookFault): connect storm"]
    assert "FAIL: hooks/_on_connect (HookFault): connect storm" in md
    summary = readme_summary(report.as_dict())
    assert "100,000 ``get()`` calls" in summary and "0 of 1 hooks passed" in summary


def test_a_part_with_notes_only_is_a_list_not_an_empty_table(tmp_path: Path) -> None:
    from .chaos.budget import BudgetRun

    docs = tmp_path / "reliability.rst"
    docs.write_text(f"{DOCS_START}\n{DOCS_END}\n")
    report = sample_report()
    report.budget = [BudgetRun("plain", 500, 3.0, 6.0, None, calls=10, requests=30)]
    write(report, tmp_path, "chaos-latest", docs)
    rst = docs.read_text()
    assert ".. csv-table:: Retry budget" not in rst  # docutils refuses a table without rows
    assert "Retry budget:\n\n* plain: 10 calls" in rst
