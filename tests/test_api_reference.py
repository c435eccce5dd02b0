"""The API reference (docs/api.rst, built by Sphinx as ``make docs`` does) documents every public
name, with the defaults that really apply.

Public: every name in the ``__all__`` of ``geventconnpool`` and of each of its modules whose name
does not start with ``_``, including the ``geventconnpool.contrib`` modules and packages present
in the tree when the test runs (integrations added later are held to the same rule).
"""

from __future__ import annotations

import html
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import geventconnpool
import geventconnpool.contrib
from geventconnpool._options import OPTIONS

from .servers import CI

pytestmark = pytest.mark.integration  # builds the checkout's docs/ with Sphinx

ROOT = Path(__file__).resolve().parent.parent


def public_modules() -> tuple[list[ModuleType], list[str]]:
    """The public modules that import, and the names of those that do not (a missing extra)."""
    names = ["geventconnpool"]
    for package in (geventconnpool, geventconnpool.contrib):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if not any(part.startswith("_") for part in info.name.split(".")):
                names.append(info.name)
    modules, broken = [], []
    for name in dict.fromkeys(names):
        try:
            modules.append(importlib.import_module(name))
        except ImportError as exc:
            broken.append(f"{name}: {exc}")
    return modules, broken


@pytest.fixture(scope="module")
def api_html(tmp_path_factory: pytest.TempPathFactory) -> str:
    """docs/api.rst as HTML, built like ``make docs`` (a warning is an error)."""
    try:
        import sphinx  # noqa: F401
    except ImportError:
        message = "sphinx is not installed (pip install -e '.[docs]')"
        if CI:
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("docs")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs", out],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return (out / "api.html").read_text()


def documented(page: str) -> set[str]:
    return set(re.findall(r'<dt class="sig sig-object py[^"]*" id="([\w.]+)"', page))


def where_documented(module: ModuleType, name: str, ids: set[str]) -> str | None:
    """The id under which ``module.name`` is documented: its own, or the same object's elsewhere
    (a re-export, such as ``geventconnpool.ConnectionPool`` of ``geventconnpool.pool``)."""
    if f"{module.__name__}.{name}" in ids:
        return f"{module.__name__}.{name}"
    obj = getattr(module, name)
    for ident in ids:
        owner, _, attr = ident.rpartition(".")
        if attr == name and owner in sys.modules and getattr(sys.modules[owner], attr, None) is obj:
            return ident
    return None


def test_every_public_name_is_in_the_api_reference(api_html: str) -> None:
    modules, broken = public_modules()
    if broken and CI:
        pytest.fail(f"public modules that do not import: {broken}")
    ids = documented(api_html)
    missing = [
        f"{module.__name__}.{name}"
        for module in modules
        for name in getattr(module, "__all__", ())
        if where_documented(module, name, ids) is None
    ]
    assert not missing, f"add them to docs/api.rst: {missing}"
    assert len(modules) >= 17  # the package, 9 modules, contrib and its 7 modules at least


def test_no_default_renders_as_a_sentinel(api_html: str) -> None:
    text = html.unescape(re.sub(r"<[^>]+>", "", api_html))
    assert "<object object" not in text
    assert "object at 0x" not in text


def test_connection_pool_options_show_their_real_defaults(api_html: str) -> None:
    text = html.unescape(re.sub(r"<[^>]+>", "", api_html))
    signature = text[text.index("class geventconnpool.ConnectionPool(") :].split(")¶")[0]
    for option in OPTIONS:
        if option.name in ("exc_classes", "min_size", "max_size", "name"):
            continue
        assert f"{option.name}={option.default!r}" in signature, option.name
    assert "exc_classes=(OSError,)" in signature and "timeout=30.0" in signature
    assert "get(timeout=self.timeout)" in text


def test_pool_classes_list_their_options(api_html: str) -> None:
    text = html.unescape(re.sub(r"<[^>]+>", "", api_html))
    assert "Options (keyword arguments) and their defaults:" in text
    # every ready-made pool names its pool options, and the defaults it changes
    for pool in (
        "redis.RedisPool",
        "tcp.TcpPool",
        "tcp.SslPool",
        "dbapi.DbApiPool",
        "thrift.ThriftPool",
        "sentinel.SentinelRedisPool",
    ):
        start = text.index(f"class geventconnpool.contrib.{pool}(")
        assert "Pool options: those of ConnectionPool" in text[start : start + 6000], pool


@pytest.mark.parametrize("name", ["PoolMap", "BalancedPool", "RetryBudget"])
def test_the_core_classes_show_their_constructor_defaults(api_html: str, name: str) -> None:
    text = html.unescape(re.sub(r"<[^>]+>", "", api_html))
    cls: Any = getattr(geventconnpool, name)
    assert re.search(rf"class {cls.__module__}\.{name}\([^)]*=", text), name


def test_the_docs_front_page_has_the_install_line_and_the_repository() -> None:
    index = (ROOT / "docs" / "index.rst").read_text()
    assert "https://github.com/geventconnpool/geventconnpool" in index
    assert (
        'pip install "geventconnpool @ git+https://github.com/geventconnpool/geventconnpool"'
        in (index)
    )
