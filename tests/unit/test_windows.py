"""Time windows (worker/windows.py): parsing, and DST-correct answers checked against a
brute-force, minute-by-minute reading of the local wall clock around real DST transitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from officegrid.worker.windows import FOREVER, Schedule, resolve_wall

ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "America/Santiago", "UTC",
         "Asia/Kolkata"]
DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


@cache
def transitions(zone: str) -> list[datetime]:
    """UTC instants (to the hour) around which the zone's offset changes in 2024-2026; for
    zones without DST, a few ordinary instants instead."""
    tz = ZoneInfo(zone)
    out = []
    t = datetime(2024, 1, 1, tzinfo=UTC)
    prev = t.astimezone(tz).utcoffset()
    while t < datetime(2027, 1, 1, tzinfo=UTC):
        t += timedelta(hours=1)
        off = t.astimezone(tz).utcoffset()
        if off != prev:
            out.append(t)
            prev = off
    return out or [datetime(2025, m, 1, 12, tzinfo=UTC) for m in (1, 6, 11)]


def _mins(text: str) -> int:
    h, m = text.split(":")
    return int(h) * 60 + int(m)


def reference_open(windows: list[tuple[set[int], str, str]], tz: ZoneInfo, t: datetime) -> bool:
    """Is ``t`` inside a window, read off the local wall clock (no intervals involved)."""
    w = t.astimezone(tz)
    minute = w.hour * 60 + w.minute
    wd = w.weekday()
    for days, a, b in windows:
        start, end = _mins(a), _mins(b)
        if end > start:
            if wd in days and start <= minute < end:
                return True
        elif (wd in days and minute >= start) or ((wd - 1) % 7 in days and minute < end):
            return True
    return False


def ambiguous(tz: ZoneInfo, t: datetime) -> bool:
    """True if the wall time at ``t`` occurs twice (a fall-back hour)."""
    w = t.astimezone(tz).replace(tzinfo=None)
    a = w.replace(tzinfo=tz, fold=0).utcoffset()
    b = w.replace(tzinfo=tz, fold=1).utcoffset()
    return a != b


times = st.integers(0, 24 * 4 - 1).map(lambda q: f"{q // 4:02d}:{q % 4 * 15:02d}")
ends = st.integers(1, 24 * 4).map(lambda q: f"{q // 4:02d}:{q % 4 * 15:02d}")
odd_times = st.integers(0, 24 * 60 - 1).map(lambda m: f"{m // 60:02d}:{m % 60:02d}")
day_sets = st.sets(st.integers(0, 6), min_size=1, max_size=7)


@st.composite
def schedules(draw):
    n = draw(st.integers(1, 3))
    windows = []
    for _ in range(n):
        start = draw(st.one_of(times, odd_times))
        end = draw(st.one_of(ends, odd_times).filter(lambda e, s=start: _mins(e) != _mins(s)))
        days = draw(day_sets)
        windows.append((days, start, end))
    spec = "; ".join(",".join(DAYS[d] for d in sorted(days)) + f" {a}-{b}"
                     for days, a, b in windows)
    return windows, spec


@pytest.mark.parametrize("zone", ZONES)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_contains_agrees_with_the_wall_clock_around_dst(zone, data):
    windows, spec = data.draw(schedules())
    tz = ZoneInfo(zone)
    sched = Schedule.parse(spec, zone)
    center = data.draw(st.sampled_from(transitions(zone)))
    t = center - timedelta(hours=30)
    checked = 0
    while t < center + timedelta(hours=30):
        if not ambiguous(tz, t):
            assert sched.contains(t) == reference_open(windows, tz, t), (spec, zone, t,
                                                                          t.astimezone(tz))
            checked += 1
        t += timedelta(minutes=1)
    assert checked > 2000


@pytest.mark.parametrize("zone", ZONES)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_open_until_and_next_open_agree_with_contains(zone, data):
    windows, spec = data.draw(schedules())
    sched = Schedule.parse(spec, zone)
    center = data.draw(st.sampled_from(transitions(zone)))
    at = center + timedelta(minutes=data.draw(st.integers(-3 * 24 * 60, 3 * 24 * 60)),
                            seconds=data.draw(st.integers(0, 59)))
    sec = timedelta(seconds=1)
    end = sched.open_until(at)
    if sched.contains(at):
        assert sched.next_open(at) == at
        assert sched.seconds_until_open(at) == 0.0
        assert end is not None and end > at
        if end != FOREVER:
            assert sched.contains(end - sec) and not sched.contains(end)
            assert sched.seconds_until_close(at) == pytest.approx((end - at).total_seconds())
            # Open all the way: sample the period.
            for k in range(1, 20):
                assert sched.contains(at + (end - at) * k / 20)
        else:
            assert sched.seconds_until_close(at) is None
    else:
        assert end is None
        assert sched.seconds_until_close(at) == 0.0
        nxt = sched.next_open(at)
        assert nxt is not None and nxt > at  # every generated schedule opens within a week
        assert sched.contains(nxt) and not sched.contains(nxt - sec)
        assert sched.seconds_until_open(at) == pytest.approx((nxt - at).total_seconds())
        for k in range(1, 20):
            assert not sched.contains(at + (nxt - at) * k / 20 - sec)


def test_a_window_crossing_midnight_belongs_to_its_start_day():
    s = Schedule.parse("fri 20:00-06:00", "UTC")
    fri = datetime(2025, 1, 3, tzinfo=UTC)  # a Friday
    assert s.contains(fri + timedelta(hours=21))
    assert s.contains(fri + timedelta(hours=29))  # Saturday 05:00
    assert not s.contains(fri + timedelta(hours=5))  # Friday 05:00: Thursday's night is shut
    assert s.open_until(fri + timedelta(hours=21)) == fri + timedelta(hours=30)


def test_spring_forward_gap_means_the_first_instant_after_it():
    berlin = ZoneInfo("Europe/Berlin")
    # 2024-03-31 02:00 CET jumps to 03:00 CEST: 02:30 does not exist that day.
    s = Schedule.parse("sun 02:30-05:00", "Europe/Berlin")
    sat = datetime(2024, 3, 30, 12, tzinfo=berlin)
    assert s.next_open(sat) == datetime(2024, 3, 31, 3, 0, tzinfo=berlin).astimezone(UTC)
    assert s.open_until(datetime(2024, 3, 31, 3, 0, tzinfo=berlin)) == \
        datetime(2024, 3, 31, 5, 0, tzinfo=berlin).astimezone(UTC)
    # Lord Howe moves by 30 minutes: 02:00 -> 02:30 on 2024-10-06.
    lh = ZoneInfo("Australia/Lord_Howe")
    t = resolve_wall(datetime(2024, 10, 6).date(), 2 * 60 + 10, lh)
    assert t.astimezone(lh).replace(tzinfo=None) == datetime(2024, 10, 6, 2, 30)


def test_ambiguous_wall_time_means_its_first_occurrence_and_lengths_change():
    berlin = ZoneInfo("Europe/Berlin")
    # 2024-10-27 03:00 CEST falls back to 02:00 CET: 02:30 happens twice.
    t = resolve_wall(datetime(2024, 10, 27).date(), 150, berlin)
    assert t == datetime(2024, 10, 27, 0, 30, tzinfo=UTC)  # 02:30 CEST, the first
    s = Schedule.parse("20:00-06:00", "Europe/Berlin")
    fall = datetime(2024, 10, 26, 21, tzinfo=berlin)
    spring = datetime(2024, 3, 30, 21, tzinfo=berlin)
    normal = datetime(2024, 6, 1, 21, tzinfo=berlin)
    assert s.seconds_until_close(normal) == 9 * 3600
    assert s.seconds_until_close(fall) == 10 * 3600  # 11 h window: one hour longer
    assert s.seconds_until_close(spring) == 8 * 3600  # 9 h window: one hour shorter


def test_touching_windows_are_one_period_and_always_never_closes():
    s = Schedule.parse("mon-fri 20:00-06:00; sat,sun 00:00-24:00", "UTC")
    fri_night = datetime(2025, 1, 3, 21, tzinfo=UTC)
    assert s.open_until(fri_night) == datetime(2025, 1, 6, 0, tzinfo=UTC)  # Monday 00:00
    assert Schedule.parse("always").contains(fri_night)
    assert Schedule.always().seconds_until_close(fri_night) is None
    assert Schedule.always().seconds_until_open() == 0.0
    every_day = Schedule.parse("00:00-24:00", "Asia/Kolkata")
    assert every_day.seconds_until_close(fri_night) is None
    assert Schedule.parse("20:00-06:00").seconds_until_open() >= 0.0  # local zone works


@pytest.mark.parametrize(("spec", "needle"), [
    ("mnday 20:00-06:00", "bad day 'mnday' in 'mnday 20:00-06:00'"),
    ("mon-frx 20:00-06:00", "bad day 'frx'"),
    ("mon-fri 25:00-06:00", "bad time '25:00'"),
    ("mon 20:61-06:00", "bad time '20:61'"),
    ("24:00-06:00", "bad time '24:00'"),
    ("mon 20:00", "bad time range '20:00'"),
    ("mon 20:00-06:00; ", "empty window"),
    ("10:00-10:00", "empty time range '10:00-10:00'"),
    ("mon fri 10:00-11:00", "bad window 'mon fri 10:00-11:00'"),
    ("", "empty window spec"),
])
def test_parse_errors_name_the_bad_part(spec, needle):
    with pytest.raises(ValueError) as exc:
        Schedule.parse(spec, "UTC")
    assert needle in str(exc.value)


def test_unknown_zone_and_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Base'"):
        Schedule.parse("20:00-06:00", "Mars/Base")
    with pytest.raises(ValueError, match="timezone-aware"):
        Schedule.parse("20:00-06:00", "UTC").contains(datetime(2025, 1, 1))


def test_days_accept_ranges_that_wrap_and_full_names():
    s = Schedule.parse("Friday-Mon 09:00-17:00", "UTC")
    assert [w.days for w in s.windows] == [frozenset({4, 5, 6, 0})]


def test_a_period_chains_through_windows_listed_in_any_order():
    ny = ZoneInfo("America/New_York")
    s = Schedule.parse("00:15-00:00; mon 00:00-00:15; mon,tue 00:00-00:15", "America/New_York")
    at = datetime(2024, 3, 10, 3, 0, tzinfo=ny)  # Sunday, just after clocks sprang forward
    assert s.open_until(at) == datetime(2024, 3, 13, 0, 0, tzinfo=ny).astimezone(UTC)


def test_answers_are_in_utc_even_when_open_at_the_instant_asked():
    """Review R1: next_open returned ``at`` in the caller's zone when open (the class promises
    UTC answers)."""
    berlin = ZoneInfo("Europe/Berlin")
    at = datetime(2025, 1, 3, 21, 30, tzinfo=berlin)
    for sched in (Schedule.parse("20:00-06:00", "Europe/Berlin"), Schedule.always()):
        nxt = sched.next_open(at)
        assert nxt == at and nxt.tzinfo is UTC


def test_an_unknown_local_zone_falls_back_to_utc_loudly(monkeypatch, caplog):
    """Review R1: the UTC fallback was silent, so a window could be hours off unnoticed."""
    import tzlocal

    from officegrid.worker.windows import local_zone

    def broken():
        raise LookupError("no /etc/localtime")

    monkeypatch.setattr(tzlocal, "get_localzone", broken)
    with caplog.at_level("WARNING", logger="officegrid.worker.windows"):
        assert local_zone() is UTC
    assert "cannot tell this machine's time zone (no /etc/localtime)" in caplog.text
