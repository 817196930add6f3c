"""Bearer-token authentication and the roles of callers.

Admin tokens may do everything; worker tokens may only enroll-free worker calls (session,
lease, heartbeat, fetch and report); enroll tokens may only register a new worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Depends, HTTPException, Request

from officegrid import protocol
from officegrid.server.context import ServerContext
from officegrid.server.store import tokens as tokens_q
from officegrid.server.store import workers as workers_q


@dataclass
class Principal:
    """Who is calling: the token row, and the worker row for worker tokens."""

    kind: str
    token: dict[str, Any]
    worker: dict[str, Any] | None = None


def ctx_of(request: Request) -> ServerContext:
    return request.app.state.ctx


def unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status_code=401, detail={"code": protocol.E_AUTH, "message": message},
        headers={"WWW-Authenticate": "Bearer"},
    )


def forbidden(message: str) -> HTTPException:
    return HTTPException(status_code=403, detail={"code": protocol.E_FORBIDDEN, "message": message})


async def principal(request: Request) -> Principal:
    """Authenticate the request's bearer token. Raises 401 with a message saying what is wrong."""
    header = request.headers.get(protocol.AUTH_HEADER, "")
    if not header:
        raise unauthorized("missing token: pass --token, set OFFICEGRID_TOKEN, or (for the "
                           "admin) read the admin.token file in the server's data dir")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret:
        raise unauthorized("malformed Authorization header: expected 'Bearer <token>'")
    ctx = ctx_of(request)
    now = ctx.now()

    def look(conn):
        tok = tokens_q.lookup(conn, secret.strip())
        worker = workers_q.by_token(conn, tok["id"]) if tok and tok["kind"] == "worker" else None
        return tok, worker

    tok, worker = await ctx.read(look)
    if tok is None:
        raise unauthorized("unknown token (wrong server, or a mistyped token)")
    if tok["revoked"]:
        raise unauthorized(f"token {tok['name']!r} was revoked")
    if tok["expires_at"] is not None and tok["expires_at"] < now:
        raise unauthorized(f"token {tok['name']!r} has expired")
    return Principal(kind=tok["kind"], token=tok, worker=worker)


async def admin(p: Principal = Depends(principal)) -> Principal:
    """Require the admin token."""
    if p.kind != "admin":
        raise forbidden("this needs the admin token")
    return p


async def admin_or_worker(p: Principal = Depends(principal)) -> Principal:
    if p.kind not in ("admin", "worker"):
        raise forbidden("this needs an admin or worker token")
    return p


async def worker(request: Request, p: Principal = Depends(principal)) -> Principal:
    """Require a worker token whose agent run holds the identity's session."""
    if p.kind != "worker" or p.worker is None:
        raise forbidden("this needs a worker token")
    return p


async def worker_session(request: Request, p: Principal = Depends(worker)) -> Principal:
    """A worker call that must come from the agent run holding the session (clone detection)."""
    instance = request.headers.get(protocol.INSTANCE_HEADER)
    workers_q.check_instance(None, p.worker, instance)  # type: ignore[arg-type]
    return p
