"""Locked, isolated per-release environments (issue 3, item 7) with real servers and workers.

No network: the wheels are made inside the test and shipped with ``--wheelhouse``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import textwrap
from pathlib import Path

from grid import wait_for, write_csv
from officegrid.cli.release import publish
from officegrid.client import Client
from officegrid.envs.build import COMPLETE
from wheelhelp import tiny_wheelhouse

JOB = """
import sys
import tinypkg

def process(record, ctx):
    return {"id": record["id"], "value": tinypkg.VALUE, "where": tinypkg.where(),
            "python": sys.executable, "version": VERSION}

VERSION = "v1"
"""


def app_dir(tmp: Path, name: str, version: str = "v1") -> Path:
    d = tmp / name
    d.mkdir(parents=True)
    (d / "job.py").write_text(textwrap.dedent(JOB).replace('"v1"', repr(version)))
    (d / "requirements.txt").write_text("tinypkg\n")
    return d


def publish_with(admin: Client, directory: Path, wheelhouse: Path | None) -> dict:
    return publish(admin, directory, "worker", show_progress=False, wheelhouse=wheelhouse)


def env_dirs(work_dir: Path) -> list[Path]:
    d = work_dir / "envs"
    return sorted(e for e in d.iterdir() if len(e.name) == 64 and e.is_dir()) \
        if d.is_dir() else []


def installed_files(env_dir: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file of the packages the lock installed (their
    site-packages files except the installer's own bookkeeping)."""
    site = next(env_dir.glob("lib/python*/site-packages"))
    out = {}
    for top in ("tinypkg", "tinydep.py", "tinypkg-1.0.dist-info", "tinydep-2.1.dist-info"):
        path = site / top
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            # Installer bookkeeping differs by run (uv records its cache state); the package's
            # own files, METADATA and WHEEL must be byte-identical.
            if f.name in ("INSTALLER", "direct_url.json", "REQUESTED", "RECORD",
                          "uv_cache.json") or f.suffix == ".pyc":
                continue
            out[str(f.relative_to(site))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def build_count(worker) -> int:
    return worker.output().count("building environment")


def test_locked_env_runs_jobs_identically_on_two_workers_and_is_reused(grid, tmp_path):
    admin = grid.admin
    wh = tiny_wheelhouse(tmp_path / "wheelhouse", value=42)
    rel = publish_with(admin, app_dir(tmp_path, "app1"), wh)
    assert rel["env"] and len(rel["env"]) == 64
    assert admin.release(rel["id"])["env"] == rel["env"]
    job = admin.submit("job:process", write_csv(tmp_path / "in.csv", 40), unit_size=5)
    # Workers start after the submit: each is told to prepare, builds, and only then leases.
    w1, w2 = grid.worker("a"), grid.worker("b")
    info = admin.wait(job["id"], poll=0.1, timeout=120)
    assert info["state"] == "done", info
    for w in (w1, w2):
        wait_for(lambda w=w: env_dirs(w.work_dir), 60, what=f"env of {w.work_dir.name}")
    (e1,), (e2,) = env_dirs(w1.work_dir), env_dirs(w2.work_dir)
    assert e1.name == e2.name
    # The same lock installs identically on both workers.
    files1, files2 = installed_files(e1), installed_files(e2)
    assert "tinypkg/__init__.py" in files1 and "tinydep.py" in files1
    assert files1 == files2
    # Every unit ran in the env's interpreter; results carry the env (`_env`).
    out = tmp_path / "out.csv"
    admin.export_results(job["id"], out)
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 40
    assert {r["_env"] for r in rows} == {e1.name}
    assert {r["value"] for r in rows} == {"42"}
    assert all("/envs/" in r["where"] and "/envs/" in r["python"] for r in rows)
    # No unit was leased before its worker had the env built (marker written last).
    names = {w1.identity()["name"]: w1, w2.identity()["name"]: w2}
    attempts = admin.attempts(job_id=job["id"])
    assert attempts
    for a in attempts:
        marker = env_dirs(names[a["worker"]].work_dir)[0] / COMPLETE
        assert a["leased_at"] >= marker.stat().st_mtime, (a, marker.stat().st_mtime)
    # A second release with the same lock (new code) reuses the env: no rebuild.
    builds = build_count(w1) + build_count(w2)
    assert builds == 2
    rel2 = publish_with(admin, app_dir(tmp_path, "app2", version="v2"), wh)
    assert rel2["id"] != rel["id"] and rel2["env"] == rel["env"]
    job2 = admin.submit("job:process", write_csv(tmp_path / "in2.csv", 10), unit_size=5)
    assert admin.wait(job2["id"], poll=0.1, timeout=120)["state"] == "done"
    out2 = tmp_path / "out2.csv"
    admin.export_results(job2["id"], out2)
    with open(out2, newline="") as fh:
        rows2 = list(csv.DictReader(fh))
    assert {r["version"] for r in rows2} == {"v2"} and {r["_env"] for r in rows2} == {e1.name}
    assert build_count(w1) + build_count(w2) == builds
    assert [e.name for e in env_dirs(w1.work_dir)] == [e1.name]


def test_release_without_dependencies_has_no_env(grid, tmp_path):
    admin = grid.admin
    d = tmp_path / "plain"
    d.mkdir()
    (d / "job.py").write_text("def process(record, ctx):\n    return {'id': record['id']}\n")
    rel = publish_with(admin, d, None)
    assert rel["env"] is None
    job = admin.submit("job:process", write_csv(tmp_path / "in.csv", 3), unit_size=3)
    w = grid.worker("p")
    assert admin.wait(job["id"], poll=0.1, timeout=60)["state"] == "done"
    errors = tmp_path / "errors.csv"
    admin.export_results(job["id"], tmp_path / "out.csv", errors=errors)
    with open(tmp_path / "out.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["_env"] for r in rows] == ["", "", ""]
    with open(errors, newline="") as fh:
        assert csv.DictReader(fh).fieldnames == ["_key", "error", "_release", "_env", "_unit",
                                                 "_worker"]
    assert env_dirs(w.work_dir) == []


def test_broken_lock_pauses_the_job_with_the_installer_error_and_is_not_retried(grid,
                                                                                 tmp_path):
    admin = grid.admin
    wh = tiny_wheelhouse(tmp_path / "wheelhouse")
    good = publish_with(admin, app_dir(tmp_path, "good"), wh)
    # A lock the user wrote (honoured as is) whose hash does not match the shipped wheel.
    d = app_dir(tmp_path, "broken")
    (d / ".officegrid" / "wheels").mkdir(parents=True)
    for f in wh.iterdir():
        (d / ".officegrid" / "wheels" / f.name).write_bytes(f.read_bytes())
    lock = Path(tmp_path / "lock.txt")
    from officegrid.envs.lock import resolve

    text = resolve(app_dir(tmp_path, "probe"), wheelhouse=wh).text.decode()
    real = text.split("--hash=sha256:")[1][:64]
    lock.write_text(text.replace(real, "0" * 64))
    (d / ".officegrid" / "lock.txt").write_text(lock.read_text())
    bad = publish_with(admin, d, None)
    assert bad["env"] and bad["env"] != good["env"]
    job = admin.submit("job:process", write_csv(tmp_path / "in.csv", 6), unit_size=3)
    w1, w2 = grid.worker("x"), grid.worker("y")

    def paused():
        info = admin.job(job["id"])
        return info if info["state"] == "paused" else None

    info = wait_for(paused, 120, what="job paused")
    assert f"release {bad['id'][:12]}" in info["reason"]
    assert "cannot be built on any live worker" in info["reason"]
    assert "HASH" in info["reason"].upper()  # the installer's own words (pip or uv)
    # ...with the lines that say which wheel and which hashes (expected, then the real one).
    assert "tinydep==2.1" in info["reason"] and "0" * 64 in info["reason"]
    assert real[:12] in info["reason"] or \
        hashlib.sha256((wh / "tinydep-2.1-py3-none-any.whl").read_bytes()).hexdigest()[:12] \
        in info["reason"]
    assert info["counts"]["done"] == 0 and info["counts"]["leased"] == 0
    assert admin.attempts(job_id=job["id"]) == []  # nothing was ever leased
    for w in (w1, w2):
        rec = json.loads((w.work_dir / "envs" / "broken" / f"{bad['id']}.json").read_text())
        assert rec["env"] == bad["env"] and "pip install failed" in rec["error"]
        assert env_dirs(w.work_dir) == []  # the failed build left nothing behind
    # Resumed by the operator, the job is still refused by both workers without a rebuild
    # (the broken lock is not retried in a loop), and the reaper's next check pauses it again:
    # it is still broken on every live worker.
    builds = build_count(w1) + build_count(w2)
    assert builds == 2
    admin.retry(job["id"])
    again = wait_for(paused, 30, what="job paused again by the reaper")
    assert again["reason"] == info["reason"]

    # Let both workers go through lease rounds for 2 s of server clock.
    since = max(w["last_seen"] or 0 for w in admin.workers()) + 2.0
    wait_for(lambda: all((w["last_seen"] or 0) > since for w in admin.workers()), 30,
             what="both workers polling")
    assert build_count(w1) + build_count(w2) == builds
    assert admin.job(job["id"])["counts"]["leased"] == 0
    assert admin.attempts(job_id=job["id"]) == []
    # A restarted agent keeps the broken record (no early retry) and reports it again (the
    # server forgot its reports when the new session opened), so the still-broken-everywhere
    # release pauses the resumed job once more.
    w1.stop()
    w1.start()
    wait_for(lambda: w1.output().count("serving") == 2, 30, what="restarted agent")
    admin.retry(job["id"])
    again = wait_for(paused, 30, what="job paused again")
    assert "cannot be built on any live worker" in again["reason"]
    since = max(w["last_seen"] or 0 for w in admin.workers()) + 2.0
    wait_for(lambda: all((w["last_seen"] or 0) > since for w in admin.workers()), 30,
             what="both workers polling after the restart")
    assert build_count(w1) + build_count(w2) == builds
    assert admin.attempts(job_id=job["id"]) == []


class SimWorker:
    """A worker identity driven by hand through the real client (the wire protocol only)."""

    def __init__(self, grid, name: str) -> None:
        import uuid

        from officegrid import protocol as p

        join = grid.admin.create_token("enroll", uses=1)["token"]
        with Client(grid.server.url, join) as c:
            ident = c.enroll("host-" + name, "test", name)
        self.c = Client(grid.server.url, ident["token"], instance=uuid.uuid4().hex,
                        max_retry_time=5)
        self.c.open_session(p.SessionRequest(hostname="host-" + name, platform="test",
                                             version="t", resources=p.WorkerResources()))

    def lease(self, **resources):
        from officegrid import protocol as p

        return self.c.lease(p.LeaseRequest(resources=p.WorkerResources(**resources)))


def test_claim_holds_back_unprepared_envs_and_uncached_releases(grid, tmp_path):
    from officegrid import protocol as p

    admin = grid.admin
    rel = publish_with(admin, app_dir(tmp_path, "app"), tiny_wheelhouse(tmp_path / "wh"))
    rid = rel["id"]
    job = admin.submit("job:process", write_csv(tmp_path / "in.csv", 4), unit_size=2)
    a, b = SimWorker(grid, "sa"), SimWorker(grid, "sb")
    # Not prepared: no lease, but a request to prepare the release.
    res = a.lease()
    assert res.leases == [] and res.prepare == [rid]
    assert res.reason == f"preparing environment for release {rid[:12]}"
    assert res.retry_after is not None and res.retry_after <= 1.0
    # Outside the transfer window only cached releases may be leased (and nothing to prepare:
    # it could not be fetched).
    res = a.lease(prepared=[rid], fetch_allowed=False)
    assert res.leases == [] and res.prepare == [] and res.reason == "outside transfer window"
    res = a.lease(prepared=[rid], releases=[rid], fetch_allowed=False)
    assert [x.release for x in res.leases] == [rid]
    first = res.leases[0]
    # The next unit handed out with a completion obeys the same rule.
    blob = a.c.put_blob(b'{"k": "r1", "r": [{"x": 1}]}\n{"k": "r2", "r": [{"x": 2}]}\n')
    done = a.c.complete(first.attempt, p.Completion(
        result=blob, records_done=2, record_errors=0, columns=["x"], want_next=True,
        resources=p.WorkerResources(), env=rel["env"]))
    assert done.outcome == "accepted" and done.next is None  # env not reported built
    units = {u["id"]: u for u in admin.units(job["id"])}
    assert units[first.unit]["env"] == rel["env"]
    # The release's environment is broken on one of two live workers: the job goes on...
    ack = a.c.env_broken(rid, p.EnvBroken(env=rel["env"], error="pip install failed\n"
                                          "ERROR: No matching distribution found for tinydep"))
    assert json.loads(ack["detail"]) == []
    assert admin.job(job["id"])["state"] == "running"
    # ...until every live worker has reported it: then it pauses with the installer's error.
    ack = b.c.env_broken(rid, p.EnvBroken(env=rel["env"], error="ERROR: hash mismatch"))
    assert json.loads(ack["detail"]) == [job["id"]]
    info = admin.job(job["id"])
    assert info["state"] == "paused"
    assert info["reason"] == (f"release {rid[:12]}: its environment cannot be built on any "
                              "live worker: ERROR: hash mismatch")


def test_reaper_pauses_once_no_unreported_live_worker_remains_and_status_says_why(grid,
                                                                                 tmp_path):
    """A worker that stopped without a word still counts as live for ``lease_seconds`` (3 s in
    tests): the report of the last other worker cannot pause the job, the reaper's re-check
    does once it has gone. Until then the job's reason says what it waits for."""
    from officegrid import protocol as p

    admin = grid.admin
    rel = publish_with(admin, app_dir(tmp_path, "app"), tiny_wheelhouse(tmp_path / "wh"))
    rid = rel["id"]
    job = admin.submit("job:process", write_csv(tmp_path / "in.csv", 4), unit_size=2)
    a, b = SimWorker(grid, "sa"), SimWorker(grid, "sb")

    alive = {a: {}, b: {}}  # the workers kept live, with what each reports

    def reason_is(want):
        def check():
            for w, resources in alive.items():
                w.lease(**resources)
            info = admin.job(job["id"])
            return info if info["reason"] == want else None
        return check

    building = f"waiting: environment of release {rid[:12]} is being built on"
    wait_for(reason_is(f"{building} 2 workers"), 20, what="waiting on 2 workers")
    # A worker that has it prepared: the job runs, nothing to explain.
    assert [x.release for x in b.lease(prepared=[rid]).leases] == [rid]
    alive[b] = {"prepared": [rid]}
    wait_for(reason_is(None), 20, what="waiting reason cleared")
    # The worker forgets it (its env pruned, say): waiting again, shown by `status`.
    alive[b] = {}
    wait_for(reason_is(f"{building} 2 workers"), 20, what="waiting again")
    from officegrid.cli.job import _summary_line  # what `officegrid status JOB` prints

    assert _summary_line(admin.job(job["id"])).endswith(f"({building} 2 workers)")
    # One worker reports it broken while the other is live: the job goes on, and says so.
    ack = a.c.env_broken(rid, p.EnvBroken(env=rel["env"], error="pip install failed\n"
                                          "ERROR: hash mismatch\n  tinydep==2.1 ...\n"))
    assert json.loads(ack["detail"]) == []
    alive[a] = {"broken_releases": [rid]}
    wait_for(reason_is(f"{building} 1 worker; broken on 1: ERROR: hash mismatch | "
                       "tinydep==2.1 ..."), 20, what="broken on one of two")
    assert admin.job(job["id"])["state"] == "running"
    # The other worker stops without a word (its lease will expire too). No report arrives any
    # more, yet once it no longer counts as live the reaper pauses the job.
    def paused():
        a.lease(broken_releases=[rid])  # the reporting worker stays live
        info = admin.job(job["id"])
        return info if info["state"] == "paused" else None

    info = wait_for(paused, 30, what="job paused by the reaper")
    assert info["reason"] == (f"release {rid[:12]}: its environment cannot be built on any live "
                              "worker: ERROR: hash mismatch | tinydep==2.1 ...")
