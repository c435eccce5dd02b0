"""Smoke test of ``python -m bench.hotpath``: both trees measured in one run, and a ratio.

It runs a few small batches against HEAD (the figures are not checked: latency belongs in
bench/, not in asserts); it checks that the older tree really is imported from its own copy.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(120)


def test_hotpath_measures_both_trees_and_prints_the_ratio(tmp_path: Path) -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: nothing to archive")
    sys.path.insert(0, str(REPO))
    try:
        from bench import hotpath
    finally:
        sys.path.remove(str(REPO))
    tree = hotpath.extract("HEAD", tmp_path)
    assert (tree / "geventconnpool" / "__init__.py").exists()
    child = hotpath.Child(tree)
    try:
        assert child.time(500) > 0
    finally:
        child.close()
    cmd = [
        sys.executable,
        "-m",
        "bench.hotpath",
        "--against",
        "HEAD",
        "--rounds",
        "2",
        "--loops",
        "2000",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=100, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"ratio ours/theirs: best \d+\.\d+x   median \d+\.\d+x", done.stdout), (
        done.stdout
    )
