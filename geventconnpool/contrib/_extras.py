"""The import guard of contrib modules whose third-party dependency comes with an extra."""

from __future__ import annotations

__all__ = ["missing_extra"]


def missing_extra(dependency: str, extra: str, module: str, cause: ImportError) -> ImportError:
    """The ``ImportError`` a contrib module raises when its extra is not installed.

    It names the fix (``pip install 'geventconnpool[<extra>]'``), not only the missing
    module, and keeps ``name`` so that code catching ``ImportError`` can still tell which.
    """
    return ImportError(
        f"{module} needs {dependency}, which is not installed ({cause}); "
        f"install it with: pip install 'geventconnpool[{extra}]'",
        name=dependency,
    )
