"""Jobs, units and attempts (admin)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request

from officegrid import protocol as p
from officegrid.server.auth import admin, ctx_of
from officegrid.server.store import jobs as jobs_q
from officegrid.server.store import releases as releases_q
from officegrid.server.store import units as units_q

router = APIRouter(dependencies=[Depends(admin)])


@router.post("/jobs", response_model=p.JobInfo)
async def create_job(body: p.JobCreate, request: Request) -> p.JobInfo:
    """Create a job and all its units in one transaction; every unit input must be uploaded."""
    ctx = ctx_of(request)
    missing = await ctx.run(ctx.blobs.missing, [u.input for u in body.units])
    if missing:
        raise HTTPException(409, detail={"code": p.E_CONFLICT,
                                         "message": f"{len(missing)} unit input blob(s) are not "
                                                    f"uploaded, e.g. {missing[0]}"})
    s = ctx.settings
    spec = body.model_dump()
    if body.data:  # each unit must read data at least as new as the master is now
        from officegrid.server.routers.data import required_positions

        spec["data"] = await required_positions(ctx, body.data)
    now = ctx.now()

    def run(conn):
        if spec.get("release"):
            spec["release"] = releases_q.resolve(conn, spec["release"])
        job_id = jobs_q.create(conn, spec, now, s.retry_budget, s.lost_budget)
        return jobs_q.get(conn, job_id)

    info = await ctx.tx(run)
    ctx.wake_workers()
    return p.JobInfo(**info)


@router.get("/jobs", response_model=list[p.JobInfo])
async def list_jobs(request: Request, limit: int = 50) -> list[p.JobInfo]:
    return [p.JobInfo(**j) for j in await ctx_of(request).read(jobs_q.list_all, limit)]


@router.get("/jobs/{job_id}", response_model=p.JobInfo)
async def get_job(job_id: int, request: Request) -> p.JobInfo:
    return p.JobInfo(**await ctx_of(request).read(jobs_q.get, job_id))


@router.post("/jobs/{job_id}/cancel", response_model=p.JobInfo)
async def cancel_job(job_id: int, request: Request) -> p.JobInfo:
    """Cancel: open units are cancelled; running attempts are told to stop at their heartbeat."""
    ctx = ctx_of(request)
    now = ctx.now()

    def run(conn):
        units_q.cancel_job(conn, job_id, now)
        return jobs_q.get(conn, job_id)

    return p.JobInfo(**await ctx.tx(run))


@router.post("/jobs/{job_id}/retry", response_model=p.JobInfo)
async def retry_job(job_id: int, body: p.JobRetry, request: Request) -> p.JobInfo:
    """Requeue quarantined units (optionally on another release) and resume a paused job."""
    ctx = ctx_of(request)
    now = ctx.now()

    def run(conn):
        release = releases_q.resolve(conn, body.release) if body.release else None
        units_q.retry_job(conn, job_id, release, now)
        return jobs_q.get(conn, job_id)

    info = await ctx.tx(run)
    ctx.wake_workers()
    return p.JobInfo(**info)


@router.get("/jobs/{job_id}/units", response_model=list[p.UnitInfo])
async def list_units(job_id: int, request: Request, after: int = -1,
                     limit: int = 1000) -> list[p.UnitInfo]:
    """A page of units in sequence order: ``after`` is the last seq seen."""
    rows = await ctx_of(request).read(jobs_q.list_units, job_id, after, min(limit, 10_000))
    return [p.UnitInfo(**u) for u in rows]


@router.get("/units/{unit_id}", response_model=p.UnitInfo)
async def get_unit(unit_id: int, request: Request) -> p.UnitInfo:
    return p.UnitInfo(**await ctx_of(request).read(jobs_q.get_unit, unit_id))


@router.get("/units/{unit_id}/attempts", response_model=list[p.AttemptInfo])
async def unit_attempts(unit_id: int, request: Request) -> list[p.AttemptInfo]:
    ctx = ctx_of(request)
    await ctx.read(jobs_q.get_unit, unit_id)
    return [p.AttemptInfo(**a) for a in await ctx.read(jobs_q.list_attempts, unit_id=unit_id)]


@router.get("/jobs/{job_id}/attempts", response_model=list[p.AttemptInfo])
async def job_attempts(job_id: int, request: Request) -> list[p.AttemptInfo]:
    ctx = ctx_of(request)
    await ctx.read(jobs_q.get, job_id)
    return [p.AttemptInfo(**a) for a in await ctx.read(jobs_q.list_attempts, job_id=job_id)]
