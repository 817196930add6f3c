"""The cheap paths of replication keep its guarantees: grouped in-place applies, a step that
does not hold the replica while its request is out, the server's shared batch answers, and
range hashes made per range."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from officegrid.server.replica_feed import ReplicaFeed
from officegrid.sync.replication import changelog, master, merkle
from officegrid.sync.replication.errors import NeedsRepair
from officegrid.sync.replication.remote import LocalRemote
from officegrid.sync.replication.replica import Replica
from officegrid.sync.replication.service import MasterService


def dump(path: Path) -> dict:
    conn = sqlite3.connect(path)
    try:
        return {t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr)
                for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                         "AND name NOT LIKE '\\_og\\_%' ESCAPE '\\' "
                                         "AND name NOT LIKE 'sqlite%'")}
    finally:
        conn.close()


def source(tmp: Path, ddl: str, rows: list[tuple]) -> MasterService:
    data = tmp / "data"
    data.mkdir()
    svc = MasterService(data, "src")
    conn = sqlite3.connect(svc.path)
    conn.execute(ddl)
    marks = ", ".join("?" for _ in rows[0])
    conn.executemany(f"INSERT INTO t VALUES ({marks})", rows)
    conn.commit()
    conn.close()
    master.adopt(svc.path, svc.state)
    return svc


def test_replace_on_another_unique_column_is_applied_like_the_master(tmp_path: Path) -> None:
    """A foreign writer (no recursive triggers) REPLACEs a row that collides on a second
    UNIQUE column: the master loses the old row without a logged delete; the replica must
    lose it too (INSERT OR REPLACE there, not an in-place upsert)."""
    svc = source(tmp_path, "CREATE TABLE t (id INTEGER PRIMARY KEY, email TEXT UNIQUE, n INT)",
                 [(i, f"u{i}@x", i) for i in range(1, 50)])
    rep = Replica(tmp_path / "r.sqlite", LocalRemote(svc))
    rep.catch_up()
    foreign = sqlite3.connect(svc.path)  # recursive_triggers off, as most programs have it
    foreign.execute("INSERT OR REPLACE INTO t VALUES (100, 'u3@x', 7)")
    foreign.execute("UPDATE t SET n = n + 1 WHERE id < 10")
    foreign.commit()
    foreign.close()
    rep.catch_up()
    assert dump(rep.path) == dump(svc.path)
    assert 3 not in [r[0] for r in dump(rep.path)["t"]]


def test_replace_of_a_nocase_key_keeps_the_new_spelling(tmp_path: Path) -> None:
    """With a NOCASE key, REPLACE 'ABC' over 'abc' leaves 'ABC' on the master; an in-place
    update would keep 'abc' on the replica."""
    svc = source(tmp_path, "CREATE TABLE t (k TEXT COLLATE NOCASE PRIMARY KEY, n INT)",
                 [("abc", 1), ("def", 2)])
    rep = Replica(tmp_path / "r.sqlite", LocalRemote(svc))
    rep.catch_up()
    foreign = sqlite3.connect(svc.path)
    foreign.execute("INSERT OR REPLACE INTO t VALUES ('ABC', 5)")
    foreign.commit()
    foreign.close()
    rep.catch_up()
    assert dump(rep.path) == dump(svc.path) == {"t": [("ABC", 5), ("def", 2)]}


def test_grouped_apply_keeps_order_across_tables_and_operations(tmp_path: Path) -> None:
    svc = source(tmp_path, "CREATE TABLE t (k TEXT PRIMARY KEY, v REAL, b BLOB)",
                 [(f"k{i}", i / 3, bytes([i])) for i in range(100)])
    rep = Replica(tmp_path / "r.sqlite", LocalRemote(svc))
    rep.catch_up()
    m = master.connect(svc.path)
    with master.write_tx(m):
        m.execute("CREATE TABLE u (a INTEGER, c TEXT, PRIMARY KEY (a, c))")
    svc.poll(force=True)
    with master.write_tx(m):
        for i in range(60):
            m.execute("UPDATE t SET v = ? WHERE k = ?", (i * 1.5, f"k{i % 7}"))
            m.execute("DELETE FROM t WHERE k = ?", (f"k{50 + i % 5}",))
            m.execute("INSERT OR REPLACE INTO t VALUES (?, ?, ?)", (f"k{50 + i % 5}", -i, None))
            m.execute("INSERT OR REPLACE INTO u VALUES (?, ?)", (i % 4, "x\x00y"))
        m.execute("ALTER TABLE t ADD COLUMN z TEXT DEFAULT 'd'")
        m.execute("UPDATE t SET z = 'set' WHERE k = 'k1'")
    m.close()
    rep.catch_up()
    assert dump(rep.path) == dump(svc.path)


def test_a_step_that_races_another_drops_its_batch_without_repair(tmp_path: Path) -> None:
    """The follower holds the replica's lock only around reading and applying; if the replica
    moved while its request was out, the answer is dropped (no repair, no double apply)."""
    svc = source(tmp_path, "CREATE TABLE t (id INTEGER PRIMARY KEY, n INT)",
                 [(i, i) for i in range(1, 20)])
    import threading

    lock = threading.Lock()

    class Racing(LocalRemote):
        raced = False

        def log(self, *args: Any, **kw: Any) -> dict[str, Any]:
            answer = super().log(*args, **kw)
            if answer["entries"] and not self.raced:
                self.raced = True
                assert rep.step(lock=lock) == "applied"  # someone else moves the replica
            return answer

    rep = Replica(tmp_path / "r.sqlite", Racing(svc))
    rep.catch_up()
    m = master.connect(svc.path)
    m.execute("UPDATE t SET n = 0 WHERE id < 5")
    m.close()
    assert rep.step(lock=lock) == "raced"
    assert rep.stats.repairs == 0 and rep.stats.batches == 1
    assert rep.catch_up().pos == svc.status()["pos"]
    assert dump(rep.path) == dump(svc.path)


class _Ctx:
    """What :class:`ReplicaFeed` uses of a server context."""

    shutting_down = None

    async def run(self, fn: Any, *args: Any, **kw: Any) -> Any:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kw))


def test_replicas_at_one_position_share_one_answer_until_the_log_moves(tmp_path: Path) -> None:
    svc = source(tmp_path, "CREATE TABLE t (id INTEGER PRIMARY KEY, n INT)",
                 [(i, i) for i in range(1, 200)])
    h0 = svc.poll(force=True)["head"]
    m = master.connect(svc.path)
    m.execute("UPDATE t SET n = -n WHERE id < 100")
    svc.poll(force=True)
    feed, ctx = ReplicaFeed(), _Ctx()

    async def fleet() -> list[bytes]:
        return list(await asyncio.gather(*(feed.log(ctx, svc, h0.epoch, h0.pos, 1000)
                                           for _ in range(20))))

    answers = asyncio.run(fleet())
    assert len(set(answers)) == 1
    assert feed.misses == 1 and feed.hits + feed.misses <= 20  # concurrent misses waited
    # A purge moves the base: the cached answer is not served for a purged position.
    with master.write_tx(m):
        changelog.purge(m, before=h0.pos + 10)
    m.close()
    svc.poll(force=True)
    with pytest.raises(NeedsRepair):
        asyncio.run(feed.log(ctx, svc, h0.epoch, h0.pos, 1000))


def test_range_hashes_do_not_depend_on_column_order(tmp_path: Path) -> None:
    a = sqlite3.connect(tmp_path / "a.sqlite")
    b = sqlite3.connect(tmp_path / "b.sqlite")
    a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x TEXT, y REAL)")
    b.execute("CREATE TABLE t (y REAL, id INTEGER PRIMARY KEY, x TEXT)")
    rows = [(i, f"x{i}", i / 7) for i in range(300)]
    a.executemany("INSERT INTO t (id, x, y) VALUES (?, ?, ?)", rows)
    b.executemany("INSERT INTO t (id, x, y) VALUES (?, ?, ?)", rows)
    assert merkle.bucket_hashes(a, "t", 64) == merkle.bucket_hashes(b, "t", 64)
    b.execute("UPDATE t SET y = y + 1e-12 WHERE id = 200")
    ha, hb = merkle.bucket_hashes(a, "t", 64), merkle.bucket_hashes(b, "t", 64)
    assert [i for i in range(len(ha)) if ha[i] != hb[i]] == [3]
