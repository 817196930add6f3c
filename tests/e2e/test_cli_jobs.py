"""A data engineer's day on a real grid: publish, submit --wait on two workers, status, results in
every format and into SQL; a crashing job (quarantine, logs, retry); cancelling a running job."""

from __future__ import annotations

import csv
import json
import re
import uuid

import pyarrow.parquet as pq
import pytest

from grid import wait_for

from .test_cli_support import Cli, module_grid, sql_url_or_skip, write_tree

WORKERS = ("wa", "wb")

ENRICH = '''\
def process(record, ctx):
    n = int(record["value"])
    if record["id"] == "r3":
        raise ValueError("bad record r3: value " + record["value"])
    if n % 2:
        return {"double": 2 * n, "odd": True}
    return {"double": 2 * n, "half": n / 2}
'''

CRASH = '''\
import os
import sys


def process(record, ctx):
    print("about to crash on", record["id"], file=sys.stderr, flush=True)
    os._exit(1)
'''

FIXED = "def process(record, ctx):\n    return {'fixed': record['id']}\n"

SLOW = "import time\n\n\ndef process(record, ctx):\n    time.sleep(0.2)\n    return {'ok': 1}\n"

N = 9  # records of the full run: r1..r9, r3 raises


@pytest.fixture(scope="module")
def mgrid(tmp_path_factory):
    with module_grid(tmp_path_factory, "jobs") as g:
        for name in WORKERS:
            g.worker(name)
        admin = g.admin
        wait_for(lambda: len(admin.workers()) == len(WORKERS), 60, what="two workers enrolled")
        yield g


@pytest.fixture
def cli(mgrid, tmp_path) -> Cli:
    return Cli(mgrid.server.url, mgrid.server.admin_token, tmp_path)


def write_input(path, n: int) -> None:
    path.write_text("id,value\n" + "".join(f"r{i},{i}\n" for i in range(1, n + 1)))


@pytest.fixture(scope="module")
def full_run(mgrid, tmp_path_factory):
    """The full run, done once: (release id, job id, the `submit --wait` result, cli)."""
    cli = Cli(mgrid.server.url, mgrid.server.admin_token, tmp_path_factory.mktemp("full"))
    rid = cli.publish(write_tree(cli.cwd / "enrich", {"enrich.py": ENRICH}), "full")
    write_input(cli.cwd / "customers.csv", N)
    res = cli("submit", "--entry", "enrich:process", "--input", "customers.csv",
              "--channel", "full", "--key", "id", "--unit-size", "2", "--wait", timeout=120)
    return rid, res, cli


def expected_rows(rid: str) -> list[dict]:
    rows = []
    for i in range(1, N + 1):
        if i == 3:
            continue
        row = {"id": f"r{i}", "double": 2 * i}
        row.update({"odd": True, "half": None} if i % 2 else {"odd": None, "half": i / 2})
        row["_release"] = rid
        row["_env"] = None  # the release has no dependencies
        rows.append(row)
    return rows


def unit_of(mgrid, job: int) -> dict[str, tuple[int, str]]:
    """record id -> (unit id, worker) from the server's units (2 records a unit, in order)."""
    out = {}
    for u in mgrid.admin.units(job):
        for i in range(u["seq"] * 2 + 1, u["seq"] * 2 + 1 + u["count"]):
            out[f"r{i}"] = (u["id"], u["worker"])
    return out


def test_submit_wait_exits_0_and_prints_the_job_id_last(full_run, mgrid):
    rid, res, _ = full_run
    assert res.returncode == 0, res
    assert res.lines == [res.last_line], res  # the id alone on stdout
    job = int(res.last_line)
    info = mgrid.admin.job(job)
    assert info["state"] == "done"
    assert info["counts"]["units"] == 5
    assert info["counts"]["records_done"] == N - 1
    assert info["counts"]["record_errors"] == 1
    assert info["releases"] == {rid: N}
    assert f"job {job} done, units 5/5 done, records 9/9, 1 record error" in res.err, res


def test_status_shows_done(full_run, cli):
    rid, res, _ = full_run
    job = int(res.last_line)
    st = cli.ok("status", job)
    assert st.lines[0].startswith(f"job {job} done, units 5/5 done, records 9/9, "
                                  "1 record error"), st
    assert f"release {rid[:12]}: 9 records" in st.out, st
    waited = cli("status", job, "--wait")
    assert waited.returncode == 0, waited
    listed = json.loads(cli.ok("status", "--json").stdout)
    assert [j["state"] for j in listed if j["id"] == job] == ["done"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_results_every_record_once_in_input_order(full_run, mgrid, cli, fmt):
    rid, res, _ = full_run
    job = int(res.last_line)
    out = cli.cwd / f"out.{fmt}"
    exp = cli.ok("results", job, "--out", out.name)
    assert f"8 rows and 1 record error from 5 units -> {out.name}" in exp.err, exp
    columns = ["id", "double", "odd", "half", "_release", "_env", "_unit", "_worker"]
    if fmt == "csv":
        with open(out, newline="") as fh:
            reader = csv.DictReader(fh)
            assert reader.fieldnames == columns
            rows = list(reader)
        # CSV: everything is text; a value a record did not return is an empty cell.
        want = [{k: "" if v is None else str(v) for k, v in r.items()}
                for r in expected_rows(rid)]
    elif fmt == "jsonl":
        lines = out.read_text().splitlines()
        rows = [json.loads(line) for line in lines]
        assert all(list(r) == columns for r in rows)
        want = expected_rows(rid)
    else:
        table = pq.read_table(out)
        assert table.column_names == columns
        rows = table.to_pylist()
        want = expected_rows(rid)
    where = unit_of(mgrid, job)
    assert {r["_worker"] for r in rows} <= set(WORKERS)
    for r in rows:  # _unit and _worker name the unit and the worker that made the row
        assert (int(r["_unit"]), r["_worker"]) == where[r["id"]], r
    assert [{k: v for k, v in r.items() if k not in ("_unit", "_worker")} for r in rows] == want


def test_results_errors_file_holds_the_record_error(full_run, mgrid, cli):
    rid, res, _ = full_run
    job = int(res.last_line)
    cli.ok("results", job, "--out", "out.csv", "--errors", "errs.csv")
    with open(cli.cwd / "errs.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["id", "error", "_release", "_env", "_unit", "_worker"]
        errs = list(reader)
    assert len(errs) == 1, errs
    (e,) = errs
    assert e["id"] == "r3"
    assert e["error"].startswith("Traceback (most recent call last):"), e
    assert 'raise ValueError("bad record r3: value " + record["value"])' in e["error"], e
    assert e["error"].rstrip().endswith("ValueError: bad record r3: value 3"), e
    assert e["_release"] == rid
    assert (int(e["_unit"]), e["_worker"]) == unit_of(mgrid, job)["r3"]
    # The errors alone can be exported too.
    only = cli.ok("results", job, "--errors", "errs.jsonl")
    (line,) = (cli.cwd / "errs.jsonl").read_text().splitlines()
    assert json.loads(line)["id"] == "r3", only


@pytest.mark.parametrize("url", [
    "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "mysql+pymysql://root@127.0.0.1:3306/test",
], ids=["postgresql", "mariadb"])
def test_results_to_sql(full_run, cli, url):
    import sqlalchemy as sa

    sql_url_or_skip(url)
    rid, res, _ = full_run
    job = int(res.last_line)
    table = f"og_e2e_{uuid.uuid4().hex[:10]}"
    eng = sa.create_engine(url)
    try:
        exp = cli.ok("results", job, "--to-sql", url, "--table", table)
        assert f"8 rows and 1 record error from 5 units -> {table}" in exp.err, exp
        with eng.connect() as conn:
            t = sa.Table(table, sa.MetaData(), autoload_with=conn)  # "double" is reserved
            got = [r._asdict() for r in conn.execute(sa.select(t).order_by(t.c.id))]
        assert t.c.keys() == ["id", "double", "odd", "half", "_release", "_env", "_unit",
                              "_worker"]
        assert isinstance(t.c.double.type, sa.BigInteger)
        assert isinstance(t.c.half.type, sa.Float)
        rows = [{"id": r["id"], "double": r["double"],
                 "odd": None if r["odd"] is None else bool(r["odd"]),  # MariaDB: 1
                 "half": r["half"], "_release": r["_release"], "_env": r["_env"]}
                for r in got]
        assert rows == expected_rows(rid)
        # Exporting again appends (same columns) rather than failing or replacing.
        cli.ok("results", job, "--to-sql", url, "--table", table)
        with eng.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(t)).scalar() == 16
    finally:
        with eng.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        eng.dispose()


def test_crashing_job_is_quarantined_then_retried(mgrid, cli, tmp_path):
    cli.publish(write_tree(tmp_path / "crash", {"crash.py": CRASH}), "crash")
    write_input(tmp_path / "in.csv", 4)
    res = cli("submit", "--entry", "crash:process", "--input", "in.csv", "--channel", "crash",
              "--unit-size", "2", "--retries", "1", "--wait", timeout=120)
    assert res.returncode == 1, res
    job = int(res.last_line)
    assert f"job {job} failed" in res.err and "2 quarantined" in res.err, res

    st = cli("status", job)
    assert st.returncode == 0, st
    assert st.out.startswith(f"job {job} failed, units 0/2 done, records 0/4, 2 quarantined"), st
    assert cli("status", job, "--wait").returncode == 1

    units = list(mgrid.admin.units(job))
    assert [u["state"] for u in units] == ["quarantined", "quarantined"]
    assert [u["failures"] for u in units] == [2, 2]  # --retries 1: run twice, then quarantined

    logs = cli.ok("logs", units[0]["id"])
    assert logs.out.count(f"unit {units[0]['id']} attempt") == 2, logs
    assert logs.out.count(": failed (release") == 2, logs
    assert "the unit's process exited with code 1" in logs.out, logs
    assert "--- stderr about to crash on r1" in logs.out, logs
    by_job = cli.ok("logs", job, "--job", "--failed")
    assert len(re.findall(r"unit \d+ attempt \w+ on w[ab]: failed", by_job.out)) == 4, by_job
    assert "about to crash on r3" in by_job.out, by_job

    # The fix is published on the job's channel; `retry` requeues the quarantined units.
    fixed = cli.publish(write_tree(tmp_path / "fixed", {"crash.py": FIXED}), "crash")
    rt = cli.ok("retry", job)
    assert rt.out.startswith(f"job {job} running"), rt
    done = cli("status", job, "--wait", timeout=120)
    assert done.returncode == 0, done
    assert f"job {job} done, units 2/2 done, records 4/4" in done.out, done
    cli.ok("results", job, "--out", "fixed.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "fixed.jsonl").read_text().splitlines()]
    assert [(r["_key"], r["fixed"], r["_release"]) for r in rows] == [
        (i, f"r{i}", fixed) for i in range(1, 5)]


def test_cancel_running_job(mgrid, cli, tmp_path):
    cli.publish(write_tree(tmp_path / "slow", {"slow.py": SLOW}), "slow")
    write_input(tmp_path / "in.csv", 60)  # 12 units of 1 s each: still running when cancelled
    sub = cli("submit", "--entry", "slow:process", "--input", "in.csv", "--channel", "slow",
              "--unit-size", "5")
    assert sub.returncode == 0, sub
    job = int(sub.last_line)
    wait_for(lambda: mgrid.admin.job(job)["counts"]["leased"] >= 1, 60, what="a unit running")

    res = cli("cancel", job)
    assert res.returncode == 0, res
    assert res.out.startswith(f"job {job} cancelled"), res
    info = mgrid.admin.job(job)
    assert info["state"] == "cancelled"
    assert info["counts"]["done"] < info["counts"]["units"] == 12

    st = cli("status", job, "--wait")
    assert st.returncode == 2, st  # non-zero: cancelled
    assert f"job {job} cancelled" in st.out, st

    # Running units stop at the next heartbeat; queued units never start.
    def idle():
        ws = mgrid.admin.workers()
        return all(not w["active_units"] for w in ws) and ws
    wait_for(idle, 30, what="workers let go of the cancelled units")
    attempts = mgrid.admin.attempts(job_id=job)
    assert attempts, "no attempt ran"
    assert all(a["leased_at"] <= info["finished_at"] for a in attempts), attempts
    # A unit that finished between the cancel and its worker's next heartbeat reports a result
    # the cancelled job no longer takes: discarded.
    assert {a["state"] for a in attempts} <= {"aborted", "completed", "discarded"}, attempts
    assert any(a["state"] == "aborted" for a in attempts), attempts
    final = mgrid.admin.job(job)
    assert final["state"] == "cancelled"
    assert final["counts"]["records_done"] < 60
