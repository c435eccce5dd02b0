"""Sphinx configuration of the geventconnpool documentation (``make docs``)."""

from __future__ import annotations

import inspect
import logging
import re
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


# -- real defaults instead of <object object> ------------------------------------------------------
# The pools mark "not given" with a sentinel ``object()``: the class attribute of the same name (or
# the pool's own option) applies. The reference shows what applies instead of the sentinel's repr.

#: A method's sentinel default that is not a class attribute: what applies when it is not given.
METHOD_DEFAULTS = {
    "timeout": "self.timeout",  # ConnectionPool.get, BalancedPool.get
    "key": "ALL_KEYS",  # PoolMap.stats(): every key's pool combined
    "endpoint": "ALL_ENDPOINTS",  # BalancedPool.stats(): every endpoint combined
}
#: A constructor's sentinel default that is neither an option nor a class attribute: what applies.
PARAM_DEFAULTS = {
    "GeventPool.pool_size": "5",  # contrib.sqlalchemy: QueuePool's defaults
    "GeventPool.max_overflow": "10",
    "GeventPool.use_lifo": "True",  # ours, where QueuePool's is False: the warmest connection
}
_SENTINEL = re.compile(r"(\w+)=<object object( at 0x[0-9a-f]+)?>")
_log = logging.getLogger("sphinx.geventconnpool")


def _repr(value: Any) -> str:
    """``(OSError,)`` rather than ``(<class 'OSError'>,)``."""
    if isinstance(value, tuple) and value and all(isinstance(v, type) for v in value):
        return "(" + ", ".join(v.__name__ for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def _is_sentinel(value: Any) -> bool:
    return type(value) is object


def _owner(what: str, obj: Any) -> type | None:
    """The class whose attributes hold the defaults: the class itself, or a method's class."""
    if what == "class":
        return obj if isinstance(obj, type) else None
    qualname = getattr(obj, "__qualname__", "")
    module = sys.modules.get(getattr(obj, "__module__", ""), None)
    owner: Any = module
    for part in qualname.split(".")[:-1]:
        owner = getattr(owner, part, None)
    return owner if isinstance(owner, type) else None


def default_text(what: str, obj: Any, param: str) -> str | None:
    """The text that stands for ``param``'s sentinel default of ``obj``; None if unknown."""
    from geventconnpool._options import BY_NAME

    owner = _owner(what, obj)
    if owner is not None and f"{owner.__qualname__}.{param}" in PARAM_DEFAULTS:
        return PARAM_DEFAULTS[f"{owner.__qualname__}.{param}"]
    if what == "class" and owner is not None:
        value = getattr(owner, param, BY_NAME[param].default if param in BY_NAME else obj)
        return None if value is obj or _is_sentinel(value) else _repr(value)
    if what == "method" and param in METHOD_DEFAULTS:
        return METHOD_DEFAULTS[param]
    if owner is not None and param in vars(owner):
        return _repr(getattr(owner, param))
    return None


def real_defaults(
    app: Any, what: str, name: str, obj: Any, options: Any, signature: str | None, ret: str | None
) -> tuple[str | None, str | None] | None:
    """``autodoc-process-signature``: replace each ``name=<object object>`` by what applies."""
    if not signature or "<object object" not in signature:
        return None

    def replace(match: re.Match[str]) -> str:
        text = default_text(what, obj, match[1])
        if text is None:
            _log.warning("%s: no documented default for the sentinel of %r", name, match[1])
            return match[0]
        return f"{match[1]}={text}"

    return _SENTINEL.sub(replace, signature), ret


def pool_options(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """``autodoc-process-docstring``: every pool class lists its options with their defaults, read
    from the options table and the class attributes, so the reference cannot drift from them."""
    from geventconnpool import ConnectionPool
    from geventconnpool._options import OPTIONS

    if what != "class" or not (isinstance(obj, type) and issubclass(obj, ConnectionPool)):
        return
    computed = {"min_size": "``size``", "max_size": "``size``", "name": "``pool-N``"}

    def default(cls: type, option: str) -> str:
        value = getattr(cls, option, None)
        return (
            computed.get(option, "")
            if value is None and option in computed
            else f"``{_repr(value)}``"
        )

    if obj is ConnectionPool:
        lines += ["", "Options (keyword arguments) and their defaults:", ""]
        lines += [f"- ``{o.name}``: {default(obj, o.name)}" for o in OPTIONS]
        lines += ["", "README's options table says what each one means and when to change it."]
        return
    differ = [o.name for o in OPTIONS if default(obj, o.name) != default(ConnectionPool, o.name)]
    where = "keyword arguments (``**pool_options``)" if _var_keyword(obj) else "keyword arguments"
    lines += ["", f"Pool options: those of :class:`~geventconnpool.ConnectionPool`, as {where}; "]
    if differ:
        lines[-1] += (
            "their defaults here differ for "
            + ", ".join(f"``{o}`` ({default(obj, o)})" for o in differ)
            + ", the others are ConnectionPool's."
        )
    else:
        lines[-1] += "with ConnectionPool's defaults."
    lines.append("")


def _var_keyword(cls: type) -> bool:
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_KEYWORD for p in params)


def setup(app: Any) -> None:
    logging.getLogger("sphinx.sphinx.directives.other").addFilter(_NoGuidesYet())
    app.connect("autodoc-process-signature", real_defaults)
    app.connect("autodoc-process-docstring", pool_options)
