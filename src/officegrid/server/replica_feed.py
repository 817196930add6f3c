"""Serving change-log batches to many replicas cheaply: long polls, one answer for many
replicas, and replica positions carried by the log requests.

- **Long poll.** A replica at the head asks with ``wait``: the request is held (on the event
  loop, no thread) until the master has entries after its position or ``wait`` seconds pass.
  Waiters look at the head this process saw at its last poll of the master (no I/O); the first
  waiter whose turn comes after ``poll_interval`` polls (seals) for all. Each waiter re-checks on
  its own timer (:data:`RECHECK`), so a fleet's requests spread over that time instead of all
  arriving in the same millisecond (the fan-out jitter of issue 4 item 6).
- **One answer for many.** A batch answer (compressed bytes) is cached by ``(source, epoch,
  after, max)`` and the head it was read at: replicas at the same position (a fleet following
  the head) cost one log read and one compression, like a binlog dump thread serving many
  replicas. Concurrent misses of the same key wait for the one computation. Sealed entries never
  change; a new epoch or a purge changes the head part of the key, so a stale answer is never
  served for another history (and the replica's chain check would refuse one anyway).
- **Positions.** A log request names the replica and its position (``replica``): the server
  keeps the latest per replica in memory and writes them in one store transaction at most
  every :data:`REPORT_EVERY` seconds (and before ``data status`` reads them), instead of one
  write transaction per applied batch per replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

import zstandard

from officegrid.server.context import ServerContext
from officegrid.server.store import replicas as replicas_q
from officegrid.sync.replication import codec
from officegrid.sync.replication.service import MasterService

log = logging.getLogger("officegrid.server.replica_feed")

MAX_WAIT = 30.0  # longest long poll, seconds
# A waiting replica looks for news this often (or every poll interval, if longer). Each look
# that finds some ends its request, and every request costs about a millisecond of CPU on
# each side (HTTP): half a second keeps a fleet following a busy master to about two requests
# per replica per second, at up to half a second of added lag.
RECHECK = 0.5
REPORT_EVERY = 1.0  # seconds between writes of reported positions
# A replica still at the same position is written again this often, so `data status` can tell
# a live follower waiting at the head (seen under a minute ago) from one that went away.
SEEN_EVERY = 30.0
WARN_EVERY = 60.0  # seconds between warnings that positions could not be written
CACHE_BYTES = 32 << 20  # cached compressed answers, total


def _compress(obj: Any) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(codec.dumps(obj).encode())


class ReplicaFeed:
    """Per-server state of the log route (see the module docstring)."""

    def __init__(self) -> None:
        self._cache: OrderedDict[tuple[Any, ...], tuple[bytes, int]] = OrderedDict()
        self._cache_bytes = 0
        self._inflight: dict[tuple[Any, ...], asyncio.Future[tuple[bytes, int]]] = {}
        self._pending: dict[tuple[str, str], tuple[str, int]] = {}
        # (source, replica) -> (epoch, pos, monotonic time written)
        self._written: dict[tuple[str, str], tuple[str, int, float]] = {}
        self._last_write = 0.0
        self._writing: asyncio.Lock | None = None
        self._last_warning = -WARN_EVERY
        self.write_failures = 0  # writes of positions that failed (kept pending), in total
        self.hits = 0
        self.misses = 0

    # ------------------------------------------------------------------ positions

    def note(self, source: str, replica: str, epoch: str, pos: int) -> None:
        """Remember that ``replica`` of ``source`` is at ``(epoch, pos)`` (written later)."""
        k = (source, replica)
        last = self._written.get(k)
        if (last is None or last[:2] != (epoch, pos)
                or time.monotonic() - last[2] >= SEEN_EVERY):
            self._pending[k] = (epoch, pos)

    async def write_positions(self, ctx: ServerContext, force: bool = False,
                              quiet: bool = False) -> None:
        """Write the noted positions in one transaction (at most every :data:`REPORT_EVERY`
        seconds unless ``force``). On failure they stay pending for the next write.

        ``quiet``: a failure (e.g. the store busy) is logged at WARNING (at most every
        :data:`WARN_EVERY` seconds) instead of raised: a log request that carries a position
        must not fail because the position could not be recorded right now.

        Raises:
            Exception: the store's error, unless ``quiet``.
        """
        if self._writing is None:
            self._writing = asyncio.Lock()
        if not self._pending or (not force and time.monotonic() - self._last_write < REPORT_EVERY):
            return
        if self._writing.locked() and not force:
            return  # another request is writing them
        async with self._writing:
            rows, self._pending = self._pending, {}
            if not rows:
                return
            self._last_write = time.monotonic()
            try:
                await ctx.tx(replicas_q.report_many,
                             [(s, r, e, p) for (s, r), (e, p) in rows.items()], ctx.now())
            except BaseException as exc:
                for k, v in rows.items():  # keep them for the next write
                    self._pending.setdefault(k, v)
                if not quiet or not isinstance(exc, Exception):
                    raise
                self.write_failures += 1
                now = time.monotonic()
                if now - self._last_warning >= WARN_EVERY:
                    self._last_warning = now
                    log.warning("replica positions not recorded (%d kept for the next try; "
                                "%d failed writes so far): %s", len(self._pending),
                                self.write_failures, exc)
                return
            self._written.update({k: (*v, self._last_write) for k, v in rows.items()})

    # ------------------------------------------------------------------ batches

    async def _answer(self, ctx: ServerContext, svc: MasterService, epoch: str, after: int,
                      max_entries: int) -> tuple[bytes, int]:
        """The compressed batch answer and its number of entries (cached).

        Raises:
            NeedsRepair, DataSourceError, FileNotFoundError: as :meth:`MasterService.log`.
        """
        h = svc.known_head()
        key = (str(svc.path), epoch, after, max_entries) + (
            (h.epoch, h.pos, h.base_pos) if h is not None else (None,))
        got = self._cache.get(key) if h is not None else None
        if got is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            return got
        fut = self._inflight.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            def compute() -> tuple[bytes, int]:
                b = svc.log(epoch, after, max_entries)
                return _compress(b), len(b["entries"])

            got = await ctx.run(compute)
            fut.set_result(got)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters get it re-raised; no "never retrieved" warning
            raise
        finally:
            del self._inflight[key]
        self.misses += 1
        if h is not None:
            self._cache[key] = got
            self._cache_bytes += len(got[0])
            while self._cache_bytes > CACHE_BYTES and self._cache:
                _, (old, _) = self._cache.popitem(last=False)
                self._cache_bytes -= len(old)
        return got

    async def log(self, ctx: ServerContext, svc: MasterService, epoch: str, after: int,
                  max_entries: int, wait: float = 0.0) -> bytes:
        """The compressed answer of ``GET /data/{name}/log``; with ``wait`` > 0 held until there
        are entries after ``after`` or ``wait`` seconds passed.

        Raises:
            NeedsRepair, DataSourceError, FileNotFoundError: as :meth:`MasterService.log`.
        """
        deadline = time.monotonic() + min(max(wait, 0.0), MAX_WAIT)
        recheck = max(svc.poll_interval, RECHECK)
        while True:
            if svc.known_head() is None or svc.poll_due():
                await ctx.run(svc.poll)  # one waiter polls (seals) for all: rate-limited
            h = svc.known_head()
            at_head = h is not None and h.epoch == epoch and h.pos == after
            if not at_head:
                body, n = await self._answer(ctx, svc, epoch, after, max_entries)
                if n:
                    return body
            left = deadline - time.monotonic()
            stopping = ctx.shutting_down is not None and ctx.shutting_down()
            if left <= 0 or stopping:
                return (await self._answer(ctx, svc, epoch, after, max_entries))[0]
            await asyncio.sleep(min(recheck, left))


def feed_of(ctx: ServerContext) -> ReplicaFeed:
    """The server's :class:`ReplicaFeed` (made on first use)."""
    feed = getattr(ctx, "replica_feed", None)
    if feed is None:
        feed = ReplicaFeed()
        ctx.replica_feed = feed  # type: ignore[attr-defined] - one per server context
    return feed
