"""Windows job objects (worker/winjob.py): the logic against a simulated kernel, the structure
layouts with real ctypes. No Windows here: the Win32JobApi calls themselves are not run."""

from __future__ import annotations

import ctypes
import struct
import sys

import pytest

from officegrid.worker import winjob
from officegrid.worker.winjob import (
    JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION,
    JOB_OBJECT_LIMIT_JOB_MEMORY,
    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    JOB_OBJECT_LIMIT_PRIORITY_CLASS,
    JOB_OBJECT_MSG_EXIT_PROCESS,
    JOB_OBJECT_MSG_JOB_MEMORY_LIMIT,
    JOB_OBJECT_MSG_NEW_PROCESS,
    JOBOBJECT_ASSOCIATE_COMPLETION_PORT,
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
    UnitJob,
    extended_limits,
    parse_pid_list,
    pid_list_size,
    start_in_job,
)

IS_64 = ctypes.sizeof(ctypes.c_void_p) == 8


class FakeKernel:
    """A simulated Windows: processes with a suspend count, job membership, handles.

    ``spawn_on_list``: pid -> child pid a process creates the next time the job is listed
    while it is not suspended (a tree that forks during a suspend round).
    """

    def __init__(self) -> None:
        self.next_handle = 100
        self.handles: dict[int, tuple[str, int]] = {}  # handle -> (kind, object id)
        self.procs: dict[int, dict] = {}  # pid -> {"suspend": n, "job": job or None, "alive"}
        self.jobs: dict[int, dict] = {}
        self.spawn_on_list: dict[int, int] = {}
        self.calls: list[tuple] = []
        self.fail: set[str] = set()
        self.messages: list[tuple[int, int]] = []
        self.peak = 0

    def add_process(self, pid: int, suspended: int = 0) -> None:
        self.procs[pid] = {"suspend": suspended, "job": None, "alive": True}

    def _handle(self, kind: str, obj: int) -> int:
        self.next_handle += 4
        self.handles[self.next_handle] = (kind, obj)
        return self.next_handle

    def _maybe_fail(self, name: str) -> None:
        self.calls.append((name,))
        if name in self.fail:
            raise OSError(5, f"{name}: access denied")

    # -- JobApi ---------------------------------------------------------------------------
    def create_job(self) -> int:
        self._maybe_fail("create_job")
        h = self._handle("job", len(self.jobs) + 1)
        self.jobs[self.handles[h][1]] = {"limits": None, "port": None, "terminated": None}
        return h

    def create_port(self) -> int:
        self._maybe_fail("create_port")
        return self._handle("port", 0)

    def set_information(self, job: int, info_class: int, data: bytes) -> None:
        self._maybe_fail(f"set_information:{info_class}")
        j = self.jobs[self.handles[job][1]]
        if info_class == winjob.JobObjectExtendedLimitInformation:
            j["limits"] = JOBOBJECT_EXTENDED_LIMIT_INFORMATION.from_buffer_copy(data)
        elif info_class == winjob.JobObjectAssociateCompletionPortInformation:
            j["port"] = JOBOBJECT_ASSOCIATE_COMPLETION_PORT.from_buffer_copy(data)
        else:
            raise OSError(87, "bad class")

    def _members(self, job_id: int) -> list[int]:
        return [pid for pid, p in self.procs.items() if p["alive"] and p["job"] == job_id]

    def query_information(self, job: int, info_class: int, size: int) -> bytes:
        self._maybe_fail(f"query_information:{info_class}")
        job_id = self.handles[job][1]
        if info_class == winjob.JobObjectExtendedLimitInformation:
            info = JOBOBJECT_EXTENDED_LIMIT_INFORMATION()
            info.PeakJobMemoryUsed = self.peak
            return bytes(info)[:size]
        assert info_class == winjob.JobObjectBasicProcessIdList
        # A running member with a pending child creates it now (inherits the job).
        for parent, child in list(self.spawn_on_list.items()):
            p = self.procs.get(parent)
            if p and p["alive"] and p["suspend"] == 0 and p["job"] == job_id:
                self.add_process(child)
                self.procs[child]["job"] = job_id
                del self.spawn_on_list[parent]
        members = self._members(job_id)
        room = (size - 8) // 8 if IS_64 else (size - 8) // 4
        listed = members[:room]
        fmt = "<II" + ("Q" if IS_64 else "I") * len(listed)
        buf = struct.pack(fmt, len(members), len(listed), *listed)
        return buf + b"\0" * (size - len(buf))

    def open_process(self, pid: int, access: int) -> int:
        self._maybe_fail("open_process")
        if pid not in self.procs or not self.procs[pid]["alive"]:
            raise OSError(87, "no such process")
        self.calls.append(("open", pid, access))
        return self._handle("proc", pid)

    def assign(self, job: int, process: int) -> None:
        self._maybe_fail("assign")
        self.procs[self.handles[process][1]]["job"] = self.handles[job][1]

    def suspend_process(self, process: int) -> None:
        self._maybe_fail("suspend")
        self.procs[self.handles[process][1]]["suspend"] += 1

    def resume_process(self, process: int) -> None:
        self._maybe_fail("resume")
        p = self.procs[self.handles[process][1]]
        p["suspend"] = max(0, p["suspend"] - 1)

    def terminate_job(self, job: int, exit_code: int) -> None:
        self._maybe_fail("terminate_job")
        job_id = self.handles[job][1]
        for pid in self._members(job_id):
            self.procs[pid]["alive"] = False
        self.jobs[job_id]["terminated"] = exit_code

    def next_message(self, port: int) -> tuple[int, int] | None:
        return self.messages.pop(0) if self.messages else None

    def close(self, handle: int) -> None:
        kind, obj = self.handles.pop(handle)
        if kind == "job":  # kill on close: the last handle closes
            for pid in self._members(obj):
                self.procs[pid]["alive"] = False


class FakePopen:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.killed = False

    def kill(self) -> None:
        self.killed = True

    def wait(self, timeout: float | None = None) -> int:
        return 1


# -- structures -----------------------------------------------------------------------------------


@pytest.mark.skipif(not IS_64, reason="sizes of the x64 layout")
def test_structure_sizes_match_x64_windows() -> None:
    # sizeof on x64 Windows (winnt.h): 64, 48, 144 and 16 bytes.
    assert ctypes.sizeof(winjob.JOBOBJECT_BASIC_LIMIT_INFORMATION) == 64
    assert ctypes.sizeof(winjob.IO_COUNTERS) == 48
    assert ctypes.sizeof(JOBOBJECT_EXTENDED_LIMIT_INFORMATION) == 144
    assert ctypes.sizeof(JOBOBJECT_ASSOCIATE_COMPLETION_PORT) == 16
    assert JOBOBJECT_EXTENDED_LIMIT_INFORMATION.JobMemoryLimit.offset == 120
    assert JOBOBJECT_EXTENDED_LIMIT_INFORMATION.PeakJobMemoryUsed.offset == 136
    assert winjob.JOBOBJECT_BASIC_LIMIT_INFORMATION.LimitFlags.offset == 16
    assert winjob.JOBOBJECT_BASIC_LIMIT_INFORMATION.PriorityClass.offset == 56
    assert pid_list_size(3) == 8 + 3 * 8


def test_limits_kill_on_close_idle_priority_and_memory_cap() -> None:
    info = extended_limits(512 << 20)
    flags = info.BasicLimitInformation.LimitFlags
    assert flags & JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
    assert flags & JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION
    assert flags & JOB_OBJECT_LIMIT_PRIORITY_CLASS
    assert flags & JOB_OBJECT_LIMIT_JOB_MEMORY
    assert not flags & (winjob.JOB_OBJECT_LIMIT_BREAKAWAY_OK
                        | winjob.JOB_OBJECT_LIMIT_SILENT_BREAKAWAY_OK)
    assert info.BasicLimitInformation.PriorityClass == winjob.IDLE_PRIORITY_CLASS
    assert info.JobMemoryLimit == 512 << 20
    # Round trip through bytes, as SetInformationJobObject gets it.
    again = JOBOBJECT_EXTENDED_LIMIT_INFORMATION.from_buffer_copy(bytes(info))
    assert again.JobMemoryLimit == 512 << 20
    assert again.BasicLimitInformation.LimitFlags == flags


def test_limits_without_memory_cap_and_refused_tiny_cap() -> None:
    info = extended_limits(None)
    assert not info.BasicLimitInformation.LimitFlags & JOB_OBJECT_LIMIT_JOB_MEMORY
    assert info.JobMemoryLimit == 0
    with pytest.raises(ValueError, match="below one page"):
        extended_limits(100)


def test_parse_pid_list() -> None:
    w = "Q" if IS_64 else "I"
    assert parse_pid_list(struct.pack(f"<II{w}{w}", 2, 2, 40, 44)) == (2, [40, 44])
    assert parse_pid_list(struct.pack(f"<II{w}", 5, 1, 40)) == (5, [40])  # ERROR_MORE_DATA
    assert parse_pid_list(struct.pack("<II", 0, 0)) == (0, [])
    with pytest.raises(ValueError, match="no header"):
        parse_pid_list(b"\0\0")
    with pytest.raises(ValueError, match="claims 3 ids"):
        parse_pid_list(struct.pack(f"<II{w}", 3, 3, 40))


# -- the job --------------------------------------------------------------------------------------


def test_start_in_job_assigns_before_resuming() -> None:
    k = FakeKernel()
    k.add_process(10, suspended=1)  # CREATE_SUSPENDED
    job = start_in_job(FakePopen(10), memory_limit=1 << 30, api=k)
    assert job is not None
    names = [c[0] for c in k.calls]
    assert names.index("assign") < names.index("resume")
    assert k.procs[10]["job"] == 1 and k.procs[10]["suspend"] == 0
    limits = k.jobs[1]["limits"]
    assert limits.JobMemoryLimit == 1 << 30
    assert limits.BasicLimitInformation.LimitFlags & JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
    assert k.jobs[1]["port"] is not None
    # Only the job and its port stay open: the process handle was closed.
    assert sorted(kind for kind, _ in k.handles.values()) == ["job", "port"]
    assert ("open", 10, winjob.ASSIGN_ACCESS) in k.calls


def test_start_in_job_runs_the_process_without_a_job_if_assignment_fails(caplog) -> None:
    k = FakeKernel()
    k.add_process(10, suspended=1)
    k.fail.add("assign")
    popen = FakePopen(10)
    assert start_in_job(popen, api=k) is None
    assert k.procs[10]["suspend"] == 0 and k.procs[10]["alive"] and not popen.killed
    assert "without a job object" in caplog.text
    assert k.handles == {}  # the job, its port and the process handle were closed


def test_start_in_job_runs_the_process_even_with_a_bad_memory_limit() -> None:
    k = FakeKernel()
    k.add_process(10, suspended=1)
    assert start_in_job(FakePopen(10), memory_limit=100, api=k) is None
    assert k.procs[10]["suspend"] == 0  # never left suspended
    assert k.handles == {}


def test_start_in_job_kills_a_process_it_cannot_resume() -> None:
    k = FakeKernel()
    k.add_process(10, suspended=1)
    k.fail.add("resume")
    popen = FakePopen(10)
    with pytest.raises(OSError, match="resume"):
        start_in_job(popen, api=k)
    assert popen.killed
    assert not k.procs[10]["alive"]  # terminated with its job
    assert k.handles == {}


def test_start_in_job_kills_a_process_it_cannot_open() -> None:
    k = FakeKernel()
    k.add_process(10, suspended=1)
    k.fail.add("open_process")
    popen = FakePopen(10)
    with pytest.raises(OSError):
        start_in_job(popen, api=k)
    assert popen.killed


def test_job_without_completion_port_still_works() -> None:
    k = FakeKernel()
    k.fail.add("create_port")
    job = UnitJob(1 << 20, api=k)
    assert job._port is None
    k.peak = 1 << 20
    assert job.memory_limit_hits() == 1  # judged by the peak


def test_job_creation_failure_closes_the_handle() -> None:
    k = FakeKernel()
    k.fail.add(f"set_information:{winjob.JobObjectExtendedLimitInformation}")
    with pytest.raises(OSError):
        UnitJob(None, api=k)
    assert k.handles == {}


def make_tree(k: FakeKernel, pids: list[int]) -> UnitJob:
    for pid in pids:
        k.add_process(pid, suspended=1 if pid == pids[0] else 0)
    job = start_in_job(FakePopen(pids[0]), api=k)
    assert job is not None
    for pid in pids[1:]:
        k.procs[pid]["job"] = 1
    return job


def test_pids_grows_the_buffer_until_all_fit() -> None:
    k = FakeKernel()
    pids = list(range(1000, 1100))
    job = make_tree(k, pids)
    assert sorted(job.pids()) == pids
    # Several queries: the first buffer had room for 16.
    listing = f"query_information:{winjob.JobObjectBasicProcessIdList}"
    queries = [c for c in k.calls if c[0] == listing]
    assert len(queries) >= 2


def test_suspend_catches_children_created_during_the_rounds_and_resume_undoes_it() -> None:
    k = FakeKernel()
    job = make_tree(k, [10, 11, 12])
    k.spawn_on_list = {11: 20}  # 11 forks 20 at the first listing, before it is suspended
    stopped = job.suspend()
    # 20 appeared during the rounds (the first listing saw it, or the next one did).
    assert stopped == [10, 11, 12, 20]
    assert all(k.procs[p]["suspend"] == 1 for p in stopped)
    # Re-asserting suspend (the supervisor does, periodically) does not nest the counts.
    assert job.suspend() == [10, 11, 12, 20]
    assert all(k.procs[p]["suspend"] == 1 for p in stopped)
    assert job.suspended
    assert job.resume() == [10, 11, 12, 20]
    assert all(k.procs[p]["suspend"] == 0 for p in stopped)
    assert not job.suspended
    assert sorted(kind for kind, _ in k.handles.values()) == ["job", "port"]


def test_suspend_rounds_repeat_until_nothing_new() -> None:
    k = FakeKernel()
    job = make_tree(k, [10])
    # Each process creates a child in the moment between the listing and its own suspension
    # (10 -> 11 -> 12 -> 13): only a later round can see that child.
    chain = {10: 11, 11: 12, 12: 13}
    real_suspend = k.suspend_process
    listings = []
    real_query = k.query_information

    def suspend_after_forking(process: int) -> None:
        child = chain.pop(k.handles[process][1], None)
        if child is not None:
            k.add_process(child)
            k.procs[child]["job"] = 1
        real_suspend(process)

    def counting_query(job_h: int, info_class: int, size: int) -> bytes:
        listings.append(info_class)
        return real_query(job_h, info_class, size)

    k.suspend_process = suspend_after_forking  # type: ignore[method-assign]
    k.query_information = counting_query  # type: ignore[method-assign]
    assert job.suspend() == [10, 11, 12, 13]
    assert all(k.procs[p]["suspend"] == 1 for p in (10, 11, 12, 13))
    assert len(listings) == 5  # four rounds that found one new process, one that found none


def test_suspend_skips_a_process_that_exits_meanwhile() -> None:
    k = FakeKernel()
    job = make_tree(k, [10, 11])
    real_open = k.open_process

    def open_gone(pid: int, access: int) -> int:
        if pid == 11:
            k.procs[11]["alive"] = False
        return real_open(pid, access)

    k.open_process = open_gone  # type: ignore[method-assign]
    assert job.suspend() == [10]


def test_terminate_ends_every_member_also_suspended_ones() -> None:
    k = FakeKernel()
    job = make_tree(k, [10, 11, 12])
    job.suspend()
    assert job.terminate()
    assert k.jobs[1]["terminated"] == winjob.TERMINATE_EXIT_CODE
    assert not any(k.procs[p]["alive"] for p in (10, 11, 12))
    assert job.pids() == []
    assert not job.suspended
    job.close()
    assert k.handles == {}


def test_terminate_failure_is_reported_not_raised() -> None:
    k = FakeKernel()
    job = make_tree(k, [10])
    k.fail.add("terminate_job")
    assert job.terminate() is False


def test_close_kills_what_is_left() -> None:
    k = FakeKernel()
    job = make_tree(k, [10, 11])
    job.close()
    job.close()  # idempotent
    assert not k.procs[10]["alive"] and not k.procs[11]["alive"]
    assert k.handles == {}


def test_memory_limit_hits_from_port_messages() -> None:
    k = FakeKernel()
    job = make_tree(k, [10])
    job.memory_limit = 1 << 20
    k.messages = [(JOB_OBJECT_MSG_NEW_PROCESS, 11), (JOB_OBJECT_MSG_JOB_MEMORY_LIMIT, 11),
                  (JOB_OBJECT_MSG_EXIT_PROCESS, 11), (JOB_OBJECT_MSG_JOB_MEMORY_LIMIT, 10)]
    assert job.memory_limit_hits() == 2
    assert k.messages == []
    job.close()
    assert job.memory_limit_hits() == 2  # still answers after close


def test_memory_limit_hits_zero_below_the_cap_and_without_a_cap() -> None:
    k = FakeKernel()
    job = make_tree(k, [10])
    assert job.memory_limit_hits() == 0  # no cap at all
    job.memory_limit = 1 << 20
    k.peak = (1 << 20) - 4096
    k.messages = [(JOB_OBJECT_MSG_NEW_PROCESS, 11)]
    assert job.memory_limit_hits() == 0


def test_memory_limit_error_text() -> None:
    text = winjob.memory_limit_error(256 << 20, 3)
    assert "max_memory" in text and "job object memory limit" in text and "3 allocation" in text


# -- on this machine ------------------------------------------------------------------------------


def test_module_imports_and_real_api_refuses_off_windows() -> None:
    if sys.platform == "win32":  # pragma: no cover
        pytest.skip("this checks the non-Windows behaviour")
    with pytest.raises(OSError, match="need Windows"):
        winjob.Win32JobApi()
    with pytest.raises(OSError, match="need Windows"):
        UnitJob(None)

