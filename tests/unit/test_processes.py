"""Process control with real processes and real signals: trees, suspend, kill, supervisor death."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from officegrid.worker.processes import (
    MARKER_ENV,
    RunnerProcess,
    spawn_runner,
    sweep_leftovers,
)

JOBS = Path(__file__).parent / "jobs"
DEADLINE = 10.0  # seconds allowed for anything that should happen "at once"

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(os.name != "posix", reason="POSIX process groups and signals"),
]


# -- helpers --------------------------------------------------------------------------------------


def write_attempt(tmp_path: Path, name: str, entry: str, n: int = 1, **extra) -> tuple[Path, Path]:
    attempt = tmp_path / name
    attempt.mkdir()
    (attempt / "in.jsonl").write_text(
        "".join(json.dumps([i, {"n": i}]) + "\n" for i in range(n)), encoding="utf-8"
    )
    spec = {
        "release_dir": str(JOBS),
        "entry": entry,
        "input": "in.jsonl",
        "output": "out.jsonl",
        "log": "job.log",
        "attempt_id": name,
        "unit_id": 1,
        "job_id": 1,
        "release_id": "r",
        "worker": "w",
        "progress_interval": 0.05,
        "extra": {"pids_file": str(attempt / "pids.json"), **extra},
    }
    (attempt / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    return attempt, attempt / "spec.json"


def wait_for_file(path: Path, timeout: float = DEADLINE) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.01)
    return json.loads(path.read_text())


def is_gone(proc: psutil.Process) -> bool:
    """Gone or a zombie (finished, only waiting for a parent to reap it)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(predicate, timeout: float = DEADLINE) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def status(proc: psutil.Process) -> str:
    try:
        return proc.status()
    except psutil.NoSuchProcess:
        return "gone"


@pytest.fixture
def prefix():
    """A marker prefix unique to the test; anything left with it is swept afterwards."""
    value = f"ogtest-{uuid.uuid4().hex[:12]}:"
    yield value
    sweep_leftovers(value)


@pytest.fixture
def spawner(tmp_path, prefix):
    """Factory: start the spawner job; returns (RunnerProcess, {"runner","child","escaped"} as
    psutil.Process objects, captured while alive so that pid reuse cannot fool the checks)."""
    started: list[RunnerProcess] = []

    def start(**extra):
        attempt, spec = write_attempt(tmp_path, f"a{len(started)}", "spawner:process", **extra)
        rp = spawn_runner(
            sys.executable, spec, attempt, attempt / "stderr.log", None, prefix + attempt.name
        )
        started.append(rp)
        pids = wait_for_file(attempt / "pids.json")
        procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        assert procs["runner"].pid == rp.pid
        return rp, procs

    yield start
    for rp in started:
        rp.close()


# -- kill_tree ------------------------------------------------------------------------------------


def test_kill_tree_kills_grandchild_and_escaped_grandchild(spawner):
    rp, procs = spawner()
    assert os.getpgid(procs["child"].pid) == rp.pid
    # The escaped one really left: another session, and not a descendant of the runner.
    assert os.getsid(procs["escaped"].pid) != rp.pid
    assert procs["escaped"].pid not in {p.pid for p in procs["runner"].children(recursive=True)}

    rc = rp.kill_tree(grace=5.0)

    assert rc == -signal.SIGTERM
    assert wait_until(lambda: all(is_gone(p) for p in procs.values()))


def test_kill_tree_on_a_stopped_tree(spawner):
    # The runner handles SIGTERM (exit 42): a handler cannot run while the process is stopped,
    # so only a tree continued before SIGTERM ends by SIGTERM rather than by SIGKILL after grace.
    rp, procs = spawner(graceful=True)
    stopped = rp.suspend()
    assert set(stopped) == {p.pid for p in procs.values()}
    assert wait_until(lambda: all(status(p) == psutil.STATUS_STOPPED for p in procs.values()))

    started = time.monotonic()
    rc = rp.kill_tree(grace=8.0)
    elapsed = time.monotonic() - started

    assert rc == 42  # the SIGTERM handler ran: the tree was continued first
    assert elapsed < 8.0  # ... so the grace period was not used up
    assert wait_until(lambda: all(is_gone(p) for p in procs.values()))


def test_kill_tree_sigkills_what_ignores_sigterm_after_grace(spawner):
    rp, procs = spawner(stubborn=True)
    started = time.monotonic()
    rc = rp.kill_tree(grace=1.0)
    elapsed = time.monotonic() - started

    assert rc == -signal.SIGKILL
    assert elapsed >= 1.0
    assert wait_until(lambda: all(is_gone(p) for p in procs.values()))


def test_suspend_and_resume_the_whole_tree(spawner):
    rp, procs = spawner()
    rp.suspend()
    assert rp.suspended
    assert wait_until(lambda: all(status(p) == psutil.STATUS_STOPPED for p in procs.values()))
    resumed = rp.resume()
    assert set(resumed) == {p.pid for p in procs.values()}
    assert wait_until(lambda: all(status(p) == psutil.STATUS_SLEEPING for p in procs.values()))
    rp.kill_tree(grace=2.0)


def test_close_kills_a_running_tree_and_ends_the_channel(spawner):
    rp, procs = spawner()
    assert rp.read_message(timeout=1.0) == {"type": "started", "pid": rp.pid}
    assert rp.read_message(timeout=0.05) is None  # the job never finishes its first record
    rp.close()
    assert rp.returncode is not None
    assert all(is_gone(p) for p in procs.values())
    assert rp.read_message(timeout=1.0) is None
    assert rp.channel_closed


def test_stop_vacates_a_suspended_runner_gracefully(tmp_path, prefix):
    attempt, spec = write_attempt(tmp_path, "a", "slow:process", n=500, delay=0.02)
    with spawn_runner(
        sys.executable, spec, attempt, attempt / "stderr.log", None, prefix + "a"
    ) as rp:
        while True:  # wait until the unit is under way
            msg = rp.read_message(timeout=DEADLINE)
            assert msg is not None, "no progress"
            if msg["type"] == "progress":
                break
        rp.suspend()
        rc = rp.stop(timeout=DEADLINE)
        assert rc == 0  # it finished its record and exited by itself
        messages = list(rp.messages())
        assert messages[-1]["type"] == "stopped" and messages[-1]["done"] < 500
        lines = (attempt / "out.jsonl").read_text().splitlines()
        assert len(lines) == messages[-1]["done"]
    assert rp.channel_closed


def test_runner_gets_the_lowest_priority(spawner):
    rp, procs = spawner()
    for name in ("runner", "child", "escaped"):  # descendants inherit it
        assert procs[name].nice() == 19, name
    if sys.platform.startswith("linux"):
        assert procs["runner"].ionice().ioclass == psutil.IOPRIO_CLASS_IDLE


# -- supervisor death -----------------------------------------------------------------------------

AGENT = """
import json, os, sys, time
from officegrid.worker.processes import spawn_runner
a = json.loads(sys.argv[1])
rp = spawn_runner(sys.executable, a["spec"], a["cwd"], a["stderr"], None, a["marker"])
deadline = time.monotonic() + 20
while not os.path.exists(a["pids_file"]) and time.monotonic() < deadline:
    time.sleep(0.01)
if a["suspend"]:
    rp.suspend()
print(json.dumps({"runner": rp.pid}), flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("suspended", [False, True], ids=["running", "suspended"])
def test_supervisor_death_kills_the_runner_and_its_group(tmp_path, prefix, suspended):
    if suspended and not sys.platform.startswith("linux"):
        pytest.skip("waking a stopped runner on parent death uses PR_SET_PDEATHSIG (Linux)")
    attempt, spec = write_attempt(tmp_path, "a", "spawner:process")
    args = {
        "spec": str(spec),
        "cwd": str(attempt),
        "stderr": str(attempt / "stderr.log"),
        "marker": prefix + "a",
        "pids_file": str(attempt / "pids.json"),
        "suspend": suspended,
    }
    with open(tmp_path / "agent.err", "wb") as agent_err:
        agent = subprocess.Popen(
            [sys.executable, "-c", AGENT, json.dumps(args)],
            stdout=subprocess.PIPE,
            stderr=agent_err,
        )
    try:
        line = agent.stdout.readline()
        assert line, (tmp_path / "agent.err").read_text()
        pids = wait_for_file(attempt / "pids.json")
        procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        assert json.loads(line)["runner"] == procs["runner"].pid
        if suspended:
            assert wait_until(lambda: status(procs["runner"]) == psutil.STATUS_STOPPED)

        agent.kill()  # SIGKILL: the agent gets no chance to clean up
        agent.wait()

        # Pipe EOF (and, if suspended, the SIGCONT parent-death signal) make the runner kill
        # its own group.
        assert wait_until(lambda: is_gone(procs["runner"]) and is_gone(procs["child"])), {
            name: status(p) for name, p in procs.items()
        }
        # The grandchild that left the group survives that; the next start sweeps it.
        assert not is_gone(procs["escaped"])
        assert sweep_leftovers(prefix) == [procs["escaped"].pid]
        assert is_gone(procs["escaped"])
    finally:
        agent.kill()
        agent.wait()
        agent.stdout.close()


# -- sweep_leftovers ------------------------------------------------------------------------------

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def test_sweep_leftovers_kills_marked_processes_and_not_others(prefix):
    other = f"ogtest-{uuid.uuid4().hex[:12]}:"
    popens = {
        "mine": subprocess.Popen(SLEEPER, env={**os.environ, MARKER_ENV: prefix + "1"}),
        "mine_escaped": subprocess.Popen(
            SLEEPER, env={**os.environ, MARKER_ENV: prefix + "2"}, start_new_session=True
        ),
        "other_workdir": subprocess.Popen(SLEEPER, env={**os.environ, MARKER_ENV: other + "1"}),
        "unmarked": subprocess.Popen(
            SLEEPER, env={k: v for k, v in os.environ.items() if k != MARKER_ENV}
        ),
    }
    try:
        procs = {name: psutil.Process(p.pid) for name, p in popens.items()}
        killed = sweep_leftovers(prefix)
        assert sorted(killed) == sorted([popens["mine"].pid, popens["mine_escaped"].pid])
        assert is_gone(procs["mine"]) and is_gone(procs["mine_escaped"])
        assert not is_gone(procs["other_workdir"]) and not is_gone(procs["unmarked"])
        assert sweep_leftovers(prefix) == []
    finally:
        for p in popens.values():
            p.kill()
            p.wait()


CALLER = """
import json, os, subprocess, sys
prefix = sys.argv[1]
if sys.argv[2] == "parent":
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    out = subprocess.run([sys.executable, "-c", sys.argv[3], prefix, "child"],
                         capture_output=True, text=True, check=True).stdout
    sibling.wait()
    print(json.dumps({"sibling": sibling.pid, "killed": json.loads(out)}))
else:
    from officegrid.worker.processes import sweep_leftovers
    print(json.dumps(sweep_leftovers(prefix)))
"""


def test_sweep_never_kills_the_caller_or_its_ancestors(prefix):
    # Parent, sibling and caller all carry the marker; only the sibling may die.
    env = {**os.environ, MARKER_ENV: prefix + "x"}
    done = subprocess.run(
        [sys.executable, "-c", CALLER, prefix, "parent", CALLER],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["killed"] == [result["sibling"]]


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError):
        sweep_leftovers("")
    attempt, spec = write_attempt(tmp_path, "a", "basic:process")
    with pytest.raises(ValueError):
        spawn_runner(sys.executable, spec, attempt, attempt / "err", None, "")
    with pytest.raises(FileNotFoundError):
        spawn_runner(str(tmp_path / "no-python"), spec, attempt, attempt / "err", None, "m:1")
