"""The owner-pause channel (worker/pause.py): per-user pause files in the sticky sessions
directory, the checks that refuse a file not owned by its writer, the agent's watch and status.

Real files, real uids (as root the tests chown files to, and fork children as, other uids).
"""

from __future__ import annotations

import json
import math
import os
import pwd
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest

from officegrid.worker import pause as P
from officegrid.worker.idle.reporter import MAX_REPORT_BYTES, sessions_dir

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (chown to, and run as, other uids)")
NOBODY = 65534
ME = pwd.getpwuid(os.geteuid()).pw_name if hasattr(os, "geteuid") else "user"


def _as_user(uid: int, fn) -> int:
    """Run fn() in a forked child as `uid`; its return value is the exit code."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            code = fn()
        except BaseException:
            code = 2
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.fixture
def work_dir():
    """A work dir other uids can pass through (as an installed one: 0711, in a 0711 parent)."""
    base = Path(tempfile.mkdtemp(prefix="og-pause-"))
    os.chmod(base, 0o711)
    wd = base / "worker"
    wd.mkdir(mode=0o711)
    os.chmod(wd, 0o711)
    try:
        yield wd
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _body(uid: int, until: float | None = None) -> str:
    return json.dumps({"format": 1, "uid": uid, "user": "x", "until": until, "since": 1.0})


def test_pause_round_trip_and_expiry(work_dir: Path) -> None:
    assert P.pause_state(P.read_pauses(work_dir)) == (None, None)  # no sessions dir yet
    path = P.write_pause(work_dir, math.inf)
    assert path == sessions_dir(work_dir) / P.pause_name()
    assert stat.S_IMODE(sessions_dir(work_dir).stat().st_mode) == 0o1777
    assert P.pause_state(P.read_pauses(work_dir)) == (math.inf, ME)
    end = time.time() + 30
    P.write_pause(work_dir, end)  # replaces this user's earlier pause
    (p,) = P.read_pauses(work_dir)
    assert p.until == pytest.approx(end) and p.user == ME
    assert P.pause_state([p], now=end + 1) == (None, None)  # ran out
    assert P.clear_pause(work_dir) == [ME]
    assert P.clear_pause(work_dir) == []
    assert P.read_pauses(work_dir) == []


@needs_root
def test_a_pause_counts_only_when_its_writer_owns_it(work_dir: Path) -> None:
    d = sessions_dir(work_dir)
    P.write_pause(work_dir, math.inf)  # creates the sticky dir (root's here)
    os.unlink(d / P.pause_name())

    def plant(name: str, text: str, owner: int) -> None:
        (d / name).write_text(text)
        os.chown(d / name, owner, owner)

    # Owned by nobody, named and claiming nobody: nobody's pause, shown with nobody's name.
    plant(f"{NOBODY}.pause", _body(NOBODY), NOBODY)
    assert P.pause_state(P.read_pauses(work_dir)) == (math.inf, "nobody")
    # Claims root's uid (and name) but nobody wrote it: refused.
    plant("0.pause", _body(0), NOBODY)
    # Named after nobody, claims root inside: refused.
    plant(f"{NOBODY}.pause", _body(0), NOBODY)
    assert P.read_pauses(work_dir) == []
    # Written by root, named after nobody: refused (a pause names its own writer only).
    plant(f"{NOBODY}.pause", _body(NOBODY), 0)
    assert P.read_pauses(work_dir) == []


@needs_root
def test_links_fifos_and_huge_files_are_never_read(work_dir: Path) -> None:
    d = sessions_dir(work_dir)
    P.write_pause(work_dir, math.inf)
    real = d / P.pause_name()
    elsewhere = work_dir.parent / "real.pause"
    os.replace(real, elsewhere)
    os.symlink(elsewhere, real)  # a symlink to a valid pause of root's
    assert P.read_pauses(work_dir) == []
    real.unlink()
    os.link(elsewhere, real)  # a hard link: two names
    assert P.read_pauses(work_dir) == []
    real.unlink()
    os.mkfifo(real)  # open() of a FIFO would block the owner monitor forever

    result: list = []
    t = threading.Thread(target=lambda: result.append(P.read_pauses(work_dir)), daemon=True)
    t.start()
    t.join(30)
    assert result == [[]], "reading a FIFO blocked"
    real.unlink()
    real.write_text(_body(0)[:-1] + ', "pad": "' + "x" * MAX_REPORT_BYTES + '"}')
    assert P.read_pauses(work_dir) == []
    real.write_text(_body(0))  # the same file, small: counts
    assert P.pause_state(P.read_pauses(work_dir))[0] == math.inf


@needs_root
def test_only_the_writer_or_root_ends_a_pause(work_dir: Path) -> None:
    P.write_pause(work_dir, math.inf)  # root's directory and root's pause
    d = sessions_dir(work_dir)

    def nobody_pauses() -> int:
        P.write_pause(work_dir, math.inf)
        return 0

    def nobody_ends_everyones() -> int:
        try:
            P.clear_pause(work_dir, everyone=True)
        except PermissionError as exc:
            return 0 if "cannot end the pause of root" in str(exc) else 4
        return 3

    def nobody_resumes() -> int:
        return 0 if P.clear_pause(work_dir) == ["nobody"] else 5

    assert _as_user(NOBODY, nobody_pauses) == 0
    assert (d / f"{NOBODY}.pause").stat().st_uid == NOBODY
    assert P.pause_state(P.read_pauses(work_dir))[1] == "nobody, root"
    assert _as_user(NOBODY, nobody_ends_everyones) == 0
    # root's pause survived (the sticky bit); nobody's own went (it asked for all it may end)
    assert P.pause_state(P.read_pauses(work_dir))[1] == "root"
    assert _as_user(NOBODY, nobody_pauses) == 0
    assert _as_user(NOBODY, nobody_resumes) == 0
    assert P.pause_state(P.read_pauses(work_dir))[1] == "root"
    assert _as_user(NOBODY, nobody_pauses) == 0
    assert sorted(P.clear_pause(work_dir, everyone=True)) == ["nobody", "root"]  # root may
    assert P.read_pauses(work_dir) == []


def test_unsafe_sessions_dir_is_refused(work_dir: Path) -> None:
    d = sessions_dir(work_dir)
    d.mkdir()
    os.chmod(d, 0o777)  # world-writable without the sticky bit: anyone could swap files
    with pytest.raises(PermissionError, match="without the sticky bit"):
        P.write_pause(work_dir, math.inf)
    watch = P.PauseWatch(work_dir)
    (d / P.pause_name()).write_text(_body(os.geteuid()))
    try:
        assert watch.poll() == (None, None)  # the agent does not trust it either
    finally:
        watch.close()


def test_watch_sees_a_pause_at_once_and_publishes_its_status(work_dir: Path) -> None:
    watch = P.PauseWatch(work_dir)
    try:
        assert watch.poll() == (None, None)
        status = P.find_agent(work_dir)
        assert status is not None and status.pid == os.getpid() and status.until is None
        end = time.time() + 60
        P.write_pause(work_dir, end)
        until, who = watch.poll()
        assert until == pytest.approx(end) and who == ME
        status = P.find_agent(work_dir)
        assert status.paused_by == (P.me(),) and status.until == pytest.approx(end)
        assert status.users == (ME,)
        P.clear_pause(work_dir)
        assert watch.poll() == (None, None)
        assert P.find_agent(work_dir).paused_by == ()
    finally:
        watch.close()
    assert P.find_agent(work_dir) is None  # a stopped agent says so
    assert not (sessions_dir(work_dir) / f"{P.me()}.agent").exists()


@needs_root
def test_status_of_another_account_than_the_work_dirs_owner_is_not_believed(
        work_dir: Path) -> None:
    watch = P.PauseWatch(work_dir)
    watch.poll()
    watch.close()
    d = sessions_dir(work_dir)
    fake = {"format": 1, "uid": NOBODY, "pid": os.getpid(), "written_at": time.time(),
            "paused": True, "until": None, "paused_by": [], "users": []}
    (d / f"{NOBODY}.agent").write_text(json.dumps(fake))
    os.chown(d / f"{NOBODY}.agent", NOBODY, NOBODY)
    assert P.find_agent(work_dir) is None  # the work dir is root's: the agent runs as root


@needs_root
def test_watch_keeps_reading_its_directory_when_job_code_swaps_it(work_dir: Path) -> None:
    """Job code runs as the agent's account, which owns the work dir: it may rename the
    root-owned sessions/ away and put its own empty one there. The owner's pause holds."""
    d = sessions_dir(work_dir)
    P.write_pause(work_dir, math.inf)
    os.chown(work_dir, NOBODY, NOBODY)  # the work dir is the service account's

    def agent_then_job_code() -> int:
        watch = P.PauseWatch(work_dir)
        try:
            if watch.poll()[0] != math.inf:
                return 3
            os.rename(d, work_dir / "moved")
            os.mkdir(d, 0o1777)  # job code's own directory, without the pause
            until, _ = watch.poll()
            return 0 if until == math.inf else 4
        finally:
            watch.close()

    assert _as_user(NOBODY, agent_then_job_code) == 0


def test_watch_follows_a_removed_directory_of_its_own(work_dir: Path) -> None:
    """By hand, the user owns both: a deleted sessions/ is made again and read."""
    watch = P.PauseWatch(work_dir)
    try:
        assert watch.poll() == (None, None)
        shutil.rmtree(sessions_dir(work_dir))
        watch.poll()  # notices, makes it again
        P.write_pause(work_dir, math.inf)
        assert watch.poll()[0] == math.inf
    finally:
        watch.close()


# ------------------------------------------------------------------ issue 5 trial findings


@needs_root
def test_a_second_users_pause_reaches_the_operator_at_once(work_dir: Path) -> None:
    """`officegrid workers` named one owner ("paused by owner (nobody)") while two had paused:
    the agent heartbeated on a change of state only, and a second pause changes no state."""
    from officegrid.worker.owner import OwnerMonitor
    from officegrid.worker.policy import Policy, PolicySettings

    P.write_pause(work_dir, math.inf)  # creates root's sessions dir, as an agent by hand
    P.clear_pause(work_dir)
    changes: list[str | None] = []
    monitor = OwnerMonitor(Policy.from_settings(PolicySettings()), work_dir, lambda: [],
                           idle=False)
    monitor.on_change = lambda: changes.append(monitor.reason)
    try:
        monitor.tick()
        assert monitor.heartbeat_state("idle", None) == ("idle", None)

        def nobody_pauses() -> int:
            P.write_pause(work_dir, math.inf)
            return 0

        assert _as_user(NOBODY, nobody_pauses) == 0
        monitor.tick()
        assert changes == ["paused by owner (nobody)"]
        P.write_pause(work_dir, math.inf)
        monitor.tick()
        assert changes[-1] == f"paused by owner (nobody, {ME})" and len(changes) == 2
        assert monitor.heartbeat_state("idle", None) == ("paused", changes[-1])
        monitor.tick()
        assert len(changes) == 2  # nothing new: no extra heartbeat
    finally:
        monitor.close()


def test_the_log_names_the_state_once() -> None:
    from officegrid.worker.owner import state_text

    assert state_text("suspended", "suspended: input (idle 1 s < 5 min)") \
        == "suspended: input (idle 1 s < 5 min)"
    assert state_text("paused", "paused by owner (alice)") == "paused: paused by owner (alice)"
    assert state_text("waiting", "low disk: 1 GB free < 2 GB") \
        == "waiting: low disk: 1 GB free < 2 GB"
    assert state_text("waiting", None) == "waiting"


def test_idle_evaluates_the_running_agents_policy(work_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`officegrid idle` said "policy always" (the caller's missing config) while the installed
    agent ran desktop: the agent's status now carries its policy, and idle uses it."""
    from officegrid.cli.owner import _agent_policy

    monkeypatch.chdir(tmp_path)  # no officegrid.toml here
    monkeypatch.delenv("OFFICEGRID_CONFIG", raising=False)
    monkeypatch.delenv("OFFICEGRID_POLICY", raising=False)
    settings, origin = _agent_policy(None, work_dir)
    assert settings.preset == "always"
    assert "no officegrid.toml" in origin and "no agent runs" in origin
    watch = P.PauseWatch(work_dir, {"preset": "desktop", "start_idle": 60.0})
    try:
        watch.poll()
        agent = P.find_agent(work_dir)
        assert agent is not None and agent.policy == {"preset": "desktop", "start_idle": 60.0}
        settings, origin = _agent_policy(agent, work_dir)
        assert (settings.preset, settings.value("start_idle")) == ("desktop", 60.0)
        assert f"pid {os.getpid()}" in origin
    finally:
        watch.close()


def test_resume_of_an_expired_pause_says_it_had_expired(work_dir: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from officegrid.cli.pause import resume

    app = typer.Typer()
    app.command()(resume)
    P.write_pause(work_dir, time.time() - 5)
    out = CliRunner().invoke(app, ["--work-dir", str(work_dir)])
    assert out.exit_code == 0, out.output
    assert "had already expired" in out.output and "worker resumed" not in out.output
    assert P.read_pauses(work_dir) == []
    P.write_pause(work_dir, time.time() + 60)
    out = CliRunner().invoke(app, ["--work-dir", str(work_dir)])
    assert "worker resumed" in out.output
