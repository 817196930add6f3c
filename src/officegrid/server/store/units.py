"""Every state transition of a unit and of its attempts, in one place.

Unit states (``protocol.UnitState``)::

    queued ──claim──▶ leased ──complete (first)──▶ done
      ▲                 │  ├──fail, budget left / vacate / expire──▶ queued
      │                 │  └──fail or expire, budget spent─────────▶ quarantined ──retry──▶ queued
      └─────────────────┘     (while another attempt of the unit is active it stays leased)
    queued ──complete (an attempt whose lease had expired)──▶ done
    queued | leased ──cancel──▶ cancelled
    leased ──vacate with a finished prefix (first)──▶ done (the prefix) + a new queued unit (rest)

Attempt states (``protocol.AttemptState``): active → completed | discarded | failed | lost |
vacated | aborted.

Exactly-once recording (DESIGN.md promise 1): the worker stores the result blob first; then
:func:`complete` commits the unit's completion with one conditional UPDATE (``WHERE state IN
(queued, leased)``). The first completion by any attempt issued for the unit while it is open
wins; any later one is acknowledged and discarded; one for an attempt never issued is refused.
Lease expiry is judged by the server's clock only (``now`` is always passed in by the server).

Budgets: a unit may fail ``retry_budget`` times and be retried (so it runs at most budget + 1
times) before it is quarantined; lost leases have their own, larger ``lost_budget``; a vacate
costs nothing; import failures of a release count per (job, release) and pause the job.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, case, delete, exists, func, insert, select, update

from officegrid.server.store import workers as workers_q
from officegrid.server.store.common import Conflict, Forbidden, Invalid, NotFound, dumps
from officegrid.server.store.schema import (
    attempts,
    channels,
    import_failures,
    jobs,
    releases,
    units,
)

OPEN = ("queued", "leased")


@dataclass(frozen=True)
class Policy:
    """The numbers transitions depend on (from ServerSettings); durations in seconds."""

    lease_seconds: float
    import_pause_after: int = 3
    unhealthy_after: int = 5
    sideline_seconds: float = 600.0
    speculative_after: float = 60.0


def _new_attempt_id() -> str:
    return uuid.uuid4().hex


def _active_attempts(conn: Connection, unit_id: int) -> int:
    return conn.execute(
        select(func.count()).select_from(attempts)
        .where(attempts.c.unit_id == unit_id, attempts.c.state == "active")
    ).scalar_one()


def _channel_release(conn: Connection, channel: str | None,
                     cache: dict[str, str | None]) -> str | None:
    if channel is None:
        return None
    if channel not in cache:
        q = select(channels.c.release_id).where(channels.c.name == channel)
        r = conn.execute(q).first()
        cache[channel] = r.release_id if r else None
    return cache[channel]


def _lease(row: Any, entry: str, attempt_id: str, release: str, now: float, policy: Policy,
           speculative: bool = False, data: str | None = None) -> dict[str, Any]:
    return {
        "attempt": attempt_id, "unit": row.id, "job": row.job_id, "seq": row.seq,
        "release": release, "entry": entry, "input": row.input_blob, "count": row.count,
        "expires_at": now + policy.lease_seconds, "lease_seconds": policy.lease_seconds,
        "speculative": speculative, "data": _data_required(data),
    }


def _data_required(text: str | None) -> dict[str, Any]:
    """A job's data sources: ``{name: [epoch, position at submit]}`` (older jobs: none)."""
    value = json.loads(text) if text else None
    return value if isinstance(value, dict) else {}


def _insert_attempt(conn: Connection, unit_id: int, worker_id: int, release: str, now: float,
                    policy: Policy, speculative: bool) -> str:
    attempt_id = _new_attempt_id()
    conn.execute(
        insert(attempts).values(id=attempt_id, unit_id=unit_id, worker_id=worker_id,
                                release_id=release, state="active", speculative=speculative,
                                leased_at=now, expires_at=now + policy.lease_seconds, progress=0)
    )
    return attempt_id


def _release_env(conn: Connection, release: str, cache: dict[str, str | None]) -> str | None:
    if release not in cache:
        cache[release] = conn.execute(select(releases.c.env).where(releases.c.id == release)
                                      ).scalar_one_or_none()
    return cache[release]


def claim(conn: Connection, worker_id: int, n: int, now: float, policy: Policy,
          skip_releases: frozenset[str] = frozenset(), skip_locked: bool = False, *,
          prepared: frozenset[str] | None = None, cached: frozenset[str] | None = None,
          held_back: dict[str, str] | None = None, data: dict[str, list[Any]] | None = None,
          epochs: dict[str, str] | None = None,
          behind: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Lease up to ``n`` queued units to ``worker_id`` (queued → leased); return Lease dicts.

    Order: job priority (high first), then job id, then unit sequence. Units this worker already
    failed are offered only when nothing else is left, so one bad host cannot burn a unit's whole
    retry budget by itself. A unit of a job that follows a channel gets the release the channel
    points to now. ``skip_locked`` (PostgreSQL) lets several server processes claim concurrently
    without waiting on each other.

    Held back (never leased, so no lease waits on a transfer or a build): with ``cached`` (the
    worker is outside its transfer window), releases not in it; with ``prepared`` (the worker
    reports which environments it built), releases that have an environment (``releases.env``)
    not in it. ``held_back`` (if given) receives release id -> ``"window"`` or ``"prepare"``
    for each release held back; the worker should prepare the latter and ask again. With
    ``data`` (data source -> ``[epoch, position]`` of the worker's replica), jobs that need a
    source the worker does not follow, or whose required position (``jobs.data``, the master's
    head at submit) the replica has not reached in the master's current epoch (``epochs``:
    source -> current epoch; a new epoch's positions continue above the old head, so position
    numbers compare across epochs, but a replica still in an older epoch holds withdrawn data,
    e.g. of a master restored from a backup); without a known current epoch the job's own
    epoch is required. ``behind`` (if given) receives source -> the position to reach, so the
    worker catches up before it holds a lease, not while the lease runs.
    """
    env_cache: dict[str, str | None] = {}

    def lacks_data(job_data: str | None) -> dict[str, int]:
        """Sources (-> required position) this worker's replicas do not reach yet."""
        if data is None or not job_data:
            return {}
        need = {}
        for name, (req_epoch, req_pos) in _data_required(job_data).items():
            have = data.get(name)
            epoch = (epochs or {}).get(name) or req_epoch
            if have is None or have[0] != epoch or int(have[1]) < int(req_pos):
                need[name] = int(req_pos)
        return need

    def hold_job(job: Any) -> bool:
        need = lacks_data(job.data)
        if need and cached is not None:  # outside the transfer window: nothing to follow now
            if held_back is not None:
                for name in need:
                    held_back.setdefault(f"data:{name}", "window")
            return True
        if need and behind is not None and conn.execute(
                select(units.c.id).where(units.c.job_id == job.id, units.c.state == "queued")
                .limit(1)).first() is not None:
            for name, pos in need.items():  # only jobs with queued units make it replicate
                behind[name] = max(pos, behind.get(name, pos))
        return bool(need)

    def hold(release: str) -> str | None:
        if cached is not None and release not in cached:
            why = "window"
        elif prepared is not None and release not in prepared and \
                _release_env(conn, release, env_cache) is not None:
            why = "prepare"
        else:
            return None
        if held_back is not None:
            held_back.setdefault(release, why)
        return why

    running = conn.execute(
        select(jobs.c.id, jobs.c.entry, jobs.c.channel, jobs.c.release_id, jobs.c.data)
        .where(jobs.c.state == "running").order_by(jobs.c.priority.desc(), jobs.c.id)
    ).all()
    failed_here = exists().where(attempts.c.unit_id == units.c.id,
                                 attempts.c.worker_id == worker_id,
                                 attempts.c.state == "failed")
    leases: list[dict[str, Any]] = []
    channel_cache: dict[str, str | None] = {}
    running = [job for job in running if not hold_job(job)]
    for avoid_failed in (True, False):
        for job in running:
            if len(leases) >= n:
                break
            job_release = job.release_id or _channel_release(conn, job.channel, channel_cache)
            # One index range scan per job (units by job, state, seq): no sort of the queue.
            q = (select(units.c.id, units.c.job_id, units.c.seq, units.c.input_blob,
                        units.c.count, units.c.pinned_release)
                 .where(units.c.job_id == job.id, units.c.state == "queued")
                 .order_by(units.c.seq).limit(n - len(leases) + len(skip_releases) * 4))
            if avoid_failed:
                q = q.where(~failed_here)
            if skip_locked:
                q = q.with_for_update(of=units, skip_locked=True)
            for row in conn.execute(q).all():
                if len(leases) >= n:
                    break
                release = row.pinned_release or job_release
                if release is None or release in skip_releases or hold(release):
                    continue
                res = conn.execute(
                    update(units).where(units.c.id == row.id, units.c.state == "queued")
                    .values(state="leased", leased_at=now))
                if res.rowcount != 1:
                    continue
                attempt_id = _insert_attempt(conn, row.id, worker_id, release, now, policy,
                                             False)
                leases.append(_lease(row, job.entry, attempt_id, release, now, policy,
                                     data=job.data))
        if leases:
            break
    if not leases:
        spec = claim_speculative(conn, worker_id, now, policy, skip_locked,
                                 allow=lambda r, d: (r not in skip_releases and not hold(r)
                                                     and not lacks_data(d)))
        if spec:
            leases.append(spec)
    return leases


def has_queued(conn: Connection) -> bool:
    """True if some running job has a queued unit (a read: long polls ask this before taking
    the write lock)."""
    return conn.execute(
        select(units.c.id).join(jobs, jobs.c.id == units.c.job_id)
        .where(units.c.state == "queued", jobs.c.state == "running").limit(1)
    ).first() is not None


def claim_speculative(conn: Connection, worker_id: int, now: float, policy: Policy,
                      skip_locked: bool = False,
                      allow: Callable[[str, str | None], bool] | None = None
                      ) -> dict[str, Any] | None:
    """Near a job's end, give an idle worker a second copy of its oldest slow unit.

    Eligible: a leased unit of a running job with no queued units left, leased longer than
    ``speculative_after`` seconds ago, with exactly one active attempt, never tried by this
    worker. The copy runs the release of the running attempt; the first completion wins.
    ``allow`` ((release id, the job's data requirement) -> bool) can refuse the copy (e.g. its
    release's environment is not built on this worker, or its replicas are behind).
    """
    a2 = attempts.alias("a2")
    u2 = units.alias("u2")
    active_count = (
        select(func.count()).select_from(a2)
        .where(a2.c.unit_id == units.c.id, a2.c.state == "active").scalar_subquery()
    )
    q = (
        select(units.c.id, units.c.job_id, units.c.seq, units.c.input_blob, units.c.count,
               jobs.c.entry, jobs.c.data)
        .join(jobs, jobs.c.id == units.c.job_id)
        .where(
            units.c.state == "leased", jobs.c.state == "running",
            units.c.leased_at < now - policy.speculative_after,
            ~exists().where(u2.c.job_id == units.c.job_id, u2.c.state == "queued"),
            ~exists().where(a2.c.unit_id == units.c.id, a2.c.worker_id == worker_id),
            active_count == 1,
        )
        .order_by(units.c.leased_at)
        .limit(1)
    )
    if skip_locked:
        q = q.with_for_update(of=units, skip_locked=True)
    row = conn.execute(q).first()
    if row is None:
        return None
    release = conn.execute(
        select(attempts.c.release_id)
        .where(attempts.c.unit_id == row.id, attempts.c.state == "active")
    ).scalar_one()
    if allow is not None and not allow(release, row.data):
        return None
    attempt_id = _insert_attempt(conn, row.id, worker_id, release, now, policy, True)
    return _lease(row, row.entry, attempt_id, release, now, policy, speculative=True,
                  data=row.data)


def _attempt_for(conn: Connection, attempt_id: str, worker_id: int) -> Any:
    a = conn.execute(select(attempts).where(attempts.c.id == attempt_id)).first()
    if a is None:
        raise NotFound(f"attempt {attempt_id!r} was never issued")
    if a.worker_id != worker_id:
        raise Forbidden(f"attempt {attempt_id} was issued to another worker")
    return a


def complete(conn: Connection, attempt_id: str, worker_id: int, result_blob: str,
             columns: list[str], records_done: int, record_errors: int, log_blob: str | None,
             now: float, env: str | None = None) -> str:
    """Record an attempt's result; return ``"accepted"`` or ``"discarded"``.

    ``env`` is the environment hash the attempt ran in (None: the release has no lock).

    The result blob must already be stored. Idempotent: repeating an accepted completion
    returns ``"accepted"`` again without a second effect.

    Raises:
        NotFound: the attempt was never issued (a forged or mistyped id).
        Forbidden: the attempt belongs to another worker.
        Conflict: the attempt already reported a failure.
    """
    a = conn.execute(
        select(attempts, units.c.count.label("unit_count"), units.c.job_id,
               units.c.state.label("unit_state"))
        .join(units, units.c.id == attempts.c.unit_id).where(attempts.c.id == attempt_id)
    ).first()
    if a is None:
        raise NotFound(f"attempt {attempt_id!r} was never issued")
    if a.worker_id != worker_id:
        raise Forbidden(f"attempt {attempt_id} was issued to another worker")
    if a.state == "completed":
        return "accepted"
    if a.state == "failed":
        raise Conflict(f"attempt {attempt_id} already reported a failure")
    if records_done + record_errors != a.unit_count and a.unit_state not in OPEN:
        # The unit was split by a vacate (its count is now the prefix's) and is closed: this
        # whole-unit result comes second, so it is discarded like any later completion.
        conn.execute(update(attempts).where(attempts.c.id == attempt_id)
                     .values(state="discarded", finished_at=now, log_blob=log_blob))
        return "discarded"
    if records_done + record_errors != a.unit_count:
        # A result must cover the unit's records exactly; anything else is a worker bug.
        raise Invalid(
            f"result covers {records_done} records + {record_errors} errors, "
            f"unit {a.unit_id} has {a.unit_count} records"
        )
    res = conn.execute(
        update(units).where(units.c.id == a.unit_id, units.c.state.in_(OPEN))
        .values(state="done", result_blob=result_blob, columns=dumps(columns),
                release_id=a.release_id, worker_id=worker_id, attempt_id=attempt_id,
                records_done=records_done, record_errors=record_errors, done_at=now, env=env)
    )
    if res.rowcount == 1:
        # This attempt completes; other copies still running are told to stop at their next
        # heartbeat (one statement for both).
        me = attempts.c.id == attempt_id
        conn.execute(
            update(attempts)
            .where(attempts.c.unit_id == a.unit_id, me | (attempts.c.state == "active"))
            .values(state=case((me, "completed"), else_="aborted"), finished_at=now,
                    log_blob=case((me, log_blob), else_=attempts.c.log_blob),
                    progress=case((me, records_done + record_errors),
                                  else_=attempts.c.progress),
                    error=case((me, None), else_="another attempt completed")))
        conn.execute(delete(import_failures).where(import_failures.c.job_id == a.job_id,
                                                   import_failures.c.release_id == a.release_id))
        workers_q.record_success(conn, worker_id)
        finalize_job(conn, a.job_id, now)
        return "accepted"
    conn.execute(update(attempts).where(attempts.c.id == attempt_id)
                 .values(state="discarded", finished_at=now, log_blob=log_blob))
    return "discarded"


def _requeue_or_quarantine(conn: Connection, unit_id: int, now: float, quarantine: bool,
                           error: str | None) -> str:
    """Move an open unit with no other active attempt to queued or quarantined."""
    if _active_attempts(conn, unit_id) > 0:
        if error is not None:
            conn.execute(update(units).where(units.c.id == unit_id).values(last_error=error))
        return "leased"
    state = "quarantined" if quarantine else "queued"
    values: dict[str, Any] = {"state": state, "leased_at": None}
    if error is not None:
        values["last_error"] = error
    conn.execute(update(units).where(units.c.id == unit_id, units.c.state.in_(OPEN))
                 .values(**values))
    return state


def fail(conn: Connection, attempt_id: str, worker_id: int, kind: str, error: str,
         log_blob: str | None, now: float, policy: Policy) -> dict[str, Any]:
    """Record a failed attempt; return ``{"unit": new state, "job_paused": bool}``.

    ``kind`` is a ``protocol.FailureKind``. ``crash`` and ``setup`` failures use the unit's retry
    budget and count against the worker's health; ``import_error`` counts per (job, release)
    and pauses the job after ``policy.import_pause_after`` failures with no success in between,
    instead of quarantining every unit; ``refused`` (a worker will not run the release, e.g.
    unsigned) pauses it at once. A report for an attempt no longer active is ignored.
    """
    a = _attempt_for(conn, attempt_id, worker_id)
    if a.state != "active":
        return {"unit": None, "job_paused": False}
    conn.execute(update(attempts).where(attempts.c.id == attempt_id)
                 .values(state="failed", finished_at=now, error=error, log_blob=log_blob))
    unit = conn.execute(select(units).where(units.c.id == a.unit_id)).one()
    job = conn.execute(select(jobs).where(jobs.c.id == unit.job_id)).one()
    paused = False
    if kind in ("crash", "setup"):  # the job's own import errors or a refusal by policy say
        # nothing about the host's health
        workers_q.record_failure(conn, worker_id, job.id, now, policy.unhealthy_after,
                                 policy.sideline_seconds)
    if unit.state not in OPEN:
        return {"unit": unit.state, "job_paused": False}
    if kind in ("import_error", "refused"):
        key = (import_failures.c.job_id == job.id) & (import_failures.c.release_id == a.release_id)
        row = conn.execute(select(import_failures.c.failures).where(key)).first()
        if row is None:
            conn.execute(insert(import_failures).values(job_id=job.id, release_id=a.release_id,
                                                        failures=1, last_error=error))
            count = 1
        else:
            count = row.failures + 1
            conn.execute(update(import_failures).where(key)
                         .values(failures=count, last_error=error))
        # A refusal is deliberate (a policy of the worker), so it pauses at once.
        limit = 1 if kind == "refused" else policy.import_pause_after
        if count >= limit and job.state == "running":
            last = error.strip().splitlines()[-1] if error.strip() else "import failed"
            what = "was refused by a worker" if kind == "refused" else \
                f"cannot be imported ({count} attempts)"
            conn.execute(update(jobs).where(jobs.c.id == job.id, jobs.c.state == "running")
                         .values(state="paused",
                                 reason=f"release {a.release_id[:12]} {what}: {last}"))
            paused = True
        state = _requeue_or_quarantine(conn, unit.id, now, False, error)
    else:
        failures = unit.failures + 1
        conn.execute(update(units).where(units.c.id == unit.id).values(failures=failures))
        state = _requeue_or_quarantine(conn, unit.id, now, failures > job.retry_budget, error)
    finalize_job(conn, job.id, now)
    return {"unit": state, "job_paused": paused}


def pause_for_broken_env(conn: Connection, release_id: str, error: str, now: float
                         ) -> list[int]:
    """Pause every running job that runs ``release_id`` (pinned, or its channel points there)
    because no live worker can build its environment; return the job ids paused.
    ``officegrid retry JOB`` resumes such a job."""
    on_channel = select(channels.c.name).where(channels.c.release_id == release_id)
    rows = conn.execute(
        select(jobs.c.id).where(jobs.c.state == "running",
                                (jobs.c.release_id == release_id)
                                | (jobs.c.release_id.is_(None) & jobs.c.channel.in_(on_channel)))
    ).all()
    return _pause_jobs(conn, [r.id for r in rows], _broken_env_reason(release_id, error))


def _broken_env_reason(release_id: str, error: str) -> str:
    # The installer's error and cause lines say what failed (pip: "ERROR: ...", uv: "error:
    # ..." then "Caused by: ..."), with the package and hashes of a mismatch (envs.errors).
    from officegrid.envs.errors import summarize

    tail = summarize(error) or "environment build failed"
    return (f"release {release_id[:12]}: its environment cannot be built on any live worker: "
            f"{tail}")


def _pause_jobs(conn: Connection, job_ids: list[int], reason: str) -> list[int]:
    paused = []
    for job_id in job_ids:
        res = conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.state == "running")
                           .values(state="paused", reason=reason[:4000]))
        if res.rowcount == 1:
            paused.append(job_id)
    return paused


ENV_WAITING = "waiting: "  # prefix of a running job's reason while it waits for environments


def review_env_jobs(conn: Connection, now: float, live_after: float) -> list[int]:
    """Re-check running jobs whose next queued unit needs an environment (the reaper calls this:
    a worker's report is not the only moment the answer changes, live workers also go away).

    Per job, with the live workers (seen within ``live_after`` seconds): if none reports the
    release prepared and every one has reported it broken (at least one), the job pauses with
    the installer's error, as at a report; if none reports it prepared but some have not yet
    reported anything, the job's reason says it waits (``"waiting: environment of release X is
    being built on N workers"``, plus the error of those where it broke); once a live worker
    has it prepared (or nothing of the job is queued) the waiting reason is cleared. Only
    reasons this function wrote are replaced. Returns the job ids paused.
    """
    from officegrid.envs.errors import summarize
    from officegrid.server.store import releases as releases_q

    running = conn.execute(
        select(jobs.c.id, jobs.c.release_id, jobs.c.channel, jobs.c.reason)
        .where(jobs.c.state == "running").order_by(jobs.c.id)).all()
    if not running or (conn.execute(select(releases.c.id).where(releases.c.env.is_not(None))
                                    .limit(1)).first() is None
                       and not any((j.reason or "").startswith(ENV_WAITING) for j in running)):
        return []  # no environments at all: nothing to check (one query per reaper round)
    channel_cache: dict[str, str | None] = {}
    env_cache: dict[str, str | None] = {}
    waiting: dict[int, str] = {}  # job id -> release whose environment it needs
    for job in running:
        nxt = conn.execute(
            select(units.c.pinned_release)
            .where(units.c.job_id == job.id, units.c.state == "queued")
            .order_by(units.c.seq).limit(1)).first()
        release = None if nxt is None else (
            nxt.pinned_release or job.release_id
            or _channel_release(conn, job.channel, channel_cache))
        if release is not None and _release_env(conn, release, env_cache) is not None:
            waiting[job.id] = release
    reasons = {job.id: job.reason for job in running}
    new_reason: dict[int, str | None] = {}
    to_pause: dict[int, str] = {}
    if waiting:
        live, broken = releases_q.env_view(conn, set(waiting.values()), now, live_after)
        for job_id, release in waiting.items():
            if any(release in prepared for prepared in live.values()):
                continue  # it runs (or waits for something else)
            failed = broken.get(release, {})
            building = [w for w in live if w not in failed]
            if failed and not building:
                to_pause[job_id] = _broken_env_reason(release, next(iter(failed.values())))
                continue
            if building:
                n = len(building)
                text = (f"{ENV_WAITING}environment of release {release[:12]} is being built on "
                        f"{n} worker{'s' if n != 1 else ''}")
            else:
                text = (f"{ENV_WAITING}no live worker to build the environment of release "
                        f"{release[:12]}")
            if failed:
                first = summarize(next(iter(failed.values())), max_lines=3)
                text += f"; broken on {len(failed)}: {first}"
            new_reason[job_id] = text[:4000]
    for job_id, old in reasons.items():
        if job_id in to_pause:
            continue
        want = new_reason.get(job_id)
        if want == old or (old is not None and not old.startswith(ENV_WAITING)):
            continue  # unchanged, or a reason someone else wrote
        conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.state == "running")
                     .values(reason=want))
    paused = []
    for job_id, reason in to_pause.items():
        paused += _pause_jobs(conn, [job_id], reason)
    return paused


def vacate(conn: Connection, attempt_id: str, worker_id: int, reason: str,
           log_blob: str | None, now: float) -> str | None:
    """The worker gives a unit back (owner returned, shutdown): no budget is used.

    Returns the unit's new state, or None if the attempt was no longer active.
    """
    a = _attempt_for(conn, attempt_id, worker_id)
    if a.state != "active":
        return None
    conn.execute(update(attempts).where(attempts.c.id == attempt_id)
                 .values(state="vacated", finished_at=now, error=reason, log_blob=log_blob))
    state = conn.execute(select(units.c.state).where(units.c.id == a.unit_id)).scalar_one()
    if state in OPEN:
        state = _requeue_or_quarantine(conn, a.unit_id, now, False, None)
    return state


def vacate_info(conn: Connection, attempt_id: str, worker_id: int) -> dict[str, Any]:
    """What a partial vacate needs to split the unit: ``{"attempt_state", "unit_state",
    "input", "count"}`` of the attempt's unit (a read).

    Raises NotFound / Forbidden like :func:`vacate`."""
    a = _attempt_for(conn, attempt_id, worker_id)
    u = conn.execute(select(units.c.state, units.c.input_blob, units.c.count)
                     .where(units.c.id == a.unit_id)).one()
    return {"attempt_state": a.state, "unit_state": u.state, "input": u.input_blob,
            "count": u.count}


def vacate_partial(conn: Connection, attempt_id: str, worker_id: int, reason: str,
                   log_blob: str | None, done: int, result_blob: str, columns: list[str],
                   records_done: int, record_errors: int, prefix_input: str, rest_input: str,
                   prefix_last_key: Any, rest_first_key: Any, now: float,
                   env: str | None = None) -> dict[str, Any]:
    """Vacate with a finished prefix: the unit's first ``done`` records are committed as done
    (their result, their release) and the rest becomes a new queued unit.

    The caller stores the result blob and the two input blobs (``prefix_input``: the first
    ``done`` lines of the unit's input, ``rest_input``: the others) before this transaction.
    The unit row keeps its id and sequence and becomes the done prefix; the new unit takes
    ``seq + 1`` (later units of the job move up by one), so results export in record order.
    The rest unit has no pinned release unless the unit had one: it may run a newer release.

    Exactly once: the commit is the same conditional update as :func:`complete` (``WHERE state
    IN (queued, leased) AND count = expected``): if another attempt completed the unit first,
    this one is discarded (``{"outcome": "discarded"}``) and nothing is split; other active
    attempts of the unit are aborted (they ran the whole unit, whose rest now lives elsewhere).

    Returns ``{"outcome": "split" | "discarded" | "ignored", "rest_unit": id | None}``
    ("ignored": the attempt was no longer active).

    Raises:
        NotFound / Forbidden: as :func:`vacate`.
        Invalid: ``done`` is not inside the unit, or the result does not cover ``done``.
    """
    a = _attempt_for(conn, attempt_id, worker_id)
    if a.state != "active":
        return {"outcome": "ignored", "rest_unit": None}
    unit = conn.execute(select(units).where(units.c.id == a.unit_id)).one()
    if not 0 < done < unit.count:
        raise Invalid(f"a vacate's done={done} must be between 1 and {unit.count - 1} "
                      f"(unit {unit.id} has {unit.count} records)")
    if records_done + record_errors != done:
        raise Invalid(f"partial result covers {records_done} records + {record_errors} errors, "
                      f"the vacate says {done} are done")
    res = conn.execute(
        update(units).where(units.c.id == unit.id, units.c.state.in_(OPEN),
                            units.c.count == unit.count)
        .values(state="done", count=done, input_blob=prefix_input,
                last_key=dumps(prefix_last_key), result_blob=result_blob,
                columns=dumps(columns), release_id=a.release_id, worker_id=worker_id,
                attempt_id=attempt_id, records_done=records_done,
                record_errors=record_errors, done_at=now, env=env))
    if res.rowcount != 1:
        conn.execute(update(attempts).where(attempts.c.id == attempt_id)
                     .values(state="discarded", finished_at=now, log_blob=log_blob,
                             error=f"{reason}; another attempt completed the unit first"))
        return {"outcome": "discarded", "rest_unit": None}
    # Splits of one job are serialized on the job's row (PostgreSQL; SQLite transactions are
    # serial anyway), and the unit's seq is read again under that lock: a split committed
    # meanwhile may have moved it.
    conn.execute(select(jobs.c.id).where(jobs.c.id == unit.job_id).with_for_update())
    seq = conn.execute(select(units.c.seq).where(units.c.id == unit.id)).scalar_one()
    me = attempts.c.id == attempt_id
    conn.execute(
        update(attempts)
        .where(attempts.c.unit_id == unit.id, me | (attempts.c.state == "active"))
        .values(state=case((me, "completed"), else_="aborted"), finished_at=now,
                log_blob=case((me, log_blob), else_=attempts.c.log_blob),
                progress=case((me, done), else_=attempts.c.progress),
                error=case((me, f"{reason}: {done} of {unit.count} records done, the rest "
                                 "was requeued as a new unit"),
                           else_="the unit was split by a vacate")))
    # Make room at seq + 1 in two steps (the (job_id, seq) unique constraint is checked row by
    # row): move the later units to negative seqs, then back up shifted by one.
    later = (units.c.job_id == unit.job_id) & (units.c.seq > seq)
    conn.execute(update(units).where(later).values(seq=-units.c.seq - 2))
    conn.execute(update(units).where(units.c.job_id == unit.job_id, units.c.seq < 0)
                 .values(seq=-units.c.seq - 1))
    rest_id = conn.execute(insert(units).values(
        job_id=unit.job_id, seq=seq + 1, state="queued", count=unit.count - done,
        first_key=dumps(rest_first_key), last_key=unit.last_key, input_blob=rest_input,
        pinned_release=unit.pinned_release, records_done=0, record_errors=0,
        failures=unit.failures, losses=unit.losses)).inserted_primary_key[0]
    conn.execute(update(jobs).where(jobs.c.id == unit.job_id)
                 .values(unit_count=jobs.c.unit_count + 1))
    conn.execute(delete(import_failures).where(import_failures.c.job_id == unit.job_id,
                                               import_failures.c.release_id == a.release_id))
    return {"outcome": "split", "rest_unit": rest_id}


def expire(conn: Connection, now: float, limit: int = 500) -> int:
    """Mark active attempts whose lease expired (server clock) as lost; requeue their units.

    A unit lost more than its job's ``lost_budget`` times is quarantined. Safe to run from
    several server processes at once (each attempt is taken by one conditional update).
    Returns the number of attempts expired.
    """
    rows = conn.execute(
        select(attempts.c.id, attempts.c.unit_id, attempts.c.worker_id)
        .where(attempts.c.state == "active", attempts.c.expires_at < now)
        .limit(limit)
    ).all()
    n = 0
    for row in rows:
        res = conn.execute(
            update(attempts)
            .where(attempts.c.id == row.id, attempts.c.state == "active",
                   attempts.c.expires_at < now)
            .values(state="lost", finished_at=now, error="lease expired without word from worker")
        )
        if res.rowcount != 1:
            continue
        n += 1
        unit = conn.execute(select(units.c.state, units.c.losses, units.c.job_id)
                            .where(units.c.id == row.unit_id)).one()
        if unit.state not in OPEN:
            continue
        losses = unit.losses + 1
        budget = conn.execute(select(jobs.c.lost_budget).where(jobs.c.id == unit.job_id)
                              ).scalar_one()
        conn.execute(update(units).where(units.c.id == row.unit_id).values(losses=losses))
        _requeue_or_quarantine(conn, row.unit_id, now, losses > budget,
                               f"lost {losses} times (worker went silent)")
        finalize_job(conn, unit.job_id, now)
    return n


def heartbeat(conn: Connection, worker_id: int, attempt_ids: list[str],
              progress: dict[str, int], now: float, policy: Policy
              ) -> tuple[list[str], list[str]]:
    """Renew the leases of the worker's active attempts; return (renewed, abort).

    An attempt is renewed only if it is active, belongs to this worker and its unit is open.
    Every other named attempt is returned in ``abort``: the worker must stop it (lease lost,
    job cancelled, or the unit was completed by another attempt).
    """
    if not attempt_ids:
        return [], []
    rows = conn.execute(
        select(attempts.c.id, attempts.c.state, units.c.state.label("unit_state"))
        .join(units, units.c.id == attempts.c.unit_id)
        .where(attempts.c.id.in_(attempt_ids), attempts.c.worker_id == worker_id)
    ).all()
    found = {r.id: r for r in rows}
    renewed, abort = [], []
    for aid in attempt_ids:
        r = found.get(aid)
        if r is not None and r.state == "active" and r.unit_state in OPEN:
            renewed.append(aid)
        else:
            abort.append(aid)
            if r is not None and r.state == "active":
                conn.execute(update(attempts).where(attempts.c.id == aid)
                             .values(state="aborted", finished_at=now,
                                     error=f"unit is {r.unit_state}"))
    if renewed:
        conn.execute(update(attempts).where(attempts.c.id.in_(renewed))
                     .values(expires_at=now + policy.lease_seconds))
        for aid in renewed:
            if aid in progress:
                conn.execute(update(attempts).where(attempts.c.id == aid)
                             .values(progress=int(progress[aid])))
    return renewed, abort


def cancel_job(conn: Connection, job_id: int, now: float) -> int:
    """Cancel a job: open units → cancelled, their active attempts → aborted.

    Returns the number of units cancelled. Raises NotFound.
    """
    job = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).first()
    if job is None:
        raise NotFound(f"no job {job_id}")
    open_units = select(units.c.id).where(units.c.job_id == job_id, units.c.state.in_(OPEN))
    conn.execute(update(attempts)
                 .where(attempts.c.unit_id.in_(open_units), attempts.c.state == "active")
                 .values(state="aborted", finished_at=now, error="job cancelled"))
    res = conn.execute(update(units).where(units.c.job_id == job_id, units.c.state.in_(OPEN))
                       .values(state="cancelled", leased_at=None))
    if job.state in ("running", "paused"):
        conn.execute(update(jobs).where(jobs.c.id == job_id)
                     .values(state="cancelled", finished_at=now, reason="cancelled"))
    return res.rowcount


def retry_job(conn: Connection, job_id: int, release: str | None, now: float) -> int:
    """Requeue a job's quarantined units (budgets reset), optionally on ``release``; resume a
    paused job. Returns the number of units requeued.

    Raises:
        NotFound: no such job or release.
        Invalid: the job was cancelled.
    """
    job = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).first()
    if job is None:
        raise NotFound(f"no job {job_id}")
    if job.state == "cancelled":
        raise Invalid(f"job {job_id} was cancelled; submit it again instead")
    if release is not None and conn.execute(
            select(releases.c.id).where(releases.c.id == release)).first() is None:
        raise NotFound(f"no release {release!r}")
    values: dict[str, Any] = {"state": "queued", "failures": 0, "losses": 0}
    if release is not None:
        values["pinned_release"] = release
    res = conn.execute(update(units)
                       .where(units.c.job_id == job_id, units.c.state == "quarantined")
                       .values(**values))
    if release is not None:
        conn.execute(update(units).where(units.c.job_id == job_id, units.c.state == "queued")
                     .values(pinned_release=release))
    conn.execute(delete(import_failures).where(import_failures.c.job_id == job_id))
    conn.execute(update(jobs).where(jobs.c.id == job_id)
                 .values(state="running", reason=None, finished_at=None))
    finalize_job(conn, job_id, now)
    return res.rowcount


def extend_live_leases(conn: Connection, now: float, grace: float) -> int:
    """Give every active lease at least ``grace`` seconds from ``now``.

    Used after a server restart or a clock jump, so workers that kept working while the server
    was away (or while the clock moved) can renew before the reaper judges them lost.
    """
    res = conn.execute(
        update(attempts).where(attempts.c.state == "active",
                               attempts.c.expires_at < now + grace)
        .values(expires_at=now + grace)
    )
    return res.rowcount


def finalize_job(conn: Connection, job_id: int, now: float) -> str | None:
    """Mark a running or paused job done/failed once none of its units is open."""
    still_open = conn.execute(
        select(units.c.id).where(units.c.job_id == job_id, units.c.state.in_(OPEN)).limit(1)
    ).first()
    if still_open is not None:  # the common case: one indexed probe
        return None
    job = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).first()
    if job is None or job.state not in ("running", "paused"):
        return None
    quarantined = conn.execute(
        select(units.c.id).where(units.c.job_id == job_id, units.c.state == "quarantined")
        .limit(1)
    ).first()
    state = "failed" if quarantined else "done"
    reason = "some units were quarantined" if quarantined else None
    conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.state.in_(("running", "paused")))
                 .values(state=state, finished_at=now, reason=reason))
    return state


def finalize_open_jobs(conn: Connection, now: float) -> int:
    """Finalize running/paused jobs that have no open unit left; return how many.

    Completions finalize their job inline, but under PostgreSQL's READ COMMITTED two concurrent
    last completions can each still see the other's unit as open; the reaper calls this to close
    such jobs.
    """
    open_units = exists().where(units.c.job_id == jobs.c.id, units.c.state.in_(OPEN))
    rows = conn.execute(select(jobs.c.id).where(jobs.c.state.in_(("running", "paused")),
                                                ~open_units)).all()
    return sum(1 for r in rows if finalize_job(conn, r.id, now))


def active_attempt_count(conn: Connection) -> int:
    return conn.execute(
        select(func.count()).select_from(attempts).where(attempts.c.state == "active")
    ).scalar_one()


def worker_has_active(conn: Connection, worker_id: int) -> bool:
    return conn.execute(
        select(attempts.c.id).where(and_(attempts.c.worker_id == worker_id,
                                         attempts.c.state == "active")).limit(1)
    ).first() is not None
