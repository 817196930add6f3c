"""``officegrid pause [DURATION]`` and ``officegrid resume``: the desktop owner's controls.

Any logged-in user of the machine may pause the local agent, also an installed service that
runs as its own account: the pause is a file of this user's in the work dir's ``sessions/``
channel (see officegrid.worker.pause), which the agent reads every 0.2 s. Running units are
suspended at once (and vacated after the policy's max suspend time), no new unit starts, and
the operator sees "paused by owner (USER)" in ``officegrid workers``. No server round trip:
the owner's session may be offline.

A pause is ended by the user who set it (``resume``), by its end time, or by root with
``resume --all``; the worker runs again when no pause is in force.
"""

from __future__ import annotations

import contextlib
import math
import time
from datetime import datetime
from pathlib import Path

import typer

from officegrid.cli.common import handle_errors, say

# readable=False: an installed work dir is 0711 (others may pass through to sessions/,
# not list it); click's default check would refuse it for every user but the service.
WorkDirOpt = typer.Option(None, "--work-dir", readable=False,
                          help="the agent's work dir [default: [worker].work_dir / "
                          "OFFICEGRID_WORK_DIR, else the installed service's (e.g. "
                          "/var/lib/officegrid/worker), else the user data dir of an agent run "
                          "by hand]")
ACK_TIMEOUT = 3.0  # seconds to wait for a running agent to confirm (it reads every 0.2 s)


def parse_duration(text: str) -> float:
    """Seconds in ``"2h"``, ``"90m"``, ``"1h30m"``, ``"45s"``, ``"1d"`` or a bare number of
    seconds (the parser of the ``[policy]`` durations). Raises ValueError naming the text if it
    is not one of those or is not positive."""
    from officegrid.worker.policy import parse_duration as parse

    seconds = parse(text, f"duration {text!r}")
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError(f"duration {text!r} must be positive")
    return seconds


def resolve_work_dir(work_dir: Path | None) -> tuple[Path, object | None]:
    """(work dir, its live agent's status or None).

    The flag, [worker].work_dir or OFFICEGRID_WORK_DIR if given; else the installed service's
    work dir or the by-hand one (the user data dir), whichever has a running agent, else the
    one that exists (the service's first). Raises ValueError when there is no work dir at all
    (no agent was installed or run here).
    """
    from officegrid.config import WorkerSettings, load
    from officegrid.worker import service
    from officegrid.worker.identity import default_work_dir
    from officegrid.worker.pause import find_agent

    settings = load(WorkerSettings, "worker", {"work_dir": work_dir},
                    env_skip=frozenset({"token", "server", "enroll", "ca", "name"}))
    if settings.work_dir is not None:
        path = Path(settings.work_dir).absolute()
        if not path.is_dir():
            raise ValueError(f"no worker work dir at {path}: no agent was installed or run "
                             "there")
        return path, find_agent(path)
    candidates: list[tuple[Path, str]] = []
    with contextlib.suppress(ValueError):  # no service installer for this OS
        candidates.append((Path(service.default_work_dir(service.os_name())),
                           "installed service"))
    candidates.append((default_work_dir(), "agent run by hand"))
    existing = [c for c in candidates if c[0].is_dir()]
    for path, _what in existing:
        status = find_agent(path)
        if status is not None:
            return path, status
    if existing:
        return existing[0][0], None
    where = " nor ".join(f"{p} ({what})" for p, what in candidates)
    raise ValueError(f"no worker agent on this machine: neither {where} exists; install one "
                     "with `officegrid worker install`, or give --work-dir")


def _when(until: float) -> str:
    from officegrid.worker.policy import format_duration

    if math.isinf(until):
        return "until `officegrid resume`"
    end = datetime.fromtimestamp(until).astimezone()
    fmt = "%H:%M:%S %Z" if end.date() == datetime.now().date() else "%Y-%m-%d %H:%M %Z"
    return f"for {format_duration(until - time.time())}, until {end.strftime(fmt)}"


def _wait_agent(work_dir: Path, since: float, paused: bool) -> object | None:
    """The agent's status once it shows this user's pause (``paused``) or its end, None if
    it did not within ACK_TIMEOUT seconds."""
    from officegrid.worker.pause import find_agent, me

    deadline = time.monotonic() + ACK_TIMEOUT
    while True:
        status = find_agent(work_dir)
        if status is not None and status.written_at >= since \
                and (me() in status.paused_by) == paused:
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


@handle_errors
def pause(duration: str = typer.Argument(None, help="how long, e.g. 45s, 30m, 2h, 1h30m "
                                         "[default: until `officegrid resume`]"),
          work_dir: Path = WorkDirOpt) -> None:
    """Pause this machine's worker: running units are suspended, no new ones start."""
    from officegrid.worker.pause import write_pause

    seconds = math.inf if duration is None else parse_duration(duration)
    wd, agent = resolve_work_dir(work_dir)
    written = time.time()
    try:
        write_pause(wd, written + seconds)
    except PermissionError as exc:
        raise PermissionError(f"cannot pause the agent of {wd}: {exc}") from exc
    when = _when(written + seconds)
    if agent is None:
        say(f"worker paused {when}; but no agent is running on {wd} now: the pause applies "
            "when it starts")
        return
    ack = _wait_agent(wd, written, paused=True)
    if ack is None:
        say(f"worker paused {when}; the agent (pid {agent.pid}) has not confirmed it within "
            f"{ACK_TIMEOUT:.0f} s (is it stuck? see its log)")
        return
    say(f"worker paused {when} (the agent, pid {ack.pid}, suspended its units)")


@handle_errors
def resume(work_dir: Path = WorkDirOpt,
           everyone: bool = typer.Option(False, "--all", help="end every user's pause (root, "
                                         "or the owner of an agent run by hand)")) -> None:
    """End your pause of this machine's worker (units continue as the policy allows)."""
    from officegrid.worker.pause import clear_pause, me, pause_state, read_pauses

    wd, agent = resolve_work_dir(work_dir)
    started = time.time()
    # A pause file outlives its end time: removing it then resumes nothing.
    expired = [p for p in read_pauses(wd) if p.key == me() and not p.active(started)]
    removed = clear_pause(wd, everyone=everyone)
    if removed and agent is not None:
        _wait_agent(wd, started, paused=False)
    until, who = pause_state(read_pauses(wd))
    if everyone:
        head = f"ended the pause of {', '.join(removed)}" if removed else "nobody had paused it"
    else:
        head = "worker resumed" if removed else "you had not paused the worker"
        if removed and expired:
            end = datetime.fromtimestamp(expired[0].until).astimezone()
            head = (f"your pause had already expired at {end.strftime('%H:%M:%S %Z')}: "
                    "nothing to resume")
    if until is not None:
        say(f"{head}; it is still paused by {who} {_when(until)} (only they, or root with "
            "`officegrid resume --all`, can end that pause)")
    else:
        say(head if agent is not None else f"{head} (no agent is running on {wd} now)")
