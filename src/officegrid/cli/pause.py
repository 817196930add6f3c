"""``officegrid pause [DURATION]`` and ``officegrid resume``: the desktop owner's controls.

Both act on the local agent's work dir (the file ``owner-pause.json``, see worker/owner.py),
which the running agent checks every 0.2 s: running units are suspended at once (and vacated
after the policy's max suspend time), no new unit starts, and the operator sees "paused by owner"
in ``officegrid workers``. No server round trip is needed: the owner's session may be offline.
"""

from __future__ import annotations

import math
import re
import time
from datetime import datetime
from pathlib import Path

import typer

from officegrid.cli.common import handle_errors, say

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")

WorkDirOpt = typer.Option(None, "--work-dir", help="the agent's work dir [default: the user "
                          "data dir, or [worker].work_dir / OFFICEGRID_WORK_DIR]")


def parse_duration(text: str) -> float:
    """Seconds in ``"2h"``, ``"90m"``, ``"1h30m"``, ``"45s"``, ``"1d"`` or a bare number of
    seconds. Raises ValueError naming the text if it is not one of those or is not positive."""
    t = text.strip().lower()
    try:
        seconds = float(t)
    except ValueError:
        pos, seconds = 0, 0.0
        for m in _PART.finditer(t):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(t) or not t:
            raise ValueError(f"duration {text!r}: expected e.g. 2h, 90m, 1h30m, 45s or 1d"
                             ) from None
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError(f"duration {text!r} must be positive")
    return seconds


def _work_dir(work_dir: Path | None) -> Path:
    from officegrid.config import WorkerSettings, load
    from officegrid.worker.identity import default_work_dir

    settings = load(WorkerSettings, "worker", {"work_dir": work_dir},
                    env_skip=frozenset({"token", "server", "enroll", "ca", "name"}))
    path = (settings.work_dir or default_work_dir()).resolve()
    if not path.is_dir():
        raise ValueError(f"no worker work dir at {path} (give --work-dir)")
    return path


@handle_errors
def pause(duration: str = typer.Argument(None, help="how long, e.g. 2h, 30m, 1h30m "
                                         "[default: until `officegrid resume`]"),
          work_dir: Path = WorkDirOpt) -> None:
    """Pause this machine's worker: running units are suspended, no new ones start."""
    from officegrid.worker.owner import write_pause

    until = math.inf if duration is None else time.time() + parse_duration(duration)
    path = write_pause(_work_dir(work_dir), until)
    when = "until `officegrid resume`" if math.isinf(until) else \
        f"until {datetime.fromtimestamp(until).astimezone():%Y-%m-%d %H:%M %Z}"
    say(f"worker paused {when} ({path})")


@handle_errors
def resume(work_dir: Path = WorkDirOpt) -> None:
    """End a pause of this machine's worker (units continue as the policy allows)."""
    from officegrid.worker.owner import clear_pause

    had = clear_pause(_work_dir(work_dir))
    say("worker resumed" if had else "worker was not paused")
