"""macOS: who is logged in, from the utmpx database (getutxent via ctypes).

loginwindow writes a USER_PROCESS entry on line "console" for every graphical login (each user
of fast user switching has one) and removes it at logout; Terminal windows and ssh logins add
entries on their ttys. An installed agent runs as a LaunchDaemon, outside every session, so this
list is what lets it tell "nobody logged in" (counts as idle) from "somebody logged in whom no
source can see" (cannot tell).

- A "console" session is told by a reporter of its user (same uid, as on Linux) or by the
  system-wide HIDIdleTime source (`macos`), which sees the input of whoever is in front.
- A terminal session (ssh, Terminal) is told by its device's access time, which the tty layer
  updates on input (what `w` shows as IDLE); a device that cannot be read is "cannot tell".
- An entry whose process is gone (loginwindow or sshd crashed before writing the logout
  record) is stale and ignored.

getutxent returns libc's own `struct utmpx`, so the on-disk record format (628-byte records in
/var/run/utmpx) does not matter. The macOS layout is `UtmpxDarwin`; `UtmpxGlibc` is glibc's
x86-64 layout, which lets the same reader run here against a real utmp file (tests). The
source itself refuses to run on Linux: there utmp misses Wayland sessions and logind is the
session list.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

from officegrid.worker.idle.base import IdleReading, SessionIdle, cannot

NAME = "utmpx"
USER_PROCESS = 7
CONSOLE = "console"  # ut_line of a graphical (loginwindow) session
DEFAULT_PATHS = {"darwin": "/var/run/utmpx", "linux": "/var/run/utmp"}


class _DarwinTimeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_usec", ctypes.c_int32)]


class UtmpxDarwin(ctypes.Structure):
    """`struct utmpx` of macOS <utmpx.h> (64-bit: time_t is 8 bytes, suseconds_t 4)."""

    _fields_ = [("ut_user", ctypes.c_char * 256), ("ut_id", ctypes.c_char * 4),
                ("ut_line", ctypes.c_char * 32), ("ut_pid", ctypes.c_int32),
                ("ut_type", ctypes.c_short), ("ut_tv", _DarwinTimeval),
                ("ut_host", ctypes.c_char * 256), ("ut_pad", ctypes.c_uint32 * 16)]


class _Timeval32(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int32), ("tv_usec", ctypes.c_int32)]


class UtmpxGlibc(ctypes.Structure):
    """`struct utmpx` of glibc on x86-64 (__WORDSIZE_TIME64_COMPAT32: 32-bit times), 384 bytes."""

    _fields_ = [("ut_type", ctypes.c_short), ("ut_pid", ctypes.c_int32),
                ("ut_line", ctypes.c_char * 32), ("ut_id", ctypes.c_char * 4),
                ("ut_user", ctypes.c_char * 32), ("ut_host", ctypes.c_char * 256),
                ("ut_exit", ctypes.c_short * 2), ("ut_session", ctypes.c_int32),
                ("ut_tv", _Timeval32), ("ut_addr_v6", ctypes.c_int32 * 4),
                ("reserved", ctypes.c_char * 20)]


def layout_for(plat: str = sys.platform, machine: str | None = None) -> type[ctypes.Structure]:
    """The `struct utmpx` layout of this libc. Raises OSError where none is known."""
    if plat == "darwin":
        return UtmpxDarwin
    machine = machine or platform.machine()
    if plat.startswith("linux") and machine in ("x86_64", "AMD64"):
        return UtmpxGlibc
    raise OSError(f"no known struct utmpx layout for {plat}/{machine}")


class LoginEntry(NamedTuple):
    """One utmpx record: type (USER_PROCESS = 7), user, line ("console", "ttys001"), host
    (remote host or ""), pid of the process that wrote it, login time (time.time() seconds)."""

    type: int
    user: str
    line: str
    host: str
    pid: int
    login_time: float


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def entry_from_struct(rec: ctypes.Structure) -> LoginEntry:
    """A LoginEntry from a UtmpxDarwin or UtmpxGlibc record."""
    return LoginEntry(int(rec.ut_type), _text(rec.ut_user), _text(rec.ut_line),  # type: ignore[attr-defined]
                      _text(rec.ut_host), int(rec.ut_pid),  # type: ignore[attr-defined]
                      rec.ut_tv.tv_sec + rec.ut_tv.tv_usec / 1e6)  # type: ignore[attr-defined]


_libc_lock = threading.Lock()  # getutxent keeps its position in libc's static state


def read_utmpx(path: str | None = None, layout: type[ctypes.Structure] | None = None,
               plat: str = sys.platform) -> list[LoginEntry]:
    """Every record of the utmpx database, read with libc's setutxent/getutxent/endutxent.

    path: another database file (utmpxname), restored to the default afterwards; None reads
        the system's. layout: the libc's struct (default layout_for(plat)).
    Raises OSError when libc lacks the functions, there is no known layout, or utmpxname
    refuses the path.
    """
    layout = layout or layout_for(plat)
    libc = ctypes.CDLL(None)
    try:
        getutxent, setutxent, endutxent = libc.getutxent, libc.setutxent, libc.endutxent
    except AttributeError as exc:
        raise OSError(f"libc has no getutxent: {exc}") from exc
    getutxent.restype = ctypes.POINTER(layout)
    getutxent.argtypes = []
    setutxent.restype = endutxent.restype = None
    out: list[LoginEntry] = []
    with _libc_lock:
        if path is not None:
            utmpxname = libc.utmpxname
            utmpxname.argtypes = [ctypes.c_char_p]
            utmpxname.restype = ctypes.c_int
            # glibc returns 0 on success and -1 on failure; macOS 1 and 0
            failed = 0 if plat == "darwin" else -1
            if utmpxname(os.fsencode(path)) == failed:
                raise OSError(f"utmpxname refused {path}")
        try:
            setutxent()
            try:
                while True:
                    rec = getutxent()
                    if not rec:
                        break
                    out.append(entry_from_struct(rec.contents))
            finally:
                endutxent()
        finally:
            if path is not None:
                default = DEFAULT_PATHS.get("darwin" if plat == "darwin" else "linux")
                libc.utmpxname(os.fsencode(default))
    return out


_uids: dict[str, int] = {}  # a user's uid does not change; failures are asked again


def _uid_of(user: str) -> int | None:
    """The uid of `user` (None if unknown); a lookup may ask the directory service."""
    if user in _uids:
        return _uids[user]
    try:
        import pwd

        uid = pwd.getpwnam(user).pw_uid
    except (ImportError, KeyError):
        return None
    _uids[user] = uid
    return uid


def _tty_atime(line: str) -> float | None:
    try:
        return os.stat(line if line.startswith("/") else f"/dev/{line}").st_atime
    except OSError:
        return None


def _alive(pid: int) -> bool:
    import psutil

    return pid > 0 and psutil.pid_exists(pid)


def utmpx_reading(entries: Iterable[LoginEntry], *, now: float | None = None,
                  uid_of: Callable[[str], int | None] = _uid_of,
                  tty_atime: Callable[[str], float | None] = _tty_atime,
                  alive: Callable[[int], bool] = _alive) -> IdleReading:
    """One reading from utmpx records: the logged-in sessions, each a per_session entry.

    Only USER_PROCESS records with a user count, and only while their process lives. A
    "console" session has no idle time of its own (a reporter or HIDIdleTime must tell it);
    a terminal session's idle time is now minus its device's access time (None if the device
    cannot be read). One session per user and line: with fast user switching every logged-in
    user has a "console" entry, and each must be covered. No session: sessions=0, which with no
    fresh reporter means nobody is logged in. now: time.time() seconds (default: now).
    """
    now = time.time() if now is None else now
    by_line: dict[tuple[str, str], LoginEntry] = {}
    stale = 0
    for e in entries:
        if e.type != USER_PROCESS or not e.user or not e.line:
            continue
        if not alive(e.pid):
            stale += 1
            continue
        key = (e.user, e.line)
        if key not in by_line or e.login_time >= by_line[key].login_time:
            by_line[key] = e
    note = f" ({stale} stale entr{'y' if stale == 1 else 'ies'} ignored)" if stale else ""
    if not by_line:
        return cannot(NAME, "no user logged in" + note, sessions=0)
    per: list[SessionIdle] = []
    parts: list[str] = []
    for (_, line), e in sorted(by_line.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        idle: float | None = None
        text = f"{e.user} on {line}" + (f" from {e.host}" if e.host else "")
        if line != CONSOLE:
            atime = tty_atime(line)
            if atime is None:
                text += " (terminal unreadable)"
            else:
                idle = max(0.0, now - atime)
                text += f" (idle {idle:.0f} s)"
        per.append(SessionIdle(uid_of(e.user), line, idle))
        parts.append(text)
    return cannot(NAME, f"{len(per)} session(s): {', '.join(parts)}{note}",
                  sessions=len(per), per_session=tuple(per))


class UtmpxSource:
    """Logged-in sessions from utmpx (macOS only).

    min_interval: seconds the record list is reused (logins come and go at human speed);
    terminal access times are read afresh on every read.
    """

    name = NAME

    def __init__(self, path: str | None = None, plat: str = sys.platform,
                 min_interval: float = 1.0) -> None:
        self._path = path
        self._plat = plat
        self.min_interval = min_interval
        self._cached: tuple[float, list[LoginEntry]] | None = None
        self._lock = threading.Lock()

    def read(self) -> IdleReading:
        if self._plat != "darwin":
            return cannot(NAME, f"not macOS ({self._plat}); on Linux logind lists sessions")
        with self._lock:
            try:
                mono = time.monotonic()
                if self._cached is None or mono - self._cached[0] >= self.min_interval:
                    self._cached = (mono, read_utmpx(self._path, plat=self._plat))
                return utmpx_reading(self._cached[1])
            except Exception as exc:  # noqa: BLE001 - a source never raises
                self._cached = None
                return cannot(NAME, f"reading utmpx failed: {exc}")

    def close(self) -> None:
        pass
