"""cgroup v2 decision logic against plain directories laid out like cgroup dirs (no kernel).

The kernel paths (freeze, kill, a real cgroup) are in tests/integration/test_cgroup_units.py;
memory.max with a real memory controller could not be exercised on the development machine (its
memory controller is bound to cgroup v1), so here the decisions and the files written are tested.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path, PurePosixPath

import pytest

from officegrid.worker import cgroup
from officegrid.worker.cgroup import CgroupBase, UnitCgroup

MOUNTINFO = """\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
"""
MOUNTINFO_V1 = """\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
"""
SERVICE = "0::/system.slice/officegrid-worker.service\n"


def fake_cgroup_dir(path: Path, controllers: str = "", subtree: str = "") -> Path:
    """A plain directory with the files a non-root cgroup v2 directory has."""
    path.mkdir(parents=True, exist_ok=True)
    for name, text in (("cgroup.controllers", controllers), ("cgroup.subtree_control", subtree),
                       ("cgroup.procs", ""), ("cgroup.freeze", "0"),
                       ("cgroup.events", "populated 0\nfrozen 0\n")):
        (path / name).write_text(text)
    return path


# -- discovery ------------------------------------------------------------------------------------


def test_own_cgroup_dir_from_proc_and_mountinfo() -> None:
    assert cgroup.unified_path("12:memory:/x\n0::/a/b.service\n") == "/a/b.service"
    assert cgroup.unified_path("4:memory:/x\n") is None
    assert cgroup.cgroup2_mount(MOUNTINFO) == (Path("/sys/fs/cgroup"), "/")
    assert cgroup.cgroup2_mount(MOUNTINFO_V1) is None
    own = cgroup.own_cgroup_dir(SERVICE, MOUNTINFO)
    assert PurePosixPath(own) == PurePosixPath(
        "/sys/fs/cgroup/system.slice/officegrid-worker.service")
    assert cgroup.own_cgroup_dir("0::/\n", MOUNTINFO) == Path("/sys/fs/cgroup")
    assert cgroup.own_cgroup_dir(SERVICE, MOUNTINFO_V1) is None
    # A mount of a sub-tree (a container's cgroup namespace seen from outside): paths are
    # relative to the mount's root; a cgroup outside it is not reachable there.
    sub = "40 31 0:26 /machine.slice /mnt/cg rw - cgroup2 cgroup2 rw\n"
    assert cgroup.own_cgroup_dir("0::/machine.slice/c1\n", sub) == Path("/mnt/cg/c1")
    assert cgroup.own_cgroup_dir(SERVICE, sub) is None
    spaced = "40 31 0:26 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n"
    assert cgroup.own_cgroup_dir("0::/u\n", spaced) == Path("/mnt/my cg/u")


def test_off_and_non_cgroup_dirs_fall_back_with_one_info_line(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="officegrid.worker.cgroup")
    assert cgroup.discover("off") is None
    assert "cgroups: off" in caplog.text
    caplog.clear()
    assert cgroup.discover(tmp_path / "plain") is None  # a plain directory is no cgroup
    assert len(caplog.records) == 1
    assert "not in a cgroup v2 hierarchy" in caplog.text and "SIGSTOP" in caplog.text


def test_auto_refuses_an_undelegated_or_root_cgroup(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="officegrid.worker.cgroup")
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    mnt = tmp_path / "mnt"
    own = fake_cgroup_dir(mnt / "session-1.scope")
    (mnt / "cgroup.controllers").write_text("")  # the root: no cgroup.freeze
    (proc / "self" / "mountinfo").write_text(
        f"31 25 0:26 / {mnt} rw - cgroup2 cgroup2 rw\n")
    (proc / "self" / "cgroup").write_text("0::/session-1.scope\n")
    assert not cgroup.is_delegated(own)  # owned by us, but not a service, and no xattr
    assert cgroup.discover("auto", proc=str(proc)) is None
    assert "was not delegated" in caplog.text
    assert not (own / "agent").exists()  # nothing was written into a foreign cgroup
    (proc / "self" / "cgroup").write_text("0::/\n")
    assert cgroup.discover(None, proc=str(proc)) is None
    assert "root cgroup" in caplog.text


def test_self_moves_the_agent_into_a_leaf(tmp_path) -> None:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    mnt = tmp_path / "mnt"
    own = fake_cgroup_dir(mnt / "x.service")
    (proc / "self" / "mountinfo").write_text(f"31 25 0:26 / {mnt} rw - cgroup2 cgroup2 rw\n")
    (proc / "self" / "cgroup").write_text("0::/x.service\n")
    base = cgroup.discover("self", proc=str(proc))
    assert base is not None and base.path == own and base.own
    assert (own / "agent" / "cgroup.procs").read_text() == "0"  # "0" moves the writer
    # Started again from inside the leaf: the base is still the delegated cgroup.
    (proc / "self" / "cgroup").write_text("0::/x.service/agent\n")
    again = cgroup.discover("self", proc=str(proc))
    assert again is not None and again.path == own


# -- memory.max decisions -------------------------------------------------------------------------


def test_memory_controller_not_delegated_means_no_memory_max(tmp_path) -> None:
    base = CgroupBase(fake_cgroup_dir(tmp_path / "base", controllers="cpu pids"))
    assert not base.memory and "not delegated" in base.memory_reason
    cg = base.unit("att1", max_memory=100_000_000)
    assert cg.memory_max is None
    assert not (cg.path / "memory.max").exists()
    assert (base.path / "cgroup.subtree_control").read_text() == ""  # untouched
    base.close()


def test_delegated_memory_controller_is_enabled_and_caps_each_unit(tmp_path) -> None:
    root = fake_cgroup_dir(tmp_path / "base", controllers="cpu memory pids")
    base = CgroupBase(root)
    assert base.memory
    assert (root / "cgroup.subtree_control").read_text() == "+memory"
    (root / "unit-att1").mkdir()  # the kernel makes these files; a plain dir needs them made
    (root / "unit-att1" / "memory.swap.max").write_text("max")
    (root / "unit-att1" / "memory.oom.group").write_text("0")
    cg = base.unit("att1", max_memory=100_000_000)
    assert cg.memory_max == 100_000_000
    assert (cg.path / "memory.max").read_text() == "100000000"
    assert (cg.path / "memory.swap.max").read_text() == "0"
    assert (cg.path / "memory.oom.group").read_text() == "1"
    # Without max_memory the unit is not capped; knobs the kernel lacks are not invented.
    other = base.unit("att2", max_memory=None)
    assert other.memory_max is None and not (other.path / "memory.max").exists()
    third = base.unit("att3", max_memory=5)
    assert not (third.path / "memory.swap.max").exists()
    base.close()


def test_memory_already_enabled_is_not_written_again(tmp_path) -> None:
    root = fake_cgroup_dir(tmp_path / "base", controllers="memory", subtree="memory")
    (root / "cgroup.subtree_control").chmod(0o444)  # a write would fail (not as root, though)
    assert CgroupBase(root).memory
    assert (root / "cgroup.subtree_control").read_text() == "memory"


def test_enabling_memory_refused_leaves_the_rss_path(tmp_path) -> None:
    root = fake_cgroup_dir(tmp_path / "base", controllers="memory")
    (root / "cgroup.subtree_control").unlink()
    (root / "cgroup.subtree_control").mkdir()  # any write fails, as EBUSY would
    base = CgroupBase(root)
    assert not base.memory and "cannot enable it" in base.memory_reason


def test_oom_kills_and_the_error_text(tmp_path) -> None:
    cg = UnitCgroup(tmp_path)
    assert cg.oom_kills() == 0  # no memory controller: no memory.events
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 0\n")
    assert cg.oom_kills() == 0  # hitting the cap (reclaim) is not a failure
    (tmp_path / "memory.events").write_text("max 40\noom 2\noom_kill 2\noom_group_kill 1\n")
    assert cg.oom_kills() == 2
    text = cgroup.memory_cap_error(100_000_000, 2)
    assert "over max_memory 100 MB" in text and "memory.max" in text and "killed 2" in text


def test_unit_names_are_plain(tmp_path) -> None:
    base = CgroupBase(fake_cgroup_dir(tmp_path / "base"))
    for bad in ("", "a/b", "..", "."):
        with pytest.raises(ValueError):
            base.unit(bad)
    assert base.unit("0a1b").path == base.path / "unit-0a1b"
    base.close()


def test_owner_monitor_fails_a_unit_the_kernel_oom_killed(tmp_path) -> None:
    from officegrid.worker.owner import OwnerMonitor
    from officegrid.worker.policy import Policy, PolicySettings

    class FakeProc:
        pid = 2**22 + 7  # no such process: its tree's RSS is 0, far below the cap
        returncode = None
        suspended = False
        cgroup = None

        def __init__(self) -> None:
            self.oom = 0
            self.killed = False

        def memory_cap_error(self, max_memory: int | None) -> str | None:
            from officegrid.worker.cgroup import memory_cap_error

            return memory_cap_error(max_memory, self.oom) if self.oom else None

        def kill_tree(self, grace: float = 5.0) -> int:
            self.killed = True
            return -9

    class Unit:
        def __init__(self) -> None:
            self.proc = FakeProc()
            self.abort = threading.Event()
            self.abort_reason = ""
            self.fail_error = None

    ru = Unit()
    mon = OwnerMonitor(Policy.from_settings(PolicySettings()), tmp_path, lambda: [ru],
                       max_memory=100_000_000, idle=False)
    mon._slow([ru])
    assert ru.fail_error is None and not ru.proc.killed
    ru.proc.oom = 1
    mon._slow([ru])
    assert ru.proc.killed
    assert ru.fail_error is not None and "over max_memory 100 MB" in ru.fail_error
    mon.awake.release()


def test_the_installed_systemd_unit_delegates_a_cgroup() -> None:
    from officegrid.worker.service import systemd_unit

    text = systemd_unit(["/opt/og/bin/python", "-m", "officegrid"], PurePosixPath("/var/lib/og"),
                        PurePosixPath("/etc/og.toml"))
    lines = text.splitlines()
    assert "Delegate=yes" in lines and "KillMode=control-group" in lines


def test_the_guard_kills_what_is_left_when_the_agent_lets_go(tmp_path) -> None:
    """In plain directories the guard's writes stay visible as files: it writes cgroup.kill of
    every unit cgroup still there when its pipe closes, also after a guard was replaced."""
    import signal

    base = CgroupBase(fake_cgroup_dir(tmp_path / "base"))
    a, b = base.unit("a"), base.unit("b")
    first = base._guard
    assert first is not None and first.poll() is None
    b.path.rmdir()  # a unit that ended and was removed
    first.send_signal(signal.SIGKILL)  # the guard died: the next unit starts another
    first.wait(timeout=10)
    c = base.unit("c")
    assert base._guard is not None and base._guard is not first
    assert not (a.path / "cgroup.kill").exists()  # nothing is killed while the agent lives
    base.close()
    assert (a.path / "cgroup.kill").read_text().strip() == "1"
    assert (a.path / "cgroup.freeze").read_text().strip() == "0"  # thawed first
    assert (c.path / "cgroup.kill").read_text().strip() == "1"
    assert not b.path.exists()  # a gone unit is not recreated


def test_a_runner_that_cannot_join_its_cgroup_never_starts(tmp_path) -> None:
    import sys

    from officegrid.worker.processes import spawn_runner

    attempt = tmp_path / "attempt"
    attempt.mkdir()
    (attempt / "spec.json").write_text("{}")
    missing = UnitCgroup(tmp_path / "no-such-cgroup")
    with spawn_runner(sys.executable, attempt / "spec.json", attempt, attempt / "stderr.log",
                      None, "ogtest-cg:x", missing) as rp:
        assert rp.wait(timeout=30) == 125
        assert rp.read_message(timeout=5) is None  # the runner never said "started"
    assert "cgroup.procs" in (attempt / "stderr.log").read_text()


def test_kill_without_cgroup_kill_signals_every_listed_pid(tmp_path) -> None:
    """Kernels before 5.14 have no cgroup.kill: the pids of cgroup.procs are SIGKILLed."""
    import signal
    import subprocess

    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        (tmp_path / "cgroup.procs").write_text(f"{sleeper.pid}\n")
        UnitCgroup(tmp_path).kill()
        assert sleeper.wait(timeout=30) == -signal.SIGKILL
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
    with pytest.raises(FileNotFoundError):
        UnitCgroup(tmp_path / "gone").kill()
