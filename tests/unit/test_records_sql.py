"""SqlWriter against SQLite (always), the machine's PostgreSQL and MariaDB.

PostgreSQL and MariaDB tests are skipped when the server cannot be reached, except under
``CI=true``, where an unreachable server is a failure.
"""

from __future__ import annotations

import os
import uuid

import pytest
import sqlalchemy as sa

from officegrid.records import SqlWriter

PG_URL = os.environ.get(
    "OFFICEGRID_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MARIADB_URL = os.environ.get(
    "OFFICEGRID_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"
)

ROWS = [
    {"key": 1, "name": "Ann", "n": 10, "score": 0.5, "ok": True, "meta": {"a": [1]}},
    {"key": 2, "name": "Köln 😀", "n": None, "score": 2, "ok": False},
    {"key": 3, "n": 2**40, "score": None, "ok": None, "meta": "plain"},
]
COLUMNS = ["key", "name", "n", "score", "ok", "meta"]
EXPECTED = [
    (1, "Ann", 10, 0.5, True, '{"a":[1]}'),
    (2, "Köln 😀", None, 2.0, False, None),
    (3, None, 2**40, None, None, "plain"),
]


def _reachable(url: str, what: str) -> sa.Engine:
    engine = sa.create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect():
            pass
    except Exception as e:  # noqa: BLE001 - any failure to connect means "not here"
        engine.dispose()
        reason = f"{what} not reachable at {url}: {type(e).__name__}: {str(e).splitlines()[0]}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: the server must be running)")
        pytest.skip(reason)
    return engine


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.pg),
        pytest.param("mariadb", id="mariadb"),
    ]
)
def db(request, tmp_path):
    """(engine, url, unique table name); the table is dropped afterwards."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'results.db'}"
        engine = sa.create_engine(url)
    elif request.param == "postgresql":
        url = PG_URL
        engine = _reachable(url, "PostgreSQL")
    else:
        url = MARIADB_URL
        engine = _reachable(url, "MariaDB")
    table = f"og_records_{uuid.uuid4().hex[:12]}"
    try:
        yield engine, url, table
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()


def fetch(engine: sa.Engine, table: str) -> list[tuple]:
    t = sa.Table(table, sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t).order_by(t.c.key)).all()
    # MySQL/MariaDB keep booleans as TINYINT(1): compare as bools
    return [
        tuple(
            bool(v) if c == "ok" and v is not None else v
            for c, v in zip(t.c.keys(), r, strict=True)
        )
        for r in rows
    ]


def test_creates_table_typed_from_first_batch(db):
    engine, url, table = db
    with SqlWriter(url, table, COLUMNS, batch_rows=2) as w:
        assert w.write_rows(ROWS) == 3
    assert w.rows_written == 3
    assert fetch(engine, table) == EXPECTED
    types = {c["name"]: c["type"] for c in sa.inspect(engine).get_columns(table)}
    assert isinstance(types["key"], sa.Integer) and isinstance(types["n"], sa.Integer)
    assert isinstance(types["score"], sa.Float)
    assert isinstance(types["name"], sa.String) and isinstance(types["meta"], sa.String)
    if engine.dialect.name == "postgresql":
        assert isinstance(types["ok"], sa.Boolean)
        assert isinstance(types["n"], sa.BigInteger)


def test_appends_to_existing_table_and_converts_values(db):
    engine, url, table = db
    meta = sa.MetaData()
    sa.Table(
        table,
        meta,
        sa.Column("key", sa.BigInteger),
        sa.Column("name", sa.Text),
        sa.Column("n", sa.BigInteger),
        sa.Column("score", sa.Float(53)),
        sa.Column("ok", sa.Boolean),
        sa.Column("meta", sa.Text),
        sa.Column("other", sa.Text),  # not exported: stays NULL
        mysql_charset="utf8mb4",
    )
    meta.create_all(engine)
    with SqlWriter(engine, table, COLUMNS) as w:
        w.write_rows(ROWS[:1])
    with SqlWriter(engine, table, COLUMNS) as w:
        w.write_rows(ROWS[1:] + [{"key": 4, "name": 5, "n": 3.0, "ok": 1}])
    got = fetch(engine, table)
    assert [r[:6] for r in got] == EXPECTED + [(4, "5", 3, None, True, None)]
    assert all(r[6] is None for r in got)


def test_missing_column_in_existing_table_is_a_clear_error(db):
    engine, url, table = db
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {table} (name TEXT)"))
    w = SqlWriter(url, table, ["name", "zip", "city"])
    with pytest.raises(ValueError) as ei:
        w.write_rows([{"name": "x"}])
        w.close()
    assert f"table {table} has no column(s) 'zip', 'city'; it has: 'name'" in str(ei.value)
    w.abort()


def test_failed_export_rolls_back_everything(db):
    engine, url, table = db

    def rows():
        for i in range(25):
            yield {"key": i, "name": f"n{i}"}
        raise RuntimeError("blob missing")

    with pytest.raises(RuntimeError), SqlWriter(url, table, ["key", "name"], batch_rows=10) as w:
        w.write_rows(rows())
    assert w.rows_written == 20  # two batches went in before the failure ...
    assert fetch(engine, table) == []  # ... and were rolled back


def test_value_that_does_not_fit_names_column_and_row(db):
    engine, url, table = db
    w = SqlWriter(url, table, ["key", "n"], batch_rows=2)
    with pytest.raises(ValueError) as ei:
        w.write_rows([{"key": 1, "n": 1}, {"key": 2, "n": 2}, {"key": 3, "n": 1.5}])
        w.close()
    w.abort()
    assert "column 'n' is BIGINT, but row 3 has 1.5" in str(ei.value)
    assert fetch(engine, table) == []


def test_no_rows_still_creates_the_table(db):
    engine, url, table = db
    with SqlWriter(url, table, ["a", "b"]):
        pass
    assert [c["name"] for c in sa.inspect(engine).get_columns(table)] == ["a", "b"]
    assert fetch_count(engine, table) == 0


def fetch_count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one()
