"""The X11 idle source and the session reporter channel against a real X server (Xvfb).

Input is sent with xdotool; every wait polls with a deadline (no fixed sleeps).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from grid import wait_for
from officegrid.worker.idle import IdleMonitor
from officegrid.worker.idle.reporter import (
    STALE_SECONDS,
    ReporterSource,
    combine_reports,
    read_reports,
    sessions_dir,
)
from officegrid.worker.idle.x11 import X11Source
from xvfb import xdotool, xvfb_display


def _idle(src: X11Source) -> float:
    r = src.read()
    assert r.idle_seconds is not None, r.detail
    return r.idle_seconds


def test_x11_idle_grows_and_resets_on_mouse_and_key_input() -> None:
    with xvfb_display() as display:
        src = X11Source(display)
        try:
            first = src.read()
            assert first.source == "x11" and first.idle_seconds is not None, first.detail
            assert display in first.detail
            wait_for(lambda: _idle(src) >= 1.0, timeout=30)
            xdotool(display, "mousemove", "100", "120")
            assert wait_for(lambda: _idle(src) < 0.5, timeout=30)
            wait_for(lambda: _idle(src) >= 1.0, timeout=30)
            xdotool(display, "key", "a")
            assert wait_for(lambda: _idle(src) < 0.5, timeout=30)
        finally:
            src.close()


def test_x11_server_going_away_is_cannot_tell_not_a_crash() -> None:
    with xvfb_display() as display:
        src = X11Source(display)
        assert src.read().idle_seconds is not None
    # The X server is gone: Xlib must not exit() this process; the source says why.
    gone = src.read()
    assert gone.idle_seconds is None
    assert display in gone.detail
    again = src.read()  # reconnect attempt fails cleanly too
    assert again.idle_seconds is None and "cannot open display" in again.detail
    src.close()


def test_x11_under_wayland_is_partial(monkeypatch) -> None:
    """XWayland's idle time misses native Wayland input: it must not prove absence alone."""
    with xvfb_display() as display:
        monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
        src = X11Source(display)
        try:
            r = src.read()
            assert r.idle_seconds is not None and r.partial and "XWayland" in r.detail
        finally:
            src.close()


def test_x11_no_display_cannot_tell(monkeypatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    r = X11Source().read()
    assert r.idle_seconds is None and r.detail == "no DISPLAY"


def test_monitor_combines_x11_with_the_other_sources() -> None:
    with xvfb_display() as display:
        os.environ["DISPLAY"] = display
        try:
            with IdleMonitor(work_dir=None, sources=["x11", "tty"]) as mon:
                xdotool(display, "mousemove", "5", "5")
                status = wait_for(lambda: (s := mon.read()).idle_seconds is not None
                                  and s.idle_seconds < 5 and s, timeout=30)
                assert status.readings[0].source == "x11"
                assert not status.no_session
        finally:
            del os.environ["DISPLAY"]


def test_officegrid_idle_json_on_xvfb(tmp_path: Path) -> None:
    with xvfb_display() as display:
        env = dict(os.environ, DISPLAY=display, OFFICEGRID_CONFIG=os.devnull)
        out = subprocess.run([sys.executable, "-m", "officegrid", "idle", "--json",
                              "--work-dir", str(tmp_path), "--source", "x11",
                              "--source", "reporter"],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        assert [r["source"] for r in data["readings"]] == ["x11", "reporter"]
        assert data["readings"][0]["idle_seconds"] is not None
        assert data["readings"][1]["idle_seconds"] is None
        assert data["readings"][1]["detail"] == "no reporter running"
        assert data["idle_seconds"] == data["readings"][0]["idle_seconds"]
        assert data["policy"]["preset"] == "always" and data["policy"]["may_start"] is True
        # The configured policy's view: desktop, freshly touched display -> no new units.
        xdotool(display, "mousemove", "3", "3")
        env["OFFICEGRID_POLICY"] = "desktop"
        out = subprocess.run([sys.executable, "-m", "officegrid", "idle", "--json",
                              "--work-dir", str(tmp_path), "--source", "x11"],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        pol = json.loads(out.stdout)["policy"]
        assert pol["preset"] == "desktop" and pol["may_start"] is False
        assert pol["reason"].startswith("owner active (idle")
        table = subprocess.run([sys.executable, "-m", "officegrid", "idle", "--work-dir",
                                str(tmp_path)], env=env, capture_output=True, text=True,
                               timeout=60)
        assert table.returncode == 0, table.stderr
        assert "x11" in table.stdout and "combined:" in table.stdout
        assert "policy desktop: no new units (owner active" in table.stdout


def _start_reporter(display: str, work_dir: Path) -> subprocess.Popen:
    env = dict(os.environ, DISPLAY=display, XDG_SESSION_ID="t1",
               OFFICEGRID_CONFIG=os.devnull)
    return subprocess.Popen([sys.executable, "-m", "officegrid", "idle-reporter", "--work-dir",
                             str(work_dir), "--source", "x11"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_reporter_process_to_agent_channel(tmp_path: Path) -> None:
    with xvfb_display() as display:
        proc = _start_reporter(display, tmp_path)
        try:
            agent = ReporterSource(tmp_path)
            fresh = wait_for(lambda: (r := agent.read()).idle_seconds is not None and r,
                             timeout=60)
            assert fresh.sessions == 1 and f"{os.getuid()}-t1" in fresh.detail
            path = sessions_dir(tmp_path) / f"{os.getuid()}-t1.json"
            assert path.exists() and path.stat().st_mode & 0o044 == 0o044  # agent may read
            # Idle time grows as the reporter keeps writing ...
            wait_for(lambda: (agent.read().idle_seconds or 0) >= 1.5, timeout=30)
            # ... and input in the session reaches the agent at once.
            xdotool(display, "mousemove", "200", "200")
            assert wait_for(lambda: (r := agent.read()).idle_seconds is not None
                            and r.idle_seconds < 1.0, timeout=30)
            # A monitor with the reporter source sees the same.
            with IdleMonitor(work_dir=tmp_path, sources=["reporter"]) as mon:
                assert mon.read().idle_seconds is not None
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        # A reporter that exits removes its file: the agent no longer counts that session.
        assert not path.exists()
        gone = ReporterSource(tmp_path).read()
        assert gone.idle_seconds is None and gone.sessions == 0


def test_killed_reporter_goes_stale(tmp_path: Path) -> None:
    with xvfb_display() as display:
        proc = _start_reporter(display, tmp_path)
        try:
            wait_for(lambda: read_reports(sessions_dir(tmp_path)), timeout=60)
        finally:
            proc.kill()
            proc.wait(timeout=30)
        reports = read_reports(sessions_dir(tmp_path))
        assert len(reports) == 1  # SIGKILL leaves the file behind ...
        last = max(r.written_at for r in reports)
        assert combine_reports(reports, now=last + 1).idle_seconds is not None
        # ... and once it is older than STALE_SECONDS it no longer counts (not "idle").
        stale = combine_reports(reports, now=last + STALE_SECONDS + 0.1)
        assert stale.idle_seconds is None and "stale" in stale.detail
        deadline = time.monotonic() + STALE_SECONDS + 30
        while ReporterSource(tmp_path).read().sessions != 0:
            assert time.monotonic() < deadline, "a dead reporter's file never went stale"
            time.sleep(0.2)
