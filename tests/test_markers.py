"""Every test is ``core`` or ``integration``, never both (tests/conftest.py gives the markers),
and ``-m core`` collects where only tests/ and pyproject.toml are, as scripts/ci-package runs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import geventconnpool

ROOT = Path(__file__).resolve().parent.parent
KINDS = {"core", "integration"}


def test_every_collected_test_is_core_or_integration_not_both(
    request: pytest.FixtureRequest,
) -> None:
    items = request.session.items
    assert request.node in items
    wrong = [
        (item.nodeid, sorted(KINDS & {m.name for m in item.iter_markers()}))
        for item in items
        if len(KINDS & {m.name for m in item.iter_markers()}) != 1
    ]
    assert not wrong


@pytest.mark.integration  # copies the checkout's tests/ and pyproject.toml
def test_core_tests_collect_without_the_checkout_and_leave_out_no_core_file(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(ROOT / "tests", run / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", run)
    package = tmp_path / "site"  # the package alone on sys.path: no bench/, docs/, examples/
    package.mkdir()
    (package / "geventconnpool").symlink_to(Path(geventconnpool.__file__).parent)
    env = {**os.environ, "PYTHONPATH": str(package)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", "-m", "core"],
        cwd=run,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    files = {line.split("::", 1)[0] for line in done.stdout.splitlines() if "::" in line}
    # the four files the old hand-kept list in scripts/ci-package left out are in
    for name in ("test_keyed", "test_balanced", "test_options", "test_architecture"):
        assert f"tests/{name}.py" in files
    assert not any(f.startswith("tests/contrib/") for f in files)
    assert "tests/test_docs.py" not in files and "tests/test_examples.py" not in files
