"""The reaper: expires leases on a short interval, detects clock jumps, collects blobs.

It also re-checks running jobs that wait for environments (``units_q.review_env_jobs``): a job
pauses once no live worker is left that has not reported its release's environment broken
(workers stop without reporting anything, so the reports alone cannot tell), and a job that
waits says why in its reason.

Only the server's clock judges leases. When the wall clock jumps (NTP step, VM resume), the
reaper notices the wall clock moved differently from the monotonic clock and gives live leases
a grace period, instead of declaring every worker lost at once.
"""

from __future__ import annotations

import asyncio
import logging
import time

from officegrid.server.context import ServerContext
from officegrid.server.store import blobrefs
from officegrid.server.store import releases as releases_q
from officegrid.server.store import units as units_q

log = logging.getLogger("officegrid.server.reaper")

CLOCK_JUMP = 5.0  # seconds of disagreement between wall and monotonic clocks


async def run_reaper(ctx: ServerContext, stop: asyncio.Event) -> None:
    """Loop until ``stop`` is set: expire leases every ``reaper_interval`` seconds."""
    s = ctx.settings
    offset = time.time() - time.monotonic()
    last_gc = time.monotonic()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=s.reaper_interval)
            break
        except TimeoutError:
            pass
        try:
            new_offset = time.time() - time.monotonic()
            if abs(new_offset - offset) > CLOCK_JUMP:
                grace = s.restart_grace or s.lease_seconds
                n = await ctx.tx(units_q.extend_live_leases, ctx.now(), grace)
                log.warning("clock jumped by %.1fs: %d live leases get %.0fs grace",
                            new_offset - offset, n, grace)
            offset = new_offset
            n = await ctx.tx(units_q.expire, ctx.now())
            if n:
                log.info("expired %d leases", n)
                ctx.wake_workers()
            await ctx.tx(units_q.finalize_open_jobs, ctx.now())
            paused = await ctx.tx(units_q.review_env_jobs, ctx.now(), s.lease_seconds)
            if paused:
                log.warning("paused jobs %s: their environment is broken on every live worker",
                            paused)
            if time.monotonic() - last_gc > s.blob_gc_interval:
                last_gc = time.monotonic()
                removed = await ctx.run(collect_blobs, ctx)
                if removed:
                    log.info("removed %d unreferenced blobs", removed)
        except Exception:  # keep reaping whatever one round did
            log.exception("reaper round failed")


def collect_blobs(ctx: ServerContext) -> int:
    """Delete blobs no unit, attempt or release references and older than the grace period.

    The grace period protects uploads in progress (a job's inputs are uploaded before the job
    that references them is created). Returns the number removed.
    """
    s = ctx.settings
    cutoff = time.time() - s.blob_gc_grace
    with ctx.db.tx() as conn:
        pruned = releases_q.prune(conn, s.keep_releases, time.time(), s.blob_gc_grace)
    if pruned:
        log.info("retention pruned %d releases", len(pruned))
    on_disk = list(ctx.blobs)
    with ctx.db.read() as conn:
        keep = blobrefs.referenced(conn)
    removed = 0
    for digest in on_disk:
        if digest in keep:
            continue
        path = ctx.blobs.path(digest)
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    ctx.blobs.sweep_temp(min_age=ctx.settings.blob_gc_grace)
    return removed
