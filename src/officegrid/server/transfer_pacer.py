"""Site-wide bulk bandwidth cap (``ServerSettings.transfer_max_bandwidth``).

Every bulk download holds a transfer slot (a row in the store, see ``store/pacing.py``) while
it is sent, in whichever server process serves it. Each paced response sends at

    cap / (slots held site-wide)

re-reading that count from the store at most once a second per process (cached), so the sum
over all responses, in all server processes, stays under the cap without the processes talking
to each other.

It is an approximation, erring low except for a short overshoot:
- a transfer that starts is counted by the others only when they next re-read the count (up to
  about 1 s): during that second the total may exceed the cap by the newcomers' share;
- each transfer may send a quarter second of its share at once when it starts (its bucket's
  burst);
- a transfer slower than its share (a slow client) leaves its unused share idle (nobody else
  takes it), so the total may stay below the cap;
- expired slots of crashed processes are not counted (``pacing.held`` ignores them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

from officegrid.sync.bandwidth import TokenBucket

log = logging.getLogger("officegrid.server.transfer_pacer")

PIECE = 64 * 1024  # bytes sent per paced step
REFRESH = 1.0  # seconds a site-wide slot count is reused


class SitePacer:
    """The per-process view of the site-wide share of bandwidth.

    Args:
        cap: bytes per second for all bulk downloads of the site together.
        count_held: ``async () -> int``, slots held now, site-wide (a store read).
        clock: monotonic clock (seconds), injectable for tests.
    """

    def __init__(self, cap: float, count_held: Callable[[], Awaitable[int]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cap = cap
        self._count_held = count_held
        self._clock = clock
        self._held = 1
        self._stamp = float("-inf")
        self._lock = asyncio.Lock()

    async def share(self) -> float:
        """Bytes per second one transfer may use now: cap / slots held (count <= 1 s old).

        If the store cannot be read, the last count is kept (and read again a second later):
        a store hiccup must not cut off every transfer under way."""
        if self._clock() - self._stamp >= REFRESH:
            async with self._lock:
                if self._clock() - self._stamp >= REFRESH:  # another task may have refreshed
                    try:
                        self._held = max(1, int(await self._count_held()))
                    except Exception as exc:  # noqa: BLE001 - any store error: keep the count
                        log.warning("transfer pacing: cannot count the slots held (%r); "
                                    "keeping %d", exc, self._held)
                    self._stamp = self._clock()
        return self.cap / self._held

    async def pace(self, pieces: Iterable[bytes] | AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Yield ``pieces`` (bytes) no faster than :meth:`share` allows.

        One :class:`~officegrid.sync.bandwidth.TokenBucket` per transfer, whose rate follows
        the share (burst a quarter second of it, at least 64 KiB): the bucket says how long to
        wait, this coroutine waits without blocking the event loop."""
        source = pieces if isinstance(pieces, AsyncIterator) else _aiter(pieces)
        bucket: TokenBucket | None = None
        async for piece in source:
            rate = await self.share()
            if bucket is None:
                bucket = TokenBucket(rate, clock=self._clock)
            elif rate != bucket.rate:
                bucket.set_rate(rate)
            wait = bucket.reserve(len(piece))
            if wait > 0:
                await asyncio.sleep(wait)
            yield piece


async def _aiter(pieces: Iterable[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


def pieces_of(data: bytes, size: int = PIECE) -> Iterable[bytes]:
    """``data`` cut into pieces of ``size`` bytes, one copied at a time."""
    view = memoryview(data)
    return (bytes(view[i:i + size]) for i in range(0, len(view), size))
