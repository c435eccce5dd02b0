"""Validation of the pool's options: every bad value fails at once with an error naming it."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

#: Longest duration any option accepts (about 31 years); larger values overflow gevent's timers.
MAX_SECONDS = 1e9


def check_int(name: str, value: Any, minimum: int, *, optional: bool = False) -> int | None:
    """Return ``value`` if it is an int (not a bool) >= ``minimum``; None passes if ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def check_seconds(
    name: str, value: Any, *, optional: bool = True, allow_zero: bool = True
) -> float | None:
    """Return ``value`` as a float number of seconds; None passes when ``optional``."""
    if value is None:
        if optional:
            return None
        raise TypeError(f"{name} must be a number of seconds, not None")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    seconds = float(value)
    if math.isnan(seconds) or math.isinf(seconds):
        hint = "; use None for no limit" if optional else ""
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}{hint}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound} seconds, got {value!r}")
    if seconds > MAX_SECONDS:
        raise ValueError(f"{name} must be at most {MAX_SECONDS:g} seconds, got {value!r}")
    return seconds


def check_fraction(name: str, value: Any) -> float:
    """Return ``value`` if it is a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1), not {type(value).__name__}")
    if not 0.0 <= value < 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {type(value).__name__} ({value!r})")
    return value


def check_name(value: Any) -> str | None:
    """Return ``value`` if it is a non-empty str or None."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise TypeError(f"name must be a non-empty str, not {value!r}")
    return value


def check_exc_classes(name: str, value: Any) -> tuple[type[BaseException], ...]:
    """Return ``value`` as a tuple of exception classes; a single class is accepted too."""
    if isinstance(value, type) and issubclass(value, BaseException):
        return (value,)
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a tuple of exception classes, not {value!r}")
    classes = tuple(value)
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise TypeError(f"{name} must contain exception classes only, got {cls!r}")
    return classes
