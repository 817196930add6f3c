"""Releases and channels. Publishing needs the admin token; workers may read."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request

from officegrid import protocol as p
from officegrid.server.auth import Principal, admin, admin_or_worker, ctx_of, worker_session
from officegrid.server.release_check import ReleaseIncomplete, release_blobs
from officegrid.server.store import releases as releases_q
from officegrid.server.store import units as units_q
from officegrid.server.store import workers as workers_q

router = APIRouter()


@router.post("/releases", response_model=p.ReleaseInfo, dependencies=[Depends(admin)])
async def create_release(body: p.ReleaseCreate, request: Request) -> p.ReleaseInfo:
    """Record a release whose manifests and files are uploaded; optionally move a channel.

    The server walks the whole tree and refuses (409) a release with any blob missing, and
    (422) one with a malformed or unsafe manifest or an invalid channel name. Content already
    published keeps its first metadata (the answer says ``existed``); a different signature
    than the one it carries is refused (409); an unsigned one gets the signature.
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
        created = releases_q.create(conn, body.model_dump(), blobs, now)
        if body.channel:
            releases_q.move_channel(conn, body.channel, body.id, now)
        return {**releases_q.get(conn, body.id), "existed": not created}

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
        return releases_q.get(conn, releases_q.resolve(conn, ref))

    return p.ReleaseInfo(**await ctx_of(request).read(run))


@router.post("/releases/{release_id}/broken", response_model=p.Ack)
async def env_broken(release_id: str, body: p.EnvBroken, request: Request,
                     who: Principal = Depends(worker_session)) -> p.Ack:
    """A worker reports it cannot build ``release_id``'s environment (with the installer's
    output). Once every live worker (seen within ``lease_seconds``) has, the jobs running that
    release pause with the error (the reaper re-checks as workers come and go). Ack detail:
    JSON list of the job ids paused."""
    import json

    ctx = ctx_of(request)
    now = ctx.now()

    def run(conn):
        workers_q.check_instance(conn, who.worker["id"], who.instance)
        workers_q.touch(conn, who.worker["id"], now)
        releases_q.record_env_failure(conn, release_id, who.worker["id"], body.env,
                                      body.error[-20000:], now)
        error = releases_q.env_broken_everywhere(conn, release_id, now,
                                                 ctx.settings.lease_seconds)
        return units_q.pause_for_broken_env(conn, release_id, error, now) if error else []

    paused = await ctx.tx(run)
    return p.Ack(detail=json.dumps(paused))


@router.get("/channels", response_model=list[p.ChannelInfo],
            dependencies=[Depends(admin_or_worker)])
async def list_channels(request: Request) -> list[p.ChannelInfo]:
    return [p.ChannelInfo(**c) for c in await ctx_of(request).read(releases_q.list_channels)]


@router.put("/channels/{name}", response_model=p.ChannelInfo, dependencies=[Depends(admin)])
async def move_channel(name: str, body: p.ChannelMove, request: Request) -> p.ChannelInfo:
    """Promote: point channel ``name`` at a release (by id/prefix) or at another channel's."""
    ctx = ctx_of(request)
    try:
        p.check_channel_name(name)
    except ValueError as exc:
        raise HTTPException(422, detail={"code": p.E_INVALID, "message": str(exc)}) from None
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
