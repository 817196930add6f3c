"""cgroup v2 control of unit trees (Linux): freeze, kill and memory.max (issue 5, items 4 and 6).

Signals reach a unit tree through its process group and its marker (``processes.py``); a process
that leaves both (``setsid`` after clearing its environment) escapes them. A cgroup cannot be left
by accident: every process the runner starts is born in the runner's cgroup, whatever it does with
sessions, groups or its environment. So where the agent has a writable cgroup v2 subtree, each
unit runs in its own cgroup ``<base>/unit-<attempt>`` and

* suspend writes ``1`` to ``cgroup.freeze`` and awaits ``frozen 1`` in ``cgroup.events`` (the
  kernel freezes the whole cgroup at once, also a process forking at that moment);
* resume writes ``0``;
* kill writes ``1`` to ``cgroup.kill`` (Linux 5.14+; SIGKILL to every member at once, forks in
  flight included), else SIGKILLs ``cgroup.procs`` until the cgroup is empty;
* when the memory controller is delegated (``memory`` in the base's ``cgroup.controllers``),
  ``memory.max`` caps the unit (``memory.swap.max`` 0 so that the cap is not dodged by swapping
  the desktop to death, ``memory.oom.group`` 1 so that the kernel ends the unit whole), and
  ``oom_kill`` in ``memory.events`` tells the agent that the attempt went over the cap.

Where the base comes from (worker setting ``cgroup_root`` / ``OFFICEGRID_CGROUP_ROOT``):

* ``auto`` (default): the agent's own cgroup (``0::/path`` in /proc/self/cgroup, under the
  cgroup2 mount found in /proc/self/mountinfo) if it was *delegated* to it -- systemd's
  ``Delegate=yes`` (the installed unit has it) marks the cgroup with the ``trusted.delegate`` /
  ``user.delegate`` extended attribute (systemd 251+) and, for a unit with ``User=``, hands the
  directory to that user. The agent then moves itself into the leaf ``<own>/agent``: a cgroup
  whose children get controllers may hold no processes itself ("no internal processes").
  Cgroups that nobody delegated (a login session's scope, the root) are never written to.
* ``self``: the agent's own cgroup without the delegation check (the operator vouches for it).
* a path: that directory of a cgroup2 hierarchy (made if missing); used by the tests with a
  private ``mount -t cgroup2``.
* ``off``: never use cgroups.

Without a usable base everything falls back to SIGSTOP over the tree and the RSS sum (logged once
at INFO). A unit is put into its cgroup before any of its own code runs: ``spawn_runner`` starts
``/bin/sh -c 'echo 0 > <unit>/cgroup.procs && exec python runner.py ...'``: the shell moves
itself (writing ``0`` moves the writer) and then becomes the runner with the same pid, so not
even the interpreter's start-up (``.pth`` files of a release environment) runs outside the
cgroup. (``preexec_fn`` would do the same but is unsafe in the multi-threaded agent, and Python
has no ``CLONE_INTO_CGROUP``.)

An agent that dies leaves a frozen unit frozen: its runner cannot see the EOF on its stdin that
otherwise makes it end its group. Under systemd ``KillMode=control-group`` kills the whole
delegated subtree; elsewhere a small guard process (:meth:`CgroupBase.guard`), started outside
the unit cgroups, waits for the agent's pipe to close and then kills every unit cgroup the agent
made.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

UNIT_PREFIX = "unit-"
"""Unit cgroups are ``<base>/unit-<attempt id>``."""

AGENT_LEAF = "agent"
"""The leaf the agent moves itself into when it uses its own (delegated) cgroup."""

FREEZE_WAIT = 0.25
"""Seconds :meth:`UnitCgroup.freeze` waits for ``frozen 1``. Freezing takes microseconds to
milliseconds; a process in uninterruptible sleep (disk, NFS) delays it, and then the kernel
finishes the freeze on its own while the owner monitor goes on (it checks again when it
re-asserts the suspend)."""

_POLL = 0.002  # seconds between reads of cgroup.events while waiting for a state
_SETTINGS_OFF = {"off", "no", "none", "false", "0", "disabled"}

# The guard: reads unit cgroup paths, one a line, until the agent's end of the pipe closes
# (the agent exited, however it died); then thaws and kills every one that still exists.
# Thawing first makes a kernel without cgroup.kill still end the tree: the runners wake, see
# the EOF on their own stdin and kill their groups.
_GUARD = r"""
trap '' INT TERM HUP
set -f
dirs=''
while IFS= read -r d; do dirs="$dirs
$d"; done
IFS='
'
for d in $dirs; do
  [ -d "$d" ] || continue
  { echo 0 > "$d/cgroup.freeze"; } 2>/dev/null
  { echo 1 > "$d/cgroup.kill"; } 2>/dev/null
done
"""


# --------------------------------------------------------------------------------------------
# Discovery


def cgroup2_mount(mountinfo: str) -> tuple[Path, str] | None:
    """(mount point, root of the mount) of the first cgroup2 mount in ``mountinfo`` (the text of
    /proc/self/mountinfo), or None if there is none. Escaped characters (``\\040``) are decoded."""
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep or not right.startswith("cgroup2 "):
            continue
        fields = left.split()
        if len(fields) < 5:
            continue
        return Path(_unescape(fields[4])), _unescape(fields[3])
    return None


def _unescape(field: str) -> str:
    return (field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
            .replace("\\134", "\\"))


def unified_path(proc_cgroup: str) -> str | None:
    """The cgroup v2 path (``/system.slice/x.service``) in ``proc_cgroup`` (the text of
    /proc/PID/cgroup: the ``0::`` line), or None if the process has none (pure v1)."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or None
    return None


def own_cgroup_dir(proc_cgroup: str, mountinfo: str) -> Path | None:
    """The directory of this process's cgroup v2, or None (no cgroup2 mount, no ``0::`` line,
    or the cgroup lies outside what the mount shows)."""
    mount = cgroup2_mount(mountinfo)
    path = unified_path(proc_cgroup)
    if mount is None or path is None:
        return None
    point, root = mount
    root = root.rstrip("/")
    if root and path != root and not path.startswith(root + "/"):
        return None
    rel = path[len(root):].strip("/")
    return point / rel if rel else point


def is_delegated(path: Path) -> bool:
    """True if ``path`` looks delegated to this process by systemd (``Delegate=yes``): it carries
    the ``trusted.delegate`` or ``user.delegate`` extended attribute set to 1 (systemd 251+), or
    it is a service's cgroup owned by our own non-root user (systemd hands a delegated cgroup of
    a ``User=`` service to that user)."""
    for attr in ("trusted.delegate", "user.delegate"):
        with contextlib.suppress(OSError, AttributeError):
            if os.getxattr(path, attr).strip(b"\0\n ") == b"1":
                return True
    try:
        owner = path.stat().st_uid
    except OSError:
        return False
    uid = os.getuid()
    return uid != 0 and owner == uid and path.name.endswith(".service")


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK) and os.access(path / "cgroup.procs", os.W_OK)


def _read(path: Path) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


def _write(path: Path, value: str) -> None:
    # One write() of the whole value: cgroup files take one value per write.
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


def _keyed(text: str) -> dict[str, int]:
    """``"key value"`` lines (cgroup.events, memory.events) -> {key: int}."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


def discover(setting: str | os.PathLike[str] | None = None, *, proc: str = "/proc"
             ) -> CgroupBase | None:
    """The cgroup base unit cgroups are made under, per the ``cgroup_root`` worker setting
    (see the module docstring: None/``auto``, ``self``, ``off`` or a directory), or None when
    there is none: units are then suspended with SIGSTOP and their memory watched by RSS.

    The outcome (which base, whether memory.max is available, or why not) is logged once at
    INFO. Never raises: any failure means "no cgroups".
    """
    text = "auto" if setting is None else os.fspath(setting).strip()
    mode = text.lower()
    if mode in _SETTINGS_OFF or not text:
        log.info("cgroups: off (cgroup_root=%s): units are suspended with SIGSTOP", text)
        return None
    try:
        if mode in ("auto", "self"):
            base = _own_base(check_delegation=mode == "auto", proc=proc)
        else:
            base = CgroupBase.at(Path(text))
    except _NoCgroup as exc:
        log.info("cgroups: not used (%s); units are suspended with SIGSTOP over their tree and "
                 "their memory is watched by summed RSS", exc)
        return None
    base.sweep()
    log.info("cgroups: unit trees run in cgroup v2 %s/%s*: frozen to suspend, killed as a "
             "whole; memory.max %s", base.path, UNIT_PREFIX,
             "enforced" if base.memory else
             f"not available ({base.memory_reason}): memory is watched by summed RSS")
    return base


class _NoCgroup(Exception):
    """Why no cgroup base can be used (for the INFO line)."""


def _own_base(check_delegation: bool, proc: str) -> CgroupBase:
    try:
        own = own_cgroup_dir(_read(Path(proc, "self", "cgroup")),
                             _read(Path(proc, "self", "mountinfo")))
    except OSError as exc:
        raise _NoCgroup(f"cannot read /proc: {exc}") from None
    if own is None:
        raise _NoCgroup("no cgroup v2 hierarchy holds this process")
    if own.name == AGENT_LEAF and (own.parent / "cgroup.controllers").exists():
        own = own.parent  # moved there by an earlier start of this agent (an exec restart)
    if not (own / "cgroup.freeze").exists():
        raise _NoCgroup(f"{own} is a root cgroup (no cgroup.freeze)")
    if not _writable(own):
        raise _NoCgroup(f"{own} is not writable by this user")
    if check_delegation and not is_delegated(own):
        raise _NoCgroup(f"{own} was not delegated to the agent (systemd Delegate=yes; or set "
                        "cgroup_root)")
    leaf = own / AGENT_LEAF
    try:
        leaf.mkdir(exist_ok=True)
        _write(leaf / "cgroup.procs", "0")  # moves this process, all its threads
    except OSError as exc:
        raise _NoCgroup(f"cannot move the agent into {leaf}: {exc}") from None
    return CgroupBase(own, own=True)


# --------------------------------------------------------------------------------------------
# The base


class CgroupBase:
    """A cgroup v2 directory under which the agent makes one cgroup per unit.

    Attributes: ``path``; ``own`` (True: the agent's own delegated cgroup, used by this agent
    alone; False: a directory given by the operator, maybe shared); ``memory`` (True: unit
    cgroups get ``memory.max``); ``memory_reason`` (why not, for the log).
    """

    def __init__(self, path: Path, own: bool = False) -> None:
        self.path = Path(path)
        self.own = own
        self.memory_reason = ""
        self.memory = self._enable_memory()
        self._guard: subprocess.Popen | None = None
        self._guard_lock = threading.Lock()  # slots make unit cgroups from several threads
        self._guarded: list[Path] = []  # unit cgroups told to the guard

    def __repr__(self) -> str:
        return f"<CgroupBase {self.path} memory={self.memory}>"

    @classmethod
    def at(cls, path: Path) -> CgroupBase:
        """The base at ``path`` (created if missing; its parent must be a cgroup v2 directory).
        Raises _NoCgroup (internal) if it cannot be used."""
        path = Path(path)
        try:
            path.mkdir(exist_ok=True)
        except OSError as exc:
            raise _NoCgroup(f"cannot make {path}: {exc}") from None
        if not (path / "cgroup.controllers").exists():
            raise _NoCgroup(f"{path} is not in a cgroup v2 hierarchy")
        if not (path / "cgroup.freeze").exists():
            raise _NoCgroup(f"{path} is a root cgroup (no cgroup.freeze)")
        if not _writable(path):
            raise _NoCgroup(f"{path} is not writable by this user")
        return cls(path)

    def _enable_memory(self) -> bool:
        """Make the memory controller available to unit cgroups when it is delegated here: it
        must be listed in ``cgroup.controllers`` and enabled in ``cgroup.subtree_control``
        (written ``+memory`` if not yet; refused while this cgroup holds processes itself).
        Returns True if unit cgroups can be given ``memory.max``; else sets memory_reason."""
        try:
            controllers = _read(self.path / "cgroup.controllers").split()
        except OSError as exc:
            self.memory_reason = f"cannot read cgroup.controllers: {exc}"
            return False
        if "memory" not in controllers:
            self.memory_reason = "the memory controller is not delegated to " + str(self.path)
            return False
        try:
            enabled = _read(self.path / "cgroup.subtree_control").split()
        except OSError:
            enabled = []
        if "memory" in enabled:
            return True
        try:
            _write(self.path / "cgroup.subtree_control", "+memory")
        except OSError as exc:
            why = ("the cgroup holds processes itself" if exc.errno == errno.EBUSY else str(exc))
            self.memory_reason = f"cannot enable it in {self.path}: {why}"
            return False
        return True

    def unit(self, attempt: str, max_memory: int | None = None) -> UnitCgroup:
        """Make the cgroup of one attempt (``<base>/unit-<attempt>``), give it ``memory.max``
        = ``max_memory`` bytes when the memory controller is available, and register it with
        the guard. Raises OSError if the directory cannot be made (the caller then runs the
        unit without a cgroup) and ValueError for an attempt id that is not a plain name."""
        if not attempt or "/" in attempt or attempt in (".", ".."):
            raise ValueError(f"bad attempt id for a cgroup name: {attempt!r}")
        path = self.path / f"{UNIT_PREFIX}{attempt}"
        path.mkdir(exist_ok=True)
        cg = UnitCgroup(path)
        if self.memory and max_memory is not None:
            try:
                cg.limit_memory(int(max_memory))
            except OSError as exc:
                log.warning("cannot set memory.max of %s (%s): its memory is watched by "
                            "summed RSS only", path, exc)
        self._tell_guard(path)
        return cg

    # -- leftovers and the guard ----------------------------------------------------------------

    def sweep(self) -> list[str]:
        """Remove unit cgroups left by an earlier agent; returns the names removed. In the
        agent's own cgroup every ``unit-*`` is its own and is killed first; in a directory given
        by the operator (maybe shared by several agents) only empty ones are removed (the
        marker sweep and the guard of their agent end the processes)."""
        removed = []
        try:
            entries = [p for p in self.path.iterdir()
                       if p.is_dir() and p.name.startswith(UNIT_PREFIX)]
        except OSError:
            return removed
        for path in entries:
            cg = UnitCgroup(path)
            if self.own:
                with contextlib.suppress(OSError):
                    cg.kill()
                    cg.wait_empty(2.0)
            if cg.remove(timeout=0.5 if self.own else 0.0):
                removed.append(path.name)
        if removed:
            log.info("removed %d leftover unit cgroup(s) under %s", len(removed), self.path)
        return removed

    def guard(self) -> None:
        """Start the guard process (idempotent): ``/bin/sh`` in a session of its own, reading
        unit cgroup paths from a pipe held by this process; when the pipe closes (the agent
        exited, also by SIGKILL) it thaws and kills every one of them that still exists."""
        with self._guard_lock:
            self._start_guard()

    def _start_guard(self) -> None:
        if self._guard is not None and self._guard.poll() is None:
            return
        try:
            self._guard = subprocess.Popen(
                ["/bin/sh", "-c", _GUARD], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True, cwd="/")
            # A new guard (the first, or one that replaced a guard that died) learns the unit
            # cgroups that still exist.
            self._guarded = [p for p in self._guarded if p.is_dir()]
            for path in self._guarded:
                self._guard.stdin.write(os.fsencode(path) + b"\n")  # type: ignore[union-attr]
            self._guard.stdin.flush()  # type: ignore[union-attr]
        except OSError as exc:
            log.warning("cannot start the cgroup guard (%s): a unit frozen when the agent "
                        "dies stays frozen until the agent starts again", exc)
            self._guard = None

    def _tell_guard(self, path: Path) -> None:
        with self._guard_lock:
            self._start_guard()
            if len(self._guarded) >= 256:  # forget units long gone (the agent runs for weeks)
                self._guarded = [p for p in self._guarded if p.is_dir()]
            self._guarded.append(path)
            guard = self._guard
            if guard is None or guard.stdin is None:
                return
            try:
                guard.stdin.write(os.fsencode(path) + b"\n")  # < PIPE_BUF: one atomic write
                guard.stdin.flush()
            except (OSError, ValueError) as exc:
                log.warning("the cgroup guard is gone (%s)", exc)
                self._guard = None

    def close(self) -> None:
        """Close the guard's pipe (it then kills what is left of this agent's unit cgroups and
        exits) and reap it. Idempotent."""
        with self._guard_lock:
            guard, self._guard = self._guard, None
        if guard is None:
            return
        with contextlib.suppress(OSError, ValueError):
            guard.stdin.close()  # type: ignore[union-attr]
        with contextlib.suppress(subprocess.TimeoutExpired):
            guard.wait(timeout=5)


# --------------------------------------------------------------------------------------------
# One unit's cgroup


class UnitCgroup:
    """The cgroup of one attempt. Methods raise OSError when the directory is gone or a file
    cannot be written, unless they say otherwise. Attributes: ``path``, ``memory_max`` (bytes
    or None when the kernel does not cap it)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.memory_max: int | None = None

    def __repr__(self) -> str:
        return f"<UnitCgroup {self.path}>"

    @property
    def procs_file(self) -> Path:
        """The ``cgroup.procs`` file: writing a pid (0: the writer) moves that process here."""
        return self.path / "cgroup.procs"

    def limit_memory(self, max_memory: int) -> None:
        """Set ``memory.max`` to ``max_memory`` bytes; where the kernel has them, also
        ``memory.swap.max`` 0 (the cap counts what would be resident, as the RSS cap does) and
        ``memory.oom.group`` 1 (over the cap the kernel kills the whole unit, not one random
        process of it). Raises OSError if memory.max cannot be written."""
        _write(self.path / "memory.max", str(max_memory))
        self.memory_max = max_memory
        for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
            if (self.path / name).exists():
                try:
                    _write(self.path / name, value)
                except OSError as exc:
                    log.info("cannot set %s of %s: %s", name, self.path, exc)

    def procs(self) -> list[int]:
        """Pids in this cgroup ([] if it is gone)."""
        try:
            return [int(x) for x in _read(self.procs_file).split()]
        except (OSError, ValueError):
            return []

    def events(self) -> dict[str, int]:
        """``cgroup.events`` as a dict (``populated``, ``frozen``); {} if it is gone."""
        try:
            return _keyed(_read(self.path / "cgroup.events"))
        except OSError:
            return {}

    @property
    def frozen(self) -> bool:
        """True when the kernel reports the whole cgroup frozen."""
        return self.events().get("frozen") == 1

    @property
    def populated(self) -> bool:
        """True while a live process is in this cgroup (False if it is gone)."""
        return self.events().get("populated", 0) == 1

    def _await(self, key: str, value: int, timeout: float) -> bool:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            if self.events().get(key) == value:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)

    def freeze(self, timeout: float = FREEZE_WAIT) -> bool:
        """Freeze every process of the cgroup; wait up to ``timeout`` seconds for the kernel to
        report ``frozen 1``. Returns True if it did (False: still freezing, the kernel goes on
        with it). Raises OSError if cgroup.freeze cannot be written."""
        _write(self.path / "cgroup.freeze", "1")
        return self._await("frozen", 1, timeout)

    def thaw(self) -> None:
        """Let the cgroup run again (its processes continue where they were). Raises OSError
        if cgroup.freeze cannot be written."""
        _write(self.path / "cgroup.freeze", "0")

    def kill(self) -> None:
        """SIGKILL every process of the cgroup (frozen ones too: a fatal signal ends a frozen
        task). Uses ``cgroup.kill`` (atomic, Linux 5.14+), else SIGKILLs the listed pids (a pid
        read there was a member when read; the next round catches what forked meanwhile).
        Does not wait; see :meth:`wait_empty`."""
        if (self.path / "cgroup.kill").exists():
            _write(self.path / "cgroup.kill", "1")
            return
        if not self.path.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no such cgroup", str(self.path))
        for pid in self.procs():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def wait_empty(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no live process is in the cgroup (zombies do not
        count); re-kills on the way when ``cgroup.kill`` is missing. True if it is empty."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            if not self.populated:
                return True
            if time.monotonic() >= deadline:
                return False
            if not (self.path / "cgroup.kill").exists():
                self.kill()
            time.sleep(_POLL * 5)

    def oom_kills(self) -> int:
        """How many processes the kernel killed for going over ``memory.max`` (``oom_kill`` of
        ``memory.events``, counting this cgroup and its descendants); 0 when there is no
        memory controller or the cgroup is gone."""
        try:
            events = _keyed(_read(self.path / "memory.events"))
        except OSError:
            return 0
        return max(events.get("oom_kill", 0), events.get("oom_group_kill", 0))

    def remove(self, timeout: float = 1.0) -> bool:
        """Remove the (empty) cgroup directory, retrying for up to ``timeout`` seconds while it
        still holds processes (EBUSY: they are being killed). True if it is gone."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                self.path.rmdir()
                return True
            except FileNotFoundError:
                return True
            except OSError as exc:
                if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY) \
                        or time.monotonic() >= deadline:
                    log.debug("cannot remove %s: %s", self.path, exc)
                    return False
            time.sleep(_POLL * 5)


def memory_cap_error(max_memory: int | None, oom_kills: int) -> str:
    """The attempt's failure text when the kernel killed ``oom_kills`` processes of a unit for
    going over its ``memory.max`` of ``max_memory`` bytes."""
    from officegrid.worker.owner import human_bytes

    cap = human_bytes(max_memory) if max_memory is not None else "its cap"
    return (f"unit went over max_memory {cap} (cgroup memory.max): the kernel killed "
            f"{oom_kills} of its process(es) and the attempt was ended")

