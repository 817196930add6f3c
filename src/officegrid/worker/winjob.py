"""Windows: a unit's process tree in a job object (kill-on-close, memory cap, suspend, kill).

A job object is the Windows counterpart of a cgroup: every process created by a member is a
member too (we never allow breakaway), whoever its parent is later, so the tree is found by
asking the job, not by walking parents (the DESIGN.md trap). What this module sets up:

* **Kill on close.** The job carries JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE and only the agent holds
  its handle (created non-inheritable): if the agent dies, however it dies, the kernel closes
  the handle and kills the whole tree. :meth:`UnitJob.terminate` (TerminateJobObject) is the
  kill of :meth:`RunnerProcess.kill_tree <officegrid.worker.processes.RunnerProcess.kill_tree>`.
* **No window before assignment.** A process assigned to a job only after it started could
  create children outside the job in between. ``subprocess.Popen`` passes ``creationflags``
  through to CreateProcess, so the runner is created with CREATE_SUSPENDED: its only thread has
  not run one instruction (not even the loader, let alone ``site`` or a ``.pth`` file of the
  release's environment) when :func:`start_in_job` assigns it and then lets it run with
  NtResumeProcess (Popen closes the thread handle it would need for ResumeThread;
  NtResumeProcess resumes every thread of the process handle it gets). This is the standard
  CREATE_SUSPENDED + AssignProcessToJobObject + resume sequence, so the runner needs no "go"
  step and runner.py is unchanged. If the job cannot be made or assigned (a policy of a parent
  job, say), the runner still runs, without a job: the psutil/marker tree control of
  processes.py then applies, with a warning in the log.
* **Memory cap.** JOB_OBJECT_LIMIT_JOB_MEMORY caps the committed memory of the whole tree
  (``max_memory``): Windows refuses the allocation that would go over it (the process sees an
  out-of-memory error; the desktop never pages for it) and posts JOB_OBJECT_MSG_JOB_MEMORY_LIMIT
  to the job's completion port. :meth:`UnitJob.memory_limit_hits` counts those (or a peak at
  the cap: message delivery is not guaranteed), so the supervisor fails the attempt with
  :func:`memory_limit_error` instead of a confusing crash.
* **Lowest priority, enforced.** JOB_OBJECT_LIMIT_PRIORITY_CLASS keeps every member at
  IDLE_PRIORITY_CLASS (user code cannot raise it), and DIE_ON_UNHANDLED_EXCEPTION stops a
  crashing child from waiting forever in an error-report dialog on the owner's desktop.
* **Suspend and resume.** NtSuspendProcess / NtResumeProcess (ntdll; what Process Explorer and
  psutil use) on every process of the job's list (JobObjectBasicProcessIdList), repeated until
  a round finds no process that is not already suspended: a member can create a child between
  the listing and its own suspension, the next round then finds it; a round that finds nothing
  new proves every member is suspended (a suspended process creates nothing). Suspension
  counts nest, so each process is suspended once and its handle is kept (which also stops its
  pid from being reused) until :meth:`UnitJob.resume` resumes exactly those.

The logic (limits encoding, pid-list decoding, suspend rounds, message counting) is plain
Python over a small :class:`JobApi`; the ctypes calls live in :class:`Win32JobApi`. Everything
imports on any OS; the unit tests run the logic against a fake API and check the structure
layouts with ctypes on Linux. Verified by unit tests only, not on a real Windows machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import struct
import subprocess
import sys
from typing import Protocol

log = logging.getLogger(__name__)

# CreateProcess flag (not exported by subprocess).
CREATE_SUSPENDED = 0x00000004
IDLE_PRIORITY_CLASS = 0x00000040

# Process access rights.
PROCESS_TERMINATE = 0x0001
PROCESS_SET_QUOTA = 0x0100
PROCESS_SUSPEND_RESUME = 0x0800
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
ASSIGN_ACCESS = PROCESS_SET_QUOTA | PROCESS_TERMINATE | PROCESS_SUSPEND_RESUME
SUSPEND_ACCESS = PROCESS_SUSPEND_RESUME | PROCESS_QUERY_LIMITED_INFORMATION

# JOBOBJECTINFOCLASS
JobObjectBasicProcessIdList = 3  # noqa: N816 - the Windows names
JobObjectAssociateCompletionPortInformation = 7  # noqa: N816
JobObjectExtendedLimitInformation = 9  # noqa: N816

# JOBOBJECT_BASIC_LIMIT_INFORMATION.LimitFlags
JOB_OBJECT_LIMIT_PRIORITY_CLASS = 0x00000020
JOB_OBJECT_LIMIT_PROCESS_MEMORY = 0x00000100
JOB_OBJECT_LIMIT_JOB_MEMORY = 0x00000200
JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION = 0x00000400
JOB_OBJECT_LIMIT_BREAKAWAY_OK = 0x00000800
JOB_OBJECT_LIMIT_SILENT_BREAKAWAY_OK = 0x00001000
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x00002000

# Completion port messages (the "bytes transferred" of GetQueuedCompletionStatus).
JOB_OBJECT_MSG_ACTIVE_PROCESS_ZERO = 4
JOB_OBJECT_MSG_NEW_PROCESS = 6
JOB_OBJECT_MSG_EXIT_PROCESS = 7
JOB_OBJECT_MSG_ABNORMAL_EXIT_PROCESS = 8
JOB_OBJECT_MSG_PROCESS_MEMORY_LIMIT = 9
JOB_OBJECT_MSG_JOB_MEMORY_LIMIT = 10
MEMORY_MESSAGES = frozenset({JOB_OBJECT_MSG_PROCESS_MEMORY_LIMIT, JOB_OBJECT_MSG_JOB_MEMORY_LIMIT})

ERROR_MORE_DATA = 234
TERMINATE_EXIT_CODE = 1  # what TerminateJobObject gives every member (as TerminateProcess does)

_MAX_ROUNDS = 50  # suspend rescans before giving up on a tree that keeps creating processes
_MAX_PIDS = 1 << 16  # never grow the pid-list buffer past this many entries


# ------------------------------------------------------------------ structures (x64 == LP64 here)
# Only fixed-size integer types: the same layouts are built (and their sizes checked) on Linux.

ULONG_PTR = ctypes.c_size_t


class JOBOBJECT_BASIC_LIMIT_INFORMATION(ctypes.Structure):  # noqa: N801 - the Windows name
    _fields_ = [("PerProcessUserTimeLimit", ctypes.c_int64),
                ("PerJobUserTimeLimit", ctypes.c_int64),
                ("LimitFlags", ctypes.c_uint32),
                ("MinimumWorkingSetSize", ctypes.c_size_t),
                ("MaximumWorkingSetSize", ctypes.c_size_t),
                ("ActiveProcessLimit", ctypes.c_uint32),
                ("Affinity", ULONG_PTR),
                ("PriorityClass", ctypes.c_uint32),
                ("SchedulingClass", ctypes.c_uint32)]


class IO_COUNTERS(ctypes.Structure):  # noqa: N801
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "ReadOperationCount", "WriteOperationCount", "OtherOperationCount",
        "ReadTransferCount", "WriteTransferCount", "OtherTransferCount")]


class JOBOBJECT_EXTENDED_LIMIT_INFORMATION(ctypes.Structure):  # noqa: N801
    _fields_ = [("BasicLimitInformation", JOBOBJECT_BASIC_LIMIT_INFORMATION),
                ("IoInfo", IO_COUNTERS),
                ("ProcessMemoryLimit", ctypes.c_size_t),
                ("JobMemoryLimit", ctypes.c_size_t),
                ("PeakProcessMemoryUsed", ctypes.c_size_t),
                ("PeakJobMemoryUsed", ctypes.c_size_t)]


class JOBOBJECT_ASSOCIATE_COMPLETION_PORT(ctypes.Structure):  # noqa: N801
    _fields_ = [("CompletionKey", ctypes.c_void_p), ("CompletionPort", ctypes.c_void_p)]


# JOBOBJECT_BASIC_PROCESS_ID_LIST: two DWORDs, then ULONG_PTR ProcessIdList[] (pointer-aligned).
_PID_SIZE = ctypes.sizeof(ULONG_PTR)
_PID_HEADER = ctypes.sizeof(ctypes.c_uint32) * 2
_PID_OFFSET = (_PID_HEADER + _PID_SIZE - 1) // _PID_SIZE * _PID_SIZE


def extended_limits(memory_limit: int | None) -> JOBOBJECT_EXTENDED_LIMIT_INFORMATION:
    """The limits of a unit's job: kill on close, die on unhandled exception, idle priority for
    every member, and (when ``memory_limit`` bytes is given) a cap on the job's committed
    memory. Breakaway is never allowed. Raises ValueError for a cap below one page (4096)."""
    info = JOBOBJECT_EXTENDED_LIMIT_INFORMATION()
    flags = (JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE | JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION
             | JOB_OBJECT_LIMIT_PRIORITY_CLASS)
    info.BasicLimitInformation.PriorityClass = IDLE_PRIORITY_CLASS
    if memory_limit is not None:
        if memory_limit < 4096:
            raise ValueError(f"job memory limit {memory_limit} bytes is below one page")
        flags |= JOB_OBJECT_LIMIT_JOB_MEMORY
        info.JobMemoryLimit = memory_limit
    info.BasicLimitInformation.LimitFlags = flags
    return info


def pid_list_size(count: int) -> int:
    """Bytes of a JOBOBJECT_BASIC_PROCESS_ID_LIST buffer with room for ``count`` pids."""
    return _PID_OFFSET + max(1, count) * _PID_SIZE


def parse_pid_list(buf: bytes) -> tuple[int, list[int]]:
    """Decode a JOBOBJECT_BASIC_PROCESS_ID_LIST: ``(assigned, pids)``.

    ``assigned`` is how many processes the job has; ``pids`` the ones that fitted the buffer
    (fewer than ``assigned`` when the call said ERROR_MORE_DATA). Raises ValueError for a
    buffer shorter than its own header or than the count of pids it claims to hold.
    """
    if len(buf) < _PID_HEADER:
        raise ValueError(f"process id list of {len(buf)} bytes has no header")
    assigned, listed = struct.unpack_from("<II", buf, 0)
    end = _PID_OFFSET + listed * _PID_SIZE
    if listed and len(buf) < end:
        raise ValueError(f"process id list claims {listed} ids but has {len(buf)} bytes")
    fmt = "<" + ("Q" if _PID_SIZE == 8 else "I") * listed
    return assigned, list(struct.unpack_from(fmt, buf, _PID_OFFSET)) if listed else []


def memory_limit_error(max_memory: int | None, hits: int) -> str:
    """The attempt's failure text when Windows refused ``hits`` allocations of a unit over its
    job memory limit of ``max_memory`` bytes."""
    from officegrid.worker.owner import human_bytes

    cap = human_bytes(max_memory) if max_memory is not None else "its cap"
    return (f"unit went over max_memory {cap} (job object memory limit): Windows refused "
            f"{hits} allocation(s) of its processes and the attempt was ended")


# ------------------------------------------------------------------ the Windows calls


class JobApi(Protocol):
    """The Win32 calls a :class:`UnitJob` makes (:class:`Win32JobApi`; fakes in tests).

    Handles are ints. Every method raises OSError (with ``winerror`` on Windows) on failure.
    """

    def create_job(self) -> int:
        """CreateJobObjectW(NULL, NULL): a new, unnamed, non-inheritable job."""

    def create_port(self) -> int:
        """CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 1)."""

    def set_information(self, job: int, info_class: int, data: bytes) -> None:
        """SetInformationJobObject."""

    def query_information(self, job: int, info_class: int, size: int) -> bytes:
        """QueryInformationJobObject into a ``size``-byte buffer; returns the buffer (also when
        the call failed with ERROR_MORE_DATA: the header then says what is needed)."""

    def open_process(self, pid: int, access: int) -> int:
        """OpenProcess(access, FALSE, pid)."""

    def assign(self, job: int, process: int) -> None:
        """AssignProcessToJobObject."""

    def suspend_process(self, process: int) -> None:
        """NtSuspendProcess (ntdll)."""

    def resume_process(self, process: int) -> None:
        """NtResumeProcess (ntdll)."""

    def terminate_job(self, job: int, exit_code: int) -> None:
        """TerminateJobObject."""

    def next_message(self, port: int) -> tuple[int, int] | None:
        """GetQueuedCompletionStatus(port, timeout 0): ``(message, pid)`` or None if none."""

    def close(self, handle: int) -> None:
        """CloseHandle."""


class Win32JobApi:  # pragma: no cover - needs Windows; the logic above and below is tested
    """kernel32 / ntdll via ctypes. Raises OSError off Windows."""

    def __init__(self) -> None:
        if sys.platform != "win32":
            raise OSError(f"job objects need Windows (this is {sys.platform})")
        vp, u32, i32 = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int
        k = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
        nt = ctypes.WinDLL("ntdll")  # type: ignore[attr-defined]
        k.CreateJobObjectW.argtypes = [vp, ctypes.c_wchar_p]
        k.CreateJobObjectW.restype = vp
        k.CreateIoCompletionPort.argtypes = [vp, vp, ULONG_PTR, u32]
        k.CreateIoCompletionPort.restype = vp
        k.SetInformationJobObject.argtypes = [vp, i32, vp, u32]
        k.SetInformationJobObject.restype = i32
        k.QueryInformationJobObject.argtypes = [vp, i32, vp, u32, ctypes.POINTER(u32)]
        k.QueryInformationJobObject.restype = i32
        k.OpenProcess.argtypes = [u32, i32, u32]
        k.OpenProcess.restype = vp
        k.AssignProcessToJobObject.argtypes = [vp, vp]
        k.AssignProcessToJobObject.restype = i32
        k.TerminateJobObject.argtypes = [vp, u32]
        k.TerminateJobObject.restype = i32
        k.GetQueuedCompletionStatus.argtypes = [vp, ctypes.POINTER(u32),
                                                ctypes.POINTER(ULONG_PTR),
                                                ctypes.POINTER(vp), u32]
        k.GetQueuedCompletionStatus.restype = i32
        k.CloseHandle.argtypes = [vp]
        k.CloseHandle.restype = i32
        for name in ("NtSuspendProcess", "NtResumeProcess"):
            getattr(nt, name).argtypes = [vp]
            getattr(nt, name).restype = ctypes.c_long  # NTSTATUS
        nt.RtlNtStatusToDosError.argtypes = [ctypes.c_long]
        nt.RtlNtStatusToDosError.restype = u32
        self._k, self._nt = k, nt

    @staticmethod
    def _error(what: str) -> OSError:
        err = ctypes.get_last_error()
        exc = ctypes.WinError(err)  # type: ignore[attr-defined]
        exc.strerror = f"{what}: {exc.strerror}"
        return exc

    def _check(self, ok: int, what: str) -> None:
        if not ok:
            raise self._error(what)

    def create_job(self) -> int:
        handle = self._k.CreateJobObjectW(None, None)
        self._check(handle, "CreateJobObjectW")
        return int(handle)

    def create_port(self) -> int:
        handle = self._k.CreateIoCompletionPort(ctypes.c_void_p(-1), None, 0, 1)
        self._check(handle, "CreateIoCompletionPort")
        return int(handle)

    def set_information(self, job: int, info_class: int, data: bytes) -> None:
        buf = ctypes.create_string_buffer(data, len(data))
        self._check(self._k.SetInformationJobObject(job, info_class, buf, len(data)),
                    "SetInformationJobObject")

    def query_information(self, job: int, info_class: int, size: int) -> bytes:
        buf = ctypes.create_string_buffer(size)
        got = ctypes.c_uint32()
        ok = self._k.QueryInformationJobObject(job, info_class, buf, size, ctypes.byref(got))
        if not ok and ctypes.get_last_error() != ERROR_MORE_DATA:
            raise self._error("QueryInformationJobObject")
        return buf.raw

    def open_process(self, pid: int, access: int) -> int:
        handle = self._k.OpenProcess(access, 0, pid)
        self._check(handle, f"OpenProcess({pid})")
        return int(handle)

    def assign(self, job: int, process: int) -> None:
        self._check(self._k.AssignProcessToJobObject(job, process), "AssignProcessToJobObject")

    def _nt(self, name: str, process: int) -> None:
        status = getattr(self._nt, name)(process)
        if status < 0:  # NT_ERROR / NT_WARNING are negative as a signed LONG
            err = self._nt.RtlNtStatusToDosError(status)
            exc = ctypes.WinError(err)  # type: ignore[attr-defined]
            exc.strerror = f"{name}: {exc.strerror} (NTSTATUS {status & 0xFFFFFFFF:#010x})"
            raise exc

    def suspend_process(self, process: int) -> None:
        self._nt("NtSuspendProcess", process)

    def resume_process(self, process: int) -> None:
        self._nt("NtResumeProcess", process)

    def terminate_job(self, job: int, exit_code: int) -> None:
        self._check(self._k.TerminateJobObject(job, exit_code), "TerminateJobObject")

    def next_message(self, port: int) -> tuple[int, int] | None:
        msg, key, overlapped = ctypes.c_uint32(), ULONG_PTR(), ctypes.c_void_p()
        if not self._k.GetQueuedCompletionStatus(port, ctypes.byref(msg), ctypes.byref(key),
                                                 ctypes.byref(overlapped), 0):
            return None  # WAIT_TIMEOUT: the queue is empty
        return int(msg.value), int(overlapped.value or 0)  # lpOverlapped carries the pid

    def close(self, handle: int) -> None:
        self._k.CloseHandle(handle)


# ------------------------------------------------------------------ the logic


class UnitJob:
    """One unit's job object: create it with the unit's limits, :meth:`assign` the runner
    (created suspended), then suspend, resume, list and terminate the whole tree.

    Methods are not thread-safe on their own (RunnerProcess serialises them under its lock).
    Raises OSError from the constructor if the job cannot be created or limited.
    """

    def __init__(self, memory_limit: int | None = None, api: JobApi | None = None) -> None:
        self.api: JobApi = api if api is not None else Win32JobApi()
        self.memory_limit = memory_limit
        self.memory_hits = 0
        self._closed = False
        self._suspended: dict[int, int] = {}  # pid -> handle kept open while suspended
        self._port: int | None = None
        self.handle = self.api.create_job()
        try:
            self.api.set_information(self.handle, JobObjectExtendedLimitInformation,
                                     bytes(extended_limits(memory_limit)))
        except BaseException:
            self.api.close(self.handle)
            raise
        try:  # only for the memory-limit message: the job works without it
            port = self.api.create_port()
            assoc = JOBOBJECT_ASSOCIATE_COMPLETION_PORT(self.handle, port)
            try:
                self.api.set_information(self.handle,
                                         JobObjectAssociateCompletionPortInformation,
                                         bytes(assoc))
            except OSError:
                self.api.close(port)
                raise
            self._port = port
        except OSError as exc:
            log.info("job object: no completion port (%s); memory-limit hits are judged by "
                     "the peak only", exc)

    def assign(self, process: int) -> None:
        """AssignProcessToJobObject(``process`` handle). Raises OSError."""
        self.api.assign(self.handle, process)

    def pids(self) -> list[int]:
        """The pids of the job's live processes (it grows the buffer until they all fit).
        Raises OSError."""
        count = 16
        while True:
            buf = self.api.query_information(self.handle, JobObjectBasicProcessIdList,
                                             pid_list_size(count))
            assigned, pids = parse_pid_list(buf)
            if len(pids) >= assigned or count >= _MAX_PIDS:
                return pids
            count = min(_MAX_PIDS, max(assigned + 16, count * 2))  # it may grow meanwhile

    def suspend(self) -> list[int]:
        """NtSuspendProcess every process of the job, in rounds until a round finds none that
        is not suspended yet (see the module doc). Idempotent: a process already suspended by
        an earlier call is not suspended again (counts nest). A process that exits meanwhile is
        skipped. Returns the suspended pids. Raises OSError only if the job cannot be listed."""
        for _ in range(_MAX_ROUNDS):
            new = [pid for pid in self.pids() if pid not in self._suspended]
            if not new:
                break
            for pid in new:
                try:
                    handle = self.api.open_process(pid, SUSPEND_ACCESS)
                except OSError:
                    continue  # gone between the listing and now
                try:
                    self.api.suspend_process(handle)
                except OSError as exc:
                    log.debug("job: cannot suspend pid %d: %s", pid, exc)
                    self.api.close(handle)
                    continue
                self._suspended[pid] = handle
        else:
            log.warning("job: processes kept appearing after %d suspend rounds", _MAX_ROUNDS)
        return sorted(self._suspended)

    @property
    def suspended(self) -> bool:
        """True while processes suspended by :meth:`suspend` wait for :meth:`resume`."""
        return bool(self._suspended)

    def resume(self) -> list[int]:
        """NtResumeProcess exactly the processes :meth:`suspend` suspended, and let their
        handles go. Returns their pids (also those that could not be resumed: gone)."""
        pids = sorted(self._suspended)
        for pid in pids:
            handle = self._suspended.pop(pid)
            try:
                self.api.resume_process(handle)
            except OSError as exc:
                log.debug("job: cannot resume pid %d: %s", pid, exc)
            finally:
                self.api.close(handle)
        return pids

    def terminate(self, exit_code: int = TERMINATE_EXIT_CODE) -> bool:
        """TerminateJobObject: end every process of the job at once (suspended ones too).
        True if the call succeeded; never raises. Handles of suspended processes are let go
        without resuming (they are dead)."""
        ok = True
        try:
            self.api.terminate_job(self.handle, exit_code)
        except OSError as exc:
            ok = False
            log.warning("job: TerminateJobObject failed: %s", exc)
        for handle in self._suspended.values():
            self.api.close(handle)
        self._suspended.clear()
        return ok

    def memory_limit_hits(self) -> int:
        """How often the job went over its memory limit so far: the JOB_MEMORY_LIMIT (and
        PROCESS_MEMORY_LIMIT) messages of its completion port, or 1 if none arrived but the
        job's peak committed memory reached the limit (delivery is not guaranteed). 0 without
        a limit. Never raises; still answers after :meth:`close` (the last count)."""
        if self.memory_limit is None or self._closed:
            return self.memory_hits
        if self._port is not None:
            for _ in range(10_000):  # bounded: the queue is drained, not waited on
                try:
                    item = self.api.next_message(self._port)
                except OSError:
                    break
                if item is None:
                    break
                if item[0] in MEMORY_MESSAGES:
                    self.memory_hits += 1
        if not self.memory_hits:
            with contextlib.suppress(OSError, ValueError):
                raw = self.api.query_information(
                    self.handle, JobObjectExtendedLimitInformation,
                    ctypes.sizeof(JOBOBJECT_EXTENDED_LIMIT_INFORMATION))
                info = JOBOBJECT_EXTENDED_LIMIT_INFORMATION.from_buffer_copy(raw)
                if info.PeakJobMemoryUsed >= self.memory_limit:
                    self.memory_hits = 1
        return self.memory_hits

    def close(self) -> None:
        """Close the job handle (kill-on-close ends whatever is still in it) and the port.
        Idempotent."""
        if self._closed:
            return
        self.memory_limit_hits()
        self._closed = True
        for handle in self._suspended.values():
            self.api.close(handle)
        self._suspended.clear()
        if self._port is not None:
            self.api.close(self._port)
        self.api.close(self.handle)


def start_in_job(popen: subprocess.Popen, memory_limit: int | None = None,
                 api: JobApi | None = None) -> UnitJob | None:
    """Put a process created with CREATE_SUSPENDED into a new :class:`UnitJob` and let it run.

    Returns the job, or None if no job could be made or the process could not be assigned
    (logged as a warning; the process then runs without one). Whatever happens, the process
    is either running or killed when this returns: if it cannot be resumed it is killed
    (``popen.kill()``) and the OSError raised.
    """
    api = api if api is not None else Win32JobApi()
    try:
        process = api.open_process(popen.pid, ASSIGN_ACCESS)
    except OSError:
        _kill(popen)
        raise
    job: UnitJob | None = None
    try:
        try:
            job = UnitJob(memory_limit, api=api)
            job.assign(process)
        except (OSError, ValueError) as exc:  # ValueError: a memory limit below one page
            log.warning("runner %d runs without a job object (%s): its tree is found by "
                        "children and marker instead", popen.pid, exc)
            if job is not None:
                job.close()
            job = None
        try:
            api.resume_process(process)
        except OSError:
            if job is not None:
                job.terminate()
                job.close()
            _kill(popen)
            raise
    finally:
        api.close(process)
    return job


def _kill(popen: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        popen.kill()
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        popen.wait(5)
