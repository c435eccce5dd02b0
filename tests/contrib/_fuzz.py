"""Hypothesis settings of the contrib fuzz tests: CI-sized by default, more with a profile.

``HYPOTHESIS_PROFILE=slow python -m pytest tests/contrib/test_fuzz_parsers.py`` runs twenty
times the examples (the ``slow`` profile is registered here, for the tests that use
:func:`fuzz`); the default keeps every fuzz test within a few seconds on a loaded CI machine.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("slow", max_examples=2000, deadline=None)

#: True under ``HYPOTHESIS_PROFILE=slow``.
SLOW = os.environ.get("HYPOTHESIS_PROFILE") == "slow"
if SLOW:
    settings.load_profile("slow")

#: The pytest timeout of a fuzz test: the suite's 60 s, or 15 minutes under the slow profile.
fuzz_timeout = pytest.mark.timeout(900 if SLOW else 60)


def fuzz(examples: int) -> settings:
    """``examples`` examples (20x under the slow profile), no per-example deadline (the tests
    bound time themselves), function-scoped fixtures allowed (they are per-test servers)."""
    return settings(
        max_examples=examples * 20 if SLOW else examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        derandomize=False,
    )
