#!/usr/bin/env python
"""Efficiency of the grid against a plain serial loop (real server and worker processes).

(b) Speed-up: a CPU-bound job of about 1 ms per record (bench/jobs/cpu_job.py, default 20,000
    records) run (i) as a plain serial loop in one process, (ii) on the grid with 1 worker and
    (iii) with 2 workers (``python -m officegrid worker`` processes; the code published with
    ``officegrid.cli.release.publish`` onto channel "worker"; the job submitted with
    ``Client.submit``). Grid time = the job's ``last_done_at`` - the moment ``submit`` started
    (upload included), server on the same machine.

(c) Per-record overhead: the reference job (examples/address_enrichment, ``enrich:process``) over
    generated customer records (default 100,000) on 1 worker vs the same ``process`` in a serial
    loop: (grid - serial) / records; and the empty job's (``empty_job:process``) per-record cost
    on the grid.

The serial loops run in a fresh interpreter each time and are timed from before the job module
is imported to after the last result line is written (CSV read with ``csv.DictReader``, results
written as JSON Lines), which is what a user's script doing the same work would pay.

Writes its sections of bench/RESULTS.md (unless --no-write). All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402

BAR_SPEEDUP_2 = 1.6


# ----------------------------------------------------------------------------- serial loop


def serial_child(entry: str, code_dir: str, csv_path: str, out_path: str) -> None:
    """Run ``entry`` over every record of ``csv_path`` in this process; print timing JSON."""
    import csv
    import importlib

    t0 = time.perf_counter()
    sys.path.insert(0, code_dir)
    module, _, func = entry.partition(":")
    fn = getattr(importlib.import_module(module), func)
    n = 0
    with open(csv_path, newline="", encoding="utf-8") as fh, \
            open(out_path, "w", encoding="utf-8") as out:
        for record in csv.DictReader(fh):
            result = fn(record, None)
            out.write(json.dumps(result, ensure_ascii=False, separators=(",", ":")) + "\n")
            n += 1
    print(json.dumps({"seconds": time.perf_counter() - t0, "records": n}))


def run_serial(entry: str, code_dir: Path, csv_path: Path, tmp: Path,
               wait_quiet: float = 0.0) -> dict:
    """One serial loop in a fresh interpreter; {"seconds", "others"} (others: foreign load)."""
    out = tmp / "serial-out.jsonl"
    bl.wait_quiet(max_wait=wait_quiet)
    with bl.LoadMeter() as load:
        res = subprocess.run([sys.executable, __file__, "--serial-child", entry, str(code_dir),
                              str(csv_path), str(out)],
                             env=bl.clean_env({"PYTHONDONTWRITEBYTECODE": "1"}),
                             capture_output=True, text=True, timeout=900, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"serial loop failed:\n{res.stderr[-3000:]}")
    out.unlink(missing_ok=True)
    return {"seconds": float(json.loads(res.stdout.strip().splitlines()[-1])["seconds"]),
            "others": load.others}


# ----------------------------------------------------------------------------- grid


def run_grid(admin: Any, entry: str, csv_path: Path, records: int, unit_size: int,
             timeout: float = 900, wait_quiet: float = 0.0) -> dict:
    """Submit ``csv_path`` and wait; return timings (seconds, server clock = this clock)."""
    bl.wait_quiet(max_wait=wait_quiet)
    with bl.LoadMeter() as load:
        t0 = time.time()
        job = admin.submit(entry, csv_path, unit_size=unit_size)
        t_submitted = time.time()
        info = admin.wait(job["id"], poll=0.1, timeout=timeout)
    if info["state"] != "done" or info["counts"]["records_done"] != records:
        raise RuntimeError(f"job {job['id']} ended {info['state']} with "
                           f"{info['counts']['records_done']}/{records} records done")
    attempts = admin.attempts(job_id=job["id"])
    busy = sum(a["finished_at"] - a["leased_at"] for a in attempts if a["finished_at"])
    return {"seconds": info["last_done_at"] - t0, "submit": t_submitted - t0,
            "first_done": info["first_done_at"] - t0, "units": info["counts"]["units"],
            "attempts": len(attempts), "leased_s": busy, "others": load.others,
            "ours": load.ours}


def write_records_csv(path: Path, n: int) -> Path:
    with open(path, "w") as fh:
        fh.write("id,value\n")
        fh.writelines(f"r{i},{i}\n" for i in range(1, n + 1))
    return path


def warm_up(admin: Any, entry: str, csv_path: Path, tmp: Path, n: int = 10) -> None:
    """A tiny job so the worker has fetched the release before timed runs."""
    small = tmp / "warmup.csv"
    with open(csv_path) as src, open(small, "w") as dst:
        for i, line in enumerate(src):
            if i > n:
                break
            dst.write(line)
    run_grid(admin, entry, small, n, unit_size=n, timeout=120)


# ----------------------------------------------------------------------------- benchmarks


def speedup_bench(args: argparse.Namespace, tmp: Path, server: bl.Server, admin: Any) -> dict:
    from officegrid.cli.release import publish

    csv_path = write_records_csv(tmp / "cpu-records.csv", args.records)
    rel = publish(admin, bl.JOBS, "worker", show_progress=False)["id"]
    serial = []
    for i in range(args.runs):
        serial.append(run_serial("cpu_job:process", bl.JOBS, csv_path, tmp, args.wait_quiet))
        print(f"cpu serial run {i + 1}: {serial[-1]['seconds']:.2f} s "
              f"(other load {serial[-1]['others']:.2f} cores)", flush=True)
    grid: dict[int, list[dict]] = {}
    for n_workers in (1, 2):
        workers = bl.start_workers(server, admin, tmp, n_workers, f"cpu{n_workers}")
        try:
            admin.promote("worker", release=rel)
            for i in range(args.runs):
                r = run_grid(admin, "cpu_job:process", csv_path, args.records, args.unit_size,
                             wait_quiet=args.wait_quiet)
                grid.setdefault(n_workers, []).append(r)
                s_med = bl.spread([x["seconds"] for x in serial])[0]
                print(f"cpu grid {n_workers} worker(s) run {i + 1}: {r['seconds']:.2f} s "
                      f"(speed-up {s_med / r['seconds']:.2f}x, other load {r['others']:.2f} "
                      "cores)", flush=True)
        finally:
            for w in workers:
                w.stop()
    return {"serial": serial, "grid": grid}


def overhead_bench(args: argparse.Namespace, tmp: Path, server: bl.Server, admin: Any) -> dict:
    from officegrid.cli.release import publish
    from officegrid.demo.data import generate_customers, prepare_example

    code = prepare_example(tmp / "address_enrichment")
    customers = tmp / "customers.csv"
    generate_customers(customers, args.customers)
    enrich_rel = publish(admin, code, "worker", show_progress=False)["id"]
    jobs_rel = publish(admin, bl.JOBS, None, show_progress=False)["id"]
    jobs = {"enrich": ("enrich:process", code, enrich_rel, args.overhead_unit_sizes),
            "empty": ("empty_job:process", bl.JOBS, jobs_rel, args.empty_unit_sizes)}
    res: dict[str, Any] = {name: {"serial": [], "grid": {}} for name in jobs}
    for i in range(args.runs):
        for name, (entry, code_dir, _, _) in jobs.items():
            res[name]["serial"].append(run_serial(entry, code_dir, customers, tmp,
                                                  args.wait_quiet))
            print(f"{name} serial run {i + 1}: {res[name]['serial'][-1]['seconds']:.2f} s",
                  flush=True)
    workers = bl.start_workers(server, admin, tmp, 1, "overhead")
    try:
        for name, (entry, _, rel, sizes) in jobs.items():
            admin.promote("worker", release=rel)
            warm_up(admin, entry, customers, tmp)
            for size in sizes:
                for i in range(args.runs):
                    r = run_grid(admin, entry, customers, args.customers, size,
                                 wait_quiet=args.wait_quiet)
                    res[name]["grid"].setdefault(size, []).append(r)
                    print(f"{name} grid unit size {size} run {i + 1}: {r['seconds']:.2f} s "
                          f"(submit {r['submit']:.2f} s, other load {r['others']:.2f} cores)",
                          flush=True)
    finally:
        for w in workers:
            w.stop()
    return res


def unit_cost_profile(args: argparse.Namespace, tmp: Path, server: bl.Server,
                      admin: Any) -> dict:
    """Per-unit fixed cost: the empty job with 1-record units on 1 worker, with py-spy on the
    agent (wall time of its slot thread). Not part of the timed benchmarks."""
    from officegrid.cli.release import publish

    rel = publish(admin, bl.JOBS, None, show_progress=False)["id"]
    csv_path = write_records_csv(tmp / "unit-cost.csv", args.profile_units)
    workers = bl.start_workers(server, admin, tmp, 1, "profile")
    try:
        admin.promote("worker", release=rel)
        warm_up(admin, "empty_job:process", csv_path, tmp)
        assert workers[0].proc is not None
        raw = tmp / "profile-worker.txt"
        bl.wait_quiet(max_wait=args.wait_quiet)
        with bl.Profiler(workers[0].proc.pid, raw, rate=500, wall=True) as prof:
            r = run_grid(admin, "empty_job:process", csv_path, args.profile_units, 1)
        plain = run_grid(admin, "empty_job:process", csv_path, args.profile_units, 1,
                         wait_quiet=args.wait_quiet)
    finally:
        for w in workers:
            w.stop()
    return {"profiled": r, "plain": plain, "raw": raw, "error": prof.error}


# ----------------------------------------------------------------------------- report


def _secs(runs: list[dict], key: str = "seconds") -> list[float]:
    return [r[key] for r in runs]


def _fmt(values: list[float], f: str = "{:.2f}") -> list[str]:
    med, lo, hi = bl.spread(values)
    return [f"**{f.format(med)}**", f.format(lo), f.format(hi)]


def report_speedup(res: dict, args: argparse.Namespace, cmd: str, keepalive: float) -> str:
    serial = _secs(res["serial"])
    s_med = bl.spread(serial)[0]
    rows = [["serial loop, 1 process", len(serial), *_fmt(serial), "1.00x", "", "",
             f"{bl.spread(_secs(res['serial'], 'others'))[0]:.2f}"]]
    verdict = ""
    units = args.records // args.unit_size
    for n, runs in sorted(res["grid"].items()):
        secs = _secs(runs)
        med = bl.spread(secs)[0]
        speed = [s_med / x for x in secs]
        submit = bl.spread(_secs(runs, "submit"))[0]
        # Wall time a worker holds a unit beyond the function's own time (serial / units).
        per_unit = bl.spread([(r["leased_s"] - s_med) / r["attempts"] for r in runs])[0]
        rows.append([f"grid, {n} worker{'s' if n > 1 else ''}", len(runs), *_fmt(secs),
                     f"**{s_med / med:.2f}x** ({min(speed):.2f}-{max(speed):.2f})",
                     f"{submit:.2f}", f"{per_unit * 1000:.0f}",
                     f"{bl.spread(_secs(runs, 'others'))[0]:.2f}"])
        if n == 2:
            ok = s_med / med >= BAR_SPEEDUP_2
            verdict = (f"**Bar: 2 workers >= {BAR_SPEEDUP_2}x serial: "
                       f"{'met' if ok else 'NOT met'}** (median {s_med / med:.2f}x).")
    tab = bl.table(["run", "runs", "seconds median", "min", "max", "speed-up vs serial (range)",
                    "submit (s)", "unit time beyond the function (ms)", "other load (cores)"],
                   rows)
    return f"""## Speed-up on a CPU-bound job (bench/efficiency.py, part b)

What: `cpu_job:process` (about 1 ms of CPU per record) over {args.records:,} records: a plain
serial loop in a fresh process vs the grid with 1 and 2 worker agents (`python -m officegrid
worker`, default settings, one slot each), unit size {args.unit_size} ({units} units of about
{args.unit_size / 1000:.2f} s of work). Grid time = job's `last_done_at` - start of
`Client.submit` (input upload included); the workers are started, enrolled and idle
(long-polling) before the submit; the release was published with
`officegrid.cli.release.publish` onto channel "worker".

Machine: {bl.machine()}. {bl.server_line(keepalive, store=" (SQLite)")}

Command: `{cmd}` ({bl.stamp()})

{tab}

{verdict}

- "unit time beyond the function" = (sum over attempts of completion time - lease time, server
  clock) minus the serial time, per unit: what a unit costs on top of the function itself
  (runner process start-up and imports, input download, result and log upload, completion,
  process-tree clean-up).
- The 2 runners share the 2 cores with the server, the 2 agents and the submitting client, and
  run at the lowest priority (nice 19), so any other load on the machine ("other load": CPU
  used meanwhile by processes outside this benchmark) comes first. Runs wait up to
  {args.wait_quiet:g} s for that load to drop below 0.3 cores.
"""


def _fit(n: int, sizes: list[int], meds: dict[int, float], serial: float
         ) -> tuple[float, float] | None:
    """(per-unit fixed seconds, per-record overhead seconds) from two unit sizes' medians."""
    if len(sizes) < 2:
        return None
    small, big = min(sizes), max(sizes)
    units_small, units_big = -(-n // small), -(-n // big)
    if units_small == units_big:
        return None
    fixed = (meds[small] - meds[big]) / (units_small - units_big)
    per_record = (meds[big] - serial - units_big * fixed) / n
    return fixed, per_record


def report_overhead(res: dict, args: argparse.Namespace, cmd: str, keepalive: float) -> str:
    n = args.customers
    rows = []
    fits = []
    for name in ("enrich", "empty"):
        serial = _secs(res[name]["serial"])
        s_med = bl.spread(serial)[0]
        rows.append([f"{name}, serial loop", "", len(serial), *_fmt(serial),
                     f"{s_med / n * 1e6:.1f}", "", "", ""])
        meds = {}
        for size, runs in sorted(res[name]["grid"].items()):
            secs = _secs(runs)
            med = meds[size] = bl.spread(secs)[0]
            over = [(x - s_med) / n * 1e6 for x in secs]
            rows.append([f"{name}, grid 1 worker", f"{size:,} ({-(-n // size)} units)",
                         len(runs), *_fmt(secs), f"**{med / n * 1e6:.1f}**",
                         f"**{(med - s_med) / n * 1e6:.1f}** ({min(over):.1f}-{max(over):.1f})",
                         f"{bl.spread(_secs(runs, 'submit'))[0]:.2f}",
                         f"{bl.spread(_secs(runs, 'others'))[0]:.2f}"])
        fit = _fit(n, list(meds), meds, s_med)
        if fit:
            fits.append(f"- {name}: about **{fit[0] * 1000:.0f} ms per unit** (fixed) + "
                        f"**{fit[1] * 1e6:.1f} us per record** beyond the serial loop "
                        f"(fitted from the medians at unit sizes {min(meds):,} and "
                        f"{max(meds):,}).")
    tab = bl.table(["run", "unit size", "runs", "seconds median", "min", "max",
                    "us per record", "grid - serial, us per record (range)", "submit (s)",
                    "other load (cores)"], rows)
    return f"""## Per-record overhead (bench/efficiency.py, part c)

What: the reference job (`examples/address_enrichment`, `enrich:process`, prepared with
`officegrid.demo.data.prepare_example`) over {n:,} customer records from
`generate_customers`, on 1 worker, vs the same `process` in a serial loop in a fresh process;
and the same for the empty job (`empty_job:process`, returns the record). Per-record overhead =
(grid time - serial time) / records, grid time as in part b (submit upload included), at two
unit sizes for enrich (the CLI's default `--unit-size` is 1000). A tiny warm-up job first makes
the worker fetch each release, so the timed runs do not include code download.

Machine: {bl.machine()}. {bl.server_line(keepalive, store=" (SQLite)")}

Command: `{cmd}` ({bl.stamp()})

{tab}

Split of the grid's extra time into a per-unit and a per-record part (medians; the serial loop
subtracted):

{chr(10).join(fits)}

- "submit" (part of the grid time) = `Client.submit` reading the CSV, encoding the units and
  uploading them (one PUT per unit).
- The per-unit part is mostly a fresh runner process per unit (interpreter start-up, imports;
  for enrich also loading `data/zips.csv` and rebuilding its per-ZIP caches, which a serial loop
  does once) plus the agent's process-tree scans and 4 HTTP requests; the per-record part is
  reading, encoding, compressing and uploading the input, and decoding it, encoding the result
  and uploading it on the worker.
"""


def report_unit_profile(res: dict, args: argparse.Namespace, cmd: str) -> str:
    n = args.profile_units
    plain = res["plain"]
    per_unit = (plain["seconds"] - plain["submit"]) / n
    head = f"""## Per-unit cost on the worker (bench/efficiency.py --profile)

What: the empty job over {n} one-record units on 1 worker: each unit's time is almost all fixed
cost. Unprofiled run: {plain['seconds']:.2f} s, i.e. **{per_unit * 1000:.0f} ms per unit** after
the submit. A second run with `py-spy record --idle --threads` (500 Hz) attached to the worker
agent ({res['profiled']['seconds']:.2f} s: sampling slows it) gives the split of the slot
thread's wall time below (a sample goes to the first category one of whose frames it contains;
samples in a lease request, i.e. waiting for work before the job, are left out).

Machine: {bl.machine()}.

Command: `{cmd}` ({bl.stamp()})
"""
    if res["error"] or not res["raw"].exists():
        return head + f"\nno profile: {res['error']}\n"
    total, rows = bl.profile_breakdown(res["raw"], bl.WORKER_SLOT_CATEGORIES,
                                       only="Agent._slot_loop", skip="Client.lease")
    tab = bl.table(["slot thread is in", "% of its samples", "ms per unit"],
                   [[k, f"{v:.1f}", f"{v / 100 * per_unit * 1000:.1f}"] for k, v in rows
                    if v >= 0.5])
    return head + f"\n{tab}\n\n({total:,} samples of the slot thread; \"ms per unit\" scales " \
        "the shares to the unprofiled run.)\n"


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="about 1 minute: 4,000 CPU records, 20,000 customer records")
    ap.add_argument("--runs", type=int, default=3, help="runs of each variant (>= 3)")
    ap.add_argument("--records", type=int, default=20_000, help="records of the CPU-bound job")
    ap.add_argument("--unit-size", type=int, default=500, help="unit size of the CPU-bound job")
    ap.add_argument("--customers", type=int, default=100_000,
                    help="customer records for the per-record overhead")
    ap.add_argument("--overhead-unit-sizes", default="1000,10000",
                    help="comma-separated unit sizes of the enrich job (two sizes let the "
                         "report split the overhead into per-unit and per-record parts)")
    ap.add_argument("--empty-unit-sizes", default="10000",
                    help="comma-separated unit sizes of the empty job")
    ap.add_argument("--only", choices=("speedup", "overhead", "profile"),
                    help="run one part only (profile: only the --profile run)")
    ap.add_argument("--wait-quiet", type=float, default=5.0, metavar="SECONDS",
                    help="before each timed run, wait up to this long for other processes on "
                         "the machine to use < 0.3 cores (0: do not wait)")
    ap.add_argument("--profile", action="store_true",
                    help="also profile the worker agent (py-spy) over many one-record units; "
                         "writes the 'unit-profile' section")
    ap.add_argument("--profile-units", type=int, default=100,
                    help="one-record units of the --profile run")
    ap.add_argument("--results", type=Path, default=bl.RESULTS,
                    help="the Markdown file whose sections are rewritten")
    ap.add_argument("--no-write", action="store_true", help="do not update the results file")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--serial-child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serial_child:
        serial_child(*args.serial_child)
        return 0
    if args.runs < 1:
        ap.error("--runs must be >= 1 (3 or more for a meaningful median)")
    if args.quick:
        args.records, args.customers = 4000, 20_000
        args.unit_size, args.overhead_unit_sizes, args.empty_unit_sizes = 250, "1000,5000", "5000"
        args.wait_quiet = min(args.wait_quiet, 3.0)
    try:
        args.overhead_unit_sizes = [int(x) for x in args.overhead_unit_sizes.split(",") if x]
        args.empty_unit_sizes = [int(x) for x in args.empty_unit_sizes.split(",") if x]
    except ValueError:
        ap.error("--overhead-unit-sizes / --empty-unit-sizes take integers, e.g. 1000,10000")
    cmd = "python bench/efficiency.py" + (" " + " ".join(argv if argv is not None
                                                         else sys.argv[1:])).rstrip()
    bl.install_signal_handlers()
    tmp = Path(tempfile.mkdtemp(prefix="og-bench-efficiency-"))
    started = time.monotonic()
    server = bl.Server(tmp / "server")
    try:
        server.start()
        keepalive = bl.keepalive_latency(server.url)
        admin = server.client(timeout=120)
        if args.only in (None, "speedup"):
            res = speedup_bench(args, tmp, server, admin)
            text = report_speedup(res, args, cmd, keepalive)
            if not args.no_write:
                bl.update_section("speedup", text, args.results)
        if args.only in (None, "overhead"):
            res = overhead_bench(args, tmp, server, admin)
            text = report_overhead(res, args, cmd, keepalive)
            if not args.no_write:
                bl.update_section("overhead", text, args.results)
        if args.profile or args.only == "profile":
            res = unit_cost_profile(args, tmp, server, admin)
            text = report_unit_profile(res, args, cmd)
            print(text)
            if not args.no_write:
                bl.update_section("unit-profile", text, args.results)
        admin.close()
    finally:
        bl.cleanup()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}", file=sys.stderr)
    print(f"done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
