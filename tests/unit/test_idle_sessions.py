"""macOS HIDIdleTime through IOKit, and the Windows (WTS) and macOS (utmpx) session lists.

IOKit and WTS cannot run here: their ctypes layers are replaced by fakes and the pure logic
(ns -> seconds, failures -> "cannot tell" reasons, which sessions count, UTF-16 and WTSINFOEX
decoding) is tested. The utmpx reader runs for real against glibc's getutxent on a utmp file
written by util-linux `utmpdump -r` (an independent writer), with a real pseudo-terminal as
the session's line.
"""

from __future__ import annotations

import ctypes
import os
import platform
import pty
import shutil
import struct
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from officegrid.worker.idle import IdleMonitor, IdleReading, SessionIdle, combine
from officegrid.worker.idle.macos import HidError, MacSource, hid_idle_seconds
from officegrid.worker.idle.reporter import Report, combine_reports, sessions_dir, write_report
from officegrid.worker.idle.sessions_macos import (
    USER_PROCESS,
    LoginEntry,
    UtmpxDarwin,
    UtmpxGlibc,
    UtmpxSource,
    entry_from_struct,
    read_utmpx,
    utmpx_reading,
)
from officegrid.worker.idle.sessions_windows import (
    WTS_ACTIVE,
    WTS_CONNECTED,
    WTS_DISCONNECTED,
    WTSINFOEXW,
    WtsSession,
    WtsSource,
    lock_flags_from_infoex,
    utf16z_at,
    wts_reading,
)

NOW = 1_800_000_000.0

# ------------------------------------------------------------------------------ HIDIdleTime


def test_hid_idle_time_number_is_nanoseconds() -> None:
    assert hid_idle_seconds(2_154_390_541) == pytest.approx(2.154390541)
    assert hid_idle_seconds(0) == 0.0


@given(ns=st.integers(0, 2**63 - 1))
def test_hid_idle_time_data_is_little_endian_nanoseconds(ns: int) -> None:
    assert hid_idle_seconds(ns.to_bytes(8, "little")) == pytest.approx(ns / 1e9)


def test_hid_idle_time_nonsense_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        hid_idle_seconds(-1)
    with pytest.raises(ValueError, match="0 bytes"):
        hid_idle_seconds(b"")
    with pytest.raises(ValueError, match="9 bytes"):
        hid_idle_seconds(bytes(9))


class FakeHid:
    """Stands in for IOKitHid: values to return in turn, and what was released."""

    def __init__(self, values: list, service: int = 7) -> None:
        self.values = list(values)
        self.services = 0
        self.released: list[int] = []
        self._service = service

    def service(self) -> int:
        self.services += 1
        return self._service

    def idle_value(self, service: int):
        assert service == self._service
        value = self.values.pop(0)
        if isinstance(value, Exception):
            raise value
        return value

    def release(self, service: int) -> None:
        self.released.append(service)


def test_mac_source_reads_through_one_kept_service() -> None:
    fake = FakeHid([3_000_000_000, (90_000_000_000).to_bytes(8, "little")])
    src = MacSource(api=lambda: fake)
    first, second = src.read(), src.read()
    assert first.idle_seconds == pytest.approx(3.0) and "HIDIdleTime" in first.detail
    assert second.idle_seconds == pytest.approx(90.0)
    assert fake.services == 1  # looked up once, kept
    src.close()
    assert fake.released == [7]


def test_mac_source_failures_are_reasons_never_idle() -> None:
    fake = FakeHid([None, HidError("HIDIdleTime has CoreFoundation type id 7, neither a "
                                   "number nor data"), -5, RuntimeError("mach port died"), 1])
    src = MacSource(api=lambda: fake)
    missing = src.read()
    assert missing.idle_seconds is None and "no HIDIdleTime property" in missing.detail
    assert fake.released == [7]  # a service without the property is looked up again
    assert "type id 7" in src.read().detail
    bad = src.read()
    assert bad.idle_seconds is None and "negative" in bad.detail
    boom = src.read()  # anything unexpected: a reason, not an exception
    assert boom.idle_seconds is None and "mach port died" in boom.detail
    assert src.read().idle_seconds == pytest.approx(1e-9)
    assert fake.services == 3


def test_mac_source_without_the_service_or_framework() -> None:
    assert "no IOHIDSystem service" in MacSource(api=lambda: FakeHid([], service=0)).read().detail
    calls = []

    def no_framework() -> FakeHid:
        calls.append(1)
        raise OSError("cannot load IOKit")

    src = MacSource(api=no_framework)
    assert src.read().detail == "cannot load IOKit" == src.read().detail
    assert calls == [1]  # the frameworks are opened once, a failure is not retried per read


def test_mac_source_off_macos_imports_and_cannot_tell() -> None:
    r = MacSource().read()
    assert r.idle_seconds is None and r.detail.startswith("not macOS")


# ------------------------------------------------------------------------------ WTS (Windows)


def _wts(sid: int, user: str, state: int = WTS_ACTIVE, flags: int | None = 1,
         station: str = "Console") -> WtsSession:
    return WtsSession(sid, station, state, user, flags)


def test_wts_counts_active_sessions_with_a_user() -> None:
    r = wts_reading([_wts(0, "", WTS_DISCONNECTED, None, "Services"),
                     _wts(1, "", WTS_CONNECTED, None),  # the logon screen
                     _wts(2, "alice"), _wts(3, "bob", station="RDP-Tcp#0"),
                     _wts(4, "carol", WTS_DISCONNECTED, 1, "")])  # switched away
    assert r.idle_seconds is None and r.sessions == 2
    assert [s.session for s in r.per_session] == ["alice-2", "bob-3"]
    assert all(s.uid is None and s.idle_seconds is None for s in r.per_session)
    assert "carol-4 disconnected" in r.detail and "RDP-Tcp#0" in r.detail
    assert r.locked is False


def test_wts_nobody_at_a_session() -> None:
    r = wts_reading([_wts(0, "", WTS_DISCONNECTED, None), _wts(1, "", WTS_CONNECTED, None),
                     _wts(5, "carol", WTS_DISCONNECTED)])
    assert r.sessions == 0 and r.idle_seconds is None and not r.per_session
    assert r.detail.startswith("no active user sessions")


def test_wts_lock_state_only_when_every_session_says_locked() -> None:
    assert wts_reading([_wts(2, "a", flags=0), _wts(3, "b", flags=0)]).locked is True
    assert wts_reading([_wts(2, "a", flags=0), _wts(3, "b", flags=1)]).locked is False
    assert wts_reading([_wts(2, "a", flags=0), _wts(3, "b", flags=-1)]).locked is None
    assert wts_reading([_wts(2, "a", flags=None)]).locked is None


def test_utf16_strings_from_real_memory() -> None:
    text = "Zoë-😀-RDP"  # a surrogate pair too
    buf = ctypes.create_string_buffer(text.encode("utf-16-le") + b"\0\0" + b"junk")
    assert utf16z_at(ctypes.addressof(buf)) == text
    with pytest.raises(ValueError):
        utf16z_at(0)


def test_wtsinfoex_lock_flags_at_the_documented_offset() -> None:
    # WTSINFOEXW: DWORD Level, then the level-1 union member aligned to 8 (it holds
    # LARGE_INTEGERs): SessionId at 8, SessionState at 12, SessionFlags at 16; 232 bytes.
    blob = bytearray(232)
    struct.pack_into("<I", blob, 0, 1)
    struct.pack_into("<IiI", blob, 8, 2, WTS_ACTIVE, 0)
    name = "alice".encode("utf-16-le")
    blob[20 + 66:20 + 66 + len(name)] = name  # UserName after WinStationName[33]
    assert ctypes.sizeof(WTSINFOEXW) == 232
    assert lock_flags_from_infoex(bytes(blob)) == 0
    info = WTSINFOEXW.from_buffer_copy(bytes(blob))
    assert bytes(info.Data.UserName).decode("utf-16-le").rstrip("\0") == "alice"
    struct.pack_into("<i", blob, 16, 1)
    assert lock_flags_from_infoex(bytes(blob)) == 1
    assert lock_flags_from_infoex(bytes(blob[:100])) is None  # short answer: unknown
    struct.pack_into("<I", blob, 0, 2)
    assert lock_flags_from_infoex(bytes(blob)) is None  # not level 1


class FakeWts:
    def __init__(self, answers: list) -> None:
        self.answers = answers
        self.calls = 0

    def sessions(self) -> list[WtsSession]:
        self.calls += 1
        answer = self.answers[min(self.calls, len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_wts_source_reuses_an_answer_for_min_interval() -> None:
    fake = FakeWts([[_wts(2, "alice")], []])
    src = WtsSource(api=lambda: fake, min_interval=3600)
    assert src.read().sessions == 1 and src.read().sessions == 1 and fake.calls == 1
    src.min_interval = 0
    assert src.read().sessions == 0 and fake.calls == 2


def test_wts_source_failures_are_reasons() -> None:
    src = WtsSource(api=lambda: FakeWts([OSError("RPC server unavailable")]), min_interval=0)
    r = src.read()
    assert r.idle_seconds is None and r.sessions is None and "RPC server unavailable" in r.detail
    off = WtsSource().read()  # the real layer, off Windows
    assert off.sessions is None and off.detail.startswith("not Windows")


# ------------------------------------------------------------------------------ utmpx (macOS)


def _entry(user: str, line: str, pid: int = 100, host: str = "", t: float = NOW - 600,
           kind: int = USER_PROCESS) -> LoginEntry:
    return LoginEntry(kind, user, line, host, pid, t)


UIDS = {"alice": 501, "bob": 502}


def test_utmpx_sessions_console_and_terminals() -> None:
    entries = [_entry("", "~", kind=2), _entry("alice", "console"),
               _entry("alice", "ttys000"), _entry("bob", "ttys001", host="10.0.0.5"),
               _entry("bob", "ttys002"),  # /dev/ttys002 unreadable
               _entry("carol", "ttys003", pid=999),  # sshd died: stale
               _entry("", "ttys004"), _entry("dave", "ttys005", kind=8)]  # logged out
    atimes = {"ttys000": NOW - 30, "ttys001": NOW - 7200}
    r = utmpx_reading(entries, now=NOW, uid_of=UIDS.get, tty_atime=atimes.get,
                      alive=lambda pid: pid != 999)
    assert r.idle_seconds is None and r.sessions == 4
    assert r.per_session == (SessionIdle(501, "console", None),
                             SessionIdle(501, "ttys000", 30.0),
                             SessionIdle(502, "ttys001", 7200.0),
                             SessionIdle(502, "ttys002", None))
    assert "1 stale entry ignored" in r.detail and "from 10.0.0.5" in r.detail
    assert "ttys002 (terminal unreadable)" in r.detail


def test_utmpx_nobody_logged_in_and_fast_user_switching() -> None:
    r = utmpx_reading([_entry("alice", "console", pid=5)], now=NOW, alive=lambda p: False)
    assert r.sessions == 0 and r.detail.startswith("no user logged in")
    # Fast user switching: every logged-in user has a console entry, each must be covered.
    both = utmpx_reading([_entry("bob", "console"), _entry("alice", "console", t=NOW - 99),
                          _entry("alice", "console", t=NOW - 999)],
                         now=NOW, uid_of=UIDS.get, alive=lambda p: True)
    assert both.per_session == (SessionIdle(501, "console", None),
                                SessionIdle(502, "console", None))
    rep = _reports(Report(502, "pid9", NOW, 50.0, False, None, "macos"))
    assert combine([both, rep], own_uid=0).idle_seconds is None  # alice: nobody tells
    assert "session console (uid 501)" in combine([both, rep], own_uid=0).detail


def test_utmpx_darwin_struct_layout() -> None:
    # macOS <utmpx.h>: user[256] id[4] line[32] pid short-type timeval(8+4) host[256] pad[16].
    offsets = {name: getattr(UtmpxDarwin, name).offset for name, *_ in UtmpxDarwin._fields_}
    assert offsets == {"ut_user": 0, "ut_id": 256, "ut_line": 260, "ut_pid": 292,
                       "ut_type": 296, "ut_tv": 304, "ut_host": 320, "ut_pad": 576}
    rec = UtmpxDarwin(ut_user=b"alice", ut_line=b"console", ut_pid=88, ut_type=USER_PROCESS)
    rec.ut_tv.tv_sec, rec.ut_tv.tv_usec = 1_700_000_000, 500_000
    assert entry_from_struct(rec) == LoginEntry(USER_PROCESS, "alice", "console", "", 88,
                                                1_700_000_000.5)


def test_utmpx_source_is_macos_only() -> None:
    r = UtmpxSource(plat="linux").read()
    assert r.sessions is None and r.idle_seconds is None and "logind" in r.detail


def _utmpdump_line(kind: int, pid: int, line: str, user: str, host: str, when: float) -> str:
    stamp = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S,000000+00:00")
    return (f"[{kind}] [{pid:05d}] [{line[-4:]:<4.4}] [{user:<8}] [{line:<12}] "
            f"[{host:<20}] [0.0.0.0        ] [{stamp}]\n")


@pytest.mark.skipif(shutil.which("utmpdump") is None or platform.machine() != "x86_64",
                    reason="needs util-linux utmpdump and glibc's x86-64 struct utmpx")
def test_utmpx_reader_on_a_real_utmp_file_and_pty(tmp_path: Path) -> None:
    """glibc's getutxent reads a utmp file that utmpdump wrote; the session's line is a real
    pseudo-terminal whose access time the kernel moves when input is read from it."""
    master, slave = pty.openpty()
    try:
        line = os.ttyname(slave).removeprefix("/dev/")
        dead = 2**22 + 12345  # above pid_max's default: no such process
        text = (_utmpdump_line(2, 0, "~", "reboot", "6.1.0", NOW - 9000)
                + _utmpdump_line(USER_PROCESS, os.getpid(), line, "root", "10.1.2.3", NOW - 60)
                + _utmpdump_line(USER_PROCESS, dead, "pts/999", "root", "", NOW - 30)
                + _utmpdump_line(8, os.getpid(), "pts/998", "", "", NOW - 20))
        path = tmp_path / "utmp"
        subprocess.run(["utmpdump", "-r", "-o", str(path)], input=text.encode(), check=True,
                       capture_output=True, timeout=30)
        entries = read_utmpx(str(path), layout=UtmpxGlibc, plat="linux")
        assert [(e.type, e.user, e.line, e.host, e.pid) for e in entries] == [
            (2, "reboot", "~", "6.1.0", 0),
            (USER_PROCESS, "root", line, "10.1.2.3", os.getpid()),
            (USER_PROCESS, "root", "pts/999", "", dead),
            (8, "", "pts/998", "", os.getpid())]
        assert entries[1].login_time == NOW - 60

        os.utime(f"/dev/{line}", (time.time() - 3600, time.time() - 3600))
        before = utmpx_reading(entries)  # real pwd, psutil and stat
        assert before.sessions == 1 and "1 stale entry ignored" in before.detail
        (sess,) = before.per_session
        assert sess.uid == 0 and sess.session == line and sess.idle_seconds >= 3500
        os.write(master, b"x\n")
        os.read(slave, 10)  # the line discipline hands input to the reader: atime moves
        after = utmpx_reading(read_utmpx(str(path), layout=UtmpxGlibc, plat="linux"))
        assert after.per_session[0].idle_seconds < 60, after
        assert read_utmpx(str(tmp_path / "missing"), layout=UtmpxGlibc, plat="linux") == []
    finally:
        os.close(master)
        os.close(slave)


# ------------------------------------------------------------------------------ combination


def _r(source: str, idle: float | None, **kw) -> IdleReading:
    return IdleReading(source, idle, "d", **kw)


def _reports(*reports: Report) -> IdleReading:
    return combine_reports(list(reports), now=NOW)


NO_REPORTER = IdleReading("reporter", None, "no reporter running", sessions=0)


def test_windows_nobody_logged_in_counts_as_idle_only_without_reporters() -> None:
    wts = wts_reading([_wts(1, "", WTS_CONNECTED, None), _wts(3, "bob", WTS_DISCONNECTED)])
    windows = _r("windows", None)  # a service: session 0
    s = combine([windows, wts, NO_REPORTER])
    assert s.no_session and s.idle_seconds is None
    rep = _reports(Report(0, "bob-3", NOW, 40.0, False, None, "windows"))
    assert not combine([windows, wts, rep]).no_session
    broken = WtsSource(api=lambda: FakeWts([OSError("denied")]), min_interval=0).read()
    assert not combine([windows, broken, NO_REPORTER]).no_session  # unknown is not nobody


def test_windows_session_without_its_reporter_cannot_tell() -> None:
    wts = wts_reading([_wts(2, "alice"), _wts(3, "bob", station="RDP-Tcp#1")])
    alice = Report(0, "ALICE-2", NOW, 1200.0, False, None, "windows")  # USERNAME's case
    s = combine([_r("windows", None), wts, _reports(alice)])
    assert s.idle_seconds is None and not s.no_session
    assert "session bob-3: no source can tell" in s.detail
    # Every Windows report says uid 0: a report naming another session cannot vouch for bob.
    stray = Report(0, "mallory-9", NOW, 9000.0, False, None, "windows")
    assert combine([wts, _reports(alice, stray)]).idle_seconds is None
    bob = Report(0, "bob-3", NOW, 900.0, False, None, "windows")
    assert combine([wts, _reports(alice, bob)]).idle_seconds == pytest.approx(900.0)


def test_windows_own_session_is_told_by_get_last_input_info() -> None:
    """`officegrid worker` run by hand in alice's session 2: GetLastInputInfo sees only it."""
    wts = wts_reading([_wts(2, "alice"), _wts(3, "bob")])
    windows = _r("windows", 300.0)
    assert combine([windows, wts, NO_REPORTER], own_session="alice-2").idle_seconds is None
    one = wts_reading([_wts(2, "alice")])
    assert combine([windows, one, NO_REPORTER], own_session="Alice-2").idle_seconds == 300.0
    assert combine([windows, one, NO_REPORTER], own_session="bob-3").idle_seconds is None


def test_windows_locked_sessions() -> None:
    wts = wts_reading([_wts(2, "alice", flags=0)])
    rep = _reports(Report(0, "alice-2", NOW, 70.0, False, None, "windows"))
    s = combine([wts, rep])
    assert s.locked and s.idle_seconds == pytest.approx(70.0)
    assert not combine([wts_reading([_wts(2, "alice", flags=1)]), rep]).locked


def test_macos_console_sessions_are_told_by_system_wide_hid_idle_time() -> None:
    """A LaunchDaemon (uid 0 here) sees HIDIdleTime for every console session."""
    utmpx = utmpx_reading([_entry("alice", "console"), _entry("bob", "console2")], now=NOW,
                          uid_of=UIDS.get, alive=lambda p: True,
                          tty_atime=lambda line: NOW - 5000)
    hid = _r("macos", 1500.0)
    s = combine([hid, utmpx, NO_REPORTER], own_uid=0)
    # "console2" is not a console line: a terminal, told by its own access time.
    assert s.idle_seconds == pytest.approx(1500.0) and not s.no_session
    no_hid = combine([_r("macos", None), utmpx, NO_REPORTER], own_uid=0)
    assert no_hid.idle_seconds is None and "session console (uid 501)" in no_hid.detail
    rep = _reports(Report(501, "pid77", NOW, 20.0, False, None, "macos"))
    assert combine([_r("macos", None), utmpx, rep], own_uid=0).idle_seconds == 20.0


def test_macos_terminal_sessions_are_told_by_their_device_only() -> None:
    """An ssh login types into ttys001: HIDIdleTime and alice's reporter see none of it."""
    utmpx = utmpx_reading([_entry("alice", "console"), _entry("alice", "ttys001")], now=NOW,
                          uid_of=UIDS.get, alive=lambda p: True,
                          tty_atime={"ttys001": NOW - 4}.get)
    rep = _reports(Report(501, "pid77", NOW, 3000.0, False, None, "macos"))
    s = combine([_r("macos", 3000.0), utmpx, rep], own_uid=0)
    assert s.idle_seconds == pytest.approx(4.0)
    unreadable = utmpx_reading([_entry("alice", "ttys001")], now=NOW, uid_of=UIDS.get,
                               alive=lambda p: True, tty_atime=lambda line: None)
    assert combine([_r("macos", 3000.0), unreadable, rep], own_uid=0).idle_seconds is None


def test_macos_nobody_logged_in() -> None:
    utmpx = utmpx_reading([], now=NOW)
    assert combine([_r("macos", 30.0), utmpx, NO_REPORTER]).no_session
    assert not combine([_r("macos", 30.0), utmpx_reading([_entry("a", "console")], now=NOW,
                                                         alive=lambda p: True),
                        NO_REPORTER]).no_session
    # Every list read must be empty: one that names a session (or cannot tell) outvotes it.
    one = utmpx_reading([_entry("a", "ttys001")], now=NOW, alive=lambda p: True,
                        tty_atime=lambda line: NOW)
    assert not combine([_r("logind", None, sessions=0), one, NO_REPORTER]).no_session
    assert not combine([_r("logind", None, sessions=0), _r("utmpx", None), NO_REPORTER]).no_session


def test_monitor_with_a_session_list_and_real_report_files(tmp_path: Path) -> None:
    """IdleMonitor end to end on Windows' sources: WTS (injected) lists alice's session, a
    reporter file on disk tells it; once she logs off, nobody is logged in."""
    fake = FakeWts([[_wts(2, "alice")], [_wts(1, "", WTS_CONNECTED, None)]])
    mon = IdleMonitor(work_dir=tmp_path, sources=["windows", "wts", "reporter"])
    mon._sources[1] = WtsSource(api=lambda: fake, min_interval=0)
    try:
        untold = mon.read()
        assert untold.idle_seconds is None and "session alice-2" in untold.detail
        sessions_dir(tmp_path).mkdir(parents=True)
        write_report(sessions_dir(tmp_path),
                     Report(os.getuid(), "alice-2", time.time(), 600.0, False, None, "windows"))
        told = mon.read()
        assert told.idle_seconds is not None and told.idle_seconds >= 600.0, told.detail
        assert not told.no_session
        for f in sessions_dir(tmp_path).iterdir():
            f.unlink()  # she logged off: her reporter removed its file
        gone = mon.read()
        assert gone.no_session and gone.idle_seconds is None
    finally:
        mon.close()
