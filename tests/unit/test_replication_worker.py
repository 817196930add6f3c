"""A worker's replicas: background trickle, one snapshot per reader, catch-up to a required
position, WAL checkpoints between units, and the free-disk check."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from test_replication_library import make_source  # noqa: E402

from grid import wait_for  # noqa: E402
from officegrid.sync.replication import master  # noqa: E402
from officegrid.sync.replication.errors import DataSourceError  # noqa: E402
from officegrid.sync.replication.fleet import ReplicaSet  # noqa: E402
from officegrid.sync.replication.reader import open_snapshot  # noqa: E402
from officegrid.sync.replication.remote import LocalRemote  # noqa: E402


def test_reader_keeps_one_snapshot_while_changes_trickle_in(tmp_path: Path) -> None:
    svc = make_source(tmp_path, 300)
    reps = ReplicaSet(tmp_path / "replicas", lambda n: LocalRemote(svc), interval=0.05)
    try:
        reps.ensure(["people"])
        head = svc.status()["pos"]
        reps.catch_up("people", head)
        conn, used = open_snapshot(reps.path("people"))
        assert used["pos"] == head
        m = master.connect(svc.path)
        m.execute("UPDATE people SET name='changed' WHERE CAST(id AS INTEGER) <= 100")
        new_head = svc.status()["pos"]
        assert new_head == head + 100
        wait_for(lambda: reps.positions()["people"][1] == new_head, 30,
                 what="the background replica to apply the change")
        # The unit that opened its transaction earlier still sees the state at its position.
        assert conn.execute("SELECT count(*) FROM people WHERE name='changed'"
                            ).fetchone()[0] == 0
        assert conn.execute("SELECT v FROM _og_replica WHERE k='pos'").fetchone()[0] == str(head)
        with pytest.raises(sqlite3.OperationalError):
            conn.execute("DELETE FROM people")
        conn.close()
        conn, used = open_snapshot(reps.path("people"))  # the next unit sees the new state
        assert used["pos"] == new_head
        assert conn.execute("SELECT count(*) FROM people WHERE name='changed'"
                            ).fetchone()[0] == 100
        conn.close()
        reps.checkpoint()  # between units: the WAL is folded back and truncated
        wal = Path(str(reps.path("people")) + "-wal")
        assert not wal.exists() or wal.stat().st_size == 0
    finally:
        reps.close()


def test_catch_up_reaches_a_required_position(tmp_path: Path) -> None:
    svc = make_source(tmp_path, 50)
    reps = ReplicaSet(tmp_path / "replicas", lambda n: LocalRemote(svc), interval=3600)
    try:
        m = master.connect(svc.path)
        m.execute("UPDATE people SET name='n'")
        need = svc.status()["pos"]
        epoch, pos = reps.catch_up("people", need, timeout=30)
        assert pos >= need and epoch == svc.status()["epoch"]
    finally:
        reps.close()


def test_new_replica_refused_without_free_disk(tmp_path: Path) -> None:
    svc = make_source(tmp_path, 50)
    reps = ReplicaSet(tmp_path / "replicas", lambda n: LocalRemote(svc),
                      free_bytes=lambda: 10_000)
    with pytest.raises(DataSourceError, match="not enough free disk for a replica of 'people'"):
        reps.ensure(["people"])
    assert not reps.path("people").exists()
    reps.close()


def test_runner_context_reads_one_snapshot_per_unit(tmp_path: Path) -> None:
    """The runner's ctx.data (stdlib copy of reader.open_snapshot) pins one position."""
    import logging

    from officegrid.sync.replication.replica import Replica
    from officegrid.worker.runner import Context, _with_data

    svc = make_source(tmp_path, 20)
    rep = Replica(tmp_path / "people.sqlite", LocalRemote(svc))
    rep.catch_up()
    ctx = Context({"release_dir": str(tmp_path), "data": {"people": str(rep.path)}},
                  logging.getLogger("t"))
    conn = ctx.data("people")
    before = ctx.data_positions()["people"]
    # [epoch, position]: the epoch is the replica's (and the master's) full epoch id.
    assert before == [svc.status()["epoch"], rep.position().pos]
    m = master.connect(svc.path)
    m.execute("UPDATE people SET name='new'")
    rep.catch_up()
    assert rep.position().pos == before[1] + 20
    assert conn.execute("SELECT count(*) FROM people WHERE name='new'").fetchone()[0] == 0
    assert ctx.data("people") is conn and ctx.data_positions() == {"people": before}
    with pytest.raises(KeyError, match="submit with --data other"):
        ctx.data("other")
    fn = _with_data(lambda rec, c: {"x": 1}, ctx.data_positions(), batch=False)
    assert fn({}, ctx) == {"x": 1, "_data": {"people": before}}
    conn.close()
    rep.close()


class _CountingRemote:
    """A LocalRemote that records which calls reach the 'server'."""

    def __init__(self, inner: LocalRemote) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        fn = getattr(self.inner, name)

        def call(*args, **kw):
            self.calls.append(name)
            return fn(*args, **kw)
        return call


def test_closed_transfer_window_fetches_nothing_until_it_opens(tmp_path: Path) -> None:
    import threading

    svc = make_source(tmp_path, 50)
    remote = _CountingRemote(LocalRemote(svc))
    window_open = threading.Event()
    asked = threading.Semaphore(0)

    def may_transfer() -> bool:
        asked.release()
        return window_open.is_set()

    reps = ReplicaSet(tmp_path / "replicas", lambda n: remote, interval=0.02,
                      may_transfer=may_transfer)
    try:
        reps.ensure(["people"])  # the free-disk check asks for the snapshot's size only
        before = list(remote.calls)
        for _ in range(5):  # the follower asked the window five times, and it was closed
            assert asked.acquire(timeout=30)
        assert remote.calls == before and "snapshot_info" in before
        assert reps.positions() == {}
        window_open.set()
        head = svc.status()["pos"]
        wait_for(lambda: reps.positions().get("people", [None, -1])[1] == head, 30,
                 what="the replica to bootstrap once the window opened")
        assert len(remote.calls) > len(before)
    finally:
        reps.close()


def test_drop_does_not_block_the_set_while_a_step_runs(tmp_path: Path) -> None:
    """A drop waits for its follower's step (a bootstrap or repair may take minutes) without
    holding the set's lock: other sources are ensured meanwhile; the same source waits for the
    drop to finish and then starts afresh."""
    import threading

    svc = make_source(tmp_path, 50)
    reps = ReplicaSet(tmp_path / "replicas", lambda n: LocalRemote(svc), interval=3600)
    head = svc.status()["pos"]
    reps.catch_up("people", head, timeout=30)
    f = reps._followers["people"]
    f.lock.acquire()  # a step in progress
    try:
        freed: list[int] = []
        dropper = threading.Thread(target=lambda: freed.append(reps.drop("people")))
        dropper.start()
        wait_for(lambda: "people" not in reps._followers, 30, what="the drop to start")
        other = threading.Thread(target=reps.ensure, args=(["other"],))
        other.start()
        other.join(30)
        assert not other.is_alive(), "ensure of another source blocked behind the drop"
        assert "other" in reps._followers
        again = threading.Thread(target=reps.ensure, args=(["people"],))
        again.start()
        again.join(0.3)  # must still wait: the drop has not deleted the file yet
        assert again.is_alive() and reps.path("people").exists()
        assert reps.drop("people") == 0  # a second drop of the same source does nothing
    finally:
        f.lock.release()
    dropper.join(30)
    again.join(30)
    try:
        assert not dropper.is_alive() and not again.is_alive()
        assert freed and freed[0] > 0
        assert reps._followers["people"] is not f  # started afresh after the deletion
        epoch, pos = reps.catch_up("people", head, timeout=30)
        assert pos >= head
    finally:
        reps.close()


def test_catch_up_does_not_take_a_replica_of_a_withdrawn_history(tmp_path: Path) -> None:
    """A master restored from a backup starts a new epoch at the same position numbers: a
    replica of the old history at the required number must not be used as it is."""
    import shutil

    svc = make_source(tmp_path, 50)
    backup = tmp_path / "backup.sqlite"
    m = master.connect(svc.path)
    m.execute(f"VACUUM INTO '{backup}'")
    m.execute("UPDATE people SET name='withdrawn' WHERE CAST(id AS INTEGER) <= 5")
    head = svc.poll(force=True)["head"]
    reps = ReplicaSet(tmp_path / "replicas", lambda n: LocalRemote(svc), interval=3600)
    try:
        old = reps.catch_up("people", head.pos, epoch=head.epoch)
        assert old == [head.epoch, head.pos]
        m.close()
        for suffix in ("-wal", "-shm"):
            Path(str(svc.path) + suffix).unlink(missing_ok=True)
        shutil.copy(backup, svc.path)  # the backup has no 'withdrawn' rows
        new = svc.poll(force=True)["head"]
        assert new.epoch != head.epoch and new.pos >= head.pos
        # The job asked for [old epoch, pos]: the replica has exactly that, but the master
        # withdrew it; catch_up asks the master and repairs to the current history.
        epoch, pos = reps.catch_up("people", head.pos, epoch=head.epoch)
        assert epoch == new.epoch and pos >= head.pos
        conn = sqlite3.connect(reps.path("people"))
        assert conn.execute("SELECT count(*) FROM people WHERE name='withdrawn'"
                            ).fetchone()[0] == 0
        conn.close()
    finally:
        reps.close()


def test_a_replica_written_by_job_code_is_detected_and_repaired(tmp_path: Path) -> None:
    """Job code gets a read-only connection, but it can find the file and open its own: such a
    write makes the replica differ from its master, so the next step repairs it."""
    from officegrid.sync.replication.replica import Replica

    svc = make_source(tmp_path, 200)
    rep = Replica(tmp_path / "r.sqlite", LocalRemote(svc))
    rep.catch_up()
    sneaky = sqlite3.connect(tmp_path / "r.sqlite")
    sneaky.execute("UPDATE people SET name='SNEAK' WHERE CAST(id AS INTEGER) <= 3")
    sneaky.execute("DELETE FROM people WHERE CAST(id AS INTEGER) = 50")
    sneaky.commit()
    sneaky.close()
    assert rep.step() == "repair"
    conn = sqlite3.connect(tmp_path / "r.sqlite")
    m = sqlite3.connect(svc.path)
    q = "SELECT * FROM people ORDER BY id"
    assert conn.execute(q).fetchall() == m.execute(q).fetchall()
    assert conn.execute("SELECT count(*) FROM people WHERE name='SNEAK'").fetchone()[0] == 0
    conn.close()
    m.close()
    # Its own writes (applied batches) are not taken for someone else's.
    mm = master.connect(svc.path)
    mm.execute("UPDATE people SET name='changed' WHERE CAST(id AS INTEGER) <= 10")
    mm.close()
    assert rep.step() == "applied"
    assert rep.step() == "idle"
    rep.close()


def _same_as_master(path: Path, svc) -> bool:
    conn, m = sqlite3.connect(path), sqlite3.connect(svc.path)
    q = "SELECT * FROM people ORDER BY id"
    try:
        return conn.execute(q).fetchall() == m.execute(q).fetchall()
    finally:
        conn.close()
        m.close()


@pytest.mark.parametrize("how", ["update", "delete", "restored copy", "mtime set back"])
def test_a_replica_written_while_nobody_follows_it_is_repaired_at_the_next_start(
        tmp_path: Path, how: str) -> None:
    """Between runs no connection watches ``data_version``: the seal written at a clean close
    tells the next start that the file changed, and the position is not claimed until a
    range-hash repair made the rows equal the master's again."""
    import os
    import shutil

    svc = make_source(tmp_path, 300)
    reps = ReplicaSet(tmp_path / "set", lambda n: LocalRemote(svc), interval=0.05)
    reps.catch_up("people", 0)
    path = reps.path("people")
    backup = tmp_path / "old.sqlite"
    shutil.copy(path, backup)
    mm = master.connect(svc.path)
    mm.execute("UPDATE people SET name='newer' WHERE CAST(id AS INTEGER) <= 20")
    mm.close()
    at = reps.catch_up("people", 1)
    reps.close()  # the agent stops cleanly
    assert path.with_name("people.sqlite.seal").exists()
    st = path.stat()
    if how == "restored copy":  # a backup tool puts back an older file
        shutil.copy(backup, path)
    else:
        other = sqlite3.connect(path)
        if how == "delete":
            other.execute("DELETE FROM people WHERE CAST(id AS INTEGER) BETWEEN 100 AND 120")
        else:
            other.execute("UPDATE people SET name='SNEAK' WHERE CAST(id AS INTEGER) = 7")
        other.commit()
        other.close()
        if how == "mtime set back":
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not _same_as_master(path, svc)

    # A long start delay keeps the background thread out of the way: catch_up steps.
    reps = ReplicaSet(tmp_path / "set", lambda n: LocalRemote(svc), interval=3600)
    try:
        reps.ensure(["people"])
        assert reps.positions() == {}  # whatever the file says, no position before the check
        assert reps.catch_up("people", at[1]) == at
        rep = reps._follower("people").replica
        assert rep.stats.repairs == 1 and rep.verified
        assert "changed after its follower's last commit" in rep.stats.repair_reasons[0]
        assert _same_as_master(path, svc)
    finally:
        reps.close()


def test_a_sealed_replica_is_trusted_and_an_unsealed_one_checked(tmp_path: Path) -> None:
    import subprocess
    import sys

    from officegrid.sync.replication.replica import Replica

    svc = make_source(tmp_path, 300)
    path = tmp_path / "r.sqlite"
    rep = Replica(path, LocalRemote(svc))
    rep.catch_up()
    rep.close()
    rep = Replica(path, LocalRemote(svc))
    assert rep.step() == "idle" and rep.verified  # sealed and unchanged: no check
    rep.close()
    # Killed while idle after a commit (the seal is rewritten after each one): trusted.
    mm = master.connect(svc.path)
    mm.execute("UPDATE people SET name='later' WHERE id <= 3")
    mm.close()
    script = ("import sys, os\n"
              "from officegrid.sync.replication.replica import Replica\n"
              "from officegrid.sync.replication.remote import LocalRemote\n"
              "from officegrid.sync.replication.service import MasterService\n"
              "svc = MasterService(sys.argv[2], 'people')\n"
              "rep = Replica(sys.argv[1], LocalRemote(svc))\n"
              "rep.catch_up()\n"
              "os.kill(os.getpid(), 9)\n")
    killed = subprocess.run([sys.executable, "-c", script, str(path), str(svc.path.parent)])
    assert killed.returncode == -9
    rep = Replica(path, LocalRemote(svc))
    assert rep.step() == "idle" and rep.stats.repairs == 0 and _same_as_master(path, svc)
    rep.close()
    (tmp_path / "r.sqlite.seal").unlink()  # as after a seal lost, or an older officegrid
    rep = Replica(path, LocalRemote(svc))
    assert rep.step() == "repair" and "has no seal" in rep.stats.repair_reasons[0]
    assert rep.stats.last_repair["people"]["fetched"] == 0  # equal: only hashes compared
    assert rep.step() == "idle"
    rep.close()


def test_a_write_while_the_follower_waits_is_not_sealed_at_close(tmp_path: Path) -> None:
    """Review finding: a job's write between the last step and a clean stop was sealed as the
    follower's own; close() now looks at data_version first."""
    from officegrid.sync.replication.replica import Replica

    svc = make_source(tmp_path, 100)
    rep = Replica(tmp_path / "r.sqlite", LocalRemote(svc))
    rep.catch_up()
    sneaky = sqlite3.connect(tmp_path / "r.sqlite")
    sneaky.execute("UPDATE people SET name='SNEAK' WHERE id = 4")
    sneaky.commit()
    sneaky.close()
    rep.close()
    assert not (tmp_path / "r.sqlite.seal").exists()
    rep = Replica(tmp_path / "r.sqlite", LocalRemote(svc))
    assert rep.step() == "repair" and _same_as_master(tmp_path / "r.sqlite", svc)
    rep.close()


def test_a_reconcile_cut_short_is_owed_at_the_next_start(tmp_path: Path) -> None:
    """Review finding: the batch holding a reconcile entry is committed before the repair; a
    repair cut short (SIGTERM) must leave the file unsealed, so the next start repairs."""
    from officegrid.sync.replication.replica import Replica

    class CutRepair(Replica):
        def repair(self, reason: str) -> dict:
            raise KeyboardInterrupt

    svc = make_source(tmp_path, 100)
    rep = CutRepair(tmp_path / "r.sqlite", LocalRemote(svc))
    rep.bootstrap()
    m = sqlite3.connect(svc.path, isolation_level=None)  # an ETL rebuild: triggers lost
    sql = m.execute("SELECT sql FROM sqlite_master WHERE name='people'").fetchone()[0]
    m.executescript(f"""BEGIN; CREATE TABLE p2 AS SELECT * FROM people;
        UPDATE p2 SET name='rebuilt' WHERE id <= 5; DROP TABLE people; {sql};
        INSERT INTO people SELECT * FROM p2; DROP TABLE p2; COMMIT;""")
    m.close()
    assert svc.poll(force=True)["reconciled"] == ["people"]
    with pytest.raises(KeyboardInterrupt):
        rep.catch_up()
    rep.close()
    assert not (tmp_path / "r.sqlite.seal").exists()
    rep = Replica(tmp_path / "r.sqlite", LocalRemote(svc))
    rep.catch_up()
    assert rep.stats.repairs == 1 and _same_as_master(tmp_path / "r.sqlite", svc)
    rep.close()


def test_an_unverified_replica_is_not_used_while_the_server_is_away(tmp_path: Path) -> None:
    """Review finding: catch_up fell back to a replica in the job's epoch when the server was
    away, even one the seal said not to trust."""
    from officegrid.client import Unreachable

    class Away(LocalRemote):
        away = False

        def log(self, *a, **kw):
            if self.away:
                raise Unreachable(0, "unreachable", "server away")
            return super().log(*a, **kw)

        def status(self):
            if self.away:
                raise Unreachable(0, "unreachable", "server away")
            return super().status()

    svc = make_source(tmp_path, 50)
    remote = Away(svc)
    reps = ReplicaSet(tmp_path / "set", lambda n: remote, interval=3600)
    epoch, pos = reps.catch_up("people", 0)
    reps.close()
    remote.away = True
    reps = ReplicaSet(tmp_path / "set", lambda n: remote, interval=3600)
    try:  # sealed at close: used as it is while the server is away
        assert reps.catch_up("people", pos, epoch=epoch) == [epoch, pos]
    finally:
        reps.close()
    (tmp_path / "set" / "people.sqlite.seal").unlink()  # as after a crash
    reps = ReplicaSet(tmp_path / "set", lambda n: remote, interval=3600)
    try:
        with pytest.raises(Unreachable):
            reps.catch_up("people", pos, epoch=epoch)
    finally:
        reps.close()
    with pytest.raises(DataSourceError, match="stopping"):
        reps.ensure(["people"])  # closed: no follower starts (and unseals a file) after
