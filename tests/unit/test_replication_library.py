"""The replication library on real SQLite files: chain checks, retention and repair, restores,
epochs, lost triggers, resumable snapshots, full disks and refused input."""

from __future__ import annotations

import random
import shutil
import sqlite3
from pathlib import Path

import pytest

from officegrid.records.errors import InputError
from officegrid.sync.replication import apply, changelog, master
from officegrid.sync.replication.errors import (
    ChainBroken,
    DataSourceError,
    NeedsRepair,
    ReplicaDiskFull,
)
from officegrid.sync.replication.remote import LocalRemote
from officegrid.sync.replication.replica import Replica
from officegrid.sync.replication.service import MasterService


def dump(conn: sqlite3.Connection) -> dict:
    out = {}
    for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT "
                             "LIKE '\\_og\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite%'"):
        out[t] = sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr)
    return out


def make_source(tmp: Path, rows: int = 2000) -> MasterService:
    """A master with ``rows`` address-like rows (about 60 bytes each)."""
    data = tmp / "data"
    data.mkdir()
    csv = tmp / "people.csv"
    rnd = random.Random(7)
    streets = ["Main St", "Oak Ave", "Pine Rd", "Elm St", "Cedar Ln", "Maple Dr"]
    csv.write_text("id,name,street,city,score\n" + "".join(
        f"{i},Person {rnd.randrange(10**6)},{rnd.randrange(1, 999)} {rnd.choice(streets)},"
        f"City{rnd.randrange(500)},{rnd.random():.6f}\n" for i in range(1, rows + 1)))
    svc = MasterService(data, "people")
    master.build_from_file(svc.path, csv, key="id")
    master.adopt(svc.path, svc.state)
    return svc


def equal(replica: Replica, svc: MasterService) -> bool:
    m = sqlite3.connect(svc.path)
    r = sqlite3.connect(replica.path)
    try:
        return dump(m) == dump(r)
    finally:
        m.close()
        r.close()


def test_create_refuses_table_without_primary_key(tmp_path: Path) -> None:
    db = tmp_path / "x.sqlite"
    c = sqlite3.connect(db)
    c.execute("CREATE TABLE ok (id INTEGER PRIMARY KEY)")
    c.execute("CREATE TABLE nokey (a, b)")
    c.commit()
    c.close()
    with pytest.raises(DataSourceError, match="'nokey' has no primary key"):
        master.adopt(db)


def test_build_from_file_names_file_and_line(tmp_path: Path) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("id,v\n1,a\n2,b,extra\n")
    with pytest.raises(InputError, match=r"bad\.csv:3: row has 3 fields, header has 2"):
        master.build_from_file(tmp_path / "out.sqlite", csv, key="id")
    dup = tmp_path / "dup.csv"
    dup.write_text("id,v\n1,a\n1,b\n")
    with pytest.raises(InputError, match=r"dup\.csv:3:.*duplicate"):
        master.build_from_file(tmp_path / "out2.sqlite", dup, key="id")


def test_sql_leaving_a_table_without_key_is_rolled_back(tmp_path: Path) -> None:
    svc = make_source(tmp_path, 10)
    m = master.connect(svc.path)
    with pytest.raises(DataSourceError, match="no primary key"):
        master.execute_sql(m, "CREATE TABLE loose (a, b)")
    assert m.execute("SELECT count(*) FROM sqlite_master WHERE name='loose'").fetchone()[0] == 0


def test_batch_that_does_not_continue_the_chain_is_refused(tmp_path: Path) -> None:
    svc = make_source(tmp_path, 50)
    rep = Replica(tmp_path / "r.sqlite", LocalRemote(svc))
    rep.catch_up()
    before = rep.position()
    m = master.connect(svc.path)
    m.execute("UPDATE people SET name='x' WHERE id=1")
    batch = svc.log(before.epoch, before.pos)
    (body,) = batch["entries"]
    forged = dict(batch, entries=[body.replace('"x"', '"y"')])
    with pytest.raises(ChainBroken):
        apply.apply_batch(rep.conn(), forged)
    assert rep.position() == before
    with pytest.raises(ChainBroken):
        apply.apply_batch(rep.conn(), dict(batch, prev="00" * 32))
    apply.apply_batch(rep.conn(), batch)
    assert equal(rep, svc)


def test_purged_position_is_repaired_by_range_hashes_cheaply(tmp_path: Path) -> None:
    svc = make_source(tmp_path, 3000)
    rep = Replica(tmp_path / "r.sqlite", LocalRemote(svc))
    rep.catch_up()
    snapshot_bytes = rep.stats.snapshot_bytes
    m = master.connect(svc.path)
    rnd = random.Random(1)
    changed = rnd.sample(range(1, 3001), 300)  # 10% of rows, at random
    for i in changed:
        m.execute("UPDATE people SET score=score || '1' WHERE id=?", (i,))
    m.execute("DELETE FROM people WHERE id IN (5, 6)")
    m.execute("INSERT INTO people(id, name) VALUES (99999, 'new')")
    svc.poll(force=True)
    with master.write_tx(m):
        changelog.purge(m, before=10**9)
    with pytest.raises(NeedsRepair, match="purged"):
        svc.log(rep.position().epoch, rep.position().pos)
    rep.catch_up()
    assert equal(rep, svc)
    assert rep.stats.repairs == 1
    stats = rep.stats.last_repair["people"]
    assert stats["fetched"] <= 300 + 1 + 10  # changed rows (plus rare short-hash collisions)
    # Only what changed crosses the network: well under a quarter of a full snapshot.
    assert rep.stats.repair_bytes < 0.25 * snapshot_bytes, (rep.stats.repair_bytes,
                                                            snapshot_bytes)


def test_master_restored_from_backup_and_advanced_is_detected(tmp_path: Path) -> None:
    svc = make_source(tmp_path, 200)
    backup = tmp_path / "backup.sqlite"
    m = master.connect(svc.path)
    m.execute("UPDATE people SET name='v1' WHERE id=1")
    svc.poll(force=True)
    m.execute(f"VACUUM INTO '{backup}'")
    rep = Replica(tmp_path / "r.sqlite", LocalRemote(svc))
    for i in range(2, 12):
        m.execute("UPDATE people SET name='v2' WHERE id=?", (i,))
    rep.catch_up()
    old = rep.position()
    m.close()
    # Restore the older copy, then advance it past the replica's position with other changes.
    for suffix in ("-wal", "-shm"):
        Path(str(svc.path) + suffix).unlink(missing_ok=True)
    shutil.copy(backup, svc.path)
    m = master.connect(svc.path)
    for i in range(100, 130):
        m.execute("UPDATE people SET name='v3' WHERE id=?", (i,))
    res = svc.poll(force=True)
    assert "restored" in res["epoch_reason"]
    assert res["head"].epoch != old.epoch
    assert res["head"].pos >= old.pos  # positions never go back
    rep.catch_up()
    assert equal(rep, svc)  # the v2 rows the master lost are gone from the replica too
    assert any("epoch" in r for r in rep.stats.repair_reasons)


def test_replica_ahead_of_unpolled_restore_never_applies_foreign_log(tmp_path: Path) -> None:
    """Even if the server lost its own record, the chain stops a replica from applying a log
    of another history."""
    svc = make_source(tmp_path, 100)
    rep = Replica(tmp_path / "r.sqlite", LocalRemote(svc))
    rep.catch_up()
    m = master.connect(svc.path)
    m.execute("UPDATE people SET name='a' WHERE id=1")
    rep.catch_up()
    pos = rep.position()
    # Forge: same epoch and positions, other content (a restore the server did not notice).
    with master.write_tx(m):
        m.execute("UPDATE _og_log SET body=replace(body, '\"a\"', '\"b\"') WHERE pos=?",
                  (pos.pos,))
        m.execute("UPDATE _og_log SET h=? WHERE pos=?", ("11" * 32, pos.pos))
    m.execute("UPDATE people SET name='c' WHERE id=2")
    svc.state.unlink()
    svc.poll(force=True)
    batch = svc.log(pos.epoch, pos.pos)
    assert batch["prev"] != pos.hash
    with pytest.raises(ChainBroken):
        apply.apply_batch(rep.conn(), batch)
    rep.catch_up()
    assert equal(rep, svc)


def test_destructive_schema_change_starts_new_epoch(tmp_path: Path) -> None:
    svc = make_source(tmp_path, 100)
    rep = Replica(tmp_path / "r.sqlite", LocalRemote(svc))
    rep.catch_up()
    e0 = rep.position().epoch
    m = master.connect(svc.path)
    m.execute("ALTER TABLE people RENAME COLUMN city TO town")
    res = svc.poll(force=True)
    assert res["epoch_reason"] and "columns" in res["epoch_reason"]
    rep.catch_up()
    assert rep.position().epoch != e0
    assert equal(rep, svc)
    cols = [r[1] for r in sqlite3.connect(rep.path).execute("PRAGMA table_info(people)")]
    assert "city" not in cols and "town" in cols


def test_drop_column_through_data_sql_starts_a_new_epoch(tmp_path: Path) -> None:
    """SQLite refuses to drop a column a trigger names: the capture triggers are set aside for
    the statement and reinstalled for the new columns (trial: it always failed before)."""
    svc = make_source(tmp_path, 100)
    rep = Replica(tmp_path / "r.sqlite", LocalRemote(svc))
    rep.catch_up()
    e0 = rep.position().epoch
    m = master.connect(svc.path)
    master.execute_sql(m, 'ALTER TABLE "people" DROP COLUMN score')
    res = svc.poll(force=True)
    assert res["epoch_reason"]
    m.execute("UPDATE people SET name='after the drop' WHERE id=1")  # still captured
    rep.catch_up()
    assert rep.position().epoch != e0
    assert equal(rep, svc)
    cols = [r[1] for r in sqlite3.connect(rep.path).execute("PRAGMA table_info(people)")]
    assert "score" not in cols
    with pytest.raises(DataSourceError, match="SQL failed"):  # the key cannot go
        master.execute_sql(m, "ALTER TABLE people DROP COLUMN id")


def test_triggers_dropped_by_table_rebuild_are_detected_and_reconciled(tmp_path: Path) -> None:
    svc = make_source(tmp_path, 500)
    rep = Replica(tmp_path / "r.sqlite", LocalRemote(svc))
    rep.catch_up()
    m = sqlite3.connect(svc.path, isolation_level=None)  # an ETL tool: no triggers of its own
    sql = m.execute("SELECT sql FROM sqlite_master WHERE name='people'").fetchone()[0]
    m.executescript(f"""BEGIN;
        CREATE TABLE people_new AS SELECT * FROM people;
        UPDATE people_new SET name='rebuilt' WHERE CAST(id AS INTEGER) <= 20;
        DROP TABLE people;
        {sql};
        INSERT INTO people SELECT * FROM people_new;
        DROP TABLE people_new;
        COMMIT;""")
    res = svc.poll(force=True)
    assert res["reconciled"] == ["people"] and res["epoch_reason"] is None
    rep.catch_up()
    assert equal(rep, svc)
    assert rep.stats.last_repair["people"]["fetched"] == 20
    m.execute("UPDATE people SET name='after' WHERE id=30")  # captured again
    rep.catch_up()
    assert equal(rep, svc) and rep.stats.repairs == 1


def test_cut_snapshot_download_is_never_opened_and_resumes(tmp_path: Path) -> None:
    svc = make_source(tmp_path, 3000)
    remote = LocalRemote(svc)
    dest = tmp_path / "r.sqlite"

    class Cut(Exception):
        pass

    info = remote.snapshot_info()
    half = info["size"] // 2

    def cut_fetch(offset: int):
        sent = 0
        for piece in remote.snapshot_fetch(info["id"], offset):
            piece = piece[: half - sent]
            yield piece
            sent += len(piece)
            if sent >= half:
                raise Cut()

    from officegrid.sync.replication import snapshot

    with pytest.raises(Cut):
        snapshot.download(info, dest, cut_fetch)
    assert not dest.exists()
    assert (tmp_path / "r.sqlite.part").stat().st_size == half
    rep = Replica(dest, remote)
    rep.catch_up()
    assert rep.stats.snapshot_resumed_at == half
    assert rep.stats.snapshot_bytes == info["size"] - half
    assert equal(rep, svc)


def test_disk_full_while_applying_keeps_previous_replica(tmp_path: Path) -> None:
    svc = make_source(tmp_path, 200)
    rep = Replica(tmp_path / "r.sqlite", LocalRemote(svc))
    rep.catch_up()
    pages = rep.conn().execute("PRAGMA page_count").fetchone()[0]
    rep.close()
    full = Replica(tmp_path / "r.sqlite", LocalRemote(svc), max_page_count=pages + 1)
    before = full.position()
    m = master.connect(svc.path)
    m.execute("UPDATE people SET name = name || printf('%.400c', 'x')")
    with pytest.raises(ReplicaDiskFull, match="disk full"):
        full.catch_up()
    assert full.position() == before
    r = sqlite3.connect(full.path)
    assert r.execute("SELECT count(*) FROM people").fetchone()[0] == 200
    assert r.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    full.close()
    ok = Replica(tmp_path / "r.sqlite", LocalRemote(svc))
    ok.catch_up()
    assert equal(ok, svc)


def test_retention_by_size_and_age_keeps_newest_and_chains_from_the_cut(tmp_path: Path) -> None:
    svc = make_source(tmp_path, 50)
    m = master.connect(svc.path)
    for i in range(1, 41):
        m.execute("UPDATE people SET name=? WHERE id=?", (f"n{i}", str(i)))
    svc.poll(force=True)
    with master.write_tx(m):
        sizes = [r[0] for r in m.execute("SELECT length(body) FROM _og_log ORDER BY pos DESC")]
        keep = sum(sizes[:10])
        assert changelog.purge(m, max_bytes=keep) == 30
        h = changelog.head(m)
        assert h.pos - h.base_pos == 10
        # The first kept entry chains from the base hash the purge recorded.
        body, first_hash = m.execute("SELECT body, h FROM _og_log ORDER BY pos LIMIT 1"
                                     ).fetchone()
        assert changelog.chain(h.base_hash, body) == first_hash
        assert changelog.purge(m, max_age=3600) == 0  # all younger than an hour
        assert changelog.purge(m, max_age=0, now=10**10) == 10
    rep = Replica(tmp_path / "r.sqlite", LocalRemote(svc))
    rep.catch_up()
    assert equal(rep, svc)


@pytest.mark.parametrize(("sql", "why"), [
    ("", "an empty statement"),
    ("  -- only a comment", "an empty statement"),
    ("SELECT * FROM people", "writes nothing"),
    ("VACUUM", "VACUUM"),
    ("PRAGMA writable_schema=ON", "PRAGMA"),
    ("ATTACH 'other.sqlite' AS o", "ATTACH"),
    ("DETACH main", "DETACH"),
    ("BEGIN", "transaction control"),
    ("SAVEPOINT s", "transaction control"),
    ("ANALYZE", "ANALYZE"),
    ("CREATE VIEW v AS SELECT id FROM people", "CREATE VIEW"),
    ("CREATE TEMP TABLE t (a PRIMARY KEY)", "TEMP"),
    ("CREATE TRIGGER tr AFTER INSERT ON people BEGIN SELECT 1; END", "CREATE TRIGGER"),
    ("DROP TRIGGER _og_i_people", "DROP TRIGGER"),
    ("DELETE FROM _og_log", "change log"),
    # CREATE/DROP INDEX name the index first and the table second (review finding).
    ("CREATE INDEX ix ON _og_log (tbl)", "change log"),
    ("UPDATE sqlite_sequence SET seq = 0", "internal table sqlite_sequence"),
    ("DELETE FROM sqlite_sequence", "internal table sqlite_sequence"),
    ("UPDATE people SET name='x' WHERE id=1; DELETE FROM people", "several statements"),
    ("/* hidden */ PRAGMA journal_mode=DELETE", "PRAGMA"),
])
def test_data_sql_refuses_anything_but_one_write(tmp_path: Path, sql: str, why: str) -> None:
    """Trial finding: `data sql` ran ATTACH, PRAGMA, SELECT, VACUUM, empty and several
    statements. Each is refused with a one-line error naming it, and nothing changes."""
    svc = make_source(tmp_path, 10)
    m = master.connect(svc.path)
    before = dump(m)
    log_before = m.execute("SELECT count(*) FROM _og_log").fetchone()[0]
    with pytest.raises(DataSourceError) as err:
        master.execute_sql(m, sql)
    msg = str(err.value)
    assert why in msg and "\n" not in msg and msg.startswith("data sql runs exactly one")
    assert dump(m) == before
    assert m.execute("SELECT count(*) FROM _og_log").fetchone()[0] == log_before
    assert m.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [r[1] for r in m.execute("PRAGMA database_list")] == ["main"]


@pytest.mark.parametrize("sql", [
    "INSERT INTO people (id, name) VALUES (1001, 'new')",
    "REPLACE INTO people (id, name) VALUES (1, 'replaced')",
    "INSERT INTO people (id, name) VALUES (1, 'up') ON CONFLICT (id) DO UPDATE SET name='up'",
    "UPDATE people SET name = 'x' WHERE id = 2",
    "DELETE FROM people WHERE id = 3",
    "WITH d AS (SELECT 4 AS id) DELETE FROM people WHERE id IN (SELECT id FROM d)",
    "CREATE TABLE extra (k TEXT PRIMARY KEY, v)",
    "CREATE INDEX people_city ON people (city)",
    "ALTER TABLE people ADD COLUMN zip TEXT",
    "ALTER TABLE people RENAME COLUMN city TO town",
    "ALTER TABLE people DROP COLUMN score",
    "ALTER TABLE people RENAME TO persons",
    "DROP TABLE people",
    "DROP TABLE counted",  # an AUTOINCREMENT table: SQLite deletes its sqlite_sequence row
    "DROP INDEX people_name",
    "UPDATE people SET name = 'y' WHERE id = 5; -- a trailing comment",
])
def test_data_sql_runs_each_kind_of_write(tmp_path: Path, sql: str) -> None:
    svc = make_source(tmp_path, 10)
    m = master.connect(svc.path)
    if sql.startswith("DROP TABLE"):  # the source keeps a table
        master.execute_sql(m, "CREATE TABLE keep (k PRIMARY KEY)")
    if sql == "DROP TABLE counted":
        master.execute_sql(m, "CREATE TABLE counted (k INTEGER PRIMARY KEY AUTOINCREMENT, v)")
        master.execute_sql(m, "INSERT INTO counted (v) VALUES ('a')")
    if sql == "DROP INDEX people_name":
        master.execute_sql(m, "CREATE INDEX people_name ON people (name)")
    schema_before = m.execute("SELECT group_concat(sql) FROM sqlite_master").fetchone()[0]
    data_before = dump(m)
    master.execute_sql(m, sql)
    after = (m.execute("SELECT group_concat(sql) FROM sqlite_master").fetchone()[0], dump(m))
    assert after != (schema_before, data_before)
    svc.poll(force=True)  # the server's poll copes with each (log entry or new epoch)


def test_stage_errors_name_the_line_across_quoted_newlines_and_blank_lines(tmp_path: Path) -> None:
    """`data apply` stages the file; a record's line is found as the readers count lines."""
    from officegrid.sync.replication import staging

    csv = tmp_path / "c.csv"
    csv.write_text('\nid,name\n1,"two\nlines"\n\n2,ok\n3,\n')
    assert staging.record_line(csv, 0, fmt="csv") == 2
    assert staging.record_line(csv, 2, fmt="csv") == 6
    assert staging.record_line(csv, 3, fmt="csv") == 7
    svc = make_source(tmp_path, 10)
    m = master.connect(svc.path)
    m.execute("CREATE TABLE pair (a, b, v NOT NULL, PRIMARY KEY (a, b))")
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"a": 1, "b": 1, "v": "x"}\n\n{"a": 2, "v": "y"}\n')
    with pytest.raises(InputError, match=r"p\.jsonl:3: no value for key column 'b'"):
        staging.build_stage(tmp_path / "s1.sqlite", jl, kind="upsert", table="pair",
                            cols=["a", "b", "v"], pk=["a", "b"])
    jl.write_text('{"a": 1, "b": 1, "v": "x"}\n\n{"a": 2, "b": 2, "v": null}\n')
    n = staging.build_stage(tmp_path / "s2.sqlite", jl, kind="upsert", table="pair",
                            cols=["a", "b", "v"], pk=["a", "b"])
    assert n == 2
    with pytest.raises(DataSourceError, match=r"^record 2: NOT NULL constraint failed") as err:
        staging.apply_stage(m, tmp_path / "s2.sqlite")
    assert m.execute("SELECT count(*) FROM pair").fetchone()[0] == 0  # nothing applied
    located = staging.line_error(str(err.value), jl, fmt="jsonl")
    assert located is not None and str(located).endswith("p.jsonl:3: NOT NULL constraint "
                                                         "failed: pair.v")


def _pair_stage(tmp_path: Path, lines: list[str], name: str = "p") -> Path:
    from officegrid.sync.replication import staging

    jl = tmp_path / f"{name}.jsonl"
    jl.write_text("".join(line + "\n" for line in lines))
    stage = tmp_path / f"{name}.stage"
    staging.build_stage(stage, jl, kind="upsert", table="pair", cols=["a", "b", "v", "w"],
                        pk=["a", "b"])
    return stage


def test_apply_repeated_composite_key_ends_as_its_last_record(tmp_path: Path) -> None:
    """Review finding: records were applied grouped by their column set, so a composite key
    given three times with varying columns ended as the second record said, not the third."""
    from officegrid.sync.replication import staging

    svc = make_source(tmp_path, 10)
    m = master.connect(svc.path)
    m.execute("CREATE TABLE pair (a, b, v, w, PRIMARY KEY (a, b))")
    lines = ['{"a": 1, "b": 1, "v": "first", "w": "x"}', '{"a": 1, "b": 1, "v": "second"}',
             '{"a": 1, "b": 1, "v": "third", "w": "z"}', '{"a": 2, "b": 1, "v": "only"}']
    assert staging.apply_stage(m, _pair_stage(tmp_path, lines)) == 4
    assert m.execute("SELECT * FROM pair ORDER BY a").fetchall() == [
        (1, 1, "third", "z"), (2, 1, "only", None)]
    # The JSON body of the API (master.upsert_rows) applies in order as well.
    m.execute("DELETE FROM pair")
    import json
    master.upsert_rows(m, "pair", [json.loads(line) for line in lines])
    assert m.execute("SELECT * FROM pair ORDER BY a").fetchall() == [
        (1, 1, "third", "z"), (2, 1, "only", None)]


def test_apply_stage_on_a_busy_master_says_busy_and_blames_no_record(tmp_path: Path) -> None:
    """Review finding: a master locked past the busy timeout raised UnboundLocalError (HTTP
    500); it is MasterBusy (503 with Retry-After), and nothing is applied."""
    from officegrid.sync.replication import staging

    svc = make_source(tmp_path, 10)
    m = master.connect(svc.path)
    m.execute("CREATE TABLE pair (a, b, v, w, PRIMARY KEY (a, b))")
    stage = _pair_stage(tmp_path, ['{"a": 1, "b": 1, "v": "x"}'])
    other = master.connect(svc.path)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the master
    try:
        m.execute("PRAGMA busy_timeout=50")
        with pytest.raises(master.MasterBusy, match="the master is busy") as err:
            staging.apply_stage(m, stage)
        assert not str(err.value).startswith("record")
        assert staging.line_error(str(err.value), tmp_path / "p.jsonl", fmt="jsonl") is None
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert not m.in_transaction
    assert m.execute("SELECT count(*) FROM pair").fetchone()[0] == 0
    assert staging.apply_stage(m, stage) == 1  # the stage is still good once the lock is gone


def test_apply_stage_on_a_full_disk_blames_no_record(tmp_path: Path) -> None:
    """Review finding: any failure was replayed row by row and reported as ``record N: database
    or disk is full``, so the CLI blamed a line of the file. Only constraint errors name one."""
    from officegrid.sync.replication import staging

    svc = make_source(tmp_path, 10)
    m = master.connect(svc.path)
    m.execute("CREATE TABLE pair (a, b, v, w, PRIMARY KEY (a, b))")
    stage = _pair_stage(tmp_path, [f'{{"a": {i}, "b": 1, "v": "{"x" * 500}"}}'
                                   for i in range(2000)])
    pages = m.execute("PRAGMA page_count").fetchone()[0]
    m.execute(f"PRAGMA max_page_count={pages + 5}")  # the disk fills during the apply
    with pytest.raises(DataSourceError) as err:
        staging.apply_stage(m, stage)
    msg = str(err.value)
    assert msg == "the change was not applied: database or disk is full", msg
    assert staging.line_error(msg, tmp_path / "p.jsonl", fmt="jsonl") is None
    assert not m.in_transaction
    assert m.execute("SELECT count(*) FROM pair").fetchone()[0] == 0


def test_busy_master_is_answered_503_with_retry_after() -> None:
    """The data routes answer MasterBusy with 503 and Retry-After (the client retries then);
    other data source errors stay 422."""
    from fastapi import HTTPException

    from officegrid import protocol as p
    from officegrid.server.routers import data

    with pytest.raises(HTTPException) as err, data._http_errors():
        raise master.MasterBusy("the master is busy")
    assert err.value.status_code == 503 and err.value.detail["code"] == p.E_BUSY
    assert err.value.headers == {p.RETRY_AFTER: str(master.MasterBusy.retry_after)}
    with pytest.raises(HTTPException) as err, data._http_errors():
        raise DataSourceError("the change was not applied: database or disk is full")
    assert err.value.status_code == 422


# ------------------------------------------------------------- new-user trial (issue 4, H11)


def test_keyless_table_made_in_the_master_file_does_not_block_writes(tmp_path: Path) -> None:
    """Trial finding: `CREATE TABLE loose(a,b)` straight in the master made every later
    `data sql` fail with "table 'loose' has no primary key"; it is left out instead."""
    svc = make_source(tmp_path, rows=10)
    conn = master.connect(svc.path)
    conn.execute("CREATE TABLE loose(a, b)")
    assert master.unreplicated(conn) == ["loose"]
    assert master.execute_sql(conn, "UPDATE people SET city='X' WHERE id IN ('1', '2', '3')") == 3
    assert master.upsert_rows(conn, None, [{"id": "1", "city": "Y"}]) == 1  # still the default
    # Its rows are not replicated: data sql refuses to write them rather than say "changed".
    with pytest.raises(DataSourceError, match="'loose' has no primary key, so it is not repl"):
        master.execute_sql(conn, "INSERT INTO loose VALUES (1, 2)")
    assert conn.execute("SELECT count(*) FROM loose").fetchone()[0] == 0
    assert master.execute_sql(conn, "CREATE TABLE kept (a PRIMARY KEY, b)") == 0
    master.execute_sql(conn, "INSERT INTO kept SELECT a, b FROM loose")  # reading it is fine
    master.execute_sql(conn, "DROP TABLE loose")  # and so is dropping it
    assert master.unreplicated(conn) == []
    # A statement that itself leaves a new keyless table is still refused.
    with pytest.raises(DataSourceError, match="'other' has no primary key"):
        master.execute_sql(conn, "CREATE TABLE other(a)")
    conn.close()
    out = svc.poll(force=True)
    assert "loose" not in changelog.get_meta(master.connect(svc.path))["schema"]
    assert out["head"].pos > 0


@pytest.mark.parametrize(("sql", "n"), [
    ("WITH x AS (SELECT '3' z) DELETE FROM people WHERE id IN (SELECT z FROM x)", 1),
    ("WITH x AS (SELECT '4' z) UPDATE people SET city='Q' WHERE id IN (SELECT z FROM x)", 1),
    ("DELETE FROM people WHERE id IN ('5', '6')", 2),
    ("CREATE INDEX people_city ON people(city)", 0),
])
def test_data_sql_counts_rows_of_cte_writes(tmp_path: Path, sql: str, n: int) -> None:
    """Trial finding: a DELETE behind a WITH was reported as "0 rows changed"."""
    svc = make_source(tmp_path, rows=10)
    conn = master.connect(svc.path)
    try:
        conn.execute("UPDATE people SET city='warm' WHERE id='1'")  # a stale changes() value
        assert master.execute_sql(conn, sql) == n
    finally:
        conn.close()


def test_source_name_differing_only_in_case_is_refused(tmp_path: Path) -> None:
    (tmp_path / "zips.sqlite").write_bytes(b"")
    master.check_unique(tmp_path, "zips")  # itself (a --replace)
    master.check_unique(tmp_path, "zips2")
    with pytest.raises(DataSourceError, match="'ZIPS' differs from the existing 'zips' only in"):
        master.check_unique(tmp_path, "ZIPS")


def test_refresher_backs_off_and_finds_new_columns(tmp_path: Path) -> None:
    from officegrid.cli.data import refresh_delay
    from officegrid.sync.replication import importer

    assert refresh_delay(3, 0) == 3
    assert [refresh_delay(3, f) for f in (1, 2, 3)] == [6, 12, 24]
    assert refresh_delay(3, 50) == 300
    assert refresh_delay(900, 4) == 900  # never more often than --refresh
    conn = sqlite3.connect(tmp_path / "r.sqlite")
    conn.execute("CREATE TABLE crm (id INTEGER PRIMARY KEY, name TEXT)")
    rows = [{"id": 1, "name": "a", "tier": None, "note": "x"}, {"id": 2, "tier": 3}]
    assert importer.new_columns(conn, "crm", rows) == [("tier", "INTEGER"), ("note", "TEXT")]
    assert importer.new_columns(conn, "crm", [{"id": 1, "name": "b"}]) == []


def test_csv_columns_of_numbers_are_numbers_and_zip_codes_stay_text(tmp_path: Path) -> None:
    """Trial finding: every CSV column was TEXT, so `price > 10` compared text ('9.99' > '10')."""
    csv = tmp_path / "prices.csv"
    csv.write_text("sku,zip,price,qty,note,mixed\n"
                   "1,01234,3.0,5,a,12\n"
                   "2,10115,2.40,,b,x\n"
                   "3,99999,12,7,,3\n"
                   "4,50667,9.99,-2,c,4\n")
    db = tmp_path / "p.sqlite"
    assert master.build_from_file(db, csv, key="sku", table="prices") == 4
    conn = sqlite3.connect(db)
    types = {r[1]: r[2] for r in conn.execute("PRAGMA table_info(prices)")}
    assert types == {"sku": "INTEGER", "zip": "TEXT", "price": "REAL", "qty": "INTEGER",
                     "note": "TEXT", "mixed": "TEXT"}
    assert [r[0] for r in conn.execute("SELECT sku FROM prices WHERE price > 10")] == [3]
    assert conn.execute("SELECT zip, qty FROM prices WHERE sku = 2").fetchone() == (
        "10115", None)  # an empty number is NULL
    assert conn.execute("SELECT note FROM prices WHERE sku = 3").fetchone() == ("",)
    assert conn.execute("SELECT zip FROM prices WHERE sku = 1").fetchone() == ("01234",)
    conn.close()


def test_a_refresh_compares_numbers_by_value() -> None:
    import decimal

    from officegrid.sync.replication.coltypes import same_value

    assert same_value(1.5, "1.50") and same_value(3, decimal.Decimal("3.00"))
    assert same_value(7, 7) and same_value(None, None) and same_value("a", "a")
    assert not same_value(1.5, "1.51") and not same_value("1.0", "1")  # text stays text
    assert not same_value(None, 0) and not same_value(2, "x")


def test_data_sql_add_column_travels_in_the_log_without_a_reconcile(tmp_path: Path) -> None:
    """Trial finding: ADD COLUMN through data sql logged a reconcile of the whole table after
    the schema step; done in the change's own transaction, no row can miss the new column."""
    svc = make_source(tmp_path, 300)
    rep = Replica(tmp_path / "r.sqlite", LocalRemote(svc))
    rep.catch_up()
    m = master.connect(svc.path)
    master.execute_sql(m, "ALTER TABLE people ADD COLUMN tier INTEGER DEFAULT 1")
    master.execute_sql(m, "UPDATE people SET tier = 7 WHERE id = 5")
    master.execute_sql(m, "CREATE INDEX people_tier ON people(tier)")
    m.close()
    out = svc.poll(force=True)
    assert out["reconciled"] == [] and out["epoch_reason"] is None
    rep.catch_up()
    assert rep.stats.repairs == 0 and equal(rep, svc)
    r = sqlite3.connect(rep.path)
    assert r.execute("SELECT tier FROM people WHERE id = 5").fetchone() == (7,)
    assert r.execute("SELECT count(*) FROM sqlite_master WHERE name='people_tier'"
                     ).fetchone() == (1,)
    r.close()


def test_a_snapshot_far_behind_the_head_is_made_anew(tmp_path: Path) -> None:
    """Trial finding: a new replica got a snapshot 1,000 entries old and replayed them; a
    snapshot is reused only while the log after it is small next to it."""
    svc = make_source(tmp_path, 300)
    first = svc.snapshot_info()
    m = master.connect(svc.path)
    m.execute("UPDATE people SET city='Q' WHERE id = 1")
    svc.poll(force=True)
    assert svc.snapshot_info()["id"] == first["id"]  # one entry behind: still good
    for i in range(3):
        m.execute(f"UPDATE people SET name = name || '{i}'")  # every row, three times
    m.close()
    head = svc.poll(force=True)["head"]
    again = svc.snapshot_info()
    assert again["id"] != first["id"] and again["pos"] == head.pos


def test_decimals_and_long_codes_keep_every_digit(tmp_path: Path) -> None:
    """Re-trial finding: decimal(30,2) 1234567890123456789.12 became 1234567890123456768, and a
    24-digit CSV code a rounded float; a refresh then rewrote the row every time."""
    import decimal

    from officegrid.sync.replication import coltypes

    big = decimal.Decimal("1234567890123456789.12")
    records = [{"id": 1, "amt": decimal.Decimal("1.50")}, {"id": 2, "amt": big},
               {"id": 3, "amt": decimal.Decimal("12345678901234567890123")},
               {"id": 4, "amt": decimal.Decimal("7")}]
    db = tmp_path / "d.sqlite"
    master.build_from_records(db, records, "id", "t")
    conn = sqlite3.connect(db)
    got = dict(conn.execute("SELECT id, amt FROM t"))
    assert got == {1: 1.5, 2: "1234567890123456789.12", 3: "12345678901234567890123", 4: 7}
    assert all(coltypes.same_value(got[r["id"]], r["amt"]) for r in records)
    conn.close()
    csv = tmp_path / "codes.csv"
    csv.write_text("id,code,ratio\n1,123456789012345678901234,0.5\n2,5,0.25\n")
    master.build_from_file(tmp_path / "c.sqlite", csv, key="id", table="codes")
    conn = sqlite3.connect(tmp_path / "c.sqlite")
    types = {r[1]: r[2] for r in conn.execute("PRAGMA table_info(codes)")}
    assert types == {"id": "INTEGER", "code": "TEXT", "ratio": "REAL"}
    assert conn.execute("SELECT code FROM codes WHERE id = 1").fetchone() == (
        "123456789012345678901234",)
    conn.close()


def test_a_follower_at_the_same_position_is_recorded_again_now_and_then() -> None:
    """`data status` shows when each replica was last seen: a live follower waiting at the
    head is written again every SEEN_EVERY seconds, not only when its position moves."""
    import time

    from officegrid.server.replica_feed import SEEN_EVERY, ReplicaFeed

    feed = ReplicaFeed()
    feed._written[("s", "r")] = ("e", 5, time.monotonic())
    feed.note("s", "r", "e", 5)
    assert feed._pending == {}
    feed._written[("s", "r")] = ("e", 5, time.monotonic() - SEEN_EVERY - 1)
    feed.note("s", "r", "e", 5)
    assert feed._pending == {("s", "r"): ("e", 5)}


def test_types_of_dates_wide_integers_and_refreshed_decimals() -> None:
    """Review findings: DATE/DECIMAL columns were taken for numbers by data apply; an
    18-digit integer beside REAL values was rounded; a decimal column new in a refresh was
    typed from its converted values."""
    import decimal

    from officegrid.sync.replication import coltypes, importer

    assert [coltypes.is_number_type(t) for t in
            ("INTEGER", "BIGINT", "REAL", "DOUBLE PRECISION", "FLOAT")] == [True] * 5
    assert [coltypes.is_number_type(t) for t in
            ("DATE", "DATETIME", "BOOLEAN", "DECIMAL(10,2)", "VARCHAR(20)", "TEXT", "")] \
        == [False] * 7
    rows = [{"a": "1.5", "b": "123456789012345678", "c": "7"},
            {"a": "123456789012345678", "b": "5", "c": "8.25"}]
    assert coltypes.infer(rows, text_may_be_number=True) == {"a": "TEXT", "b": "INTEGER",
                                                             "c": "REAL"}
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT)")  # an older import: all TEXT
    conn.executemany("INSERT INTO t VALUES (?, ?)", [("1", "2.5"), ("2", "1.0e-05")])
    same = iter([{"id": 1, "v": decimal.Decimal("2.50")}, {"id": 2, "v": 1e-05}])
    assert importer.diff(conn, "t", "id", same) == ([], [])  # numbers compare by value
    assert importer.new_columns(conn, "t", [{"amt": decimal.Decimal("1.5")}]) == [("amt", "")]


def test_data_sql_after_a_direct_schema_change_leaves_the_reconcile_to_the_poll(
        tmp_path: Path) -> None:
    """Review finding: the in-transaction schema step must not cover an ADD COLUMN made
    straight in the master file before it: rows written in that gap lack the column."""
    svc = make_source(tmp_path, 50)
    direct = sqlite3.connect(svc.path, isolation_level=None)
    direct.execute("ALTER TABLE people ADD COLUMN tier INTEGER")
    direct.execute("UPDATE people SET tier = 3 WHERE id = 2")  # logged by the old triggers
    direct.close()
    m = master.connect(svc.path)
    master.execute_sql(m, "ALTER TABLE people ADD COLUMN note TEXT")
    m.close()
    assert svc.poll(force=True)["reconciled"] == ["people"]
    rep = Replica(tmp_path / "r.sqlite", LocalRemote(svc))
    rep.catch_up()
    assert equal(rep, svc)
