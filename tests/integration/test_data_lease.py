"""A lease request carries the worker's replica positions: units of a job that needs a newer
data position are held back and the worker is told what to replicate, so it catches up before
it holds a lease (issue 4, item 5). Over real HTTP on SQLite and PostgreSQL, plus one real worker
process."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from grid import publish, wait_for, write_csv, write_job_module
from integration.test_leases import SimWorker, make_job, make_release
from officegrid import protocol as p


def make_source(admin, tmp: Path, name: str = "ref") -> dict:
    db = tmp / f"{name}.sqlite"
    conn = sqlite3.connect(db)
    conn.execute(f"CREATE TABLE {name} (k INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany(f"INSERT INTO {name} VALUES (?, ?)", [(i, f"v{i}") for i in range(20)])
    conn.commit()
    conn.close()
    return admin.data_create(name, db)


def lease_with(w: SimWorker, data: dict) -> p.LeaseResponse:
    return w.c.lease(p.LeaseRequest(resources=p.WorkerResources(data=data), max_units=1))


def test_a_worker_behind_is_told_to_replicate_and_leases_once_it_reports_the_position(
        any_grid, tmp_path) -> None:
    admin = any_grid.admin
    make_release(admin)
    st = make_source(admin, tmp_path)
    admin.data_sql("ref", "UPDATE ref SET v = 'changed' WHERE k = 3")
    head = admin.data_status("ref")
    assert head["pos"] > st["pos"]
    job = make_job(admin, units=2, data=["ref"])
    plain = make_job(admin, units=1)
    w = SimWorker(any_grid)

    # No replica at all: only the job without data is leased; the answer names the position.
    res = lease_with(w, {})
    assert [x.job for x in res.leases] == [plain["id"]]
    assert res.replicate == {"ref": head["pos"]}
    res = lease_with(w, {})
    assert res.leases == [] and res.replicate == {"ref": head["pos"]}
    assert res.reason == f"replicating data source ref to position {head['pos']}"
    assert res.retry_after is not None and res.retry_after <= 1.0

    # A replica older than the job's requirement is still held back.
    res = lease_with(w, {"ref": [head["epoch"], head["pos"] - 1]})
    assert res.leases == [] and res.replicate == {"ref": head["pos"]}

    # At the position: leased, and the lease says which position it must read at least.
    res = lease_with(w, {"ref": [head["epoch"], head["pos"]]})
    assert [x.job for x in res.leases] == [job["id"]] and res.replicate == {}
    assert res.leases[0].data == {"ref": [head["epoch"], head["pos"]]}

    res = lease_with(w, {"ref": [head["epoch"], head["pos"]]})
    assert [x.job for x in res.leases] == [job["id"]]  # the second (last) unit


LOOKUP = '''
def process(record, ctx):
    k = int(record["value"])
    row = ctx.data("ref").execute("SELECT v FROM ref WHERE k = ?", (k,)).fetchone()
    return {"k": k, "v": row[0] if row else None}
'''


def test_a_real_worker_replicates_before_it_leases(grid, tmp_path) -> None:
    """The worker's first lease request is answered "replicate"; its follower catches up in
    the background, and units are leased once its lease requests report the job's position
    (a worker that did not report it would never get a unit: the job would not finish)."""
    admin = grid.admin
    make_source(admin, tmp_path)
    for i in range(5):
        admin.data_sql("ref", f"UPDATE ref SET v = 'new{i}' WHERE k = {i}")
    head = admin.data_status("ref")
    publish(admin, write_job_module(tmp_path / "code", "lookup", LOOKUP))
    job = admin.submit("lookup:process", write_csv(tmp_path / "in.csv", 6), key="id",
                       unit_size=2, data=["ref"])
    w = grid.worker("replicator")
    wait_for(lambda: admin.job(job["id"])["state"] == "done", timeout=120)
    out = tmp_path / "out.jsonl"
    admin.export_results(job["id"], out)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 6
    assert all(r["_data"]["ref"][0] == head["epoch"] for r in rows), rows  # [epoch, position]
    assert all(r["_data"]["ref"][1] >= head["pos"] for r in rows), rows
    assert {r["k"]: r["v"] for r in rows} == {1: "new1", 2: "new2", 3: "new3", 4: "new4",
                                              5: "v5", 6: "v6"}
    # Said once in the agent's log at the default level: why its units waited.
    assert f"replicating data source ref to position {head['pos']}" in w.output()
    st = admin.data_status("ref")
    assert any(r["replica"].startswith("replicator") and r["pos"] >= head["pos"]
               for r in st["replicas"]), st["replicas"]


def test_the_agent_bandwidth_cap_paces_log_batches_too(grid, tmp_path) -> None:
    """The client's bucket (``--max-bandwidth``) sees every data answer it reads, not only
    snapshots: here a log batch."""
    from officegrid.client import Client
    from officegrid.sync.bandwidth import TokenBucket

    class Counting(TokenBucket):
        def __init__(self) -> None:
            super().__init__(1e12)
            self.taken = 0

        def consume(self, n: int) -> None:
            self.taken += n
            super().consume(n)

    st = make_source(grid.admin, tmp_path)
    grid.admin.data_sql("ref", "UPDATE ref SET v = v || '!'")
    with Client(grid.server.url, grid.server.admin_token) as c:
        c.bandwidth = Counting()
        before = c.bytes_received
        batch = c.data_log("ref", st["epoch"], st["pos"])
        assert len(batch["entries"]) == 20
        assert c.bandwidth.taken == c.bytes_received - before > 0


def test_a_replica_of_an_older_epoch_is_behind_whatever_its_position(any_grid, tmp_path) -> None:
    admin = any_grid.admin
    make_release(admin)
    make_source(admin, tmp_path)
    old = admin.data_status("ref")
    job = make_job(admin, units=1, data=["ref"])
    admin.data_sql("ref", "ALTER TABLE ref RENAME COLUMN v TO w")  # destructive: a new epoch
    new = admin.data_status("ref")
    assert new["epoch"] != old["epoch"] and new["pos"] >= old["pos"]
    w = SimWorker(any_grid)
    res = lease_with(w, {"ref": [old["epoch"], old["pos"] + 10]})
    assert res.leases == [] and res.replicate == {"ref": old["pos"]}
    res = lease_with(w, {"ref": [new["epoch"], new["pos"]]})
    assert [x.job for x in res.leases] == [job["id"]]


def test_outside_the_transfer_window_a_worker_is_not_told_to_replicate(grid, tmp_path) -> None:
    admin = grid.admin
    make_release(admin)
    make_source(admin, tmp_path)
    make_job(admin, units=1, data=["ref"])
    w = SimWorker(grid)
    res = w.c.lease(p.LeaseRequest(resources=p.WorkerResources(fetch_allowed=False),
                                   max_units=1))
    assert res.leases == [] and res.replicate == {}
    assert res.reason == "outside transfer window"


def test_an_agent_seals_its_replicas_at_stop_and_checks_one_changed_while_it_was_down(
        grid, tmp_path) -> None:
    """A clean stop seals each replica; a restart trusts a sealed, unchanged file as it is, and
    repairs one written while no agent ran before any unit reads it."""
    admin = grid.admin
    make_source(admin, tmp_path)
    publish(admin, write_job_module(tmp_path / "code", "lookup", LOOKUP))
    w = grid.worker("sealer")
    replica = w.work_dir / "data" / "ref.sqlite"

    def run_job(n: int) -> dict[int, str]:
        job = admin.submit("lookup:process", write_csv(tmp_path / f"in{n}.csv", 3), key="id",
                           unit_size=3, data=["ref"])
        wait_for(lambda: admin.job(job["id"])["state"] == "done", timeout=120)
        out = tmp_path / f"out{n}.jsonl"
        admin.export_results(job["id"], out)
        return {r["k"]: r["v"] for r in map(json.loads, out.read_text().splitlines())}

    assert run_job(1) == {1: "v1", 2: "v2", 3: "v3"}
    w.stop()
    assert w.proc.returncode == 0
    assert replica.with_name("ref.sqlite.seal").exists()

    w.start()  # sealed and unchanged: used as it is
    assert run_job(2) == {1: "v1", 2: "v2", 3: "v3"}
    w.stop()
    assert "repair" not in w.output()

    conn = sqlite3.connect(replica)  # someone edits the replica while no agent runs
    conn.execute("UPDATE ref SET v = 'SNEAK' WHERE k = 2")
    conn.commit()
    conn.close()
    w.start()
    assert run_job(3) == {1: "v1", 2: "v2", 3: "v3"}
    w.stop()
    out = w.output()
    assert "the replica file changed after its follower's last commit" in out
    assert "repaired at position" in out and "rows fetched 1," in out, out
