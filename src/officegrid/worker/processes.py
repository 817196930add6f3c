"""Process control for the worker supervisor: start the unit runner, talk to it, suspend, kill.

Promise 5 ("the owner comes first": lowest OS priority, suspend within a second, no orphan
processes after a vacate or a kill) is mostly kept here. Each step below exists because of a trap
listed in DESIGN.md:

* **A tree is not found by walking children.** ``psutil.Process.children(recursive=True)`` misses
  descendants whose parent already exited (they are re-parented to init). So every runner starts
  in its *own session and process group* (``start_new_session=True``) and we signal the group with
  ``killpg``, which reaches every member whoever its parent is now.
* **A group is not enough either.** User code may call ``os.setsid()`` (daemonising libraries do)
  and leave the group. Every runner therefore carries ``OFFICEGRID_MARKER=<marker>`` in its
  environment, which all its descendants inherit; :meth:`RunnerProcess.kill_tree`,
  :meth:`RunnerProcess.suspend` and :func:`sweep_leftovers` also find processes by that marker.
  (A process that clears its environment before escaping is not found by the marker; a cgroup
  closes that hole, see below, and so does the job object on Windows.)
* **A cgroup cannot be left by accident.** Where the agent has a writable cgroup v2 subtree
  (:mod:`officegrid.worker.cgroup`), the runner is moved into the unit's own cgroup before any
  of its code runs, so every descendant is born there. Suspend then freezes the cgroup (no
  rescans: the kernel freezes a process that forks at that moment too), resume thaws it, and
  :meth:`RunnerProcess.kill_tree` also ends everything listed in ``cgroup.procs``
  (``cgroup.kill``). Without a cgroup everything below works as it always did.
* **A stopped process does not act on SIGTERM.** A SIGSTOPped process keeps SIGTERM pending and
  cannot run a handler until it is continued, so :meth:`RunnerProcess.kill_tree` sends SIGCONT
  before SIGTERM, and ends with SIGKILL (which acts on stopped processes) after a grace period.
* **Children must die with their parent.** If the agent is SIGKILLed nobody is left to signal the
  group. The runner watches its stdin: EOF means the supervisor died and it SIGKILLs its own
  group. On Linux it also sets PR_SET_PDEATHSIG=SIGCONT, so a runner that was *suspended* when the
  agent died is woken to see that EOF. What still escapes (a setsid'ed grandchild, a runner whose
  user code held the GIL) is killed by :func:`sweep_leftovers` when the agent starts again.
* **Lowest priority.** The runner gets nice 19 and, on Linux, the idle I/O class, set with psutil
  right after exec: the runner is then still single-threaded, and on Linux nice/ionice are per
  thread but inherited by every thread and process created later. (No ``preexec_fn``: it is not
  safe in a multi-threaded supervisor.) On macOS the runner is also put in the Darwin
  background policy (:mod:`officegrid.worker.darwin`, ``taskpolicy -b``: CPU, I/O and network),
  which its children inherit.
* **Never block the supervisor.** Control messages are read by a thread into a queue;
  :meth:`RunnerProcess.read_message` takes a timeout, so the supervisor keeps heartbeating and
  watching the owner whatever the runner does.

Windows: the runner starts with CREATE_NEW_PROCESS_GROUP, IDLE_PRIORITY_CLASS and
CREATE_SUSPENDED, is put into its own job object (:mod:`officegrid.worker.winjob`:
kill-on-close, idle priority enforced for every member, ``max_memory`` as the job memory
limit) and only then resumed, so none of its code, nor any child, runs outside the job. Suspend
and resume are NtSuspendProcess / NtResumeProcess over the job's process list (in rounds until
nothing new appears), kill is TerminateJobObject, and if the agent dies the kernel kills the
tree when the job handle closes. If the job cannot be made the tree is found by children +
marker and handled with psutil, as before. CTRL_BREAK cannot reach a console-less child, so a
graceful stop is always asked for over the runner's stdin (:meth:`RunnerProcess.request_stop`).
The Windows and macOS parts are verified by unit tests only (tests/unit/test_winjob.py,
test_darwin.py, test_processes_platform.py), not on real Windows or macOS machines.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import psutil

from officegrid.worker import darwin, winjob
from officegrid.worker.cgroup import UnitCgroup

log = logging.getLogger(__name__)

RUNNER_PATH: Path = Path(__file__).with_name("runner.py").resolve()
"""Absolute path of the runner script, run by the release's Python."""

MARKER_ENV = "OFFICEGRID_MARKER"
"""Environment variable that tags every process of one attempt (inherited by descendants)."""

IS_POSIX = os.name == "posix"
_LINUX_PROC = sys.platform.startswith("linux") and os.path.isdir("/proc")

_MAX_ROUNDS = 50  # rescans before giving up on a tree that keeps forking
_KILL_TIMEOUT = 5.0  # seconds to wait for SIGKILLed processes to disappear
_POLL = 0.02  # seconds between checks while waiting for processes to go
_EOF = object()
_MARKER_NEEDLE = b"\0" + MARKER_ENV.encode() + b"="


# --------------------------------------------------------------------------------------------
# Finding processes


def _raw_marker(pid: int) -> str | None:
    """The OFFICEGRID_MARKER of a process, read straight from /proc (Linux), or None.

    Raises OSError if the process is gone or not ours to read.
    """
    with open(f"/proc/{pid}/environ", "rb") as f:
        data = b"\0" + f.read()
    at = data.find(_MARKER_NEEDLE)
    if at < 0:
        return None
    start = at + len(_MARKER_NEEDLE)
    end = data.find(b"\0", start)
    return data[start : end if end >= 0 else len(data)].decode("utf-8", "replace")


def _marker_of(proc: psutil.Process) -> str | None:
    """The marker of ``proc`` or None. Raises psutil.Error (gone, access denied, zombie)."""
    if _LINUX_PROC:
        try:
            return _raw_marker(proc.pid)
        except FileNotFoundError:
            raise psutil.NoSuchProcess(proc.pid) from None
        except PermissionError:
            raise psutil.AccessDenied(proc.pid) from None
        except ProcessLookupError:
            raise psutil.NoSuchProcess(proc.pid) from None
    return proc.environ().get(MARKER_ENV)


def _protected_pids() -> set[int]:
    """This process and its ancestors: never signalled, whatever their environment says."""
    me = psutil.Process()
    pids = {me.pid}
    with contextlib.suppress(psutil.Error):
        pids.update(p.pid for p in me.parents())
    return pids


def _is_live(proc: psutil.Process) -> bool:
    """True if ``proc`` still runs (a zombie has finished: it only waits to be reaped)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def find_marked(match: Callable[[str], bool]) -> list[psutil.Process]:
    """Live processes whose OFFICEGRID_MARKER satisfies ``match`` (this process and its ancestors
    excluded). Processes we may not read (AccessDenied) and zombies are skipped.

    Linux reads /proc/PID/environ directly (about 25 us a process); other systems use psutil.
    """
    protected = _protected_pids()
    found = []
    for pid in psutil.pids():
        if pid in protected:
            continue
        try:
            proc = psutil.Process(pid)
            value = _marker_of(proc)
            if value is None or not match(value):
                continue
            # Re-read through the identity-checked Process: the pid may have been reused between
            # the first read and the creation of the Process object.
            if _marker_of(proc) != value or proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        found.append(proc)
    return found


def _group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) members of process group ``pgid``. POSIX only; [] elsewhere."""
    if not IS_POSIX:
        return []
    members = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) != pgid:
                continue
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (OSError, psutil.Error):
            continue
    return members


def _send(proc: psutil.Process, action: str) -> bool:
    """Apply one of "stop", "cont", "term", "kill" to ``proc``. False if it is gone / not ours.

    psutil checks the process identity (pid + creation time) first, so a reused pid is safe.
    """
    try:
        if action == "kill":
            proc.kill()
        elif action == "term":
            proc.terminate()
        elif action == "stop":
            if IS_POSIX:
                proc.send_signal(signal.SIGSTOP)
            else:  # pragma: no cover - Windows
                proc.suspend()
        elif action == "cont":
            if IS_POSIX:
                proc.send_signal(signal.SIGCONT)
            else:  # pragma: no cover - Windows
                proc.resume()
        else:
            raise ValueError(action)
        return True
    except psutil.Error:
        return False


def sweep_leftovers(marker_prefix: str, timeout: float = 5.0,
                    keep: Callable[[str], bool] | None = None) -> list[int]:
    """SIGKILL every process whose OFFICEGRID_MARKER starts with ``marker_prefix``.

    The supervisor calls this at start with ``f"{workdir_id}:"`` to remove what a previous agent
    left behind (it was SIGKILLed, or crashed, and a grandchild escaped its group or a runner
    could not act on the stdin EOF). Never kills the calling process or its ancestors. Rescans
    until a scan finds nothing new (a leftover may be forking), then waits up to ``timeout``
    seconds for the killed processes to disappear (zombies count as gone).

    ``keep(marker)`` spares matching processes it returns True for (the supervisor spares units
    of a live agent: a copy of the work dir started on the same host must not kill them).

    Returns the pids killed, in the order killed. Raises ValueError if ``marker_prefix`` is empty
    (that would match every marked process of every work dir on the machine).
    """
    if not marker_prefix:
        raise ValueError("marker_prefix must not be empty")
    killed: list[int] = []
    procs: list[psutil.Process] = []
    for _ in range(_MAX_ROUNDS):
        new = [p for p in find_marked(
            lambda m: m.startswith(marker_prefix) and not (keep and keep(m)))
            if p.pid not in killed]
        if not new:
            break
        for proc in new:
            if _send(proc, "kill"):
                killed.append(proc.pid)
                procs.append(proc)
    _wait_until_gone(procs, timeout)
    if killed:
        log.info("swept %d leftover process(es) marked %r*: %s", len(killed), marker_prefix, killed)
    return killed


def _wait_until_gone(procs: list[psutil.Process], timeout: float) -> bool:
    """Wait up to ``timeout`` seconds until none of ``procs`` is live. True if all are gone."""
    deadline = time.monotonic() + timeout
    while True:
        procs = [p for p in procs if _is_live(p)]
        if not procs:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)


def set_lowest_priority(pid: int) -> tuple[bool, bool]:
    """Give process ``pid`` the lowest CPU priority and, where possible, the idle I/O class.

    POSIX: nice 19; Linux: ionice IOPRIO_CLASS_IDLE; Windows: IDLE_PRIORITY_CLASS and very low I/O;
    macOS: also the Darwin background policy (:func:`officegrid.worker.darwin.set_background`,
    inherited by its children; it counts as ``io_ok``).
    Failures (not permitted, process gone) are logged and ignored. Returns ``(cpu_ok, io_ok)``.
    """
    cpu_ok = io_ok = False
    try:
        proc = psutil.Process(pid)
    except psutil.Error:
        return cpu_ok, io_ok
    try:
        proc.nice(19 if IS_POSIX else psutil.IDLE_PRIORITY_CLASS)
        cpu_ok = True
    except (psutil.Error, OSError) as exc:
        log.warning("cannot lower the CPU priority of pid %d: %s", pid, exc)
    try:
        if hasattr(psutil, "IOPRIO_CLASS_IDLE"):
            proc.ionice(psutil.IOPRIO_CLASS_IDLE)
            io_ok = True
        elif hasattr(psutil, "IOPRIO_VERYLOW"):
            proc.ionice(psutil.IOPRIO_VERYLOW)
            io_ok = True
    except (psutil.Error, OSError, ValueError) as exc:
        log.info("cannot set the idle I/O class for pid %d: %s", pid, exc)
    if sys.platform == "darwin":  # background band: CPU, I/O and network (taskpolicy -b)
        io_ok = darwin.set_background(pid) or io_ok
    return cpu_ok, io_ok


# --------------------------------------------------------------------------------------------
# The runner


def spawn_runner(
    python: str | os.PathLike[str],
    spec_path: str | os.PathLike[str],
    cwd: str | os.PathLike[str],
    stderr_path: str | os.PathLike[str],
    env: Mapping[str, str] | None,
    marker: str,
    cgroup: UnitCgroup | None = None,
    max_memory: int | None = None,
) -> RunnerProcess:
    """Start ``python RUNNER_PATH spec_path`` for one attempt and return its handle.

    - ``python``: the release's interpreter; ``cwd``: the attempt directory (stdout.log, output
      and log paths of the spec are relative to it); ``stderr_path``: file the runner's stderr
      is appended to; ``env``: the child's environment (None = this process's), to which
      ``OFFICEGRID_MARKER=marker`` is added; ``marker``: unique per attempt, conventionally
      ``f"{workdir_id}:{attempt_id}"`` so that :func:`sweep_leftovers` can match a work dir.
    - POSIX: a new session (so a new process group whose id is the runner's pid); Windows: a new
      process group with idle priority. Every fd but the three pipes/files is closed in the child.
    - The child gets the lowest CPU and I/O priority (:func:`set_lowest_priority`) before this
      returns.
    - ``cgroup`` (Linux, optional): the unit's cgroup (:meth:`CgroupBase.unit
      <officegrid.worker.cgroup.CgroupBase.unit>`). The child is ``/bin/sh`` that writes ``0``
      into its ``cgroup.procs`` (moving itself) and then execs the runner, keeping its pid: the
      runner and all it starts are in the cgroup from their first instruction. If the move is
      refused the child exits with code 125 before the runner starts (the message is in
      ``stderr_path``). The handle then freezes, thaws and kills through the cgroup, and
      removes it in :meth:`RunnerProcess.close`.
    - Windows: the child is created suspended, put into its own job object (kill on close,
      ``max_memory`` bytes as the job's memory limit when given) and only then resumed
      (:func:`officegrid.worker.winjob.start_in_job`); the handle then suspends, resumes and
      kills through the job. ``max_memory`` is ignored elsewhere (the cgroup carries the cap).

    Spawn from a long-lived thread: on Linux the runner's PR_SET_PDEATHSIG fires when the thread
    that forked it exits; the signal is SIGCONT, harmless to a running unit but it would wake a
    suspended one (re-assert :meth:`RunnerProcess.suspend` periodically while suspended).

    Raises OSError (e.g. FileNotFoundError for a missing interpreter or cwd) if the process cannot
    be started; ValueError if ``marker`` is empty.
    """
    if not marker:
        raise ValueError("marker must not be empty")
    child_env = dict(os.environ if env is None else env)
    child_env[MARKER_ENV] = marker
    kwargs: dict = {}
    if IS_POSIX:
        kwargs["start_new_session"] = True
    else:  # pragma: no cover - Windows
        kwargs["creationflags"] = (
            subprocess.CREATE_NEW_PROCESS_GROUP
            | subprocess.IDLE_PRIORITY_CLASS
            | subprocess.CREATE_NO_WINDOW
            | winjob.CREATE_SUSPENDED  # resumed once it is in its job (start_in_job)
        )
    argv = [os.fspath(python), str(RUNNER_PATH), os.fspath(spec_path)]
    if cgroup is not None:
        # No preexec_fn (unsafe with threads): a shell moves itself, then becomes the runner.
        argv = ["/bin/sh", "-c", 'echo 0 > "$0" || exit 125; exec "$@"',
                os.fspath(cgroup.procs_file), *argv]
    with open(stderr_path, "ab") as stderr:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=os.fspath(cwd),
            env=child_env,
            close_fds=True,
            **kwargs,
        )
    job = None
    if not IS_POSIX:  # pragma: no cover - Windows: into its job before its first instruction
        job = winjob.start_in_job(popen, max_memory)
    set_lowest_priority(popen.pid)  # inherited across the shell's exec
    return RunnerProcess(popen, marker, cgroup, job)


class RunnerProcess:
    """Handle on one running unit runner (and, through its group and marker, its whole tree).

    Attributes: ``pid`` (int, also the process group id on POSIX), ``marker`` (str),
    ``cgroup`` (the unit's :class:`~officegrid.worker.cgroup.UnitCgroup`, or None: signals only),
    ``oom_kills`` (processes the kernel killed over the cgroup's memory.max, as last read).
    Methods may be called from any thread; suspend/resume/kill_tree are serialised.
    Use as a context manager (or call :meth:`close`) so that nothing outlives the handle.
    """

    def __init__(self, popen: subprocess.Popen, marker: str,
                 cgroup: UnitCgroup | None = None, job: winjob.UnitJob | None = None) -> None:
        self._popen = popen
        self.pid: int = popen.pid
        self.marker: str = marker
        self.cgroup = cgroup
        self.job = job  # Windows: the unit's job object (winjob), or None
        self.oom_kills = 0
        self._signalled = False  # stopped with SIGSTOP (no cgroup, or freezing failed)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._eof = False
        self._lock = threading.RLock()
        self._closed = False
        self.suspended = False
        self._reader = threading.Thread(
            target=self._read_control, name=f"officegrid-runner-{self.pid}", daemon=True
        )
        self._reader.start()

    def __repr__(self) -> str:
        return f"<RunnerProcess pid={self.pid} marker={self.marker!r} rc={self.returncode}>"

    # -- control channel ------------------------------------------------------------------------

    def _read_control(self) -> None:
        stream = self._popen.stdout
        try:
            for raw in stream:
                line = raw.decode("utf-8", "replace").strip()
                if not line:
                    continue
                try:
                    msg = json.loads(line)
                except ValueError:
                    msg = None
                if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
                    msg = {"type": "invalid", "line": line[:2000]}
                self._queue.put(msg)
        except (OSError, ValueError):
            pass
        finally:
            self._queue.put(_EOF)

    @property
    def channel_closed(self) -> bool:
        """True once the runner closed its control channel (it exited) and every message it
        sent has been returned by :meth:`read_message`."""
        return self._eof

    def read_message(self, timeout: float | None = None) -> dict | None:
        """Next control message from the runner, waiting at most ``timeout`` seconds.

        Returns the message: a dict with a str "type" -- started, progress, import_error, done,
        stopped (see runner.py), or ``{"type": "invalid", "line": text}`` for a line that is not
        a JSON object. Returns None if ``timeout`` seconds passed without one, or if the channel
        is closed and drained (:attr:`channel_closed`); in that case it first waits (up to
        ``timeout``) for the runner to exit, so a polling loop on it does not spin.
        ``timeout=None`` waits as long as it takes. Never raises for a dead runner.
        """
        if not self._eof:
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                return None
            if item is not _EOF:
                return item
            self._eof = True
        self.wait(timeout)
        return None

    def messages(self) -> Iterator[dict]:
        """Iterate over control messages until the channel closes (blocks between messages)."""
        while (msg := self.read_message()) is not None:
            yield msg

    def request_stop(self) -> bool:
        """Ask the runner to stop after its current record (writes ``stop`` to its stdin).

        The runner answers with a "stopped" message and exit 0. Returns False if the runner can
        no longer be told (its stdin is closed: it has exited). A suspended runner only acts on
        it once resumed.
        """
        try:
            self._popen.stdin.write(b"stop\n")
            self._popen.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def stop(self, timeout: float, kill_grace: float = 1.0) -> int | None:
        """Vacate gracefully: ask the runner to stop, give it ``timeout`` seconds to finish its
        current record and exit, then :meth:`kill_tree` with ``kill_grace`` (whatever is left,
        grandchildren included). A suspended tree is resumed first (it could not act on the
        request otherwise). Returns the runner's exit code (0 if it stopped in time; its
        "stopped" message is then waiting in :meth:`read_message`).

        Do not call ``kill_tree`` right after :meth:`request_stop` instead: its SIGTERM would end
        the runner before it can finish the record and report.
        """
        if self.suspended:
            self.resume()
        if self.request_stop():
            self.wait(max(0.0, timeout))
        return self.kill_tree(grace=kill_grace)

    # -- waiting ----------------------------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        """The runner's exit code (negative: killed by that signal), None while it runs."""
        return self._popen.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to ``timeout`` seconds (None: forever) for the runner to exit.

        Returns its exit code (see runner.py: 0 done/stopped, 1 runner failure, 3 import error,
        others from user code, negative = killed by a signal), or None if it still runs.
        Grandchildren are not waited for: call :meth:`kill_tree` (or :meth:`close`) after a unit.
        """
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    # -- the tree -----------------------------------------------------------------------------

    def _signal_group(self, sig: int) -> bool:
        """killpg the runner's group; False if it has no member (or not POSIX).

        While the runner is unreaped its pid (= the group id) cannot be reused, and while any
        member lives neither can the group id; only when both are gone could ``killpg`` hit a
        stranger's new group, so then we do not send.
        """
        if not IS_POSIX:
            return False
        if self._popen.poll() is not None and not _group_members(self.pid):
            return False
        try:
            os.killpg(self.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def tree(self) -> list[psutil.Process]:
        """Live processes of this runner's tree: the runner, its process-group members, its
        descendants, every process carrying this runner's marker and every process in its
        cgroup (this process and its ancestors excluded). Zombies are left out."""
        procs: dict[int, psutil.Process] = {}
        if self._popen.poll() is None:
            try:
                runner = psutil.Process(self.pid)
                procs[runner.pid] = runner
                for child in runner.children(recursive=True):
                    procs.setdefault(child.pid, child)
            except psutil.Error:
                pass
        for proc in _group_members(self.pid):
            procs.setdefault(proc.pid, proc)
        for proc in find_marked(self.marker.__eq__):
            procs.setdefault(proc.pid, proc)
        for pid in self.cgroup.procs() if self.cgroup is not None else ():
            with contextlib.suppress(psutil.Error):
                procs.setdefault(pid, psutil.Process(pid))
        with contextlib.suppress(OSError):  # Windows: every member of the job
            for pid in self.job.pids() if self.job is not None else ():
                with contextlib.suppress(psutil.Error):
                    procs.setdefault(pid, psutil.Process(pid))
        protected = _protected_pids()
        return [p for pid, p in procs.items() if pid not in protected and _is_live(p)]

    def suspend(self) -> list[int]:
        """Stop the whole tree. Returns the pids stopped.

        With a cgroup: freeze it and wait (briefly, see ``cgroup.FREEZE_WAIT``) for the kernel to
        report it frozen; returns the pids in the cgroup. If the cgroup cannot be frozen (an
        OSError), or without one: the signals below.

        With a job object (Windows): :meth:`UnitJob.suspend
        <officegrid.worker.winjob.UnitJob.suspend>` (NtSuspendProcess in rounds; psutil if the
        job cannot be listed). Without: SIGSTOP (psutil suspend on Windows).

        ``killpg`` stops the group atomically (the kernel holds back a fork racing with a group
        signal), but processes that left the group are found by a scan and can fork between the
        scan and the signal, so the scan is repeated until it finds no process that was not
        already stopped. Takes a few milliseconds; call it again periodically while the unit is
        meant to stay suspended (nothing then escapes for long).
        """
        with self._lock:
            cg = self.cgroup
            if cg is not None:
                try:
                    if not cg.freeze():
                        log.info("runner %d: %s is still freezing (a process in uninterruptible "
                                 "sleep?); the kernel completes it", self.pid, cg.path)
                    self.suspended = True
                    return cg.procs()
                except OSError as exc:
                    log.warning("runner %d: cannot freeze %s (%s): stopping it with SIGSTOP",
                                self.pid, cg.path, exc)
            if self.job is not None:  # Windows: NtSuspendProcess over the job, in rounds
                try:
                    pids = self.job.suspend()
                    self.suspended = True
                    return pids
                except OSError as exc:
                    log.warning("runner %d: cannot list its job (%s): suspending it with psutil",
                                self.pid, exc)
            self._signalled = True
            self._signal_group(signal.SIGSTOP if IS_POSIX else 0)
            stopped: set[int] = set()
            for _ in range(_MAX_ROUNDS):
                new = [p for p in self.tree() if p.pid not in stopped]
                if not new:
                    break
                for proc in new:
                    if _send(proc, "stop"):
                        stopped.add(proc.pid)
            self.suspended = True
            return sorted(stopped)

    def resume(self) -> list[int]:
        """Continue the whole tree: thaw its cgroup, and SIGCONT (psutil resume on Windows)
        whatever was stopped with signals. Returns the pids resumed."""
        with self._lock:
            resumed: list[int] = []
            if self.cgroup is not None:
                try:
                    self.cgroup.thaw()
                    resumed = self.cgroup.procs()
                except OSError as exc:
                    log.warning("runner %d: cannot thaw %s: %s", self.pid, self.cgroup.path, exc)
            if self.job is not None:  # exactly the processes the job suspended (counts nest)
                resumed = self.job.resume()
            if (self.cgroup is None and self.job is None) or self._signalled:
                self._signal_group(signal.SIGCONT if IS_POSIX else 0)
                resumed = [p.pid for p in self.tree() if _send(p, "cont")]
            self._signalled = False
            self.suspended = False
            return sorted(resumed)

    def _anything_left(self, known: list[psutil.Process]) -> bool:
        if self._popen.poll() is None:
            return True
        if any(_is_live(p) for p in known):
            return True
        if self.cgroup is not None and self.cgroup.populated:
            return True
        return bool(_group_members(self.pid))

    def kill_tree(self, grace: float = 5.0) -> int | None:
        """End the runner and everything it started; returns the runner's exit code.

        1. Continue the tree (thaw its cgroup, SIGCONT): a stopped or frozen process cannot run
           a SIGTERM handler (clean up, flush) until it is continued.
        2. SIGTERM the group and every process of :meth:`tree` (escaped ones included).
        3. Wait up to ``grace`` seconds for all of them to end (0: do not wait).
        4. SIGKILL the group and the cgroup (``cgroup.kill``) and rescan (group, descendants,
           marker, cgroup) until a scan finds nothing alive, waiting up to 5 s for SIGKILLed
           processes to go (a process in uninterruptible sleep can outlast that; it is then
           logged and left to :func:`sweep_leftovers`).
        5. Reap the runner.

        Safe to call at any time, also after the runner exited (leftover grandchildren are still
        killed) and more than once. For a graceful end use :meth:`stop` (stop request, wait,
        then this).
        Returns None only if the runner could not be reaped within the wait (should not happen).
        """
        with self._lock:
            known = self.tree()
            if self.job is not None:  # Windows: TerminateJobObject, suspended members too
                self.job.terminate()
            if self.cgroup is not None:
                with contextlib.suppress(OSError):
                    self.cgroup.thaw()
            self._signal_group(signal.SIGCONT if IS_POSIX else 0)
            for proc in known:
                _send(proc, "cont")
            self._signal_group(signal.SIGTERM if IS_POSIX else 0)
            for proc in known:
                _send(proc, "term")
            deadline = time.monotonic() + max(0.0, grace)
            while self._anything_left(known) and time.monotonic() < deadline:
                step = min(_POLL, max(0.0, deadline - time.monotonic()))
                if self._popen.poll() is None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self._popen.wait(step)
                else:
                    time.sleep(step)

            killed: list[psutil.Process] = []
            kill_deadline = time.monotonic() + _KILL_TIMEOUT
            for _ in range(_MAX_ROUNDS):
                self._signal_group(signal.SIGKILL if IS_POSIX else 0)
                if self.cgroup is not None:
                    with contextlib.suppress(OSError):
                        self.cgroup.kill()
                alive = self.tree()
                if not alive:
                    break
                for proc in alive:
                    _send(proc, "kill")
                killed.extend(alive)
                if not _wait_until_gone(alive, max(0.0, kill_deadline - time.monotonic())):
                    break
            leftover = [p.pid for p in killed if _is_live(p)]
            if self.cgroup is not None and not self.cgroup.wait_empty(
                    max(0.0, kill_deadline - time.monotonic())):
                leftover += self.cgroup.procs()
            if leftover:
                log.warning("runner %d: processes survived SIGKILL: %s", self.pid, leftover)
            self.suspended = False
            self._signalled = False
            return self.wait(max(0.0, kill_deadline - time.monotonic()) + 0.1)

    def memory_oom_kills(self) -> int:
        """How many of the tree's processes the kernel killed for going over the cgroup's
        ``memory.max`` (0 without a cgroup or a memory cap). Still answers after
        :meth:`close` (the count read just before the cgroup was removed)."""
        if self.cgroup is not None and not self._closed:
            self.oom_kills = max(self.oom_kills, self.cgroup.oom_kills())
        if self.job is not None:  # Windows: allocations refused over the job memory limit
            self.oom_kills = max(self.oom_kills, self.job.memory_limit_hits())
        return self.oom_kills

    def memory_cap_error(self, max_memory: int | None) -> str | None:
        """The attempt's failure text if the kernel enforced the memory cap on this tree
        (cgroup ``memory.max`` or the Windows job memory limit), else None."""
        hits = self.memory_oom_kills()
        if not hits:
            return None
        if self.job is not None:
            return winjob.memory_limit_error(max_memory, hits)
        from officegrid.worker.cgroup import memory_cap_error

        return memory_cap_error(max_memory, hits)

    # -- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill whatever is left of the tree (``kill_tree(grace=0)``), remove its cgroup (after
        reading its OOM count, see :meth:`memory_oom_kills`), close the pipes and join the reader
        thread. Idempotent. Messages already received can still be read."""
        if self._closed:
            return
        self.kill_tree(grace=0.0)
        self.memory_oom_kills()
        self._closed = True
        if self.job is not None:
            self.job.close()  # kill on close: nothing of the tree outlives the handle
        if self.cgroup is not None and not self.cgroup.remove(timeout=1.0):
            log.warning("runner %d: cannot remove %s (left for the next start's sweep)",
                        self.pid, self.cgroup.path)
        with contextlib.suppress(OSError, ValueError):
            self._popen.stdin.close()
        self._reader.join(timeout=2.0)
        if not self._reader.is_alive():
            with contextlib.suppress(OSError, ValueError):
                self._popen.stdout.close()

    def __enter__(self) -> RunnerProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
