"""The package as a user meets it: one version, explicit ``__all__``, extras that say their name.

These tests run against whichever ``geventconnpool`` is imported: the checkout in ``make test``,
the installed wheel in ``make ci-dist`` (which copies the tests out of the checkout first).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import geventconnpool

ROOT = Path(__file__).resolve().parent.parent
# The contrib modules that import a third-party package, and the extra that installs it.
EXTRAS = {
    "geventconnpool.contrib.thrift": ("thriftpy2", "thrift"),
    "geventconnpool.contrib.prometheus": ("prometheus_client", "prometheus"),
    "geventconnpool.contrib.redispy": ("redis", "redis"),
    "geventconnpool.contrib.django.postgresql.base": ("django", "django"),
    "geventconnpool.contrib.sqlalchemy": ("sqlalchemy", "sqlalchemy"),
}
# Everything those extras and the postgres one install: blocked to show a module needs none.
ALL_EXTRA_PACKAGES = ["thriftpy2", "prometheus_client", "psycopg2", "psycogreen", "pg8000", "redis"]


def public_modules() -> list[str]:
    """Every module of the package whose name has no component starting with ``_``."""
    names = ["geventconnpool"]
    for info in pkgutil.walk_packages(geventconnpool.__path__, "geventconnpool."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def test_public_modules_are_the_documented_ones() -> None:
    expected = {"geventconnpool", "geventconnpool.contrib"}
    expected |= {f"geventconnpool.{m}" for m in ("demo", "errors", "pool", "retry", "stats")}
    expected |= {"geventconnpool.testing"}
    expected |= {f"geventconnpool.contrib.{m}" for m in ("dbapi", "redis", "tcp")}
    expected |= set(EXTRAS)
    assert expected <= set(public_modules())


@pytest.mark.parametrize("name", public_modules())
def test_every_public_module_declares_all(name: str) -> None:
    if name in EXTRAS:
        pytest.importorskip(EXTRAS[name][0])
    module = importlib.import_module(name)
    exported = module.__dict__.get("__all__")
    assert isinstance(exported, list), f"{name} has no __all__ list"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"


def test_version_is_the_installed_distributions_version() -> None:
    assert geventconnpool.__version__ == importlib.metadata.version("geventconnpool")


def test_version_has_one_source() -> None:
    pyproject = ROOT / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("no pyproject.toml beside the tests (an installed copy)")
    text = pyproject.read_text()
    project = text.split("\n[project]\n", 1)[1].split("\n[", 1)[0]
    assert not re.search(r"^version\s*=", project, re.M), "a second version in pyproject.toml"
    assert re.search(r'^dynamic = \["version"\]$', project, re.M)
    assert re.search(r'^version = \{ attr = "geventconnpool.__version__" \}$', text, re.M)


BLOCKER = """
import importlib.abc, sys

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

BLOCKED = set(sys.argv[2:])
sys.meta_path.insert(0, Blocker())
try:
    importlib.import_module(sys.argv[1])
except ImportError as exc:
    print(f"ImportError name={exc.name} msg={exc}")
else:
    print("imported")
"""


def import_blocking(module: str, *blocked: str) -> str:
    """Import ``module`` in a fresh interpreter where the ``blocked`` packages cannot be found."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(BLOCKER), module, *blocked],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.parametrize("module", sorted(EXTRAS))
def test_a_contrib_module_without_its_extra_names_the_extra(module: str) -> None:
    dependency, extra = EXTRAS[module]
    out = import_blocking(module, dependency)
    assert out.startswith(f"ImportError name={dependency} "), out
    assert f'pip install "geventconnpool[{extra}] @ git+https://github.com/' in out, out
    assert module in out, out


@pytest.mark.parametrize(
    "module",
    ["geventconnpool", "geventconnpool.testing", "geventconnpool.demo"]
    + [f"geventconnpool.contrib.{m}" for m in ("tcp", "redis", "dbapi")],
)
def test_the_core_and_extra_free_contrib_modules_import_without_any_extra(module: str) -> None:
    assert import_blocking(module, *ALL_EXTRA_PACKAGES) == "imported"
