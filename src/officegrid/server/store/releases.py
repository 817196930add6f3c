"""Queries on releases and channels."""

from __future__ import annotations

import json
import re
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from officegrid.protocol import RELEASE_PREFIX_MIN, check_channel_name
from officegrid.server.store.common import Conflict, Invalid, NotFound
from officegrid.server.store.schema import (
    attempts,
    channel_history,
    channels,
    env_failures,
    jobs,
    release_blobs,
    releases,
    units,
    workers,
)

_HEX = re.compile(r"[0-9a-fA-F]+")


def create(conn: Connection, spec: dict[str, Any], blobs: set[str], now: float) -> bool:
    """Record a release and the blobs it references; return False if it already existed.

    Publishing content that already exists keeps the first metadata (created_at, author,
    message, git commit). A signature is added to an unsigned release; the same signature
    again is accepted; a pruned release is made available again (its blobs were checked).

    Raises:
        Conflict: the release exists with a different signature (workers trusting its
            current signer would refuse it if it were replaced).
    """
    row = conn.execute(select(releases.c.signature, releases.c.signer, releases.c.pruned_at)
                       .where(releases.c.id == spec["id"])).first()
    if row is not None:
        sig, signer = spec.get("signature"), spec.get("signer")
        if sig and row.signature and (sig, signer) != (row.signature, row.signer):
            rid = spec["id"]
            raise Conflict(
                f"release {rid[:12]} is already published, signed by key {row.signer}; "
                f"refusing to replace that signature with one by key {signer} (workers "
                f"trusting {row.signer} would then refuse a release they run). Publish it "
                f"again with {row.signer}'s key or without --sign (the existing signature "
                "stays); to use the new key, sign a release with different content")
        if sig and not row.signature:  # signing an already-published unsigned release
            conn.execute(update(releases).where(releases.c.id == spec["id"])
                         .values(signature=sig, signer=signer))
        if row.pruned_at is not None:  # published again after retention released its files
            conn.execute(delete(release_blobs).where(release_blobs.c.release_id == spec["id"]))
            if blobs:
                conn.execute(insert(release_blobs),
                             [{"release_id": spec["id"], "blob": b} for b in sorted(blobs)])
            conn.execute(update(releases).where(releases.c.id == spec["id"])
                         .values(pruned_at=None))
        return False
    conn.execute(insert(releases).values(
        id=spec["id"], created_at=now, author=spec.get("author"), message=spec.get("message"),
        git_commit=spec.get("git_commit"), file_count=spec.get("file_count", 0),
        total_bytes=spec.get("total_bytes", 0), signature=spec.get("signature"),
        signer=spec.get("signer"), env=spec.get("env")))
    if blobs:
        conn.execute(insert(release_blobs),
                     [{"release_id": spec["id"], "blob": b} for b in sorted(blobs)])
    return True


def exists(conn: Connection, release_id: str) -> bool:
    row = conn.execute(select(releases.c.id).where(releases.c.id == release_id)).first()
    return row is not None


def resolve(conn: Connection, ref: str) -> str:
    """A release id from a channel name, a full id or a unique id prefix (>= 6 hex chars).

    Raises:
        NotFound: nothing matches, or a prefix is ambiguous or too short.
    """
    ch = conn.execute(select(channels.c.release_id).where(channels.c.name == ref)).first()
    if ch:
        return ch.release_id
    if _HEX.fullmatch(ref):  # only hex: no LIKE wildcards (ids are lowercase hex)
        if len(ref) < RELEASE_PREFIX_MIN:
            raise NotFound(f"no channel {ref!r}, and {ref!r} is too short for a release id "
                           f"prefix: give at least {RELEASE_PREFIX_MIN} hex characters")
        rows = conn.execute(select(releases.c.id)
                            .where(releases.c.id.like(f"{ref.lower()}%")).limit(2)).all()
        if len(rows) == 1:
            return rows[0].id
        if len(rows) > 1:
            raise NotFound(f"release prefix {ref!r} is ambiguous: give more characters")
    raise NotFound(f"no channel or release {ref!r}")


def move_channel(conn: Connection, name: str, release_id: str, now: float) -> None:
    """Point channel ``name`` at ``release_id`` (creating the channel), keeping history.

    Raises:
        Invalid: ``name`` is not a valid channel name (protocol.CHANNEL_RULE), or the release
            was pruned by retention (its files are gone).
        NotFound: no such release.
    """
    try:
        check_channel_name(name)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
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


def get(conn: Connection, release_id: str) -> dict[str, Any]:
    """One release as in :func:`list_all` (with its channels).

    Raises:
        NotFound: no such release.
    """
    row = conn.execute(select(releases).where(releases.c.id == release_id)).first()
    if row is None:
        raise NotFound(f"no release {release_id!r}")
    d = dict(row._mapping)
    d["channels"] = sorted(c.name for c in conn.execute(
        select(channels.c.name).where(channels.c.release_id == release_id)))
    return d


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


# --------------------------------------------------------------------------- environments


def record_env_failure(conn: Connection, release_id: str, worker_id: int, env: str | None,
                       error: str, now: float) -> None:
    """Remember that ``worker_id`` could not build ``release_id``'s environment (replacing an
    earlier report of the same pair).

    Raises:
        NotFound: no such release.
    """
    if not exists(conn, release_id):
        raise NotFound(f"no release {release_id!r}")
    key = (env_failures.c.release_id == release_id) & (env_failures.c.worker_id == worker_id)
    conn.execute(delete(env_failures).where(key))
    conn.execute(insert(env_failures).values(release_id=release_id, worker_id=worker_id,
                                             env=env, error=error, at=now))


def clear_env_failures(conn: Connection, worker_id: int) -> None:
    """Forget a worker's reports (a new agent run reports again what it still refuses)."""
    conn.execute(delete(env_failures).where(env_failures.c.worker_id == worker_id))


def env_broken_everywhere(conn: Connection, release_id: str, now: float,
                          live_after: float) -> str | None:
    """The last reported error if every live worker (seen within ``live_after`` seconds) has
    reported ``release_id``'s environment broken; else None."""
    live = workers.c.last_seen >= now - live_after
    n_live = conn.execute(select(func.count()).select_from(workers).where(live)).scalar_one()
    rows = conn.execute(
        select(env_failures.c.error)
        .join(workers, workers.c.id == env_failures.c.worker_id)
        .where(env_failures.c.release_id == release_id, live)
        .order_by(env_failures.c.at.desc())).all()
    if not rows or len(rows) < n_live:
        return None
    return rows[0].error


def env_view(conn: Connection, release_ids: set[str], now: float, live_after: float
             ) -> tuple[dict[int, set[str]], dict[str, dict[int, str]]]:
    """What the live workers (seen within ``live_after`` seconds) say about the environments of
    ``release_ids``: (worker id -> the release ids it reports prepared, release id -> {worker
    id: error} of the live workers that reported it broken, newest report first)."""
    live: dict[int, set[str]] = {}
    for r in conn.execute(select(workers.c.id, workers.c.resources)
                          .where(workers.c.last_seen >= now - live_after)):
        try:
            res = json.loads(r.resources) if r.resources else {}
            prepared = set(res.get("prepared") or []) if isinstance(res, dict) else set()
        except (ValueError, TypeError):
            prepared = set()
        live[r.id] = prepared & release_ids
    broken: dict[str, dict[int, str]] = {}
    if release_ids and live:
        for r in conn.execute(
                select(env_failures.c.release_id, env_failures.c.worker_id, env_failures.c.error)
                .where(env_failures.c.release_id.in_(sorted(release_ids)),
                       env_failures.c.worker_id.in_(sorted(live)))
                .order_by(env_failures.c.at.desc())):
            broken.setdefault(r.release_id, {})[r.worker_id] = r.error
    return live, broken
