"""The reference job examples/address_enrichment, run on generated records and real ZIP data."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from officegrid.demo.data import example_dir, iter_customers, prepare_example, write_zips_csv

N = 5000
FIELDS_R1 = [
    "customer_id",
    "zip",
    "zip_status",
    "city",
    "state",
    "county",
    "lat",
    "long",
    "timezone",
    "nearest_branch",
    "branch_km",
    "city_match",
    "flags",
]


def load_enrich(directory: Path, name: str) -> ModuleType:
    """Import enrich.py of a release copy as the runner would: its directory on sys.path."""
    sys.path.insert(0, str(directory))
    sys.modules.pop("branches", None)
    try:
        spec = importlib.util.spec_from_file_location(name, directory / "enrich.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(directory))
        sys.modules.pop("branches", None)
    return module


@pytest.fixture(scope="module")
def zips_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ref") / "zips.csv"
    write_zips_csv(path)
    return path


@pytest.fixture(scope="module")
def ref(zips_csv) -> dict[str, dict[str, str]]:
    with zips_csv.open(encoding="utf-8", newline="") as fh:
        return {r["zip"]: r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def enrich(tmp_path_factory, zips_csv) -> ModuleType:
    d = prepare_example(tmp_path_factory.mktemp("r1") / "ae", release=1, zips_csv=zips_csv)
    return load_enrich(d, "enrich_release1")


@pytest.fixture(scope="module")
def enrich2(tmp_path_factory, zips_csv) -> ModuleType:
    d = prepare_example(tmp_path_factory.mktemp("r2") / "ae", release=2, zips_csv=zips_csv)
    return load_enrich(d, "enrich_release2")


@pytest.fixture(scope="module")
def generated(enrich) -> list[tuple[dict, tuple[str, ...], dict]]:
    return [(rec, faults, enrich.process(dict(rec), None)) for rec, faults in iter_customers(N)]


def rec(zip_: object, city: str = "", state: str = "", cid: str = "T1") -> dict:
    return {"customer_id": cid, "zip": zip_, "city": city, "state": state}


def test_example_dir_in_tree_has_no_reference_data():
    d = example_dir()
    assert (d / "enrich.py").is_file() and (d / "README.md").is_file()
    assert json.loads((d / "config.json").read_text()) == {"features": []}
    assert not (d / "data" / "zips.csv").exists()


def test_known_zip_gets_city_state_county(enrich):
    out = enrich.process(rec("10001", "New York", "NY"), None)
    assert list(out) == FIELDS_R1
    assert out["zip"] == "10001" and out["zip_status"] == "ok"
    assert (out["city"], out["state"], out["county"]) == ("New York", "NY", "New York County")
    assert out["timezone"] == "America/New_York"
    assert out["lat"] == pytest.approx(40.7484) and out["long"] == pytest.approx(-73.9967)
    assert out["city_match"] is True and out["flags"] == ""


def test_clean_generated_records_match_the_reference(generated, ref):
    clean = [(r, o) for r, f, o in generated if not set(f) - {"non_ascii_name"}]
    assert len(clean) > N * 0.9
    for r, o in clean:
        z = ref[r["zip"]]
        assert o["zip_status"] == "ok" and o["zip"] == r["zip"]
        assert (o["city"], o["state"], o["county"]) == (z["city"], z["state"], z["county"])
        assert o["city_match"] is True, (r, o)
        assert "city_mismatch" not in o["flags"] and "state_mismatch" not in o["flags"]


def test_every_generated_record_is_processed(generated):
    assert len(generated) == N
    for _, _, o in generated:
        assert list(o) == FIELDS_R1
        assert o["zip"] == "" or (len(o["zip"]) == 5 and o["zip"].isdigit())
        assert o["zip_status"] in {"ok", "fixed_leading_zero", "zip4_trimmed", "unknown", "missing"}


def test_zip_typo_is_unknown_or_points_elsewhere(generated, ref):
    typos = [(r, o) for r, f, o in generated if "zip_typo" in f]
    assert typos
    unknown = [(r, o) for r, o in typos if r["zip"] not in ref]
    assert unknown
    for _, o in unknown:
        assert o["zip_status"] == "unknown" and o["zip"] == ""
        assert o["city"] == "" and o["city_match"] is None and o["branch_km"] is None
    for r, o in typos:
        if r["zip"] in ref:  # the typo is another real ZIP: found, but the city rarely fits
            assert o["zip_status"] == "ok" and o["zip"] == r["zip"]


def test_unknown_and_malformed_zips(enrich):
    for raw in ("99999", "1234567", "ABCDE", "12", "1000l", "١٠٠٠١"):
        out = enrich.process(rec(raw, "New York", "NY"), None)
        assert (out["zip"], out["zip_status"], out["city_match"]) == ("", "unknown", None), raw


def test_leading_zero_loss_is_fixed(generated, enrich):
    lost = [(r, o) for r, f, o in generated if "leading_zero_lost" in f]
    assert lost
    for r, o in lost:
        assert o["zip_status"] == "fixed_leading_zero" and o["zip"] == r["zip"].zfill(5)
        assert o["city_match"] is True
    out = enrich.process(rec("2134", "Boston", "MA"), None)
    assert (out["zip"], out["zip_status"]) == ("02134", "fixed_leading_zero")
    assert out["city"] == "Allston"
    assert out["city_match"] is True  # Boston is an acceptable city of 02134
    as_int = enrich.process(rec(2134, "Allston", "MA"), None)  # a reader that typed the ZIP
    assert (as_int["zip"], as_int["zip_status"]) == ("02134", "fixed_leading_zero")


def test_zip4_is_trimmed(generated, enrich):
    zip4 = [(r, o) for r, f, o in generated if "zip4" in f]
    assert zip4
    for r, o in zip4:
        assert o["zip_status"] == "zip4_trimmed" and o["zip"] == r["zip"][:5]
    for raw in ("10001-1234", "100011234", " 10001 - 1234 "):
        out = enrich.process(rec(raw, "New York", "NY"), None)
        assert (out["zip"], out["zip_status"], out["city"]) == ("10001", "zip4_trimmed", "New York")


def test_city_mismatch_is_flagged(generated, enrich):
    wrong = [(r, o) for r, f, o in generated if "wrong_city" in f]
    assert wrong
    for _, o in wrong:
        assert o["city_match"] is False and "city_mismatch" in o["flags"].split(";")
    out = enrich.process(rec("10001", "Boston", "MA"), None)
    assert out["city_match"] is False
    assert out["flags"] == "city_mismatch;state_mismatch"
    assert out["city"] == "New York"  # the reference wins


def test_city_match_ignores_case_accents_and_abbreviations(enrich):
    assert enrich.process(rec("10001", "  NEW YORK ", "ny"), None)["city_match"] is True
    assert enrich.process(rec("00680", "Mayagüez", "PR"), None)["city_match"] is True
    st_louis = enrich.process(rec("63101", "St. Louis", "MO"), None)
    assert st_louis["city"] == "Saint Louis" and st_louis["city_match"] is True
    assert enrich.process(rec("63101", "St. Charles", "MO"), None)["city_match"] is False


def test_missing_fields(generated, enrich):
    no_zip = [o for r, f, o in generated if "missing_zip" in f]
    no_city = [o for r, f, o in generated if "missing_city" in f]
    assert no_zip and no_city
    assert all(o["zip_status"] == "missing" and o["zip"] == "" for o in no_zip)
    assert all(o["city_match"] is None and "missing_city" in o["flags"] for o in no_city)
    assert all(o["city"] and o["zip_status"] == "ok" for o in no_city)  # city from the ZIP
    out = enrich.process(rec(None, None, None), None)
    assert (out["zip_status"], out["flags"]) == ("missing", "missing_city;missing_state")


def test_nearest_branch(enrich):
    out = enrich.process(rec("10001", "New York", "NY"), None)  # Midtown Manhattan
    assert out["nearest_branch"] == "New York"
    assert 1.0 < out["branch_km"] < 10.0
    assert out["branch_km"] == round(out["branch_km"], 1)
    assert enrich.process(rec("98101", "Seattle", "WA"), None)["nearest_branch"] == "Seattle"
    assert enrich.process(rec("02134", "Allston", "MA"), None)["nearest_branch"] == "Boston"
    honolulu = enrich.process(rec("96813", "Honolulu", "HI"), None)
    assert honolulu["nearest_branch"] in {"San Francisco", "Los Angeles"}
    assert 3800 < honolulu["branch_km"] < 4200
    # haversine: New York - Los Angeles is about 3,936 km on the sphere
    assert enrich.haversine_km(40.7128, -74.0060, 34.0522, -118.2437) == pytest.approx(3936, abs=15)
    assert 10 <= len(enrich.BRANCHES) <= 14


def test_reference_gaps_are_flagged_not_raised(enrich):
    out = enrich.process(rec("09001", "Apo", "AE"), None)  # military: no county, tz, location
    assert out["zip_status"] == "ok" and out["city_match"] is True
    assert out["flags"] == "no_county;no_timezone;no_location"
    assert (out["lat"], out["nearest_branch"], out["branch_km"]) == (None, "", None)


def test_release2_adds_region(enrich, enrich2, generated):
    assert sorted(enrich.RELEASE_FEATURES) == []
    assert sorted(enrich2.RELEASE_FEATURES) == ["region"]
    out = enrich2.process(rec("10001", "New York", "NY"), None)
    assert out["region"] == "Northeast"
    assert list(out) == FIELDS_R1[:11] + ["region"] + FIELDS_R1[11:]
    assert enrich2.process(rec("98101", "Seattle", "WA"), None)["region"] == "West"
    assert enrich2.process(rec("00680", "Mayaguez", "PR"), None)["region"] == ""
    assert enrich2.process(rec("99999"), None)["region"] == ""
    assert "region" not in enrich.process(rec("10001", "New York", "NY"), None)
    for r, _, o in generated[:500]:  # release 2 differs only by the new field
        o2 = enrich2.process(dict(r), None)
        assert {k: v for k, v in o2.items() if k != "region"} == o


def test_bad_records_raise_clear_errors(enrich):
    with pytest.raises(TypeError, match="must be a dict"):
        enrich.process(["C1", "10001"], None)
    with pytest.raises(KeyError, match="zip"):
        enrich.process({"customer_id": "C1", "city": "X", "state": "NY"}, None)


def test_missing_reference_data_and_bad_config(tmp_path, zips_csv):
    d = prepare_example(tmp_path / "nodata", release=1, zips_csv=zips_csv)
    (d / "data" / "zips.csv").unlink()
    bare = load_enrich(d, "enrich_nodata")
    with pytest.raises(FileNotFoundError, match="zips.csv"):
        bare.process(rec("10001", "New York", "NY"), None)
    (d / "config.json").write_text('{"features": ["regoin"]}')
    with pytest.raises(ValueError, match="regoin"):
        load_enrich(d, "enrich_badconfig")


# ------------------------------------------------------------------------------------------
# The data source path: ctx.data("zips") on a real replica (the runner's own Context)


@pytest.fixture(scope="module")
def zips_source(tmp_path_factory, zips_csv):
    """A real master made from the ZIP export (key zip) and a real replica of it."""
    from officegrid.sync.replication import master
    from officegrid.sync.replication.remote import LocalRemote
    from officegrid.sync.replication.replica import Replica
    from officegrid.sync.replication.service import MasterService

    tmp = tmp_path_factory.mktemp("zips-source")
    (tmp / "data").mkdir()
    svc = MasterService(tmp / "data", "zips")
    master.build_from_file(svc.path, zips_csv, key="zip", table="zips")
    master.adopt(svc.path, svc.state)
    rep = Replica(tmp / "replica.sqlite", LocalRemote(svc))
    rep.catch_up()
    yield svc, rep
    rep.close()


def unit_ctx(release_dir: Path, replica_path: Path | None):
    """The runner's Context for one unit, declaring ``zips`` when a replica path is given."""
    import logging

    from officegrid.worker.runner import Context

    spec = {"release_dir": str(release_dir),
            "data": {"zips": str(replica_path)} if replica_path else {}}
    return Context(spec, logging.getLogger("test.enrich"))


@pytest.fixture(scope="module")
def enrich_nodata(tmp_path_factory, zips_csv) -> ModuleType:
    """Release 1 without data/zips.csv: it can only work from the data source."""
    d = prepare_example(tmp_path_factory.mktemp("r1nd") / "ae", release=1, reference_data=False)
    assert not (d / "data" / "zips.csv").exists()
    return load_enrich(d, "enrich_release1_nodata")


def test_replica_gives_the_same_results_as_the_csv(generated, enrich_nodata, zips_source,
                                                   tmp_path):
    _, rep = zips_source
    ctx = unit_ctx(tmp_path, rep.path)
    for r, _, o in generated:
        assert enrich_nodata.process(dict(r), ctx) == o
    # [epoch, position]: the epoch is the source's full epoch id (as `data status` shows it).
    assert ctx.data_positions() == {"zips": [zips_source[0].status()["epoch"], rep.position().pos]}


def test_job_without_the_source_reads_the_release_csv(enrich, tmp_path):
    ctx = unit_ctx(tmp_path, None)
    out = enrich.process(rec("10001", "New York", "NY"), ctx)
    assert out == enrich.process(rec("10001", "New York", "NY"), None)
    assert ctx.data_positions() == {}


def test_job_without_source_nor_csv_says_how_to_fix(enrich_nodata, tmp_path):
    with pytest.raises(FileNotFoundError, match="--data zips"):
        enrich_nodata.process(rec("10001", "New York", "NY"), unit_ctx(tmp_path, None))


def test_a_unit_keeps_its_snapshot_and_the_next_unit_sees_the_change(enrich_nodata, zips_source,
                                                                      ref, tmp_path):
    from officegrid.sync.replication import master

    svc, rep = zips_source
    seattle = rec("98101", "Seattle", "WA")
    manhattan = rec("10001", "New York", "NY")
    early = unit_ctx(tmp_path, rep.path)
    before_s = enrich_nodata.process(dict(seattle), early)
    before_m = enrich_nodata.process(dict(manhattan), early)
    assert before_s["nearest_branch"] == "Seattle" and "inactive_zip" not in before_m["flags"]
    epoch, pos0 = early.data_positions()["zips"]
    assert epoch == svc.status()["epoch"]

    # Retire 10001; re-point 98101 to the city, county and coordinates of 94102 (San Francisco).
    other = ref["94102"]
    m = master.connect(svc.path)
    try:
        master.upsert_rows(m, "zips", [
            {"zip": "10001", "active": "false"},
            {"zip": "98101", "city": other["city"], "county": other["county"],
             "lat": other["lat"], "long": other["long"]},
        ])
    finally:
        m.close()
    rep.catch_up()
    assert rep.position().pos > pos0

    # The unit that started before the change still reads its own snapshot, ZIPs it had not
    # looked up yet included.
    assert enrich_nodata.process(dict(seattle), early) == before_s
    assert enrich_nodata.process(dict(manhattan), early) == before_m
    assert "inactive_zip" not in enrich_nodata.process(rec("10001"), early)["flags"]
    assert early.data_positions()["zips"] == [epoch, pos0]

    late = unit_ctx(tmp_path, rep.path)
    after_s = enrich_nodata.process(dict(seattle), late)
    after_m = enrich_nodata.process(dict(manhattan), late)
    assert late.data_positions()["zips"] == [epoch, rep.position().pos]  # same epoch, newer
    assert after_m["flags"].split(";") == ["inactive_zip"]
    assert (after_s["city"], after_s["county"]) == ("San Francisco", "San Francisco County")
    assert after_s["nearest_branch"] == "San Francisco" and after_s["city_match"] is False
    assert after_s["flags"] == "city_mismatch"
