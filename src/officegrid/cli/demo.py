"""``officegrid demo``: the reference job on a local grid, end to end, on real data.

A server (temporary data dir, SQLite) and N worker agents start as real processes; the real ZIP
reference data becomes the data source ``zips`` (key ``zip``); release 1 of
``examples/address_enrichment`` is published and promoted; a job over generated customer records
is submitted with ``data=["zips"]``; when about a third is done, release 2 (which adds a field)
is promoted; when about half is done, the ``zips`` master changes (some ZIP codes of the
customers are retired, some re-pointed to another place) and the workers' replicas pick the
change up while units run. The results are exported to ``demo-output/`` and summarized per
release and per data position; ``demo-output/summary.json`` holds the same numbers.

The release does not ship ``data/zips.csv`` (2.3 MB): the job reads the data source, which each
worker replicates once and then follows change by change, and a release without it cannot be
run against stale reference data by mistake (``enrich.py`` says to submit with ``--data zips``).

Exit status 1 when the job does not finish cleanly, a unit's rows name more than one data
position, a row names none (``_data`` is ``{"zips": [epoch, position]}``) or one in another epoch
than the master's, or a row disagrees with the reference data of its position.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from officegrid.cli.common import err, out
from officegrid.client import Client

OUTPUT_DIR = Path("demo-output")
SOURCE = "zips"  # the data source (and its table) the reference job reads
CHANGE_AT = 0.5  # share of records finished when the master changes (release 2 comes at 1/3)


def _spawn_server(tmp: Path, env: dict) -> subprocess.Popen:
    """Start the server process (it gets ready while the demo prepares its data)."""
    log = open(tmp / "server.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "officegrid", "server", "--data-dir",
                             str(tmp / "server"), "--port", "0", "--ready-file",
                             str(tmp / "server.ready")],
                            env=env, stdout=log, stderr=subprocess.STDOUT)


def _server_ready(tmp: Path, proc: subprocess.Popen) -> tuple[str, str]:
    """Wait for the server of :func:`_spawn_server`; return its URL and admin token."""
    ready = tmp / "server.ready"
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the demo server did not start:\n"
                               + (tmp / "server.log").read_text()[-2000:])
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    return info["url"], Path(info["admin_token_file"]).read_text().strip()


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()


def _build_source(zips: Path, tmp: Path) -> Path:
    """The SQLite file of the data source ``zips`` (table ``zips``, key ``zip``) made from the
    ZIP export, as ``officegrid data create zips --from zips.csv --key zip`` makes it."""
    from officegrid.sync.replication import master

    db = tmp / f"{SOURCE}.sqlite"
    master.build_from_file(db, zips, key="zip", table=SOURCE)
    return db


def _replicas_at(c: Client, pos: int, workers: int) -> list[str] | None:
    """Names of the worker replicas that report position >= ``pos``, or None while fewer than
    ``workers`` do (reports are asynchronous: a replica may be ahead of what it reported)."""
    reps = [r for r in c.data_status(SOURCE).get("replicas", []) if r["pos"] >= pos]
    return sorted(r["replica"] for r in reps) if len(reps) >= workers else None


def run_demo(records: int = 200_000, workers: int = 2, keep: bool = False,
             unit_size: int = 2000, retire: int = 300, repoint: int = 300) -> int:
    """Run the demo; return 0 on success. Prints progress and a summary.

    Args:
        records: customer records to generate (>= 1).
        workers: worker agents to start.
        keep: keep the temporary work files (server and worker logs) after the run.
        unit_size: records per work unit.
        retire: ZIP codes of the input to retire in the mid-job master change.
        repoint: ZIP codes of the input to re-point in the mid-job master change.

    Returns:
        0 on success; 1 when the job did not finish cleanly or the per-position check failed
        (see the module docstring).

    Raises:
        RuntimeError: the server did not start, or the ``demo`` extra is not installed.
    """
    from officegrid.cli.release import publish
    from officegrid.demo.data import generate_customers, prepare_example, write_zips_csv
    from officegrid.demo.master_change import MasterChange, plan_master_change
    from officegrid.demo.positions import COLUMNS, summarize_positions

    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="officegrid-demo-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFICEGRID_")}
    env.setdefault("OFFICEGRID_HEARTBEAT_INTERVAL", "2")
    procs: list[subprocess.Popen] = []
    try:
        err.print(f"[bold]officegrid demo[/bold]: {records:,} customer records, {workers} "
                  f"workers, work files in {tmp}")
        procs.append(_spawn_server(tmp, env))
        zips = tmp / "zips.csv"
        n_zips = write_zips_csv(zips)
        # The releases carry no reference data: the job reads the data source (module doc).
        rel1 = prepare_example(tmp / "release1", release=1, reference_data=False)
        rel2 = prepare_example(tmp / "release2", release=2, reference_data=False)
        customers = tmp / "customers.csv"
        faults = generate_customers(customers, records)
        change = plan_master_change(zips, customers, retire=retire, repoint=repoint)
        source_db = _build_source(zips, tmp)
        err.print(f"reference data: {n_zips:,} real US ZIP codes; input: {customers.name} "
                  f"({customers.stat().st_size / 1e6:.1f} MB, injected faults: "
                  + ", ".join(f"{k} {v:,}" for k, v in faults.items()) + ")")

        url, admin = _server_ready(tmp, procs[0])
        c = Client(url, admin)
        join = c.create_token("enroll", uses=workers)["token"]
        for i in range(workers):
            wlog = open(tmp / f"worker{i}.log", "ab")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "officegrid", "worker", "--server", url, "--enroll", join,
                 "--name", f"demo-{i + 1}", "--work-dir", str(tmp / f"worker{i}")],
                env=env, stdout=wlog, stderr=subprocess.STDOUT))
        err.print(f"server {url} and {workers} workers started")

        src = c.data_create(SOURCE, source_db)
        source_db.unlink()
        err.print(f"data source {SOURCE!r}: {src['tables'][SOURCE]:,} rows from {zips.name} "
                  f"(key zip), epoch {src['epoch'][:8]}, position {src['pos']}; each worker "
                  "replicates it once, then follows its changes (it is not in the release)")

        r1 = publish(c, rel1, "trunk", "address enrichment v1", show_progress=False)
        c.promote("worker", source="trunk")
        err.print(f"release 1 {r1['id'][:12]} published ({r1['file_count']} files, "
                  f"{r1['total_bytes']:,} bytes; {r1['bytes_uploaded']:,} bytes uploaded, "
                  "compressed) and promoted to 'worker'")

        t_submit = time.monotonic()
        job = c.submit("enrich:process", customers, key="customer_id", unit_size=unit_size,
                       name="address-enrichment", data=[SOURCE])
        job_id = job["id"]
        err.print(f"job {job_id}: {job['counts']['records']:,} records in "
                  f"{job['counts']['units']} units, data source {SOURCE!r} "
                  f"(submitted in {time.monotonic() - t_submit:.1f}s)")

        promoted = False
        pos_before = pos_after = src["pos"]
        epoch = src["epoch"]  # the master's epoch at the change (rows record [epoch, position])
        t_change = caught_up = None  # when the master changed; how long replicas took
        late_units: set[int] = set()  # units still queued once every replica had the change
        changed = False
        with Progress(TextColumn("[bold]job {task.fields[job]}"), BarColumn(),
                      MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                      TimeElapsedColumn(), console=err) as prog:
            task = prog.add_task("job", total=job["counts"]["records"], job=job_id, info="")
            while True:
                info = c.job(job_id)
                cnt = info["counts"]
                finished = cnt["records_done"] + cnt["record_errors"]
                prog.update(task, completed=finished,
                            info=f"{cnt['done']}/{cnt['units']} units")
                if not promoted and finished >= cnt["records"] / 3:
                    r2 = publish(c, rel2, "trunk", "address enrichment v2: adds region",
                                 show_progress=False)
                    c.promote("worker", source="trunk")
                    promoted = True
                    prog.console.print(
                        f"release 2 {r2['id'][:12]} promoted mid-job: {r2['blobs_uploaded']} "
                        f"changed blobs, {r2['bytes_uploaded']:,} bytes moved, compressed "
                        f"(the release is {r2['total_bytes']:,} bytes)")
                if promoted and not changed and len(change) and finished >= cnt["records"] \
                        * CHANGE_AT and info["state"] not in ("done", "failed", "cancelled"):
                    st = c.data_status(SOURCE)
                    epoch, pos_before = st["epoch"], st["pos"]
                    res = c.data_apply(SOURCE, SOURCE, upsert=change.upserts())
                    pos_after, t_change, changed = res["pos"], time.monotonic(), True
                    _print_change(prog.console.print, change, pos_before, pos_after,
                                  cnt["done"], cnt["units"])
                if changed and caught_up is None:
                    names = _replicas_at(c, pos_after, workers)
                    if names is not None:
                        caught_up = time.monotonic() - t_change
                        late_units = {u["id"] for u in c.units(job_id) if u["state"] == "queued"}
                        prog.console.print(f"replicas {', '.join(names)} at position "
                                           f"{pos_after} {caught_up:.1f}s after the change: "
                                           f"the {len(late_units)} units still queued will "
                                           "read it")
                if info["state"] in ("done", "failed", "cancelled"):
                    break
                time.sleep(0.3)
        t_done = time.monotonic()

        OUTPUT_DIR.mkdir(exist_ok=True)
        results = OUTPUT_DIR / "results.parquet"
        errors = OUTPUT_DIR / "record-errors.csv"
        res = c.export_results(job_id, results, errors=errors)
        per_release = Counter()
        status = Counter()
        import pyarrow.parquet as pq

        table = pq.read_table(results, columns=["_release", "zip_status", *COLUMNS])
        for rel, st in zip(table.column("_release").to_pylist(),
                           table.column("zip_status").to_pylist(), strict=True):
            per_release[rel] += 1
            status[st] += 1
        if not changed:  # the job ended before the change: every row must be at one position
            change, pos_after = MasterChange(), pos_before + 1
        columns = [table.column(c).to_pylist() for c in COLUMNS]  # faster than rows of pyarrow
        report = summarize_positions((dict(zip(COLUMNS, v, strict=True))
                                      for v in zip(*columns, strict=True)), change,
                                     epoch=epoch, before=pos_before, after=pos_after,
                                     source=SOURCE,
                                     late_units=late_units)
        del columns
        del table
        wall = t_done - t_submit
        t = Table(title=f"officegrid demo: job {job_id} {info['state']}", show_header=False)
        t.add_row("records in", f"{cnt['records']:,}")
        t.add_row("rows out", f"{res['rows']:,}")
        t.add_row("record errors", f"{res['errors']:,}")
        t.add_row("units", f"{cnt['units']} ({cnt['done']} done, {cnt['quarantined']} "
                  "quarantined)")
        t.add_row("wall time (submit to last result)", f"{wall:.1f} s")
        t.add_row("records/s", f"{cnt['records'] / wall:,.0f}")
        for rel, n in per_release.most_common():
            label = "release 1" if rel == r1["id"] else "release 2" if promoted and \
                rel == r2["id"] else "release"
            t.add_row(f"rows by {label} {rel[:12]}", f"{n:,}")
        t.add_row("zip status", ", ".join(f"{k} {v:,}" for k, v in status.most_common()))
        _position_rows(t, report, change, changed, caught_up)
        t.add_row("results", f"{results} (+ {errors}, summary.json)")
        t.add_row("total demo time", f"{time.monotonic() - t0:.1f} s")
        out.print(t)
        ok = info["state"] == "done" and res["rows"] + res["errors"] == cnt["records"]
        (OUTPUT_DIR / "summary.json").write_text(json.dumps({
            "job": job_id, "state": info["state"], "records": cnt["records"],
            "rows": res["rows"], "errors": res["errors"], "units": cnt["units"],
            "rows_per_release": dict(per_release), "zip_status": dict(status),
            "change": {"applied": changed, "retired": sorted(change.retired),
                       "repointed": sorted(change.repointed), "replicas_caught_up_s": caught_up},
            "data": report.as_dict(), "ok": ok and report.ok,
        }, indent=2) + "\n")
        if not report.ok:
            err.print("[red]per-position check failed[/red]: " + "; ".join(report.examples))
        if not ok:
            err.print("[red]demo did not complete cleanly[/red]; logs in " + str(tmp))
        if not (ok and report.ok):
            keep = True
        return 0 if ok and report.ok else 1
    finally:
        _stop(procs[1:])
        _stop(procs[:1])
        if keep:
            err.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _print_change(say, change, before: int, after: int, done: int, units: int) -> None:
    """Tell what the mid-job master change did, with a few examples of each kind."""
    retired = sorted(change.retired)
    say(f"master {SOURCE!r} changed mid-job ({done}/{units} units done): "
        f"{len(retired)} ZIP codes retired (active=false), {len(change.repointed)} re-pointed; "
        f"position {before} -> {after}")
    if retired:
        say("  retired: " + ", ".join(f"{z} {change.retired[z]['city']} "
                                      f"{change.retired[z]['state']}" for z in retired[:4])
            + (", ..." if len(retired) > 4 else ""))
    for z in sorted(change.repointed)[:3]:
        old, new = change.repointed[z]
        b_old, b_new = change.branches[z]
        say(f"  re-pointed: {z} {old['city']}, {old['county'] or '-'} -> {new['city']}, "
            f"{new['county'] or '-'} {new['state']} (nearest branch {b_old} -> {b_new})")


def _position_rows(t: Table, report, change, changed: bool, caught_up: float | None) -> None:
    """Add the per-data-position rows to the summary table."""
    if changed:
        t.add_row(f"{SOURCE} change", f"{len(change.retired)} ZIPs retired, "
                  f"{len(change.repointed)} re-pointed: position {report.before} -> "
                  f"{report.after}; replicas caught up "
                  + (f"{caught_up:.1f} s later" if caught_up is not None else
                     "after the job ended (or did not report)"))
    else:
        t.add_row(f"{SOURCE} change", "none: the job ended before it was due")
    for at in report.ordered():  # (epoch, position); more than one epoch only on a problem
        pr = report.positions[at]
        detail = (f"{pr.rows:,} rows, {len(pr.units)} units; inactive_zip {pr.inactive_zip:,}")
        if changed:
            detail += (f"; retired ZIPs {pr.retired_rows:,} rows, re-pointed {pr.repointed_rows:,}"
                       f" (nearest branch moved {pr.branch_moved:,})")
        label = report.label(at) if changed or at[0] != report.epoch else "the only one"
        t.add_row(f"rows at {SOURCE} position {report.show(at)} ({label})", detail)
    if changed and caught_up is not None:
        t.add_row("units leased after every replica had the change",
                  f"{report.late_units}, of which at an older position: "
                  f"{len(report.late_stale)}")
    if report.other_epoch_rows:
        t.add_row(f"rows read in another {SOURCE} epoch", f"{report.other_epoch_rows:,}")
    t.add_row("units mixing data positions", f"{len(report.mixed_units)}"
              + (f" {sorted(report.mixed_units)[:10]}" if report.mixed_units else ""))
    t.add_row("rows disagreeing with their position",
              f"{report.contradictions + report.rows_without_position:,}")
