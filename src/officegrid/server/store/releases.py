"""Queries on releases and channels."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, insert, select, update

from officegrid.server.store.common import NotFound
from officegrid.server.store.schema import channel_history, channels, release_blobs, releases


def create(conn: Connection, spec: dict[str, Any], blobs: set[str], now: float) -> bool:
    """Record a release and the blobs it references; return False if it already existed."""
    if conn.execute(select(releases.c.id).where(releases.c.id == spec["id"])).first():
        if spec.get("signature"):  # signing an already-published release
            conn.execute(update(releases).where(releases.c.id == spec["id"])
                         .values(signature=spec["signature"], signer=spec.get("signer")))
        return False
    conn.execute(insert(releases).values(
        id=spec["id"], created_at=now, author=spec.get("author"), message=spec.get("message"),
        git_commit=spec.get("git_commit"), file_count=spec.get("file_count", 0),
        total_bytes=spec.get("total_bytes", 0), signature=spec.get("signature"),
        signer=spec.get("signer")))
    if blobs:
        conn.execute(insert(release_blobs),
                     [{"release_id": spec["id"], "blob": b} for b in sorted(blobs)])
    return True


def exists(conn: Connection, release_id: str) -> bool:
    row = conn.execute(select(releases.c.id).where(releases.c.id == release_id)).first()
    return row is not None


def resolve(conn: Connection, ref: str) -> str:
    """A release id from a channel name, a full id or a unique id prefix (>= 6 chars).

    Raises:
        NotFound: nothing matches, or a prefix is ambiguous.
    """
    ch = conn.execute(select(channels.c.release_id).where(channels.c.name == ref)).first()
    if ch:
        return ch.release_id
    if len(ref) >= 6:
        rows = conn.execute(select(releases.c.id).where(releases.c.id.like(f"{ref}%"))
                            .limit(2)).all()
        if len(rows) == 1:
            return rows[0].id
        if len(rows) > 1:
            raise NotFound(f"release prefix {ref!r} is ambiguous")
    raise NotFound(f"no channel or release {ref!r}")


def move_channel(conn: Connection, name: str, release_id: str, now: float) -> None:
    """Point channel ``name`` at ``release_id`` (creating the channel), keeping history."""
    if not exists(conn, release_id):
        raise NotFound(f"no release {release_id!r}")
    res = conn.execute(update(channels).where(channels.c.name == name)
                       .values(release_id=release_id, updated_at=now))
    if res.rowcount == 0:
        conn.execute(insert(channels).values(name=name, release_id=release_id, updated_at=now))
    conn.execute(insert(channel_history).values(name=name, release_id=release_id, at=now))


def list_all(conn: Connection, limit: int = 100) -> list[dict[str, Any]]:
    chans: dict[str, list[str]] = {}
    for c in conn.execute(select(channels)):
        chans.setdefault(c.release_id, []).append(c.name)
    out = []
    for r in conn.execute(select(releases).order_by(releases.c.created_at.desc()).limit(limit)):
        d = dict(r._mapping)
        d["channels"] = sorted(chans.get(r.id, []))
        out.append(d)
    return out


def list_channels(conn: Connection) -> list[dict[str, Any]]:
    return [{"name": c.name, "release": c.release_id, "updated_at": c.updated_at}
            for c in conn.execute(select(channels).order_by(channels.c.name))]
