"""The worker side of the API: sessions, leases (long poll), heartbeats and reports.

Workers only ever pull. A lease request is held open up to ``wait`` seconds while there is no
work; the answer then carries retry-after (workers add jitter).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from officegrid import protocol as p
from officegrid.cas import BlobError
from officegrid.server.auth import Principal, admin, ctx_of, worker, worker_session
from officegrid.server.store import releases as releases_q
from officegrid.server.store import units as units_q
from officegrid.server.store import workers as workers_q
from officegrid.server.store.common import NotFound

router = APIRouter()


@router.post("/session", response_model=p.SessionResponse)
async def open_session(body: p.SessionRequest, request: Request,
                       who: Principal = Depends(worker)) -> p.SessionResponse:
    """Bind this worker identity to the calling agent run (header X-Officegrid-Instance).

    409 ``identity_in_use`` if another agent run with the same identity is live: a work dir
    copied to another machine must re-enroll.
    """
    ctx = ctx_of(request)
    instance = request.headers.get(p.INSTANCE_HEADER)
    if not instance:
        raise HTTPException(422, detail={"code": p.E_INVALID,
                                         "message": f"missing {p.INSTANCE_HEADER} header"})
    now = ctx.now()
    s = ctx.settings
    info = {"hostname": body.hostname, "platform": body.platform, "version": body.version,
            "resources": json.dumps(body.resources.model_dump())}

    def run(conn):
        nonce = workers_q.open_session(conn, who.worker["id"], instance, body.nonce, now,
                                       s.lease_seconds, info)
        # A new agent run reports again the environments it still cannot build.
        releases_q.clear_env_failures(conn, who.worker["id"])
        return nonce

    nonce = await ctx.tx(run)
    return p.SessionResponse(nonce=nonce, worker_id=who.worker["id"], name=who.worker["name"],
                             lease_seconds=s.lease_seconds,
                             heartbeat_interval=s.heartbeat_interval, server_time=now)


@router.post("/lease", response_model=p.LeaseResponse)
async def lease(body: p.LeaseRequest, request: Request, response: Response,
                who: Principal = Depends(worker_session)) -> p.LeaseResponse:
    """Lease up to ``max_units`` units, waiting up to ``wait`` seconds for work."""
    ctx = ctx_of(request)
    s = ctx.settings
    w = who.worker
    wait = min(body.wait, s.long_poll_max)
    deadline = asyncio.get_running_loop().time() + wait
    skip = frozenset(body.resources.broken_releases)
    resources = body.resources.model_dump()
    held: dict[str, str] = {}  # release -> "prepare" | "window" (see units_q.claim)
    behind: dict[str, int] = {}  # data source -> position to replicate to (see units_q.claim)
    epochs = await ctx.run(_current_epochs, ctx, list(body.resources.data))

    def try_claim():
        now = ctx.now()
        with ctx.db.tx() as conn:
            row = workers_q.get(conn, w["id"])
            workers_q.check_instance(conn, w["id"], who.instance, row)
            workers_q.touch(conn, w["id"], now, resources=resources)
            if row["draining"]:
                return [], "draining: finishing current work, taking no more"
            if row["state"] in ("stopping", "offline"):
                # The agent said it is shutting down: a lease now would reach nobody.
                return [], "stopping: the agent is shutting down"
            if row["sidelined_until"] and row["sidelined_until"] > now:
                return [], ("sidelined: failed many units of different jobs in a row; "
                            f"no work for {row['sidelined_until'] - now:.0f}s")
            held.clear()
            behind.clear()
            leases = units_q.claim(conn, w["id"], body.max_units, now, ctx.policy, skip,
                                   skip_locked=not ctx.db.is_sqlite,
                                   **_claim_filters(body.resources), held_back=held,
                                   epochs=epochs, behind=behind)
            return leases, _held_reason(held, behind)

    first = True
    while True:
        ctx.work_event.clear()
        # Waiting polls take the write lock only when a read shows queued work.
        if first or await ctx.read(units_q.has_queued):
            leases, reason = await ctx.run(try_claim)
        else:
            leases, reason = [], None
        first = False
        if leases:
            return p.LeaseResponse(leases=[p.Lease(**x) for x in leases],
                                   prepare=_to_prepare(held), replicate=dict(behind))
        remaining = deadline - asyncio.get_running_loop().time()
        stopping = ctx.shutting_down is not None and ctx.shutting_down()
        if reason or remaining <= 0 or stopping or await request.is_disconnected():
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.work_event.wait(), timeout=min(remaining, s.poll_interval))
    if reason is None:
        retry = s.idle_retry_after
    elif reason.startswith("draining"):
        retry = min(s.heartbeat_interval, 3.0)  # so that `drain --undo` takes effect soon
    elif reason.startswith(("preparing", "replicating")):
        retry = min(s.heartbeat_interval, 1.0)  # asks again once its env / replica is ready
    elif reason.startswith("outside transfer window"):
        retry = s.idle_retry_after
    else:
        retry = min(s.sideline_seconds, 60.0)
    response.headers[p.RETRY_AFTER] = f"{retry:g}"
    return p.LeaseResponse(leases=[], retry_after=retry, reason=reason or "no work",
                           prepare=_to_prepare(held), replicate=dict(behind))


def _claim_filters(res: p.WorkerResources) -> dict:
    """The claim's hold-back filters from what the worker reports (see units_q.claim)."""
    return {"prepared": frozenset(res.prepared),
            "cached": None if res.fetch_allowed else frozenset(res.releases),
            "data": {name: [str(at[0]), int(at[1])] for name, at in res.data.items()}}


def _current_epochs(ctx, names: list[str]) -> dict[str, str]:
    """Data source -> the master's current epoch, for the sources a worker follows (the head
    of this process's last poll; polled now if there was none). Unknown sources are left out."""
    from officegrid.server.routers.data import service
    from officegrid.sync.replication.errors import DataSourceError

    out = {}
    for name in names:
        try:
            svc = service(ctx, name)
            head = svc.known_head() or svc.poll(force=True).get("head")
        except (HTTPException, DataSourceError, OSError):
            continue
        if head is not None:
            out[name] = head.epoch
    return out


def _to_prepare(held: dict[str, str]) -> list[str]:
    return sorted(r for r, why in held.items() if why == "prepare")


def _held_reason(held: dict[str, str], behind: dict[str, int]) -> str | None:
    """Why no unit was leased when some were held back (None: nothing held back)."""
    prep = _to_prepare(held)
    if prep:
        return "preparing environment for release " + ", ".join(r[:12] for r in prep)
    if behind:
        return "replicating data source " + ", ".join(
            f"{name} to position {pos}" for name, pos in sorted(behind.items()))
    if held:
        return "outside transfer window"
    return None


@router.post("/heartbeat", response_model=p.HeartbeatResponse)
async def heartbeat(body: p.Heartbeat, request: Request,
                    who: Principal = Depends(worker_session)) -> p.HeartbeatResponse:
    """One heartbeat per worker renews all its leases; tells which attempts to abort."""
    ctx = ctx_of(request)
    now = ctx.now()
    w = who.worker

    nonce = workers_q.new_nonce()

    def run(conn):
        row = workers_q.get(conn, w["id"])
        workers_q.check_instance(conn, w["id"], who.instance, row)
        workers_q.touch(conn, w["id"], now, body.state, body.reason,
                        body.resources.model_dump() if body.resources else None, nonce)
        renewed, abort = units_q.heartbeat(conn, w["id"], body.attempts, body.progress, now,
                                           ctx.policy)
        return renewed, abort, row["draining"]

    renewed, abort, drain = await ctx.tx(run)
    return p.HeartbeatResponse(renewed=renewed, abort=abort, drain=bool(drain), nonce=nonce,
                               expires_at=now + ctx.settings.lease_seconds, server_time=now)


@router.post("/attempts/{attempt_id}/complete", response_model=p.CompletionResponse)
async def complete(attempt_id: str, body: p.Completion, request: Request,
                   who: Principal = Depends(worker_session)) -> p.CompletionResponse:
    """Record an attempt's result (its blob must be stored first); optionally lease the next.

    409/404/403 for an attempt that failed, was never issued, or is another worker's.
    """
    ctx = ctx_of(request)
    w = who.worker
    now = ctx.now()
    epochs = await ctx.run(_current_epochs, ctx, list(body.resources.data)) \
        if body.resources and body.want_next else {}

    def run():
        # The result blob is stored (fsynced) before the transaction that references it.
        for digest, inline in ((body.result, body.result_inline), (body.log, body.log_inline)):
            if inline is not None and digest is not None:
                ctx.blobs.put_frame(digest, base64.b64decode(inline))
        if not ctx.blobs.has(body.result):
            raise HTTPException(409, detail={
                "code": p.E_CONFLICT,
                "message": f"result blob {body.result} is not stored: upload it first"})
        with ctx.db.tx() as conn:
            row = workers_q.get(conn, w["id"])
            workers_q.check_instance(conn, w["id"], who.instance, row)
            outcome = units_q.complete(conn, attempt_id, w["id"], body.result, body.columns,
                                       body.records_done, body.record_errors, body.log, now,
                                       env=body.env)
            nxt = None
            sidelined = row["sidelined_until"] and row["sidelined_until"] > now
            if body.want_next and not row["draining"] and not sidelined:
                skip = frozenset(body.resources.broken_releases) if body.resources \
                    else frozenset()
                got = units_q.claim(conn, w["id"], 1, now, ctx.policy, skip,
                                    skip_locked=not ctx.db.is_sqlite,
                                    **(_claim_filters(body.resources) if body.resources
                                       else {"prepared": frozenset()}), epochs=epochs)
                nxt = got[0] if got else None
            return outcome, nxt

    try:
        outcome, nxt = await ctx.run(run)
    except (BlobError, ValueError) as exc:
        raise HTTPException(422, detail={"code": p.E_INVALID,
                                         "message": f"inline blob rejected: {exc}"}) from None
    return p.CompletionResponse(outcome=outcome, next=p.Lease(**nxt) if nxt else None)


@router.post("/attempts/{attempt_id}/fail", response_model=p.Ack)
async def fail(attempt_id: str, body: p.Failure, request: Request,
               who: Principal = Depends(worker_session)) -> p.Ack:
    """Report an attempt that failed (exception/crash/import error)."""
    ctx = ctx_of(request)

    def run(conn):
        workers_q.check_instance(conn, who.worker["id"], who.instance)
        return units_q.fail(conn, attempt_id, who.worker["id"], body.kind.value, body.error,
                            body.log, ctx.now(), ctx.policy)

    res = await ctx.tx(run)
    ctx.wake_workers()
    return p.Ack(detail=json.dumps(res))


@router.post("/attempts/{attempt_id}/vacate", response_model=p.Ack)
async def vacate(attempt_id: str, body: p.Vacate, request: Request,
                 who: Principal = Depends(worker_session)) -> p.Ack:
    """Give a unit back without using any budget (owner returned, shutdown)."""
    ctx = ctx_of(request)
    if body.done > 0:
        return await _vacate_partial(attempt_id, body, request, who)

    def run(conn):
        workers_q.check_instance(conn, who.worker["id"], who.instance)
        return units_q.vacate(conn, attempt_id, who.worker["id"], body.reason, body.log,
                              ctx.now())

    state = await ctx.tx(run)
    ctx.wake_workers()
    return p.Ack(detail=state)


async def _vacate_partial(attempt_id: str, body: p.Vacate, request: Request,
                          who: Principal) -> p.Ack:
    """Vacate with a finished prefix: store the prefix's result and the two halves of the
    unit's input (fsynced) first, then one transaction commits the split
    (``units.vacate_partial``). Ack detail: JSON ``{"outcome", "rest_unit"}``."""
    from officegrid.records.units import split_unit_input

    ctx = ctx_of(request)
    w = who.worker

    def run():
        if body.result is None:
            raise HTTPException(422, detail={"code": p.E_INVALID,
                                             "message": "a vacate with done > 0 needs result"})
        if body.result_inline is not None:
            ctx.blobs.put_frame(body.result, base64.b64decode(body.result_inline))
        if not ctx.blobs.has(body.result):
            raise HTTPException(409, detail={
                "code": p.E_CONFLICT,
                "message": f"result blob {body.result} is not stored: upload it first"})
        with ctx.db.tx() as conn:
            workers_q.check_instance(conn, w["id"], who.instance)
            info = units_q.vacate_info(conn, attempt_id, w["id"])
        if info["attempt_state"] != "active":
            return {"outcome": "ignored", "rest_unit": None}
        try:
            prefix, rest, last_key, first_key = split_unit_input(
                ctx.blobs.read(info["input"]), body.done)
        except ValueError as exc:
            raise HTTPException(422, detail={
                "code": p.E_INVALID, "message": f"vacate of attempt {attempt_id}: {exc}"}
            ) from None
        prefix_blob, rest_blob = ctx.blobs.put(prefix), ctx.blobs.put(rest)
        with ctx.db.tx() as conn:
            return units_q.vacate_partial(
                conn, attempt_id, w["id"], body.reason, body.log, body.done, body.result,
                body.columns, body.records_done, body.record_errors, prefix_blob, rest_blob,
                last_key, first_key, ctx.now(), env=body.env)

    try:
        res = await ctx.run(run)
    except (BlobError, ValueError) as exc:
        raise HTTPException(422, detail={"code": p.E_INVALID,
                                         "message": f"inline blob rejected: {exc}"}) from None
    ctx.wake_workers()
    return p.Ack(detail=json.dumps(res))


@router.get("/workers", response_model=list[p.WorkerInfo], dependencies=[Depends(admin)])
async def list_workers(request: Request) -> list[p.WorkerInfo]:
    """Every worker: state and reason, last heartbeat, the release it runs, its health."""
    ctx = ctx_of(request)
    s = ctx.settings
    rows = await ctx.read(workers_q.list_all, ctx.now(),
                          max(s.lease_seconds, 3 * s.heartbeat_interval))
    return [
        p.WorkerInfo(id=r["id"], name=r["name"], hostname=r["hostname"], platform=r["platform"],
                     state=r["state"], reason=r["reason"], last_seen=r["last_seen"],
                     active_units=r["active_units"], release=r["release"],
                     draining=bool(r["draining"]), sidelined_until=r["sidelined_until"],
                     consecutive_failures=r["consecutive_failures"], completed=r["completed"],
                     failed=r["failed"])
        for r in rows
    ]


@router.post("/workers/{name}/drain", response_model=p.Ack, dependencies=[Depends(admin)])
async def drain(name: str, request: Request, undo: bool = False) -> p.Ack:
    """Let a worker finish its current units and take no more (``?undo=true`` reverses)."""
    ctx = ctx_of(request)
    try:
        w = await ctx.tx(workers_q.set_draining, name, not undo)
    except NotFound:
        raise
    return p.Ack(detail=f"worker {w['name']} {'resumed' if undo else 'draining'}")
