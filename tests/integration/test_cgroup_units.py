"""Unit trees in cgroup v2 with real processes and a real (private) cgroup2 mount (issue 5, item 4).

Root only: each test mounts a private cgroup2 hierarchy (``mount -t cgroup2``) and works in a
directory of its own there; skipped with the reason when that is not possible. The memory
controller is not available in that hierarchy on the development machine (it is bound to cgroup
v1), so memory.max is covered by tests/unit/test_cgroup.py only.

Where a test asserts that nothing happens while frozen it has to let time pass (there is no event
for "nothing happened"); every other wait polls a condition with a deadline (a hang guard).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest

from grid import publish, wait_for, write_csv
from officegrid.worker import cgroup
from officegrid.worker.cgroup import CgroupBase
from officegrid.worker.processes import find_marked, spawn_runner, sweep_leftovers

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="cgroup v2 is Linux only"),
]

# record 0 starts: a child (in the runner's group) that ticks, and a forker that escapes like a
# daemon *with an empty environment* (no marker: the marker scan cannot find it) and forks a
# short-lived process every 20 ms; then the runner ticks itself. Ticks and forks are appended to
# files, one byte / one line each, so a frozen tree is one whose files stop growing.
TREE_JOB = r'''
import json, os, subprocess, sys, time

TICK = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
while True:
    os.write(fd, b"x")
    time.sleep(0.01)
"""
FORKER = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
while True:
    pid = os.fork()
    if pid == 0:
        os.write(fd, b"%d\\n" % os.getpid())
        os._exit(0)
    os.waitpid(pid, 0)
    time.sleep(0.02)
"""
LAUNCHER = """
import subprocess, sys
p = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], env={},
                     start_new_session=True, stdout=subprocess.DEVNULL)
print(p.pid)
"""


def process(record, ctx):
    d = ctx.extra["dir"]
    child = subprocess.Popen([sys.executable, "-c", TICK, os.path.join(d, "child.ticks")])
    out = subprocess.run([sys.executable, "-c", LAUNCHER, FORKER, os.path.join(d, "forks")],
                         check=True, stdout=subprocess.PIPE, text=True, env={})
    pids = {"runner": os.getpid(), "child": child.pid, "escaped": int(out.stdout)}
    with open(os.path.join(d, "pids.tmp"), "w") as f:
        json.dump(pids, f)
    os.replace(os.path.join(d, "pids.tmp"), os.path.join(d, "pids.json"))
    fd = os.open(os.path.join(d, "runner.ticks"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    while True:
        os.write(fd, b"x")
        time.sleep(0.01)
'''

SLOW_JOB = """
import time

def process(record, ctx):
    time.sleep(0.02)
    return {"n": record["n"]}
"""


@pytest.fixture
def cg_base(tmp_path_factory):
    """A fresh directory in a private cgroup2 mount; everything in it is killed and removed,
    and the mount unmounted, afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a private cgroup2 hierarchy needs root")
    mnt = tmp_path_factory.mktemp("cg2")
    done = subprocess.run(["mount", "-t", "cgroup2", "none", str(mnt)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a private cgroup2 hierarchy: {done.stderr.strip()}")
    base = mnt / f"officegrid-test-{uuid.uuid4().hex[:10]}"
    try:
        yield base
    finally:
        if base.is_dir():
            for d in sorted((p for p in base.rglob("*") if p.is_dir()), reverse=True) + [base]:
                unit = cgroup.UnitCgroup(d)
                try:
                    unit.kill()
                    unit.wait_empty(5.0)
                except OSError:
                    pass
                unit.remove(timeout=5.0)
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def prefix():
    value = f"ogcgtest-{uuid.uuid4().hex[:12]}:"
    yield value
    sweep_leftovers(value)


def write_attempt(tmp: Path, source: str, n: int = 1, **extra) -> tuple[Path, Path]:
    rel = tmp / "rel"
    rel.mkdir(exist_ok=True)
    (rel / "job.py").write_text(textwrap.dedent(source))
    attempt = tmp / f"attempt-{uuid.uuid4().hex[:6]}"
    attempt.mkdir()
    (attempt / "in.jsonl").write_text(
        "".join(json.dumps([i, {"n": i}]) + "\n" for i in range(n)))
    spec = {"release_dir": str(rel), "entry": "job:process", "input": "in.jsonl",
            "output": "out.jsonl", "log": "job.log", "attempt_id": attempt.name, "unit_id": 1,
            "job_id": 1, "release_id": "r", "worker": "w", "progress_interval": 0.05,
            "extra": {"dir": str(attempt), **extra}}
    (attempt / "spec.json").write_text(json.dumps(spec))
    return attempt, attempt / "spec.json"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _counters(attempt: Path) -> tuple[int, int, int]:
    return (_size(attempt / "runner.ticks"), _size(attempt / "child.ticks"),
            _size(attempt / "forks"))


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _start_tree(tmp_path: Path, base: CgroupBase, prefix: str):
    attempt, spec = write_attempt(tmp_path, TREE_JOB)
    cg = base.unit(attempt.name)
    rp = spawn_runner(sys.executable, spec, attempt, attempt / "stderr.log", None,
                      prefix + attempt.name, cg)
    pids = json.loads(wait_for(lambda: (attempt / "pids.json").exists()
                               and (attempt / "pids.json").read_text(), 30, what="the tree"))
    procs = {name: psutil.Process(pid) for name, pid in pids.items()}
    wait_for(lambda: all(_counters(attempt)), 30, what="every part of the tree at work")
    return attempt, cg, rp, procs


def test_the_tree_is_frozen_thawed_and_killed_through_its_cgroup(tmp_path, cg_base, prefix):
    base = cgroup.discover(cg_base)
    assert base is not None
    attempt, cg, rp, procs = _start_tree(tmp_path, base, prefix)
    try:
        assert rp.pid == procs["runner"].pid  # the shell that joined the cgroup became the runner
        # Every process of the tree is in the unit's cgroup, also the escaped forker, whose
        # empty environment hides it from the marker scan and whose session is its own.
        members = set(cg.procs())
        assert {p.pid for p in procs.values()} <= members
        assert procs["escaped"].pid not in {p.pid for p in find_marked(rp.marker.__eq__)}
        assert os.getsid(procs["escaped"].pid) != rp.pid

        rp.suspend()
        assert rp.suspended and cg.events()["frozen"] == 1
        # Frozen, not SIGSTOPped: the owner's view of the processes is unchanged.
        assert all(p.status() != psutil.STATUS_STOPPED for p in procs.values())
        before = _counters(attempt)
        frozen_members = set(cg.procs())
        time.sleep(0.5)  # nothing may happen while frozen: let time pass, then look
        assert _counters(attempt) == before  # no tick, and no fork, in the whole tree
        assert set(cg.procs()) == frozen_members

        resumed = rp.resume()
        assert {p.pid for p in procs.values()} <= set(resumed)
        assert cg.events()["frozen"] == 0
        wait_for(lambda: all(a > b for a, b in zip(_counters(attempt), before, strict=True)),
                 30, what="every part of the tree ticking again")

        rp.suspend()  # killed while frozen: thawed, SIGTERMed, SIGKILLed as a whole
        rc = rp.kill_tree(grace=2.0)
        assert rc == -signal.SIGTERM
        assert all(_gone(p) for p in procs.values())
        assert not cg.populated
    finally:
        rp.close()
        base.close()
    assert not cg.path.exists()  # removed after the unit


def test_a_frozen_unit_is_vacated_gracefully(tmp_path, cg_base, prefix):
    base = cgroup.discover(cg_base)
    assert base is not None
    attempt, spec = write_attempt(tmp_path, SLOW_JOB, n=500)
    cg = base.unit("vacate")
    with spawn_runner(sys.executable, spec, attempt, attempt / "stderr.log", None,
                      prefix + "v", cg) as rp:
        while (msg := rp.read_message(timeout=30)) is not None and msg["type"] != "progress":
            pass
        assert msg is not None, "no progress"
        rp.suspend()
        assert cg.frozen
        assert rp.stop(timeout=30) == 0  # thawed, asked to stop, finished its record, exited
        messages = list(rp.messages())
        assert messages[-1]["type"] == "stopped" and 0 < messages[-1]["done"] < 500
        lines = (attempt / "out.jsonl").read_text().splitlines()
        assert len(lines) == messages[-1]["done"]
    base.close()
    assert not cg.path.exists()


AGENT = """
import json, os, sys, time
from pathlib import Path
from officegrid.worker.cgroup import CgroupBase
from officegrid.worker.processes import spawn_runner
a = json.loads(sys.argv[1])
base = CgroupBase(Path(a["base"]))
cg = base.unit("orphan")
rp = spawn_runner(sys.executable, a["spec"], a["cwd"], a["stderr"], None, a["marker"], cg)
deadline = time.monotonic() + 30
while not os.path.exists(a["pids"]) and time.monotonic() < deadline:
    time.sleep(0.01)
rp.suspend()
print(json.dumps({"frozen": cg.frozen, "cgroup": str(cg.path)}), flush=True)
time.sleep(600)
"""


def test_agent_death_with_a_frozen_unit_leaves_nothing_behind(tmp_path, cg_base, prefix):
    """A frozen runner cannot see its stdin close when the agent dies: the guard kills it."""
    cg_base.mkdir()
    attempt, spec = write_attempt(tmp_path, TREE_JOB)
    args = {"base": str(cg_base), "spec": str(spec), "cwd": str(attempt),
            "stderr": str(attempt / "stderr.log"), "marker": prefix + "orphan",
            "pids": str(attempt / "pids.json")}
    agent = subprocess.Popen([sys.executable, "-c", AGENT, json.dumps(args)],
                             stdout=subprocess.PIPE, text=True)
    try:
        report = json.loads(agent.stdout.readline())
        assert report["frozen"] is True
        pids = json.loads((attempt / "pids.json").read_text())
        procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        unit = cgroup.UnitCgroup(Path(report["cgroup"]))
        assert {p.pid for p in procs.values()} <= set(unit.procs())
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=30)
        wait_for(lambda: all(_gone(p) for p in procs.values()), 30,
                 what="the frozen tree killed after the agent died")
        # A killed process stays in its cgroup until its new parent reaps the zombie.
        wait_for(lambda: not unit.populated, 30, what="the unit cgroup emptied")
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        agent.stdout.close()


def test_leftover_unit_cgroups_are_swept_at_start(tmp_path, cg_base, prefix):
    cg_base.mkdir()
    (cg_base / "unit-old-empty").mkdir()
    busy = cg_base / "unit-old-busy"
    busy.mkdir()
    sleeper = subprocess.Popen(["/bin/sh", "-c", 'echo 0 > "$0" && exec sleep 300',
                                str(busy / "cgroup.procs")])
    try:
        wait_for(lambda: sleeper.pid in cgroup.UnitCgroup(busy).procs(), 30,
                 what="the sleeper in its cgroup")
        base = cgroup.discover(cg_base)
        assert base is not None
        # An operator's directory may be shared: only empty leftovers are removed.
        assert not (cg_base / "unit-old-empty").exists()
        assert busy.exists() and sleeper.poll() is None
        # The agent's own delegated cgroup is its alone: leftovers there are killed too.
        own = CgroupBase(cg_base, own=True)
        assert own.sweep() == ["unit-old-busy"]
        assert sleeper.wait(timeout=30) == -signal.SIGKILL
        assert not busy.exists()
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        sleeper.wait()


# -- a real agent ------------------------------------------------------------------------------

BUSY_JOB = """
import os, subprocess, sys, time

_child = None
LOOP = "import time\\nwhile True: time.sleep(0.05)"

def process(record, ctx):
    global _child
    if _child is None:
        _child = subprocess.Popen([sys.executable, "-c", LOOP])
        # Escaped: its own session, no environment (no marker), and not waited for.
        escaped = subprocess.Popen([sys.executable, "-c", LOOP], env={},
                                   start_new_session=True)
        tmp = os.environ["OG_PIDFILE"] + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(f"{os.getpid()} {_child.pid} {escaped.pid}")
        os.replace(tmp, os.environ["OG_PIDFILE"])
    end = time.monotonic() + 0.1
    while time.monotonic() < end:  # CPU-bound
        pass
    return {"id": record["id"], "n": int(record["value"])}
"""


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFICEGRID_")}
    return subprocess.run([sys.executable, "-m", "officegrid", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def _units(base: Path) -> list[Path]:
    return [d for d in base.iterdir() if d.is_dir() and d.name.startswith("unit-")] \
        if base.is_dir() else []


def _agent_with_a_unit(grid, tmp_path: Path, cg_base: Path):
    """A real agent with unit cgroups under ``cg_base`` running a 30-record busy unit:
    ``(worker, job, [runner, child, escaped pids], the unit's cgroup)``."""
    rel = tmp_path / "rel"
    rel.mkdir()
    (rel / "job.py").write_text(textwrap.dedent(BUSY_JOB))
    publish(grid.admin, rel)
    pidfile = tmp_path / "pids"
    w = grid.worker("a", env={"OG_PIDFILE": str(pidfile), "OFFICEGRID_CGROUP_ROOT": str(cg_base)})
    job = grid.admin.submit("job:process", write_csv(tmp_path / "in.csv", 30), unit_size=30)
    text = wait_for(lambda: pidfile.exists() and pidfile.read_text(), 60, what="unit pids")
    (unit_dir,) = _units(cg_base)
    return w, job, [int(x) for x in text.split()], cgroup.UnitCgroup(unit_dir)


def test_a_real_agent_pauses_and_resumes_its_unit_through_the_cgroup(grid, tmp_path, cg_base):
    w, job, (runner, child, escaped), unit = _agent_with_a_unit(grid, tmp_path, cg_base)
    assert {runner, child, escaped} <= set(unit.procs())
    assert "cgroups: unit trees run in cgroup v2" in w.output()

    done = _cli("pause", "--work-dir", str(w.work_dir))
    assert done.returncode == 0, done.stderr
    wait_for(lambda: unit.frozen, 30, what="the unit's cgroup frozen")
    assert psutil.Process(runner).status() != psutil.STATUS_STOPPED  # frozen, not SIGSTOPped
    assert grid.admin.job(job["id"])["state"] == "running"  # the lease is kept while paused

    done = _cli("resume", "--work-dir", str(w.work_dir))
    assert done.returncode == 0, done.stderr
    wait_for(lambda: not unit.frozen, 30, what="the unit's cgroup thawed")
    info = grid.admin.wait(job["id"], timeout=120)
    assert info["state"] == "done" and info["counts"]["records_done"] == 30
    wait_for(lambda: not _units(cg_base), 30, what="the unit's cgroup removed")
    assert not _alive(child) and not _alive(escaped)


def test_sigkilled_agent_with_a_paused_unit_leaves_no_process(grid, tmp_path, cg_base):
    w, _job, pids, unit = _agent_with_a_unit(grid, tmp_path, cg_base)
    done = _cli("pause", "--work-dir", str(w.work_dir))
    assert done.returncode == 0, done.stderr
    wait_for(lambda: unit.frozen, 30, what="the unit's cgroup frozen")
    w.kill(signal.SIGKILL)  # no agent restarts: nothing sweeps later
    wait_for(lambda: not any(_alive(p) for p in pids), 30,
             what="the frozen tree, escaped grandchild included, killed")
    # A killed process stays in its cgroup until its new parent reaps the zombie.
    wait_for(lambda: not unit.populated, 30, what="the unit cgroup emptied")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
