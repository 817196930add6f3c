"""Owner check of Windows session report files (worker/idle/winowner.py) with the security
calls injected, and read_reports using it."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from officegrid.worker.idle import reporter, winowner
from officegrid.worker.idle.winowner import Account, claimed_user, owner_may_report

ALICE = Account("S-1-5-21-1-2-3-1001", "alice", "OFFICE")
BOB = Account("S-1-5-21-1-2-3-1002", "bob", "OFFICE")


def test_claimed_user() -> None:
    assert claimed_user("alice-1") == "alice"
    assert claimed_user("jean-luc-12") == "jean-luc"  # the id is after the last "-"
    assert claimed_user("alice") is None
    assert claimed_user("alice-console") is None
    assert claimed_user("-3") is None


def test_owner_must_be_the_claimed_user() -> None:
    assert owner_may_report(ALICE, "alice-1")
    assert owner_may_report(ALICE, "ALICE-1")  # Windows account names ignore case
    assert not owner_may_report(BOB, "alice-1")
    assert not owner_may_report(Account("S-1-5-21-9", "", ""), "alice-1")  # orphaned SID
    assert not owner_may_report(ALICE, "alice")  # not a Windows session name


def test_system_and_administrators_may_report_any_session() -> None:
    assert owner_may_report(Account("S-1-5-18", "SYSTEM", "NT AUTHORITY"), "alice-1")
    assert owner_may_report(Account("S-1-5-32-544", "Administrators", "BUILTIN"), "alice-1")
    assert not owner_may_report(Account("S-1-5-32-545", "Users", "BUILTIN"), "alice-1")


class FakeSecurity:
    def __init__(self, owners: dict[str, Account]) -> None:
        self.owners = owners
        self.asked: list[str] = []

    def file_owner(self, path: str) -> Account:
        self.asked.append(path)
        name = Path(path).name
        if name not in self.owners:
            raise OSError(2, "no such file")
        return self.owners[name]


def test_report_owner_ok_fails_closed() -> None:
    api = FakeSecurity({"a.json": ALICE})
    assert winowner.report_owner_ok("x/a.json", "alice-1", api=api)
    assert not winowner.report_owner_ok("x/a.json", "bob-2", api=api)
    assert not winowner.report_owner_ok("x/missing.json", "alice-1", api=api)  # unreadable


def test_real_api_refuses_off_windows() -> None:
    if sys.platform == "win32":  # pragma: no cover
        pytest.skip("checks the non-Windows behaviour")
    with pytest.raises(OSError, match="need Windows"):
        winowner.Win32SecurityApi()


def write(directory: Path, name: str, session: str) -> None:
    report = reporter.Report(0, session, time.time(), 3.0, True, False, "test")
    (directory / name).write_text(report.to_json())


def test_read_reports_on_windows_drops_reports_for_other_users(tmp_path, monkeypatch) -> None:
    # Windows as read_reports sees it: every file's st_uid is 0, reports say uid 0.
    write(tmp_path, "0-alice-1.json", "alice-1")
    write(tmp_path, "0-bob-2.json", "bob-2")
    write(tmp_path, "0-forged.json", "alice-1")  # bob's file claiming alice's session
    api = FakeSecurity({"0-alice-1.json": ALICE, "0-bob-2.json": BOB, "0-forged.json": BOB})
    monkeypatch.setattr(winowner, "_api", api)
    monkeypatch.setattr(reporter.sys, "platform", "win32")
    got = sorted(r.session for r in reporter.read_reports(tmp_path))
    assert got == ["alice-1", "bob-2"]
    assert len(api.asked) == 3


def test_read_reports_on_posix_does_not_ask_for_sids(tmp_path, monkeypatch) -> None:
    if sys.platform == "win32":  # pragma: no cover
        pytest.skip("POSIX behaviour")
    api = FakeSecurity({})
    monkeypatch.setattr(winowner, "_api", api)
    import os

    report = reporter.Report(os.getuid(), "s1", time.time(), 3.0, True, False, "test")
    (tmp_path / reporter.report_name(os.getuid(), "s1")).write_text(report.to_json())
    assert [r.session for r in reporter.read_reports(tmp_path)] == ["s1"]
    assert api.asked == []


def test_pause_files_on_windows_count_only_when_owned_by_the_user_they_name(
        tmp_path, monkeypatch) -> None:
    import json

    from officegrid.worker import pause

    sessions = tmp_path / "sessions"
    sessions.mkdir()
    for user in ("alice", "bob"):
        (sessions / f"{user}.pause").write_text(json.dumps(
            {"format": pause.FORMAT, "user": user, "until": None, "since": time.time()}))
    # bob wrote the file that names alice: on POSIX the uid check refuses it; here the SID one.
    api = FakeSecurity({"alice.pause": BOB, "bob.pause": BOB})
    monkeypatch.setattr(winowner, "_api", api)
    monkeypatch.setattr(pause.sys, "platform", "win32")
    assert [p.user for p in pause.read_pauses(tmp_path)] == ["bob"]
    assert len(api.asked) == 2
