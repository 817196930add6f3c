"""Idle sources (worker/idle/): parsers, tick wrap, staleness, combination, and the D-Bus sources
against a real private dbus-daemon serving stand-in Mutter, ScreenSaver and logind objects."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from officegrid.worker.idle import IdleMonitor, IdleReading, combine, default_sources
from officegrid.worker.idle.logind import LogindSource, combine_sessions
from officegrid.worker.idle.reporter import (
    STALE_SECONDS,
    Report,
    ReporterSource,
    combine_reports,
    read_reports,
    write_report,
)
from officegrid.worker.idle.tty import tty_reading
from officegrid.worker.idle.windows import WindowsSource, idle_ms_from_ticks

# ------------------------------------------------------------------------------ Windows


def test_tick_difference_without_wrap() -> None:
    assert idle_ms_from_ticks(10_000, 4_000) == 6_000
    assert idle_ms_from_ticks(5, 5) == 0


def test_tick_wrap_after_49_7_days() -> None:
    # Last input 1 s before GetTickCount wrapped to 0; now 2 s after the wrap.
    assert idle_ms_from_ticks(2_000, 2**32 - 1_000) == 3_000


@given(last=st.integers(0, 2**32 - 1), idle=st.integers(0, 2**32 - 1))
def test_tick_wrap_property(last: int, idle: int) -> None:
    assert idle_ms_from_ticks((last + idle) % 2**32, last) == idle


def test_tick_values_out_of_range_refused() -> None:
    with pytest.raises(ValueError, match="now_tick"):
        idle_ms_from_ticks(2**32, 0)
    with pytest.raises(ValueError, match="last_input_tick"):
        idle_ms_from_ticks(0, -1)


def test_windows_source_off_windows_cannot_tell() -> None:
    r = WindowsSource().read()
    assert r.idle_seconds is None and r.detail.startswith("not Windows")


# ------------------------------------------------------------------------------ macOS
# HIDIdleTime through IOKit: tests/unit/test_idle_sessions.py (with the session lists).


# ------------------------------------------------------------------------------ logind

NOW = 1_800_000_000.0


def _session(sid: str, **kw) -> dict:
    base = {"Id": sid, "Class": "user", "Type": "x11", "Seat": ("seat0", "/x"), "TTY": "",
            "IdleHint": False, "IdleSinceHint": 0, "LockedHint": False, "Timestamp": 1}
    base.update(kw)
    return base


def test_logind_no_local_sessions_is_no_session() -> None:
    r = combine_sessions([_session("c1", Class="greeter"),
                          _session("3", Seat=("", "/"), TTY="")], now=NOW)
    assert r.idle_seconds is None and r.sessions == 0 and "no local user sessions" in r.detail


def test_logind_idle_hint_gives_idle_since() -> None:
    r = combine_sessions([_session("2", IdleHint=True, IdleSinceHint=int((NOW - 600) * 1e6))],
                         now=NOW)
    assert r.idle_seconds == pytest.approx(600) and r.sessions == 1


def test_logind_hint_never_set_cannot_tell() -> None:
    r = combine_sessions([_session("2", IdleHint=False, IdleSinceHint=0)], now=NOW)
    assert r.idle_seconds is None and "never set" in r.detail and r.sessions == 1


def test_logind_active_hint_and_min_over_sessions() -> None:
    idle = _session("2", IdleHint=True, IdleSinceHint=int((NOW - 600) * 1e6))
    active = _session("5", Type="tty", Seat=("", "/"), TTY="tty2", IdleHint=False,
                      IdleSinceHint=int((NOW - 30) * 1e6))
    r = combine_sessions([idle, active], now=NOW)
    assert r.idle_seconds == 0.0 and r.sessions == 2
    # One session that cannot tell makes the whole answer "cannot tell".
    r = combine_sessions([idle, _session("7")], now=NOW)
    assert r.idle_seconds is None


def test_logind_idle_inhibitor_is_presence_and_locks() -> None:
    s = _session("2", IdleHint=True, IdleSinceHint=int((NOW - 900) * 1e6), LockedHint=True)
    inhibitors = [("idle:sleep", "zoom", "video call", "block", 1000, 42),
                  ("sleep", "upower", "x", "delay", 0, 1)]
    r = combine_sessions([s], inhibitors, now=NOW)
    assert r.present and "zoom (video call)" in r.detail and r.locked is True
    r = combine_sessions([s], [("idle", "x", "y", "delay", 0, 1)], now=NOW)
    assert not r.present


# ------------------------------------------------------------------------------ tty


def test_tty_newest_access_wins() -> None:
    r = tty_reading({"/dev/pts/0": NOW - 100, "/dev/tty2": NOW - 5}, graphical=False, now=NOW)
    assert r.idle_seconds == pytest.approx(5) and "/dev/tty2" in r.detail and not r.partial


def test_tty_is_partial_next_to_a_graphical_session() -> None:
    r = tty_reading({"/dev/pts/0": NOW - 100}, graphical=True, now=NOW)
    assert r.partial and r.idle_seconds == pytest.approx(100)
    assert tty_reading({}, graphical=False, now=NOW).idle_seconds is None


def test_tty_source_reads_a_real_pty(monkeypatch) -> None:
    """A real pseudo-terminal: reading input from it moves its access time (the kernel's)."""
    import pty

    from officegrid.worker.idle import tty

    master, slave = pty.openpty()
    try:
        name = os.ttyname(slave)
        monkeypatch.setattr(tty, "terminal_devices", lambda: [name])
        monkeypatch.setattr(tty, "graphical_session_seen", lambda: False)
        os.utime(name, (time.time() - 3600, time.time() - 3600))
        before = tty.TtySource().read()
        assert before.idle_seconds is not None and before.idle_seconds >= 3500
        os.write(master, b"x\n")
        os.read(slave, 10)  # the line discipline hands input to the reader: atime moves
        after = tty.TtySource().read()
        assert after.idle_seconds is not None and after.idle_seconds < 60, after
        assert name in after.detail
    finally:
        os.close(master)
        os.close(slave)


# ------------------------------------------------------------------------------ reporter


def _report(idle: float | None, written_at: float, session: str = "s1", **kw) -> Report:
    return Report(uid=os.getuid(), session=session, written_at=written_at, idle_seconds=idle,
                  present=kw.get("present", False), locked=kw.get("locked"),
                  detail=kw.get("detail", "x11: display :0"))


def test_reports_age_while_the_reporter_is_silent() -> None:
    r = combine_reports([_report(10.0, NOW - 2)], now=NOW)
    assert r.idle_seconds == pytest.approx(12.0) and r.sessions == 1


def test_stale_reports_are_gone_not_idle() -> None:
    r = combine_reports([_report(10.0, NOW - STALE_SECONDS - 0.1)], now=NOW)
    assert r.idle_seconds is None and r.sessions == 0 and "1 stale ignored" in r.detail
    future = combine_reports([_report(10.0, NOW + 60)], now=NOW)
    assert future.idle_seconds is None


def test_reports_combine_min_and_unknown_wins() -> None:
    both = [_report(100.0, NOW, "a"), _report(3.0, NOW, "b", present=True)]
    r = combine_reports(both, now=NOW)
    assert r.idle_seconds == 3.0 and r.present and r.sessions == 2
    r = combine_reports([*both, _report(None, NOW, "c", detail="x11: no DISPLAY")], now=NOW)
    assert r.idle_seconds is None and "no DISPLAY" in r.detail and r.sessions == 3


def test_report_files_roundtrip_and_garbage_ignored(tmp_path: Path) -> None:
    path = write_report(tmp_path, _report(7.5, NOW, "x/../evil", locked=True))
    assert path.parent == tmp_path and ".." not in path.name
    (tmp_path / "junk.json").write_text("{not json")
    (tmp_path / "0-other.json").write_text('{"format": 99}')
    reports = read_reports(tmp_path)
    assert len(reports) == 1 and reports[0].idle_seconds == 7.5 and reports[0].locked is True
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed
    with pytest.raises(ValueError, match="bad field"):
        Report.from_json('{"format": 1, "uid": 1}')


def test_report_claiming_another_uid_is_ignored(tmp_path: Path) -> None:
    if os.getuid() == 0:  # as root: a file owned by uid 4242 claiming to be root's session
        path = write_report(tmp_path, Report(0, "s", NOW, 1.0, False, None, ""))
        assert len(read_reports(tmp_path)) == 1
        os.chown(path, 4242, -1)
    else:
        write_report(tmp_path, Report(os.getuid() + 1, "s", NOW, 1.0, False, None, ""))
    assert read_reports(tmp_path) == []


def test_a_new_reporter_removes_its_own_stale_files(tmp_path: Path) -> None:
    from officegrid.worker.idle.reporter import remove_stale

    write_report(tmp_path, _report(1.0, NOW - 60, "old"))
    write_report(tmp_path, _report(1.0, NOW, "live"))
    write_report(tmp_path, Report(os.getuid() + 1, "other", NOW - 60, 1.0, False, None, ""))
    assert remove_stale(tmp_path, os.getuid(), now=NOW) == 1
    names = sorted(p.name for p in tmp_path.glob("*.json"))
    assert names == sorted([f"{os.getuid()}-live.json", f"{os.getuid() + 1}-other.json"])


def test_reporter_source_without_files(tmp_path: Path) -> None:
    r = ReporterSource(tmp_path).read()
    assert r.idle_seconds is None and r.sessions == 0 and r.detail == "no reporter running"
    assert ReporterSource(None).read().sessions is None


# ------------------------------------------------------------------------------ combination


def _r(source: str, idle: float | None, **kw) -> IdleReading:
    return IdleReading(source, idle, "d", **kw)


def test_combine_min_over_sources_that_can_tell() -> None:
    s = combine([_r("x11", 500.0), _r("mutter", None), _r("reporter", 20.0)])
    assert s.idle_seconds == 20.0 and s.detail == "from reporter"


def test_combine_cannot_tell_when_no_source_can() -> None:
    s = combine([_r("x11", None), _r("logind", None, sessions=2)])
    assert s.idle_seconds is None and not s.no_session
    assert "x11: d" in s.detail


def test_partial_source_alone_is_not_idle_but_shows_activity() -> None:
    assert combine([_r("x11", None), _r("tty", 9000.0, partial=True)]).idle_seconds is None
    assert combine([_r("x11", 900.0), _r("tty", 2.0, partial=True)]).idle_seconds == 2.0


def test_no_session_needs_logind_and_no_reporter() -> None:
    assert combine([_r("logind", None, sessions=0), _r("reporter", None, sessions=0)]).no_session
    assert not combine([_r("logind", None, sessions=0),
                        _r("reporter", 5.0, sessions=1)]).no_session
    assert not combine([_r("logind", None, sessions=None)]).no_session  # no logind: unknown
    assert not combine([_r("x11", None)]).no_session


def test_presence_and_locks() -> None:
    s = combine([_r("x11", 500.0), _r("logind", 400.0, present=True, locked=True)])
    assert s.present and s.locked
    assert not combine([_r("logind", 1.0, locked=True), _r("screensaver", 1.0,
                                                           locked=False)]).locked


def test_monitor_rejects_unknown_sources_and_survives_broken_ones() -> None:
    with pytest.raises(ValueError, match="unknown idle source 'wayland'"):
        IdleMonitor(sources=["wayland"])
    mon = IdleMonitor(sources=["windows"])

    class Boom:
        name = "boom"

        def read(self):
            raise RuntimeError("kaput")

        def close(self):
            raise RuntimeError("kaput")

    mon._sources.append(Boom())
    s = mon.read()
    assert s.readings[-1].idle_seconds is None and "kaput" in s.readings[-1].detail
    mon.close()


def test_default_sources_per_platform() -> None:
    assert default_sources("linux")[0] == "x11" and "reporter" in default_sources("linux")
    assert default_sources("win32") == ["windows", "wts", "reporter"]
    assert default_sources("darwin") == ["macos", "utmpx", "reporter"]


# ------------------------------------------------------------------------------ D-Bus


class _FakeBusService:
    """Serves method calls on a private bus from a thread (jeepney), like the real services."""

    def __init__(self, address: str, name: str, handlers: dict) -> None:
        from jeepney.bus_messages import message_bus
        from jeepney.io.blocking import open_dbus_connection

        self.conn = open_dbus_connection(address)
        self.conn.send_and_get_reply(message_bus.RequestName(name), timeout=5)
        self.handlers = handlers
        self.stop = False
        self.calls: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        from jeepney import MessageType, new_error, new_method_return

        while not self.stop:
            try:
                msg = self.conn.receive(timeout=0.1)
            except TimeoutError:
                continue
            except Exception:  # noqa: BLE001 - connection closed at teardown
                return
            if msg.header.message_type != MessageType.method_call:
                continue
            f = msg.header.fields
            key = (str(f.get(_field("path"))), str(f.get(_field("member"))))
            self.calls.append(key[1])
            handler = self.handlers.get(key)
            if handler is None:
                self.conn.send(new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod"))
                continue
            sig, body = handler(msg.body)
            self.conn.send(new_method_return(msg, sig, body))

    def close(self) -> None:
        self.stop = True
        self.thread.join(timeout=5)
        self.conn.close()


def _field(name: str):
    from jeepney.low_level import HeaderFields

    return getattr(HeaderFields, name)


@pytest.fixture
def private_bus(tmp_path: Path) -> Iterator[str]:
    """A real dbus-daemon on a unix socket in tmp_path; yields its address."""
    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon not installed")
    sock = tmp_path / "bus"
    conf = tmp_path / "bus.conf"
    conf.write_text(f"""<!DOCTYPE busconfig PUBLIC
 "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>session</type><listen>unix:path={sock}</listen>
<auth>EXTERNAL</auth>
<policy context="default"><allow send_destination="*" eavesdrop="true"/>
<allow eavesdrop="true"/><allow own="*"/></policy></busconfig>""")
    proc = subprocess.Popen(["dbus-daemon", f"--config-file={conf}", "--nofork",
                             "--print-address"], stdout=subprocess.PIPE, text=True)
    try:
        address = proc.stdout.readline().strip()  # printed once it listens
        assert address.startswith("unix:"), address
        yield address
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_mutter_and_screensaver_over_a_real_bus(private_bus: str, monkeypatch) -> None:
    from officegrid.worker.idle.mutter import MutterSource
    from officegrid.worker.idle.screensaver import ScreenSaverSource

    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", private_bus)
    mutter = MutterSource()
    saver = ScreenSaverSource()
    try:
        r = mutter.read()
        assert r.idle_seconds is None and "ServiceUnknown" in r.detail  # nobody serves it
        idle_ms = [4200]
        svc = _FakeBusService(private_bus, "org.gnome.Mutter.IdleMonitor", {
            ("/org/gnome/Mutter/IdleMonitor/Core", "GetIdletime"):
                lambda body: ("t", (idle_ms[0],))})
        svc2 = _FakeBusService(private_bus, "org.freedesktop.ScreenSaver", {
            ("/org/freedesktop/ScreenSaver", "GetSessionIdleTime"): lambda body: ("u", (75,)),
            ("/org/freedesktop/ScreenSaver", "GetActive"): lambda body: ("b", (True,))})
        try:
            r = mutter.read()
            assert r.idle_seconds == pytest.approx(4.2) and not r.present  # no gnome-session
            idle_ms[0] = 10
            assert mutter.read().idle_seconds == pytest.approx(0.01)  # same kept connection
            inhibited = _FakeBusService(private_bus, "org.gnome.SessionManager", {
                ("/org/gnome/SessionManager", "IsInhibited"): lambda body: ("b", (body[0] == 8,))})
            try:
                r = mutter.read()
                assert r.present and "idle inhibited" in r.detail
            finally:
                inhibited.close()
            s = saver.read()
            assert s.idle_seconds == 75.0 and s.locked is True and "active" in s.detail
        finally:
            svc.close()
            svc2.close()
    finally:
        mutter.close()
        saver.close()


def test_unreachable_bus_is_not_retried_on_every_read(tmp_path: Path, monkeypatch) -> None:
    from officegrid.worker.idle import dbus

    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-such-socket")
    attempts = []
    bus = dbus.Bus("SYSTEM")
    real = bus._connect
    monkeypatch.setattr(bus, "_connect", lambda: attempts.append(1) or real())
    src = LogindSource(bus, min_interval=0.0)
    first, second = src.read(), src.read()
    assert first.idle_seconds is None and "cannot connect to the system bus" in first.detail
    assert second.detail == first.detail and attempts == [1]


def test_no_session_bus_cannot_tell(monkeypatch) -> None:
    from officegrid.worker.idle.mutter import MutterSource

    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    r = MutterSource().read()
    assert r.idle_seconds is None and "DBUS_SESSION_BUS_ADDRESS" in r.detail


def test_logind_over_a_real_bus(private_bus: str, monkeypatch) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", private_bus)
    since = int((time.time() - 1200) * 1e6)
    props = {"Id": ("s", "2"), "Class": ("s", "user"), "Type": ("s", "wayland"),
             "Seat": ("(so)", ("seat0", "/org/freedesktop/login1/seat/seat0")),
             "TTY": ("s", ""), "IdleHint": ("b", True), "IdleSinceHint": ("t", since),
             "LockedHint": ("b", False), "Timestamp": ("t", 1)}
    sessions = [[("2", 1000, "alice", "seat0", "/org/freedesktop/login1/session/_32")]]
    svc = _FakeBusService(private_bus, "org.freedesktop.login1", {
        ("/org/freedesktop/login1", "ListSessions"): lambda body: ("a(susso)", (sessions[0],)),
        ("/org/freedesktop/login1", "ListInhibitors"):
            lambda body: ("a(ssssuu)", ([("idle", "firefox", "video", "block", 1000, 7)],)),
        ("/org/freedesktop/login1/session/_32", "GetAll"): lambda body: ("a{sv}", (props,)),
    })
    src = LogindSource(min_interval=0.0)
    try:
        r = src.read()
        assert r.idle_seconds == pytest.approx(1200, abs=5) and r.sessions == 1, r.detail
        assert r.present and "firefox" in r.detail
        sessions[0] = []
        r = src.read()
        assert r.sessions == 0 and r.idle_seconds is None
        assert combine([r, IdleReading("reporter", None, "none", sessions=0)]).no_session
        # Answers are reused for min_interval seconds (a few round trips per query).
        cached = LogindSource(min_interval=3600.0)
        first = cached.read()
        n = len(svc.calls)
        assert cached.read() is first and len(svc.calls) == n
        cached.close()
    finally:
        src.close()
        svc.close()


# ------------------------------------------------------------------------------ review R2


def test_report_dir_traps_are_skipped_without_blocking(tmp_path: Path) -> None:
    """A FIFO, a symlink, a hard link and a huge file named like reports: none is read, and
    the read never blocks (a FIFO would stall the owner monitor forever)."""
    uid = os.getuid()
    write_report(tmp_path, _report(3.0, time.time(), "real"))
    os.mkfifo(tmp_path / f"{uid}-fifo.json")
    target = tmp_path / "elsewhere"
    target.write_text(_report(9999.0, time.time(), "link").to_json())
    os.symlink(target, tmp_path / f"{uid}-link.json")
    os.link(target, tmp_path / f"{uid}-hard.json")
    (tmp_path / f"{uid}-huge.json").write_text(" " * (1 << 20) + "{}")
    result: list = []
    t = threading.Thread(target=lambda: result.append(read_reports(tmp_path)), daemon=True)
    t.start()
    t.join(timeout=10)
    assert not t.is_alive(), "read_reports blocked on a FIFO"
    assert [r.session for r in result[0]] == ["real"]


def test_the_agents_own_idle_inhibitor_is_not_presence() -> None:
    """KeepAwake holds `systemd-inhibit --what=idle:sleep --mode=block` while units run; if
    logind counted it as the owner's presence, every running unit would be suspended and then
    vacated (and the next one again)."""
    from officegrid.worker.idle.logind import own_inhibitor_pids

    s = _session("2", IdleHint=True, IdleSinceHint=int((NOW - 900) * 1e6))
    child = subprocess.Popen(["sleep", "30"])
    try:
        inhibitors = [("idle:sleep", "officegrid", "units running", "block", 998, child.pid),
                      ("idle", "zoom", "video call", "block", 1000, 1)]
        own = own_inhibitor_pids(inhibitors)
        assert own == {child.pid}
        r = combine_sessions([s], inhibitors[:1], now=NOW, own_pids=own)
        assert not r.present and r.idle_seconds == pytest.approx(900)
        r = combine_sessions([s], inhibitors, now=NOW, own_pids=own)
        assert r.present and "zoom" in r.detail and "officegrid" not in r.detail
    finally:
        child.kill()
        child.wait()


def _logind(*sessions: tuple[int | None, str, float | None]) -> IdleReading:
    from officegrid.worker.idle.base import SessionIdle

    per = tuple(SessionIdle(*s) for s in sessions)
    known = [s[2] for s in sessions]
    idle = None if None in known else min(known)  # type: ignore[type-var]
    return IdleReading("logind", idle, "d", sessions=len(per), per_session=per)


def _reports(*reports: Report) -> IdleReading:
    return combine_reports(list(reports), now=NOW)


def test_another_users_reporter_cannot_vouch_for_a_session() -> None:
    """Alice types in her Wayland session (logind cannot tell, no reporter of hers runs); a
    fresh report of bob's (or of job code) saying "idle for hours" must not make the machine
    idle."""
    alice, bob = 1000, 1001
    logind = _logind((alice, "2", None))
    fake = _reports(Report(bob, "7", NOW, 9000.0, False, None, "x11"))
    s = combine([logind, fake, _r("tty", 9000.0, partial=True)], own_uid=998)
    assert s.idle_seconds is None and "session 2 (uid 1000)" in s.detail
    # Her own reporter (same uid, same session id) tells.
    mine = _reports(Report(alice, "2", NOW, 120.0, False, None, "mutter"),
                    Report(bob, "7", NOW, 9000.0, False, None, "x11"))
    assert combine([logind, mine], own_uid=998).idle_seconds == pytest.approx(120.0)


def test_a_sessions_reporter_beats_loginds_coarse_hint() -> None:
    """GNOME with screen blanking off never sets IdleHint: logind says "active" (0 s) forever.
    The session's reporter (Mutter, exact) tells instead; a second session of the same user
    without a reporter still needs logind's hint."""
    logind = _logind((1000, "2", 0.0))
    rep = _reports(Report(1000, "2", NOW, 1200.0, False, None, "mutter"))
    assert combine([logind, rep], own_uid=998).idle_seconds == pytest.approx(1200.0)
    two = _logind((1000, "2", 0.0), (1000, "5", None))
    assert combine([two, rep], own_uid=998).idle_seconds is None


def test_own_uid_sessions_are_told_by_the_agents_own_sources() -> None:
    """`officegrid worker` run by hand in the owner's X session: X11 tells for that uid."""
    logind = _logind((1000, "2", None))
    assert combine([_r("x11", 700.0), logind], own_uid=1000).idle_seconds == 700.0
    assert combine([_r("x11", 700.0), logind], own_uid=998).idle_seconds is None


def test_a_hung_dbus_service_is_not_waited_on_every_read(private_bus: str,
                                                         monkeypatch) -> None:
    """A service that owns its name but never answers (hung gnome-shell) costs one call
    timeout, then reads fail fast for TIMEOUT_BACKOFF seconds instead of blocking each time."""
    from jeepney.bus_messages import message_bus
    from jeepney.io.blocking import open_dbus_connection

    from officegrid.worker.idle import dbus
    from officegrid.worker.idle.mutter import MutterSource

    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", private_bus)
    hung = open_dbus_connection(private_bus)
    hung.send_and_get_reply(message_bus.RequestName("org.gnome.Mutter.IdleMonitor"), timeout=5)
    src = MutterSource()
    try:
        t0 = time.monotonic()
        first = src.read()
        assert first.idle_seconds is None and "no answer" in first.detail
        assert time.monotonic() - t0 >= dbus.CALL_TIMEOUT * 0.9
        t0 = time.monotonic()
        for _ in range(5):
            assert src.read().idle_seconds is None
        assert time.monotonic() - t0 < dbus.CALL_TIMEOUT, "each read waited for the hung peer"
    finally:
        src.close()
        hung.close()


def test_tty_is_partial_when_only_logind_knows_of_a_graphical_session(tmp_path: Path) -> None:
    """As the service (PrivateTmp, no access to /run/user/UID, utmp shows "tty2" for a Wayland
    session) only logind's state files show the graphical session; without it /dev/tty2's
    access time (login time) would count as a full "idle for hours"."""
    from officegrid.worker.idle.tty import logind_graphical_session

    (tmp_path / "2").write_text("UID=1000\nUSER=alice\nTYPE=wayland\nCLASS=user\nTTY=tty2\n")
    os.mkfifo(tmp_path / "2.ref")
    assert logind_graphical_session(str(tmp_path))
    (tmp_path / "2").write_text("TYPE=wayland\nCLASS=greeter\n")
    (tmp_path / "3").write_text("TYPE=tty\nCLASS=user\n")
    assert not logind_graphical_session(str(tmp_path))


def test_windows_reporters_of_two_users_write_different_files(monkeypatch) -> None:
    """Every Windows report says uid 0 and SESSIONNAME is "Console" for whoever is at the
    console: two switched users' reporters would overwrite one file."""
    from officegrid.worker.idle import reporter

    monkeypatch.setenv("SESSIONNAME", "Console")
    names = []
    for user, number in (("alice", "1"), ("bob", "2")):
        monkeypatch.setenv("USERNAME", user)
        monkeypatch.setattr(reporter, "_windows_session_number", lambda n=number: n)
        names.append(reporter.report_name(0, reporter.session_id("win32")))
    assert names == ["0-alice-1.json", "0-bob-2.json"]


def test_logind_newer_user_classes_count_and_closing_sessions_do_not() -> None:
    """systemd 256 classes "user-light" / "user-incomplete" are logged-in people: missing
    them turned the owner into "nobody logged in" (= idle). A "closing" session (logged out,
    stray processes left) is nobody: it kept the machine "cannot tell" until reboot."""
    light = _session("4", Class="user-light", IdleHint=False, IdleSinceHint=0)
    r = combine_sessions([light], now=NOW)
    assert r.sessions == 1 and r.idle_seconds is None
    closing = _session("3", State="closing")
    r = combine_sessions([closing], now=NOW)
    assert r.sessions == 0 and "no local user sessions" in r.detail


def test_reporter_refuses_a_swapped_sessions_dir_and_chmods_nothing_it_found(
        tmp_path: Path) -> None:
    """Job code owns the work dir (the service account): it can replace `sessions` by a
    symlink to a directory of the reporting user's. The reporter used to follow it, chmod it
    1777 (e.g. ~/.ssh world-writable) and write there."""
    from officegrid.worker.idle.reporter import open_sessions_dir, run_reporter

    victim = tmp_path / "private"
    victim.mkdir(mode=0o700)
    wd = tmp_path / "work"
    wd.mkdir()
    (wd / "sessions").symlink_to(victim)

    def read():
        return combine([IdleReading("x11", 1.0, "d")])

    with pytest.raises(PermissionError, match="not a plain directory"):
        run_reporter(wd, read, once=True)
    assert victim.stat().st_mode & 0o7777 == 0o700 and list(victim.iterdir()) == []
    (wd / "sessions").unlink()
    (wd / "sessions").mkdir(mode=0o777)
    os.chmod(wd / "sessions", 0o777)  # world-writable, not sticky: anyone replaces reports
    with pytest.raises(PermissionError, match="without the sticky bit"):
        open_sessions_dir(wd)
    if os.geteuid() == 0:
        os.chmod(wd / "sessions", 0o1777)
        os.chown(wd / "sessions", 65533, -1)  # e.g. the service account's own directory
        with pytest.raises(PermissionError, match="owned by uid 65533"):
            open_sessions_dir(wd)
    # A directory it creates itself is 1777, and reports go through it.
    fresh = tmp_path / "fresh"
    assert run_reporter(fresh, read, once=True) == 0
    assert (fresh / "sessions").stat().st_mode & 0o7777 == 0o1777
    assert [r.idle_seconds for r in read_reports(fresh / "sessions")] == [1.0]
