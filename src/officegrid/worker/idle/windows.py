"""Windows: GetLastInputInfo (user32) against GetTickCount.

Both are 32-bit millisecond tick counts that wrap every 49.7 days, so the idle time is their
difference modulo 2**32 (Microsoft's GetLastInputInfo documentation). GetLastInputInfo sees only
the calling session: run as a service (session 0) it reports the service's own idle time, so the
agent relies on the session reporter there (docs: "This function is useful for input idle
detection. However, GetLastInputInfo does not provide system-wide user input information across
all running sessions").
"""

from __future__ import annotations

import ctypes
import sys

from officegrid.worker.idle.base import IdleReading, cannot

NAME = "windows"
_WRAP = 1 << 32


def idle_ms_from_ticks(now_tick: int, last_input_tick: int) -> int:
    """Milliseconds between the last input tick and now, both 32-bit tick counts (wrap handled).

    Raises ValueError if either value is outside 0..2**32-1.
    """
    for name, value in (("now_tick", now_tick), ("last_input_tick", last_input_tick)):
        if not 0 <= value < _WRAP:
            raise ValueError(f"{name}={value} is not a 32-bit tick count")
    return (now_tick - last_input_tick) % _WRAP


class WindowsSource:
    """GetLastInputInfo of the session this process runs in."""

    name = NAME

    def __init__(self) -> None:
        self._user32 = None
        self._kernel32 = None
        if sys.platform == "win32":  # pragma: no cover - Windows only
            self._user32 = ctypes.windll.user32  # type: ignore[attr-defined]
            self._kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
            self._kernel32.GetTickCount.restype = ctypes.c_uint32

    def read(self) -> IdleReading:
        if self._user32 is None or self._kernel32 is None:
            return cannot(NAME, f"not Windows ({sys.platform})")
        try:  # pragma: no cover - Windows only
            class LASTINPUTINFO(ctypes.Structure):
                _fields_ = [("cbSize", ctypes.c_uint), ("dwTime", ctypes.c_uint32)]

            info = LASTINPUTINFO()
            info.cbSize = ctypes.sizeof(info)
            if not self._user32.GetLastInputInfo(ctypes.byref(info)):
                return cannot(NAME, "GetLastInputInfo failed")
            now = int(self._kernel32.GetTickCount())
            ms = idle_ms_from_ticks(now, int(info.dwTime))
            session = ctypes.c_uint32()
            self._kernel32.ProcessIdToSessionId(self._kernel32.GetCurrentProcessId(),
                                                ctypes.byref(session))
            if session.value == 0:
                return cannot(NAME, "running in session 0 (a service): GetLastInputInfo cannot "
                              "see user input; the session reporter must report it")
            return IdleReading(NAME, ms / 1000.0, f"GetLastInputInfo, session {session.value}")
        except Exception as exc:  # noqa: BLE001 - a source never raises
            return cannot(NAME, f"GetLastInputInfo failed: {exc}")

    def close(self) -> None:
        pass
