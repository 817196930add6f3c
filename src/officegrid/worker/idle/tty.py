"""Terminals: access times of /dev/pts/* and the tty devices of logged-in users.

Linux updates a terminal's access time when input is read from it (as `w` and HTCondor's
KeyboardIdle do), in steps of about 8 seconds (the tty layer only updates the time when it moved
by 8 s or more), so this source is coarse. It cannot see graphical input: while a graphical
session exists it is *partial* (it can show activity, not absence).
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Mapping

from officegrid.worker.idle.base import IdleReading, cannot

NAME = "tty"


def tty_reading(atimes: Mapping[str, float], graphical: bool,
                now: float | None = None) -> IdleReading:
    """A reading from terminal access times (device -> time.time() seconds).

    graphical: a graphical session seems to exist (then the reading is partial).
    """
    now = time.time() if now is None else now
    if not atimes:
        return cannot(NAME, "no terminals", partial=graphical)
    newest_dev = max(atimes, key=lambda d: atimes[d])
    idle = max(0.0, now - atimes[newest_dev])
    detail = f"{len(atimes)} terminal(s), last input on {newest_dev}"
    if graphical:
        detail += " (partial: graphical input is not seen)"
    return IdleReading(NAME, idle, detail, partial=graphical)


LOGIND_SESSIONS = "/run/systemd/sessions"
_GRAPHICAL_TYPES = ("x11", "wayland", "mir")


def logind_graphical_session(directory: str = LOGIND_SESSIONS) -> bool:
    """True if logind's world-readable state files list a graphical user session.

    This works for a service account too, which sees neither /tmp/.X11-unix (PrivateTmp) nor
    the Wayland sockets (in each user's private /run/user/UID), and whose utmp shows a Wayland
    session only as its virtual terminal (e.g. "tty2").
    """
    for path in glob.glob(os.path.join(directory, "*")):
        if path.endswith(".ref") or not os.path.isfile(path):
            continue  # the .ref files are FIFOs: opening one would block
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                fields = dict(line.rstrip("\n").split("=", 1) for line in fh if "=" in line)
        except OSError:
            continue
        if (fields.get("TYPE") in _GRAPHICAL_TYPES
                and fields.get("CLASS", "user").startswith("user")):
            return True
    return False


def graphical_session_seen() -> bool:
    """True if an X server or a Wayland compositor seems to run on this machine."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return True
    if glob.glob("/tmp/.X11-unix/X*") or glob.glob("/run/user/*/wayland-*"):
        return True
    if logind_graphical_session():
        return True
    try:
        import psutil

        return any((u.host or "").startswith(":") or (u.terminal or "").startswith(":")
                   for u in psutil.users())
    except Exception:  # noqa: BLE001 - utmp unreadable: rely on the other evidence
        return False


def terminal_devices() -> list[str]:
    """/dev/pts/N plus the terminals of logged-in users from utmp."""
    devices = set(glob.glob("/dev/pts/[0-9]*"))
    try:
        import psutil

        for u in psutil.users():
            term = u.terminal or ""
            if term and not term.startswith(":"):
                devices.add(term if term.startswith("/") else f"/dev/{term}")
    except Exception:  # noqa: BLE001 - utmp unreadable: /dev/pts still counts
        pass
    return sorted(devices)


class TtySource:
    """Newest access time over the machine's terminals."""

    name = NAME

    def read(self) -> IdleReading:
        if not os.path.isdir("/dev/pts") and not os.path.exists("/dev/tty1"):
            return cannot(NAME, "no terminal devices on this system")
        atimes: dict[str, float] = {}
        for dev in terminal_devices():
            try:
                atimes[dev] = os.stat(dev).st_atime
            except OSError:
                continue  # closed between listing and stat
        try:
            return tty_reading(atimes, graphical_session_seen())
        except Exception as exc:  # noqa: BLE001 - a source never raises
            return cannot(NAME, f"tty read failed: {exc}")

    def close(self) -> None:
        pass
