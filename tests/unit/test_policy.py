"""The owner policy (worker/policy.py): settings, presets and every start / suspend / continue /
vacate transition of Policy.evaluate, plus "cannot tell is never idle" as a property."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from officegrid.config import ConfigError, load_policy
from officegrid.worker.policy import (
    PRESETS,
    Observation,
    Policy,
    PolicySettings,
    format_duration,
    parse_duration,
)

NOON = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)  # a Wednesday
NIGHT = datetime(2026, 3, 4, 23, 0, tzinfo=UTC)
GIB = 1 << 30


def obs(**kw) -> Observation:
    """An observation of an idle, quiet machine with no units (override any field)."""
    base = dict(now=NOON, idle_seconds=3600.0, present=False, no_session=False,
                non_grid_cpu=0.05, on_battery=False, free_memory=8 * GIB,
                owner_paused_until=None, suspended_for=None, running=False)
    base.update(kw)
    return Observation(**base)


def policy(preset: str = "desktop", **kw) -> Policy:
    return Policy.from_settings(PolicySettings(preset=preset, tz="UTC", **kw))


# ----------------------------------------------------------------------------- settings


def test_durations_accept_seconds_and_units() -> None:
    assert parse_duration(90) == 90.0
    assert parse_duration("15m") == 900.0
    assert parse_duration("2h") == 7200.0
    assert parse_duration("1.5h") == 5400.0
    assert parse_duration(" 30 s ") == 30.0
    for bad in ("15x", "", "-5", "h", True, None):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_one_duration_parser_for_policy_and_pause() -> None:
    """`max_suspend = "1h30m"` in [policy] means what `officegrid pause 1h30m` means."""
    from officegrid.cli.pause import parse_duration as pause_duration

    for text, seconds in (("1h30m", 5400.0), ("1h 30m", 5400.0), ("90s", 90.0),
                          ("15 min", 900.0), ("1d2h", 93600.0), ("2h", 7200.0), ("45", 45.0)):
        assert parse_duration(text) == seconds == pause_duration(text), text
    assert parse_duration("0") == 0.0  # a policy number may be 0; a pause may not
    with pytest.raises(ValueError, match="duration '0' must be positive"):
        pause_duration("0")
    for bad in ("1h30", "30m1", "1hh", "1h-30m", "m30"):
        with pytest.raises(ValueError, match="max_suspend: expected seconds"):
            parse_duration(bad, "max_suspend")


def test_policy_durations_from_toml_take_compound_values(tmp_path: Path) -> None:
    cfg = tmp_path / "officegrid.toml"
    cfg.write_text('[policy]\npreset = "desktop"\nmax_suspend = "1h30m"\n'
                   'start_idle = "10m 30s"\n')
    p = Policy.from_settings(load_policy(config_file=cfg))
    assert (p.max_suspend, p.start_idle) == (5400.0, 630.0)
    cfg.write_text('[policy]\npreset = "desktop"\nmax_suspend = "1h30"\n')
    with pytest.raises(ConfigError, match=r"setting policy.max_suspend \(from .*officegrid"
                       r".toml \[policy\].max_suspend\): max_suspend: expected seconds"):
        load_policy(config_file=cfg)


def test_durations_for_people_never_say_0_min() -> None:
    cases = {0: "0 s", 0.4: "0 s", 30: "30 s", 59.4: "59 s", 60: "1 min", 61: "1 min 1 s",
             330: "5 min 30 s", 3600: "1 h", 5400: "1 h 30 min", 86399: "1 d",
             90000: "1 d 1 h", math.inf: "forever"}
    for seconds, text in cases.items():
        assert format_duration(seconds) == text, seconds
    late = datetime(2026, 3, 5, 5, 59, 15, tzinfo=UTC)  # 45 s before 06:00
    v = policy("night", window="20:00-06:00").evaluate(obs(now=late))
    assert v.reason == "window closes in 45 s"
    d = policy("desktop", start_idle=30, continue_idle=20, max_suspend=45).describe()
    assert "start after 30 s" in d and "continue after 20 s" in d and "after 45 s sus" in d
    assert " 0 min" not in d


def test_presets_fill_defaults_and_explicit_keys_override() -> None:
    d = policy("desktop")
    assert (d.start_idle, d.max_cpu, d.continue_idle, d.max_suspend) == (900, 0.30, 300, 600)
    assert not d.allow_battery and d.min_free_memory == 256 << 20
    tuned = policy("desktop", start_idle="5m", continue_idle=60, max_cpu=0.5,
                   min_free_memory="1GiB", allow_battery=True)
    assert (tuned.start_idle, tuned.continue_idle, tuned.max_cpu) == (300, 60, 0.5)
    assert tuned.min_free_memory == GIB and tuned.allow_battery
    assert policy("always").min_free_memory == 0
    assert policy("night").schedule is not None and policy("desktop").schedule is None


def test_bad_settings_are_refused_naming_the_problem() -> None:
    with pytest.raises(ValidationError, match="unknown preset 'dsktop'"):
        PolicySettings(preset="dsktop")
    with pytest.raises(ValidationError, match="extra"):
        PolicySettings(strat_idle=5)
    with pytest.raises(ValidationError, match="between 0 and 1"):
        PolicySettings(max_cpu=30)
    with pytest.raises(ValidationError, match="unknown idle source"):
        PolicySettings(sources=["x11", "wayland"])
    with pytest.raises(ValidationError):
        PolicySettings(preset="night", window="mnday 20:00-06:00")


def test_policy_table_from_toml(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("OFFICEGRID_POLICY", raising=False)
    cfg = tmp_path / "officegrid.toml"
    cfg.write_text('[policy]\npreset = "night"\nwindow = "mon-fri 20:00-06:00"\n'
                   'no_start_before_end = "45m"\n')
    s = load_policy(config_file=cfg)
    assert s.preset == "night" and s.value("no_start_before_end") == 2700
    # --policy overrides the preset; the table's numbers stay.
    s2 = load_policy("desktop-or-night", config_file=cfg)
    assert s2.preset == "desktop-or-night" and s2.value("no_start_before_end") == 2700
    monkeypatch.setenv("OFFICEGRID_POLICY", "desktop")
    assert load_policy(config_file=cfg).preset == "desktop"
    assert load_policy(config_file=tmp_path / "missing.toml").preset == "desktop"
    monkeypatch.delenv("OFFICEGRID_POLICY")
    assert load_policy(config_file=tmp_path / "missing.toml").preset == "always"


def test_bad_policy_config_is_refused_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "officegrid.toml"
    cfg.write_text("[policy]\nstrat_idle = 5\n")
    with pytest.raises(ConfigError, match=r"officegrid.toml: unknown key \[policy\].strat_idle"):
        load_policy(config_file=cfg)
    cfg.write_text('[policy]\npreset = "desktop"\nstart_idle = "15 minutes"\n')
    with pytest.raises(ConfigError, match=r"policy.start_idle .*officegrid.toml.*'15 minutes'"):
        load_policy(config_file=cfg)
    with pytest.raises(ConfigError, match="OFFICEGRID_POLICY or --policy.*unknown preset"):
        load_policy("sometimes", config_file=cfg.with_name("none.toml"))


def test_describe_says_the_preset_and_its_numbers() -> None:
    assert policy("always").describe().startswith("always (run whenever there is work")
    d = policy("desktop").describe()
    assert d.startswith("desktop (") and "start after 15 min" in d and "30%" in d
    assert "continue after 5 min idle" in d and "vacate after 10 min suspended" in d
    n = policy("night", window="mon-fri 20:00-06:00").describe()
    assert "mon-fri 20:00-06:00" in n and "30 min" in n


# ----------------------------------------------------------------------------- always


def test_always_runs_whatever_the_owner_does() -> None:
    p = policy("always")
    v = p.evaluate(obs(idle_seconds=0.0, non_grid_cpu=0.99))
    assert (v.may_start, v.action, v.state) == (True, "run", "idle")
    v = p.evaluate(obs(idle_seconds=None, running=True))
    assert (v.may_start, v.action, v.state) == (True, "run", "running")


# ----------------------------------------------------------------------------- desktop


def test_desktop_start_needs_idle_time_and_low_cpu() -> None:
    p = policy("desktop")
    v = p.evaluate(obs(idle_seconds=42.0))
    assert (v.may_start, v.state, v.reason) == (False, "waiting",
                                               "owner active (idle 42 s < 15 min)")
    assert p.evaluate(obs(idle_seconds=899.0)).may_start is False
    assert p.evaluate(obs(idle_seconds=900.0)).may_start is True
    v = p.evaluate(obs(non_grid_cpu=0.45))
    assert not v.may_start and v.reason == "owner busy (non-grid CPU 45% > 30%)"
    v = p.evaluate(obs(non_grid_cpu=None))
    assert not v.may_start and "cannot tell non-grid CPU" in v.reason


def test_desktop_suspends_on_input_and_continues_after_continue_idle() -> None:
    p = policy("desktop")
    running = p.evaluate(obs(running=True, idle_seconds=1000.0))
    assert (running.action, running.state, running.reason) == ("run", "running", None)
    touched = p.evaluate(obs(running=True, idle_seconds=0.1))
    assert (touched.action, touched.state) == ("suspend", "suspended")
    assert touched.reason.startswith("suspended: input") and not touched.may_start
    # Suspended: stays so until continue_idle (300 s) without input ...
    still = p.evaluate(obs(running=True, idle_seconds=299.0, suspended_for=299.0))
    assert still.action == "suspend" and "idle 4 min 59 s < 5 min" in still.reason
    cont = p.evaluate(obs(running=True, idle_seconds=300.0, suspended_for=310.0))
    assert (cont.action, cont.state) == ("run", "running")
    # ... and only when the owner's CPU use is low too (HTCondor's CONTINUE).
    busy = p.evaluate(obs(running=True, idle_seconds=400.0, suspended_for=400.0,
                          non_grid_cpu=0.9))
    assert busy.action == "suspend" and "non-grid CPU 90%" in busy.reason
    # A running unit is not suspended for CPU alone (the issue: suspend on input).
    assert p.evaluate(obs(running=True, idle_seconds=1000.0, non_grid_cpu=0.9)).action == "run"


def test_desktop_vacates_after_max_suspend() -> None:
    p = policy("desktop")
    v = p.evaluate(obs(running=True, idle_seconds=5.0, suspended_for=599.0))
    assert v.action == "suspend"
    v = p.evaluate(obs(running=True, idle_seconds=5.0, suspended_for=600.0))
    assert (v.action, v.state) == ("vacate", "waiting")
    assert v.reason.startswith("suspended over 10 min (")
    q = policy("desktop", max_suspend="1m")
    assert q.evaluate(obs(running=True, idle_seconds=5.0, suspended_for=60.0)).action == "vacate"


def test_low_memory_blocks_starts_and_vacates_early() -> None:
    p = policy("desktop")
    v = p.evaluate(obs(free_memory=100 << 20))
    # one formatter of sizes (officegrid.sizes.human_bytes): 100 MiB, 256 MiB
    assert not v.may_start and v.reason == "low memory (free 105 MB < 268 MB)"
    v = p.evaluate(obs(running=True, idle_seconds=5.0, suspended_for=10.0,
                       free_memory=100 << 20))
    assert v.action == "vacate" and v.reason.startswith("low memory")
    assert p.evaluate(obs(free_memory=None)).may_start  # unknown memory does not block
    assert policy("always").evaluate(obs(free_memory=1)).may_start  # off for always


def test_cannot_tell_is_never_idle() -> None:
    p = policy("desktop")
    v = p.evaluate(obs(idle_seconds=None, idle_detail="x11: no DISPLAY"))
    assert not v.may_start and v.reason == "cannot tell idle time: x11: no DISPLAY"
    v = p.evaluate(obs(running=True, idle_seconds=None))
    assert v.action == "suspend" and "cannot tell idle time" in v.reason
    v = p.evaluate(obs(running=True, idle_seconds=None, suspended_for=1e4))
    assert v.action == "vacate"


def test_nobody_logged_in_counts_as_idle() -> None:
    p = policy("desktop")
    assert p.evaluate(obs(idle_seconds=None, no_session=True)).may_start
    v = p.evaluate(obs(idle_seconds=None, no_session=True, running=True, suspended_for=5.0))
    assert v.action == "run"


def test_presence_without_input_blocks_and_suspends() -> None:
    p = policy("desktop")
    v = p.evaluate(obs(present=True))
    assert not v.may_start and "owner present" in v.reason
    assert p.evaluate(obs(present=True, running=True)).action == "suspend"


def test_locked_screen_counts_as_away_after_locked_idle() -> None:
    p = policy("desktop")
    assert not p.evaluate(obs(idle_seconds=59.0, locked=True)).may_start
    assert p.evaluate(obs(idle_seconds=61.0, locked=True)).may_start
    assert not p.evaluate(obs(idle_seconds=61.0, locked=False)).may_start


def test_battery_never_starts_unless_allowed() -> None:
    for preset in PRESETS:
        p = policy(preset)
        at = NIGHT if "night" in preset else NOON
        v = p.evaluate(obs(now=at, on_battery=True))
        assert not v.may_start and v.reason == "on battery", preset
        assert policy(preset, allow_battery=True).evaluate(obs(now=at, on_battery=True)).may_start
    v = policy("desktop").evaluate(obs(on_battery=True, running=True))
    assert v.action == "suspend" and v.reason == "on battery"
    assert policy("desktop").evaluate(obs(on_battery=None)).may_start  # unknown: not battery


def test_owner_pause_suspends_then_vacates_and_ends_on_time() -> None:
    p = policy("desktop")
    until = NOON.timestamp() + 3600
    v = p.evaluate(obs(owner_paused_until=until))
    assert (v.may_start, v.state, v.reason) == (False, "paused", "paused by owner")
    v = p.evaluate(obs(owner_paused_until=until, owner_paused_by="alice, bob", running=True))
    assert (v.action, v.reason) == ("suspend", "paused by owner (alice, bob)")
    v = p.evaluate(obs(owner_paused_until=math.inf, running=True))
    assert v.action == "suspend" and v.reason == "paused by owner"
    v = p.evaluate(obs(owner_paused_until=until, running=True, suspended_for=600.0))
    assert v.action == "vacate"
    assert p.evaluate(obs(owner_paused_until=NOON.timestamp() - 1)).may_start  # expired
    assert policy("always").evaluate(obs(owner_paused_until=until)).reason == "paused by owner"


# ----------------------------------------------------------------------------- night


def test_night_only_inside_the_window_and_vacates_at_its_end() -> None:
    p = policy("night", window="20:00-06:00")
    v = p.evaluate(obs(now=NOON))
    assert (v.may_start, v.reason) == (False, "outside window")
    assert p.evaluate(obs(now=NIGHT, idle_seconds=0.0)).may_start  # the owner is not asked
    v = p.evaluate(obs(now=NOON, running=True))
    assert (v.action, v.reason) == ("vacate", "outside window")
    assert p.evaluate(obs(now=NIGHT, running=True, idle_seconds=0.0)).action == "run"


def test_night_no_new_unit_in_the_last_minutes() -> None:
    p = policy("night", window="20:00-06:00", no_start_before_end="30m")
    late = datetime(2026, 3, 5, 5, 40, tzinfo=UTC)
    v = p.evaluate(obs(now=late))
    assert not v.may_start and v.reason == "window closes in 20 min"
    assert p.evaluate(obs(now=late, running=True)).action == "run"  # running ones finish
    assert p.evaluate(obs(now=datetime(2026, 3, 5, 5, 29, tzinfo=UTC))).may_start


def test_night_weekdays_and_dst() -> None:
    p = Policy.from_settings(PolicySettings(preset="night", window="mon-fri 20:00-06:00",
                                            tz="Europe/Berlin", no_start_before_end=0))
    berlin = ZoneInfo("Europe/Berlin")
    assert p.evaluate(obs(now=datetime(2026, 3, 6, 21, 0, tzinfo=berlin))).may_start  # Fri
    assert not p.evaluate(obs(now=datetime(2026, 3, 7, 21, 0, tzinfo=berlin))).may_start  # Sat
    # Sunday night is not mon-fri: Monday 05:59 belongs to a window that never opened.
    assert not p.evaluate(obs(now=datetime(2026, 3, 30, 5, 59, tzinfo=berlin))).may_start
    # The night clocks spring forward (Sun 29 March 2026) a daily window still ends at 06:00
    # local time, one real hour earlier in UTC than the night before.
    daily = Policy.from_settings(PolicySettings(preset="night", window="20:00-06:00",
                                                tz="Europe/Berlin", no_start_before_end=0))
    assert daily.evaluate(obs(now=datetime(2026, 3, 29, 5, 59, tzinfo=berlin))).may_start
    assert not daily.evaluate(obs(now=datetime(2026, 3, 29, 6, 0, tzinfo=berlin))).may_start
    assert daily.evaluate(obs(now=datetime(2026, 3, 28, 4, 30, tzinfo=UTC))).may_start  # CET
    assert daily.evaluate(obs(now=datetime(2026, 3, 29, 3, 59, tzinfo=UTC))).may_start
    assert not daily.evaluate(obs(now=datetime(2026, 3, 29, 4, 0, tzinfo=UTC))).may_start  # CEST


# ----------------------------------------------------------------------------- either


def test_desktop_or_night_either_allows() -> None:
    p = policy("desktop-or-night", window="20:00-06:00")
    assert p.evaluate(obs(now=NIGHT, idle_seconds=0.0)).may_start  # night allows
    assert p.evaluate(obs(now=NOON, idle_seconds=3600.0)).may_start  # desktop allows
    v = p.evaluate(obs(now=NOON, idle_seconds=10.0))
    assert not v.may_start and v.reason.startswith("outside window; owner active")
    # Inside the window input does not suspend; outside it, the desktop rules apply and
    # the window's end does not vacate an idle desktop's units.
    assert p.evaluate(obs(now=NIGHT, running=True, idle_seconds=0.0)).action == "run"
    assert p.evaluate(obs(now=NOON, running=True, idle_seconds=0.0)).action == "suspend"
    assert p.evaluate(obs(now=NOON, running=True, idle_seconds=5000.0)).action == "run"


# ----------------------------------------------------------------------------- properties

_observations = st.builds(
    Observation,
    now=st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2028, 1, 1),
                     timezones=st.just(UTC)),
    idle_seconds=st.none() | st.floats(0, 1e6),
    present=st.booleans(),
    no_session=st.booleans(),
    non_grid_cpu=st.none() | st.floats(0, 1),
    on_battery=st.none() | st.booleans(),
    free_memory=st.none() | st.integers(0, 1 << 36),
    owner_paused_until=st.none() | st.floats(0, 2e9) | st.just(math.inf),
    suspended_for=st.none() | st.floats(0, 1e5),
    running=st.booleans(),
    idle_detail=st.text(max_size=20),
    locked=st.booleans(),
)
_POLICIES = {name: policy(name) for name in PRESETS}


@given(o=_observations, preset=st.sampled_from(PRESETS))
def test_verdicts_are_well_formed_and_deterministic(o: Observation, preset: str) -> None:
    p = _POLICIES[preset]
    v = p.evaluate(o)
    assert v == p.evaluate(o)
    assert v.action in ("run", "suspend", "vacate")
    assert v.state in ("running", "idle", "suspended", "waiting", "paused")
    assert (v.reason is None) == (v.state in ("running", "idle"))
    if v.may_start:
        assert v.action == "run"
    if not o.running:
        assert v.action == "run"
    if o.on_battery is True:
        assert not v.may_start


@given(o=_observations, preset=st.sampled_from(["desktop", "desktop-or-night"]))
def test_unknown_idle_never_counts_as_idle(o: Observation, preset: str) -> None:
    """With the idle time unknown (and somebody logged in), the desktop rules never start or
    keep running a unit: only the night window (or `always`) can."""
    o = dataclasses.replace(o, idle_seconds=None, no_session=False)
    p = _POLICIES[preset]
    v = p.evaluate(o)
    in_window = p.schedule is not None and p.schedule.contains(o.now)
    if not in_window:
        assert not v.may_start
        if o.running:
            assert v.action in ("suspend", "vacate")


# ----------------------------------------------------------------------------- review R2


def test_bad_window_or_zone_is_refused_naming_the_key(tmp_path: Path) -> None:
    """A whole-model check named no key ("setting policy. (..., OFFICEGRID_ or a flag)")."""
    cfg = tmp_path / "officegrid.toml"
    cfg.write_text('[policy]\npreset = "night"\ntz = "Mars/Base"\n')
    with pytest.raises(ConfigError,
                       match=r"policy\.tz \(from .*officegrid.toml \[policy\].tz\): .*Mars/Base"):
        load_policy(config_file=cfg)
    cfg.write_text('[policy]\npreset = "night"\nwindow = "25:00-06:00"\n')
    with pytest.raises(ConfigError, match=r"policy\.window \(from .*officegrid.toml "
                                          r"\[policy\].window\): .*25:00"):
        load_policy(config_file=cfg)
    cfg.write_text('[policy]\npreset = "night"\nwindow = "mon-fri 20:00-06:00"\n'
                   'tz = "Europe/Berlin"\n')
    assert Policy.from_settings(load_policy(config_file=cfg)).schedule is not None


# ----------------------------------------------------------------------------- messages


def test_numbers_that_read_the_same_show_the_comparison_actually_made() -> None:
    """issue 5 trial: "idle 10 s < 10 s" and "non-grid CPU 75% > 75%"."""
    p = policy("desktop", start_idle=10, continue_idle=10, max_cpu=0.75)
    v = p.evaluate(obs(idle_seconds=9.6))
    assert v.reason == "owner active (idle 9.6 s < 10.0 s)"
    v = p.evaluate(obs(non_grid_cpu=0.753))
    assert v.reason == "owner busy (non-grid CPU 75.3% > 75.0%)"
    v = p.evaluate(obs(running=True, idle_seconds=9.96, suspended_for=1.0))
    assert v.reason == "suspended: input (idle 9.96 s < 10.00 s)"
    # numbers that read differently keep the short form
    assert policy("desktop").evaluate(obs(non_grid_cpu=0.45)).reason \
        == "owner busy (non-grid CPU 45% > 30%)"


def test_min_free_memory_negative_is_refused_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "officegrid.toml"
    for bad in ("-3", '"-3"', '"-512MiB"'):
        cfg.write_text(f'[policy]\npreset = "desktop"\nmin_free_memory = {bad}\n')
        with pytest.raises(ConfigError, match=r"policy\.min_free_memory .*must not be negative"):
            load_policy(config_file=cfg)
    cfg.write_text('[policy]\npreset = "desktop"\nmin_free_memory = "0"\n')
    p = Policy.from_settings(load_policy(config_file=cfg))
    assert p.min_free_memory == 0 and p.evaluate(obs(free_memory=1)).may_start  # 0: off
