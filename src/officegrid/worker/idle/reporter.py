"""The session reporter channel: per-session JSON files the agent reads.

The agent runs as a service, outside the owner's graphical session, so it cannot ask the X
server or the session bus itself. `officegrid idle-reporter` runs inside the session (started at
logon) and writes what the session's own sources see into
``<work_dir>/sessions/<uid>-<session>.json`` atomically (temporary file + rename), about every
second and at once when input, presence or lock state change. The agent reads every fresh file;
a file older than STALE_SECONDS is a reporter that is gone and is ignored (not "idle").

The sessions directory is world-writable with the sticky bit (like /tmp) and owned by root
(installed service) or by the user running both agent and reporter, so every user's reporter
can write its own file and nobody can replace another's. Reporters write through a directory fd
opened without following symlinks (open_sessions_dir); the reader opens only regular,
singly-linked, small files, never follows a symlink or blocks on a FIFO, and checks that a file
is owned by the uid its report claims. A report only vouches for sessions of its own uid (see
officegrid.worker.idle.combine).

The same directory carries the owner's pauses (``<uid>.pause``) and the agent's status
(``<uid>.agent``): see officegrid.worker.pause. Only ``*.json`` files are reports.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from officegrid.worker.idle.base import IdleReading, SessionIdle, cannot

NAME = "reporter"
STALE_SECONDS = 5.0  # a reporter writes every ~1 s; 5 missed writes = gone
WRITE_INTERVAL = 1.0  # seconds between writes when nothing changes
POLL_INTERVAL = 0.2  # seconds between reads of the session's sources (input shows within this)
FORMAT = 1
MAX_REPORT_BYTES = 16 << 10  # a report is a few hundred bytes


def sessions_dir(work_dir: Path) -> Path:
    """Where reporters write: ``<work_dir>/sessions``."""
    return Path(work_dir) / "sessions"


def open_sessions_dir(work_dir: Path) -> int | None:
    """Create ``<work_dir>/sessions`` if missing (mode 1777), check it, and open it.

    Returns a directory fd to write through (None on Windows, where ACLs apply and writes go
    by path). Whoever owns the work dir (job code runs as the service account) can swap
    ``sessions`` for a symlink or a directory of their own; following one would let them
    redirect this user's reports, or (when this process created nothing but chmod-ed what it
    found) make a directory of this user's world-writable. So the directory is opened without
    following a symlink, chmod-ed only when this process created it, and refused when owned
    by anyone but root or this user, or world-writable without the sticky bit.
    Raises PermissionError naming the directory and the problem; OSError if it cannot be made.
    """
    d = sessions_dir(work_dir)
    d.parent.mkdir(parents=True, exist_ok=True)
    created = False
    try:
        os.mkdir(d, 0o700)
        created = True
    except FileExistsError:
        pass
    if sys.platform == "win32":
        return None
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise PermissionError(f"{d}: not a plain directory (a symlink?): {exc}") from exc
    try:
        st = os.fstat(fd)
        if created and st.st_uid == os.geteuid():
            os.fchmod(fd, 0o1777)  # every user's reporter writes here; nobody replaces others'
            st = os.fstat(fd)
        problem = None
        if st.st_uid not in (0, os.geteuid()):
            problem = f"owned by uid {st.st_uid}, not by root or this user"
        elif st.st_mode & 0o002 and not st.st_mode & stat.S_ISVTX:
            problem = "world-writable without the sticky bit"
        if problem:
            raise PermissionError(f"{d}: unsafe sessions directory ({problem}); "
                                  "reinstall the service (`officegrid worker install`)")
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass(frozen=True)
class Report:
    """What one session's reporter said (times are time.time() seconds)."""

    uid: int
    session: str
    written_at: float
    idle_seconds: float | None
    present: bool
    locked: bool | None
    detail: str

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "uid": self.uid, "session": self.session,
                           "written_at": self.written_at, "idle_seconds": self.idle_seconds,
                           "present": self.present, "locked": self.locked,
                           "detail": self.detail})

    @classmethod
    def from_json(cls, text: str) -> Report:
        """Parse a report; raises ValueError naming what is wrong."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from exc
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, dict) else d
            raise ValueError(f"unknown report format {got!r}")
        try:
            idle = d["idle_seconds"]
            return cls(uid=int(d["uid"]), session=str(d["session"]),
                       written_at=float(d["written_at"]),
                       idle_seconds=None if idle is None else float(idle),
                       present=bool(d["present"]),
                       locked=None if d.get("locked") is None else bool(d["locked"]),
                       detail=str(d.get("detail", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad field: {exc}") from exc


def report_name(uid: int, session: str) -> str:
    """The file name of a session's report: ``<uid>-<session>.json`` (session made safe)."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in session)
    return f"{uid}-{safe}.json"


def write_report(directory: Path, report: Report, dir_fd: int | None = None) -> Path:
    """Atomically replace ``<directory>/<uid>-<session>.json`` (mode 0644); returns its path.

    dir_fd: an open fd of `directory` (open_sessions_dir): every step then goes through it,
    so the directory cannot be swapped for a symlink in between. Raises OSError.
    """
    return write_atomic(directory, report_name(report.uid, report.session), report.to_json(),
                        dir_fd=dir_fd, prefix=str(report.uid))


def write_atomic(directory: Path, name: str, text: str, dir_fd: int | None = None,
                 prefix: str = "") -> Path:
    """Atomically replace ``<directory>/<name>`` with `text` (mode 0644, readable by the
    agent's account): a temporary file created with O_EXCL | O_NOFOLLOW, then a rename, both
    through `dir_fd` when given (see write_report). Used for session reports, owner pauses
    and the agent's status (officegrid.worker.pause). Returns the path; raises OSError.
    """
    path = Path(directory) / name
    if sys.platform == "win32":
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{prefix}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY) if dir_fd is None else dir_fd
    tmp = f".{prefix}-{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                     dir_fd=dfd)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
                os.fchmod(fh.fileno(), 0o644)  # the agent's account must read it
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
    finally:
        if dir_fd is None:
            os.close(dfd)
    return path


def combine_reports(reports: list[Report], now: float | None = None,
                    stale: float = STALE_SECONDS) -> IdleReading:
    """One reading from the sessions' reports: the smallest idle time over fresh reports.

    Reports older than `stale` seconds (or from the future by more than that) are ignored.
    One fresh session that cannot tell makes the answer "cannot tell".
    """
    now = time.time() if now is None else now
    fresh = [r for r in reports if abs(now - r.written_at) <= stale]
    ignored = len(reports) - len(fresh)
    note = f" ({ignored} stale ignored)" if ignored else ""
    if not fresh:
        return cannot(NAME, "no reporter running" + note, sessions=0)
    present = any(r.present for r in fresh)
    locks = [r.locked for r in fresh if r.locked is not None]
    locked = all(locks) if locks and len(locks) == len(fresh) else None
    per_session = tuple(
        SessionIdle(r.uid, r.session, None if r.idle_seconds is None
                    else r.idle_seconds + max(0.0, now - r.written_at))
        for r in fresh)
    unknown = [f"{r.uid}-{r.session}: {r.detail}" for r in fresh if r.idle_seconds is None]
    if unknown:
        return cannot(NAME, "; ".join(unknown) + note, present=present, sessions=len(fresh),
                      locked=locked, per_session=per_session)
    idle = min(s.idle_seconds for s in per_session)  # type: ignore[type-var]
    who = ", ".join(f"{r.uid}-{r.session}" for r in fresh)
    return IdleReading(NAME, idle, f"{len(fresh)} session(s): {who}{note}", present=present,
                       sessions=len(fresh), locked=locked, per_session=per_session)


def open_small_file(path: str, dir_fd: int | None = None) -> tuple[str, int] | None:
    """(text, owner uid) of a regular file of the sessions directory, or None for anything
    else (`path` relative to `dir_fd` when given).

    The sessions directory is world-writable: another user may plant a symlink (to a file the
    agent can read, or to /dev/zero), a FIFO (open() would block the owner monitor forever), a
    hard link to someone else's file or a huge file there. None of these is opened or read
    past MAX_REPORT_BYTES.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError:
        return None  # a symlink (ELOOP), removed meanwhile, or unreadable
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_REPORT_BYTES:
            return None
        if sys.platform != "win32" and st.st_nlink != 1:
            return None  # a hard link to a file of someone else's
        data = os.read(fd, MAX_REPORT_BYTES + 1)
        if len(data) > MAX_REPORT_BYTES:
            return None
        return data.decode("utf-8", errors="replace"), st.st_uid
    except OSError:
        return None
    finally:
        os.close(fd)


def read_reports(directory: Path) -> list[Report]:
    """Every well-formed report file whose owner matches the uid in it.

    Only regular files with one link, not symlinks, at most MAX_REPORT_BYTES, are read; never
    blocks (FIFOs are skipped). Never raises for a bad or missing file or directory.
    """
    out: list[Report] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return out
    for entry in entries:
        if not entry.name.endswith(".json") or entry.name.startswith("."):
            continue
        opened = open_small_file(entry.path)
        if opened is None:
            continue
        text, st_uid = opened
        try:
            report = Report.from_json(text)
        except ValueError:
            continue  # garbage: not a live reporter
        if sys.platform != "win32" and st_uid not in (report.uid, 0):
            continue  # a file claiming another user's session
        if sys.platform == "win32":  # no uids: the owner SID must be the session's user
            from officegrid.worker.idle.winowner import report_owner_ok

            if not report_owner_ok(entry.path, report.session):
                continue
        out.append(report)
    return out


def remove_stale(directory: Path, uid: int, now: float | None = None,
                 dir_fd: int | None = None) -> int:
    """Delete `uid`'s report files that are stale (reporters killed without cleanup).

    dir_fd: an open fd of `directory` to unlink through (see write_report).
    Returns how many were removed. Other users' files are left alone (the sticky directory
    would refuse anyway)."""
    now = time.time() if now is None else now
    removed = 0
    for report in read_reports(directory):
        if report.uid == uid and now - report.written_at > STALE_SECONDS:
            name = report_name(uid, report.session)
            try:
                if dir_fd is None:
                    (Path(directory) / name).unlink()
                else:
                    os.unlink(name, dir_fd=dir_fd)
                removed += 1
            except OSError:
                pass
    return removed


class ReporterSource:
    """Fresh reports of the session reporters under ``<work_dir>/sessions``."""

    name = NAME

    def __init__(self, work_dir: Path | None) -> None:
        self._dir = sessions_dir(work_dir) if work_dir is not None else None

    def read(self) -> IdleReading:
        if self._dir is None:
            return cannot(NAME, "no work dir given", sessions=None)
        try:
            return combine_reports(read_reports(self._dir))
        except Exception as exc:  # noqa: BLE001 - a source never raises
            return cannot(NAME, f"reading {self._dir} failed: {exc}")

    def close(self) -> None:
        pass


def _windows_session_number() -> str:  # pragma: no cover - Windows only
    import ctypes

    number = ctypes.c_uint32()
    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    if kernel32.ProcessIdToSessionId(kernel32.GetCurrentProcessId(), ctypes.byref(number)):
        return str(number.value)
    return os.environ.get("SESSIONNAME", f"pid{os.getpid()}")


def session_id(platform: str = sys.platform) -> str:
    """This login session's id: XDG_SESSION_ID, else the display, else the process id.

    Windows has no uid (every report says uid 0) and SESSIONNAME is "Console" for whoever
    logged on at the console, so two users switched on one desktop would write the same file:
    there it is "<USERNAME>-<session number>".
    """
    if platform == "win32":
        return f"{os.environ.get('USERNAME', 'user')}-{_windows_session_number()}"
    for var in ("XDG_SESSION_ID", "WAYLAND_DISPLAY", "DISPLAY", "SESSIONNAME"):
        value = os.environ.get(var)
        if value:
            return value.replace(":", "display")
    return f"pid{os.getpid()}"


def run_reporter(work_dir: Path, read: Callable[[], Any], *, once: bool = False,
                 stop: Callable[[], bool] = lambda: False) -> int:
    """Report this session until SIGTERM/SIGINT (or `stop()` is true); returns an exit code.

    read: returns an IdleStatus (idle_seconds, present, locked, readings) of the session's own
    sources. Writes at once when the idle time dropped (input), presence or lock changed,
    otherwise every WRITE_INTERVAL seconds. The file is removed on exit. Raises
    PermissionError for an unsafe sessions directory (see open_sessions_dir).
    """
    dir_fd = open_sessions_dir(work_dir)  # raises PermissionError for an unsafe directory
    directory = sessions_dir(work_dir)
    uid = os.getuid() if hasattr(os, "getuid") else 0
    sid = session_id()
    remove_stale(directory, uid, dir_fd=dir_fd)
    stopping = False

    def _stop(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    path: Path | None = None
    last: tuple | None = None
    last_write = 0.0
    try:
        while not stopping and not stop():
            status = read()
            now = time.time()
            idle = status.idle_seconds
            detail = "; ".join(f"{r.source}: {r.detail}" for r in status.readings)
            key = (idle is None, bool(status.present), getattr(status, "locked", None))
            dropped = (last is not None and idle is not None and last[3] is not None
                       and idle < last[3] + (now - last_write) - 0.5)
            if last is None or key != last[:3] or dropped or now - last_write >= WRITE_INTERVAL:
                path = write_report(directory, Report(uid, sid, now, idle, bool(status.present),
                                                      getattr(status, "locked", None), detail),
                                    dir_fd=dir_fd)
                last = (*key, idle)
                last_write = now
            if once:
                break
            time.sleep(POLL_INTERVAL)
    finally:
        if path is not None and not once:
            with contextlib.suppress(FileNotFoundError):
                if dir_fd is None:
                    path.unlink()
                else:
                    os.unlink(path.name, dir_fd=dir_fd)
        if dir_fd is not None:
            os.close(dir_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
