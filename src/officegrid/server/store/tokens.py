"""Queries on tokens: admin, worker and enroll (join) tokens, stored as SHA-256 hashes.

Tokens are 256-bit random strings, so a fast unsalted hash is enough to make a stolen database
useless for authenticating (there is nothing to brute-force).
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from sqlalchemy import Connection, insert, select, update

from officegrid.server.store.common import Conflict, NotFound
from officegrid.server.store.schema import tokens, workers

PREFIX = {"admin": "oga_", "worker": "ogw_", "enroll": "oge_"}


def new_secret(kind: str) -> str:
    """A fresh token string: a kind prefix plus 43 url-safe characters (256 bits)."""
    return PREFIX[kind] + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """SHA-256 hex of a token string."""
    return hashlib.sha256(secret.encode()).hexdigest()


def create(conn: Connection, kind: str, name: str, now: float, uses: int | None = None,
           expires_at: float | None = None, secret: str | None = None) -> tuple[int, str]:
    """Insert a token; return (id, secret). The secret is never stored in clear."""
    secret = secret or new_secret(kind)
    tid = conn.execute(
        insert(tokens).values(kind=kind, name=name, secret_hash=hash_secret(secret),
                              uses_left=uses, expires_at=expires_at, revoked=False,
                              created_at=now)
    ).inserted_primary_key[0]
    return tid, secret


def lookup(conn: Connection, secret: str) -> dict[str, Any] | None:
    """The token row for ``secret``, or None."""
    row = conn.execute(select(tokens).where(tokens.c.secret_hash == hash_secret(secret))).first()
    return dict(row._mapping) if row else None


def admin_exists(conn: Connection) -> bool:
    row = conn.execute(
        select(tokens.c.id).where(tokens.c.kind == "admin", tokens.c.revoked.is_(False))
    ).first()
    return row is not None


def use_enroll(conn: Connection, token_id: int) -> None:
    """Consume one use of an enroll token (conditional, so concurrent joins cannot overdraw)."""
    res = conn.execute(
        update(tokens)
        .where(tokens.c.id == token_id, tokens.c.uses_left.is_not(None), tokens.c.uses_left > 0)
        .values(uses_left=tokens.c.uses_left - 1)
    )
    if res.rowcount == 0:
        row = conn.execute(select(tokens.c.uses_left).where(tokens.c.id == token_id)).first()
        if row is not None and row.uses_left is not None:
            raise Conflict("this join token has no uses left")


def rename(conn: Connection, token_id: int, name: str) -> None:
    conn.execute(update(tokens).where(tokens.c.id == token_id).values(name=name))


def list_all(conn: Connection) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in conn.execute(select(tokens).order_by(tokens.c.id))]


def revoke(conn: Connection, name: str) -> int:
    """Revoke every token with ``name`` (a worker name or a label); return how many.

    Raises:
        NotFound: no token has that name.
    """
    res = conn.execute(
        update(tokens).where(tokens.c.name == name, tokens.c.revoked.is_(False))
        .values(revoked=True)
    )
    if res.rowcount == 0:
        # A worker's token may carry another label: revoke via the worker row too.
        w = conn.execute(select(workers.c.token_id).where(workers.c.name == name)).first()
        if w is None:
            raise NotFound(f"no token or worker named {name!r}")
        res = conn.execute(update(tokens).where(tokens.c.id == w.token_id).values(revoked=True))
    return res.rowcount
