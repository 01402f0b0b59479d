"""The retry schedule: exponential backoff with jitter, capped, given up after a maximum age."""

from __future__ import annotations

import random
from collections.abc import Callable


def retry_delay_s(attempts: int, base_s: float, max_s: float, rand: Callable[[], float] = random.random) -> float:
    """The wait after the ``attempts``-th failed attempt (1, 2, ...): ``base_s * 2**(attempts-1)``
    capped at ``max_s``, then jittered to between half of that and all of it."""
    ceiling = min(max_s, base_s * 2.0 ** min(max(attempts, 1) - 1, 60))
    return ceiling / 2 + rand() * ceiling / 2
