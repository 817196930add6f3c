"""The ASGI app factory of the job control server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import anyio
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from officegrid import __version__, protocol
from officegrid.cas import ContentStore
from officegrid.config import ServerSettings
from officegrid.server.auth import TokenCache
from officegrid.server.context import ServerContext
from officegrid.server.reaper import run_reaper
from officegrid.server.routers import blobs, jobs, releases, tokens, workers
from officegrid.server.routers import data as data_router
from officegrid.server.store import Database, sqlite_url
from officegrid.server.store import units as units_q
from officegrid.server.store.common import StoreError

log = logging.getLogger("officegrid.server")

STATUS = {"not_found": 404, "conflict": 409, "identity_in_use": 409, "invalid": 422,
          "forbidden": 403}


def open_context(settings: ServerSettings) -> ServerContext:
    """Open the store (applying migrations) and the blob directory for ``settings``."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db or sqlite_url(settings.data_dir), pool_size=settings.threads)
    db.migrate()
    return ServerContext(settings=settings, db=db, blobs=ContentStore(settings.data_dir / "blobs"),
                         limiter=anyio.CapacityLimiter(settings.threads))


def create_app(settings: ServerSettings, ctx: ServerContext | None = None) -> FastAPI:
    """Build the FastAPI app. The store is opened and migrated here unless ``ctx`` is given."""
    ctx = ctx or open_context(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx.work_event = asyncio.Event()
        # Leases granted before a restart get time to be renewed before the reaper judges them.
        grace = settings.restart_grace if settings.restart_grace is not None \
            else settings.lease_seconds
        n = await ctx.tx(units_q.extend_live_leases, ctx.now(), grace)
        if n:
            log.info("gave %d live leases %.0fs to renew after start", n, grace)
        stop = asyncio.Event()
        reaper = asyncio.create_task(run_reaper(ctx, stop))
        try:
            yield
        finally:
            stop.set()
            await reaper
            ctx.db.dispose()

    app = FastAPI(title="officegrid job control server", version=__version__,
                  lifespan=lifespan, openapi_url=f"{protocol.API}/openapi.json",
                  docs_url=f"{protocol.API}/docs", redoc_url=None)
    app.state.ctx = ctx
    ctx.token_cache = TokenCache(settings.auth_cache_seconds)
    for r in (tokens.router, workers.router, releases.router, jobs.router, blobs.router):
        app.include_router(r, prefix=protocol.API)
    app.include_router(data_router.router, prefix=protocol.API)

    @app.get(f"{protocol.API}/health")
    async def health() -> dict:
        return {"ok": True, "version": __version__, "time": ctx.now()}

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse(status_code=STATUS.get(exc.code, 400),
                            content={"error": {"code": exc.code, "message": str(exc)}})

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, dict) else {
            "code": "error", "message": str(exc.detail)}
        return JSONResponse(status_code=exc.status_code, content={"error": detail},
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return JSONResponse(status_code=422, content={"error": {
            "code": protocol.E_INVALID, "message": f"{where}: {first.get('msg')}"}})

    return app
