"""Replicated data sources end to end: a real server, the real CLI (`data create|apply|sql|
purge|status|pull`), real replica files, real kills."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.test_cli_support import Cli, module_grid_and_cli
from grid import wait_for
from officegrid.sync.replication.errors import ReplicaDiskFull
from officegrid.sync.replication.remote import HttpRemote
from officegrid.sync.replication.replica import Replica

mgrid, cli = module_grid_and_cli("data")


def master_path(mgrid, name: str) -> Path:
    return mgrid.server.data_dir / "data" / f"{name}.sqlite"


def dump(path: Path) -> dict:
    conn = sqlite3.connect(path)
    try:
        out = {}
        for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT "
                                 "LIKE '\\_og\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite%'"):
            cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{t}")')]
            out[t] = (cols, sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr))
        return out
    finally:
        conn.close()


def people_csv(path: Path, n: int, seed: int = 3) -> Path:
    rnd = random.Random(seed)
    streets = ["Main St", "Oak Ave", "Pine Rd", "Elm St", "Cedar Ln", "Maple Dr"]
    path.write_text("id,name,street,city,score\n" + "".join(
        f"{i},Person {rnd.randrange(10**6)},{rnd.randrange(1, 999)} {rnd.choice(streets)},"
        f"City{rnd.randrange(500)},{rnd.random():.6f}\n" for i in range(1, n + 1)))
    return path


def create(cli: Cli, name: str, n: int) -> None:
    people_csv(cli.cwd / f"{name}.csv", n)
    res = cli.ok("data", "create", name, "--from", f"{name}.csv", "--key", "id", "--table",
                 "people")
    assert res.last_line == name


def pull(cli: Cli, name: str, to: str = "replica.sqlite", *args: str) -> dict:
    res = cli.ok("data", "pull", name, "--to", to, "--json", *args)
    return json.loads(res.last_line)


def test_create_and_pull_equals_master(mgrid, cli) -> None:
    create(cli, "basic", 500)
    got = pull(cli, "basic")
    assert got["stats"]["bootstraps"] == 1
    assert dump(cli.cwd / "replica.sqlite") == dump(master_path(mgrid, "basic"))
    st = json.loads(cli.ok("data", "status", "basic", "--json").stdout)[0]
    assert st["tables"] == {"people": 500}
    assert [r["lag"] for r in st["replicas"]] == [0]
    # A second pull only tails (nothing to do): no second snapshot.
    again = pull(cli, "basic")
    assert again["stats"]["bootstraps"] == 0 and again["pos"] == got["pos"]
    # Never onto something else: another source's replica, a plain database, a text file.
    create(cli, "other", 10)
    before = (cli.cwd / "replica.sqlite").read_bytes()
    res = cli("data", "pull", "other", "--to", "replica.sqlite")
    assert res.returncode != 0 and "is a replica of data source 'basic'" in res.stderr, res
    assert "Traceback" not in res.stderr and (cli.cwd / "replica.sqlite").read_bytes() == before
    sqlite3.connect(cli.cwd / "mine.sqlite").execute("CREATE TABLE t (x)").connection.commit()
    res = cli("data", "pull", "basic", "--to", "mine.sqlite")
    assert res.returncode != 0 and "not a replica made by" in res.stderr, res
    (cli.cwd / "notes.csv").write_text("a,b\n")
    res = cli("data", "pull", "basic", "--to", "notes.csv")
    assert res.returncode != 0 and "is not a SQLite database" in res.stderr, res
    assert (cli.cwd / "notes.csv").read_text() == "a,b\n"


def test_bad_input_names_file_and_line_and_creates_nothing(cli) -> None:
    (cli.cwd / "bad.csv").write_text("id,v\n1,a\n2,b,c\n")
    res = cli("data", "create", "bad", "--from", "bad.csv", "--key", "id")
    assert res.returncode != 0 and "bad.csv:3: row has 3 fields, header has 2" in res.stderr
    assert cli("data", "status", "bad").returncode != 0
    (cli.cwd / "nokey.csv").write_text("v\na\n")
    res = cli("data", "create", "nokey", "--from", "nokey.csv", "--key", "id")
    assert res.returncode != 0 and "'id'" in res.stderr


def test_changes_trickle_to_a_following_replica(mgrid, cli) -> None:
    create(cli, "trickle", 300)
    replica = cli.cwd / "follow.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "officegrid", "data", "pull", "trickle",
                             "--to", str(replica), "--follow", "--interval", "0.1"],
                            cwd=cli.cwd, env=cli.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        master = master_path(mgrid, "trickle")

        def same() -> bool:
            try:
                return dump(replica) == dump(master)
            except sqlite3.Error:
                return False

        wait_for(same, 60, what="bootstrap of the following replica")
        (cli.cwd / "up.csv").write_text("id,name,city\n5,Renamed,Berlin\n9999,New,Paris\n")
        cli.ok("data", "apply", "trickle", "--upsert", "up.csv")
        (cli.cwd / "del.csv").write_text("id\n7\n8\n")
        cli.ok("data", "apply", "trickle", "--delete", "del.csv")
        cli.ok("data", "sql", "trickle", "UPDATE people SET score='0' WHERE city='City1'")
        cli.ok("data", "sql", "trickle", "ALTER TABLE people ADD COLUMN zip TEXT")
        cli.ok("data", "sql", "trickle", "UPDATE people SET zip='10115' WHERE id='5'")
        wait_for(same, 60, what="changes to reach the following replica")
        rows = dict(sqlite3.connect(replica).execute(
            "SELECT id, zip FROM people WHERE id IN ('5', '9999')").fetchall())
        assert rows == {5: "10115", 9999: None}
        st = json.loads(cli.ok("data", "status", "trickle", "--json").stdout)[0]
        wait_for(lambda: json.loads(cli.ok("data", "status", "trickle", "--json").stdout)[0]
                 ["replicas"][0]["lag"] == 0, 30, what="replica report")
        assert st["pos"] > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_purged_position_is_repaired_by_range_hashes(mgrid, cli) -> None:
    create(cli, "purged", 4000)
    first = pull(cli, "purged")
    snapshot_bytes = first["stats"]["snapshot_bytes"]
    conn = sqlite3.connect(master_path(mgrid, "purged"))  # any program may write the master
    rnd = random.Random(5)
    with conn:
        for i in rnd.sample(range(1, 4001), 400):
            conn.execute("UPDATE people SET score = score || 'x' WHERE id = ?", (str(i),))
    conn.close()
    head = json.loads(cli.ok("data", "status", "purged", "--json").stdout)[0]["pos"]
    cli.ok("data", "purge", "purged", "--before", str(head))
    got = pull(cli, "purged")
    stats = got["stats"]
    assert stats["repairs"] == 1 and "purged" in stats["repair_reasons"][0]
    assert dump(cli.cwd / "replica.sqlite") == dump(master_path(mgrid, "purged"))
    # Only the changed rows travel: far less than a new snapshot.
    assert stats["last_repair"]["people"]["fetched"] <= 400 + 10
    assert stats["repair_bytes"] < 0.25 * snapshot_bytes, (stats["repair_bytes"], snapshot_bytes)


def test_master_restored_from_backup_then_advanced_is_detected(mgrid, cli) -> None:
    create(cli, "restored", 300)
    master = master_path(mgrid, "restored")
    cli.ok("data", "sql", "restored", "UPDATE people SET name='v1' WHERE id='1'")
    backup = cli.cwd / "backup.sqlite"
    src = sqlite3.connect(master)
    src.execute(f"VACUUM INTO '{backup}'")
    src.close()
    cli.ok("data", "sql", "restored",
           "UPDATE people SET name='lost' WHERE CAST(id AS INTEGER) BETWEEN 2 AND 11")
    old = pull(cli, "restored")
    # The operator restores the older backup; programs then advance it past the old position.
    for suffix in ("-wal", "-shm"):
        Path(str(master) + suffix).unlink(missing_ok=True)
    shutil.copy(backup, master)
    conn = sqlite3.connect(master)
    with conn:
        for i in range(100, 140):
            conn.execute("UPDATE people SET name='after' WHERE id=?", (str(i),))
    conn.close()
    new = pull(cli, "restored")
    assert new["epoch"] != old["epoch"] and new["pos"] >= old["pos"]
    assert dump(cli.cwd / "replica.sqlite") == dump(master)  # no silent divergence
    lost = sqlite3.connect(cli.cwd / "replica.sqlite").execute(
        "SELECT count(*) FROM people WHERE name='lost'").fetchone()[0]
    assert lost == 0
    st = json.loads(cli.ok("data", "status", "restored", "--json").stdout)[0]
    assert "restored" in st["epoch_reason"]


def test_destructive_schema_change_starts_a_new_epoch(mgrid, cli) -> None:
    create(cli, "destructive", 100)
    old = pull(cli, "destructive")
    cli.ok("data", "sql", "destructive", "ALTER TABLE people RENAME COLUMN city TO town")
    new = pull(cli, "destructive")
    assert new["epoch"] != old["epoch"]
    assert dump(cli.cwd / "replica.sqlite") == dump(master_path(mgrid, "destructive"))


def test_triggers_dropped_by_a_table_rebuild_are_reconciled(mgrid, cli) -> None:
    create(cli, "rebuilt", 400)
    old = pull(cli, "rebuilt")
    master = master_path(mgrid, "rebuilt")
    etl = sqlite3.connect(master, isolation_level=None)  # an ETL tool rebuilding the table
    sql = etl.execute("SELECT sql FROM sqlite_master WHERE name='people'").fetchone()[0]
    etl.executescript(f"""BEGIN;
        CREATE TABLE people_new AS SELECT * FROM people;
        UPDATE people_new SET city='Rebuilt' WHERE CAST(id AS INTEGER) <= 25;
        DROP TABLE people;
        {sql};
        INSERT INTO people SELECT * FROM people_new;
        DROP TABLE people_new;
        COMMIT;""")
    assert etl.execute("SELECT count(*) FROM sqlite_master WHERE type='trigger'"
                       ).fetchone()[0] == 0
    etl.close()
    new = pull(cli, "rebuilt")
    assert new["epoch"] == old["epoch"]  # not a new history: the table is reconciled
    assert any("reconcile" in r for r in new["stats"]["repair_reasons"])
    assert new["stats"]["last_repair"]["people"]["fetched"] == 25
    assert dump(cli.cwd / "replica.sqlite") == dump(master)
    etl = sqlite3.connect(master)
    assert etl.execute("SELECT count(*) FROM sqlite_master WHERE type='trigger'"
                       ).fetchone()[0] == 4  # reinstalled
    with etl:
        etl.execute("UPDATE people SET city='Later' WHERE id='30'")
    etl.close()
    pull(cli, "rebuilt")
    assert dump(cli.cwd / "replica.sqlite") == dump(master)


def test_snapshot_download_killed_midway_is_never_opened_and_resumes(mgrid, cli) -> None:
    create(cli, "big", 30000)
    replica = cli.cwd / "big.sqlite"
    part = cli.cwd / "big.sqlite.part"
    proc = subprocess.Popen([sys.executable, "-m", "officegrid", "data", "pull", "big", "--to",
                             str(replica), "--max-bandwidth", "100kB/s"], cwd=cli.cwd,
                            env=cli.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: part.exists() and part.stat().st_size >= 100_000, 60,
                 what="a partial snapshot download")
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert not replica.exists()  # a cut transfer is never opened as a database
    cut_at = part.stat().st_size
    got = pull(cli, "big", "big.sqlite")
    assert got["stats"]["snapshot_resumed_at"] == cut_at
    info = json.loads(cli.ok("data", "status", "big", "--json").stdout)[0]
    assert info["tables"] == {"people": 30000}
    assert dump(replica) == dump(master_path(mgrid, "big"))
    assert not part.exists()


def test_disk_full_while_applying_gives_clear_error_and_keeps_replica(mgrid, cli) -> None:
    create(cli, "full", 300)
    pull(cli, "full", "full.sqlite")
    conn = sqlite3.connect(cli.cwd / "full.sqlite")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    cli.ok("data", "sql", "full", "UPDATE people SET name = name || printf('%.500c', 'x')")
    client = mgrid.server.client()
    try:
        rep = Replica(cli.cwd / "full.sqlite", HttpRemote(client, "full"),
                      max_page_count=pages + 2)
        before = rep.position()
        with pytest.raises(ReplicaDiskFull, match="disk full"):
            rep.catch_up()
        assert rep.position() == before
        rep.close()
        conn = sqlite3.connect(cli.cwd / "full.sqlite")
        assert conn.execute("SELECT count(*) FROM people WHERE name LIKE '%xxxx'"
                            ).fetchone()[0] == 0
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        pull(cli, "full", "full.sqlite")  # with room again it catches up
        assert dump(cli.cwd / "full.sqlite") == dump(master_path(mgrid, "full"))
    finally:
        client.close()


# ------------------------------------------------------------- --from-sql (MariaDB, PostgreSQL)

MYSQL_URL = "mysql+pymysql://root@127.0.0.1:3306"
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["mariadb", "postgresql"])
def sql_db(request) -> Iterator[str]:
    """A scratch database with a table ``items`` (5 rows) on the machine's MariaDB or PostgreSQL;
    dropped afterwards. Yields its SQLAlchemy URL."""
    import uuid

    import sqlalchemy as sa

    name = f"og_data_{uuid.uuid4().hex[:10]}"
    admin_url = MYSQL_URL + "/" if request.param == "mariadb" else PG_ADMIN_URL
    try:
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.exec_driver_sql(f"CREATE DATABASE {name}")
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{request.param} unavailable: {exc}")
        pytest.skip(f"{request.param} unavailable: {exc}")
    url = (f"{MYSQL_URL}/{name}" if request.param == "mariadb"
           else PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")
    eng = sa.create_engine(url)
    with eng.begin() as c:
        c.exec_driver_sql("CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(50), "
                          "price DECIMAL(10, 2), seen TIMESTAMP NULL)")
        for i in range(1, 6):
            c.exec_driver_sql(f"INSERT INTO items VALUES ({i}, 'item {i}', {i}.50, "
                              f"'2026-01-0{i} 10:00:00')")
    eng.dispose()
    try:
        yield url
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}"
                              + (" WITH (FORCE)" if request.param == "postgresql" else ""))
        admin.dispose()


def test_create_from_sql_and_refresh_writes_only_changed_rows(mgrid, cli, sql_db) -> None:
    import sqlalchemy as sa

    cli.ok("data", "create", "items", "--from-sql", sql_db, "--query",
           "SELECT id, name, price, seen FROM items", "--key", "id", "--replace")
    pull(cli, "items", "items.sqlite")
    rows = sqlite3.connect(cli.cwd / "items.sqlite").execute(
        "SELECT id, name, price, seen FROM items ORDER BY id").fetchall()
    # numeric(10,2) stays a number (NUMERIC affinity), so `price > 10` compares numbers
    assert rows[0] == (1, "item 1", 1.5, "2026-01-01T10:00:00")
    assert len(rows) == 5
    head0 = json.loads(cli.ok("data", "status", "items", "--json").stdout)[0]["pos"]
    log = cli.cwd / "refresh.log"
    proc = subprocess.Popen([sys.executable, "-m", "officegrid", "data", "create", "items",
                             "--from-sql", sql_db, "--query",
                             "SELECT id, name, price, seen FROM items", "--key", "id",
                             "--replace", "--refresh", "0.3"], cwd=cli.cwd, env=cli.env(),
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    try:
        wait_for(lambda: log.read_text().count("refresh:") >= 1, 60, what="a first refresh")
        st = json.loads(cli.ok("data", "status", "items", "--json").stdout)[0]
        assert st["pos"] >= head0  # replaced: a new epoch, positions never go back
        head1 = st["pos"]
        eng = sa.create_engine(sql_db)
        with eng.begin() as c:
            c.exec_driver_sql("UPDATE items SET price = 9.99 WHERE id IN (2, 3)")
            c.exec_driver_sql("DELETE FROM items WHERE id = 4")
            c.exec_driver_sql("INSERT INTO items VALUES (6, 'item 6', 6.00, NULL)")
        eng.dispose()
        refreshes = log.read_text().count("refresh:")
        wait_for(lambda: log.read_text().count("refresh:") >= refreshes + 3, 60,
                 what="three more refreshes")
        st = json.loads(cli.ok("data", "status", "items", "--json").stdout)[0]
        assert st["pos"] - head1 == 4  # 2 updates, 1 delete, 1 insert: nothing else written
        assert st["tables"] == {"items": 5}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    pull(cli, "items", "items.sqlite")
    rows = dict(sqlite3.connect(cli.cwd / "items.sqlite").execute(
        "SELECT id, price FROM items").fetchall())
    assert rows == {1: 1.5, 2: 9.99, 3: 9.99, 5: 5.5, 6: 6}


def test_create_from_sql_bad_query_is_a_clear_error(cli, sql_db) -> None:
    res = cli("data", "create", "broken", "--from-sql", sql_db, "--query",
              "SELECT * FROM no_such_table", "--key", "id")
    assert res.returncode != 0 and "query failed" in res.stderr and "no_such_table" in res.stderr


def test_data_status_with_the_store_on_postgresql(tmp_path, pg_db) -> None:
    from conftest import Grid

    g = Grid(tmp_path, pg_db).start()
    try:
        cli = Cli(g.server.url, g.server.admin_token, tmp_path)
        create(cli, "pgsrc", 50)
        pull(cli, "pgsrc", "a.sqlite", "--name", "desk-a")
        cli.ok("data", "sql", "pgsrc", "UPDATE people SET name='x' WHERE id IN ('1', '2')")
        pull(cli, "pgsrc", "b.sqlite", "--name", "desk-b")
        st = json.loads(cli.ok("data", "status", "--json").stdout)
        lags = {r["replica"]: r["lag"] for r in st[0]["replicas"]}
        assert lags == {"desk-a": 2, "desk-b": 0}
        text = cli.ok("data", "status").stdout
        assert re.search(r"desk-a: position \d+ \(lag 2, seen \d+ s ago\)", text), text
    finally:
        g.close()


def test_replica_killed_during_apply_is_consistent_at_a_position(mgrid, cli) -> None:
    create(cli, "killed", 20000)
    pull(cli, "killed", "k.sqlite")
    base = json.loads(cli.ok("data", "status", "killed", "--json").stdout)[0]["pos"]
    res = cli.ok("data", "sql", "killed", "UPDATE people SET name = name || '+'")
    head = int(res.last_line)
    assert head - base == 20000
    replica = cli.cwd / "k.sqlite"

    def position() -> int:
        c = sqlite3.connect(f"file:{replica}?mode=ro", uri=True)
        try:
            return int(c.execute("SELECT v FROM _og_replica WHERE k='pos'").fetchone()[0])
        finally:
            c.close()

    proc = subprocess.Popen([sys.executable, "-m", "officegrid", "data", "pull", "killed",
                             "--to", str(replica), "--batch", "100"], cwd=cli.cwd,
                            env=cli.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: position() > base + 2000 or proc.poll() is not None, 60,
                 what="the replica to be part-way")
        proc.kill()  # SIGKILL, mid-stream
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    pos = position()
    if pos == head:
        pytest.skip("the pull finished before it could be killed (machine too fast)")
    conn = sqlite3.connect(replica)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # Exactly the changes up to its position are there: a consistent state at a position.
    changed = conn.execute("SELECT count(*) FROM people WHERE name LIKE '%+'").fetchone()[0]
    conn.close()
    assert changed == pos - base
    pull(cli, "killed", "k.sqlite")
    assert dump(replica) == dump(master_path(mgrid, "killed"))


# ------------------------------------------------------------------ workers: ctx.data, --data

LOOKUP = '''
def process(record, ctx):
    row = ctx.data("zipref").execute("SELECT city FROM zipref WHERE zip = ?",
                                     (record["zip"],)).fetchone()
    return {"zip": record["zip"], "city": row[0] if row else None}
'''


def test_units_read_a_replica_and_record_its_position(mgrid, cli) -> None:
    from grid import publish, write_job_module

    (cli.cwd / "zipref.csv").write_text("zip,city\n10115,Berlin\n80331,Munich\n20095,Hamburg\n")
    cli.ok("data", "create", "zipref", "--from", "zipref.csv", "--key", "zip")
    publish(mgrid.admin, write_job_module(cli.cwd / "code", "lookup", LOOKUP), "lookup")
    mgrid.worker("dataw")
    (cli.cwd / "in.csv").write_text("zip\n10115\n80331\n99999\n")

    def run_job() -> list[dict]:
        res = cli("submit", "--entry", "lookup:process", "--input", "in.csv", "--channel",
                  "lookup", "--data", "zipref", "--unit-size", "2", "--wait", timeout=120)
        assert res.returncode == 0, res
        job = res.last_line
        cli.ok("results", job, "--out", f"out-{job}.jsonl")
        return [json.loads(x) for x in (cli.cwd / f"out-{job}.jsonl").read_text().splitlines()]

    st1 = json.loads(cli.ok("data", "status", "zipref", "--json").stdout)[0]
    rows = run_job()
    assert {r["zip"]: r["city"] for r in rows} == {"10115": "Berlin", "80331": "Munich",
                                                   "99999": None}
    # _data is {name: [epoch, position]}, the epoch the full id `data status` shows.
    assert all(r["_data"] == {"zipref": [st1["epoch"], st1["pos"]]} for r in rows), rows
    # The master changes; the next job requires the new position and sees the change.
    cli.ok("data", "sql", "zipref", "UPDATE zipref SET city='Berlin-Mitte' WHERE zip='10115'")
    st2 = json.loads(cli.ok("data", "status", "zipref", "--json").stdout)[0]
    rows = run_job()
    assert {r["zip"]: r["city"] for r in rows}["10115"] == "Berlin-Mitte"
    assert all(r["_data"]["zipref"][0] == st2["epoch"] for r in rows), rows
    assert all(r["_data"]["zipref"][1] >= st2["pos"] for r in rows), rows
    st = json.loads(cli.ok("data", "status", "zipref", "--json").stdout)[0]
    assert any(r["replica"].startswith("dataw") for r in st["replicas"]), st["replicas"]
    # An unknown data source refuses the job before anything is uploaded.
    res = cli("submit", "--entry", "lookup:process", "--input", "in.csv", "--channel", "lookup",
              "--data", "nosuch")
    assert res.returncode != 0 and "no data source 'nosuch'" in res.stderr
