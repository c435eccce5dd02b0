"""@retry: the forms it is used in, its limits, its logging, its waits."""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any

import pytest

from geventconnpool import PoolTimeout, retry
from geventconnpool.retry import MAX_FAILURE_LOG_MESSAGE, RETRY_LOG_MESSAGE


class Flaky:
    """Fails ``failures`` times with ``error``, then returns "ok"."""

    def __init__(self, failures: int, error: BaseException | None = None) -> None:
        self.failures = failures
        self.error = error or ConnectionResetError("reset")
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


def test_bare_decorator_retries_until_success() -> None:
    flaky = Flaky(3)
    assert retry(flaky)() == "ok"
    assert flaky.calls == 4


def test_keyword_form_and_partial_form() -> None:
    flaky = Flaky(1)
    assert retry(max_failures=2)(flaky)() == "ok"
    partial_flaky = Flaky(1)
    assert functools.partial(retry, max_failures=2, interval=0)(partial_flaky)() == "ok"
    assert flaky.calls == partial_flaky.calls == 2


@pytest.mark.parametrize("max_failures", [0, 1, 4])
def test_max_failures_n_runs_at_most_n_plus_1_times(max_failures: int) -> None:
    flaky = Flaky(100)
    with pytest.raises(ConnectionResetError):
        retry(max_failures=max_failures)(flaky)()
    assert flaky.calls == max_failures + 1


def test_only_exc_classes_are_retried() -> None:
    flaky = Flaky(1, KeyError("not a network error"))
    with pytest.raises(KeyError):
        retry(flaky)()
    assert flaky.calls == 1
    custom = Flaky(2, KeyError("treated as broken"))
    assert retry(exc_classes=(KeyError,))(custom)() == "ok"


def test_pool_errors_are_never_retried() -> None:
    flaky = Flaky(5, PoolTimeout("no connection"))  # a TimeoutError, hence an OSError
    with pytest.raises(PoolTimeout):
        retry(flaky)()
    assert flaky.calls == 1


def test_wrapper_keeps_name_doc_wrapped_and_signature() -> None:
    def fetch(key: str, *, default: int = 0) -> str:
        """Fetch a key."""
        return key

    wrapped = retry(fetch)
    assert wrapped.__name__ == "fetch" and wrapped.__doc__ == "Fetch a key."
    assert wrapped.__wrapped__ is fetch  # type: ignore[attr-defined]
    assert inspect.signature(wrapped) == inspect.signature(fetch)


def test_log_messages_levels_and_placeholders(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("retry-test")

    def send() -> None:
        raise ConnectionResetError("peer reset")

    decorated = retry(
        send,
        logger=log,
        max_failures=1,
        retry_log_level=logging.WARNING,
        retry_log_message="retry {func}: {err}",
        max_failure_log_level=logging.CRITICAL,
        max_failure_log_message="gave up on {func} after {err}",
    )
    with caplog.at_level(logging.DEBUG, logger="retry-test"), pytest.raises(ConnectionResetError):
        decorated()
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert levels == [
        (logging.WARNING, "retry send: peer reset"),
        (logging.WARNING, "retry send: peer reset"),
        (logging.CRITICAL, "gave up on send after peer reset"),
    ]


def test_default_messages_are_0_2_1s() -> None:
    assert RETRY_LOG_MESSAGE.startswith("Connection broken in '{func}' (error: '{err}')")
    assert MAX_FAILURE_LOG_MESSAGE == "Max retries reached for '{func}'. Aborting."


def test_interval_backoff_and_cap_are_slept() -> None:
    slept: list[float] = []
    flaky = Flaky(5)
    decorated = retry(flaky, interval=0.1, backoff=2, max_interval=0.5, sleep=slept.append)
    assert decorated() == "ok"
    assert slept == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])


def test_jitter_shortens_waits_within_bounds() -> None:
    slept: list[float] = []
    retry(Flaky(20), interval=0.1, jitter=0.5, sleep=slept.append)()
    assert all(0.05 <= s <= 0.1 for s in slept) and len(set(slept)) > 1


def test_zero_interval_still_yields_to_other_greenlets() -> None:
    slept: list[float] = []
    retry(Flaky(2), sleep=slept.append)()
    assert slept == [0.0, 0.0]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_failures": -1}, "max_failures"),
        ({"max_failures": 1.5}, "max_failures"),
        ({"interval": -1}, "interval"),
        ({"interval": float("nan")}, "interval"),
        ({"backoff": 0.5}, "backoff"),
        ({"jitter": 2}, "jitter"),
        ({"exc_classes": ("x",)}, "exc_classes"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises((ValueError, TypeError), match=name):
        retry(**kwargs)
