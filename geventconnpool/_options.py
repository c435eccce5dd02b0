"""Validation of the pool's options: every bad value fails at once with an error naming it."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ._fairness import FLOOR
from ._hooks import Hooks
from .errors import DEFAULT_EXC_CLASSES

#: Longest duration any option accepts (about 31 years); larger values overflow gevent's timers.
MAX_SECONDS = 1e9

#: Default deadline of ``get()``, in seconds, as psycopg_pool, HikariCP and SQLAlchemy have it: a
#: pool whose backend is down fails the call with a PoolTimeout naming the cause instead of
#: hanging it silently. ``timeout=None`` waits for ever, as 0.2.1 did.
DEFAULT_TIMEOUT = 30.0


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


# ---------------------------------------------------------------------- the options table
Checker = Callable[[str, Any], Any]


def _seconds(*, optional: bool = True, allow_zero: bool = True) -> Checker:
    return lambda name, v: check_seconds(name, v, optional=optional, allow_zero=allow_zero)


def _int(minimum: int, *, optional: bool = False) -> Checker:
    return lambda name, v: check_int(name, v, minimum, optional=optional)


def _name(name: str, value: Any) -> str | None:
    return check_name(value)


@dataclass(frozen=True)
class Option:
    """One pool option: its default, how a value is checked, whether it may change live."""

    name: str
    default: Any
    check: Checker
    live: bool  # may be assigned on a pool that exists (read at each use); else AttributeError


#: Every option of ``ConnectionPool``: the constructor's keyword arguments, the class attributes
#: that change their defaults, and README's options table all follow this table.
OPTIONS: tuple[Option, ...] = (
    Option("exc_classes", DEFAULT_EXC_CLASSES, check_exc_classes, True),
    Option("keepalive", None, _seconds(allow_zero=False), False),
    Option("min_size", None, _int(0, optional=True), True),
    Option("max_size", None, _int(1, optional=True), True),
    Option("name", None, _name, False),
    Option("timeout", DEFAULT_TIMEOUT, _seconds(), True),
    Option("max_waiting", None, _int(0, optional=True), True),
    Option("connect_timeout", 30.0, _seconds(allow_zero=False), True),
    Option("reconnect_delay", None, _seconds(), True),
    Option("reconnect_max_delay", 30.0, _seconds(optional=False), True),
    Option("fail_fast", False, check_bool, True),
    Option("fail_fast_after", 3, _int(1), True),
    Option("max_lifetime", None, _seconds(allow_zero=False), False),
    Option("lifetime_jitter", 0.05, check_fraction, False),
    Option("check_idle_after", 1.0, _seconds(), True),
    Option("keepalive_jitter", 0.1, check_fraction, False),
    Option("max_idle", 600.0, _seconds(allow_zero=False), True),
    Option("lifo", True, check_bool, False),
    Option("leak_timeout", None, _seconds(allow_zero=False), False),
    Option("max_connecting", 2, _int(1), True),
    Option("fair_after", 0.03, _seconds(), True),
    Option("fair_floor", FLOOR, _seconds(), True),
)
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


class PoolOptions:
    """A pool's options as attributes, read back as these types; the class attributes hold the
    defaults of the table, and a subclass may override any of them."""

    size: int
    min_size: int
    max_size: int
    name: str
    exc_classes: tuple[type[BaseException], ...]
    keepalive: float | None
    timeout: float | None
    max_waiting: int | None
    connect_timeout: float | None
    reconnect_delay: float | None
    reconnect_max_delay: float
    fail_fast: bool
    fail_fast_after: int
    max_lifetime: float | None
    lifetime_jitter: float
    check_idle_after: float | None
    keepalive_jitter: float
    max_idle: float | None
    lifo: bool
    leak_timeout: float | None
    max_connecting: int
    fair_after: float
    fair_floor: float


for _opt in OPTIONS:  # sizes and name have no default: they are computed per pool
    if _opt.name not in ("min_size", "max_size", "name"):
        setattr(PoolOptions, _opt.name, _opt.default)


def check_sizes(size: Any, min_size: Any, max_size: Any) -> tuple[int, int]:
    """``size`` means min_size == max_size == size, unless they are given too."""
    size = check_int("size", size, 1, optional=True)
    hi = check_int("max_size", max_size, 1, optional=True)
    lo = check_int("min_size", min_size, 0, optional=True)
    if size is not None and hi is not None and size > hi:
        raise ValueError(f"size ({size}) must not exceed max_size ({hi}); pass one of them")
    if hi is None:
        hi = size if size is not None else lo
    if hi is None:
        raise TypeError("size (or max_size) is required: ConnectionPool(10) keeps 10 open")
    if hi == 0:
        raise ValueError("max_size is required with min_size=0: the pool could never connect")
    if lo is None:
        lo = size if size is not None else hi
    if lo > hi:
        raise ValueError(f"min_size ({lo}) must not exceed max_size ({hi})")
    return lo, hi


def configure(pool: Any, size: Any, given: dict[str, Any]) -> None:
    """Validate every option of ``pool`` (argument, else class attribute) and set it."""
    cls = type(pool)
    for opt in OPTIONS:
        value = given[opt.name] if opt.name in given else getattr(cls, opt.name, opt.default)
        object.__setattr__(pool, opt.name, opt.check(opt.name, value))
    if size is None and getattr(cls, "size", None) is not None:
        size = cls.size  # a subclass's `size = 10`
    lo, hi = check_sizes(size, pool.min_size, pool.max_size)
    for key, value in (("min_size", lo), ("max_size", hi), ("size", hi)):
        object.__setattr__(pool, key, value)
    if pool.name is None:
        object.__setattr__(pool, "name", pool._default_name())
    check_seconds("SPAWN_FREQUENCY", pool.SPAWN_FREQUENCY, optional=False)
    if pool.keepalive is not None and cls._keepalive is Hooks._keepalive:
        raise TypeError(
            f"keepalive={pool.keepalive} needs a _keepalive(conn) method: implement it in "
            f"{cls.__name__}, or leave keepalive=None"
        )


def assign(pool: Any, name: str, value: Any) -> bool:
    """An option assigned on a live pool: sizes resize it, live options are checked and set,
    the others raise AttributeError. False: ``name`` is not an option."""
    if name in ("size", "min_size", "max_size"):
        sizes = {"min_size": value, "max_size": value} if name == "size" else {name: value}
        pool.resize(**sizes)
        return True
    opt = BY_NAME.get(name)
    if opt is None:
        return False
    if not opt.live:
        raise AttributeError(
            f"{name} cannot be changed on a pool that exists; pass {name}= to the "
            f"constructor or set it as a class attribute of {type(pool).__name__}"
        )
    object.__setattr__(pool, name, opt.check(name, value))
    return True
