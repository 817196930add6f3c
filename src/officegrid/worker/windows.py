"""Time windows: allowed local times such as ``mon-fri 20:00-06:00; sat,sun 00:00-24:00``.

One module for every window of the worker: transfer windows (``--transfer-window``) and the
owner policy's windows (the ``night`` preset) use the same :class:`Schedule`.

Spec grammar (case-insensitive, parts separated by ``;``)::

    spec    := "always" | part (";" part)*
    part    := [days] HH:MM "-" HH:MM
    days    := dayset ("," dayset)*          e.g. "mon-fri", "sat,sun", "fri-mon", "tue"
    dayset  := DAY | DAY "-" DAY             DAY: mon tue wed thu fri sat sun (or full names)

A part without days applies every day. ``24:00`` is allowed as an end (midnight at the end of
the day). An end at or before the start crosses midnight, and such a window belongs to the day
it STARTS on: ``fri 20:00-06:00`` is open from Friday 20:00 to Saturday 06:00.

Windows are local wall-clock times in the schedule's zone (an IANA name; default the machine's
zone, found with ``tzlocal``), resolved to real instants per day, so they follow DST:

- a start or end that falls in a spring-forward gap (e.g. 02:30 in Europe/Berlin on the last
  Sunday of March) means the first instant after the gap (03:00 summer time);
- an ambiguous wall time in a fall-back hour (e.g. 02:30 on the last Sunday of October in
  Berlin) means its first occurrence.

So a window's length in real seconds can be up to the zone's DST shift (1 h; 30 min on
Australia/Lord_Howe) shorter or longer on DST days than on other days: ``20:00-06:00`` lasts
9 h of real time the night clocks spring forward and 11 h the night they fall back.

Overlapping or touching windows form one open period (``fri 20:00-06:00; sat 00:00-24:00`` is
open from Friday 20:00 to Sunday 00:00 without a break).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

log = logging.getLogger("officegrid.worker.windows")

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_TIME_RE = re.compile(r"^(\d{1,2}):(\d{2})$")
_DAY_MINUTES = 24 * 60
#: A weekly schedule open longer than this without a break is open for good.
_FOREVER = timedelta(days=8)
#: How far ahead next_open looks: a weekly schedule opens within 7 days, DST aside.
_HORIZON_DAYS = 9
#: "Never closes": what open_until returns for a schedule that is always open.
FOREVER = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Window:
    """One part of a schedule: on ``days`` (0 = Monday), open from ``start`` to ``end``.

    Attributes:
        days: weekdays the window starts on (0 = Monday ... 6 = Sunday).
        start: minutes after local midnight, 0..1439.
        end: minutes after local midnight, 1..1440; at or before ``start``: the next day.
    """

    days: frozenset[int]
    start: int
    end: int

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start


def _day(token: str, spec: str) -> int:
    t = token.strip().lower()
    if t in DAYS:
        return DAYS.index(t)
    if t in _FULL:
        return _FULL.index(t)
    raise ValueError(f"bad day {token.strip()!r} in {spec!r} (use mon, tue, wed, thu, fri, sat, "
                     "sun)")


def _days(text: str, spec: str) -> frozenset[int]:
    out: set[int] = set()
    for item in text.split(","):
        if not item.strip():
            raise ValueError(f"empty day in {spec!r}")
        if "-" in item:
            a, _, b = item.partition("-")
            first, last = _day(a, spec), _day(b, spec)
            i = first
            while True:  # a range may wrap around the week: "fri-mon"
                out.add(i)
                if i == last:
                    break
                i = (i + 1) % 7
        else:
            out.add(_day(item, spec))
    return frozenset(out)


def _minutes(text: str, spec: str, *, is_end: bool) -> int:
    m = _TIME_RE.match(text.strip())
    if not m:
        raise ValueError(f"bad time {text.strip()!r} in {spec!r} (use HH:MM, e.g. 20:00)")
    h, mi = int(m.group(1)), int(m.group(2))
    total = h * 60 + mi
    if mi > 59 or total > _DAY_MINUTES or (total == _DAY_MINUTES and not is_end):
        raise ValueError(f"bad time {text.strip()!r} in {spec!r} (00:00 to 23:59; 24:00 only "
                         "as an end)")
    return total


def _parse_part(part: str, spec: str) -> Window:
    text = part.strip()
    if not text:
        raise ValueError(f"empty window in {spec!r}")
    pieces = text.split()
    if len(pieces) == 1:
        days, span = frozenset(range(7)), pieces[0]
    elif len(pieces) == 2:
        days, span = _days(pieces[0], spec), pieces[1]
    else:
        raise ValueError(f"bad window {text!r} in {spec!r} (expected e.g. 'mon-fri 20:00-06:00')")
    if span.count("-") != 1:
        raise ValueError(f"bad time range {span!r} in {spec!r} (expected HH:MM-HH:MM)")
    a, _, b = span.partition("-")
    start = _minutes(a, spec, is_end=False)
    end = _minutes(b, spec, is_end=True)
    if start == end:
        raise ValueError(f"empty time range {span!r} in {spec!r} (use 00:00-24:00 for a whole "
                         "day)")
    return Window(days, start, end)


def local_zone() -> tzinfo:
    """The machine's local time zone as a DST-aware tzinfo (``tzlocal``; UTC, with a warning
    naming the cause, if it cannot be found: windows then run on UTC wall-clock times)."""
    try:
        import tzlocal

        return tzlocal.get_localzone()
    except Exception as exc:  # noqa: BLE001 - an unreadable local zone config: fall back to UTC
        log.warning("cannot tell this machine's time zone (%s): time windows without an "
                    "explicit zone are read as UTC wall-clock times", exc)
        return UTC


def _zone(tz: str | None) -> tzinfo:
    if tz is None:
        return local_zone()
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {tz!r} (use an IANA name such as "
                         "'Europe/Berlin')") from exc


def resolve_wall(day: date, minutes: int, tz: tzinfo) -> datetime:
    """The real instant (UTC) of local wall time ``day`` + ``minutes`` in ``tz``.

    A wall time inside a spring-forward gap resolves to the first instant after the gap; an
    ambiguous (fall-back) wall time to its first occurrence. ``minutes`` may be 1440 (midnight
    ending ``day``).
    """
    day = day + timedelta(days=minutes // _DAY_MINUTES)
    minutes %= _DAY_MINUTES
    wall = datetime.combine(day, time(minutes // 60, minutes % 60))
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == wall:
        return first  # exists; fold=0 is the first occurrence when ambiguous
    # In a gap: fold=0 read it with the offset before the gap (an instant after the gap),
    # fold=1 with the offset after it (an instant before the gap). The gap's end is the
    # transition between them: find it to the second by bisection.
    lo = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    hi = first
    if lo > hi:
        lo, hi = hi, lo
    lo_off = lo.astimezone(tz).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        mid = mid.replace(microsecond=0)
        if mid.astimezone(tz).utcoffset() == lo_off:
            lo = mid
        else:
            hi = mid
    return hi


class Schedule:
    """A set of weekly windows in one time zone.

    Build with :meth:`parse` or :meth:`always`. All instants given must be timezone-aware;
    answers are aware datetimes in UTC.
    """

    def __init__(self, windows: tuple[Window, ...], tz: tzinfo, spec: str,
                 always_open: bool = False) -> None:
        self.windows = windows
        self.tz = tz
        self.spec = spec
        self.always_open = always_open
        self._intervals = lru_cache(maxsize=256)(self._day_intervals)

    def __repr__(self) -> str:
        return f"Schedule({self.spec!r}, tz={self.tz})"

    @classmethod
    def parse(cls, spec: str, tz: str | None = None) -> Schedule:
        """Parse ``spec`` (see the module doc) in zone ``tz`` (IANA name; None: local zone).

        Raises:
            ValueError: naming the bad part, e.g. "bad day 'mnday' in 'mnday 20:00-06:00'",
                or an unknown time zone.
        """
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError("empty window spec (expected e.g. 'mon-fri 20:00-06:00' or "
                             "'always')")
        zone = _zone(tz)
        if spec.strip().lower() == "always":
            return cls((), zone, spec.strip(), always_open=True)
        windows = tuple(_parse_part(part, spec) for part in spec.split(";"))
        return cls(windows, zone, spec.strip())

    @classmethod
    def always(cls) -> Schedule:
        """A schedule that is always open."""
        return cls((), UTC, "always", always_open=True)

    # ------------------------------------------------------------------ intervals

    def _day_intervals(self, day: date) -> tuple[tuple[datetime, datetime], ...]:
        """The windows that start on local date ``day``, as real [start, end) instants."""
        out = []
        for w in self.windows:
            if day.weekday() not in w.days:
                continue
            end_min = w.end + (_DAY_MINUTES if w.crosses_midnight else 0)
            start = resolve_wall(day, w.start, self.tz)
            end = resolve_wall(day, end_min, self.tz)
            if end > start:  # a window entirely inside a DST gap is empty
                out.append((start, end))
        return tuple(out)

    def _periods(self, first: date, last: date) -> list[tuple[datetime, datetime]]:
        """Merged open periods of the windows starting on local dates first..last."""
        raw: list[tuple[datetime, datetime]] = []
        d = first
        while d <= last:
            raw.extend(self._intervals(d))
            d += timedelta(days=1)
        raw.sort()
        merged: list[tuple[datetime, datetime]] = []
        for s, e in raw:
            if merged and s <= merged[-1][1]:
                if e > merged[-1][1]:
                    merged[-1] = (merged[-1][0], e)
            else:
                merged.append((s, e))
        return merged

    def _local_date(self, at: datetime) -> date:
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError(f"need a timezone-aware datetime, got {at!r}")
        return at.astimezone(self.tz).date()

    # ------------------------------------------------------------------ queries

    def contains(self, at: datetime) -> bool:
        """True if the schedule is open at instant ``at`` (aware). Windows are half-open:
        open at their start, closed at their end."""
        if self.always_open:
            return True
        return self.open_until(at) is not None

    def open_until(self, at: datetime) -> datetime | None:
        """The end (UTC) of the open period containing ``at``; None if closed at ``at``.

        Touching or overlapping windows count as one period. A schedule that never closes
        returns :data:`FOREVER`.
        """
        if self.always_open:
            return FOREVER
        d = self._local_date(at)
        t = at.astimezone(UTC)
        # A window containing `at` started at most a day (plus DST slack) before it.
        end = next((e for s, e in self._periods(d - timedelta(days=2), d + timedelta(days=1))
                    if s <= t < e), None)
        if end is None:
            return None
        day = d + timedelta(days=2)
        # Later windows that start before the period ends extend it; none can once the
        # period ends before a day's local midnight.
        while end >= resolve_wall(day, 0, self.tz):
            if end - t > _FOREVER:
                return FOREVER
            for s, e in sorted(self._intervals(day)):  # by start: each may extend the next
                if s <= end:
                    end = max(end, e)
            day += timedelta(days=1)
        return end

    def next_open(self, at: datetime) -> datetime | None:
        """``at`` (in UTC) if open then, else the next instant (UTC) the schedule opens; None
        if it never opens (no windows)."""
        d = self._local_date(at)  # also refuses a naive ``at``
        t = at.astimezone(UTC)
        if self.always_open:
            return t
        for s, e in self._periods(d - timedelta(days=2), d + timedelta(days=_HORIZON_DAYS)):
            if s <= t < e:
                return t
            if s > t:
                return s
        return None

    def seconds_until_open(self, at: datetime | None = None) -> float:
        """Seconds from ``at`` (default now) until the schedule opens; 0.0 when open;
        ``math.inf`` if it never opens."""
        at = at or datetime.now(UTC)
        nxt = self.next_open(at)
        if nxt is None:
            return float("inf")
        return max(0.0, (nxt.astimezone(UTC) - at.astimezone(UTC)).total_seconds())

    def seconds_until_close(self, at: datetime | None = None) -> float | None:
        """Seconds from ``at`` (default now) until the open period ends: 0.0 when closed,
        None when it never closes."""
        at = at or datetime.now(UTC)
        end = self.open_until(at)
        if end is None:
            return 0.0
        if end == FOREVER:
            return None
        return max(0.0, (end - at.astimezone(UTC)).total_seconds())
