"""Every ``.. code-block:: python`` in README.rst and docs/**/*.rst runs.

The convention (shared by everyone who writes docs here):

- the blocks of one page run in order, in one fresh interpreter, sharing one namespace;
- a block with the option ``:class: fragment`` (a config excerpt, a snippet that cannot stand
  alone) is skipped, and counted: the count is printed at the end of the test session;
- a page whose blocks mention a server's default port gets that server, started by the fixtures
  of ``tests/servers.py``, and the literal port in its blocks is replaced by the test server's:
  ``6379`` Redis, ``5432`` PostgreSQL (user ``postgres``, dbname ``postgres``, no password),
  ``6432`` pgbouncer, ``26379`` Redis Sentinel;
- each page has a time limit (:data:`PAGE_TIMEOUT`); a page that needs a server that is not
  installed fails under ``CI=true`` and is skipped elsewhere.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from . import servers
from .servers import CI

# Every fixture of tests/servers.py, by name (request.getfixturevalue finds module globals), so a
# server fixture added there later (pgbouncer, sentinel...) serves the pages that need it.
globals().update(
    {
        name: obj
        for name, obj in vars(servers).items()
        if hasattr(obj, "_fixture_function_marker") or hasattr(obj, "_pytestfixturefunction")
    }
)

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration  # the checkout's docs, some blocks against real servers
PAGE_TIMEOUT = 90.0  # seconds for all the blocks of one page
# Default port -> the fixtures that may provide that server, tried in order.
SERVERS: dict[int, tuple[str, ...]] = {
    6379: ("redis_server",),
    5432: ("postgres_server",),
    6432: ("pgbouncer_server", "pgbouncer"),
    26379: ("sentinel_server", "redis_sentinel", "sentinel"),
}
_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. code-block:: python[ \t]*$")
_OPTION = re.compile(r"^[ \t]+:(?P<name>[\w-]+):[ \t]*(?P<value>.*)$")


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int  # of the directive, 1-based
    code: str
    fragment: bool


def parse_blocks(path: Path) -> list[Block]:
    """The python code blocks of one reStructuredText file, in order."""
    lines = path.read_text().splitlines()
    page = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    blocks = []
    i = 0
    while i < len(lines):
        match = _DIRECTIVE.match(lines[i])
        i += 1
        if match is None:
            continue
        start, indent = i, len(match["indent"])
        options: dict[str, str] = {}
        while i < len(lines) and (option := _OPTION.match(lines[i])):
            options[option["name"]] = option["value"].strip()
            i += 1
        body: list[str] = []
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > indent):
            body.append(lines[i])
            i += 1
        code = textwrap.dedent("\n".join(body)).strip("\n") + "\n"
        fragment = "fragment" in options.get("class", "").split()
        blocks.append(Block(page, start, code, fragment))
    return blocks


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def pages() -> list[Path]:
    docs = sorted(p for p in (ROOT / "docs").rglob("*.rst") if "_build" not in p.parts)
    # Where only tests/ is copied (scripts/ci-package) there is no page: nothing to collect;
    # test_every_page_is_parsed_and_fragments_are_rare fails if the checkout lacks the README.
    return [p for p in (ROOT / "README.rst", *docs) if p.exists()]


def all_blocks() -> dict[str, list[Block]]:
    return {str(p.relative_to(ROOT)): parse_blocks(p) for p in pages()}


def fragment_counts() -> dict[str, int]:
    """Skipped fragments per page (pages with none left out)."""
    counts = {page: sum(b.fragment for b in blocks) for page, blocks in all_blocks().items()}
    return {page: n for page, n in counts.items() if n}


def ports_used(blocks: list[Block]) -> list[int]:
    code = "".join(b.code for b in blocks)
    return [port for port in SERVERS if re.search(rf"(?<!\d){port}(?!\d)", code)]


def start_server(request: pytest.FixtureRequest, port: int) -> int:
    """The port of a running test server standing in for the default ``port``."""
    for name in SERVERS[port]:
        try:
            server: Any = request.getfixturevalue(name)
        except pytest.FixtureLookupError:
            continue
        if hasattr(server, "sentinel_addresses"):  # a Sentinel cluster: its first sentinel
            found = server.sentinel_addresses[0][1]
        else:
            found = getattr(server, "port", None) or server.address[1]
        return int(found)
    message = f"no fixture in tests/servers.py provides the server of port {port}: {SERVERS[port]}"
    if CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def with_ports(code: str, ports: dict[int, int]) -> str:
    for default, actual in ports.items():
        code = re.sub(rf"(?<!\d){default}(?!\d)", str(actual), code)
    return code


HARNESS = """
import json, sys, traceback
blocks = json.load(sys.stdin)
namespace = {"__name__": "__main__"}
for block in blocks:
    try:
        exec(compile(block["code"], f"{block['page']}:{block['line']}", "exec"), namespace)
    except BaseException:
        print(f"block at {block['page']} line {block['line']} failed:", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        raise SystemExit(1)
"""


def runnable_pages() -> list[str]:
    return [page for page, blocks in all_blocks().items() if any(not b.fragment for b in blocks)]


@pytest.mark.timeout(PAGE_TIMEOUT + 60)  # servers may start first
@pytest.mark.parametrize("page", runnable_pages())
def test_code_blocks_of_the_page_run(page: str, request: pytest.FixtureRequest) -> None:
    blocks = [b for b in all_blocks()[page] if not b.fragment]
    ports = {port: start_server(request, port) for port in ports_used(blocks)}
    payload = [{"page": b.page, "line": b.line, "code": with_ports(b.code, ports)} for b in blocks]
    try:
        proc = subprocess.run(
            [sys.executable, "-c", HARNESS],
            input=json.dumps(payload),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=PAGE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{page}: its blocks still running after {PAGE_TIMEOUT}s\n{exc.stderr!r}")
    assert proc.returncode == 0, f"{page}:\n{proc.stdout}\n{proc.stderr}"


# ---------------------------------------------------------------- the runner itself

SAMPLE = """\
Title
=====

.. code-block:: python

    x = 1
    if x:
        y = 2

text

.. code-block:: python
   :class: fragment

    settings.password = new_password

- a list

  .. code-block:: python

      z = 6379  # redis
"""


def test_the_parser_finds_blocks_options_and_nested_blocks(tmp_path: Path) -> None:
    path = tmp_path / "sample.rst"
    path.write_text(SAMPLE)
    blocks = parse_blocks(path)
    assert [(b.line, b.fragment) for b in blocks] == [(4, False), (12, True), (19, False)]
    assert blocks[0].code == "x = 1\nif x:\n    y = 2\n"
    assert blocks[2].code == "z = 6379  # redis\n"
    assert ports_used(blocks) == [6379]
    assert with_ports(blocks[2].code, {6379: 40001}) == "z = 40001  # redis\n"
    assert ports_used([Block("p", 1, "port=26379", False)]) == [26379]


def test_every_page_is_parsed_and_fragments_are_rare() -> None:
    blocks = all_blocks()
    assert "README.rst" in blocks and "docs/index.rst" in blocks
    total = sum(len(b) for b in blocks.values())
    fragments = sum(fragment_counts().values())
    assert total > 0
    assert fragments <= total // 3, f"{fragments} of {total} blocks are fragments: {blocks}"


def test_the_readme_blocks_that_run_outnumber_its_fragments() -> None:
    readme = all_blocks()["README.rst"]
    assert sum(not b.fragment for b in readme) > sum(b.fragment for b in readme)


# ---------------------------------------------------------------- figures, stated once


def test_readme_chaos_figures_are_the_latest_reports() -> None:
    from .chaos.report import DOCS_START, README_END, README_START, readme_summary

    data = json.loads((ROOT / "reports" / "chaos-latest.json").read_text())
    readme = (ROOT / "README.rst").read_text()
    block = readme[readme.index(README_START) : readme.index(README_END) + len(README_END)]
    assert block == readme_summary(data), "run `make chaos` (or rewrite the README summary)"
    docs = (ROOT / "docs" / "reliability.rst").read_text()
    figures = docs[docs.index(DOCS_START) :]
    assert f"``{data['command']}`` on {data['environment']['date']}" in figures
    assert f"commit {data['environment']['commit']}" in figures


def test_readme_states_no_chaos_figure_outside_its_summary() -> None:
    from .chaos.report import README_END, README_START

    data = json.loads((ROOT / "reports" / "chaos-latest.json").read_text())
    readme = (ROOT / "README.rst").read_text()
    outside = readme[: readme.index(README_START)] + readme[readme.index(README_END) :]
    assert f"{data['soak']['checkouts']:,}" not in outside
    assert not re.search(r"\d+ random faults|about (ten|\d+) minutes", outside)
