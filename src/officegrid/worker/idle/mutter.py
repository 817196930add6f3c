"""GNOME (X11 and Wayland): org.gnome.Mutter.IdleMonitor GetIdletime on the session bus.

Mutter's core idle monitor counts milliseconds since the last input of the session; it is the
only idle source that works on GNOME Wayland (XScreenSaver there sees only XWayland clients).
Needs the user's session bus, so the agent reads it through the session reporter.
"""

from __future__ import annotations

from officegrid.worker.idle.base import IdleReading, cannot
from officegrid.worker.idle.dbus import Bus, BusError

NAME = "mutter"


class MutterSource:
    """GetIdletime of the GNOME session this process can reach."""

    name = NAME

    def __init__(self, bus: Bus | None = None) -> None:
        self._bus = bus or Bus("SESSION")

    def read(self) -> IdleReading:
        try:
            (ms,) = self._bus.call("/org/gnome/Mutter/IdleMonitor/Core",
                                   "org.gnome.Mutter.IdleMonitor",
                                   "org.gnome.Mutter.IdleMonitor", "GetIdletime")
        except BusError as exc:
            return cannot(NAME, str(exc))
        detail = "org.gnome.Mutter.IdleMonitor GetIdletime"
        present = False
        try:
            # GNOME turns idle inhibitors (video calls, presentations, portal Inhibit) into
            # session inhibitors; flag 8 = "idle" (org.gnome.SessionManager.IsInhibited).
            (present,) = self._bus.call("/org/gnome/SessionManager", "org.gnome.SessionManager",
                                        "org.gnome.SessionManager", "IsInhibited", "u", (8,))
            present = bool(present)
            if present:
                detail += ", idle inhibited (org.gnome.SessionManager)"
        except BusError:
            pass  # no gnome-session: the idle time alone is still an answer
        return IdleReading(NAME, int(ms) / 1000.0, detail, present=present)

    def close(self) -> None:
        self._bus.close()
