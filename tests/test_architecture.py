"""The package's shape: imports run one way, the options table is the one source of options."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import geventconnpool
from geventconnpool import ConnectionPool
from geventconnpool._options import OPTIONS

PACKAGE = Path(geventconnpool.__file__).parent
ROOT = PACKAGE.parent

#: Each core module's layer: a module may import only from lower layers (or its own).
LAYERS = {
    "errors": 0,
    "stats": 0,
    "_probe": 0,
    "_backoff": 0,
    "_records": 1,
    "_fork": 1,
    "budget": 1,
    "_hooks": 2,
    "_log": 2,
    "_options": 3,
    "_loop": 3,
    "retry": 4,
    "_state": 4,
    "_maintenance": 4,
    "_messages": 5,
    "_connector": 5,
    "pool": 6,
    "_multi": 7,
    "_room": 7,
    "keyed": 8,
    "balanced": 8,
}


def _internal_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("geventconnpool."):
            found.add((node.module or "").split(".")[1])
    return found


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_core_modules_import_only_from_lower_layers(module: str) -> None:
    if not (PACKAGE / f"{module}.py").exists():
        pytest.skip(f"{module}.py is not in this tree")
    imports = _internal_imports(PACKAGE / f"{module}.py") & set(LAYERS)
    upward = {name for name in imports if LAYERS[name] >= LAYERS[module] and name != module}
    assert not upward, f"{module} imports {sorted(upward)} (same or higher layer)"


def test_there_is_no_import_cycle_in_the_package() -> None:
    graph = {
        path.stem: _internal_imports(path)
        for path in PACKAGE.glob("*.py")
        if path.stem != "__init__"
    }

    def visit(node: str, stack: list[str]) -> None:
        assert node not in stack, f"import cycle: {' -> '.join([*stack, node])}"
        for nxt in graph.get(node, ()):
            if nxt in graph and nxt != "__main__":
                visit(nxt, [*stack, node])

    for name in graph:
        visit(name, [])


def test_every_option_is_a_constructor_argument_and_a_class_attribute() -> None:
    params = set(inspect.signature(ConnectionPool.__init__).parameters) - {"self", "size", "open"}
    names = {o.name for o in OPTIONS}
    assert params == names
    for opt in OPTIONS:
        annotated = any(
            opt.name in vars(k).get("__annotations__", {}) for k in ConnectionPool.__mro__
        )
        assert annotated, f"{opt.name} has no type for reading it back"


def test_readme_options_table_lists_exactly_the_options() -> None:
    text = (ROOT / "README.rst").read_text()
    table = text.split("Options\n~~~~~~~", 1)[1].split("\nHooks\n", 1)[0]
    rows = set(re.findall(r"^``(\w+)``", table, flags=re.M))
    assert rows - {"size", "SPAWN_FREQUENCY"} == {o.name for o in OPTIONS}


def test_option_defaults_in_the_readme_match_the_table() -> None:
    text = (ROOT / "README.rst").read_text()
    for opt in OPTIONS:
        match = re.search(rf"^``{opt.name}``\s+(\S+)", text, flags=re.M)
        assert match, opt.name
        if isinstance(opt.default, (int, float)) and not isinstance(opt.default, bool):
            assert match.group(1).strip("`") in (repr(opt.default), str(opt.default)), opt.name
        elif opt.default is None:
            assert match.group(1) in ("``None``", "``size``", "``pool-N``", "``SPAWN_FREQUENCY``")
