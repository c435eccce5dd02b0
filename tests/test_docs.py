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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gevent import socket

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


# ---------------------------------------------------------------- install commands

# `pip install` of a requirement named geventconnpool, in any quoting, with any options before it.
_PIP = re.compile(
    r"pip install\s+(?:-\S+\s+)*(?P<q>[\"']?)(?P<req>geventconnpool\b(?:\[[^\]]*\])?"
    r"(?:\s*@\s*[^\s\"'`]+)?)(?P=q)"
)


def install_texts() -> dict[str, str]:
    """Every file a user reads a command in: README, docs/, the package's messages and
    docstrings (the API reference shows them), the examples; whitespace (line breaks inside an
    inline literal) collapsed."""
    files = [*pages()]
    for top in ("geventconnpool", "examples", "scripts"):
        files += sorted((ROOT / top).rglob("*.py"))
    return {str(f.relative_to(ROOT)): re.sub(r"\s+", " ", f.read_text()) for f in files}


def bad_install_commands(text: str, source_url: str, extras: set[str]) -> list[str]:
    """The `pip install geventconnpool...` commands in ``text`` that would not install this
    version: no direct reference to the repository (the index has 0.2.1), or an extra it lacks."""
    from packaging.requirements import Requirement

    bad = []
    for match in _PIP.finditer(text):
        req = Requirement(match["req"])
        if req.url != f"git+{source_url}" or not req.extras <= extras:
            bad.append(match[0])
    return bad


def project_install_facts() -> tuple[str, set[str]]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["urls"]["Source"], set(project["optional-dependencies"])


def test_every_install_command_installs_this_version() -> None:
    source, extras = project_install_facts()
    found = {
        name: bad_install_commands(text, source, extras) for name, text in install_texts().items()
    }
    bad = {name: commands for name, commands in found.items() if commands}
    assert not bad, (
        "these install the package index's geventconnpool (0.2.1), or an extra it has not: "
        f'write pip install "geventconnpool[<extra>] @ git+{source}": {bad}'
    )
    commands = sum(len(_PIP.findall(text)) for text in install_texts().values())
    assert commands >= 8  # README's sections, the guides, the extras' ImportError


def test_the_install_check_catches_what_would_hit_the_index() -> None:
    source, extras = project_install_facts()
    git = f"git+{source}"
    assert bad_install_commands(
        "pip install geventconnpool; ``pip install geventconnpool[prometheus]``; "
        "pip install 'geventconnpool[redis]'; pip install -U \"geventconnpool[postgres]\"; "
        f'pip install "geventconnpool[nope] @ {git}"; pip install "geventconnpool @ git+https://x"',
        source,
        extras,
    ) == [
        "pip install geventconnpool",
        "pip install geventconnpool[prometheus]",
        "pip install 'geventconnpool[redis]'",
        'pip install -U "geventconnpool[postgres]"',
        f'pip install "geventconnpool[nope] @ {git}"',
        'pip install "geventconnpool @ git+https://x"',
    ]
    ok = f"pip install \"geventconnpool[redis] @ {git}\"; pip install -e '.[redis]'"
    assert bad_install_commands(ok, source, extras) == []


def test_the_readme_says_once_why_it_installs_from_the_repository() -> None:
    readme = (ROOT / "README.rst").read_text()
    section = readme[readme.index("\nInstalling\n") : readme.index("\nCredits and licence\n")]
    assert "still the original 0.2.1" in section and "package index" in section
    assert readme.count("still the original 0.2.1") == 1


# ---------------------------------------------------------------- monkey-patching under --preload

PRELOAD_APP = """
{patch}from ssl import SSLContext  # a direct reference, as urllib3 and requests hold

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""
PATCH = "from gevent import monkey\nmonkey.patch_all()\n"
# The sync point: gunicorn calls post_worker_init in each worker after the gevent worker patched.
READY_HOOK = """
def post_worker_init(worker):
    worker.log.info("worker ready")
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("where", "preload", "warnings"),
    [
        ("nowhere", True, 2),  # what the page warns about: one MonkeyPatchWarning per worker
        ("nowhere", False, 0),  # without --preload each worker patches before importing
        ("app", True, 0),  # the page's first fix: the app module's first lines
        ("config", True, 0),  # the page's second fix: a gunicorn config file
    ],
)
def test_monkey_patching_under_gunicorn_preload_is_as_the_page_says(
    tmp_path: Path, where: str, preload: bool, warnings: int
) -> None:
    from geventconnpool.testing import free_port

    page = (ROOT / "docs" / "usage" / "monkey-patching.rst").read_text()
    assert "      " + PATCH.strip().replace("\n", "\n      ") in page  # the lines to write
    (tmp_path / "app.py").write_text(PRELOAD_APP.format(patch=PATCH if where == "app" else ""))
    (tmp_path / "gunicorn_conf.py").write_text((PATCH if where == "config" else "") + READY_HOOK)
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "2", "-b", f"127.0.0.1:{port}"]
    argv += ["--preload"] if preload else []
    argv += ["-c", "gunicorn_conf.py"]
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*argv, "app:app"], cwd=tmp_path, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while log.read_text().count("worker ready") < 2:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # served
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert sock.recv(64).startswith(b"HTTP/1.")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert log.read_text().count("MonkeyPatchWarning: Monkey-patching ssl after ssl") == warnings
