"""What an idle source reports, and the small protocol every source follows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol


class SessionIdle(NamedTuple):
    """One login session as a source saw it: owner uid (None: unknown), session id (logind's
    Id, or the reporter's session name), seconds since input (None: cannot tell)."""

    uid: int | None
    session: str
    idle_seconds: float | None


@dataclass(frozen=True)
class IdleReading:
    """One source's view of the owner.

    source: the source name ("x11", "mutter", "screensaver", "logind", "tty", "reporter",
        "windows", "macos").
    idle_seconds: seconds since the last input, or None when this source cannot tell.
    detail: what it read, or why it cannot tell ("no DISPLAY", "XScreenSaver extension missing").
    present: presence without input, e.g. an idle inhibitor held by a video call.
    partial: the source sees only part of the input (terminal access times while a graphical
        session exists): it can show activity but cannot alone show that the owner is away.
    sessions: user sessions this source saw (logind: local sessions; reporter: fresh reporter
        files); None when it does not count sessions. Used for "nobody logged in".
    locked: every session this source saw has a locked screen (None: not known).
    per_session: each session this source saw, with its own idle time (logind: local user
        sessions; reporter: fresh reports); None when the source does not see sessions. Lets
        `combine` demand that every logged-in session is covered by some source.
    """

    source: str
    idle_seconds: float | None
    detail: str
    present: bool = False
    partial: bool = False
    sessions: int | None = None
    locked: bool | None = None
    per_session: tuple[SessionIdle, ...] | None = None


class IdleSource(Protocol):
    """An idle source: `read()` never raises; `close()` releases connections."""

    name: str

    def read(self) -> IdleReading: ...

    def close(self) -> None: ...


def cannot(source: str, detail: str, **kw: object) -> IdleReading:
    """A reading that says this source cannot tell, and why."""
    return IdleReading(source=source, idle_seconds=None, detail=detail, **kw)  # type: ignore[arg-type]
