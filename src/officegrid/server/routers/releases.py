"""Releases and channels. Publishing needs the admin token; workers may read."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request

from officegrid import protocol as p
from officegrid.server.auth import admin, admin_or_worker, ctx_of
from officegrid.server.release_check import ReleaseIncomplete, release_blobs
from officegrid.server.store import releases as releases_q

router = APIRouter()


@router.post("/releases", response_model=p.ReleaseInfo, dependencies=[Depends(admin)])
async def create_release(body: p.ReleaseCreate, request: Request) -> p.ReleaseInfo:
    """Record a release whose manifests and files are uploaded; optionally move a channel.

    The server walks the whole tree and refuses (409) a release with any blob missing, and
    (422) one with a malformed or unsafe manifest.
    """
    ctx = ctx_of(request)
    try:
        blobs = await ctx.run(release_blobs, ctx.blobs, body.id)
    except ReleaseIncomplete as exc:
        raise HTTPException(409, detail={"code": p.E_CONFLICT, "message": str(exc)}) from None
    except ValueError as exc:
        raise HTTPException(422, detail={"code": p.E_INVALID, "message": str(exc)}) from None
    now = ctx.now()

    def run(conn):
        releases_q.create(conn, body.model_dump(), blobs, now)
        if body.channel:
            releases_q.move_channel(conn, body.channel, body.id, now)
        return next(r for r in releases_q.list_all(conn, 10_000) if r["id"] == body.id)

    info = await ctx.tx(run)
    ctx.wake_workers()
    return p.ReleaseInfo(**info)


@router.get("/releases", response_model=list[p.ReleaseInfo], dependencies=[Depends(admin)])
async def list_releases(request: Request, limit: int = 100) -> list[p.ReleaseInfo]:
    return [p.ReleaseInfo(**r) for r in await ctx_of(request).read(releases_q.list_all, limit)]


@router.get("/releases/{ref}", response_model=p.ReleaseInfo,
            dependencies=[Depends(admin_or_worker)])
async def get_release(ref: str, request: Request) -> p.ReleaseInfo:
    """A release by id, unique id prefix, or channel name."""
    def run(conn):
        rid = releases_q.resolve(conn, ref)
        return next(r for r in releases_q.list_all(conn, 100_000) if r["id"] == rid)

    return p.ReleaseInfo(**await ctx_of(request).read(run))


@router.get("/channels", response_model=list[p.ChannelInfo],
            dependencies=[Depends(admin_or_worker)])
async def list_channels(request: Request) -> list[p.ChannelInfo]:
    return [p.ChannelInfo(**c) for c in await ctx_of(request).read(releases_q.list_channels)]


@router.put("/channels/{name}", response_model=p.ChannelInfo, dependencies=[Depends(admin)])
async def move_channel(name: str, body: p.ChannelMove, request: Request) -> p.ChannelInfo:
    """Promote: point channel ``name`` at a release (by id/prefix) or at another channel's."""
    ctx = ctx_of(request)
    if (body.release is None) == (body.source is None):
        raise HTTPException(422, detail={"code": p.E_INVALID,
                                         "message": "give exactly one of release or source"})
    now = ctx.now()

    def run(conn):
        rid = releases_q.resolve(conn, body.release or body.source)
        releases_q.move_channel(conn, name, rid, now)
        return next(c for c in releases_q.list_channels(conn) if c["name"] == name)

    info = await ctx.tx(run)
    ctx.wake_workers()
    return p.ChannelInfo(**info)
