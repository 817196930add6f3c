"""The server's shared state, handed to routers through ``request.app.state.ctx``."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio

from officegrid.cas import ContentStore
from officegrid.config import ServerSettings
from officegrid.server.store import Database
from officegrid.server.store.units import Policy

T = TypeVar("T")


@dataclass
class ServerContext:
    """Settings, store, blob store and the bounded thread pool for blocking calls."""

    settings: ServerSettings
    db: Database
    blobs: ContentStore
    limiter: anyio.CapacityLimiter
    work_event: asyncio.Event = field(default_factory=asyncio.Event)
    token_cache: Any = None  # auth.TokenCache, set by the app factory
    shutting_down: Any = None  # () -> bool, set by the server runner: long polls end early
    transfer_peak: int = 0  # most slots seen held at once by this process (for operators/tests)
    transfer_pacer: Any = None  # server.transfer_pacer.SitePacer when transfer_max_bandwidth

    @property
    def policy(self) -> Policy:
        s = self.settings
        return Policy(lease_seconds=s.lease_seconds, import_pause_after=s.import_pause_after,
                      unhealthy_after=s.unhealthy_after, sideline_seconds=s.sideline_seconds,
                      speculative_after=s.speculative_after)

    @staticmethod
    def now() -> float:
        """The server clock: the only clock that judges leases."""
        return time.time()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking function in the bounded pool (never on the event loop)."""
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs),
                                              limiter=self.limiter)

    async def tx(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(conn, *args, **kwargs)`` in one write transaction, in the pool."""
        def call() -> T:
            with self.db.tx() as conn:
                return fn(conn, *args, **kwargs)
        return await self.run(call)

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(conn, ...)`` in one read-only transaction, in the pool."""
        def call() -> T:
            with self.db.read() as conn:
                return fn(conn, *args, **kwargs)
        return await self.run(call)

    def wake_workers(self) -> None:
        """Tell long-polling lease requests in this process that work may be available."""
        self.work_event.set()


