"""Machine load for the owner policy (worker/load.py): non-grid CPU use and battery."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import namedtuple

import psutil

from grid import wait_for
from officegrid.worker import load
from officegrid.worker.load import NonGridCpu, on_battery


def test_first_sample_has_no_interval() -> None:
    assert NonGridCpu().sample([os.getpid()]) is None


def test_grid_cpu_is_subtracted(monkeypatch) -> None:
    """Arithmetic on scripted clocks: machine busy time minus the grid's processes' time."""
    busy = iter([100.0, 103.0])  # 3 CPU-seconds of the machine over the interval
    clock = iter([10.0, 12.0])  # 2 s of wall time, 2 cores -> 4 CPU-seconds available
    monkeypatch.setattr(load, "_busy_seconds", lambda: next(busy))
    monkeypatch.setattr(load.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(load.psutil, "cpu_count", lambda: 2)
    grid_cpu = iter([5.0, 7.0])  # the grid used 2 of the 3
    n = NonGridCpu()
    monkeypatch.setattr(n, "_grid_delta",
                        lambda pids, since: next(grid_cpu) - 5.0 if pids else 0.0)
    assert n.sample([1]) is None
    assert n.sample([1]) == 0.25  # (3 - 2) / 4


def test_real_busy_child_counts_only_when_not_grid() -> None:
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        proc = psutil.Process(hog.pid)
        wait_for(lambda: sum(proc.cpu_times()[:2]) > 0.05, timeout=30, what="hog running")
        as_grid, as_other = NonGridCpu(), NonGridCpu()
        as_grid.sample([hog.pid])
        as_other.sample([])
        start = sum(proc.cpu_times()[:2])
        wait_for(lambda: sum(proc.cpu_times()[:2]) - start > 0.5, timeout=60,
                 what="hog used 0.5 CPU-seconds")
        grid_view = as_grid.sample([hog.pid])
        other_view = as_other.sample([])
        assert grid_view is not None and other_view is not None
        assert 0.0 <= grid_view <= 1.0 and 0.0 <= other_view <= 1.0
        # Same machine, same interval (within microseconds): the grid view lacks the hog.
        assert other_view > grid_view
    finally:
        hog.kill()
        hog.wait(timeout=10)


def test_exited_grid_process_is_forgotten() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    n = NonGridCpu()
    n.sample([child.pid])  # gone: ignored, no error
    assert child.pid not in n._procs


def test_on_battery_answers(monkeypatch) -> None:
    Batt = namedtuple("Batt", "percent secsleft power_plugged")
    monkeypatch.setattr(load.psutil, "sensors_battery", lambda: None)
    assert on_battery() is False  # no battery: mains
    monkeypatch.setattr(load.psutil, "sensors_battery", lambda: Batt(50, 100, False))
    assert on_battery() is True
    monkeypatch.setattr(load.psutil, "sensors_battery", lambda: Batt(50, 100, None))
    assert on_battery() is None


# ------------------------------------------------------------------------------ review R2


def test_guest_time_is_not_counted_twice(monkeypatch) -> None:
    """Linux counts a VM's guest time in user already; psutil lists it again."""
    T = namedtuple("T", "user nice system idle iowait irq softirq steal guest guest_nice")
    monkeypatch.setattr(load.psutil, "cpu_times", lambda: T(10, 2, 3, 50, 1, 0, 0, 0, 8, 2))
    assert load._busy_seconds() == 15.0  # user + nice + system, guest (in user) not again


def test_a_grid_process_found_late_does_not_hide_the_owners_load(monkeypatch) -> None:
    """A grid process first seen after it already ran (a grandchild found late) must not have
    its whole past subtracted from one interval: that made the owner's load look like 0."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        proc = psutil.Process(hog.pid)
        wait_for(lambda: sum(proc.cpu_times()[:2]) > 1.0, timeout=60, what="hog used 1 s")
        busy = iter([100.0, 100.5])  # the machine did 0.5 CPU-seconds over the interval
        clock = iter([10.0, 11.0])  # in 1 s on one core
        monkeypatch.setattr(load, "_busy_seconds", lambda: next(busy))
        monkeypatch.setattr(load.time, "monotonic", lambda: next(clock))
        monkeypatch.setattr(load.psutil, "cpu_count", lambda: 1)
        n = NonGridCpu()
        assert n.sample([]) is None
        # The hog's > 1 s of past CPU is not this interval's: at most its share of 0.5 s.
        view = n.sample([hog.pid])
        assert view is not None and view >= 0.4, view
    finally:
        hog.kill()
        hog.wait(timeout=10)
