"""The import guard of contrib modules whose third-party dependency comes with an extra."""

from __future__ import annotations

__all__ = ["INSTALL_URL", "install_command", "missing_extra"]

#: Where this version is installed from until the package index's ``geventconnpool`` (still
#: 0.2.1 of 2014) is this one: pyproject's Source URL, as a pip direct reference.
INSTALL_URL = "git+https://github.com/geventconnpool/geventconnpool"


def install_command(extra: str | None = None) -> str:
    """The pip command that installs this version (with ``extra``), from :data:`INSTALL_URL`."""
    name = f"geventconnpool[{extra}]" if extra else "geventconnpool"
    return f'pip install "{name} @ {INSTALL_URL}"'


def missing_extra(dependency: str, extra: str, module: str, cause: ImportError) -> ImportError:
    """The ``ImportError`` a contrib module raises when its extra is not installed.

    It names the fix (:func:`install_command`: the extra, from the repository, since the
    package index's name still serves 0.2.1), not only the missing module, and keeps ``name``
    so that code catching ``ImportError`` can still tell which.
    """
    return ImportError(
        f"{module} needs {dependency}, which is not installed ({cause}); "
        f"install it with: {install_command(extra)} (or, in a clone: pip install -e '.[{extra}]')",
        name=dependency,
    )
