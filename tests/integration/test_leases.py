"""Leases, completions and failure budgets over real HTTP, on SQLite and PostgreSQL.

Workers here are simulated with the real client (no runner), so each protocol rule is hit
exactly; tests with real worker processes live in test_worker_agent.py.
"""

from __future__ import annotations

import json
import uuid

import pytest

from grid import wait_for
from officegrid import protocol as p
from officegrid.client import ApiError, Client


def unit_input(keys: list[int]) -> bytes:
    return b"".join(json.dumps([k, {"v": k}]).encode() + b"\n" for k in keys)


def result_for(keys: list[int]) -> bytes:
    return b"".join(json.dumps({"k": k, "r": [{"out": k * 2}]}).encode() + b"\n" for k in keys)


class SimWorker:
    """A worker identity driven by hand through the real client."""

    def __init__(self, grid, name: str = "sim") -> None:
        join = grid.admin.create_token("enroll", uses=1)["token"]
        with Client(grid.server.url, join) as c:
            ident = c.enroll("host-" + name, "test", name)
        self.name = ident["name"]
        self.token = ident["token"]
        self.instance = uuid.uuid4().hex
        self.c = Client(grid.server.url, self.token, instance=self.instance, max_retry_time=5)
        self.c.open_session(p.SessionRequest(hostname="host-" + name, platform="test",
                                             version="t", resources=p.WorkerResources()))

    def lease(self, n: int = 1, wait: float = 0.0) -> list[p.Lease]:
        return self.c.lease(p.LeaseRequest(resources=p.WorkerResources(), max_units=n,
                                           wait=wait)).leases

    def complete(self, lease: p.Lease, keys: list[int], want_next: bool = False):
        blob = self.c.put_blob(result_for(keys))
        return self.c.complete(lease.attempt, p.Completion(
            result=blob, records_done=len(keys), record_errors=0, columns=["out"],
            want_next=want_next))

    def fail(self, lease: p.Lease, kind: str = "crash", error: str = "boom"):
        return self.c.fail(lease.attempt, p.Failure(kind=kind, error=error))


def make_release(admin: Client, channel: str = "worker") -> str:
    from officegrid.sync.manifest import encode_manifest, file_entry

    code = b"def process(r, ctx):\n    return r\n"
    digest = admin.put_blob(code)
    manifest = encode_manifest([file_entry("job.py", executable=False, size=len(code),
                                           digest=digest)])
    root = admin.put_blob(manifest)
    admin.create_release(p.ReleaseCreate(id=root, channel=channel))
    return root


def make_job(admin: Client, units: int = 3, size: int = 2, **kw) -> dict:
    specs = []
    for u in range(units):
        keys = list(range(u * size + 1, u * size + size + 1))
        specs.append(p.UnitSpec(input=admin.put_blob(unit_input(keys)), count=size,
                                first_key=keys[0], last_key=keys[-1]))
    body = p.JobCreate(entry="job:process", units=specs, **kw)
    return admin._json("POST", "/jobs", json=body.model_dump(mode="json"))


def keys_of(lease: p.Lease, size: int = 2) -> list[int]:
    return list(range(lease.seq * size + 1, lease.seq * size + size + 1))


def test_lease_complete_exactly_once(any_grid):
    make_release(any_grid.admin)
    job = make_job(any_grid.admin, units=3)
    w = SimWorker(any_grid)
    leases = w.lease(3)
    assert sorted(x.seq for x in leases) == [0, 1, 2]
    assert all(x.release and x.expires_at > 0 for x in leases)
    assert w.lease(1) == []  # nothing left
    for x in leases:
        assert w.complete(x, keys_of(x)).outcome == "accepted"
    # Repeating a completion (a retried request) is acknowledged, not applied twice.
    again = w.complete(leases[0], keys_of(leases[0]))
    assert again.outcome == "accepted"
    info = any_grid.admin.job(job["id"])
    assert info["state"] == "done"
    assert info["counts"]["records_done"] == 6


def test_late_completion_discarded_and_forged_refused(any_grid):
    make_release(any_grid.admin)
    job = make_job(any_grid.admin, units=1, lost_budget=5)
    a, b = SimWorker(any_grid, "a"), SimWorker(any_grid, "b")
    (la,) = a.lease()
    # a goes silent: its lease expires on the server clock and the unit is re-leased to b.
    lb = wait_for(lambda: b.lease(1), timeout=30, what="re-lease after expiry")[0]
    assert lb.unit == la.unit and lb.attempt != la.attempt
    assert b.complete(lb, keys_of(lb)).outcome == "accepted"
    # a wakes up and reports: acknowledged and discarded.
    assert a.complete(la, keys_of(la)).outcome == "discarded"
    unit = any_grid.admin.unit(lb.unit)
    assert unit["worker"] == b.name
    # An attempt id never issued is refused.
    with pytest.raises(ApiError) as exc:
        a.c.complete(uuid.uuid4().hex, p.Completion(result=unit["result"], records_done=2,
                                                    record_errors=0, columns=[]))
    assert exc.value.status == 404 and "never issued" in exc.value.message
    # Another worker's attempt is refused too.
    with pytest.raises(ApiError) as exc:
        b.complete(la, keys_of(la))
    assert exc.value.status == 403
    assert any_grid.admin.job(job["id"])["counts"]["done"] == 1


def test_expired_lease_then_first_completion_by_old_attempt_wins(any_grid):
    make_release(any_grid.admin)
    make_job(any_grid.admin, units=1)
    a = SimWorker(any_grid, "a")
    (la,) = a.lease()
    wait_for(lambda: any_grid.admin.unit(la.unit)["state"] == "queued", 30,
             what="lease expiry requeues the unit")
    # The old attempt was issued while the unit was open and is first to complete: it wins.
    assert a.complete(la, keys_of(la)).outcome == "accepted"
    assert any_grid.admin.unit(la.unit)["state"] == "done"


def test_heartbeat_keeps_lease_and_reports_aborts(any_grid):
    make_release(any_grid.admin)
    job = make_job(any_grid.admin, units=2)
    w = SimWorker(any_grid)
    l1, l2 = w.lease(2)
    for _ in range(3):
        hb = w.c.heartbeat(p.Heartbeat(attempts=[l1.attempt, l2.attempt], state="running"))
        assert sorted(hb.renewed) == sorted([l1.attempt, l2.attempt])
    any_grid.admin.cancel(job["id"])
    hb = w.c.heartbeat(p.Heartbeat(attempts=[l1.attempt, l2.attempt]))
    assert hb.renewed == [] and sorted(hb.abort) == sorted([l1.attempt, l2.attempt])
    assert any_grid.admin.job(job["id"])["state"] == "cancelled"


def test_crash_budget_quarantines_and_retry_requeues(any_grid):
    make_release(any_grid.admin)
    job = make_job(any_grid.admin, units=2, retry_budget=2)
    w = SimWorker(any_grid)
    crashes = 0
    while True:
        leases = w.lease(2)
        if not leases:
            break
        for x in leases:
            if x.seq == 0:
                w.fail(x, "crash", f"segfault #{crashes}")
                crashes += 1
            else:
                w.complete(x, keys_of(x))
    assert crashes == 3  # first run + 2 retries
    info = any_grid.admin.job(job["id"])
    assert info["state"] == "failed"
    assert info["counts"]["quarantined"] == 1 and info["counts"]["done"] == 1
    units = list(any_grid.admin.units(job["id"]))
    assert "segfault #2" in units[0]["last_error"]
    info = any_grid.admin.retry(job["id"])
    assert info["state"] == "running" and info["counts"]["queued"] == 1
    (x,) = w.lease(1)
    w.complete(x, keys_of(x))
    assert any_grid.admin.job(job["id"])["state"] == "done"


def test_import_error_pauses_job(any_grid):
    make_release(any_grid.admin)
    job = make_job(any_grid.admin, units=4)
    w = SimWorker(any_grid)
    for _ in range(3):
        (x,) = w.lease(1)
        w.fail(x, "import_error", "ModuleNotFoundError: No module named 'numpy'")
    info = any_grid.admin.job(job["id"])
    assert info["state"] == "paused"
    assert "numpy" in info["reason"]
    assert info["counts"]["quarantined"] == 0  # units were not burned
    assert w.lease(1) == []  # a paused job hands out nothing
    assert any_grid.admin.retry(job["id"])["state"] == "running"
    assert len(w.lease(1)) == 1


def test_vacate_uses_no_budget(any_grid):
    make_release(any_grid.admin)
    make_job(any_grid.admin, units=1, retry_budget=0, lost_budget=0)
    w = SimWorker(any_grid)
    for _ in range(5):
        (x,) = w.lease(1)
        w.c.vacate(x.attempt, p.Vacate(reason="owner returned"))
    unit = any_grid.admin.unit(x.unit)
    assert unit["state"] == "queued" and unit["failures"] == 0 and unit["losses"] == 0


def test_black_hole_worker_sidelined(any_grid):
    make_release(any_grid.admin)
    jobs = [make_job(any_grid.admin, units=5) for _ in range(2)]
    good = SimWorker(any_grid, "good")
    (x,) = good.lease(1)
    good.complete(x, keys_of(x))  # evidence that the job itself is fine
    bad = SimWorker(any_grid, "blackhole")
    failures = 0
    while failures < 10:
        leases = bad.lease(1)
        if not leases:
            break
        bad.fail(leases[0], "crash", "cannot start python")
        failures += 1
    resp = bad.c.lease(p.LeaseRequest(resources=p.WorkerResources(), max_units=1))
    assert resp.leases == [] and "sidelined" in resp.reason
    assert failures == 5  # default unhealthy_after
    rows = {w["name"]: w for w in any_grid.admin.workers()}
    assert rows[bad.name]["state"] == "sidelined"
    # A healthy worker still gets the work.
    assert good.lease(1)
    assert all(any_grid.admin.job(j["id"])["counts"]["quarantined"] == 0 for j in jobs)


def test_one_bad_job_does_not_sideline_workers(any_grid):
    make_release(any_grid.admin)
    job = make_job(any_grid.admin, units=3, retry_budget=1)
    w = SimWorker(any_grid, "honest")
    while leases := w.lease(1):
        w.fail(leases[0], "crash", "ZeroDivisionError in the job's code")
    info = any_grid.admin.job(job["id"])
    assert info["state"] == "failed" and info["counts"]["quarantined"] == 3
    rows = {r["name"]: r for r in any_grid.admin.workers()}
    assert rows[w.name]["state"] != "sidelined"


def test_completion_may_lease_next(any_grid):
    make_release(any_grid.admin)
    make_job(any_grid.admin, units=3)
    w = SimWorker(any_grid)
    (x,) = w.lease(1)
    seen = [x.seq]
    while x is not None:
        res = w.complete(x, keys_of(x), want_next=True)
        x = res.next
        if x:
            seen.append(x.seq)
    assert seen == [0, 1, 2]


def test_priority_orders_jobs(any_grid):
    make_release(any_grid.admin)
    low = make_job(any_grid.admin, units=1, priority=0)
    high = make_job(any_grid.admin, units=1, priority=5)
    w = SimWorker(any_grid)
    (x,) = w.lease(1)
    assert x.job == high["id"] and x.job != low["id"]


def test_promote_changes_release_of_later_leases(any_grid):
    r1 = make_release(any_grid.admin)
    make_job(any_grid.admin, units=2)
    w = SimWorker(any_grid)
    (a,) = w.lease(1)
    assert a.release == r1
    # A second, different release.
    from officegrid.sync.manifest import encode_manifest, file_entry

    code = b"def process(r, ctx):\n    return {'v2': True}\n"
    d = any_grid.admin.put_blob(code)
    root = any_grid.admin.put_blob(encode_manifest(
        [file_entry("job.py", executable=False, size=len(code), digest=d)]))
    any_grid.admin.create_release(p.ReleaseCreate(id=root, channel="worker"))
    (b,) = w.lease(1)
    assert b.release == root != r1


def test_tokens_wrong_revoked_and_roles(grid):
    url = grid.server.url
    with Client(url, None, max_retry_time=1) as c:
        with pytest.raises(ApiError) as exc:
            c.jobs()
        assert exc.value.status == 401 and "missing token" in exc.value.message
    with Client(url, "oga_wrong", max_retry_time=1) as c:
        with pytest.raises(ApiError) as exc:
            c.jobs()
        assert exc.value.status == 401 and "unknown token" in exc.value.message
    w = SimWorker(grid, "roles")
    with pytest.raises(ApiError) as exc:
        w.c.jobs()  # workers may not use admin calls
    assert exc.value.status == 403
    grid.admin.revoke_token(w.name)
    with pytest.raises(ApiError) as exc:
        w.lease(1)
    assert exc.value.status == 401 and "revoked" in exc.value.message
    # Tokens are stored hashed: the secret is nowhere in the database file.
    db = (grid.server.data_dir / "officegrid.db").read_bytes()
    assert grid.server.admin_token.encode() not in db
    assert w.token.encode() not in db
    mode = (grid.server.data_dir / "admin.token").stat().st_mode & 0o777
    assert mode == 0o600
    assert str(grid.server.admin_token) not in grid.server.log.read_text()


def test_enroll_token_uses(grid):
    join = grid.admin.create_token("enroll", uses=1)["token"]
    with Client(grid.server.url, join, max_retry_time=1) as c:
        c.enroll("h1", "test")
        with pytest.raises(ApiError) as exc:
            c.enroll("h2", "test")
        assert exc.value.status == 409 and "no uses left" in exc.value.message


def test_second_live_session_told_to_reenroll(grid):
    w = SimWorker(grid, "orig")
    clone = Client(grid.server.url, w.token, instance=uuid.uuid4().hex, max_retry_time=1)
    with pytest.raises(ApiError) as exc:
        clone.open_session(p.SessionRequest(hostname="clone", platform="test", version="t",
                                            resources=p.WorkerResources(), nonce="stale"))
    assert exc.value.code == p.E_REENROLL and "enroll" in exc.value.message
    # The clone's lease requests are refused; the original keeps working.
    with pytest.raises(ApiError) as exc:
        clone.lease(p.LeaseRequest(resources=p.WorkerResources()))
    assert exc.value.code == p.E_REENROLL
    assert w.lease(1) == []


def test_unit_input_must_be_uploaded_and_channel_must_exist(grid):
    with pytest.raises(ApiError) as exc:
        make_job(grid.admin, units=1)
    assert exc.value.status == 404 and "channel 'worker'" in exc.value.message
    make_release(grid.admin)
    body = p.JobCreate(entry="job:process", units=[p.UnitSpec(input="a" * 64, count=1,
                                                              first_key=1, last_key=1)])
    with pytest.raises(ApiError) as exc:
        grid.admin._json("POST", "/jobs", json=body.model_dump(mode="json"))
    assert exc.value.status == 409 and "not uploaded" in exc.value.message
    assert grid.admin.jobs() == []


def test_server_restart_gives_live_leases_grace(tmp_path):
    from conftest import Grid

    g = Grid(tmp_path, None).start({"OFFICEGRID_LEASE_SECONDS": "2",
                                    "OFFICEGRID_RESTART_GRACE": "30"})
    try:
        make_release(g.admin)
        make_job(g.admin, units=1)
        w = SimWorker(g)
        (x,) = w.lease(1)
        g.server.kill()
        g.server.port = g.server.port  # same port: workers keep their URL
        g.server.start()
        # Downtime + restart exceeded the 2 s lease, but the restart grace keeps it alive.
        unit = g.admin.unit(x.unit)
        assert unit["state"] == "leased"
        hb = w.c.heartbeat(p.Heartbeat(attempts=[x.attempt]))
        assert hb.renewed == [x.attempt]
        assert w.complete(x, keys_of(x)).outcome == "accepted"
    finally:
        g.close()


def test_slow_unit_gets_a_second_copy_near_the_end(tmp_path):
    from conftest import Grid

    g = Grid(tmp_path, None).start({"OFFICEGRID_SPECULATIVE_AFTER": "0.3",
                                    "OFFICEGRID_LEASE_SECONDS": "30"})
    try:
        make_release(g.admin)
        job = make_job(g.admin, units=1)
        slow, idle = SimWorker(g, "slow"), SimWorker(g, "idle")
        (a,) = slow.lease(1)
        assert idle.lease(1) == []  # too early for a copy
        (b,) = wait_for(lambda: idle.lease(1), 30, what="a speculative copy")
        assert b.speculative and b.unit == a.unit and b.release == a.release
        assert idle.complete(b, keys_of(b)).outcome == "accepted"
        assert slow.complete(a, keys_of(a)).outcome == "discarded"
        assert g.admin.job(job["id"])["state"] == "done"
        assert g.admin.unit(a.unit)["worker"] == idle.name
    finally:
        g.close()


def test_an_agent_that_said_it_is_stopping_gets_no_lease(grid) -> None:
    """The agent announces "stopping" before it lets go of its long polls: a unit leased then
    would reach nobody and be lost until its lease expired."""
    make_release(grid.admin)
    make_job(grid.admin, units=1)
    w = SimWorker(grid)
    w.c.heartbeat(p.Heartbeat(attempts=[], state="stopping", reason="agent stopping"))
    res = w.c.lease(p.LeaseRequest(resources=p.WorkerResources(), max_units=1))
    assert res.leases == [] and res.reason.startswith("stopping")
    w.c.heartbeat(p.Heartbeat(attempts=[], state="offline", reason="agent stopped"))
    row = next(x for x in grid.admin.workers() if x["name"] == w.name)
    assert (row["state"], row["reason"]) == ("offline", "agent stopped")
    # A new session (the agent started again) takes work at once.
    w.c.open_session(p.SessionRequest(hostname="host-sim", platform="test", version="t",
                                      resources=p.WorkerResources()))
    assert len(w.lease()) == 1


def test_a_stopped_agent_shows_offline_at_once(grid) -> None:
    w = grid.worker("stopper")
    wait_for(lambda: any(x["name"] == "stopper" and x["state"] == "idle"
                         for x in grid.admin.workers()), 60, what="the agent to be idle")
    w.stop()
    assert w.proc.wait(60) == 0
    row = next(x for x in grid.admin.workers() if x["name"] == "stopper")
    assert (row["state"], row["reason"]) == ("offline", "agent stopped")
    # Started again on the same work dir at once: its last words rotated the session nonce,
    # which it saved, so it is not taken for a copy of a live agent.
    w.start()
    wait_for(lambda: w.output().count("serving") == 2, 60, what="the restarted agent")
    wait_for(lambda: next(x for x in grid.admin.workers() if x["name"] == "stopper")["state"]
             == "idle", 60, what="the restarted agent to be idle")
    assert w.proc.poll() is None
