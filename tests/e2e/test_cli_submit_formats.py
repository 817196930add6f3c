"""`officegrid submit` of good (or partly bad) input in each format, run end to end on a real
worker whose job echoes every record back, so the results show exactly what was read."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grid import wait_for

from .test_cli_support import Cli, module_grid, write_tree

ECHO = "def process(record, ctx):\n    return dict(record)\n"


@pytest.fixture(scope="module")
def mgrid(tmp_path_factory):
    with module_grid(tmp_path_factory, "formats") as g:
        cli = Cli(g.server.url, g.server.admin_token, g.tmp)
        g.echo_release = cli.publish(write_tree(g.tmp / "echo", {"echo.py": ECHO}), "echo")
        g.worker("fmt-w")
        yield g


@pytest.fixture
def cli(mgrid, tmp_path) -> Cli:
    return Cli(mgrid.server.url, mgrid.server.admin_token, tmp_path)


def run_echo(cli: Cli, name: str, *args: str) -> tuple[int, list[dict]]:
    """Submit ``name`` to the echo job and wait; return (job id, result rows from JSONL)."""
    res = cli("submit", "--entry", "echo:process", "--input", name, "--channel", "echo",
              "--wait", *args, timeout=120)
    assert res.returncode == 0, res
    job = int(res.last_line)
    cli.ok("results", job, "--out", "out.jsonl")
    rows = [json.loads(line) for line in (cli.cwd / "out.jsonl").read_text().splitlines()]
    return job, rows


def strip_meta(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("_") or k == "_key"} for r in rows]


def test_max_bad_rows_2_with_2_bad_rows_creates_the_job(cli, mgrid, tmp_path):
    (tmp_path / "two.csv").write_text("id,value\nr1,1\nr2,2,extra\nr3,3\nr4\nr5,5\n")
    res = cli("submit", "--entry", "echo:process", "--input", "two.csv", "--channel", "echo",
              "--max-bad-rows", "2")
    assert res.returncode == 0, res
    job = int(res.last_line)
    assert res.lines == [str(job)], res
    assert "skipped bad row two.csv:3: row has 3 fields, header has 2" in res.err, res
    assert "skipped bad row two.csv:5: row has 1 field, header has 2" in res.err, res
    assert f"job {job}: 3 records in 1 units, 2 bad rows skipped" in res.err, res

    info = mgrid.admin.job(job)
    assert info["counts"]["records"] == 3
    assert info["bad_rows"] == ["two.csv:3: row has 3 fields, header has 2",
                                "two.csv:5: row has 1 field, header has 2"]
    status = cli.ok("status", job)
    assert "skipped at submit: two.csv:3: row has 3 fields, header has 2" in status.out, status
    assert "skipped at submit: two.csv:5: row has 1 field, header has 2" in status.out, status

    wait_for(lambda: mgrid.admin.job(job)["state"] == "done", 60, what=f"job {job} done")
    cli.ok("results", job, "--out", "out.csv")
    with open(tmp_path / "out.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    # Keys are input positions counting the bad rows, so they do not shift when rows are skipped.
    assert [(r["_key"], r["id"], r["value"]) for r in rows] == [
        ("1", "r1", "1"), ("3", "r3", "3"), ("5", "r5", "5")]


def test_cp1252_csv_with_encoding_flag(cli, tmp_path):
    text = "id,name,price\n1,café,5 €\n2,naïve,3\n3,“quoted”,0\n"
    (tmp_path / "latin.csv").write_bytes(text.encode("cp1252"))
    _, rows = run_echo(cli, "latin.csv", "--encoding", "cp1252", "--key", "id")
    assert strip_meta(rows) == [
        {"id": "1", "name": "café", "price": "5 €"},
        {"id": "2", "name": "naïve", "price": "3"},
        {"id": "3", "name": "“quoted”", "price": "0"},
    ]


def test_semicolon_delimited_csv_is_sniffed(cli, tmp_path):
    (tmp_path / "eu.csv").write_text(
        'id;name;amount\n1;"Müller; Hans";3,50\n2;Smith, J.;4\n3;"say ""hi""";0,1\n',
        encoding="utf-8")
    _, rows = run_echo(cli, "eu.csv")
    assert strip_meta(rows) == [
        {"_key": 1, "id": "1", "name": "Müller; Hans", "amount": "3,50"},
        {"_key": 2, "id": "2", "name": "Smith, J.", "amount": "4"},
        {"_key": 3, "id": "3", "name": 'say "hi"', "amount": "0,1"},
    ]


def test_jsonl_input(cli, tmp_path):
    records = [
        {"id": "a", "n": 1, "city": "Zürich", "tags": ["x", "y"], "addr": {"zip": "8001"}},
        {"id": "b", "n": 2.5, "city": None, "tags": [], "addr": {}},
        {"id": "c", "n": -3, "ok": True},
    ]
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    (tmp_path / "in.jsonl").write_text(lines[0] + "\n\n" + "\n".join(lines[1:]) + "\n",
                                       encoding="utf-8")
    _, rows = run_echo(cli, "in.jsonl", "--key", "id")
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    # Fields are the union in first-seen order; a record without one gets null.
    assert list(rows[0]) == ["id", "n", "city", "tags", "addr", "ok", "_release", "_env",
                             "_unit", "_worker"]
    assert strip_meta(rows) == [
        {"id": "a", "n": 1, "city": "Zürich", "tags": ["x", "y"], "addr": {"zip": "8001"},
         "ok": None},
        {"id": "b", "n": 2.5, "city": None, "tags": [], "addr": {}, "ok": None},
        {"id": "c", "n": -3, "city": None, "tags": None, "addr": None, "ok": True},
    ]


def test_parquet_input(cli, mgrid, tmp_path):
    table = pa.table({
        "id": pa.array([10, 20, 30], pa.int64()),
        "name": pa.array(["ann", None, "cé"], pa.string()),
        "score": pa.array([1.5, 2.0, None], pa.float64()),
        "active": pa.array([True, False, None], pa.bool_()),
    })
    pq.write_table(table, tmp_path / "in.parquet")
    job, rows = run_echo(cli, "in.parquet", "--key", "id", "--unit-size", "2")
    assert strip_meta(rows) == [
        {"id": 10, "name": "ann", "score": 1.5, "active": True},
        {"id": 20, "name": None, "score": 2.0, "active": False},
        {"id": 30, "name": "cé", "score": None, "active": None},
    ]
    assert {r["_release"] for r in rows} == {mgrid.echo_release}
    assert mgrid.admin.job(job)["counts"]["units"] == 2
    # ... and exported to Parquet the types survive.
    cli.ok("results", job, "--out", "out.parquet")
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column_names == ["id", "name", "score", "active", "_release", "_env", "_unit",
                                "_worker"]
    assert out.schema.field("id").type == pa.int64()
    assert out.schema.field("score").type == pa.float64()
    assert out.schema.field("active").type == pa.bool_()
    assert out.column("active").to_pylist() == [True, False, None]
