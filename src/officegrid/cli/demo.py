"""``officegrid demo``: the reference job on a local grid, end to end, on real data.

A server (temporary data dir, SQLite) and N worker agents start as real processes; release 1
of ``examples/address_enrichment`` is published and promoted; a job over generated customer
records is submitted; when about a third is done, release 2 (which adds a field) is promoted;
the results are exported to ``demo-output/`` and summarized per release.
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


def _start_server(tmp: Path, env: dict) -> tuple[subprocess.Popen, str, str]:
    ready = tmp / "server.ready"
    log = open(tmp / "server.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "officegrid", "server", "--data-dir",
                             str(tmp / "server"), "--port", "0", "--ready-file", str(ready)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the demo server did not start:\n"
                               + (tmp / "server.log").read_text()[-2000:])
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    return proc, info["url"], Path(info["admin_token_file"]).read_text().strip()


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()


def run_demo(records: int = 200_000, workers: int = 2, keep: bool = False,
             unit_size: int = 2000) -> int:
    """Run the demo; return 0 on success. Prints progress and a summary."""
    from officegrid.cli.release import publish
    from officegrid.demo.data import generate_customers, prepare_example, write_zips_csv

    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="officegrid-demo-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFICEGRID_")}
    env.setdefault("OFFICEGRID_HEARTBEAT_INTERVAL", "2")
    procs: list[subprocess.Popen] = []
    try:
        err.print(f"[bold]officegrid demo[/bold]: {records:,} customer records, {workers} "
                  f"workers, work files in {tmp}")
        zips = tmp / "zips.csv"
        n_zips = write_zips_csv(zips)
        rel1 = prepare_example(tmp / "release1", release=1, zips_csv=zips)
        rel2 = prepare_example(tmp / "release2", release=2, zips_csv=zips)
        customers = tmp / "customers.csv"
        faults = generate_customers(customers, records)
        err.print(f"reference data: {n_zips:,} real US ZIP codes; input: {customers.name} "
                  f"({customers.stat().st_size / 1e6:.1f} MB, injected faults: "
                  + ", ".join(f"{k} {v:,}" for k, v in faults.items()) + ")")

        server, url, admin = _start_server(tmp, env)
        procs.append(server)
        c = Client(url, admin)
        join = c.create_token("enroll", uses=workers)["token"]
        for i in range(workers):
            wlog = open(tmp / f"worker{i}.log", "ab")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "officegrid", "worker", "--server", url, "--enroll", join,
                 "--name", f"demo-{i + 1}", "--work-dir", str(tmp / f"worker{i}")],
                env=env, stdout=wlog, stderr=subprocess.STDOUT))
        err.print(f"server {url} and {workers} workers started")

        r1 = publish(c, rel1, "trunk", "address enrichment v1", show_progress=False)
        c.promote("worker", source="trunk")
        err.print(f"release 1 {r1['id'][:12]} published ({r1['file_count']} files, "
                  f"{r1['total_bytes']:,} bytes; {r1['bytes_uploaded']:,} bytes uploaded, "
                  "compressed) and promoted to 'worker'")

        t_submit = time.monotonic()
        job = c.submit("enrich:process", customers, key="customer_id", unit_size=unit_size,
                       name="address-enrichment")
        job_id = job["id"]
        err.print(f"job {job_id}: {job['counts']['records']:,} records in "
                  f"{job['counts']['units']} units "
                  f"(submitted in {time.monotonic() - t_submit:.1f}s)")

        promoted = False
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

        table = pq.read_table(results, columns=["_release", "zip_status"])
        for rel, st in zip(table.column("_release").to_pylist(),
                           table.column("zip_status").to_pylist(), strict=True):
            per_release[rel] += 1
            status[st] += 1
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
        t.add_row("results", f"{results} (+ {errors})")
        t.add_row("total demo time", f"{time.monotonic() - t0:.1f} s")
        out.print(t)
        ok = info["state"] == "done" and res["rows"] + res["errors"] == cnt["records"]
        if not ok:
            err.print("[red]demo did not complete cleanly[/red]; logs in " + str(tmp))
            keep = True
        return 0 if ok else 1
    finally:
        _stop(procs[1:])
        _stop(procs[:1])
        if keep:
            err.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
