"""``@retry``: re-run a network function with a fresh connection when its connection breaks.

What is retried: ``exc_classes`` (by default ``OSError``), narrowed further by the ``on``
predicate when given; never the pool's own errors (:class:`~geventconnpool.PoolError`: a
``PoolTimeout`` would double the wait, ``PoolUnavailable``/``PoolExhausted``/``PoolClosed`` mean
"fail fast" and must fail). How much: ``max_failures`` retries per call, all attempts within
``deadline`` seconds, and retries shared by many calls within a :class:`RetryBudget`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeAlias, TypeVar, overload

import gevent

from ._backoff import delay as backoff_delay
from ._options import check_exc_classes, check_int, check_seconds
from .budget import RetryBudget
from .errors import DEFAULT_EXC_CLASSES, PoolError

__all__ = ["MAX_FAILURE_LOG_MESSAGE", "RETRY_LOG_MESSAGE", "RetryBudget", "retry"]

P = ParamSpec("P")
R = TypeVar("R")
Logger: TypeAlias = (
    "logging.Logger | logging.LoggerAdapter[Any]"  # a string: 3.10 cannot subscript it
)

RETRY_LOG_MESSAGE = "Connection broken in '{func}' (error: '{err}'); retrying with new connection."
MAX_FAILURE_LOG_MESSAGE = "Max retries reached for '{func}'. Aborting."
DEADLINE_LOG_MESSAGE = (
    "Retry deadline of {deadline:g}s passed for '{func}' (error: '{err}'). Aborting."
)
BUDGET_LOG_MESSAGE = (
    "Retry budget exhausted: '{func}' and other calls sharing it fail without retrying "
    "(error: '{err}'); logged at most once per budget ttl."
)


@dataclass(frozen=True)
class _Policy:
    """Everything the wrapper needs to decide, checked once at decoration."""

    classes: tuple[type[BaseException], ...]
    on: Callable[[BaseException], object] | None
    max_failures: int | None
    initial: float
    ceiling: float
    backoff: float
    jitter: float
    deadline: float | None
    budget: RetryBudget | None
    logger: Logger | None
    retry_log_level: int
    retry_log_message: str
    max_failure_log_level: int
    max_failure_log_message: str
    sleep: Callable[[float], object]
    clock: Callable[[], float]

    def wants(self, err: BaseException) -> bool:
        """Whether ``err`` is a failure worth another attempt (pool errors never are)."""
        if isinstance(err, PoolError):
            return False
        return self.on is None or bool(self.on(err))

    def log(self, level: int, message: str, name: str, err: BaseException, attempt: int) -> None:
        if self.logger is not None:
            text = message.format(func=name, err=err, attempt=attempt, deadline=self.deadline)
            self.logger.log(level, text)

    def pause_or_stop(self, name: str, err: BaseException, failures: int, start: float) -> float:
        """Seconds to sleep before the next attempt, or -1 to give up (having logged why)."""
        if self.max_failures is not None and failures > self.max_failures:
            self.log(self.retry_log_level, self.retry_log_message, name, err, failures)  # 0.2.1
            self.log(self.max_failure_log_level, self.max_failure_log_message, name, err, failures)
            return -1.0
        pause = backoff_delay(
            failures, self.initial, self.ceiling, factor=self.backoff, jitter=self.jitter
        )
        if self.deadline is not None and self.clock() + pause - start > self.deadline:
            self.log(self.max_failure_log_level, DEADLINE_LOG_MESSAGE, name, err, failures)
            return -1.0
        if self.budget is not None and not self._withdraw(name, err, failures):
            return -1.0
        self.log(self.retry_log_level, self.retry_log_message, name, err, failures)
        return pause

    def _withdraw(self, name: str, err: BaseException, failures: int) -> bool:
        assert self.budget is not None
        if self.budget.withdraw():
            return True
        if self.budget.log_due():
            self.log(self.max_failure_log_level, BUDGET_LOG_MESSAGE, name, err, failures)
        return False


@overload
def retry(func: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def retry(
    func: Callable[P, R],
    exc_classes: Iterable[type[BaseException]] | type[BaseException] = ...,
    logger: Logger | None = ...,
    retry_log_level: int = ...,
    retry_log_message: str = ...,
    max_failures: int | None = ...,
    interval: float = ...,
    max_failure_log_level: int = ...,
    max_failure_log_message: str = ...,
    *,
    backoff: float = ...,
    max_interval: float | None = ...,
    jitter: float = ...,
    on: Callable[[BaseException], object] | None = ...,
    deadline: float | None = ...,
    budget: RetryBudget | None = ...,
    sleep: Callable[[float], object] = ...,
    clock: Callable[[], float] = ...,
) -> Callable[P, R]: ...


@overload
def retry(
    func: None = None,
    exc_classes: Iterable[type[BaseException]] | type[BaseException] = ...,
    logger: Logger | None = ...,
    retry_log_level: int = ...,
    retry_log_message: str = ...,
    max_failures: int | None = ...,
    interval: float = ...,
    max_failure_log_level: int = ...,
    max_failure_log_message: str = ...,
    *,
    backoff: float = ...,
    max_interval: float | None = ...,
    jitter: float = ...,
    on: Callable[[BaseException], object] | None = ...,
    deadline: float | None = ...,
    budget: RetryBudget | None = ...,
    sleep: Callable[[float], object] = ...,
    clock: Callable[[], float] = ...,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def retry(
    func: Callable[P, R] | None = None,
    exc_classes: Iterable[type[BaseException]] | type[BaseException] = DEFAULT_EXC_CLASSES,
    logger: Logger | None = None,
    retry_log_level: int = logging.INFO,
    retry_log_message: str = RETRY_LOG_MESSAGE,
    max_failures: int | None = None,
    interval: float = 0,
    max_failure_log_level: int = logging.ERROR,
    max_failure_log_message: str = MAX_FAILURE_LOG_MESSAGE,
    *,
    backoff: float = 1.0,
    max_interval: float | None = None,
    jitter: float = 0.0,
    on: Callable[[BaseException], object] | None = None,
    deadline: float | None = None,
    budget: RetryBudget | None = None,
    sleep: Callable[[float], object] = gevent.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Re-run the decorated function when it raises one of ``exc_classes``.

    Works as ``@retry``, ``@retry(max_failures=3, ...)`` and through ``functools.partial`` (as in
    0.2.1). With ``max_failures=N`` the function runs at most N+1 times, then the last error is
    raised. Between attempts it sleeps ``interval`` seconds, multiplied by ``backoff`` after each
    failure up to ``max_interval``, less a random fraction ``jitter``.

    ``on(err) -> bool`` decides which errors are retried (e.g. ``pool._is_disconnect``); with
    ``on`` and no ``exc_classes`` every ``Exception`` is asked, with both an error must match
    both. ``deadline`` bounds all attempts together: no retry starts later than ``deadline``
    seconds after the first attempt. ``budget`` (a :class:`RetryBudget`, shared by many
    functions) stops retries once they would exceed a fraction of the recent calls; the error
    then propagates and the exhaustion is logged once at ``max_failure_log_level``. The pool's
    own errors (PoolTimeout, PoolUnavailable, PoolExhausted, PoolClosed) are never retried.
    Log messages may use ``{func}``, ``{err}`` and ``{attempt}`` (the failure's number).
    """
    policy = _make_policy(
        exc_classes, on, max_failures, interval, backoff, max_interval, jitter, deadline, budget,
        logger, retry_log_level, retry_log_message, max_failure_log_level,
        max_failure_log_message, sleep, clock,
    )  # fmt: skip

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        if not callable(fn):
            raise TypeError(f"retry decorates a callable, not {fn!r}")
        return _wrap(fn, policy)

    if func is None:
        return decorate
    return decorate(func)


def _wrap(fn: Callable[P, R], policy: _Policy) -> Callable[P, R]:
    name = getattr(fn, "__name__", repr(fn))

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        failures = 0
        start = policy.clock()
        if policy.budget is not None:
            policy.budget.deposit()
        while True:
            try:
                return fn(*args, **kwargs)
            except policy.classes as err:
                if not policy.wants(err):
                    raise
                failures += 1
                pause = policy.pause_or_stop(name, err, failures, start)
                if pause < 0:
                    raise
            policy.sleep(pause)

    return wrapper


def _make_policy(
    exc_classes: Any,
    on: Any,
    max_failures: Any,
    interval: Any,
    backoff: Any,
    max_interval: Any,
    jitter: Any,
    deadline: Any,
    budget: Any,
    logger: Any,
    retry_log_level: Any,
    retry_log_message: Any,
    max_failure_log_level: Any,
    max_failure_log_message: Any,
    sleep: Any,
    clock: Any,
) -> _Policy:
    """Check every argument (a clear TypeError/ValueError naming it) and freeze them."""
    classes = check_exc_classes("exc_classes", exc_classes)
    if on is not None and not callable(on):
        raise TypeError(
            f"on must be a callable taking the exception and returning a bool, not {on!r}"
        )
    if on is not None and exc_classes is DEFAULT_EXC_CLASSES:
        classes = (Exception,)  # the predicate decides over every ordinary exception
    check_int("max_failures", max_failures, 0, optional=True)
    initial = check_seconds("interval", interval, optional=False) or 0.0
    cap = check_seconds("max_interval", max_interval)
    check_seconds("deadline", deadline)
    if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not backoff >= 1:
        raise ValueError(f"backoff must be a number >= 1, got {backoff!r}")
    if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter <= 1:
        raise ValueError(f"jitter must be a number in [0, 1], got {jitter!r}")
    if budget is not None and not isinstance(budget, RetryBudget):
        raise TypeError(f"budget must be a RetryBudget, not {budget!r}")
    for arg, fn in (("sleep", sleep), ("clock", clock)):
        if not callable(fn):
            raise TypeError(f"{arg} must be callable, not {fn!r}")
    _check_logging(
        retry_log_level, retry_log_message, max_failure_log_level, max_failure_log_message
    )
    return _Policy(
        classes, on, max_failures, initial, cap if cap is not None else float("inf"),
        float(backoff), float(jitter), deadline, budget, logger, retry_log_level,
        retry_log_message, max_failure_log_level, max_failure_log_message, sleep, clock,
    )  # fmt: skip


def _check_logging(
    retry_log_level: Any,
    retry_log_message: Any,
    max_failure_log_level: Any,
    max_failure_log_message: Any,
) -> None:
    for arg, level in (
        ("retry_log_level", retry_log_level),
        ("max_failure_log_level", max_failure_log_level),
    ):
        if isinstance(level, bool) or not isinstance(level, int):
            raise TypeError(f"{arg} must be a logging level (an int such as logging.INFO)")
    for arg, value in (
        ("retry_log_message", retry_log_message),
        ("max_failure_log_message", max_failure_log_message),
    ):
        if not isinstance(value, str):
            raise TypeError(f"{arg} must be a str format with {{func}} and {{err}}, not {value!r}")
        try:
            value.format(func="f", err="e", attempt=1, deadline=1.0)
        except (ValueError, KeyError, IndexError) as e:
            raise ValueError(f"{arg} is not a valid format string ({e}): {value!r}") from None
