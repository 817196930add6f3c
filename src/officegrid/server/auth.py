"""Bearer-token authentication and the roles of callers.

Admin tokens may do everything; worker tokens may only enroll-free worker calls (session,
lease, heartbeat, fetch and report); enroll tokens may only register a new worker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, HTTPException, Request

from officegrid import protocol
from officegrid.server.context import ServerContext
from officegrid.server.store import tokens as tokens_q
from officegrid.server.store import workers as workers_q


@dataclass
class Principal:
    """Who is calling: the token row, the worker's id and name for worker tokens, and the agent
    run (instance header) the request claims to come from."""

    kind: str
    token: dict[str, Any]
    worker: dict[str, Any] | None = None
    instance: str | None = None


class TokenCache:
    """Token lookups kept for ``ttl`` seconds, so a request does not cost a store transaction
    for authentication. A revocation therefore takes effect within ``ttl`` seconds in every
    server process (at once in the one that revoked). Session ownership is never cached: it is
    checked inside each worker call's own transaction."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[float, dict, dict | None]] = {}

    def get(self, secret: str) -> tuple[dict, dict | None] | None:
        hit = self._entries.get(secret)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1], hit[2]

    def put(self, secret: str, tok: dict, worker: dict | None) -> None:
        if len(self._entries) > 100_000:
            self._entries.clear()
        self._entries[secret] = (time.monotonic() + self.ttl, tok, worker)

    def clear(self) -> None:
        self._entries.clear()


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

    secret = secret.strip()

    def look(conn):
        tok = tokens_q.lookup(conn, secret)
        worker = workers_q.by_token(conn, tok["id"]) if tok and tok["kind"] == "worker" else None
        if worker is not None:
            worker = {"id": worker["id"], "name": worker["name"]}
        return tok, worker

    cached = ctx.token_cache.get(secret)
    if cached is not None:
        tok, worker = cached
    else:
        tok, worker = await ctx.read(look)
        if tok is not None:
            ctx.token_cache.put(secret, tok, worker)
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
    """A worker call that must come from the agent run holding the session (clone detection).

    The route checks ``p.instance`` against the worker row inside its own transaction
    (``workers_q.check_instance``)."""
    p.instance = request.headers.get(protocol.INSTANCE_HEADER)
    return p
