"""Queries on releases and channels."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from officegrid.server.store.common import Invalid, NotFound
from officegrid.server.store.schema import (
    attempts,
    channel_history,
    channels,
    jobs,
    release_blobs,
    releases,
    units,
)


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
    """Point channel ``name`` at ``release_id`` (creating the channel), keeping history.

    Raises:
        NotFound: no such release.
        Invalid: the release was pruned by retention (its files are gone).
    """
    row = conn.execute(select(releases.c.pruned_at).where(releases.c.id == release_id)).first()
    if row is None:
        raise NotFound(f"no release {release_id!r}")
    if row.pruned_at is not None:
        raise Invalid(f"release {release_id[:12]} was pruned by retention (keep_releases); "
                      "publish it again to use it")
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


def prune(conn: Connection, keep_per_channel: int, now: float, min_age: float) -> list[str]:
    """Release the blobs of releases nobody can run any more; return the ids pruned.

    Kept: the last ``keep_per_channel`` releases each channel pointed at (for rollback), every
    release a channel points at now, releases pinned by an unfinished job or one of its units,
    releases of active attempts, the ``keep_per_channel`` newest releases overall, and any
    release younger than ``min_age`` seconds (it may be promoted soon). The release row stays
    (with ``pruned_at``) so results can still name it; its blobs become garbage.
    """
    keep: set[str] = set()
    names = [r.name for r in conn.execute(select(channel_history.c.name).distinct())]
    for name in names:
        seen: list[str] = []
        for r in conn.execute(select(channel_history.c.release_id)
                              .where(channel_history.c.name == name)
                              .order_by(channel_history.c.at.desc(), channel_history.c.id.desc())):
            if r.release_id not in seen:
                seen.append(r.release_id)
            if len(seen) >= keep_per_channel:
                break
        keep.update(seen)
    keep.update(r.release_id for r in conn.execute(select(channels.c.release_id)))
    unfinished = jobs.c.state.in_(("running", "paused"))
    keep.update(r.release_id for r in conn.execute(
        select(jobs.c.release_id).where(unfinished, jobs.c.release_id.is_not(None))))
    keep.update(r.pinned_release for r in conn.execute(
        select(units.c.pinned_release).where(units.c.pinned_release.is_not(None),
                                             units.c.state.in_(("queued", "leased")))))
    keep.update(r.release_id for r in conn.execute(
        select(attempts.c.release_id).where(attempts.c.state == "active")))
    keep.update(r.id for r in conn.execute(
        select(releases.c.id).order_by(releases.c.created_at.desc()).limit(keep_per_channel)))
    candidates = [r.id for r in conn.execute(
        select(releases.c.id).where(releases.c.pruned_at.is_(None),
                                    releases.c.created_at < now - min_age))]
    pruned = [rid for rid in candidates if rid not in keep]
    for rid in pruned:
        conn.execute(delete(release_blobs).where(release_blobs.c.release_id == rid))
        conn.execute(update(releases).where(releases.c.id == rid).values(pruned_at=now))
    return pruned
