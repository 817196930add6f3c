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
