"""Tokens and enrollment: ``/tokens`` (admin) and ``/enroll`` (join tokens)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from officegrid import protocol as p
from officegrid.server.auth import Principal, admin, ctx_of, forbidden, principal
from officegrid.server.store import tokens as tokens_q
from officegrid.server.store import workers as workers_q
from officegrid.server.store.common import Invalid

router = APIRouter()


def _info(row: dict, secret: str | None = None) -> p.TokenInfo:
    return p.TokenInfo(id=row["id"], kind=row["kind"], name=row["name"], token=secret,
                       uses_left=row["uses_left"], expires_at=row["expires_at"],
                       revoked=row["revoked"], created_at=row["created_at"])


@router.post("/tokens", response_model=p.TokenInfo, dependencies=[Depends(admin)])
async def create_token(body: p.TokenCreate, request: Request) -> p.TokenInfo:
    """Create a join (enroll) token, a worker identity with its token, or another admin token."""
    ctx = ctx_of(request)
    now = ctx.now()
    expires = now + body.expires_in if body.expires_in else None

    def run(conn):
        if body.kind == p.TokenKind.worker:
            if not body.name:
                raise Invalid("a worker token needs a worker name (--worker NAME)")
            tid, secret = tokens_q.create(conn, "worker", body.name, now, expires_at=expires)
            _, final = workers_q.create(conn, body.name, tid, now)
            if final != body.name:
                raise Invalid(f"a worker named {body.name!r} exists already")
        else:
            uses = body.uses if body.kind == p.TokenKind.enroll else None
            tid, secret = tokens_q.create(conn, body.kind.value, body.name or "", now,
                                          uses=uses, expires_at=expires)
            if not body.name:  # a unique default label: revoking it revokes this token only
                tokens_q.rename(conn, tid, f"{body.kind.value}-{tid}")
        row = next(t for t in tokens_q.list_all(conn) if t["id"] == tid)
        return _info(row, secret)

    return await ctx.tx(run)


@router.get("/tokens", response_model=list[p.TokenInfo], dependencies=[Depends(admin)])
async def list_tokens(request: Request) -> list[p.TokenInfo]:
    rows = await ctx_of(request).read(tokens_q.list_all)
    return [_info(r) for r in rows]


@router.delete("/tokens/{name}", response_model=p.Ack, dependencies=[Depends(admin)])
async def revoke_token(name: str, request: Request) -> p.Ack:
    """Revoke the tokens named ``name`` (a worker name or a token label)."""
    ctx = ctx_of(request)
    n = await ctx.tx(tokens_q.revoke, name)
    ctx.token_cache.clear()
    return p.Ack(detail=f"revoked {n} token(s) named {name!r}")


@router.post("/enroll", response_model=p.EnrollResponse)
async def enroll(body: p.EnrollRequest, request: Request,
                 who: Principal = Depends(principal)) -> p.EnrollResponse:
    """Register a new worker with a join token; returns its own identity and token."""
    if who.kind not in ("enroll", "admin"):
        raise forbidden("enrolling needs a join token (`officegrid token create --enroll`)")
    ctx = ctx_of(request)
    now = ctx.now()
    name = (body.name or body.hostname or "worker").strip()[:150] or "worker"

    def run(conn):
        if who.kind == "enroll":
            tokens_q.use_enroll(conn, who.token["id"])
        tid, secret = tokens_q.create(conn, "worker", name, now)
        wid, final = workers_q.create(conn, name, tid, now, body.hostname, body.platform)
        return p.EnrollResponse(worker_id=wid, name=final, token=secret)

    return await ctx.tx(run)
