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
    "_fairness": 0,
    "_records": 1,
    "_fork": 1,
    "budget": 1,
    "_hooks": 2,
    "_health": 2,
    "_log": 3,
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


@pytest.mark.integration  # reads the checkout's README.rst
def test_readme_options_table_lists_exactly_the_options() -> None:
    text = (ROOT / "README.rst").read_text()
    table = text.split("Options\n~~~~~~~", 1)[1].split("\nHooks\n", 1)[0]
    rows = set(re.findall(r"^``(\w+)``", table, flags=re.M))
    assert rows - {"size", "SPAWN_FREQUENCY"} == {o.name for o in OPTIONS}


@pytest.mark.integration  # reads the checkout's README.rst
def test_option_defaults_in_the_readme_match_the_table() -> None:
    text = (ROOT / "README.rst").read_text()
    for opt in OPTIONS:
        match = re.search(rf"^``{opt.name}``\s+(\S+)", text, flags=re.M)
        assert match, opt.name
        if isinstance(opt.default, (int, float)) and not isinstance(opt.default, bool):
            assert match.group(1).strip("`") in (repr(opt.default), str(opt.default)), opt.name
        elif opt.default is None:
            assert match.group(1) in ("``None``", "``size``", "``pool-N``", "``SPAWN_FREQUENCY``")


# -- one writer, one actor (issue 18) -----------------------------------------------------------
#: The modules that may store attributes on the pool's bookkeeping: the state and the records
#: (a record's own methods). Everything else asks PoolState.
WRITERS = {"_state", "_records", "_health"}  # _health: Health's own methods (self.x) only
#: Names the package gives the state, its parts and its records when it holds them.
BOOKKEEPING_NAMES = {"state", "rec", "record", "w", "waiter", "attempt", "health", "counters"}
BOOKKEEPING_ATTRS = {"_state", "health", "counters"}
#: The hooks that close or forget a connection, and the pool's wrappers of them: only the actor
#: (ConnectionPool._apply, in pool.py) runs them.
ACTOR_ONLY = {
    "_on_discard",
    "_close_connection",
    "_forget_connection",
    "_call_on_discard",
    "_close_quietly",
    "_forget_quietly",
}


def _targets(node: ast.AST) -> list[ast.expr]:
    if isinstance(node, ast.Assign):
        found = []
        for t in node.targets:
            found.extend(t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t])
        return found
    if isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        return [node.target]
    return []


def _is_bookkeeping(base: ast.expr) -> bool:
    """``base`` denotes the state, a part of it or a record (``self`` is a class's own)."""
    if isinstance(base, ast.Name):
        return base.id in BOOKKEEPING_NAMES
    if isinstance(base, ast.Attribute):
        return base.attr in BOOKKEEPING_ATTRS or _is_bookkeeping(base.value)
    if isinstance(base, ast.Subscript):  # pool._state.idle[0].x
        return _is_bookkeeping(base.value)
    return False


def _handles_records(tree: ast.Module) -> bool:
    """The module imports the state or the records: its short names (rec, w...) are theirs."""
    return any(
        isinstance(node, ast.ImportFrom) and node.module in ("_state", "_records") and node.level
        for node in ast.walk(tree)
    )


def bookkeeping_writes(source: str, strict: bool | None = None) -> list[str]:
    """Attribute stores on the state or a record in ``source``: ``rec.holder = ...``.

    In a module that does not import the state or the records, only stores through a
    ``_state`` attribute count (``w`` there is the module's own waiter, say).
    """
    tree = ast.parse(source)
    strict = _handles_records(tree) if strict is None else strict

    def bookkeeping(base: ast.expr) -> bool:
        return _is_bookkeeping(base) and (strict or "_state" in ast.unparse(base))

    found = []
    for node in ast.walk(tree):
        for target in _targets(node):
            if isinstance(target, ast.Attribute) and bookkeeping(target.value):
                found.append(f"line {node.lineno}: {ast.unparse(target)}")
        is_setattr = isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr"
        if is_setattr and node.args and bookkeeping(node.args[0]):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


class _ActorCalls(ast.NodeVisitor):
    def __init__(self) -> None:
        self.functions: list[str] = []
        self.found: list[str] = []

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.functions.append(node.name)
        self.generic_visit(node)
        self.functions.pop()

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ACTOR_ONLY:
            chained = (  # an override calling its parent's: super()._close_connection(conn)
                isinstance(func.value, ast.Call)
                and getattr(func.value.func, "id", None) == "super"
                and self.functions[-1:] == [func.attr]
            )
            if not chained:
                self.found.append(f"line {node.lineno}: {ast.unparse(func)}")
        self.generic_visit(node)


def actor_calls(source: str) -> list[str]:
    """Calls of the closing hooks in ``source``, but an override calling its parent's."""
    visitor = _ActorCalls()
    visitor.visit(ast.parse(source))
    return visitor.found


def _package_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_only_the_state_and_the_records_write_the_bookkeeping() -> None:
    offenders = {
        str(path.relative_to(PACKAGE)): writes
        for path in _package_modules()
        if path.stem not in WRITERS or path.parent != PACKAGE
        if (writes := bookkeeping_writes(path.read_text()))
    }
    assert not offenders, f"only _state.py/_records.py write the bookkeeping: {offenders}"


def test_only_the_pool_closes_forgets_or_reports_a_discard() -> None:
    offenders = {
        str(path.relative_to(PACKAGE)): calls
        for path in _package_modules()
        if path != PACKAGE / "pool.py"
        if (calls := actor_calls(path.read_text()))
    }
    assert not offenders, f"only ConnectionPool._apply (pool.py) may: {offenders}"


def test_the_one_writer_check_sees_the_writes_it_forbids() -> None:
    """The checks above would have caught what pool.py and _connector.py did before."""
    before = """
rec.holder = getcurrent()
self._state.pid = _getpid()
state.counters.timeouts += 1
rec.leak_reported, rec.taken_at = False, stack
pool._state.idle[0].expires_at = 0.0
self.holder = None  # a class's own attribute: fine
"""
    assert len(bookkeeping_writes(before, strict=False)) == 2  # the ones through _state
    assert [w.split(": ")[1] for w in bookkeeping_writes(before, strict=True)] == [
        "rec.holder",
        "self._state.pid",
        "state.counters.timeouts",
        "rec.leak_reported",
        "rec.taken_at",
        "pool._state.idle[0].expires_at",
    ]
    calls = """
def finished(pool, conn, outcome):
    pool._close_quietly(conn)
    pool._call_on_discard(conn, outcome)
    pool._forget_connection(conn)

class Mine:
    def _close_connection(self, conn):
        super()._close_connection(conn)  # an override calling its parent's: fine
"""
    assert [c.split(": ")[1] for c in actor_calls(calls)] == [
        "pool._close_quietly",
        "pool._call_on_discard",
        "pool._forget_connection",
    ]
