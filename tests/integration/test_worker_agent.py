"""Real worker agents against a real server: faults injected for real (SIGKILL, SIGTERM,
server restart, crashing and unimportable code, a black-hole host, copied work dirs)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import textwrap
from pathlib import Path

import psutil
import pytest

from grid import WorkerProc, publish, wait_for, write_csv
from officegrid.client import Client
from officegrid.records.units import decode_unit_result

SLOW_JOB = """
import os, time

def process(record, ctx):
    time.sleep(float(os.environ.get("OG_TEST_SLEEP", "0.02")))
    if record.get("value") == "crash":
        os._exit(1)
    return {"id": record["id"], "double": int(record["value"]) * 2, "release": VERSION}

VERSION = "v1"
"""


def release_dir(tmp: Path, name: str = "rel", source: str = SLOW_JOB, **files: str) -> Path:
    d = tmp / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "job.py").write_text(textwrap.dedent(source))
    for fname, text in files.items():
        (d / fname).write_text(textwrap.dedent(text))
    return d


def all_results(admin: Client, job_id: int) -> list[tuple]:
    """(key, release of the unit, row) for every result row of every done unit."""
    out = []
    for u in admin.units(job_id):
        if u["state"] != "done":
            continue
        for line in decode_unit_result(admin.get_blob(u["result"])):
            for r in line.rows:
                out.append((line.key, u["release"], r))
    return out


def active_unit_of(admin: Client, name: str) -> list[int]:
    for w in admin.workers():
        if w["name"] == name:
            return w["active_units"]
    return []


def test_job_runs_end_to_end_with_two_workers(grid, tmp_path):
    rid = publish(grid.admin, release_dir(tmp_path))
    grid.worker("a")
    grid.worker("b")
    job = grid.admin.submit("job:process", write_csv(tmp_path / "in.csv", 200), unit_size=20)
    info = grid.admin.wait(job["id"], timeout=120)
    assert info["state"] == "done"
    rows = all_results(grid.admin, job["id"])
    assert sorted(k for k, _, _ in rows) == list(range(1, 201))
    assert {r for _, r, _ in rows} == {rid}
    assert all(row["double"] == 2 * int(row["id"][1:]) for _, _, row in rows)
    workers = {u["worker"] for u in grid.admin.units(job["id"])}
    assert workers <= {"a", "b"}


def test_sigkill_worker_mid_unit_is_released_and_recorded_once(grid, tmp_path):
    publish(grid.admin, release_dir(tmp_path))
    env = {"OG_TEST_SLEEP": "0.05"}
    a = grid.worker("a", env=env)
    job = grid.admin.submit("job:process", write_csv(tmp_path / "in.csv", 120), unit_size=20)
    units = wait_for(lambda: active_unit_of(grid.admin, "a"), 60, what="a running a unit")
    a.kill(signal.SIGKILL)
    grid.worker("b", env=env)
    info = grid.admin.wait(job["id"], timeout=120)
    assert info["state"] == "done"
    keys = [k for k, _, _ in all_results(grid.admin, job["id"])]
    assert sorted(keys) == list(range(1, 121))  # every record exactly once
    attempts = grid.admin.attempts(unit_id=units[0])
    assert [x["state"] for x in attempts][0] == "lost"
    assert attempts[-1]["state"] == "completed" and attempts[-1]["worker"] == "b"


GRANDCHILD_JOB = """
import os, subprocess, sys, time

def process(record, ctx):
    pids = record["pidfile"]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    escaped = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                               start_new_session=True)
    with open(pids, "w") as fh:
        fh.write(f"{os.getpid()} {child.pid} {escaped.pid}")
    time.sleep(600)
    return {}
"""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigkill_agent_leaves_no_orphans(grid, tmp_path):
    publish(grid.admin, release_dir(tmp_path, source=GRANDCHILD_JOB))
    pidfile = tmp_path / "pids.txt"
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"pidfile": str(pidfile)}) + "\n")
    w = grid.worker("a")
    grid.admin.submit("job:process", inp)
    text = wait_for(lambda: pidfile.exists() and pidfile.read_text(), 60, what="grandchildren")
    runner, child, escaped = map(int, text.split())
    assert all(_alive(p) for p in (runner, child, escaped))
    w.kill(signal.SIGKILL)
    # Pipe EOF: the runner kills its own process group (runner and in-group grandchild).
    wait_for(lambda: not _alive(runner) and not _alive(child), 30, what="group to die")
    # The grandchild that left the group is swept by the next start of the agent.
    w2 = WorkerProc(grid.server.url, w.work_dir, env={}).start()
    grid.workers.append(w2)
    wait_for(lambda: not _alive(escaped), 30, what="sweep of the escaped grandchild")


def test_sigterm_vacates_without_budget_and_kills_tree(grid, tmp_path):
    publish(grid.admin, release_dir(tmp_path, source=GRANDCHILD_JOB))
    pidfile = tmp_path / "pids.txt"
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"pidfile": str(pidfile)}) + "\n")
    w = grid.worker("a")
    job = grid.admin.submit("job:process", inp, retry_budget=0, lost_budget=0)
    text = wait_for(lambda: pidfile.exists() and pidfile.read_text(), 60, what="grandchildren")
    pids = list(map(int, text.split()))
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(30) == 0
    assert not any(_alive(p) for p in pids)
    (unit,) = grid.admin.units(job["id"])
    assert unit["state"] == "queued" and unit["failures"] == 0 and unit["losses"] == 0
    assert grid.admin.attempts(unit_id=unit["id"])[0]["state"] == "vacated"


def test_server_restart_mid_job_loses_nothing(grid, tmp_path):
    publish(grid.admin, release_dir(tmp_path))
    grid.worker("a", env={"OG_TEST_SLEEP": "0.01"})
    job = grid.admin.submit("job:process", write_csv(tmp_path / "in.csv", 300), unit_size=20)
    wait_for(lambda: grid.admin.job(job["id"])["counts"]["done"] >= 3, 60, what="3 units done")
    grid.server.kill(signal.SIGKILL)
    grid.server.start()  # same port and data dir
    grid.admin = grid.server.client()
    info = grid.admin.wait(job["id"], timeout=120)
    assert info["state"] == "done"
    keys = [k for k, _, _ in all_results(grid.admin, job["id"])]
    assert sorted(keys) == list(range(1, 301))
    states = {a["state"] for a in grid.admin.attempts(job_id=job["id"])}
    assert "lost" not in states  # live leases survived the restart


def test_crashing_unit_quarantined_rest_completes(grid, tmp_path):
    publish(grid.admin, release_dir(tmp_path))
    inp = tmp_path / "in.csv"
    write_csv(inp, 40)
    lines = inp.read_text().splitlines()
    lines[5] = "r5,crash"
    inp.write_text("\n".join(lines) + "\n")
    grid.worker("a")
    job = grid.admin.submit("job:process", inp, unit_size=10, retry_budget=1)
    info = grid.admin.wait(job["id"], timeout=120)
    assert info["state"] == "failed"
    assert info["counts"]["quarantined"] == 1 and info["counts"]["done"] == 3
    bad = [u for u in grid.admin.units(job["id"]) if u["state"] == "quarantined"][0]
    assert bad["failures"] == 2 and "exited with code 1" in bad["last_error"]


def test_unimportable_release_pauses_job(grid, tmp_path):
    publish(grid.admin, release_dir(tmp_path, source="import no_such_module_here\n"))
    grid.worker("a")
    job = grid.admin.submit("job:process", write_csv(tmp_path / "in.csv", 50), unit_size=5)
    info = wait_for(lambda: (j := grid.admin.job(job["id"]))["state"] == "paused" and j, 60,
                    what="job paused")
    assert "no_such_module_here" in info["reason"]
    assert info["counts"]["quarantined"] == 0
    # A fixed release and `retry` finish it.
    publish(grid.admin, release_dir(tmp_path, "fixed"))
    grid.admin.retry(job["id"])
    assert grid.admin.wait(job["id"], timeout=120)["state"] == "done"


def test_black_hole_worker_is_sidelined(grid, tmp_path):
    publish(grid.admin, release_dir(tmp_path))
    grid.worker("blackhole", extra_args=["--python", "/bin/false"])
    grid.worker("good")
    jobs = [grid.admin.submit("job:process", write_csv(tmp_path / f"in{i}.csv", 100),
                              unit_size=5) for i in range(2)]
    for j in jobs:
        info = grid.admin.wait(j["id"], timeout=180)
        assert info["state"] == "done", info
    rows = {w["name"]: w for w in grid.admin.workers()}
    assert rows["blackhole"]["state"] == "sidelined"
    assert rows["good"]["completed"] >= 35


def test_two_agents_on_one_work_dir(grid, tmp_path):
    a = grid.worker("a")
    wait_for(lambda: (a.work_dir / "identity.json").exists(), 30, what="enrollment")
    b = WorkerProc(grid.server.url, a.work_dir, env={}).start()
    grid.workers.append(b)
    assert b.proc.wait(30) != 0
    assert "already running" in b.output()
    assert a.proc.poll() is None


def test_copied_work_dir_is_told_to_reenroll(grid, tmp_path):
    a = grid.worker("a")
    nonce = a.work_dir / "session.nonce"
    wait_for(nonce.exists, 30, what="session")
    copy = tmp_path / "cloned-disk"
    shutil.copytree(a.work_dir, copy, ignore=shutil.ignore_patterns("agent.lock", "*.lock"))
    before = (copy / "session.nonce").read_text()
    wait_for(lambda: nonce.read_text() != before, 30, what="a heartbeat after the copy")
    clone = WorkerProc(grid.server.url, copy, env={}).start()
    grid.workers.append(clone)
    assert clone.proc.wait(30) == 3
    assert "enroll" in clone.output()
    assert a.proc.poll() is None
    # The original keeps working.
    publish(grid.admin, release_dir(tmp_path))
    job = grid.admin.submit("job:process", write_csv(tmp_path / "in.csv", 10))
    assert grid.admin.wait(job["id"], timeout=60)["state"] == "done"


def test_copy_made_within_a_heartbeat_loses_to_the_original(tmp_path):
    from conftest import Grid

    g = Grid(tmp_path, None).start({"OFFICEGRID_HEARTBEAT_INTERVAL": "30"})
    try:
        a = g.worker("a")
        wait_for((a.work_dir / "session.nonce").exists, 30, what="session")
        copy = tmp_path / "cloned-now"
        shutil.copytree(a.work_dir, copy, ignore=shutil.ignore_patterns("*.lock"))
        # The copy holds the live nonce: it takes the session over at first ...
        clone = WorkerProc(g.server.url, copy, env={}).start()
        g.workers.append(clone)
        # ... until the original's next request shows it is alive: the copy is told to go.
        assert clone.proc.wait(60) == 3
        assert "enroll" in clone.output()
        assert a.proc.poll() is None
        publish(g.admin, release_dir(tmp_path))
        job = g.admin.submit("job:process", write_csv(tmp_path / "in.csv", 10))
        assert g.admin.wait(job["id"], timeout=60)["state"] == "done"
        assert {u["worker"] for u in g.admin.units(job["id"])} == {"a"}
    finally:
        g.close()


def test_promote_mid_job_never_mixes_releases(grid, tmp_path):
    r1 = publish(grid.admin, release_dir(tmp_path, "v1"))
    env = {"OG_TEST_SLEEP": "0.01"}
    grid.worker("a", env=env)
    grid.worker("b", env=env)
    job = grid.admin.submit("job:process", write_csv(tmp_path / "in.csv", 400), unit_size=20)
    wait_for(lambda: grid.admin.job(job["id"])["counts"]["done"] >= 2, 60, what="progress")
    r2 = publish(grid.admin, release_dir(tmp_path, "v2", SLOW_JOB.replace('"v1"', '"v2"')))
    info = grid.admin.wait(job["id"], timeout=120)
    assert info["state"] == "done"
    rows = all_results(grid.admin, job["id"])
    assert sorted(k for k, _, _ in rows) == list(range(1, 401))
    versions = {r1: "v1", r2: "v2"}
    for _, rel, row in rows:
        assert row["release"] == versions[rel]  # the code that ran is the release recorded
    assert set(info["releases"]) == {r1, r2}


def test_cancel_stops_running_units(grid, tmp_path):
    publish(grid.admin, release_dir(tmp_path))
    w = grid.worker("a", env={"OG_TEST_SLEEP": "0.2"})
    job = grid.admin.submit("job:process", write_csv(tmp_path / "in.csv", 100), unit_size=50)
    wait_for(lambda: active_unit_of(grid.admin, "a"), 60, what="a unit running")
    grid.admin.cancel(job["id"])
    wait_for(lambda: not active_unit_of(grid.admin, "a"), 30, what="the worker to let go")

    def runners():
        return [p for p in psutil.process_iter(["environ"])
                if (p.info.get("environ") or {}).get("OFFICEGRID_MARKER")
                and p.pid != os.getpid()
                and str(w.work_dir) in " ".join(p.cmdline() if _alive(p.pid) else [])]

    wait_for(lambda: not runners(), 30, what="unit processes to end")
    assert grid.admin.job(job["id"])["state"] == "cancelled"


@pytest.mark.pg
def test_two_servers_share_one_postgresql(tmp_path, pg_db):
    """Two server processes, one database and data dir: no unit is ever leased twice."""
    import threading

    from test_leases import SimWorker, keys_of, make_job, make_release

    from conftest import Grid
    from grid import ServerProc

    g = Grid(tmp_path, pg_db).start()
    second = ServerProc(g.server.data_dir, pg_db).start()
    g.extra_servers.append(second)
    try:
        make_release(g.admin)
        job = make_job(g.admin, units=120)
        sims = [SimWorker(g, f"s{i}") for i in range(8)]
        for i, s in enumerate(sims):  # half of them talk to the second server
            if i % 2:
                s.c = Client(second.url, s.token, instance=s.instance, max_retry_time=5)
        seen: list[int] = []
        lock = threading.Lock()

        def run(s):
            while leases := s.lease(2):
                for x in leases:
                    with lock:
                        seen.append(x.unit)
                    s.complete(x, keys_of(x))

        threads = [threading.Thread(target=run, args=(s,)) for s in sims]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(seen) == 120 and len(set(seen)) == 120  # each unit leased exactly once
        assert g.admin.wait(job["id"], poll=0.1, timeout=30)["state"] == "done"
    finally:
        g.close()


def test_signed_releases_only(grid, tmp_path):
    import subprocess
    import sys

    keys = tmp_path / "keys"
    res = subprocess.run([sys.executable, "-m", "officegrid", "keys", "create", "--out",
                          str(keys)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert (keys / "officegrid-signing.key").stat().st_mode & 0o777 == 0o600
    from officegrid.cli.release import publish as do_publish
    from officegrid.signing import create_keypair

    create_keypair(tmp_path / "other.key", tmp_path / "other.pub")
    w = grid.worker("strict", extra_args=["--trust-key", str(keys / "officegrid-signing.pub")])
    # Unsigned: refused before anything runs; the job pauses with the reason.
    do_publish(grid.admin, release_dir(tmp_path, "unsigned"), "worker", show_progress=False)
    job = grid.admin.submit("job:process", write_csv(tmp_path / "in.csv", 30), unit_size=10)
    info = wait_for(lambda: (j := grid.admin.job(job["id"]))["state"] == "paused" and j, 60,
                    what="job paused by refusals")
    assert "not signed" in info["reason"]
    # Signed by an untrusted key: refused too.
    other = do_publish(grid.admin, release_dir(tmp_path, "other", SLOW_JOB + "\n# other\n"),
                       "worker", show_progress=False, sign=tmp_path / "other.key")
    grid.admin.retry(job["id"], release=other["id"])
    info = wait_for(lambda: (j := grid.admin.job(job["id"]))["state"] == "paused" and j, 60,
                    what="job paused again")
    assert "not among this worker's trusted keys" in info["reason"]
    # Signed by the trusted key: runs.
    good = do_publish(grid.admin, release_dir(tmp_path, "good", SLOW_JOB + "\n# good\n"),
                      "worker", show_progress=False, sign=keys / "officegrid-signing.key")
    grid.admin.retry(job["id"], release=good["id"])
    assert grid.admin.wait(job["id"], timeout=60)["state"] == "done"
    assert {u["release"] for u in grid.admin.units(job["id"])} == {good["id"]}
    assert w.proc.poll() is None
