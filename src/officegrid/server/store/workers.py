"""Queries on workers: identities, agent sessions (clone detection), state and health."""

from __future__ import annotations

import json
import secrets
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from officegrid.server.store.common import Conflict, NotFound, dumps, loads
from officegrid.server.store.schema import attempts, tokens, units, workers


class IdentityInUse(Conflict):
    """Another live agent holds this worker identity (a copied work dir): re-enroll."""

    code = "identity_in_use"


def create(conn: Connection, name: str, token_id: int, now: float, hostname: str | None = None,
           platform: str | None = None) -> tuple[int, str]:
    """Insert a worker named ``name`` (suffixed -2, -3... if taken); return (id, final name)."""
    taken = {
        r.name for r in conn.execute(
            select(workers.c.name).where(
                (workers.c.name == name) | workers.c.name.like(f"{name}-%")
            )
        )
    }
    final, n = name, 1
    while final in taken:
        n += 1
        final = f"{name}-{n}"
    wid = conn.execute(
        insert(workers).values(name=final, token_id=token_id, hostname=hostname,
                               platform=platform, state="offline", created_at=now,
                               draining=False, consecutive_failures=0, completed=0, failed=0)
    ).inserted_primary_key[0]
    return wid, final


def by_token(conn: Connection, token_id: int) -> dict[str, Any] | None:
    row = conn.execute(select(workers).where(workers.c.token_id == token_id)).first()
    return dict(row._mapping) if row else None


def get(conn: Connection, name_or_id: str | int) -> dict[str, Any]:
    """A worker row by name or id. Raises NotFound."""
    cond = (workers.c.id == int(name_or_id)) if str(name_or_id).isdigit() else None
    q = select(workers).where(workers.c.name == str(name_or_id))
    if cond is not None:
        q = select(workers).where(cond | (workers.c.name == str(name_or_id)))
    row = conn.execute(q).first()
    if row is None:
        raise NotFound(f"no worker named {name_or_id!r}")
    return dict(row._mapping)


def new_nonce() -> str:
    return secrets.token_hex(16)


def open_session(conn: Connection, worker_id: int, instance: str, nonce: str | None, now: float,
                 live_window: float, info: dict[str, Any]) -> str:
    """Bind the identity to agent run ``instance``; return the new session nonce.

    An agent restarting on the same work dir presents the nonce of the live session (it keeps
    the latest in its work dir) and takes over at once. A copy of the work dir on another
    machine holds an older nonce.

    Raises:
        IdentityInUse: another instance was seen within ``live_window`` seconds and ``nonce``
            is not the live session's. Two live agents with one identity are never both served:
            the newer one is told to re-enroll.
    """
    row = conn.execute(
        select(workers.c.instance, workers.c.instance_seen_at, workers.c.hostname,
               workers.c.session_nonce)
        .where(workers.c.id == worker_id)
    ).one()
    live = (row.instance and row.instance != instance and row.instance_seen_at is not None
            and row.instance_seen_at > now - live_window)
    if live and (nonce is None or nonce != row.session_nonce):
        raise IdentityInUse(
            f"this worker identity is in use by another live agent (host {row.hostname!r}, "
            f"seen {now - row.instance_seen_at:.0f}s ago): was the work dir copied from another "
            "machine? Remove its identity.json and enroll this agent with a join token."
        )
    fresh = new_nonce()
    # Taking over a live session: an agent restarted after a crash, or a copy of its work dir
    # made within the last heartbeat. If the previous run speaks again it is alive, so this one
    # is the copy (see check_instance).
    conn.execute(
        update(workers).where(workers.c.id == worker_id)
        .values(instance=instance, instance_seen_at=now, last_seen=now, state="idle",
                reason=None, session_nonce=fresh,
                previous_instance=row.instance if live else None, **info)
    )
    return fresh


def check_instance(conn: Connection, worker_id: int, instance: str | None,
                   row: dict[str, Any] | None = None) -> None:
    """Refuse a request from an agent run that does not hold the identity's session.

    Raises:
        IdentityInUse: another agent run holds it (or none has opened a session).
    """
    if row is None:
        r = conn.execute(select(workers.c.instance, workers.c.previous_instance)
                         .where(workers.c.id == worker_id)).one()
        row = {"instance": r.instance, "previous_instance": r.previous_instance}
    if instance is not None and instance == row["instance"]:
        return
    if instance is not None and instance == row.get("previous_instance"):
        # The run the session was taken from is alive: the taker was a copy of its work dir.
        # Two live agents are never both served: the original keeps the identity.
        conn.execute(update(workers).where(workers.c.id == worker_id)
                     .values(instance=instance, previous_instance=None,
                             banned_instance=row["instance"], session_nonce=new_nonce()))
        row["instance"], row["previous_instance"] = instance, None
        return
    raise IdentityInUse(
        "this agent run does not hold the worker's session: another live agent uses this "
        "identity (was the work dir copied from another machine?). Remove identity.json from "
        "this work dir and enroll this agent with a join token"
    )


def touch(conn: Connection, worker_id: int, now: float, state: str | None = None,
          reason: str | None = None, resources: dict | None = None,
          nonce: str | None = None) -> None:
    values: dict[str, Any] = {"last_seen": now, "instance_seen_at": now}
    if nonce is not None:
        values["session_nonce"] = nonce
    if state is not None:
        values["state"] = state
        values["reason"] = reason
    if resources is not None:
        values["resources"] = dumps(resources)
    conn.execute(update(workers).where(workers.c.id == worker_id).values(**values))


def set_draining(conn: Connection, name: str, draining: bool = True) -> dict[str, Any]:
    """Drain a worker, or undo it (which also lifts a sidelining: the operator vouches)."""
    w = get(conn, name)
    values: dict[str, Any] = {"draining": draining}
    if not draining:
        values.update(sidelined_until=None, consecutive_failures=0, failure_jobs=None)
    conn.execute(update(workers).where(workers.c.id == w["id"]).values(**values))
    w["draining"] = draining
    return w


def record_success(conn: Connection, worker_id: int) -> None:
    conn.execute(
        update(workers).where(workers.c.id == worker_id)
        .values(consecutive_failures=0, failure_jobs=None, completed=workers.c.completed + 1)
    )


def record_failure(conn: Connection, worker_id: int, job_id: int, now: float, threshold: int,
                   sideline_seconds: float) -> bool:
    """Count a failed unit against the worker's health; return True if it is now sidelined.

    A worker is sidelined (no work for ``sideline_seconds``) after ``threshold`` consecutive
    failures when there is evidence the host, not the job, is bad: the failures span at least
    two jobs, or other workers completed units of the jobs it failed. One bad job must not
    sideline the whole fleet, but a black-hole host that fails everything must not drain the
    queue either (the "black hole" protection of BOINC and HTCondor).
    """
    row = conn.execute(
        select(workers.c.consecutive_failures, workers.c.failure_jobs)
        .where(workers.c.id == worker_id)
    ).one()
    jobs = set(loads(row.failure_jobs) or [])
    jobs.add(job_id)
    n = row.consecutive_failures + 1
    sideline = n >= threshold and (len(jobs) >= 2 or _others_succeed(conn, worker_id, jobs))
    values: dict[str, Any] = {
        "consecutive_failures": 0 if sideline else n,
        "failure_jobs": None if sideline else json.dumps(sorted(jobs)),
        "failed": workers.c.failed + 1,
    }
    if sideline:
        values["sidelined_until"] = now + sideline_seconds
    conn.execute(update(workers).where(workers.c.id == worker_id).values(**values))
    return sideline


def _others_succeed(conn: Connection, worker_id: int, job_ids: set[int]) -> bool:
    row = conn.execute(
        select(units.c.id).where(units.c.job_id.in_(job_ids), units.c.state == "done",
                                 units.c.worker_id != worker_id).limit(1)
    ).first()
    return row is not None


def list_all(conn: Connection, now: float, offline_after: float) -> list[dict[str, Any]]:
    """Every worker with its active units and the release it last ran; offline if silent."""
    rows = [dict(r._mapping) for r in conn.execute(select(workers).order_by(workers.c.name))]
    active = conn.execute(
        select(attempts.c.worker_id, attempts.c.unit_id, attempts.c.release_id)
        .where(attempts.c.state == "active")
    ).all()
    last_release = {
        r.worker_id: r.release_id for r in conn.execute(
            select(attempts.c.worker_id, attempts.c.release_id,
                   func.max(attempts.c.leased_at)).group_by(attempts.c.worker_id,
                                                            attempts.c.release_id)
            .order_by(func.max(attempts.c.leased_at))
        )
    }
    revoked = {r.id for r in conn.execute(select(tokens.c.id).where(tokens.c.revoked.is_(True)))}
    for w in rows:
        w["active_units"] = [a.unit_id for a in active if a.worker_id == w["id"]]
        w["release"] = last_release.get(w["id"])
        # Derived from the store, not only from the last heartbeat, so the view is current.
        # The owner policy may hold a worker's units (suspended, paused...): its own word wins.
        held = w["state"] not in (None, "idle", "running", "draining", "offline")
        if w["active_units"] and not held:
            w["state"], w["reason"] = "running", None
        elif w["draining"]:
            w["state"], w["reason"] = "draining", "finishing, taking no more units"
        elif w["state"] == "running":
            w["state"] = "idle"
        if w["token_id"] in revoked:
            w["state"], w["reason"] = "revoked", "its token was revoked"
        elif w["last_seen"] is None or w["last_seen"] < now - offline_after:
            w["state"], w["reason"] = "offline", "no heartbeat"
        elif w["sidelined_until"] and w["sidelined_until"] > now:
            w["state"] = "sidelined"
            w["reason"] = "failed many units of different jobs in a row"
    return rows


def unit_ids_of(conn: Connection, worker_id: int) -> list[int]:
    return [r.id for r in conn.execute(select(units.c.id).where(units.c.worker_id == worker_id))]
