"""Owner pauses (``officegrid pause [DURATION]`` / ``resume``) over the sessions channel.

An installed agent runs as the ``officegrid`` account and owns its work dir: the desktop's
owner cannot write there. So a pause goes where the session reporters write
(officegrid.worker.idle.reporter): the sticky, world-writable ``<work_dir>/sessions`` directory,
owned by root (installed service) or by the user who runs both agent and CLI (by hand). Each
user has one pause file there, ``<uid>.pause``: ``{"format": 1, "uid": UID, "user": NAME,
"until": epoch seconds | null (until resume), "since": epoch seconds}``, written atomically.

The agent (:class:`PauseWatch`, called on every 0.2 s tick of the owner monitor) lists the
directory and honours every pause in force. A pause file counts only if it is a regular,
singly-linked, small file (no symlink, FIFO or hard link is opened; see
``reporter.open_small_file``), named after its owner's uid, with that uid inside: its user is
the file's owner, never a name it claims, so the operator sees "paused by owner (alice)" for
alice only when alice wrote it.

Who may end a pause: only the user who set it (``officegrid resume`` removes that user's own
file), or root (``officegrid resume --all``, also the by-hand owner of the directory), or its
end time. The sticky bit enforces this: nobody can delete or replace another user's file. So
on a shared desktop one user cannot undo another's pause (e.g. during a presentation); the
worker runs again when no pause is in force.

The agent also writes its own status, ``<agent uid>.agent`` (pid, the pauses it honours),
at once when that changes and every STATUS_INTERVAL seconds, so the CLI can say whether an
agent runs on a work dir and whether it saw the pause. The CLI trusts only a status file owned
by the work dir's owner (the account the agent runs as).

The agent pins the sessions directory (an fd opened at start): job code runs as the agent's
account, which owns the work dir and could otherwise rename ``sessions`` away and put an empty
directory of its own in its place, lifting the owner's pause. A replacement is followed only
when it is root's (or, for an agent run by hand, also its own user's when the pinned one was).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from officegrid.worker.idle.reporter import (
    open_sessions_dir,
    open_small_file,
    sessions_dir,
    write_atomic,
)

log = logging.getLogger("officegrid.worker.pause")

PAUSE_SUFFIX = ".pause"
AGENT_SUFFIX = ".agent"
FORMAT = 1
STATUS_INTERVAL = 5.0  # seconds between rewrites of the agent's status when nothing changes
STATUS_STALE = 15.0  # an older status is an agent that is gone
REOPEN_INTERVAL = 5.0  # seconds between attempts to open a sessions dir that failed


def _uid() -> int:
    return os.geteuid() if hasattr(os, "geteuid") else 0


def _user_name(uid: int) -> str:
    """The login name of `uid` (``uid N`` if it has none)."""
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return f"uid {uid}"


def me() -> str:
    """This user's key in the channel: the uid (POSIX); the user name on Windows, where
    every report says uid 0 (the sessions folder's ACL protects each creator's files)."""
    if sys.platform == "win32":
        return "".join(c if c.isalnum() or c in "-_." else "_"
                       for c in os.environ.get("USERNAME", "user"))
    return str(_uid())


def pause_name(key: str | None = None) -> str:
    """The pause file name of user `key` (default: this user): ``<uid>.pause``."""
    return f"{key or me()}{PAUSE_SUFFIX}"


@dataclass(frozen=True)
class Pause:
    """One user's pause. until: time.time() seconds, math.inf = until resumed."""

    key: str
    user: str
    until: float
    since: float

    def active(self, now: float) -> bool:
        """True while the pause is in force at `now`."""
        return self.until > now


@dataclass(frozen=True)
class AgentStatus:
    """What a running agent last said about itself (see :meth:`PauseWatch.poll`)."""

    key: str
    pid: int
    written_at: float
    paused_by: tuple[str, ...]  # keys of the users whose pauses it honours
    users: tuple[str, ...]
    until: float | None  # math.inf: until resumed; None: not paused
    # The agent's owner policy (PolicySettings fields that are set), so `officegrid idle`
    # evaluates the policy the agent uses, not whatever config the caller's directory has.
    policy: dict | None = None

    def live(self, now: float | None = None) -> bool:
        """Fresh (written within STATUS_STALE seconds) and its process exists."""
        now = time.time() if now is None else now
        if abs(now - self.written_at) > STATUS_STALE:
            return False
        try:
            import psutil

            return psutil.pid_exists(self.pid)
        except Exception:  # noqa: BLE001 - no psutil: trust the time stamp
            return True


def _parse_pause(name: str, text: str, st_uid: int) -> Pause | None:
    """A pause from file `name` owned by `st_uid`, or None if it does not hold up."""
    key = name[: -len(PAUSE_SUFFIX)]
    try:
        body = json.loads(text)
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            return None
        until = body.get("until")
        until = math.inf if until is None else float(until)
        since = float(body.get("since", 0.0))
        if math.isnan(until) or math.isnan(since):
            return None
        if sys.platform == "win32":
            user = str(body.get("user") or key)
        else:
            # Its user is its owner: the name, the uid inside and the file's owner agree.
            if key != str(st_uid) or int(body.get("uid", -1)) != st_uid:
                return None
            user = _user_name(st_uid)
    except (ValueError, TypeError, AttributeError):
        return None
    return Pause(key, user, until, since)


def _parse_status(name: str, text: str, st_uid: int) -> AgentStatus | None:
    key = name[: -len(AGENT_SUFFIX)]
    try:
        body = json.loads(text)
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            return None
        if sys.platform != "win32" and (key != str(st_uid) or int(body["uid"]) != st_uid):
            return None
        until = body.get("until")
        paused = bool(body.get("paused"))
        policy = body.get("policy")
        return AgentStatus(key, int(body["pid"]), float(body["written_at"]),
                           tuple(str(k) for k in body.get("paused_by", ())),
                           tuple(str(u) for u in body.get("users", ())),
                           (math.inf if until is None else float(until)) if paused else None,
                           policy if isinstance(policy, dict) else None)
    except (KeyError, ValueError, TypeError, AttributeError):
        return None


def _scan(directory: Path, suffix: str, dir_fd: int | None = None
          ) -> list[tuple[str, str, int]]:
    """(name, text, owner uid) of each safe ``*<suffix>`` file (never raises, never blocks)."""
    out = []
    try:
        with os.scandir(directory if dir_fd is None else dir_fd) as it:
            names = [e.name for e in it if e.name.endswith(suffix)
                     and not e.name.startswith(".")]
    except OSError:
        return out
    for name in names:
        path = str(Path(directory) / name)
        opened = open_small_file(name if dir_fd is not None else path, dir_fd=dir_fd)
        if opened is None:
            continue
        if sys.platform == "win32":
            # No owner uid there: the file's owner account must be the user its name gives.
            from officegrid.worker.idle.winowner import file_owned_by

            if not file_owned_by(path, name[: -len(suffix)]):
                continue
        out.append((name, *opened))
    return out


def read_pauses(work_dir: Path) -> list[Pause]:
    """Every valid pause file of the agent of `work_dir` (in force or not)."""
    return [p for name, text, uid in _scan(sessions_dir(work_dir), PAUSE_SUFFIX)
            if (p := _parse_pause(name, text, uid)) is not None]


def pause_state(pauses: list[Pause], now: float | None = None
                ) -> tuple[float | None, str | None]:
    """(until, who) over the pauses in force: the latest end (math.inf: until resumed) and
    the users' names ("alice, bob"); (None, None) when none is in force."""
    now = time.time() if now is None else now
    live = [p for p in pauses if p.active(now)]
    if not live:
        return None, None
    return max(p.until for p in live), ", ".join(sorted({p.user for p in live}))


def write_pause(work_dir: Path, until: float) -> Path:
    """Pause the agent of `work_dir` for this user until `until` (time.time() seconds;
    math.inf: until :func:`clear_pause`). Replaces this user's earlier pause. Returns the path.

    Raises PermissionError for an unsafe or foreign sessions directory (naming it), OSError
    if it cannot be created or written.
    """
    dir_fd = open_sessions_dir(work_dir)
    try:
        body = {"format": FORMAT, "uid": _uid(), "user": os.environ.get("USERNAME")
                if sys.platform == "win32" else _user_name(_uid()),
                "until": None if math.isinf(until) else until, "since": time.time()}
        return write_atomic(sessions_dir(work_dir), pause_name(), json.dumps(body),
                            dir_fd=dir_fd, prefix=me())
    finally:
        if dir_fd is not None:
            os.close(dir_fd)


def clear_pause(work_dir: Path, everyone: bool = False) -> list[str]:
    """End this user's pause (``everyone``: every user's, which only root or the owner of the
    sessions directory may do). Returns the names of the users whose pause files were removed
    (empty: there was none).

    Raises PermissionError naming the users whose pauses this user may not end, or an unsafe
    sessions directory.
    """
    d = sessions_dir(work_dir)
    if not d.is_dir():
        return []
    dir_fd = open_sessions_dir(work_dir)  # the same checks as for writing
    try:
        if everyone:
            # Every *.pause name; one that does not hold up (another user's name) pauses
            # nothing, but goes too.
            with os.scandir(d if dir_fd is None else dir_fd) as it:
                names = [e.name for e in it if e.name.endswith(PAUSE_SUFFIX)
                         and not e.name.startswith(".")]
            parsed = {name: p.user for name, text, uid in _scan(d, PAUSE_SUFFIX, dir_fd)
                      if (p := _parse_pause(name, text, uid)) is not None}
            targets = [(n, parsed.get(n, n)) for n in names]
        else:
            targets = [(pause_name(), _user_name(_uid()) if sys.platform != "win32"
                        else me())]
        removed, refused = [], []
        for name, user in targets:
            try:
                if dir_fd is None:
                    (d / name).unlink()
                else:
                    os.unlink(name, dir_fd=dir_fd)
                removed.append(user)
            except FileNotFoundError:
                pass
            except PermissionError:
                refused.append(user)
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    if refused:
        raise PermissionError(f"cannot end the pause of {', '.join(refused)}: only that user "
                              "or root may (the sessions directory is sticky)")
    return removed


def find_agent(work_dir: Path) -> AgentStatus | None:
    """The live agent of `work_dir` (None if none runs or it says nothing). Only a status file
    owned by the work dir's owner, the account the agent runs as, is believed."""
    try:
        owner = os.stat(work_dir).st_uid
    except OSError:
        return None
    for name, text, uid in _scan(sessions_dir(work_dir), AGENT_SUFFIX):
        if sys.platform != "win32" and uid != owner:
            continue
        status = _parse_status(name, text, uid)
        if status is not None and status.live():
            return status
    return None


class PauseWatch:
    """The agent's side: the owner pauses in force, read on every monitor tick.

    :meth:`poll` lists the pinned sessions directory (a few entries: one ``scandir``), parses
    only pause files that changed since the last tick, and rewrites the agent's status file
    when the answer changed (else every STATUS_INTERVAL seconds). Never raises. ``policy``
    (JSON-able: the set fields of the agent's PolicySettings) goes into the status too.
    """

    def __init__(self, work_dir: Path, policy: dict | None = None) -> None:
        self.work_dir = Path(work_dir)
        self.policy = policy
        self.dir = sessions_dir(self.work_dir)
        self._fd: int | None = None
        self._pinned: os.stat_result | None = None
        self._retry_at = 0.0
        self._cache: dict[str, tuple[tuple, Pause | None]] = {}
        self._status_key: tuple | None = None
        self._status_at = -math.inf
        self._warned: set[str] = set()
        self._closed = False
        self._by_path = False  # Windows: no directory fds; read by path

    def _warn(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("%s", message)

    def _open(self, mono: float) -> None:
        if mono < self._retry_at:
            return
        try:
            fd = open_sessions_dir(self.work_dir)  # creates it (by hand); refuses unsafe ones
        except OSError as exc:
            self._retry_at = mono + REOPEN_INTERVAL
            self._warn("open", f"owner pauses (`officegrid pause`) cannot be read: {exc}")
            return
        if fd is None:  # Windows: read by path (the folder's ACL protects it)
            self._by_path = True
            return
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._pinned = fd, os.fstat(fd)
        self._warned.discard("open")

    def _check_replaced(self, mono: float) -> None:
        """Follow a replaced sessions directory only when that is safe (see the module doc)."""
        assert self._fd is not None and self._pinned is not None
        try:
            st = os.stat(self.dir, follow_symlinks=False)
        except OSError:
            st = None
        pinned = self._pinned
        if st is not None and (st.st_dev, st.st_ino) == (pinned.st_dev, pinned.st_ino):
            return
        me = _uid()
        ok = st is None or (stat.S_ISDIR(st.st_mode) and (
            st.st_uid == 0 or (st.st_uid == me and pinned.st_uid == me)))
        if st is None and pinned.st_uid != me:
            ok = False  # root's directory is gone: a new one of ours would be job code's
        if ok:
            self._open(mono)  # re-creates a removed directory of our own
            return
        self._warn("replaced", f"{self.dir} was replaced by a directory owned by uid "
                   f"{None if st is None else st.st_uid}; still reading the original one "
                   "(reinstall the service: `officegrid worker install`)")

    def poll(self, now: float | None = None) -> tuple[float | None, str | None]:
        """(until, who): the latest end of the pauses in force (math.inf: until resumed) and
        the names of the users who set them; (None, None) when the agent is not paused."""
        now = time.time() if now is None else now
        mono = time.monotonic()
        if self._closed:
            return None, None
        if self._fd is None and not self._by_path:
            self._open(mono)
            if self._fd is None and not self._by_path:
                return None, None  # cannot read pauses (warned): not paused
        elif self._fd is not None:
            self._check_replaced(mono)
        pauses = []
        seen = set()
        try:
            with os.scandir(self.dir if self._fd is None else self._fd) as it:
                entries = [e for e in it if e.name.endswith(PAUSE_SUFFIX)
                           and not e.name.startswith(".")]
            for e in entries:
                seen.add(e.name)
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                sig = (st.st_ino, st.st_mtime_ns, st.st_size, st.st_uid, st.st_mode)
                cached = self._cache.get(e.name)
                if cached is None or cached[0] != sig:
                    path = e.name if self._fd is not None else str(self.dir / e.name)
                    opened = open_small_file(path, dir_fd=self._fd)
                    parsed = None if opened is None else _parse_pause(e.name, *opened)
                    cached = self._cache[e.name] = (sig, parsed)
                if cached[1] is not None:
                    pauses.append(cached[1])
        except OSError as exc:
            self._warn("scan", f"reading owner pauses in {self.dir} failed: {exc}")
        for name in set(self._cache) - seen:
            del self._cache[name]
        until, who = pause_state(pauses, now)
        keys = tuple(sorted(p.key for p in pauses if p.active(now)))
        self._write_status((until, keys), who, now, mono)
        return until, who

    def _write_status(self, key: tuple, who: str | None, now: float, mono: float) -> None:
        if key == self._status_key and mono - self._status_at < STATUS_INTERVAL:
            return
        until, keys = key
        body = {"format": FORMAT, "uid": _uid(), "pid": os.getpid(), "written_at": now,
                "paused": until is not None,
                "until": None if until is None or math.isinf(until) else until,
                "paused_by": list(keys), "users": who.split(", ") if who else []}
        if self.policy is not None:
            body["policy"] = self.policy
        self._status_key, self._status_at = key, mono
        try:
            write_atomic(self.dir, f"{me()}{AGENT_SUFFIX}", json.dumps(body),
                         dir_fd=self._fd, prefix=me())
        except OSError as exc:
            self._warn("status", f"cannot write the agent's status into {self.dir}: {exc}")

    def close(self) -> None:
        """Remove the agent's status file (the CLI then says no agent runs) and unpin."""
        self._closed = True
        name = f"{me()}{AGENT_SUFFIX}"
        with contextlib.suppress(OSError):
            if self._fd is not None:
                os.unlink(name, dir_fd=self._fd)
            elif self._status_key is not None:
                (self.dir / name).unlink()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
