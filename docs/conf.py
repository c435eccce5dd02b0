"""Sphinx configuration of the geventconnpool documentation (``make docs``)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # autodoc documents the checkout's package

import geventconnpool  # noqa: E402

project = "geventconnpool"
author = "the geventconnpool developers"
copyright = "2026, the geventconnpool developers; 0.2.1 (2014) by Giovanni Bajo"
release = geventconnpool.__version__
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx"]
exclude_patterns = ["_build"]
root_doc = "index"
html_theme = "alabaster"
html_theme_options = {"description": "A connection pool for gevent applications"}

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
intersphinx_mapping: dict[str, tuple[str, None]] = {}
nitpicky = False


class _NoGuidesYet(logging.Filter):
    """``guides/*`` may match nothing until the integration guides are written: not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "'guides/*' didn't match" not in record.getMessage()


def setup(app: Any) -> None:
    logging.getLogger("sphinx.sphinx.directives.other").addFilter(_NoGuidesYet())
