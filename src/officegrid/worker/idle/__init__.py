"""Idle detection: one module per source, combined by IdleMonitor.

Sources, tried in order: x11 (XScreenSaver), mutter (GNOME IdleMonitor), screensaver
(org.freedesktop.ScreenSaver), logind (session idle hints, inhibitors), tty (terminal access
times), reporter (the per-session `officegrid idle-reporter` files), windows (GetLastInputInfo),
macos (HIDIdleTime). A source that cannot tell says why; "cannot tell" is never "idle".
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

ALL_SOURCES = ("x11", "mutter", "screensaver", "logind", "tty", "reporter", "windows", "macos")
# What a reporter inside a login session reads (the agent reads the others itself).
SESSION_SOURCES = ("x11", "mutter", "screensaver", "windows", "macos")


def default_sources(platform: str = sys.platform) -> list[str]:
    """The sources that can work on `platform`, in order."""
    if platform == "win32":
        return ["windows", "reporter"]
    if platform == "darwin":
        return ["macos", "reporter"]
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
    no_session: reliably nobody is logged in (logind lists no local user session and no
        reporter is running); the policy counts that as idle.
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
        return f"from {', '.join(best) or 'the sessions logind lists'}"


def _session_idle(logind: IdleReading, readings: list[IdleReading],
                  own_uid: int | None) -> tuple[float | None, str]:
    """The smallest idle time over logind's local sessions, each told by the best source.

    A session is told by a fresh reporter of the same uid (same session id first), else, for
    the agent's own uid, by the sources it reads itself (X11, Mutter, ScreenSaver), else by
    logind's own hint. A session nobody can tell about makes the answer None: a reporter of
    another user (or job code) cannot vouch for it.
    """
    by_name = {r.source: r for r in readings}
    reports = list((by_name["reporter"].per_session or ()) if "reporter" in by_name else ())
    direct = [r.idle_seconds for r in readings if r.source in SESSION_SOURCES
              and r.idle_seconds is not None and not r.partial]
    listed = {(s.uid, s.session) for s in logind.per_session or ()}
    told: list[float] = []
    untold: list[str] = []
    for sess in logind.per_session or ():
        mine = [r for r in reports if r.uid is not None and r.uid == sess.uid]
        match = ([r for r in mine if r.session == sess.session]
                 or [r for r in mine if (r.uid, r.session) not in listed])
        values = [r.idle_seconds for r in match]
        if values and None not in values:
            told.append(min(values))  # type: ignore[type-var]
        elif own_uid is not None and sess.uid == own_uid and direct:
            told.append(min(direct))  # type: ignore[type-var]
        elif sess.idle_seconds is not None:
            told.append(sess.idle_seconds)
        else:
            untold.append(f"session {sess.session} (uid {sess.uid}): no source can tell")
    if untold:
        return None, "; ".join(untold)
    return (min(told) if told else None), ""


def combine(readings: list[IdleReading], own_uid: int | None = None) -> IdleStatus:
    """Combine readings into one status.

    When logind lists local user sessions, every one of them must be told by some source
    (see _session_idle; own_uid: the uid this process runs as, whose sessions its own X11 /
    Mutter / ScreenSaver sources see), and the idle time is the smallest over them and every
    other source that can tell. Without logind: the smallest over the sources that can tell,
    where partial ones count only next to a full one. None ("cannot tell") is never idle.
    no_session needs logind to report zero local sessions and (if the reporter source was
    read) zero fresh reporters.
    """
    known = [r for r in readings if r.idle_seconds is not None]
    full = [r for r in known if not r.partial]
    by_name = {r.source: r for r in readings}
    logind = by_name.get("logind")
    reporter = by_name.get("reporter")
    untold = ""
    if logind is not None and logind.per_session:
        per_session, untold = _session_idle(logind, readings, own_uid)
        others = [r.idle_seconds for r in known if r.source != "logind"]
        idle = None if per_session is None else min([per_session, *others])  # type: ignore[type-var]
    else:
        idle = min(r.idle_seconds for r in known) if full else None  # type: ignore[type-var]
    present = any(r.present for r in readings)
    no_session = (logind is not None and logind.sessions == 0
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

    def read(self) -> IdleStatus:
        """Read every source (never raises) and combine."""
        readings = []
        for src in self._sources:
            try:
                readings.append(src.read())
            except Exception as exc:  # noqa: BLE001 - a broken source must not stop the others
                readings.append(cannot(src.name, f"source failed: {exc}"))
        return combine(readings, own_uid=os.getuid() if hasattr(os, "getuid") else None)

    def close(self) -> None:
        """Close every source's connection."""
        for src in self._sources:
            with contextlib.suppress(Exception):  # closing must not raise
                src.close()

    def __enter__(self) -> IdleMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
