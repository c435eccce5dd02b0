"""Exponential backoff with jitter: a pure function shared by the pool's reconnects and @retry."""

from __future__ import annotations

import random
from collections.abc import Callable


def delay(
    attempt: int,
    initial: float,
    cap: float,
    *,
    factor: float = 2.0,
    jitter: float = 0.5,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    The base grows as ``initial * factor ** (attempt - 1)`` up to ``cap``; ``jitter`` (0 to 1) is
    the fraction of it that is randomised downwards, so that many clients do not retry in step.
    """
    if attempt < 1 or initial <= 0:
        return 0.0
    exponent = min(attempt - 1, 64)  # beyond this the cap always wins; avoids float overflow
    base = min(cap, initial * factor**exponent)
    return base * (1.0 - jitter * rand())
