"""The demo's mid-job master change and its per-position check (officegrid.demo.master_change,
officegrid.demo.positions), on the real ZIP export, generated customers and the real reference
job: rows made before the change come from the original ZIP table, rows after it from the table
with the change's upserts applied."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from officegrid.demo.data import (
    ZIP_COLUMNS,
    generate_customers,
    iter_customers,
    prepare_example,
    write_zips_csv,
)
from officegrid.demo.master_change import MasterChange, plan_master_change
from officegrid.demo.positions import summarize_positions

sys.path.insert(0, str(Path(__file__).parent))

from test_address_enrichment import load_enrich  # noqa: E402

N = 3000
BEFORE, AFTER = 0, 200
EPOCH = "a" * 32  # the master's epoch (full id) the change was made in
OTHER = "b" * 32  # a later epoch starting again at the same position numbers


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("change")
    zips = tmp / "zips.csv"
    write_zips_csv(zips)
    customers = tmp / "customers.csv"
    generate_customers(customers, N)
    change = plan_master_change(zips, customers, retire=100, repoint=100)
    # The master after the change: the export with the upserts applied by key.
    with zips.open(encoding="utf-8", newline="") as fh:
        table = {r["zip"]: r for r in csv.DictReader(fh)}
    for up in change.upserts():
        table[up["zip"]].update(up)
    changed = tmp / "zips-changed.csv"
    with changed.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, ZIP_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(table.values())
    old = load_enrich(prepare_example(tmp / "old", zips_csv=zips), "enrich_old_master")
    new = load_enrich(prepare_example(tmp / "new", zips_csv=changed), "enrich_new_master")
    recs = [r for r, _ in iter_customers(N)]
    return zips, customers, change, recs, old, new


def rows_of(enrich, recs, unit: int, pos: int, epoch: str = EPOCH) -> list[dict]:
    data = json.dumps({"zips": [epoch, pos]})  # as the runner writes it, JSON text in exports
    return [{**enrich.process(dict(r), None), "_unit": unit, "_data": data} for r in recs]


def summarize(rows, change, **kw):
    return summarize_positions(rows, change, epoch=EPOCH, before=BEFORE, after=AFTER, **kw)


def test_plan_is_deterministic_disjoint_and_on_used_zips(setup):
    zips, customers, change, recs, _, _ = setup
    assert (len(change.retired), len(change.repointed)) == (100, 100)
    again = plan_master_change(zips, customers, retire=100, repoint=100)
    assert again.upserts() == change.upserts()
    assert not change.retired.keys() & change.repointed.keys()
    used = {r["zip"] for r in recs}
    for z, row in change.retired.items():
        assert z in used and row["active"] == "true" and row["type"] == "STANDARD"
    for z, (old, new) in change.repointed.items():
        assert z in used and old["state"] == new["state"] and old["zip"] == new["zip"] == z
        assert (old["lat"], old["long"]) != (new["lat"], new["long"])
        b_old, b_new = change.branches[z]
        assert b_old != b_new
    ups = change.upserts()
    assert len(ups) == 200 and all(u["active"] == "false" for u in ups[:100])
    assert set(ups[100]) == {"zip", "city", "county", "lat", "long", "acceptable_cities"}
    with pytest.raises(ValueError, match=">= 0"):
        plan_master_change(zips, customers, retire=-1)


def test_rows_before_and_after_the_change_agree_with_their_positions(setup):
    _, _, change, recs, old, new = setup
    half = len(recs) // 2
    rows = rows_of(old, recs[:half], 1, BEFORE) + rows_of(new, recs[half:], 2, AFTER)
    rep = summarize(rows, change)
    assert rep.ok, rep.examples
    assert rep.ordered() == [(EPOCH, BEFORE), (EPOCH, AFTER)]
    pb, pa = rep.positions[EPOCH, BEFORE], rep.positions[EPOCH, AFTER]
    assert (pb.rows, pb.units, pa.rows, pa.units) == (half, {1}, len(recs) - half, {2})
    # Retired ZIPs are flagged only after the change, and every one of them then.
    assert pa.retired_rows > 0 and pa.inactive_zip >= pa.retired_rows
    assert pb.retired_rows > 0 and pb.inactive_zip < pb.retired_rows
    # Re-pointed ZIPs move to another branch after the change only.
    assert pa.repointed_rows > 0 and pa.branch_moved == pa.repointed_rows
    assert pb.repointed_rows > 0 and pb.branch_moved == 0
    assert rep.as_dict()["ok"] is True and rep.label((EPOCH, AFTER)) == "after the change"
    assert [(p["epoch"], p["pos"]) for p in rep.as_dict()["positions"]] == rep.ordered()
    assert rep.show((EPOCH, AFTER)) == str(AFTER)  # one epoch: the position says it all


def test_the_same_position_in_another_epoch_is_kept_apart_and_fails(setup):
    """Position BEFORE of a later epoch is other data: its own summary row, shown with a short
    epoch, and not checked against the change (its positions are not the change's)."""
    _, _, change, recs, old, new = setup
    rows = rows_of(old, recs[:40], 1, BEFORE) + rows_of(new, recs[40:80], 2, BEFORE, OTHER)
    rep = summarize(rows, change)
    assert rep.ordered() == [(EPOCH, BEFORE), (OTHER, BEFORE)]
    assert (rep.positions[EPOCH, BEFORE].rows, rep.positions[OTHER, BEFORE].rows) == (40, 40)
    assert not rep.ok and rep.other_epoch_rows == 40 and rep.contradictions == 0
    assert rep.show((OTHER, BEFORE)) == f"{BEFORE} (epoch {OTHER[:8]})"
    assert rep.label((OTHER, BEFORE)) == "another epoch"
    assert any("epoch bbbbbbbb" in e for e in rep.examples)
    # A unit reading one position number in two epochs mixed positions.
    rows = rows_of(old, recs[:5], 3, BEFORE) + rows_of(old, recs[5:10], 3, BEFORE, OTHER)
    assert summarize(rows, change).mixed_units == {3: [(EPOCH, BEFORE), (OTHER, BEFORE)]}
    # The old shape, a bare position, does not say which data it was.
    rep = summarize([{"_unit": 1, "_data": {"zips": BEFORE}, "zip": "x", "flags": ""}], change)
    assert not rep.ok and rep.rows_without_position == 1


def test_new_data_at_an_old_position_is_a_contradiction(setup):
    _, _, change, recs, _, new = setup
    rep = summarize(rows_of(new, recs, 1, BEFORE), change)
    assert not rep.ok and rep.contradictions > 0 and not rep.mixed_units
    assert "before the change" in rep.examples[0] or "original" in rep.examples[0]


def test_old_data_at_the_new_position_is_a_contradiction(setup):
    _, _, change, recs, old, _ = setup
    rep = summarize(rows_of(old, recs, 1, AFTER), change)
    assert not rep.ok and rep.contradictions > 0


def test_a_unit_mixing_positions_fails(setup):
    _, _, change, recs, old, new = setup
    rows = rows_of(old, recs[:10], 7, BEFORE) + rows_of(new, recs[10:20], 7, AFTER)
    rep = summarize(rows, change)
    assert not rep.ok and rep.mixed_units == {7: [(EPOCH, BEFORE), (EPOCH, AFTER)]}
    assert rep.contradictions == 0
    assert any("unit 7 mixed positions" in e for e in rep.examples)


def test_rows_without_position_or_inside_the_change_fail(setup):
    _, _, change, recs, old, _ = setup
    rows = rows_of(old, recs[:5], 1, BEFORE)
    rows[0]["_data"] = None
    rep = summarize(rows, change)
    assert not rep.ok and rep.rows_without_position == 1
    z = next(iter(change.retired))
    inside = [{"_unit": 3, "_data": {"zips": [EPOCH, AFTER - 1]}, "zip": z, "flags": ""}]
    rep = summarize(inside, change)
    assert not rep.ok and rep.contradictions == 1 and "inside the change" in rep.examples[0]
    with pytest.raises(ValueError, match="greater"):
        summarize_positions([], MasterChange(), epoch=EPOCH, before=5, after=5)


def test_a_unit_leased_after_the_replicas_had_the_change_must_read_it(setup):
    _, _, change, recs, old, new = setup
    rows = rows_of(old, recs[:50], 1, BEFORE) + rows_of(new, recs[50:100], 2, AFTER)
    rep = summarize(rows, change, late_units={2, 99})
    assert rep.ok and rep.late_units == 1  # unit 99 has no rows
    rep = summarize(rows, change, late_units={1, 2})
    assert not rep.ok and rep.late_stale == {1: BEFORE} and rep.contradictions == 0
    assert any("unit 1 was leased after" in e for e in rep.examples)
