"""Bandwidth limits: rate strings ("2MB/s") and a thread-safe token bucket.

One :class:`TokenBucket` per worker agent is shared by all its transfers, so ``--max-bandwidth``
caps the agent's total bulk download rate, whatever the number of slots.
The server's site-wide pacer (``server/transfer_pacer.py``) uses the same bucket, one per
transfer: :meth:`TokenBucket.reserve` computes the wait and each caller sleeps its own way
(threads with ``time.sleep``, the server's coroutines with ``asyncio.sleep``).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]+)?\s*(?:/\s*s(?:ec)?)?\s*$")

#: Units in bytes (SI prefixes are powers of 1000, IEC ones of 1024; bits are 1/8 byte).
UNITS: dict[str, float] = {
    "b": 1, "byte": 1, "bytes": 1,
    "kb": 1e3, "mb": 1e6, "gb": 1e9,
    "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3,
    "bit": 1 / 8, "kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8,
    "bps": 1 / 8, "kbps": 1e3 / 8, "mbps": 1e6 / 8, "gbps": 1e9 / 8,
}

#: Units ending in a lowercase "b" that some read as bits and others as bytes: what to write.
_AMBIGUOUS = {
    "b": "B/s for bytes or bit/s for bits", "kb": "kB/s for bytes or kbit/s for bits",
    "mb": "MB/s for bytes or Mbit/s for bits", "gb": "GB/s for bytes or Gbit/s for bits",
    "kib": "KiB/s", "mib": "MiB/s", "gib": "GiB/s",
}


def parse_rate(text: str) -> float:
    """Parse a transfer rate into bytes per second.

    Accepts a number and a unit, "/s" optional: ``B``, ``kB``/``KB``, ``MB``, ``GB`` (SI:
    1000), ``KiB``, ``MiB``, ``GiB`` (1024), and bits ``bit``, ``kbit``, ``Mbit``, ``Gbit``
    (also ``kbps``, ``Mbps``; but ``KBps``, ``MBps`` are bytes). A bare number is bytes per
    second. Examples: ``"2MB/s"`` -> 2_000_000.0, ``"512KiB"`` -> 524288.0, ``"100Mbit/s"`` ->
    12_500_000.0, ``"2MBps"`` -> 2_000_000.0.

    Raises:
        ValueError: not of that form, an unknown unit, or not a positive rate (names the text).
    """
    if not isinstance(text, str):
        raise ValueError(f"bandwidth {text!r} is not a string like '2MB/s'")
    m = _RATE_RE.match(text)
    if not m:
        raise ValueError(f"bad bandwidth {text!r}: expected a number and a unit, e.g. '2MB/s', "
                         "'512KiB/s' or '10Mbit/s'")
    number, unit = float(m.group(1)), (m.group(2) or "B")
    name = unit.lower()
    if name.endswith("bps") and unit[-3] == "B":  # "MBps" is megabytes, "Mbps" megabits
        name = name[:-2]
    factor = UNITS.get(name)
    if factor is None:
        raise ValueError(f"bad bandwidth {text!r}: unknown unit {unit!r} (use B, kB, MB, GB, "
                         "KiB, MiB, GiB, kbit, Mbit or Gbit)")
    if unit[-1] == "b" and name in _AMBIGUOUS:
        # "Mb" is megabits to some and megabytes to others: refuse rather than guess.
        raise ValueError(f"ambiguous bandwidth {text!r}: write {_AMBIGUOUS[name]}")
    rate = number * factor
    if rate <= 0:
        raise ValueError(f"bad bandwidth {text!r}: must be more than 0")
    return rate


class TokenBucket:
    """A token bucket (RFC 2697's single-rate model): tokens (bytes) accrue at ``rate`` per
    second up to ``burst``; :meth:`consume` takes ``n`` tokens, sleeping until they are there.

    Thread-safe and fair enough for a few threads: a caller reserves its tokens under the lock
    (the balance may go negative) and then sleeps outside it, so concurrent callers queue
    behind each other's debt and the total rate stays at ``rate``.

    Args:
        rate: bytes per second (> 0).
        burst: most tokens saved up while idle, bytes; default a quarter second of ``rate``
            (at least 64 KiB), so a cap holds over short intervals too.
        clock, sleep: injectable for tests (default ``time.monotonic`` / ``time.sleep``).
    """

    def __init__(self, rate: float, burst: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep
        self._burst_given = burst
        self.rate = 0.0
        self.burst = 0.0
        self.set_rate(rate, burst)
        self._tokens = self.burst
        self._stamp = clock()

    def set_rate(self, rate: float, burst: float | None = None) -> None:
        """Change the rate (bytes/s, > 0) and optionally the burst (bytes); takes effect for
        the next :meth:`consume`. Raises ValueError for a rate or burst <= 0."""
        if not rate > 0:
            raise ValueError(f"rate must be > 0 bytes/s, got {rate!r}")
        if burst is not None and not burst > 0:
            raise ValueError(f"burst must be > 0 bytes, got {burst!r}")
        with self._lock:
            if hasattr(self, "_stamp"):
                self._refill()
            self.rate = float(rate)
            if burst is not None:
                self._burst_given = burst
            self.burst = float(self._burst_given if self._burst_given is not None
                               else max(64 * 1024, rate / 4))
            if hasattr(self, "_tokens"):
                self._tokens = min(self._tokens, self.burst)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def reserve(self, n: int) -> float:
        """Take ``n`` tokens now (possibly into debt); return the seconds to wait before the
        bytes may go (0.0 if they were there)."""
        if n <= 0:
            return 0.0
        with self._lock:
            self._refill()
            self._tokens -= n
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def consume(self, n: int) -> None:
        """Take ``n`` bytes' worth of tokens, blocking (sleeping) until the rate allows it."""
        wait = self.reserve(n)
        if wait > 0:
            self._sleep(wait)
