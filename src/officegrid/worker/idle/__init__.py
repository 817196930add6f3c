"""Idle detection: one module per source, combined by IdleMonitor.

Sources, tried in order: x11 (XScreenSaver), mutter (GNOME IdleMonitor), screensaver
(org.freedesktop.ScreenSaver), logind (session idle hints, inhibitors), tty (terminal access
times), reporter (the per-session `officegrid idle-reporter` files), windows (GetLastInputInfo),
macos (HIDIdleTime), wts (Windows sessions), utmpx (macOS sessions). A source that cannot tell
says why; "cannot tell" is never "idle".
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from officegrid.worker.idle.base import IdleReading, IdleSource, SessionIdle, cannot

__all__ = ["ALL_SOURCES", "SESSION_SOURCES", "IdleMonitor", "IdleReading", "IdleStatus",
           "SessionIdle", "combine", "default_sources"]

ALL_SOURCES = ("x11", "mutter", "screensaver", "logind", "tty", "reporter", "windows", "macos",
               "wts", "utmpx")
# What a reporter inside a login session reads (the agent reads the others itself).
SESSION_SOURCES = ("x11", "mutter", "screensaver", "windows", "macos")
# The sources that list every login session: with one of them, each listed session must be
# told by some source, and none listed (and no reporter) means nobody is logged in.
SESSION_LISTS = ("logind", "wts", "utmpx")
# Sources that see the input of every graphical session on the machine, whoever's it is.
MACHINE_WIDE = ("macos",)


def default_sources(platform: str = sys.platform) -> list[str]:
    """The sources that can work on `platform`, in order."""
    if platform == "win32":
        return ["windows", "wts", "reporter"]
    if platform == "darwin":
        return ["macos", "utmpx", "reporter"]
    return ["x11", "mutter", "screensaver", "logind", "tty", "reporter"]


def default_session_sources(platform: str = sys.platform) -> list[str]:
    """The sources a session reporter reads on `platform`."""
    return [s for s in default_sources(platform) if s in SESSION_SOURCES]


@dataclass(frozen=True)
class IdleStatus:
    """The combined view of every source.

    idle_seconds: smallest idle time over the sources that can tell, or None if none can (or
        only partial ones can). None is never idle.
    present: some source reports presence without input (an idle inhibitor).
    no_session: reliably nobody is logged in (the session lists read, logind, wts or utmpx,
        show no user session and no reporter is running); the policy counts that as idle.
    readings: every source's reading, in order.
    locked: every session a source saw has a locked screen.
    untold: the logged-in sessions no source can tell about ("" if none).
    """

    idle_seconds: float | None
    present: bool
    no_session: bool
    readings: list[IdleReading] = field(default_factory=list)
    locked: bool = False
    untold: str = ""

    @property
    def detail(self) -> str:
        """Why it cannot tell (every source's detail), or which source gave the idle time."""
        if self.idle_seconds is None:
            why = "; ".join(f"{r.source}: {r.detail}" for r in self.readings) or "no sources"
            return f"{self.untold}; {why}" if self.untold else why
        best = [r.source for r in self.readings if r.idle_seconds == self.idle_seconds]
        return f"from {', '.join(best) or 'the listed sessions (logind, wts, utmpx)'}"


def _told(source: str, sess: SessionIdle, reports: list[SessionIdle],
          listed: set[tuple[int | None, str]], direct: list[float], machine: list[float],
          own_uid: int | None, own_session: str | None) -> float | None:
    """The idle time of one listed session by the best source that can tell, else None.

    source: the list that named the session (logind, wts, utmpx). See _session_idle.
    """
    if source == "wts":
        # Windows reports carry no uid (every one says 0): a report tells only the session it
        # names ("<user>-<session id>"), the agent's own sources only the agent's session.
        name = sess.session.casefold()
        values = [r.idle_seconds for r in reports if r.session.casefold() == name]
        if values and None not in values:
            return min(values)  # type: ignore[type-var]
        if own_session is not None and own_session.casefold() == name and direct:
            return min(direct)
        return None
    if source == "utmpx" and sess.session != "console":
        return sess.idle_seconds  # a terminal: its device's access time, nothing else sees it
    mine = [r for r in reports if r.uid is not None and r.uid == sess.uid]
    match = ([r for r in mine if r.session == sess.session]
             or [r for r in mine if (r.uid, r.session) not in listed])
    values = [r.idle_seconds for r in match]
    if values and None not in values:
        return min(values)  # type: ignore[type-var]
    if own_uid is not None and sess.uid == own_uid and direct:
        return min(direct)
    if source == "utmpx" and machine:
        return min(machine)  # HIDIdleTime counts every HID event, whoever's session it is
    return sess.idle_seconds


def _session_idle(listed_sessions: list[tuple[str, SessionIdle]], readings: list[IdleReading],
                  own_uid: int | None, own_session: str | None = None
                  ) -> tuple[float | None, str]:
    """The smallest idle time over the listed sessions, each told by the best source.

    listed_sessions: (list source, session) for every session logind, wts or utmpx listed.
    logind and utmpx console sessions: told by a fresh reporter of the same uid (same session
    id first), else, for the agent's own uid, by the sources it reads itself (X11, Mutter,
    ScreenSaver, HIDIdleTime), else (utmpx console) by the system-wide HIDIdleTime, else by
    logind's own hint. utmpx terminal sessions: by their device's access time. wts sessions:
    by the reporter naming that session, else by the agent's own sources if it is the agent's
    session (own_session). A session nobody can tell about makes the answer None: a reporter
    of another user (or job code) cannot vouch for it.
    """
    by_name = {r.source: r for r in readings}
    reports = list((by_name["reporter"].per_session or ()) if "reporter" in by_name else ())
    direct = [r.idle_seconds for r in readings if r.source in SESSION_SOURCES
              and r.idle_seconds is not None and not r.partial]
    machine = [r.idle_seconds for r in readings if r.source in MACHINE_WIDE
               and r.idle_seconds is not None and not r.partial]
    listed = {(s.uid, s.session) for _, s in listed_sessions}
    told: list[float] = []
    untold: list[str] = []
    for source, sess in listed_sessions:
        value = _told(source, sess, reports, listed, direct, machine,  # type: ignore[arg-type]
                      own_uid, own_session)
        if value is not None:
            told.append(value)
        else:
            who = f" (uid {sess.uid})" if sess.uid is not None else ""
            untold.append(f"session {sess.session}{who}: no source can tell")
    if untold:
        return None, "; ".join(untold)
    return (min(told) if told else None), ""


def combine(readings: list[IdleReading], own_uid: int | None = None,
            own_session: str | None = None) -> IdleStatus:
    """Combine readings into one status.

    When a session list (logind, wts, utmpx) names user sessions, every one of them must be
    told by some source (see _session_idle; own_uid: the uid this process runs as, whose
    sessions its own X11 / Mutter / ScreenSaver / HIDIdleTime sources see; own_session: on
    Windows, this process's "<user>-<session id>", the one session GetLastInputInfo sees), and
    the idle time is the smallest over them and every other source that can tell. Without a
    list: the smallest over the sources that can tell, where partial ones count only next to
    a full one. None ("cannot tell") is never idle. no_session needs every list read to
    report zero sessions and (if the reporter source was read) zero fresh reporters.
    """
    known = [r for r in readings if r.idle_seconds is not None]
    full = [r for r in known if not r.partial]
    by_name = {r.source: r for r in readings}
    lists = [r for r in readings if r.source in SESSION_LISTS]
    listed_sessions = [(r.source, s) for r in lists for s in r.per_session or ()]
    reporter = by_name.get("reporter")
    untold = ""
    if listed_sessions:
        per_session, untold = _session_idle(listed_sessions, readings, own_uid, own_session)
        others = [r.idle_seconds for r in known if r.source not in SESSION_LISTS]
        idle = None if per_session is None else min([per_session, *others])  # type: ignore[type-var]
    else:
        idle = min(r.idle_seconds for r in known) if full else None  # type: ignore[type-var]
    present = any(r.present for r in readings)
    no_session = (bool(lists) and all(r.sessions == 0 for r in lists)
                  and (reporter is None or reporter.sessions == 0))
    locks = [r.locked for r in readings if r.locked is not None]
    return IdleStatus(idle_seconds=idle, present=present, no_session=no_session,
                      readings=list(readings), locked=bool(locks) and all(locks),
                      untold=untold)


def _make(name: str, work_dir: Path | None) -> IdleSource:
    if name == "x11":
        from officegrid.worker.idle.x11 import X11Source
        return X11Source()
    if name == "mutter":
        from officegrid.worker.idle.mutter import MutterSource
        return MutterSource()
    if name == "screensaver":
        from officegrid.worker.idle.screensaver import ScreenSaverSource
        return ScreenSaverSource()
    if name == "logind":
        from officegrid.worker.idle.logind import LogindSource
        return LogindSource()
    if name == "tty":
        from officegrid.worker.idle.tty import TtySource
        return TtySource()
    if name == "reporter":
        from officegrid.worker.idle.reporter import ReporterSource
        return ReporterSource(work_dir)
    if name == "windows":
        from officegrid.worker.idle.windows import WindowsSource
        return WindowsSource()
    if name == "macos":
        from officegrid.worker.idle.macos import MacSource
        return MacSource()
    if name == "wts":
        from officegrid.worker.idle.sessions_windows import WtsSource
        return WtsSource()
    if name == "utmpx":
        from officegrid.worker.idle.sessions_macos import UtmpxSource
        return UtmpxSource()
    raise ValueError(f"unknown idle source {name!r} (known: {', '.join(ALL_SOURCES)})")


class IdleMonitor:
    """Reads every configured source; keeps their connections open between reads.

    work_dir: the agent's work dir (for the reporter files); None disables the reporter source.
    sources: source names in order (default: default_sources() of this platform).
    Raises ValueError for an unknown source name.
    """

    def __init__(self, work_dir: Path | None = None, sources: list[str] | None = None) -> None:
        names = list(sources) if sources is not None else default_sources()
        for n in names:
            if n not in ALL_SOURCES:
                raise ValueError(f"unknown idle source {n!r} (known: {', '.join(ALL_SOURCES)})")
        self.names = names
        self._sources = [_make(n, work_dir) for n in names]
        # Windows: the one session GetLastInputInfo sees, named as its reporter names it.
        self._own_session: str | None = None
        if sys.platform == "win32":  # pragma: no cover - Windows only
            from officegrid.worker.idle.reporter import session_id

            with contextlib.suppress(Exception):  # unknown: only reporters tell then
                self._own_session = session_id()

    def read(self) -> IdleStatus:
        """Read every source (never raises) and combine."""
        readings = []
        for src in self._sources:
            try:
                readings.append(src.read())
            except Exception as exc:  # noqa: BLE001 - a broken source must not stop the others
                readings.append(cannot(src.name, f"source failed: {exc}"))
        return combine(readings, own_uid=os.getuid() if hasattr(os, "getuid") else None,
                       own_session=self._own_session)

    def close(self) -> None:
        """Close every source's connection."""
        for src in self._sources:
            with contextlib.suppress(Exception):  # closing must not raise
                src.close()

    def __enter__(self) -> IdleMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
