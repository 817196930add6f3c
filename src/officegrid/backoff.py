"""Capped exponential backoff with full jitter, kept per server (not per item).

"Full jitter" (AWS Architecture Blog, "Exponential Backoff And Jitter", 2015): sleep a uniform
random time in ``[0, min(cap, base * 2**n)]``. Keeping one state per server means a fleet whose
server is down slows down as a whole instead of retrying item by item (BOINC issue #909).
"""

from __future__ import annotations

import random
import threading


class Backoff:
    """Shared retry state for one server.

    Args:
        base: first delay ceiling, seconds.
        cap: largest delay ceiling, seconds.
    """

    def __init__(self, base: float = 1.0, cap: float = 60.0, rng: random.Random | None = None):
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = rng or random.Random()
        self._lock = threading.Lock()

    def next_delay(self) -> float:
        """Count a failure and return how long to wait before the next try (seconds)."""
        with self._lock:
            ceiling = min(self.cap, self.base * (2 ** min(self.failures, 30)))
            self.failures += 1
            return self._rng.uniform(0, ceiling)

    def success(self) -> None:
        """Reset after a successful exchange."""
        with self._lock:
            self.failures = 0

    def jitter(self, seconds: float, spread: float = 0.2) -> float:
        """``seconds`` plus up to ``spread`` of it at random: for obeying retry-after."""
        return seconds + self._rng.uniform(0, seconds * spread)
