"""macOS: put a process in the background policy (``taskpolicy -b``, Darwin's "darwinbg").

``setpriority(PRIO_DARWIN_PROCESS, pid, PRIO_DARWIN_BG)`` (libc, via ctypes) puts a whole task
in the background band: lowest CPU scheduling, I/O throttled to the lowest tier and network
traffic marked background -- more than nice 19, which only lowers CPU priority. The policy is a
task attribute, so it covers every thread of the runner, and XNU's task_policy_create copies it
to every child task (darwinbg is inherited), so the runner's whole tree stays in the background.
Setting it for another pid needs the same user (or root), which the agent is for its runner.

The constants come from <sys/resource.h> (PRIO_DARWIN_PROCESS 4, PRIO_DARWIN_BG 0x1000).
Imports on any OS; :func:`set_background` takes the setpriority call as a parameter so the unit
tests inject it, and on Linux the real libc call is made to check the ctypes/errno plumbing (it
refuses ``which=4`` with EINVAL). Verified by unit tests only, not on a real Mac.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)

PRIO_DARWIN_THREAD = 3
PRIO_DARWIN_PROCESS = 4
PRIO_DARWIN_BG = 0x1000

SetPriority = Callable[[int, int, int], None]
"""``setpriority(which, who, prio)``; raises OSError (with errno) on failure."""


def libc_setpriority() -> SetPriority:
    """The C library's setpriority(2) as a Python callable raising OSError on failure.

    Raises OSError if the C library cannot be loaded.
    """
    name = ctypes.util.find_library("c") if sys.platform != "darwin" else "libc.dylib"
    libc = ctypes.CDLL(name, use_errno=True)
    fn = libc.setpriority
    # int setpriority(int which, id_t who, int prio); id_t is a 32-bit unsigned on Darwin.
    fn.argtypes = [ctypes.c_int, ctypes.c_uint32, ctypes.c_int]
    fn.restype = ctypes.c_int

    def call(which: int, who: int, prio: int) -> None:
        if fn(which, who, prio) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setpriority({which}, {who}, {prio:#x}): {os.strerror(err)}")

    return call


def set_background(pid: int, setpriority: SetPriority | None = None) -> bool:
    """Put process ``pid`` (0: this process) and its future children in Darwin's background
    policy. Returns True on success; a failure (not permitted, process gone, not macOS) is
    logged and returns False, never raises. ``setpriority``: the call to use (default: libc's,
    :func:`libc_setpriority`)."""
    try:
        call = setpriority if setpriority is not None else libc_setpriority()
        call(PRIO_DARWIN_PROCESS, pid, PRIO_DARWIN_BG)
        return True
    except OSError as exc:
        log.warning("cannot put pid %d in the macOS background policy: %s", pid, exc)
        return False
