"""systemd-logind: sessions' IdleHint / IdleSinceHint / LockedHint, and idle inhibitors.

logind knows every session on the machine, so it is the one source that can say "nobody is
logged in" (no local user session: the machine counts as idle). Its idle hints are only as good
as the desktop that sets them (GNOME sets IdleHint after its own idle delay; many desktops never
set it): a graphical session whose hint was never changed is "cannot tell", not "idle".
For tty sessions logind derives the hint from the terminal itself. An inhibitor of type "idle"
in "block" mode (video calls, presentations) counts as presence, except the agent's own (it
holds one while units run, see worker/owner.py KeepAwake: counting it would suspend every unit).
"""

from __future__ import annotations

import os
import time
from collections.abc import Container, Iterable, Mapping
from typing import Any

from officegrid.worker.idle.base import IdleReading, SessionIdle, cannot
from officegrid.worker.idle.dbus import Bus, BusError

NAME = "logind"
_SVC = "org.freedesktop.login1"
_MANAGER = "/org/freedesktop/login1"


def _is_local_user(props: Mapping[str, Any]) -> bool:
    """A user session at a seat or on a terminal (not a greeter, not a background service).

    Every user class counts ("user", and systemd 256's "user-early", "user-incomplete",
    "user-light"): leaving one out would turn a logged-in owner into "nobody logged in",
    which counts as idle. A session in state "closing" is a logout whose stray processes
    linger (KillUserProcesses=no): nobody sits there, and its hints never change again.
    """
    if not str(props.get("Class", "user")).startswith("user"):
        return False
    if props.get("State") == "closing":
        return False
    seat = props.get("Seat") or ("", "")
    seat_id = seat[0] if isinstance(seat, (tuple, list)) else str(seat)
    return bool(seat_id or props.get("TTY"))


def _uid(props: Mapping[str, Any]) -> int | None:
    user = props.get("User")
    try:
        return int(user[0] if isinstance(user, (tuple, list)) else user)
    except (TypeError, ValueError, IndexError):
        return None


def combine_sessions(sessions: Iterable[Mapping[str, Any]],
                     inhibitors: Iterable[tuple] = (),
                     now: float | None = None,
                     own_pids: Container[int] = ()) -> IdleReading:
    """One reading from the properties of every logind session and the inhibitor list.

    sessions: property dicts of org.freedesktop.login1.Session (Id, Class, Type, Seat, TTY,
        User as (uid, path), IdleHint, IdleSinceHint in microseconds since the epoch, LockedHint,
        Timestamp).
    inhibitors: tuples (what, who, why, mode, uid, pid) from Manager.ListInhibitors.
    now: time.time() seconds (default: now).
    own_pids: pids whose inhibitors are the grid's own (not the owner's presence).
    The machine's idle time is the smallest over local user sessions; one session that cannot
    tell makes the whole answer "cannot tell".
    """
    now = time.time() if now is None else now
    present_by = [f"{inh[1]} ({inh[2]})" for inh in idle_blockers(inhibitors)
                  if _pid(inh) not in own_pids]
    local = [s for s in sessions if _is_local_user(s)]
    present = bool(present_by)
    extra = f"; idle inhibited by {', '.join(present_by)}" if present_by else ""
    if not local:
        return IdleReading(NAME, None, "no local user sessions" + extra, present=present,
                           sessions=0)
    idles: list[float] = []
    unknown: list[str] = []
    seen: list[SessionIdle] = []
    for s in local:
        sid = str(s.get("Id", "?"))
        since_us = int(s.get("IdleSinceHint") or 0)
        value: float | None = None
        if s.get("IdleHint"):
            if since_us <= 0:
                unknown.append(f"session {sid}: IdleHint set without IdleSinceHint")
            else:
                value = max(0.0, now - since_us / 1e6)
        elif since_us <= 0 or since_us == int(s.get("Timestamp") or -1):
            unknown.append(f"session {sid} ({s.get('Type', '?')}): IdleHint never set")
        else:
            value = 0.0  # the desktop says active (input within its own idle delay)
        if value is not None:
            idles.append(value)
        seen.append(SessionIdle(_uid(s), sid, value))
    locked = all(bool(s.get("LockedHint")) for s in local)
    n = len(local)
    if unknown:
        return IdleReading(NAME, None, "; ".join(unknown) + extra, present=present, sessions=n,
                           locked=locked, per_session=tuple(seen))
    return IdleReading(NAME, min(idles), f"{n} local session(s), IdleHint" + extra,
                       present=present, sessions=n, locked=locked, per_session=tuple(seen))


def idle_blockers(inhibitors: Iterable[tuple]) -> list[tuple]:
    """The inhibitors of type "idle" in "block" mode (ListInhibitors tuples)."""
    return [i for i in inhibitors if "idle" in str(i[0]).split(":") and str(i[3]) == "block"]


def _pid(inhibitor: tuple) -> int | None:
    try:
        return int(inhibitor[5])
    except (IndexError, TypeError, ValueError):
        return None


def own_inhibitor_pids(inhibitors: Iterable[tuple], me: int | None = None) -> set[int]:
    """Pids of the inhibitors held by this process or its descendants (systemd-inhibit)."""
    import psutil

    me = os.getpid() if me is None else me
    own: set[int] = set()
    for inh in inhibitors:
        pid = _pid(inh)
        if pid is None:
            continue
        if pid == me:
            own.add(pid)
            continue
        try:
            if any(parent.pid == me for parent in psutil.Process(pid).parents()):
                own.add(pid)
        except (psutil.Error, OSError):
            continue  # gone, or not ours to inspect
    return own


class LogindSource:
    """Sessions and inhibitors from org.freedesktop.login1 on the system bus.

    A query costs a few D-Bus round trips per session, so answers are reused for
    `min_interval` seconds (logind's hints change on the desktop's own idle delay anyway; the
    fast input path is X11, Mutter or the reporter). A reused idle time is at most that much
    too small, never too large.
    """

    name = NAME

    def __init__(self, bus: Bus | None = None, min_interval: float = 1.0) -> None:
        self._bus = bus or Bus("SYSTEM")
        self.min_interval = min_interval
        self._cached: tuple[float, IdleReading] | None = None

    def read(self) -> IdleReading:
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < self.min_interval:
            return self._cached[1]
        reading = self._query()
        self._cached = (now, reading)
        return reading

    def _query(self) -> IdleReading:
        try:
            (listed,) = self._bus.call(_MANAGER, _SVC, f"{_SVC}.Manager", "ListSessions")
            sessions = []
            for (_sid, uid, _user, _seat, path) in listed:
                props = self._bus.get_all(path, _SVC, f"{_SVC}.Session")
                props.setdefault("User", (uid, ""))
                sessions.append(props)
            try:
                (inhibitors,) = self._bus.call(_MANAGER, _SVC, f"{_SVC}.Manager",
                                               "ListInhibitors")
            except BusError:
                inhibitors = []
        except BusError as exc:
            return cannot(NAME, str(exc))
        except Exception as exc:  # noqa: BLE001 - a source never raises
            return cannot(NAME, f"logind answer not understood: {exc}")
        return combine_sessions(sessions, inhibitors,
                                own_pids=own_inhibitor_pids(idle_blockers(inhibitors)))

    def close(self) -> None:
        self._bus.close()
