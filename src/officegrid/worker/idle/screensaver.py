"""KDE, Xfce and others: the org.freedesktop.ScreenSaver interface on the session bus.

GetSessionIdleTime answers seconds of idleness per the freedesktop idle-inhibition spec draft;
GetActive says whether the screen saver (or lock) is active. Needs the user's session bus.
"""

from __future__ import annotations

from officegrid.worker.idle.base import IdleReading, cannot
from officegrid.worker.idle.dbus import Bus, BusError

NAME = "screensaver"
_SERVICE = "org.freedesktop.ScreenSaver"


class ScreenSaverSource:
    """GetSessionIdleTime and GetActive of org.freedesktop.ScreenSaver."""

    name = NAME

    def __init__(self, bus: Bus | None = None) -> None:
        self._bus = bus or Bus("SESSION")

    def read(self) -> IdleReading:
        try:
            (seconds,) = self._bus.call("/org/freedesktop/ScreenSaver", _SERVICE, _SERVICE,
                                        "GetSessionIdleTime")
        except BusError as exc:
            return cannot(NAME, str(exc))
        locked = None
        try:
            (active,) = self._bus.call("/org/freedesktop/ScreenSaver", _SERVICE, _SERVICE,
                                       "GetActive")
            locked = bool(active)
        except BusError:
            pass  # idle time alone is still an answer
        detail = "org.freedesktop.ScreenSaver GetSessionIdleTime"
        if locked is not None:
            detail += f", screen saver {'active' if locked else 'inactive'}"
        return IdleReading(NAME, float(seconds), detail, locked=locked)

    def close(self) -> None:
        self._bus.close()
