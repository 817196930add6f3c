"""The owner policy: when a worker may start units, must suspend, may continue, must vacate.

The terms are HTCondor's (START, SUSPEND, CONTINUE, PREEMPT/vacate; HTCondor manual, "Policy
Configuration for Execute Hosts"), and so are the desktop numbers: start after 15 minutes
without keyboard or mouse input when the machine's other CPU use is low, suspend at once on
input, continue after 5 minutes of renewed idleness, vacate after 10 minutes suspended. The
policy is data: the ``[policy]`` table of ``officegrid.toml`` names a preset and may override any
of its numbers; :meth:`Policy.evaluate` is a pure function of one :class:`Observation`.

Presets:
    always            run whenever there is work (``officegrid worker`` run by hand)
    desktop           only while the owner is away (the installed service's default)
    night             only inside a time window (default ``20:00-06:00`` local time); no new
                      unit in the window's last ``no_start_before_end`` seconds; vacate at its end
    desktop-or-night  either one allows

Every preset: no new units on battery unless ``allow_battery``; while the owner paused the
worker, units are suspended (vacated after ``max_suspend``); "cannot tell" is never "idle".
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ByteSize, ConfigDict, ValidationInfo, field_validator

from officegrid.sizes import bytes_pair, check_size, human_bytes

PRESETS = ("always", "desktop", "night", "desktop-or-night")

_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
# One or more "<number><unit>" parts ("1h30m", "1h 30m", "90 s"); a bare number is seconds.
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(sec|min|s|m|h|d)\s*", re.IGNORECASE)
_NUMBER = re.compile(r"^\s*\d+(?:\.\d+)?\s*$")


def parse_duration(value: Any, what: str = "duration") -> float:
    """Seconds from a number of seconds or a string such as "90", "45s", "15m", "15 min",
    "2h", "1.5h", "1d", "1h30m" or "1h 30m" (the one parser of the ``[policy]`` table and of
    ``officegrid pause``).

    Raises ValueError naming `what` (e.g. the key) for anything else: negative, NaN, empty, an
    unknown unit or trailing text.
    """
    hint = "expected seconds or e.g. '45s', '15m', '2h', '1h30m'"
    if isinstance(value, bool):
        raise ValueError(f"{what}: {hint}, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        if _NUMBER.match(value):
            seconds = float(value)
        else:
            pos, seconds = 0, 0.0
            for m in _PART.finditer(value):
                if m.start() != pos:
                    break
                seconds += float(m.group(1)) * _UNITS[m.group(2).lower()]
                pos = m.end()
            if pos == 0 or pos != len(value):
                raise ValueError(f"{what}: {hint}, got {value!r}")
    else:
        raise ValueError(f"{what}: {hint}, got {value!r}")
    if seconds < 0 or math.isnan(seconds):
        raise ValueError(f"{what}: must be >= 0, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """A duration for people: "45 s", "5 min", "5 min 30 s", "2 h", "1 h 30 min", "3 d 2 h";
    never "0 min" (under a minute shows seconds). ``math.inf`` is "forever"."""
    if math.isinf(seconds):
        return "forever"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        m, rest = divmod(s, 60)
        return f"{m} min" + (f" {rest} s" if rest else "")
    if round(s / 60) < 24 * 60:
        h, rest = divmod(round(s / 60), 60)
        return f"{h} h" + (f" {rest} min" if rest else "")
    d, rest = divmod(round(s / 3600), 24)
    return f"{d} d" + (f" {rest} h" if rest else "")


# Defaults per preset. Numbers not named by a preset take the desktop values (so an override
# like max_suspend means the same thing whatever the preset).
_BASE: dict[str, Any] = {
    "start_idle": 900.0, "max_cpu": 0.30, "continue_idle": 300.0, "max_suspend": 600.0,
    "locked_idle": 60.0, "min_free_memory": 256 << 20, "window": "20:00-06:00", "tz": None,
    "no_start_before_end": 1800.0, "allow_battery": False, "sources": None,
}
_PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
    "always": {"min_free_memory": 0},
    "desktop": {},
    "night": {},
    "desktop-or-night": {},
}


class PolicySettings(BaseModel):
    """The ``[policy]`` table of officegrid.toml. Unset fields come from the preset.

    preset: "always" | "desktop" | "night" | "desktop-or-night".
    start_idle: seconds without input before units may start (desktop; 900).
    max_cpu: highest non-grid CPU use, as a fraction of one core per core, to start or continue
        (desktop; 0.30).
    continue_idle: seconds without input before suspended units continue (desktop; 300).
    max_suspend: seconds units may stay suspended before they are vacated (600).
    locked_idle: with every session's screen locked, seconds without input after which the
        owner counts as away, instead of start_idle/continue_idle (60).
    min_free_memory: bytes (or "512MiB"); below it no new units and running ones are vacated
        (256 MiB; 0 = off, the default of `always`).
    window: allowed local times for night (officegrid.worker.windows grammar; "20:00-06:00").
    tz: IANA zone of the window (default: the machine's zone).
    no_start_before_end: seconds before the window closes in which no unit starts (1800).
    allow_battery: start units on battery power (False).
    sources: idle source names to read, in order (default: all that work on this OS).
    Durations accept seconds or strings such as "15m", "2h".
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    preset: str = "always"
    start_idle: float | None = None
    max_cpu: float | None = None
    continue_idle: float | None = None
    max_suspend: float | None = None
    locked_idle: float | None = None
    min_free_memory: ByteSize | None = None
    window: str | None = None
    tz: str | None = None
    no_start_before_end: float | None = None
    allow_battery: bool | None = None
    sources: list[str] | None = None

    @field_validator("preset")
    @classmethod
    def _preset(cls, v: str) -> str:
        if v not in PRESETS:
            raise ValueError(f"unknown preset {v!r} (known: {', '.join(PRESETS)})")
        return v

    @field_validator("start_idle", "continue_idle", "max_suspend", "locked_idle",
                     "no_start_before_end", mode="before")
    @classmethod
    def _duration(cls, v: Any, info: ValidationInfo) -> Any:
        return None if v is None else parse_duration(v, info.field_name or "duration")

    @field_validator("min_free_memory", mode="before")
    @classmethod
    def _memory_floor(cls, v: Any) -> Any:
        return check_size(v, "min_free_memory", allow_zero=True)  # 0: off

    @field_validator("max_cpu")
    @classmethod
    def _fraction(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 <= v <= 1.0:
            raise ValueError(f"must be a fraction of a core per core between 0 and 1, got {v}")
        return v

    @field_validator("sources")
    @classmethod
    def _sources(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            from officegrid.worker.idle import ALL_SOURCES

            bad = [s for s in v if s not in ALL_SOURCES]
            if bad:
                raise ValueError(f"unknown idle source(s) {', '.join(bad)} "
                                 f"(known: {', '.join(ALL_SOURCES)})")
        return v

    @field_validator("tz")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        if v is not None:
            from officegrid.worker.windows import Schedule

            Schedule.parse(_BASE["window"], tz=v)  # raises ValueError naming the zone
        return v

    @field_validator("window")
    @classmethod
    def _window(cls, v: str | None) -> str | None:
        if v is not None:
            from officegrid.worker.windows import Schedule

            Schedule.parse(v)  # the grammar; raises ValueError naming what is wrong
        return v

    def value(self, key: str) -> Any:
        """The effective value of `key`: explicit, else the preset's, else the base default."""
        explicit = getattr(self, key)
        if explicit is not None:
            return explicit
        return _PRESET_DEFAULTS[self.preset].get(key, _BASE[key])


@dataclass(frozen=True)
class Observation:
    """What the agent sees at one instant (all inputs of Policy.evaluate).

    now: aware datetime. idle_seconds: seconds since the owner's last input (None: cannot
    tell). present: an idle inhibitor is held. no_session: reliably nobody is logged in.
    non_grid_cpu: fraction of one core per core used by everything except the grid (None:
    unknown). on_battery: None when unknown or no battery. free_memory: bytes available.
    owner_paused_until: time.time() seconds (math.inf: until resumed). owner_paused_by: who
    paused it (user names, for the reason; None: unknown). suspended_for: seconds
    the units have been suspended (None: not suspended). running: the agent holds units.
    idle_detail: why the idle time is unknown (for the reason). locked: all screens locked.
    """

    now: datetime
    idle_seconds: float | None
    present: bool
    no_session: bool
    non_grid_cpu: float | None
    on_battery: bool | None
    free_memory: int | None
    owner_paused_until: float | None
    suspended_for: float | None
    running: bool
    idle_detail: str = ""
    locked: bool = False
    owner_paused_by: str | None = None


@dataclass(frozen=True)
class Verdict:
    """The policy's answer.

    may_start: the agent may lease new units now. action: for the units it holds, "run",
    "suspend" or "vacate". state: "running" | "idle" | "suspended" | "waiting" | "paused" (for
    the server view). reason: short, human, e.g. "suspended: input", "outside window".
    """

    may_start: bool
    action: str
    state: str
    reason: str | None


@dataclass(frozen=True)
class _Gate:
    start: bool  # new units may start
    run: bool  # running units may keep running
    resume: bool  # suspended units may continue
    vacate: bool  # units must be vacated now (window closed)
    why_not: str | None  # why start (or run/resume) is refused
    why_stop: str | None = None  # why running units must stop, when different


_ALLOW = _Gate(True, True, True, False, None)


def _pair(a: float, b: float, coarse: Callable[[float], str],
          fine: Callable[[float, int], str]) -> tuple[str, str]:
    """``a`` and ``b`` as texts that differ when the numbers do: ``coarse`` first, then
    ``fine`` with 1, 2, 3 decimals (no "idle 10 s < 10 s" when it was 9.6 s < 10 s)."""
    ta, tb = coarse(a), coarse(b)
    for digits in (1, 2, 3):
        if ta != tb or a == b:
            break
        ta, tb = fine(a, digits), fine(b, digits)
    return ta, tb


def _durations(a: float, b: float) -> tuple[str, str]:
    return _pair(a, b, format_duration, lambda x, d: f"{x:.{d}f} s")


def _percents(a: float, b: float) -> tuple[str, str]:
    return _pair(a, b, lambda x: f"{x:.0%}", lambda x, d: f"{x:.{d}%}")


class Policy:
    """An owner policy built from PolicySettings; evaluate() is pure and deterministic."""

    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings
        v = settings.value
        self.preset: str = settings.preset
        self.start_idle = float(v("start_idle"))
        self.max_cpu = float(v("max_cpu"))
        self.continue_idle = min(float(v("continue_idle")), self.start_idle)
        self.max_suspend = float(v("max_suspend"))
        self.locked_idle = float(v("locked_idle"))
        self.min_free_memory = int(v("min_free_memory") or 0)
        self.no_start_before_end = float(v("no_start_before_end"))
        self.allow_battery = bool(v("allow_battery"))
        self.sources: list[str] | None = v("sources")
        self.schedule = None
        if self.preset in ("night", "desktop-or-night"):
            from officegrid.worker.windows import Schedule

            self.schedule = Schedule.parse(v("window"), tz=v("tz"))

    @classmethod
    def from_settings(cls, s: PolicySettings) -> Policy:
        """Build the policy; raises ValueError for a window that does not parse."""
        return cls(s)

    # -------------------------------------------------------------------- gates

    def _desktop(self, obs: Observation) -> _Gate:
        if obs.present:
            why = "owner present (idle inhibited)"
            return _Gate(False, False, False, False, why, f"suspended: {why}")
        if obs.no_session:
            idle = math.inf
        elif obs.idle_seconds is None:
            why = f"cannot tell idle time: {obs.idle_detail or 'no idle source can tell'}"
            return _Gate(False, False, False, False, why, f"suspended: {why}")
        else:
            idle = obs.idle_seconds
        start_need, cont_need = self.start_idle, self.continue_idle
        if obs.locked and idle >= self.locked_idle:
            start_need = cont_need = min(self.locked_idle, start_need)
        cpu_why = None
        if obs.non_grid_cpu is None:
            cpu_why = "cannot tell non-grid CPU use yet"
        elif obs.non_grid_cpu > self.max_cpu:
            used, cap = _percents(obs.non_grid_cpu, self.max_cpu)
            cpu_why = f"owner busy (non-grid CPU {used} > {cap})"
        start = idle >= start_need and cpu_why is None
        run = idle >= cont_need
        resume = run and cpu_why is None
        if idle < start_need:
            now_idle, need = _durations(idle, start_need)
            why = f"owner active (idle {now_idle} < {need})"
        else:
            why = cpu_why
        if not run:
            now_idle, need = _durations(idle, cont_need)
            stop = f"suspended: input (idle {now_idle} < {need})"
        else:
            stop = f"suspended: {cpu_why}" if cpu_why else None
        return _Gate(start, run, resume, False, why if not start else None, stop)

    def _night(self, obs: Observation) -> _Gate:
        assert self.schedule is not None
        if not self.schedule.contains(obs.now):
            return _Gate(False, False, False, True, "outside window", "outside window")
        left = self.schedule.seconds_until_close(obs.now)
        if left is not None and left < self.no_start_before_end:
            return _Gate(False, True, True, False, f"window closes in {format_duration(left)}")
        return _ALLOW

    def _gate(self, obs: Observation) -> _Gate:
        if self.preset == "always":
            return _ALLOW
        if self.preset == "desktop":
            return self._desktop(obs)
        if self.preset == "night":
            return self._night(obs)
        night, desk = self._night(obs), self._desktop(obs)
        if night.run:  # inside the window the owner is not asked
            if night.start or desk.start:
                return _ALLOW
            return _Gate(False, True, True, False, f"{night.why_not}; {desk.why_not}")
        return _Gate(desk.start, desk.run, desk.resume, False,
                     f"outside window; {desk.why_not}" if not desk.start else None,
                     desk.why_stop)

    # -------------------------------------------------------------------- evaluate

    def evaluate(self, obs: Observation) -> Verdict:
        """The verdict for one observation (pure: same observation, same verdict).

        Order: owner pause, low memory, battery, then the preset's gate (window and/or idle).
        Suspended units are vacated after max_suspend seconds.
        """
        suspended = obs.suspended_for is not None
        too_long = suspended and obs.suspended_for >= self.max_suspend  # type: ignore[operator]
        paused_until = obs.owner_paused_until
        if paused_until is not None and paused_until > obs.now.timestamp():
            why = "paused by owner" + (f" ({obs.owner_paused_by})" if obs.owner_paused_by else "")
            if not obs.running:
                return Verdict(False, "run", "paused", why)
            if too_long:
                return Verdict(False, "vacate", "paused", why)
            return Verdict(False, "suspend", "paused", why)
        low = None
        if (self.min_free_memory and obs.free_memory is not None
                and obs.free_memory < self.min_free_memory):
            free, floor = bytes_pair(obs.free_memory, self.min_free_memory)
            low = f"low memory (free {free} < {floor})"
        battery = "on battery" if obs.on_battery is True and not self.allow_battery else None
        gate = self._gate(obs)
        if not obs.running:
            hold = battery or low or (None if gate.start else gate.why_not)
            if hold:
                return Verdict(False, "run", "waiting", hold)
            return Verdict(True, "run", "idle", None)
        if low:
            return Verdict(False, "vacate", "waiting", low)
        if gate.vacate:
            return Verdict(False, "vacate", "waiting", gate.why_stop or gate.why_not)
        stop = battery or (None if (gate.resume if suspended else gate.run) else
                           (gate.why_stop or gate.why_not))
        if stop:
            if too_long:
                return Verdict(False, "vacate", "waiting",
                               f"suspended over {format_duration(self.max_suspend)} ({stop})")
            return Verdict(False, "suspend", "suspended", stop)
        return Verdict(gate.start and not battery, "run", "running", None)

    def describe(self) -> str:
        """One line for the agent's start, e.g. "desktop (start after 15 min without input ...)"."""
        p = self.preset
        parts = []
        if p in ("desktop", "desktop-or-night"):
            parts.append(f"start after {format_duration(self.start_idle)} without input and "
                         f"non-grid CPU <= {self.max_cpu:.0%}, suspend on input, continue "
                         f"after {format_duration(self.continue_idle)} idle")
        if p in ("night", "desktop-or-night") and self.schedule is not None:
            parts.append(f"window {self.schedule.spec} ({self.schedule.tz}), no new unit in "
                         f"its last {format_duration(self.no_start_before_end)}")
        if p == "always":
            parts.append("run whenever there is work: the desktop's owner is not watched "
                         "(use --policy desktop, or install the service, to yield to the owner)")
        else:
            parts.append(f"vacate after {format_duration(self.max_suspend)} suspended")
        if not self.allow_battery:
            parts.append("not on battery")
        if self.min_free_memory:
            parts.append(f"min free memory {human_bytes(self.min_free_memory)}")
        return f"{p} ({'; '.join(parts)})"
