"""Result export to CSV, JSON Lines and Parquet files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from officegrid.records import open_writer
from officegrid.records.units import decode_unit_result, result_columns

ROWS = [
    {"name": "Ann", "n": 1, "score": 0.5, "ok": True, "tags": ["a", "b"]},
    {"name": "Bö", "n": 2, "extra": {"x": 1}},  # score, ok, tags missing
    {"n": None, "score": 2, "ok": False, "name": 'quote " and, comma\nnewline'},
]
COLUMNS = ["name", "n", "score", "ok", "tags", "extra"]


def read_back(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    if path.suffix in (".jsonl", ".ndjson"):
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def leftovers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if ".part" in p.name)


def test_csv_round_trip_with_missing_values(tmp_path):
    out = tmp_path / "out.csv"
    with open_writer(out, COLUMNS) as w:
        assert w.write_rows(iter(ROWS)) == 3
    assert out.read_bytes().startswith(b"name,n,score,ok,tags,extra\r\n")
    assert read_back(out) == [
        {"name": "Ann", "n": "1", "score": "0.5", "ok": "True", "tags": '["a","b"]', "extra": ""},
        {"name": "Bö", "n": "2", "score": "", "ok": "", "tags": "", "extra": '{"x":1}'},
        {
            "name": 'quote " and, comma\nnewline',
            "n": "",
            "score": "2",
            "ok": "False",
            "tags": "",
            "extra": "",
        },
    ]
    assert leftovers(tmp_path) == []


def test_jsonl_round_trip_with_missing_values(tmp_path):
    out = tmp_path / "out.jsonl"
    with open_writer(out, COLUMNS) as w:
        w.write_rows(ROWS)
    got = read_back(out)
    assert [list(r) for r in got] == [COLUMNS] * 3  # every column, in order
    assert got == [{c: r.get(c) for c in COLUMNS} for r in ROWS]
    assert out.read_bytes().count(b"\n") == 3 and b"\r" not in out.read_bytes()


def test_parquet_round_trip_types_and_nulls(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "out.parquet"
    with open_writer(out, COLUMNS + ["never"]) as w:
        w.write_rows(ROWS)
    schema = pq.read_schema(out)
    assert {f.name: f.type for f in schema} == {
        "name": pa.string(),
        "n": pa.int64(),
        "score": pa.float64(),  # 0.5 and 2
        "ok": pa.bool_(),
        "tags": pa.string(),  # nested -> JSON text
        "extra": pa.string(),
        "never": pa.string(),  # no value at all
    }
    assert read_back(out) == [
        {
            "name": "Ann",
            "n": 1,
            "score": 0.5,
            "ok": True,
            "tags": '["a","b"]',
            "extra": None,
            "never": None,
        },
        {
            "name": "Bö",
            "n": 2,
            "score": None,
            "ok": None,
            "tags": None,
            "extra": '{"x":1}',
            "never": None,
        },
        {
            "name": 'quote " and, comma\nnewline',
            "n": None,
            "score": 2.0,
            "ok": False,
            "tags": None,
            "extra": None,
            "never": None,
        },
    ]


def test_parquet_widens_types_across_row_groups(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"a": 1, "b": 1, "c": None, "d": True},
        {"a": 2, "b": 2, "c": None, "d": False},
        {"a": 3.5, "b": "x", "c": 7, "d": True},  # second row group: a -> float, b -> str
        {"a": 4, "b": 3, "c": 8, "d": None},
        {"a": 5, "b": [1], "c": 9, "d": 1},  # third: d -> str
    ]
    out = tmp_path / "w.parquet"
    with open_writer(out, ["a", "b", "c", "d"], row_group_rows=2) as w:
        w.write_rows(rows)
    pf = pq.ParquetFile(out)
    assert pf.num_row_groups == 3
    assert {f.name: f.type for f in pf.schema_arrow} == {
        "a": pa.float64(),
        "b": pa.string(),
        "c": pa.int64(),
        "d": pa.string(),
    }
    assert pq.read_table(out).to_pylist() == [
        {"a": 1.0, "b": "1", "c": None, "d": "True"},
        {"a": 2.0, "b": "2", "c": None, "d": "False"},
        {"a": 3.5, "b": "x", "c": 7, "d": "True"},
        {"a": 4.0, "b": "3", "c": 8, "d": None},
        {"a": 5.0, "b": "[1]", "c": 9, "d": "1"},
    ]
    assert leftovers(tmp_path) == []


def test_parquet_huge_int_becomes_text(tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "big.parquet"
    with open_writer(out, ["v"]) as w:
        w.write_rows([{"v": 2**70}, {"v": 1}])
    assert pq.read_table(out).to_pylist() == [{"v": str(2**70)}, {"v": "1"}]


@pytest.mark.parametrize("ext", ["csv", "jsonl", "parquet"])
def test_no_rows_gives_a_valid_empty_file(tmp_path, ext):
    out = tmp_path / f"empty.{ext}"
    with open_writer(out, ["a", "b"]):
        pass
    assert read_back(out) == []
    if ext == "csv":
        assert out.read_text() == "a,b\n"
    if ext == "parquet":
        import pyarrow.parquet as pq

        assert pq.read_schema(out).names == ["a", "b"]


@pytest.mark.parametrize("ext", ["csv", "jsonl", "parquet"])
def test_failed_export_leaves_no_part_file_and_keeps_the_old_file(tmp_path, ext):
    out = tmp_path / f"out.{ext}"
    out.write_bytes(b"previous export")

    def rows():
        yield from ROWS
        raise RuntimeError("result blob missing")

    with (
        pytest.raises(RuntimeError, match="blob missing"),
        open_writer(out, COLUMNS, row_group_rows=2) as w,
    ):
        w.write_rows(rows())
    assert out.read_bytes() == b"previous export"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("ext", ["csv", "jsonl", "parquet"])
def test_writes_go_to_part_until_close(tmp_path, ext):
    out = tmp_path / f"out.{ext}"
    w = open_writer(out, ["a"], row_group_rows=1)
    w.write_rows([{"a": 1}, {"a": 2}])
    assert not out.exists()
    assert leftovers(tmp_path) == [f"out.{ext}.part"]
    w.close()
    w.close()  # idempotent
    assert out.exists() and leftovers(tmp_path) == []
    assert w.rows_written == 2
    with pytest.raises(ValueError, match="closed"):
        w.write_rows([{"a": 3}])


def test_abort_removes_part(tmp_path):
    w = open_writer(tmp_path / "x.parquet", ["a"], row_group_rows=1)
    w.write_rows([{"a": 1}, {"a": "x"}])  # forces a rewrite to x.parquet.part.1
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_unknown_extension_and_bad_columns(tmp_path):
    with pytest.raises(ValueError, match=r"unknown output format '\.xlsx'.*\.csv"):
        open_writer(tmp_path / "out.xlsx", ["a"])
    with pytest.raises(ValueError, match="duplicate column name 'a'"):
        open_writer(tmp_path / "out.csv", ["a", "b", "a"])
    assert list(tmp_path.iterdir()) == []


def test_export_of_unit_results(tmp_path):
    blobs = [
        b'{"k":1,"r":[{"name":"Ann"}]}\n{"k":2,"e":"bad"}\n',
        b'{"k":3,"r":[{"zip":"123","name":"Bo"}]}\n',
    ]
    columns = list(dict.fromkeys(c for b in blobs for c in result_columns(b)))
    assert columns == ["name", "zip"]
    out = tmp_path / "res.csv"
    with open_writer(out, columns) as w:
        for blob in blobs:
            w.write_rows(row for line in decode_unit_result(blob) for row in line.rows)
    assert read_back(out) == [{"name": "Ann", "zip": ""}, {"name": "Bo", "zip": "123"}]
