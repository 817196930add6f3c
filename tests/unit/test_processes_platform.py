"""processes.py hooks for Windows job objects and the macOS background policy, run here with
real processes: a RunnerProcess whose job is a spy (the Win32 calls themselves cannot run on
Linux; winjob's logic is tested in test_winjob.py), and set_lowest_priority on "darwin"."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import psutil
import pytest

from officegrid.worker import darwin, processes
from officegrid.worker.processes import RunnerProcess

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(os.name != "posix", reason="real POSIX processes stand in for Windows"),
]

SLEEPER = [sys.executable, "-c", "import sys, time; sys.stdin.read(); time.sleep(60)"]


def sleeper() -> subprocess.Popen:
    return subprocess.Popen(SLEEPER, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            start_new_session=True)


class SpyJob:
    """Stands in for winjob.UnitJob; terminate() SIGKILLs the members like TerminateJobObject."""

    def __init__(self, pids: list[int], fail_suspend: bool = False) -> None:
        self.members = pids
        self.calls: list[str] = []
        self.fail_suspend = fail_suspend
        self.is_suspended = False

    def pids(self) -> list[int]:
        return list(self.members)

    def suspend(self) -> list[int]:
        self.calls.append("suspend")
        if self.fail_suspend:
            raise OSError(5, "QueryInformationJobObject: access denied")
        self.is_suspended = True
        return sorted(self.members)

    @property
    def suspended(self) -> bool:
        return self.is_suspended

    def resume(self) -> list[int]:
        self.calls.append("resume")
        self.is_suspended = False
        return sorted(self.members)

    def terminate(self, exit_code: int = 1) -> bool:
        self.calls.append("terminate")
        for pid in self.members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return True

    def memory_limit_hits(self) -> int:
        self.calls.append("memory")
        return 2

    def close(self) -> None:
        self.calls.append("close")


def status(pid: int) -> str:
    return psutil.Process(pid).status()


def test_runner_with_a_job_suspends_resumes_and_kills_through_it() -> None:
    runner, other = sleeper(), sleeper()  # `other` is in no group, tree or marker of the runner
    job = SpyJob([runner.pid, other.pid])
    rp = RunnerProcess(runner, "test-marker-job", job=job)  # type: ignore[arg-type]
    try:
        assert other.pid in {p.pid for p in rp.tree()}  # found only through the job
        assert rp.suspend() == sorted([runner.pid, other.pid])
        assert job.calls == ["suspend"] and rp.suspended
        assert status(runner.pid) != psutil.STATUS_STOPPED  # no SIGSTOP: the job did it
        rp.resume()
        assert job.calls[-1] == "resume" and not rp.suspended
        assert rp.memory_oom_kills() == 2  # job memory-limit hits count as OOM kills
        code = rp.kill_tree(grace=5.0)
        # TerminateJobObject came first: the runner died of the spy's SIGKILL, not of SIGTERM.
        assert code == -signal.SIGKILL
        assert other.wait(5) == -signal.SIGKILL
        rp.close()
        rp.close()
        assert job.calls.count("close") == 1
    finally:
        for p in (runner, other):
            if p.poll() is None:
                p.kill()
                p.wait()
        rp.close()


def test_runner_falls_back_to_signals_when_the_job_cannot_be_listed() -> None:
    runner = sleeper()
    job = SpyJob([runner.pid], fail_suspend=True)
    rp = RunnerProcess(runner, "test-marker-job-fallback", job=job)  # type: ignore[arg-type]
    try:
        assert runner.pid in rp.suspend()
        assert status(runner.pid) == psutil.STATUS_STOPPED  # SIGSTOP after the job failed
        rp.resume()
        assert "resume" in job.calls
        assert status(runner.pid) != psutil.STATUS_STOPPED  # and SIGCONT as well
    finally:
        rp.close()


def test_set_lowest_priority_adds_the_darwin_background_on_macos(monkeypatch) -> None:
    child = sleeper()
    calls: list[int] = []

    def spy(pid: int, setpriority=None) -> bool:
        calls.append(pid)
        return True

    try:
        monkeypatch.setattr(darwin, "set_background", spy)
        processes.set_lowest_priority(child.pid)
        assert calls == []  # not on Linux
        monkeypatch.setattr(processes.sys, "platform", "darwin")
        cpu_ok, io_ok = processes.set_lowest_priority(child.pid)
        assert calls == [child.pid]
        assert cpu_ok and io_ok
        assert psutil.Process(child.pid).nice() == 19
    finally:
        child.kill()
        child.wait()
