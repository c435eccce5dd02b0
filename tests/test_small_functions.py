"""Small functions (STYLE.md, issue 18 item 6): none over 40 lines in the multi-pool modules.

Counted from ``def`` to the function's last line, docstring included; nested functions count on
their own and inside their parent.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import geventconnpool

PACKAGE = Path(geventconnpool.__file__).parent
LIMIT = 40
MODULES = ["keyed.py", "_room.py", "balanced.py", "_loop.py", "contrib/tcp.py"]


def long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.end_lineno is not None
            lines = node.end_lineno - node.lineno + 1
            if lines > LIMIT:
                found.append(f"{node.name} (line {node.lineno}): {lines} lines")
    return found


@pytest.mark.parametrize("module", MODULES)
def test_no_function_is_longer_than_40_lines(module: str) -> None:
    assert not long_functions(PACKAGE / module), f"{module}: {long_functions(PACKAGE / module)}"


def test_the_count_sees_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))
    (tmp_path / "m.py").write_text(f"def f() -> None:\n{body}\n")
    assert long_functions(tmp_path / "m.py") == [f"f (line 1): {LIMIT + 1} lines"]
