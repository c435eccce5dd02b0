"""``@retry``: re-run a network function with a fresh connection when its connection breaks."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeVar, overload

import gevent

from ._backoff import delay as backoff_delay
from ._options import check_exc_classes, check_int, check_seconds
from .errors import DEFAULT_EXC_CLASSES, PoolError

__all__ = ["MAX_FAILURE_LOG_MESSAGE", "RETRY_LOG_MESSAGE", "retry"]

P = ParamSpec("P")
R = TypeVar("R")

RETRY_LOG_MESSAGE = "Connection broken in '{func}' (error: '{err}'); retrying with new connection."
MAX_FAILURE_LOG_MESSAGE = "Max retries reached for '{func}'. Aborting."


@overload
def retry(func: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def retry(
    func: Callable[P, R],
    exc_classes: Iterable[type[BaseException]] | type[BaseException] = ...,
    logger: logging.Logger | logging.LoggerAdapter[Any] | None = ...,
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
    sleep: Callable[[float], object] = ...,
) -> Callable[P, R]: ...


@overload
def retry(
    func: None = None,
    exc_classes: Iterable[type[BaseException]] | type[BaseException] = ...,
    logger: logging.Logger | logging.LoggerAdapter[Any] | None = ...,
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
    sleep: Callable[[float], object] = ...,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def retry(
    func: Callable[P, R] | None = None,
    exc_classes: Iterable[type[BaseException]] | type[BaseException] = DEFAULT_EXC_CLASSES,
    logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
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
    sleep: Callable[[float], object] = gevent.sleep,
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Re-run the decorated function when it raises one of ``exc_classes``.

    Works as ``@retry``, ``@retry(max_failures=3, ...)`` and through ``functools.partial`` (as in
    0.2.1). With ``max_failures=N`` the function runs at most N+1 times, then the last error is
    raised. Between attempts it sleeps ``interval`` seconds, multiplied by ``backoff`` after each
    failure up to ``max_interval``, less a random fraction ``jitter``. The pool's own errors
    (PoolTimeout, PoolClosed...) are never retried: waiting again would only double the wait.
    """
    classes = check_exc_classes("exc_classes", exc_classes)
    check_int("max_failures", max_failures, 0, optional=True)
    initial = check_seconds("interval", interval, optional=False) or 0.0
    cap = check_seconds("max_interval", max_interval)
    if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not backoff >= 1:
        raise ValueError(f"backoff must be a number >= 1, got {backoff!r}")
    if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter <= 1:
        raise ValueError(f"jitter must be a number in [0, 1], got {jitter!r}")
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
            value.format(func="f", err="e")
        except (ValueError, KeyError, IndexError) as e:
            raise ValueError(f"{arg} is not a valid format string ({e}): {value!r}") from None
    ceiling = cap if cap is not None else float("inf")

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        if not callable(fn):
            raise TypeError(f"retry decorates a callable, not {fn!r}")
        name = getattr(fn, "__name__", repr(fn))

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            failures = 0
            while True:
                try:
                    return fn(*args, **kwargs)
                except classes as err:
                    if isinstance(err, PoolError):
                        raise
                    failures += 1
                    if logger is not None:
                        logger.log(retry_log_level, retry_log_message.format(func=name, err=err))
                    if max_failures is not None and failures > max_failures:
                        if logger is not None:
                            text = max_failure_log_message.format(func=name, err=err)
                            logger.log(max_failure_log_level, text)
                        raise
                sleep(backoff_delay(failures, initial, ceiling, factor=backoff, jitter=jitter))

        return wrapper

    if func is None:
        return decorate
    return decorate(func)
