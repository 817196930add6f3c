"""``officegrid demo`` end to end on a small job: a real server, two real workers, the data
source ``zips`` changed mid-job, and the per-position summary it writes."""

from __future__ import annotations

import json

import pytest

from officegrid.cli.demo import run_demo

pytestmark = pytest.mark.slow


def test_demo_reads_the_data_source_and_summarizes_per_position(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = run_demo(records=6000, workers=2, unit_size=300, retire=60, repoint=60)
    summary = json.loads((tmp_path / "demo-output" / "summary.json").read_text())
    assert code == 0, summary
    assert summary["state"] == "done" and summary["ok"] is True
    assert summary["rows"] + summary["errors"] == 6000 and summary["units"] == 20
    data = summary["data"]
    assert data["source"] == "zips" and data["ok"] is True
    assert data["mixed_units"] == {} and data["rows_without_position"] == 0
    assert data["contradictions"] == 0 and data["late_stale"] == {}
    # Rows record [epoch, position]; every one is in the master's epoch (from `data status`).
    assert len(data["epoch"]) >= 32 and data["other_epoch_rows"] == 0
    assert {p["epoch"] for p in data["positions"]} == {data["epoch"]}
    positions = {p["pos"]: p for p in data["positions"]}
    # Every row is at the master's position before the change or at the one after it.
    assert set(positions) <= {data["before"], data["after"]}
    assert sum(p["rows"] for p in positions.values()) == summary["rows"]
    assert sum(p["units"] for p in positions.values()) == summary["units"]  # one each
    change = summary["change"]
    # The change comes at half the records: the units of the first half read the old master.
    assert change["applied"] is True
    assert len(change["retired"]) == 60 and len(change["repointed"]) == 60
    assert data["after"] == data["before"] + 120  # one log entry per changed row
    assert positions[data["before"]]["units"] >= 10
    if data["after"] in positions:  # units leased once a replica had the change
        after = positions[data["after"]]
        assert after["inactive_zip"] >= after["retired_rows"]
        assert after["branch_moved"] == after["repointed_rows"]
    assert (tmp_path / "demo-output" / "results.parquet").is_file()
