"""Queries on jobs and the read side of units/attempts (status, results, logs)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, insert, select

from officegrid.server.store.common import Invalid, NotFound, dumps, loads
from officegrid.server.store.schema import attempts, channels, jobs, releases, units, workers


def create(conn: Connection, spec: dict[str, Any], now: float, retry_budget: int,
           lost_budget: int) -> int:
    """Create a job and all its units in the caller's transaction; return the job id.

    ``spec`` is a ``protocol.JobCreate`` as a dict. Every unit input blob must already be stored
    (checked by the caller).

    Raises:
        Invalid: no units, or both/neither of channel and release.
        NotFound: the channel or pinned release does not exist.
    """
    if not spec["units"]:
        raise Invalid("a job needs at least one record")
    if spec.get("release"):
        if conn.execute(select(releases.c.id).where(releases.c.id == spec["release"])
                        ).first() is None:
            raise NotFound(f"no release {spec['release']!r}")
        channel = None
    else:
        channel = spec.get("channel") or "worker"
        if conn.execute(select(channels.c.name).where(channels.c.name == channel)).first() is None:
            raise NotFound(
                f"channel {channel!r} points at no release yet: publish one with "
                f"`officegrid release create DIR --channel {channel}` or promote into it"
            )
    records = sum(u["count"] for u in spec["units"])
    job_id = conn.execute(
        insert(jobs).values(
            name=spec.get("name"), state="running", entry=spec["entry"], channel=channel,
            release_id=spec.get("release"), key=spec.get("key"),
            priority=spec.get("priority", 0), input_name=spec.get("input_name"),
            retry_budget=retry_budget if spec.get("retry_budget") is None
            else spec["retry_budget"],
            lost_budget=lost_budget if spec.get("lost_budget") is None else spec["lost_budget"],
            unit_count=len(spec["units"]), record_count=records,
            bad_rows=dumps(spec.get("bad_rows") or []), data=dumps(spec.get("data") or []),
            created_at=now,
        )
    ).inserted_primary_key[0]
    conn.execute(
        insert(units),
        [
            {"job_id": job_id, "seq": i, "state": "queued", "count": u["count"],
             "first_key": dumps(u["first_key"]), "last_key": dumps(u["last_key"]),
             "input_blob": u["input"], "records_done": 0, "record_errors": 0,
             "failures": 0, "losses": 0}
            for i, u in enumerate(spec["units"])
        ],
    )
    return job_id


def _counts(conn: Connection, job_id: int) -> dict[str, int]:
    counts = {"units": 0, "queued": 0, "leased": 0, "done": 0, "quarantined": 0, "cancelled": 0,
              "records": 0, "records_done": 0, "record_errors": 0}
    for r in conn.execute(
        select(units.c.state, func.count(), func.sum(units.c.count),
               func.sum(units.c.records_done), func.sum(units.c.record_errors))
        .where(units.c.job_id == job_id).group_by(units.c.state)
    ):
        state, n, recs, done, errs = r
        counts[state] = n
        counts["units"] += n
        counts["records"] += int(recs or 0)
        counts["records_done"] += int(done or 0)
        counts["record_errors"] += int(errs or 0)
    return counts


def get(conn: Connection, job_id: int) -> dict[str, Any]:
    """A job with its counts and records per release. Raises NotFound."""
    row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
    if row is None:
        raise NotFound(f"no job {job_id}")
    return _info(conn, row)


def _info(conn: Connection, row: Any) -> dict[str, Any]:
    job = dict(row._mapping)
    per_release = {
        r.release_id: int(r.n or 0) for r in conn.execute(
            select(units.c.release_id, func.sum(units.c.count).label("n"))
            .where(units.c.job_id == job["id"], units.c.state == "done")
            .group_by(units.c.release_id)
        )
    }
    times = conn.execute(
        select(func.min(units.c.done_at), func.max(units.c.done_at))
        .where(units.c.job_id == job["id"], units.c.state == "done")
    ).one()
    return {
        "id": job["id"], "name": job["name"], "state": job["state"], "reason": job["reason"],
        "entry": job["entry"], "channel": job["channel"], "release": job["release_id"],
        "key": job["key"], "priority": job["priority"], "created_at": job["created_at"],
        "finished_at": job["finished_at"], "counts": _counts(conn, job["id"]),
        "releases": per_release, "bad_rows": loads(job["bad_rows"]) or [],
        "first_done_at": times[0], "last_done_at": times[1],
    }


def list_all(conn: Connection, limit: int = 50) -> list[dict[str, Any]]:
    rows = conn.execute(select(jobs).order_by(jobs.c.id.desc()).limit(limit)).all()
    return [_info(conn, r) for r in rows]


def _unit_info(r: Any) -> dict[str, Any]:
    return {
        "id": r.id, "job_id": r.job_id, "seq": r.seq, "state": r.state, "count": r.count,
        "first_key": loads(r.first_key), "last_key": loads(r.last_key), "input": r.input_blob,
        "result": r.result_blob, "columns": loads(r.columns), "release": r.release_id,
        "env": r.env, "worker": r.worker_name, "records_done": r.records_done,
        "record_errors": r.record_errors, "failures": r.failures, "losses": r.losses,
        "last_error": r.last_error,
    }


def list_units(conn: Connection, job_id: int, after_seq: int = -1, limit: int = 1000
               ) -> list[dict[str, Any]]:
    """A page of a job's units in sequence order (for results export and status)."""
    if conn.execute(select(jobs.c.id).where(jobs.c.id == job_id)).first() is None:
        raise NotFound(f"no job {job_id}")
    q = (
        select(units, workers.c.name.label("worker_name"))
        .outerjoin(workers, workers.c.id == units.c.worker_id)
        .where(units.c.job_id == job_id, units.c.seq > after_seq)
        .order_by(units.c.seq).limit(limit)
    )
    return [_unit_info(r) for r in conn.execute(q)]


def get_unit(conn: Connection, unit_id: int) -> dict[str, Any]:
    q = (select(units, workers.c.name.label("worker_name"))
         .outerjoin(workers, workers.c.id == units.c.worker_id).where(units.c.id == unit_id))
    r = conn.execute(q).first()
    if r is None:
        raise NotFound(f"no unit {unit_id}")
    return _unit_info(r)


def list_attempts(conn: Connection, unit_id: int | None = None, job_id: int | None = None
                  ) -> list[dict[str, Any]]:
    """Attempts of one unit or of every unit of a job, oldest first."""
    q = (select(attempts, workers.c.name.label("worker_name"))
         .join(workers, workers.c.id == attempts.c.worker_id))
    if unit_id is not None:
        q = q.where(attempts.c.unit_id == unit_id)
    if job_id is not None:
        q = q.join(units, units.c.id == attempts.c.unit_id).where(units.c.job_id == job_id)
    out = []
    for r in conn.execute(q.order_by(attempts.c.leased_at)):
        out.append({
            "id": r.id, "unit_id": r.unit_id, "worker": r.worker_name, "release": r.release_id,
            "state": r.state, "leased_at": r.leased_at, "finished_at": r.finished_at,
            "error": r.error, "log": r.log_blob,
        })
    return out
