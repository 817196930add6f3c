"""`data sql | purge | apply` input checks through the real CLI and a real server: one write
statement only, no purge past the head, FILE:LINE errors with nothing applied (trial findings)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator

import pytest

from e2e.test_cli_support import Cli, module_grid


@pytest.fixture(scope="module")
def mgrid(tmp_path_factory) -> Iterator:
    with module_grid(tmp_path_factory, "datainput") as g:
        yield g


@pytest.fixture
def cli(mgrid, tmp_path) -> Cli:
    return Cli(mgrid.server.url, mgrid.server.admin_token, tmp_path)


def make(cli: Cli, name: str, n: int = 20) -> None:
    (cli.cwd / f"{name}.csv").write_text(
        "id,name,city\n" + "".join(f"{i},P{i},C{i % 3}\n" for i in range(1, n + 1)))
    assert cli.ok("data", "create", name, "--from", f"{name}.csv", "--key", "id", "--table",
                  "people", "--replace").last_line == name


def status(cli: Cli, name: str) -> dict:
    return json.loads(cli.ok("data", "status", name, "--json").stdout)[0]


def rows(mgrid, name: str, table: str = "people") -> list:
    conn = sqlite3.connect(mgrid.server.data_dir / "data" / f"{name}.sqlite")
    try:
        return conn.execute(f'SELECT * FROM "{table}" ORDER BY 1').fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize(("sql", "why"), [
    ("PRAGMA writable_schema=ON", "refused: PRAGMA"),
    ("ATTACH 'x.sqlite' AS x", "refused: ATTACH"),
    ("SELECT * FROM people", "writes nothing"),
    ("VACUUM", "refused: VACUUM"),
    ("", "an empty statement"),
    ("DELETE FROM people WHERE id=1; DELETE FROM people", "several statements"),
])
def test_data_sql_refuses_what_is_not_one_write(mgrid, cli, sql: str, why: str) -> None:
    make(cli, "sqlin")
    before = status(cli, "sqlin")["pos"]
    res = cli("data", "sql", "sqlin", sql)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert why in res.stderr and len(res.stderr.strip().splitlines()) == 1, res
    assert status(cli, "sqlin")["pos"] == before
    assert len(rows(mgrid, "sqlin")) == 20


def test_purge_past_the_head_or_negative_is_refused(mgrid, cli) -> None:
    make(cli, "purgein")
    cli.ok("data", "sql", "purgein", "UPDATE people SET city='X' WHERE id <= 5")
    st = status(cli, "purgein")
    head, base = st["pos"], st["base_pos"]
    assert head > base
    res = cli("data", "purge", "purgein", "--before", str(head + 1))
    assert res.returncode != 0 and f"past the head of 'purgein' (position {head})" in res.stderr
    res = cli("data", "purge", "purgein", "--before", "-1")
    assert res.returncode != 0 and "--before -1" in res.stderr
    assert status(cli, "purgein")["base_pos"] == base  # nothing was purged
    cli.ok("data", "purge", "purgein", "--before", str(head))
    assert status(cli, "purgein")["base_pos"] == head


def test_apply_unknown_column_names_file_and_line_and_applies_nothing(mgrid, cli) -> None:
    make(cli, "applyin")
    before = (status(cli, "applyin")["pos"], rows(mgrid, "applyin"))
    (cli.cwd / "ups.jsonl").write_text(
        '{"id": 1, "name": "new1"}\n\n{"id": 2, "name": "new2"}\n'
        '{"id": 3, "nmae": "typo"}\n')
    res = cli("data", "apply", "applyin", "--upsert", "ups.jsonl")
    assert res.returncode != 0
    assert "ups.jsonl:4: table 'people' has no column 'nmae'" in res.stderr, res
    (cli.cwd / "ups.csv").write_text("id,name,zip\n1,new1,10115\n")
    res = cli("data", "apply", "applyin", "--upsert", "ups.csv")
    assert "ups.csv:1: table 'people' has no column 'zip'" in res.stderr, res
    assert (status(cli, "applyin")["pos"], rows(mgrid, "applyin")) == before


def test_apply_row_the_master_refuses_names_file_and_line_and_applies_nothing(mgrid,
                                                                              cli) -> None:
    make(cli, "strictin")
    cli.ok("data", "sql", "strictin",
           "CREATE TABLE strict_t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    (cli.cwd / "s.jsonl").write_text(
        '{"id": 1, "v": "a"}\n{"id": 2, "v": "b"}\n\n{"id": 3, "v": null}\n{"id": 4, "v": "d"}\n')
    before = status(cli, "strictin")["pos"]
    res = cli("data", "apply", "strictin", "--table", "strict_t", "--upsert", "s.jsonl")
    assert res.returncode != 0
    assert "s.jsonl:4: NOT NULL constraint failed: strict_t.v" in res.stderr, res
    assert rows(mgrid, "strictin", "strict_t") == []
    assert status(cli, "strictin")["pos"] == before
    # Fixed, it applies whole, and the change log carries it.
    (cli.cwd / "s.jsonl").write_text('{"id": 1, "v": "a"}\n{"id": 3, "v": "c"}\n')
    res = cli.ok("data", "apply", "strictin", "--table", "strict_t", "--upsert", "s.jsonl")
    assert int(res.last_line) > before
    assert rows(mgrid, "strictin", "strict_t") == [(1, "a"), (3, "c")]


def test_apply_upsert_and_delete_stream_many_rows(mgrid, cli) -> None:
    make(cli, "bulkin", 5000)
    (cli.cwd / "up.csv").write_text(
        "id,city\n" + "".join(f"{i},Z{i}\n" for i in range(4001, 7001)))
    res = cli.ok("data", "apply", "bulkin", "--upsert", "up.csv")
    assert "3,000 rows upserted" in res.stderr + res.stdout
    got = dict((r[0], r) for r in rows(mgrid, "bulkin"))
    assert len(got) == 7000
    assert got["4001"] == ("4001", "P4001", "Z4001")  # only the given columns change
    assert got["7000"] == ("7000", None, "Z7000")
    (cli.cwd / "del.csv").write_text("id\n" + "".join(f"{i}\n" for i in range(1, 2001)))
    res = cli.ok("data", "apply", "bulkin", "--delete", "del.csv")
    assert "2,000 rows deleted" in res.stderr + res.stdout
    left = {int(r[0]) for r in rows(mgrid, "bulkin")}
    assert left == set(range(2001, 7001))
    replica = cli.cwd / "r.sqlite"
    cli.ok("data", "pull", "bulkin", "--to", str(replica))
    conn = sqlite3.connect(replica)
    assert conn.execute("SELECT * FROM people ORDER BY 1").fetchall() == rows(mgrid, "bulkin")


def test_apply_repeated_composite_key_ends_as_its_last_line(mgrid, cli) -> None:
    """Review finding: records with varying keys were applied grouped by their columns, so a
    composite key given three times ended as its second line said. File order now wins."""
    make(cli, "pairin")
    cli.ok("data", "sql", "pairin", "CREATE TABLE pair (a, b, v, w, PRIMARY KEY (a, b))")
    (cli.cwd / "pair.jsonl").write_text(
        '{"a": 1, "b": 1, "v": "first", "w": "x"}\n{"a": 1, "b": 1, "v": "second"}\n'
        '{"a": 1, "b": 1, "v": "third", "w": "z"}\n{"a": 1, "b": 2, "v": "other"}\n')
    cli.ok("data", "apply", "pairin", "--table", "pair", "--upsert", "pair.jsonl")
    assert rows(mgrid, "pairin", "pair") == [(1, 1, "third", "z"), (1, 2, "other", None)]
    replica = cli.cwd / "pair.sqlite"  # the replicas get the same rows
    cli.ok("data", "pull", "pairin", "--to", str(replica))
    conn = sqlite3.connect(replica)
    try:
        assert conn.execute("SELECT * FROM pair ORDER BY 1, 2").fetchall() == rows(
            mgrid, "pairin", "pair")
    finally:
        conn.close()
