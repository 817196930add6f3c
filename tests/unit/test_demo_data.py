"""The demo's reference data export and its customer generator (officegrid.demo.data)."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from officegrid.demo.data import (
    CUSTOMER_COLUMNS,
    FAULT_KINDS,
    ZIP_COLUMNS,
    generate_customers,
    iter_customers,
    prepare_example,
    write_zips_csv,
)

N = 5000


@pytest.fixture(scope="module")
def zips(tmp_path_factory) -> tuple[int, Path, dict[str, dict[str, str]]]:
    path = tmp_path_factory.mktemp("zips") / "zips.csv"
    count = write_zips_csv(path)
    with path.open(encoding="utf-8", newline="") as fh:
        rows = {r["zip"]: r for r in csv.DictReader(fh)}
    return count, path, rows


@pytest.fixture(scope="module")
def customers(tmp_path_factory) -> tuple[Path, dict[str, int], list[dict[str, str]]]:
    path = tmp_path_factory.mktemp("customers") / "customers.csv"
    counts = generate_customers(path, n=N)
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return path, counts, rows


def test_zips_csv_is_the_real_list_with_its_gaps(zips):
    count, path, rows = zips
    assert count > 40_000
    assert len(rows) == count  # one row per ZIP, no duplicates
    with path.open(encoding="utf-8") as fh:
        assert fh.readline().rstrip("\n").split(",") == list(ZIP_COLUMNS)
    assert sum(1 for r in rows.values() if not r["county"]) > 100
    assert sum(1 for r in rows.values() if not r["timezone"]) > 100
    ny = rows["10001"]
    assert (ny["city"], ny["state"], ny["county"]) == ("New York", "NY", "New York County")
    assert ny["type"] == "STANDARD" and ny["active"] == "true"
    allston = rows["02134"]  # leading zero kept: the ZIP is text
    assert allston["city"] == "Allston" and "Boston" in allston["acceptable_cities"].split("|")
    assert abs(float(allston["lat"]) - 42.35) < 0.1 and abs(float(allston["long"]) + 71.13) < 0.1
    assert {r["active"] for r in rows.values()} == {"true", "false"}


def test_generate_customers_is_byte_identical_for_a_seed(customers, tmp_path):
    path, counts, _ = customers
    again = tmp_path / "again.csv"
    assert generate_customers(again, n=N) == counts
    assert again.read_bytes() == path.read_bytes()
    other = tmp_path / "other.csv"
    generate_customers(other, n=N, seed=7)
    assert other.read_bytes() != path.read_bytes()


def test_customer_rows_shape_and_unique_ids(customers):
    path, _, rows = customers
    assert len(rows) == N
    assert list(rows[0]) == list(CUSTOMER_COLUMNS)
    ids = [r["customer_id"] for r in rows]
    assert len(set(ids)) == N
    assert ids[0] == "C0000001" and ids[-1] == f"C{N:07d}"
    assert all(re.fullmatch(r"[^@\s]+@[\w.-]+\.\w+", r["email"]) for r in rows)
    assert all(r["email"].isascii() for r in rows)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d", r["signup_date"]) for r in rows)
    assert path.read_bytes().count(b"\r") == 0


def test_fault_counts_are_present_and_a_few_percent(customers):
    _, counts, _ = customers
    assert list(counts) == list(FAULT_KINDS)
    for kind, count in counts.items():
        assert count > 0, kind
        assert count / N < 0.05, kind
    assert 0.03 < sum(counts.values()) / N < 0.12


def test_faults_are_what_they_claim(customers, zips):
    """Each injected fault is visible in the row; clean rows are valid against the real ZIP list."""
    _, counts, rows = customers
    _, _, ref = zips
    truth = list(iter_customers(N))
    assert [rec for rec, _ in truth] == rows  # the file holds exactly the generated records
    seen = Counter(kind for _, faults in truth for kind in faults)
    assert dict(seen) == {k: v for k, v in counts.items() if v}

    def names(zip5: str) -> set[str]:
        r = ref[zip5]
        return {r["city"].lower(), *(a.lower() for a in r["acceptable_cities"].split("|") if a)}

    for rec, faults in truth:
        z, city = rec["zip"], rec["city"]
        if "zip_typo" in faults:
            assert re.fullmatch(r"\d{5}", z)
        elif "wrong_city" in faults:
            assert city and city.lower() not in names(z)
        elif "missing_zip" in faults:
            assert z == "" and city
        elif "missing_city" in faults:
            assert city == "" and z in ref
        elif "zip4" in faults:
            assert re.fullmatch(r"\d{5}-\d{4}", z) and z[:5] in ref
        elif "leading_zero_lost" in faults:
            assert 3 <= len(z) <= 4 and z.zfill(5) in ref and not z.startswith("0")
        else:
            assert z in ref and ref[z]["type"] == "STANDARD" and ref[z]["active"] == "true"
            assert city.lower() in names(z)
            assert rec["state"] == ref[z]["state"]
        non_ascii = not (rec["first_name"].isascii() and rec["last_name"].isascii())
        assert non_ascii == ("non_ascii_name" in faults)


def test_typos_hit_unknown_zips(customers, zips):
    """Most typos leave the ZIP list (a few land on another real ZIP, as in real files)."""
    _, counts, _ = customers
    _, _, ref = zips
    typos = [rec["zip"] for rec, faults in iter_customers(N) if "zip_typo" in faults]
    assert len(typos) == counts["zip_typo"]
    assert sum(1 for z in typos if z not in ref) > len(typos) // 3


def test_non_ascii_names_come_from_faker_locales(customers):
    _, _, rows = customers
    letters = {c for r in rows for c in r["first_name"] + r["last_name"] if not c.isascii()}
    assert letters & set("éèáíóúüöäñçãôâ")  # Spanish, French, German, Portuguese
    assert letters & set("ễạđĐươ")  # Vietnamese


def test_generate_customers_rejects_negative_n(tmp_path):
    with pytest.raises(ValueError, match="n must be"):
        generate_customers(tmp_path / "x.csv", n=-1)
    assert generate_customers(tmp_path / "empty.csv", n=0) == dict.fromkeys(FAULT_KINDS, 0)
    assert (tmp_path / "empty.csv").read_text() == ",".join(CUSTOMER_COLUMNS) + "\n"


def test_prepare_example_release_switch(zips, tmp_path):
    _, zips_path, _ = zips
    r1 = prepare_example(tmp_path / "r1", release=1, zips_csv=zips_path)
    r2 = prepare_example(tmp_path / "r2", release=2, zips_csv=zips_path)
    assert json.loads((r1 / "config.json").read_text()) == {"features": []}
    assert json.loads((r2 / "config.json").read_text()) == {"features": ["region"]}
    for d in (r1, r2):
        assert (d / "enrich.py").is_file() and (d / "branches.py").is_file()
        assert (d / "data" / "zips.csv").read_bytes() == zips_path.read_bytes()
    with pytest.raises(ValueError, match="release must be"):
        prepare_example(tmp_path / "r3", release=3, zips_csv=zips_path)
    with pytest.raises(FileExistsError):
        prepare_example(r1, release=1, zips_csv=zips_path)


def test_prepare_example_without_reference_data(zips, tmp_path):
    _, zips_path, _ = zips
    d = prepare_example(tmp_path / "nd", release=2, zips_csv=zips_path, reference_data=False)
    assert (d / "enrich.py").is_file()
    assert not (d / "data" / "zips.csv").exists()
    assert json.loads((d / "config.json").read_text()) == {"features": ["region"]}
