"""The owner monitor: enforces the owner policy in the worker agent (issue 5, DESIGN promise 5).

One thread, :class:`OwnerMonitor`, wakes every ``interval`` seconds (0.2 s), reads the idle
sources (:class:`officegrid.worker.idle.IdleMonitor`) and the owners' pause files, and asks the
policy (:class:`officegrid.worker.policy.Policy`) what to do; every ``slow_interval`` seconds
(1 s) it also samples what is costlier to measure: non-grid CPU use, battery, free memory, free
disk and each running unit's memory. It then acts on the verdict at once:

* ``suspend``: stop every running unit's whole tree (:meth:`RunnerProcess.suspend`, SIGSTOP
  repeated until no new process appears). The stop is re-asserted every ``reassert`` seconds:
  a process that escaped a scan, or a runner woken by its PR_SET_PDEATHSIG (SIGCONT), is stopped
  again. A suspended unit keeps its lease: the supervisor heartbeats, never the unit.
* ``run``: continue every suspended tree.
* ``vacate``: set each unit's abort flag; the supervisor's ``_execute`` loop then resumes the tree,
  asks the runner to stop over its pipe, waits ``vacate_grace`` and kills what is left, and gives
  the unit back with its finished prefix (see ``Agent._give_back``).
* ``may_start`` False (or the free-disk floor reached): :attr:`may_start` (an Event) is cleared;
  the slot loops wait on it before leasing, so a change is acted on at once.

Resource guards: a unit whose tree uses more than ``max_memory`` bytes of RSS (sum over the tree,
sampled every ``slow_interval``) is killed and its attempt fails with a clear error; the desktop
is never limited (RLIMIT_AS would break numpy and pyarrow). Below ``min_free_disk`` bytes free in
the work dir the worker takes no units and says why.

While units run, :class:`KeepAwake` holds the OS's sleep inhibitor and releases it the moment
none runs.

Owner controls (``officegrid pause [DURATION]`` / ``resume``) write per-user pause files into the
work dir's ``sessions/`` channel, which any local user may write (officegrid.worker.pause); the
monitor lists it every tick and re-reads only files that changed.

Where the agent has a writable cgroup v2 subtree (officegrid.worker.cgroup: the installed systemd
unit delegates one; ``cgroup_root`` names one), each unit runs in its own cgroup: suspend freezes
it (``RunnerProcess.suspend`` picks the way), and with a delegated memory controller the kernel
enforces ``memory.max``; an OOM kill there fails the attempt like the RSS cap does. Elsewhere
SIGSTOP over the group and the marker, and the RSS sum, are used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil

from officegrid.sizes import bytes_pair, human_bytes
from officegrid.worker.idle import IdleMonitor
from officegrid.worker.load import NonGridCpu, on_battery
from officegrid.worker.pause import PauseWatch
from officegrid.worker.policy import Observation, Policy, PolicySettings

log = logging.getLogger("officegrid.worker.owner")

# --------------------------------------------------------------------------------------------
# Formatting


# human_bytes lives in officegrid.sizes (one formatter of sizes); imported here for the
# modules that take it from this one (cgroup, winjob).


def state_text(state: str, reason: str | None) -> str:
    """``"suspended: input (...)"`` for state "suspended" and that reason: the state once,
    not "suspended: suspended: input" when the reason already starts with it."""
    if not reason:
        return state
    return reason if reason.startswith(f"{state}:") else f"{state}: {reason}"


# --------------------------------------------------------------------------------------------
# Policy plumbing


def load_policy(settings: Any) -> Policy:
    """The owner policy of a worker's settings: its ``policy`` (a ``PolicySettings``, a preset
    name, or None for ``always``, the default of an agent run by hand).

    Raises:
        ConfigError: a bad configuration (from ``Policy.from_settings``), naming the key.
    """
    configured = getattr(settings, "policy", None)
    if configured is None:
        configured = PolicySettings()
    elif isinstance(configured, str):
        configured = PolicySettings(preset=configured)
    return Policy.from_settings(configured)


# --------------------------------------------------------------------------------------------
# Keeping the machine awake while units run


class KeepAwake:
    """Holds the OS's sleep inhibitor while units run.

    Linux: a ``systemd-inhibit --what=idle:sleep --mode=block`` child that runs ``cat`` on a
    pipe from the agent: releasing closes the pipe; if the agent dies the pipe closes too, so
    the inhibitor never outlives the agent. macOS: ``caffeinate -i -w AGENT_PID``. Windows:
    ``SetThreadExecutionState(ES_CONTINUOUS | ES_SYSTEM_REQUIRED)`` from the monitor thread.
    A missing tool (or one that fails, e.g. no logind) is logged once and then ignored.
    """

    def __init__(self) -> None:
        self.held = False
        self._proc: subprocess.Popen | None = None
        self._broken = False

    def _command(self) -> list[str] | None:
        if sys.platform == "darwin":
            tool = shutil.which("caffeinate")
            return [tool, "-i", "-w", str(os.getpid())] if tool else None
        tool = shutil.which("systemd-inhibit")
        if not tool:
            return None
        return [tool, "--what=idle:sleep", "--who=officegrid",
                "--why=officegrid units are running", "--mode=block", "cat"]

    def acquire(self) -> None:
        """Keep the machine awake (idempotent; never raises)."""
        if self.held or self._broken:
            return
        self.held = True
        if os.name == "nt":  # pragma: no cover - Windows
            import ctypes

            es_continuous, es_system_required = 0x80000000, 0x00000001
            ctypes.windll.kernel32.SetThreadExecutionState(es_continuous | es_system_required)
            return
        cmd = self._command()
        if cmd is None:
            self._give_up("no sleep inhibitor tool found (systemd-inhibit / caffeinate)")
            return
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, close_fds=True)
        except OSError as exc:
            self._give_up(f"cannot start {cmd[0]}: {exc}")

    def check(self) -> None:
        """Notice an inhibitor that exited at once (no logind, not permitted): log once."""
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            self._proc = None
            self._give_up(f"the sleep inhibitor exited ({proc.returncode}): {err[-300:]}")

    def _give_up(self, why: str) -> None:
        log.warning("cannot keep the machine awake while units run: %s", why)
        self._broken = True

    def release(self) -> None:
        """Let the machine sleep again (idempotent; never raises)."""
        if not self.held:
            return
        self.held = False
        if os.name == "nt":  # pragma: no cover - Windows
            import ctypes

            ctypes.windll.kernel32.SetThreadExecutionState(0x80000000)
            return
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.close()  # type: ignore[union-attr]
        with contextlib.suppress(OSError):
            proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2)
        if proc.stderr:
            proc.stderr.close()


# --------------------------------------------------------------------------------------------
# The monitor


def children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids of every process: one scan of the process table (psutil's own
    ``ppid_map`` where the platform has one, as ``Process.children`` uses)."""
    ppid_map = getattr(psutil._psplatform, "ppid_map", None)
    if ppid_map is not None:
        pairs = ppid_map().items()
    else:  # pragma: no cover - platforms without ppid_map
        pairs = ((p.pid, p.info["ppid"]) for p in psutil.process_iter(["ppid"]))
    kids: dict[int, list[int]] = {}
    for pid, ppid in pairs:
        kids.setdefault(ppid, []).append(pid)
    return kids


def descendants(pid: int, kids: dict[int, list[int]]) -> list[int]:
    """``pid`` and its descendants in ``kids`` (from :func:`children_map`)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def tree_rss(pid: int, kids: dict[int, list[int]] | None = None) -> tuple[int, list[int]]:
    """(sum of RSS in bytes, pids) over process ``pid`` and its descendants; (0, []) if gone.

    Descendants are found by parent links (one scan of the process table, or ``kids`` from
    :func:`children_map`): cheap enough to run every second; the marker scan of
    :meth:`RunnerProcess.tree` is kept for suspend and kill."""
    total = 0
    pids = []
    for p in descendants(pid, children_map() if kids is None else kids):
        with contextlib.suppress(psutil.Error, OSError):
            total += psutil.Process(p).memory_info().rss
            pids.append(p)
    return total, pids


class OwnerMonitor:
    """Watches the owner and enforces the policy on the agent's running units.

    Args:
        policy: has ``evaluate(Observation) -> Verdict`` and ``describe() -> str``.
        work_dir: the agent's work dir (pause file, free disk).
        units: returns the running units: objects with ``proc`` (a
            :class:`~officegrid.worker.processes.RunnerProcess` or None while being prepared),
            ``abort`` (Event), ``abort_reason`` (str) and ``fail_error`` (str | None).
        on_change: called (from the monitor thread) when state or reason changed, so the agent
            can heartbeat at once.
        max_memory: bytes of RSS a unit's tree may use (None: unlimited).
        min_free_disk: bytes that must stay free in the work dir to take units (None: no floor).
        interval: seconds between owner readings (0.2: suspend well within 1 s of input).
        slow_interval: seconds between samples of CPU, memory, battery and disk.
        idle: an IdleMonitor (default: H3a's with every source); ``None`` and
            ``idle=False`` mean "cannot tell".
    """

    def __init__(self, policy: Policy, work_dir: Path, units: Callable[[], Iterable[Any]],
                 on_change: Callable[[], None] | None = None, *, max_memory: int | None = None,
                 min_free_disk: int | None = None, interval: float = 0.2,
                 slow_interval: float = 1.0, reassert: float = 2.0, idle: Any = None) -> None:
        self.policy = policy
        self.work_dir = Path(work_dir)
        self.units = units
        self.on_change = on_change
        self.max_memory = max_memory
        self.min_free_disk = min_free_disk
        self.interval = interval
        self.slow_interval = slow_interval
        self.reassert = reassert
        self.may_start = threading.Event()
        self.may_start.set()
        self.state: str | None = None  # None: the policy does not hold the worker back
        self.reason: str | None = None
        self.action = "run"
        self.disk_reason: str | None = None
        self.suspends = 0  # how many times units were suspended (for tests and logs)
        # Only the desktop presets look at the owner's input: others do not pay for reading it.
        watches_input = policy.preset in ("desktop", "desktop-or-night")
        if idle is None:
            idle = IdleMonitor(work_dir=self.work_dir, sources=policy.sources) \
                if watches_input else False
        self._idle = idle or None
        self._cpu, self._on_battery = NonGridCpu(), on_battery
        settings = getattr(policy, "settings", None)
        self._pause = PauseWatch(self.work_dir, settings.model_dump(mode="json", exclude_none=True)
                                 if settings is not None else None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._suspended_since: float | None = None
        self._last_reassert = 0.0
        self._next_slow = 0.0
        self._non_grid_cpu: float | None = None
        self._battery: bool | None = None
        self._free_memory: int | None = None
        self._grid_pids: set[int] = set()
        self.awake = KeepAwake()

    # -- lifetime -------------------------------------------------------------------------------

    def start(self) -> None:
        """Take a first reading (so the first lease already obeys the policy), then start the
        thread."""
        self.tick()
        self._thread = threading.Thread(target=self._loop, name="owner-monitor", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread, resume anything still suspended, release the inhibitor."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for ru in list(self.units()):
            proc = getattr(ru, "proc", None)
            if proc is not None and proc.suspended:
                with contextlib.suppress(Exception):
                    proc.resume()
        self.awake.release()
        self._pause.close()
        if self._idle is not None:
            with contextlib.suppress(Exception):
                self._idle.close()
        self.may_start.set()  # let waiting slots see the agent stopping

    def _loop(self) -> None:
        # Fixed-rate schedule: a slow tick does not push the next reading later.
        next_at = time.monotonic()
        while True:
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay < 0:
                next_at = time.monotonic()
                delay = 0
            if self._stop.wait(delay):
                return
            try:
                self.tick()
            except Exception:  # a fault in a probe must not end the owner's protection
                log.exception("owner monitor tick failed")

    # -- one reading ----------------------------------------------------------------------------

    def _slow(self, units: list[Any]) -> None:
        me = os.getpid()
        grid = {me}
        # One scan of the process table serves every unit and the agent's own children; with
        # no unit there is nothing to scan (the agent then has no children of its own).
        kids = children_map() if units else {}
        grid.update(descendants(me, kids))
        for ru in units:
            proc = getattr(ru, "proc", None)
            if proc is None or proc.returncode is not None:
                continue
            rss, pids = tree_rss(proc.pid, kids)
            cg = getattr(proc, "cgroup", None)
            for extra in set(cg.procs() if cg is not None else ()) - set(pids):
                # In the unit's cgroup but not a descendant (its parent exited): count it too.
                with contextlib.suppress(psutil.Error):
                    rss += psutil.Process(extra).memory_info().rss
                    pids.append(extra)
            grid.update(pids)
            capped = proc.memory_cap_error(self.max_memory) \
                if hasattr(proc, "memory_cap_error") else None
            if capped and getattr(ru, "fail_error", None) is None:
                ru.fail_error = capped
                log.warning("%s", ru.fail_error)
                proc.kill_tree(grace=0.0)
                continue
            if self.max_memory is not None and rss > self.max_memory \
                    and getattr(ru, "fail_error", None) is None:
                ru.fail_error = (f"unit used {human_bytes(rss)} > max_memory "
                                 f"{human_bytes(self.max_memory)} (sum of RSS over its "
                                 "processes); it was killed")
                log.warning("%s", ru.fail_error)
                proc.kill_tree(grace=0.0)
        self._grid_pids = grid
        if self._cpu is not None:
            try:
                self._non_grid_cpu = self._cpu.sample(grid)
            except Exception:
                log.exception("non-grid CPU sample failed")
                self._non_grid_cpu = None
        with contextlib.suppress(Exception):
            self._battery = self._on_battery()
        self._free_memory = psutil.virtual_memory().available
        if self.min_free_disk is not None:
            try:
                free = shutil.disk_usage(self.work_dir).free
            except OSError:
                free = None
            low_disk = None
            if free is not None and free < self.min_free_disk:
                have, floor = bytes_pair(free, self.min_free_disk)
                low_disk = f"low disk: {have} free < {floor}"
            self.disk_reason = low_disk
        self.awake.check()

    def tick(self) -> Any:
        """Read the owner once, evaluate the policy and act; return the verdict."""
        mono = time.monotonic()
        units = list(self.units())
        if mono >= self._next_slow:
            self._next_slow = mono + self.slow_interval
            self._slow(units)
        status = None
        if self._idle is not None:
            try:
                status = self._idle.read()
            except Exception:
                log.exception("idle sources failed: the idle time counts as unknown (never idle)")
        now = time.time()
        paused_until, paused_by = self._pause.poll(now)
        running = any(getattr(ru, "proc", None) is not None for ru in units)
        suspended_for = None if self._suspended_since is None else mono - self._suspended_since
        from datetime import datetime

        obs = Observation(
            now=datetime.now().astimezone(),
            idle_seconds=status.idle_seconds if status is not None else None,
            present=status.present if status is not None else False,
            no_session=status.no_session if status is not None else False,
            non_grid_cpu=self._non_grid_cpu, on_battery=self._battery,
            free_memory=self._free_memory, owner_paused_until=paused_until,
            suspended_for=suspended_for, running=running,
            idle_detail=status.detail if status is not None else "no idle source",
            locked=bool(getattr(status, "locked", False)), owner_paused_by=paused_by)
        verdict = self.policy.evaluate(obs)
        self._act(verdict, units, mono)
        self._publish(verdict, units)
        if units:
            self.awake.acquire()
        else:
            self.awake.release()
        return verdict

    def _act(self, verdict: Any, units: list[Any], mono: float) -> None:
        action = verdict.action
        self.action = action
        if action == "suspend":
            if self._suspended_since is None:
                self._suspended_since = mono
            reassert = mono - self._last_reassert >= self.reassert
            for ru in units:
                proc = getattr(ru, "proc", None)
                if proc is None or proc.returncode is not None or ru.abort.is_set():
                    continue
                if not proc.suspended or reassert:
                    if not proc.suspended:
                        self.suspends += 1
                        log.info("suspending unit %s: %s", ru.lease.unit, verdict.reason)
                    proc.suspend()
            if reassert:
                self._last_reassert = mono
            if not any(getattr(ru, "proc", None) is not None for ru in units):
                self._suspended_since = None  # nothing suspended: no vacate clock runs
            return
        self._suspended_since = None
        for ru in units:
            proc = getattr(ru, "proc", None)
            if action == "vacate":
                if not ru.abort.is_set():
                    log.info("vacating unit %s: %s", ru.lease.unit, verdict.reason)
                    ru.abort_reason = f"vacated: {verdict.reason or 'owner policy'}"
                    ru.abort.set()
            elif proc is not None and proc.suspended:
                log.info("resuming unit %s", ru.lease.unit)
                proc.resume()

    def _publish(self, verdict: Any, units: list[Any]) -> None:
        may = bool(verdict.may_start) and self.disk_reason is None
        may_changed = may != self.may_start.is_set()
        if may:
            self.may_start.set()
        else:
            self.may_start.clear()
        if verdict.action == "run" and verdict.may_start:
            state, reason = (("waiting", self.disk_reason) if self.disk_reason and not units
                             else (None, None))
        else:
            state, reason = verdict.state, verdict.reason
        state_changed = state != self.state
        # Who paused it is news too (a second user's pause): that reason holds no counter.
        pausers_changed = state == "paused" and reason != self.reason
        self.state, self.reason = state, reason
        if state_changed or may_changed or pausers_changed:
            # Heartbeat at once on a change of state, not of the reason's text (it counts
            # idle seconds): the operator sees it now and the server is not flooded.
            if state:
                log.info("owner policy: %s", state_text(state, reason))
            if self.on_change is not None:
                self.on_change()

    def heartbeat_state(self, default_state: str, default_reason: str | None
                        ) -> tuple[str, str | None]:
        """(state, reason) for the heartbeat: the policy's when it holds the worker back
        (e.g. ``("suspended", "input")``, ``("paused", "paused by owner")``, ``("waiting",
        "low disk: 1.2 GB free < 2 GB")``), else the agent's own."""
        if self.state:
            return self.state, self.reason
        return default_state, default_reason
