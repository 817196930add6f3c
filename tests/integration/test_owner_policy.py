"""Owner policy enforcement with real parts (issue 5): a real server, real worker agents, real
unit trees stopped with real signals, a real X server (Xvfb) and xdotool input.

Every wait is a poll with a deadline (a hang guard, never a speed assertion).
"""

from __future__ import annotations

import csv
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from grid import publish, wait_for, write_csv

BUSY_JOB = """
import os, subprocess, sys, time

_child = None

def process(record, ctx):
    global _child
    if _child is None:
        # A grandchild, so that suspend/vacate must reach the whole tree.
        _child = subprocess.Popen([sys.executable, "-c",
                                   "import time\\nwhile True: time.sleep(0.05)"])
        tmp = os.environ["OG_PIDFILE"] + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(f"{os.getpid()} {_child.pid}")
        os.replace(tmp, os.environ["OG_PIDFILE"])
    if os.environ.get("OG_IGNORE_STOP") and record["value"] == "2":
        while True:  # never returns: a stop request after it is never acted on
            time.sleep(0.05)
    end = time.monotonic() + float(os.environ.get("OG_WORK", "0.1"))
    while time.monotonic() < end:  # CPU-bound
        pass
    with open(os.environ["OG_PIDFILE"] + ".n", "a") as fh:
        fh.write("x")  # one byte per record processed (any attempt)
    return {"id": record["id"], "n": int(record["value"])}
"""

MEMORY_JOB = """
import time

def process(record, ctx):
    hog = b"x" * (300 * 1000 * 1000)  # resident: every page is written
    time.sleep(120)
    return {"n": len(hog)}
"""


# The operator sees who paused a worker: the owner of the pause file (this test's user).
PAUSED_BY_ME = f"paused by owner ({pwd.getpwuid(os.geteuid()).pw_name})"


def release(tmp: Path, source: str) -> Path:
    d = tmp / "rel"
    d.mkdir(parents=True, exist_ok=True)
    (d / "job.py").write_text(textwrap.dedent(source))
    return d


def _status(pid: int) -> str | None:
    try:
        return psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return None


def _alive(pid: int) -> bool:
    return _status(pid) not in (None, psutil.STATUS_ZOMBIE)


def _pids(pidfile: Path) -> list[int]:
    text = wait_for(lambda: pidfile.exists() and pidfile.read_text(), 60, what="unit pids")
    return [int(x) for x in text.split()]


def _worker_row(admin, name: str) -> dict:
    return next((w for w in admin.workers() if w["name"] == name), {})


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFICEGRID_")}
    return subprocess.run([sys.executable, "-m", "officegrid", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def _processed(pidfile: Path) -> int:
    """Records processed so far (the job appends one byte per record)."""
    try:
        return (pidfile.parent / (pidfile.name + ".n")).stat().st_size
    except FileNotFoundError:
        return 0


def _exported_keys(admin, job_id: int, out: Path) -> list[int]:
    admin.export_results(job_id, out)
    with open(out, newline="") as fh:
        return [int(r["_key"]) for r in csv.DictReader(fh)]


def test_pause_suspends_the_tree_and_resume_continues_it(grid, tmp_path):
    publish(grid.admin, release(tmp_path, BUSY_JOB))
    pidfile = tmp_path / "pids"
    w = grid.worker("a", env={"OG_PIDFILE": str(pidfile), "OG_WORK": "0.1"})
    job = grid.admin.submit("job:process", write_csv(tmp_path / "in.csv", 30), unit_size=30)
    runner, child = _pids(pidfile)
    assert "policy: always" in w.output()

    done = _cli("pause", "--work-dir", str(w.work_dir))
    assert done.returncode == 0, done.stderr
    wait_for(lambda: _status(runner) == _status(child) == psutil.STATUS_STOPPED, 30,
             what="runner and grandchild stopped")
    row = wait_for(lambda: (r := _worker_row(grid.admin, "a")).get("reason") == PAUSED_BY_ME
                   and r, 30, what="'paused by owner (me)' in the workers list")
    assert row["state"] == "paused"
    assert grid.admin.job(job["id"])["state"] == "running"  # the lease is kept while paused

    done = _cli("resume", "--work-dir", str(w.work_dir))
    assert done.returncode == 0, done.stderr
    wait_for(lambda: _status(runner) != psutil.STATUS_STOPPED
             and _status(child) != psutil.STATUS_STOPPED, 30, what="tree continued")
    info = grid.admin.wait(job["id"], timeout=120)
    assert info["state"] == "done"
    assert _exported_keys(grid.admin, job["id"], tmp_path / "out.csv") == list(range(1, 31))


def test_pause_blocks_new_units_and_bad_duration_is_refused(grid, tmp_path):
    publish(grid.admin, release(tmp_path, BUSY_JOB))
    w = grid.worker("a", env={"OG_PIDFILE": str(tmp_path / "pids"), "OG_WORK": "0"})
    wait_for(lambda: (w.work_dir / "identity.json").exists(), 60, what="enrolled")
    bad = _cli("pause", "soon", "--work-dir", str(w.work_dir))
    assert bad.returncode != 0 and "duration 'soon'" in bad.stderr
    assert _cli("pause", "1h", "--work-dir", str(w.work_dir)).returncode == 0
    wait_for(lambda: _worker_row(grid.admin, "a").get("reason") == PAUSED_BY_ME, 30,
             what="paused state reported")
    job = grid.admin.submit("job:process", write_csv(tmp_path / "in.csv", 5), unit_size=5)
    # Two heartbeats later the unit is still queued: a paused worker takes nothing.
    beats = _worker_row(grid.admin, "a")["last_seen"]
    wait_for(lambda: _worker_row(grid.admin, "a")["last_seen"] > beats + 0.5, 30,
             what="more heartbeats")
    assert [u["state"] for u in grid.admin.units(job["id"])] == ["queued"]
    assert _cli("resume", "--work-dir", str(w.work_dir)).returncode == 0
    assert grid.admin.wait(job["id"], timeout=120)["state"] == "done"


def test_vacate_commits_the_finished_prefix_and_requeues_the_rest(grid, tmp_path):
    publish(grid.admin, release(tmp_path, BUSY_JOB))
    pidfile = tmp_path / "pids"
    env = {"OG_PIDFILE": str(pidfile), "OG_WORK": "0.05"}
    a = grid.worker("a", env=env)
    n = 80
    job = grid.admin.submit("job:process", write_csv(tmp_path / "in.csv", n), unit_size=40)
    wait_for(lambda: _processed(pidfile) >= 5, 60, what="5 records done")
    a.proc.send_signal(signal.SIGTERM)  # the agent vacates its unit on the way out
    assert a.proc.wait(30) == 0
    units = list(grid.admin.units(job["id"]))
    assert len(units) == 3, units  # the first unit was split in two
    first, rest, second = units
    assert first["state"] == "done" and first["worker"] == "a"
    assert 5 <= first["count"] < 40 and first["count"] + rest["count"] == 40
    assert rest["state"] == "queued" and second["state"] == "queued"
    assert [u["seq"] for u in units] == [0, 1, 2]
    (att,) = grid.admin.attempts(unit_id=first["id"])
    assert att["state"] == "completed" and f"{first['count']} of 40 records" in att["error"]

    grid.worker("b", env=env)
    info = grid.admin.wait(job["id"], timeout=120)
    assert info["state"] == "done"
    assert info["counts"]["records_done"] == n
    # Results exactly once, in record order.
    assert _exported_keys(grid.admin, job["id"], tmp_path / "out.csv") == list(range(1, n + 1))


def test_memory_cap_fails_the_attempt_with_a_clear_error(grid, tmp_path):
    publish(grid.admin, release(tmp_path, MEMORY_JOB))
    grid.worker("a", env={"OFFICEGRID_MAX_MEMORY": "100MB"})
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"x": 1}) + "\n")
    job = grid.admin.submit("job:process", inp, retry_budget=0)
    info = grid.admin.wait(job["id"], timeout=120)
    assert info["state"] == "failed"
    (unit,) = grid.admin.units(job["id"])
    assert unit["state"] == "quarantined"
    assert "unit used" in unit["last_error"] and "> max_memory 100 MB" in unit["last_error"]


def test_low_disk_takes_no_units_and_says_why(grid, tmp_path):
    publish(grid.admin, release(tmp_path, BUSY_JOB))
    grid.worker("a", env={"OFFICEGRID_MIN_FREE_DISK": "1000PB", "OG_PIDFILE": "x"})
    row = wait_for(lambda: (r := _worker_row(grid.admin, "a")).get("state") == "waiting"
                   and r, 60, what="'waiting' in the workers list")
    assert row["reason"].startswith("low disk: ") and " free < " in row["reason"]
    job = grid.admin.submit("job:process", write_csv(tmp_path / "in.csv", 3), unit_size=3)
    beats = _worker_row(grid.admin, "a")["last_seen"]
    wait_for(lambda: _worker_row(grid.admin, "a")["last_seen"] > beats + 0.5, 30,
             what="more heartbeats")
    assert [u["state"] for u in grid.admin.units(job["id"])] == ["queued"]


# ------------------------------------------------------------------------------ desktop on Xvfb


def _desktop_env(display: str, tmp: Path) -> dict[str, str]:
    """A worker with the desktop preset and test-sized numbers (seconds)."""
    config = tmp / "officegrid.toml"
    config.write_text(textwrap.dedent("""
        [policy]
        preset = "desktop"
        start_idle = 1
        continue_idle = 2
        max_suspend = 4
        max_cpu = 1.0        # the test machine is shared: its load says nothing here
        sources = ["x11"]    # only the Xvfb display is the "owner" (not this host's ttys)
    """))
    return {"DISPLAY": display, "OFFICEGRID_CONFIG": str(config),
            "OFFICEGRID_POLICY": "desktop"}


def _type_until(display: str, cond, timeout: float, what: str) -> None:
    """Keep "typing" (moving the pointer) on ``display`` until ``cond()`` holds."""
    from xvfb import xdotool

    deadline = time.monotonic() + timeout
    i = 0
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        i += 1
        xdotool(display, "mousemove", str(100 + i % 50), str(100 + i % 37))
        time.sleep(0.2)


@pytest.mark.timeout(300)
def test_desktop_policy_suspends_on_input_resumes_and_vacates(grid, tmp_path):
    pytest.importorskip("officegrid.worker.policy")
    from xvfb import xdotool, xvfb_display

    with xvfb_display() as display:
        publish(grid.admin, release(tmp_path, BUSY_JOB))
        pidfile = tmp_path / "pids"
        env = {"OG_PIDFILE": str(pidfile), "OG_WORK": "0.1", **_desktop_env(display, tmp_path)}
        a = grid.worker("a", env=env)
        n = 60
        job = grid.admin.submit("job:process", write_csv(tmp_path / "in.csv", n), unit_size=60)
        runner, child = _pids(pidfile)  # started once the display was idle for start_idle
        assert "policy: desktop" in a.output()

        xdotool(display, "mousemove", "10", "10")
        wait_for(lambda: _status(runner) == _status(child) == psutil.STATUS_STOPPED, 30,
                 what="tree stopped after input")
        row = wait_for(lambda: (r := _worker_row(grid.admin, "a")).get("state") == "suspended"
                       and r, 30, what="'suspended' in the workers list")
        assert row["reason"]
        # No input: continued after continue_idle.
        wait_for(lambda: _status(runner) not in (psutil.STATUS_STOPPED, None)
                 and _status(child) != psutil.STATUS_STOPPED, 30, what="tree continued")
        # Input again, and keep typing: vacated after max_suspend, the tree is gone.
        _type_until(display, lambda: not _alive(runner) and not _alive(child), 60,
                    "vacate after max_suspend")
        _type_until(display, lambda: len(list(grid.admin.units(job["id"]))) == 2, 30,
                    "the unit split")
        first, rest = grid.admin.units(job["id"])
        assert first["state"] == "done" and first["count"] + rest["count"] == n
        assert rest["state"] in ("queued", "leased")
        # Owner gone: the rest runs, results exactly once in record order.
        assert grid.admin.wait(job["id"], timeout=180)["state"] == "done"
        keys = _exported_keys(grid.admin, job["id"], tmp_path / "out.csv")
        assert keys == list(range(1, n + 1))


def _stuck_unit_vacated(grid, tmp_path: Path, display: str, work: str,
                        records_first: int = 0) -> dict:
    """A desktop agent runs a 5-record unit whose record 2 never returns (``work`` seconds per
    other record); after ``records_first`` records are done, input goes on until the vacate
    has killed the stuck tree. Returns the job."""
    publish(grid.admin, release(tmp_path, BUSY_JOB))
    pidfile = tmp_path / "pids"
    env = {"OG_PIDFILE": str(pidfile), "OG_WORK": work, "OG_IGNORE_STOP": "1",
           **_desktop_env(display, tmp_path)}
    grid.worker("a", env=env)
    job = grid.admin.submit("job:process", write_csv(tmp_path / "in.csv", 5), unit_size=5,
                            retry_budget=0, lost_budget=0)
    runner, child = _pids(pidfile)
    if records_first:
        wait_for(lambda: _processed(pidfile) >= records_first, 60,
                 what=f"{records_first} record(s) done")
    _type_until(display, lambda: not _alive(runner) and not _alive(child), 60,
                "the stuck tree killed on vacate")
    return job


@pytest.mark.timeout(300)
def test_vacate_kills_a_unit_that_ignores_the_stop_request(grid, tmp_path):
    pytest.importorskip("officegrid.worker.policy")
    from xvfb import xvfb_display

    with xvfb_display() as display:
        job = _stuck_unit_vacated(grid, tmp_path, display, "0.05")
        (unit,) = grid.admin.units(job["id"])  # record 2 never finished: nothing to split
        # The tree is gone before the agent's vacate report reaches the server: await it.
        wait_for(lambda: grid.admin.attempts(unit_id=unit["id"])[0]["state"] == "vacated", 60,
                 what="the attempt reported vacated")
        (unit,) = grid.admin.units(job["id"])
        assert unit["state"] in ("queued", "leased") and unit["failures"] == 0


def test_a_killed_unit_keeps_the_records_its_last_progress_report_counted(grid, tmp_path):
    """Re-trial finding: a record longer than the vacate grace got the tree killed, and the
    records finished before it were thrown away with the unit."""
    pytest.importorskip("officegrid.worker.policy")
    from xvfb import xvfb_display

    with xvfb_display() as display:
        # Record 1 takes longer than the progress interval (0.5 s), so a report counts it;
        # record 2 never returns, so the stop request is never acted on.
        job = _stuck_unit_vacated(grid, tmp_path, display, "0.8", records_first=1)
        wait_for(lambda: len(list(grid.admin.units(job["id"]))) == 2, 60,
                 what="the unit split at its finished prefix")
        first, rest = grid.admin.units(job["id"])
        assert (first["state"], first["count"]) == ("done", 1)
        assert rest["count"] == 4 and rest["state"] in ("queued", "leased")


# ------------------------------------------------------------- exactly once: split vs. completion


def _worker_client(server, admin, name: str):
    """A worker identity with an open session, talking the protocol directly."""
    import uuid

    from officegrid import protocol as p
    from officegrid.client import Client

    join = admin.create_token("enroll", uses=1)["token"]
    with Client(server.url, join) as c:
        token = c.enroll("host-" + name, "linux", name)["token"]
    wc = Client(server.url, token, instance=uuid.uuid4().hex)
    wc.open_session(p.SessionRequest(hostname="host-" + name, platform="linux", version="t",
                                     resources=p.WorkerResources()))
    return wc


def _result(keys: list[int]) -> bytes:
    from officegrid.records.units import ResultLine, encode_unit_result

    return encode_unit_result([ResultLine(key=k, rows=[{"v": k}]) for k in keys])


@pytest.mark.parametrize("first", ["split", "complete"])
def test_split_racing_a_completion_records_each_record_once(tmp_path, store_url, first):
    from conftest import Grid
    from officegrid import protocol as p

    g = Grid(tmp_path, store_url).start(env={"OFFICEGRID_SPECULATIVE_AFTER": "0"})
    try:
        publish(g.admin, release(tmp_path, BUSY_JOB))
        job = g.admin.submit("job:process", write_csv(tmp_path / "in.csv", 10), unit_size=10)
        a, b = _worker_client(g.server, g.admin, "a"), _worker_client(g.server, g.admin, "b")
        req = p.LeaseRequest(resources=p.WorkerResources(), max_units=1)
        (la,) = a.lease(req).leases
        (lb,) = b.lease(req).leases  # a speculative second copy of the same unit
        assert lb.unit == la.unit and lb.speculative

        def split():
            data = _result([1, 2, 3, 4])
            return b.vacate(lb.attempt, p.Vacate(
                reason="vacated: input", done=4, result=b.put_blob(data), records_done=4,
                columns=["v"]))

        def complete():
            data = _result(list(range(1, 11)))
            return a.complete(la.attempt, p.Completion(
                result=a.put_blob(data), records_done=10, record_errors=0, columns=["v"]))

        if first == "split":
            assert json.loads(split()["detail"])["outcome"] == "split"
            assert complete().outcome == "discarded"
        else:
            assert complete().outcome == "accepted"
            assert json.loads(split()["detail"])["outcome"] == "ignored"
        units = list(g.admin.units(job["id"]))
        assert len(units) == (2 if first == "split" else 1)
        if first == "split":
            (lc,) = a.lease(req).leases  # the rest: records 5..10
            assert lc.unit == units[1]["id"] and lc.count == 6
            a.complete(lc.attempt, p.Completion(result=a.put_blob(_result(list(range(5, 11)))),
                                                records_done=6, record_errors=0,
                                                columns=["v"]))
        assert g.admin.wait(job["id"], timeout=60)["state"] == "done"
        keys = _exported_keys(g.admin, job["id"], tmp_path / "out.csv")
        assert keys == list(range(1, 11))
        a.close()
        b.close()
    finally:
        g.close()


def test_pause_duration_parsing():
    from officegrid.cli.pause import parse_duration

    assert parse_duration("2h") == 7200
    assert parse_duration("1h30m") == 5400
    assert parse_duration("45") == 45
    for bad in ("", "2x", "h", "-5m", "0", "2h x"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_split_unit_input_keeps_lines_byte_for_byte():
    from officegrid.records.units import decode_unit_input, encode_unit_input, split_unit_input

    rows = [(i, {"text": f"line\u2028sep {i}", "n": i}) for i in range(1, 6)]
    data = encode_unit_input(rows)
    prefix, rest, last, first = split_unit_input(data, 2)
    assert prefix + rest == data
    assert (last, first) == (2, 3)
    assert [k for k, _ in decode_unit_input(rest)] == [3, 4, 5]
    for bad in (0, 5, 9):
        with pytest.raises(ValueError, match="cannot split a unit of 5 records"):
            split_unit_input(data, bad)


def test_keep_awake_leaves_no_process_behind():
    from officegrid.worker.owner import KeepAwake

    before = {c.pid for c in psutil.Process().children()}
    k = KeepAwake()
    k.acquire()
    k.check()  # an inhibitor that cannot work here (no logind) is noticed and given up
    k.release()
    k.acquire()
    k.release()
    assert not k.held
    wait_for(lambda: {c.pid for c in psutil.Process().children()
                      if c.status() != psutil.STATUS_ZOMBIE} <= before, 10,
             what="no inhibitor child left")


# ------------------------------------------------------------------ owner controls (H4)

SYSTEM_PYTHON = "/usr/bin/python3.11"  # readable by every uid (the venv's interpreter may not be)


def _cli_as(uid: int, *args: str) -> subprocess.CompletedProcess:
    """`officegrid ARGS` run as another local user, as a desktop owner would run it."""
    import site

    path = [str(Path(__file__).resolve().parents[2] / "src"), *site.getsitepackages()]
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "PYTHONPATH": ":".join(path)}
    return subprocess.run([SYSTEM_PYTHON, "-m", "officegrid", *args], env=env, cwd="/",
                          user=uid, group=uid, extra_groups=[], capture_output=True,
                          text=True, timeout=60)


def _other_users_can_run_the_cli() -> str | None:
    """None if this test can run the CLI as other uids, else why not."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (to run the CLI as other users)"
    if sys.version_info[:2] != (3, 11) or not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"needs {SYSTEM_PYTHON} matching this interpreter"
    probe = _cli_as(65534, "pause", "--help")
    return None if probe.returncode == 0 else f"CLI as nobody fails: {probe.stderr[-300:]}"


def test_another_user_pauses_the_agent_and_only_they_can_end_it(grid, tmp_path):
    """The agent owns its work dir (as an installed service does); the desktop's owner is a
    different uid: its pause reaches the agent through sessions/ at once, the operator sees
    who paused, a third user cannot end it, its writer can."""
    import tempfile

    from grid import WorkerProc

    why = _other_users_can_run_the_cli()
    if why:
        pytest.skip(why)
    base = Path(tempfile.mkdtemp(prefix="og-h4-"))
    os.chmod(base, 0o711)  # others pass through to sessions/, as in /var/lib/officegrid
    wd = base / "worker"
    wd.mkdir(mode=0o711)
    os.chmod(wd, 0o711)
    try:
        publish(grid.admin, release(tmp_path, BUSY_JOB))
        pidfile = tmp_path / "pids"
        w = WorkerProc(grid.server.url, wd, enroll=grid.enroll_token(),
                       env={"OG_PIDFILE": str(pidfile), "OG_WORK": "0.1"},
                       extra_args=["--name", "a"])
        grid.workers.append(w)
        w.start()
        job = grid.admin.submit("job:process", write_csv(tmp_path / "in.csv", 30),
                                unit_size=30)
        runner, child = _pids(pidfile)

        done = _cli_as(65534, "pause", "--work-dir", str(wd))
        assert done.returncode == 0, done.stderr
        assert "worker paused until `officegrid resume`" in done.stderr
        assert "suspended its units" in done.stderr  # the running agent confirmed it
        assert (wd / "sessions" / "65534.pause").stat().st_uid == 65534
        assert _status(runner) == _status(child) == psutil.STATUS_STOPPED
        row = wait_for(lambda: (r := _worker_row(grid.admin, "a")).get("state") == "paused"
                       and r, 30, what="paused in the workers list")
        assert row["reason"] == "paused by owner (nobody)"

        # A third user (uid 1, daemon) can neither end it with resume nor with --all.
        other = _cli_as(1, "resume", "--work-dir", str(wd))
        assert other.returncode == 0, other.stderr
        assert "you had not paused the worker" in other.stderr
        assert "still paused by nobody" in other.stderr
        other = _cli_as(1, "resume", "--all", "--work-dir", str(wd))
        assert other.returncode != 0 and "cannot end the pause of nobody" in other.stderr
        assert (wd / "sessions" / "65534.pause").exists()
        assert _status(runner) == psutil.STATUS_STOPPED

        done = _cli_as(65534, "resume", "--work-dir", str(wd))
        assert done.returncode == 0, done.stderr
        assert done.stderr.strip() == "worker resumed"
        wait_for(lambda: _status(runner) != psutil.STATUS_STOPPED
                 and _status(child) != psutil.STATUS_STOPPED, 30, what="tree continued")
        assert grid.admin.wait(job["id"], timeout=120)["state"] == "done"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_pause_says_when_no_agent_runs_or_none_is_installed(tmp_path):
    missing = _cli("pause", "--work-dir", str(tmp_path / "nope"))
    assert missing.returncode != 0
    assert f"no worker work dir at {tmp_path / 'nope'}" in missing.stderr
    wd = tmp_path / "stopped"
    wd.mkdir()
    done = _cli("pause", "30s", "--work-dir", str(wd))
    assert done.returncode == 0, done.stderr
    assert "worker paused for 30 s, until " in done.stderr  # seconds, never "0 min"
    assert f"no agent is running on {wd} now: the pause applies when it starts" in done.stderr
    from officegrid.worker.pause import read_pauses

    (p,) = read_pauses(wd)
    assert 0 < p.until - time.time() <= 30
    done = _cli("resume", "--work-dir", str(wd))
    assert done.returncode == 0 and "worker resumed (no agent is running" in done.stderr
    assert read_pauses(wd) == []


def test_a_user_reaches_an_installed_work_dir_they_cannot_list(tmp_path):
    """An installed work dir is 0711: the CLI's --work-dir must not demand read access (the
    autostart entry runs `idle-reporter --work-dir /var/lib/officegrid/worker`)."""
    import tempfile

    why = _other_users_can_run_the_cli()
    if why:
        pytest.skip(why)
    base = Path(tempfile.mkdtemp(prefix="og-h4-"))
    try:
        os.chmod(base, 0o711)
        wd = base / "worker"
        wd.mkdir(mode=0o711)
        os.chmod(wd, 0o711)
        (wd / "sessions").mkdir()
        os.chmod(wd / "sessions", 0o1777)
        done = _cli_as(65534, "idle-reporter", "--once", "--source", "tty", "--work-dir",
                       str(wd))
        assert done.returncode == 0, done.stderr
        (report,) = (wd / "sessions").glob("65534-*.json")
        assert report.stat().st_uid == 65534
        done = _cli_as(65534, "pause", "1h30m", "--work-dir", str(wd))
        assert done.returncode == 0, done.stderr
        assert "worker paused for 1 h 30 min, until " in done.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)
