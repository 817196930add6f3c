"""Windows: who is logged in, from Remote Desktop Services (WTSEnumerateSessionsW).

The agent runs as a service in session 0, where GetLastInputInfo sees nothing, so without a
list of sessions it could never tell "nobody logged in" from "somebody logged in without a
reporter". This source lists the sessions that someone can type into: state WTSActive with a
user name (the console and RDP sessions). A disconnected session (fast user switching, an RDP
client gone) keeps its programs but nobody can give it input, so it does not count; the
console at the logon screen has no user and does not count either.

Each session is named ``<user>-<session id>``, the name its `officegrid idle-reporter` uses
(reporter.session_id), because Windows reports carry no uid: `combine` matches a report to a
session by that name only. The lock state comes from WTSSessionInfoEx (SessionFlags; Python
3.11 needs Windows 8.1 or later, so the Windows 7 inversion of those flags cannot occur).

The ctypes calls are in `WtsApi`; `wts_reading` (which sessions count, names, lock state) and
the UTF-16 / WTSINFOEX decoding are plain Python, unit-tested on every platform.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple, Protocol

from officegrid.worker.idle.base import IdleReading, SessionIdle, cannot

NAME = "wts"

# WTS_CONNECTSTATE_CLASS
WTS_ACTIVE, WTS_CONNECTED, WTS_DISCONNECTED = 0, 1, 4
_STATES = {0: "active", 1: "connected", 2: "connect query", 3: "shadow", 4: "disconnected",
           5: "idle", 6: "listen", 7: "reset", 8: "down", 9: "init"}
# WTS_INFO_CLASS
WTS_USER_NAME, WTS_SESSION_INFO_EX = 5, 25
# WTSINFOEX_LEVEL1_W.SessionFlags
WTS_SESSIONSTATE_LOCK, WTS_SESSIONSTATE_UNLOCK = 0, 1


class WtsSession(NamedTuple):
    """One session as WTS lists it.

    id: session id; station: WinStation name ("Console", "RDP-Tcp#3", "Services");
    state: WTS_CONNECTSTATE_CLASS value; user: account name ("" for none);
    lock_flags: WTSINFOEX SessionFlags (0 locked, 1 unlocked, other: unknown), None if not read.
    """

    id: int
    station: str
    state: int
    user: str
    lock_flags: int | None = None


def session_name(user: str, session: int) -> str:
    """``<user>-<session id>``: the session name a Windows reporter writes (reporter.session_id)."""
    return f"{user}-{session}"


def locked_from_flags(flags: int | None) -> bool | None:
    """WTSINFOEX SessionFlags -> locked (True), unlocked (False) or unknown (None)."""
    if flags == WTS_SESSIONSTATE_LOCK:
        return True
    if flags == WTS_SESSIONSTATE_UNLOCK:
        return False
    return None


def wts_reading(sessions: Iterable[WtsSession]) -> IdleReading:
    """One reading from the WTS session list.

    The counted sessions (active, with a user) become per_session entries without an idle
    time (uid None: Windows has none): a reporter or, for the agent's own session, the
    GetLastInputInfo source must tell each, else the answer is "cannot tell". No counted
    session: sessions=0, which with no fresh reporter means nobody is logged in.
    locked: True only when every counted session reports the lock flag.
    """
    counted: list[WtsSession] = []
    skipped: list[str] = []
    for s in sessions:
        if s.state == WTS_ACTIVE and s.user:
            counted.append(s)
        elif s.user:
            skipped.append(f"{session_name(s.user, s.id)} {_STATES.get(s.state, s.state)}")
    note = f" (not counted: {', '.join(skipped)})" if skipped else ""
    if not counted:
        return cannot(NAME, "no active user sessions" + note, sessions=0)
    locks = [locked_from_flags(s.lock_flags) for s in counted]
    locked = None if None in locks else all(locks)
    names = ", ".join(f"{session_name(s.user, s.id)} ({s.station or '?'}"
                      f"{', locked' if lk else ''})" for s, lk in zip(counted, locks, strict=True))
    per = tuple(SessionIdle(None, session_name(s.user, s.id), None) for s in counted)
    return cannot(NAME, f"{len(counted)} active session(s): {names}{note}",
                  sessions=len(counted), locked=locked, per_session=per)


# ------------------------------------------------------------------ memory layouts and decoding
# Strings are read as raw UTF-16 code units, never as c_wchar (4 bytes on Linux), so the same
# layouts and decoders run in the unit tests on Linux.

WINSTATIONNAME_LENGTH, USERNAME_LENGTH, DOMAIN_LENGTH = 32, 20, 17


class WTS_SESSION_INFOW(ctypes.Structure):  # noqa: N801 - the Windows name
    _fields_ = [("SessionId", ctypes.c_uint32), ("pWinStationName", ctypes.c_void_p),
                ("State", ctypes.c_int)]


class WTSINFOEX_LEVEL1_W(ctypes.Structure):  # noqa: N801
    _fields_ = [("SessionId", ctypes.c_uint32), ("SessionState", ctypes.c_int),
                ("SessionFlags", ctypes.c_int32),
                ("WinStationName", ctypes.c_uint16 * (WINSTATIONNAME_LENGTH + 1)),
                ("UserName", ctypes.c_uint16 * (USERNAME_LENGTH + 1)),
                ("DomainName", ctypes.c_uint16 * (DOMAIN_LENGTH + 1)),
                ("LogonTime", ctypes.c_int64), ("ConnectTime", ctypes.c_int64),
                ("DisconnectTime", ctypes.c_int64), ("LastInputTime", ctypes.c_int64),
                ("CurrentTime", ctypes.c_int64),
                ("IncomingBytes", ctypes.c_uint32), ("OutgoingBytes", ctypes.c_uint32),
                ("IncomingFrames", ctypes.c_uint32), ("OutgoingFrames", ctypes.c_uint32),
                ("IncomingCompressedBytes", ctypes.c_uint32),
                ("OutgoingCompressedBytes", ctypes.c_uint32)]


class WTSINFOEXW(ctypes.Structure):
    # Data is a union whose only member is the level-1 struct.
    _fields_ = [("Level", ctypes.c_uint32), ("Data", WTSINFOEX_LEVEL1_W)]


def utf16_units(units: Iterable[int]) -> str:
    """A string from UTF-16 code units up to the first 0 (a fixed WCHAR array)."""
    out = []
    for u in units:
        if u == 0:
            break
        out.append(u)
    return b"".join(u.to_bytes(2, "little") for u in out).decode("utf-16-le", "replace")


def utf16z_at(address: int, limit: int = 512) -> str:
    """The NUL-terminated UTF-16 string at `address` (an LPWSTR), at most `limit` units.

    Raises ValueError for a null pointer.
    """
    if not address:
        raise ValueError("null string pointer")
    units = []
    for i in range(limit):  # unit by unit: reading past the terminator could fault
        unit = int.from_bytes(ctypes.string_at(address + 2 * i, 2), "little")
        if unit == 0:
            break
        units.append(unit)
    return utf16_units(units)


def lock_flags_from_infoex(blob: bytes) -> int | None:
    """SessionFlags from the bytes WTSQuerySessionInformationW(WTSSessionInfoEx) returned.

    None when the blob is too short or not level 1.
    """
    if len(blob) < ctypes.sizeof(WTSINFOEXW):
        return None
    info = WTSINFOEXW.from_buffer_copy(blob[:ctypes.sizeof(WTSINFOEXW)])
    if info.Level != 1:
        return None
    return int(info.Data.SessionFlags)


# ------------------------------------------------------------------ the ctypes calls


class SessionApi(Protocol):
    """What WtsSource needs from Windows (WtsApi; fakes in tests)."""

    def sessions(self) -> list[WtsSession]:
        """Every session; raises OSError when the list cannot be read."""


class WtsApi:  # pragma: no cover - needs Windows; the decoding above is tested everywhere
    """WTSEnumerateSessionsW / WTSQuerySessionInformationW / WTSFreeMemory via ctypes.

    Raises OSError off Windows.
    """

    def __init__(self) -> None:
        if sys.platform != "win32":
            raise OSError(f"not Windows ({sys.platform})")
        w = ctypes.WinDLL("wtsapi32", use_last_error=True)  # type: ignore[attr-defined]
        vp, u32 = ctypes.c_void_p, ctypes.c_uint32
        w.WTSEnumerateSessionsW.argtypes = [vp, u32, u32,
                                            ctypes.POINTER(ctypes.POINTER(WTS_SESSION_INFOW)),
                                            ctypes.POINTER(u32)]
        w.WTSEnumerateSessionsW.restype = ctypes.c_int
        w.WTSQuerySessionInformationW.argtypes = [vp, u32, ctypes.c_int, ctypes.POINTER(vp),
                                                  ctypes.POINTER(u32)]
        w.WTSQuerySessionInformationW.restype = ctypes.c_int
        w.WTSFreeMemory.argtypes = [vp]
        w.WTSFreeMemory.restype = None
        self._w = w

    def _query(self, session: int, info_class: int) -> bytes | None:
        buf, size = ctypes.c_void_p(), ctypes.c_uint32()
        if not self._w.WTSQuerySessionInformationW(None, session, info_class,
                                                   ctypes.byref(buf), ctypes.byref(size)):
            return None
        try:
            return ctypes.string_at(buf.value, size.value) if buf.value else None
        finally:
            self._w.WTSFreeMemory(buf)

    def sessions(self) -> list[WtsSession]:
        infos = ctypes.POINTER(WTS_SESSION_INFOW)()
        count = ctypes.c_uint32()
        if not self._w.WTSEnumerateSessionsW(None, 0, 1, ctypes.byref(infos),
                                             ctypes.byref(count)):
            raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]
        try:
            listed = [(int(infos[i].SessionId), infos[i].pWinStationName, int(infos[i].State))
                      for i in range(count.value)]
            listed = [(sid, utf16z_at(p) if p else "", st) for sid, p, st in listed]
        finally:
            self._w.WTSFreeMemory(infos)
        out = []
        for sid, station, state in listed:
            user_raw = self._query(sid, WTS_USER_NAME)
            user = (user_raw.decode("utf-16-le", "replace").split("\0", 1)[0]
                    if user_raw else "")
            flags = None
            if state == WTS_ACTIVE and user:
                ex = self._query(sid, WTS_SESSION_INFO_EX)
                flags = lock_flags_from_infoex(ex) if ex else None
            out.append(WtsSession(sid, station, state, user, flags))
        return out


class WtsSource:
    """The console and RDP sessions someone can type into, from Remote Desktop Services.

    api: builds the Windows layer (default WtsApi), once, on the first read.
    min_interval: seconds an answer is reused (sessions come and go at human speed; a read is
        a few RPCs to the Remote Desktop Services service).
    """

    name = NAME

    def __init__(self, api: Callable[[], SessionApi] | None = None,
                 min_interval: float = 1.0) -> None:
        self._factory: Callable[[], SessionApi] = api or WtsApi
        self._api: SessionApi | None = None
        self._api_error: str | None = None
        self.min_interval = min_interval
        self._cached: tuple[float, IdleReading] | None = None
        self._lock = threading.Lock()

    def read(self) -> IdleReading:
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self.min_interval:
                return self._cached[1]
            reading = self._query()
            self._cached = (now, reading)
            return reading

    def _query(self) -> IdleReading:
        if self._api is None:
            if self._api_error is not None:
                return cannot(NAME, self._api_error)
            try:
                self._api = self._factory()
            except OSError as exc:
                self._api_error = str(exc)
                return cannot(NAME, self._api_error)
        try:
            return wts_reading(self._api.sessions())
        except OSError as exc:
            return cannot(NAME, f"WTSEnumerateSessionsW failed: {exc}")
        except Exception as exc:  # noqa: BLE001 - a source never raises
            return cannot(NAME, f"session list not understood: {exc}")

    def close(self) -> None:
        pass
