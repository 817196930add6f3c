"""Settings loading (file < env < flags, errors naming the key) and full-jitter backoff."""

from __future__ import annotations

import random

import pytest

from officegrid.backoff import Backoff
from officegrid.config import ConfigError, ServerSettings, WorkerSettings, load


def test_layers_and_types(tmp_path, monkeypatch):
    cfg = tmp_path / "officegrid.toml"
    cfg.write_text("[server]\nlease_seconds = 30\nport = 9000\n")
    monkeypatch.setenv("OFFICEGRID_PORT", "9100")
    s = load(ServerSettings, "server", {"host": "0.0.0.0", "port": None}, config_file=cfg)
    assert (s.lease_seconds, s.port, s.host) == (30.0, 9100, "0.0.0.0")


def test_unknown_key_and_bad_value_name_the_key(tmp_path, monkeypatch):
    cfg = tmp_path / "officegrid.toml"
    cfg.write_text("[worker]\nslotz = 2\n")
    with pytest.raises(ConfigError, match=r"unknown key \[worker\]\.slotz"):
        load(WorkerSettings, "worker", config_file=cfg)
    cfg.write_text("[worker]\nslots = 'many'\n")
    with pytest.raises(ConfigError, match="worker.slots"):
        load(WorkerSettings, "worker", config_file=cfg)
    cfg.write_text("[worker\n")
    with pytest.raises(ConfigError, match=str(cfg)):
        load(WorkerSettings, "worker", config_file=cfg)


def test_env_skip_keeps_admin_token_out_of_worker(tmp_path, monkeypatch):
    monkeypatch.setenv("OFFICEGRID_TOKEN", "oga_admin")
    s = load(WorkerSettings, "worker", config_file=tmp_path / "none.toml",
             env_skip=frozenset({"token"}))
    assert s.token is None


def test_full_jitter_is_capped_and_resets():
    b = Backoff(base=1.0, cap=8.0, rng=random.Random(7))
    delays = [b.next_delay() for _ in range(50)]
    assert all(0 <= d <= 8.0 for d in delays)
    assert max(delays[10:]) > 4.0  # the ceiling grew to the cap
    assert delays[0] <= 1.0
    b.success()
    assert b.next_delay() <= 1.0
    assert 10.0 <= b.jitter(10.0) <= 12.0


def test_a_misspelt_table_or_a_missing_named_file_is_refused(tmp_path, monkeypatch):
    import pytest

    from officegrid.config import ConfigError, WorkerSettings, load

    cfg = tmp_path / "officegrid.toml"
    cfg.write_text('[polcy]\npreset = "night"\n')
    with pytest.raises(ConfigError, match=r"unknown table \[polcy\]"):
        load(WorkerSettings, "worker", config_file=cfg)
    monkeypatch.setenv("OFFICEGRID_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="missing.toml: no such file"):
        load(WorkerSettings, "worker")
    monkeypatch.delenv("OFFICEGRID_CONFIG")
    monkeypatch.chdir(tmp_path / "..")
    assert load(WorkerSettings, "worker").slots == 1  # no officegrid.toml here: defaults


def test_owner_policy_events_are_logged_by_default_and_the_rest_stays_quiet(monkeypatch):
    import io
    import logging

    from officegrid import logs

    monkeypatch.delenv("OFFICEGRID_LOG_LEVEL", raising=False)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()
    logs.setup(stream=out)
    try:
        logging.getLogger("officegrid.worker.owner").info("suspending unit 7: input")
        logging.getLogger("officegrid.worker").info("chatty detail")
        text = out.getvalue()
        assert "suspending unit 7" in text and "chatty detail" not in text
    finally:
        logging.getLogger("officegrid.worker.owner").setLevel(logging.NOTSET)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_a_zero_memory_cap_is_refused_naming_the_key_and_floors_take_zero(tmp_path):
    """issue 5 trial: max_memory = "0" was accepted and killed every unit."""
    cfg = tmp_path / "officegrid.toml"
    for key in ("max_memory", "disk_budget"):
        for zero in ('"0"', "0", '"0GB"'):
            cfg.write_text(f"[worker]\n{key} = {zero}\n")
            with pytest.raises(ConfigError, match=rf"worker\.{key} .*must be more than 0"):
                load(WorkerSettings, "worker", config_file=cfg)
    cfg.write_text('[worker]\nmax_memory = "2GB"\nmin_free_disk = "0"\n')
    s = load(WorkerSettings, "worker", config_file=cfg)
    assert (s.max_memory, s.min_free_disk) == (2_000_000_000, 0)


@pytest.mark.parametrize("value", ['"-3"', "-3", '"-2GB"', '" -1 MiB"'])
def test_a_negative_size_says_it_is_negative(tmp_path, value):
    cfg = tmp_path / "officegrid.toml"
    cfg.write_text(f"[worker]\nmin_free_disk = {value}\n")
    with pytest.raises(ConfigError, match=r"worker\.min_free_disk .*must not be negative"):
        load(WorkerSettings, "worker", config_file=cfg)


def test_human_bytes_never_shows_an_exponent_and_pairs_differ():
    from officegrid.sizes import bytes_pair, human_bytes

    assert human_bytes(83.2e9) == "83.2 GB"
    assert human_bytes(1e14) == "100 TB"  # was "1e+05 GB"
    assert human_bytes(999_960) == "1 MB"  # rounds up a unit, not to "1e+03 kB"
    assert human_bytes(2.5e21) == "2500000 PB"
    assert human_bytes(512) == "512 B"
    assert bytes_pair(22720 << 20, 95367 << 20) == ("23.8 GB", "100 GB")
    # equal at 3 digits: exact counts, so "A < B" never reads "1 GB < 1 GB"
    assert bytes_pair(999_999_999, 1_000_000_000) == ("999,999,999 B", "1,000,000,000 B")
