"""Machine load the owner policy looks at: non-grid CPU use, battery power.

Non-grid CPU use is the CPU time of the whole machine (every core, every process: busy time of
/proc/stat or the OS equivalent, via psutil) minus the CPU time of the grid's own processes, over
the interval between two samples, as a fraction of the machine (one core per core): 0.5 on a
4-core machine means two cores' worth of work by everything that is not the grid. HTCondor's
START expression compares the same quantity (LoadAvg minus CondorLoadAvg) with 0.3.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import psutil


def _busy_seconds() -> float:
    """Busy CPU seconds of all cores since boot (everything except idle and iowait).

    Linux already counts a virtual machine's guest time in user (guest_nice in nice); psutil
    lists them again, so they are taken out once (as psutil.cpu_percent does).
    """
    t = psutil.cpu_times()
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    return total - t.idle - getattr(t, "iowait", 0.0)


class NonGridCpu:
    """Samples non-grid CPU use; each sample covers the time since the previous one."""

    def __init__(self) -> None:
        self._last_wall: float | None = None
        self._last_time: float | None = None  # time.time() of the last sample
        self._last_busy = 0.0
        self._procs: dict[int, psutil.Process] = {}
        self._last_cpu: dict[int, float] = {}
        self._ncpu = psutil.cpu_count() or 1

    def _grid_delta(self, pids: Iterable[int], since: float | None) -> float:
        """CPU seconds the grid's processes used since the last sample (at time.time() `since`).

        A process first seen now counts in full only if it started after that sample; an
        older one (found late) counts from now on, or its whole past would be subtracted
        from this interval and hide the owner's load.
        """
        delta = 0.0
        seen: dict[int, float] = {}
        for pid in set(pids):
            proc = self._procs.get(pid)
            try:
                if proc is None or not proc.is_running():
                    proc = psutil.Process(pid)
                    self._procs[pid] = proc
                    self._last_cpu.pop(pid, None)
                ct = proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                self._procs.pop(pid, None)
                continue
            used = ct.user + ct.system
            seen[pid] = used
            before = self._last_cpu.get(pid)
            if before is None:
                try:
                    born_after = since is not None and proc.create_time() >= since
                except psutil.Error:
                    born_after = False
                before = 0.0 if born_after else used
            delta += used - before
        for gone in set(self._procs) - set(seen):
            self._procs.pop(gone, None)
        self._last_cpu = seen
        return delta

    def sample(self, grid_pids: Iterable[int]) -> float | None:
        """Fraction (0..1) of the machine's CPU used by non-grid processes since the last call.

        grid_pids: every process of the grid (agent, runners, their children).
        Returns None on the first call (no interval yet) or when the interval is too short.
        """
        wall, now = time.monotonic(), time.time()
        busy = _busy_seconds()
        grid = self._grid_delta(grid_pids, self._last_time)
        last_wall, last_busy = self._last_wall, self._last_busy
        self._last_wall, self._last_busy, self._last_time = wall, busy, now
        if last_wall is None or wall - last_wall < 0.05:
            return None
        other = (busy - last_busy) - grid
        return min(1.0, max(0.0, other / ((wall - last_wall) * self._ncpu)))


def on_battery() -> bool | None:
    """True on battery power, False on mains or with no battery, None when it cannot tell."""
    try:
        battery = psutil.sensors_battery()
    except (AttributeError, NotImplementedError, OSError):
        return None
    if battery is None:
        return False  # no battery: a desktop on mains
    if battery.power_plugged is None:
        return None
    return not battery.power_plugged
