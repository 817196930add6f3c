"""``officegrid submit | status | results | cancel | retry | logs``: jobs for data engineers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from officegrid.cli.common import (
    CaOpt,
    JsonOpt,
    ServerOpt,
    TokenOpt,
    client,
    emit,
    err,
    handle_errors,
    out,
    say,
    show,
)
from officegrid.client import Client

FINISHED = ("done", "failed", "cancelled")
STOPPED = (*FINISHED, "paused")  # --wait returns on these: a paused job needs a person


def _exit_code(info: dict) -> int:
    """0 when every unit is done; 1 when any was quarantined; 2 cancelled; 3 paused."""
    return {"done": 0, "cancelled": 2, "paused": 3}.get(info["state"], 1)


def _rate_eta(info: dict) -> tuple[float | None, float | None]:
    c = info["counts"]
    if not info.get("first_done_at") or not c["records_done"]:
        return None, None
    span = (info.get("last_done_at") or time.time()) - info["created_at"]
    if span <= 0:
        return None, None
    rate = (c["records_done"] + c["record_errors"]) / span
    left = c["records"] - c["records_done"] - c["record_errors"]
    return rate, (left / rate if rate > 0 else None)


def _summary_line(info: dict) -> str:
    c = info["counts"]
    rate, eta = _rate_eta(info)
    parts = [f"job {info['id']} {info['state']}",
             f"units {c['done']}/{c['units']} done",
             f"records {c['records_done'] + c['record_errors']:,}/{c['records']:,}"]
    if c["record_errors"]:
        parts.append(f"{c['record_errors']:,} record error" + ("s" if c["record_errors"] != 1
                                                               else ""))
    if c["quarantined"]:
        parts.append(f"{c['quarantined']} quarantined")
    if rate:
        parts.append(f"{rate:,.0f} records/s")
    if eta and info["state"] not in FINISHED:
        parts.append(f"ETA {eta:.0f}s")
    line = ", ".join(parts)
    if info.get("reason") and info["state"] not in ("failed", "cancelled"):
        line += f" ({info['reason']})"
    return line


def watch_job(c: Client, job_id: int, poll: float = 0.5, console=None) -> dict:
    """Show a live progress bar of records done until the job finishes; return its info."""
    console = console or err
    with Progress(TextColumn("[bold]job {task.fields[job]}"), BarColumn(),
                  MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                  console=console, transient=False) as prog:
        task = prog.add_task("job", total=None, job=job_id, info="")
        while True:
            info = c.job(job_id)
            cnt = info["counts"]
            rate, eta = _rate_eta(info)
            extra = f"{cnt['done']}/{cnt['units']} units"
            if rate:
                extra += f", {rate:,.0f} rec/s"
            if eta and info["state"] not in FINISHED:
                extra += f", ETA {eta:.0f}s"
            if info["state"] == "paused":
                extra += f" [yellow]paused: {info['reason']}[/yellow]"
            prog.update(task, total=cnt["records"],
                        completed=cnt["records_done"] + cnt["record_errors"], info=extra)
            if info["state"] in STOPPED:
                return info
            time.sleep(poll)


@handle_errors
def submit(
    entry: str = typer.Option(..., "--entry", "-e", help="module:function of the release"),
    input: Path = typer.Option(..., "--input", "-i", help="CSV, JSONL or Parquet file"),
    channel: str = typer.Option("worker", "--channel", "-c", help="channel the job follows"),
    release: str = typer.Option(None, "--release", help="pin a release id instead"),
    unit_size: int = typer.Option(1000, "--unit-size", help="records per work unit"),
    key: str = typer.Option(None, "--key", help="key column [default: input position]"),
    name: str = typer.Option(None, "--name"),
    priority: int = typer.Option(0, "--priority", help="higher runs first"),
    max_bad_rows: int = typer.Option(0, "--max-bad-rows", help="skip up to N bad rows"),
    fmt: str = typer.Option(None, "--format", help="csv | jsonl | parquet [default: extension]"),
    delimiter: str = typer.Option(None, "--delimiter", help="CSV delimiter [default: sniffed]"),
    encoding: str = typer.Option("utf-8", "--encoding", help="CSV/JSONL text encoding"),
    retries: int = typer.Option(None, "--retries", help="retry budget per unit [default: 3]"),
    data: list[str] = typer.Option(None, "--data", help="a data source the job reads "
                                   "(repeatable); units read replicas at least this new"),
    wait: bool = typer.Option(False, "--wait", help="block until the job ends (exit status)"),
    server: str = ServerOpt, token: str = TokenOpt, ca: Path = CaOpt, as_json: bool = JsonOpt,
) -> None:
    """Check and upload INPUT as a stream and create a job; prints the job id."""
    with client(server, token, ca) as c:
        with Progress(TextColumn("reading {task.fields[file]}"), TextColumn("{task.completed:,} "
                      "records, {task.fields[units]} units uploaded"), console=err,
                      transient=True) as prog:
            task = prog.add_task("read", total=None, file=input.name, units=0)

            def progress(records: int, units: int) -> None:
                prog.update(task, completed=records, units=units)

            def bad(row) -> None:
                say(f"skipped bad row {row}")

            info = c.submit(entry, input, channel=channel, release=release, unit_size=unit_size,
                            key=key, name=name, priority=priority, max_bad_rows=max_bad_rows,
                            fmt=fmt, delimiter=delimiter, encoding=encoding,
                            retry_budget=retries, data=data, on_progress=progress,
                            on_bad_row=bad)
        cnt = info["counts"]
        emit(info, as_json, info["id"],
             f"job {info['id']}: {cnt['records']:,} records in {cnt['units']} units"
             + (f", {len(info['bad_rows'])} bad rows skipped" if info["bad_rows"] else ""))
        if wait:
            try:
                final = watch_job(c, info["id"])
            except KeyboardInterrupt:
                say(f"stopped waiting; job {info['id']} goes on: "
                    f"officegrid status {info['id']} --wait")
                raise typer.Exit(130) from None
            say(_summary_line(final))
            if final["state"] == "paused":
                say(f"job {final['id']} is paused: fix the cause, then `officegrid retry "
                    f"{final['id']}` (optionally --release ID)")
            raise typer.Exit(_exit_code(final))


@handle_errors
def status(
    job: int = typer.Argument(None, help="job id [default: list recent jobs]"),
    wait: bool = typer.Option(False, "--wait", help="block until the job ends (exit status)"),
    watch: bool = typer.Option(False, "--watch", help="live progress until the job ends"),
    server: str = ServerOpt, token: str = TokenOpt, ca: Path = CaOpt, as_json: bool = JsonOpt,
) -> None:
    """Show a job's units and records done / total, records/s and ETA (or recent jobs)."""
    with client(server, token, ca) as c:
        if job is None:
            rows = c.jobs()
            if as_json:
                out.print_json(json.dumps(rows))
                return
            t = Table("job", "name", "state", "units done", "records", "errors", "created")
            for j in rows:
                cnt = j["counts"]
                t.add_row(str(j["id"]), j["name"] or "", j["state"],
                          f"{cnt['done']}/{cnt['units']}",
                          f"{cnt['records_done'] + cnt['record_errors']:,}/{cnt['records']:,}",
                          f"{cnt['record_errors']:,}",
                          time.strftime("%Y-%m-%d %H:%M", time.localtime(j["created_at"])))
            out.print(t)
            return
        if watch or (wait and not as_json):
            info = watch_job(c, job)
        elif wait:
            info = c.wait(job)
        else:
            info = c.job(job)
        if as_json:
            out.print_json(json.dumps(info))
        else:
            show(_summary_line(info))
            if info["releases"]:
                for rid, n in info["releases"].items():
                    show(f"  release {str(rid)[:12]}: {n:,} records")
            if info["counts"]["quarantined"]:
                for u in c.units(job):
                    if u["state"] == "quarantined":
                        first = (u["last_error"] or "").strip().splitlines()[:1]
                        show(f"  unit {u['id']} quarantined after {u['failures']} failures"
                                  f": {first[0] if first else ''}  (officegrid logs {u['id']})")
            for b in info["bad_rows"][:20]:
                show(f"  skipped at submit: {b}")
        if wait or watch:
            raise typer.Exit(_exit_code(info))


@handle_errors
def results(
    job: int = typer.Argument(..., help="job id"),
    out_file: Path = typer.Option(None, "--out", "-o", help="FILE.csv | .jsonl | .parquet"),
    errors: Path = typer.Option(None, "--errors", help="write record-level errors here"),
    to_sql: str = typer.Option(None, "--to-sql", help="append into a database (SQLAlchemy URL)"),
    table: str = typer.Option(None, "--table", help="table for --to-sql"),
    server: str = ServerOpt, token: str = TokenOpt, ca: Path = CaOpt,
) -> None:
    """Export a job's results in record order, each row tagged with its release."""
    if out_file is None and to_sql is None and errors is None:
        raise ValueError("give --out FILE, --to-sql URL --table T, and/or --errors FILE")
    with client(server, token, ca) as c:
        info = c.job(job)
        if info["state"] not in FINISHED:
            say(f"job {job} is {info['state']}: exporting the units done so far")
        missing = info["counts"]["units"] - info["counts"]["done"]
        if missing and info["state"] in FINISHED:
            say(f"warning: {missing} unit(s) of job {job} are not done ({info['state']}): their "
                "records are not in the export")
        with Progress(TextColumn("exporting"), BarColumn(), MofNCompleteColumn(),
                      console=err, transient=True) as prog:
            task = prog.add_task("export", total=info["counts"]["done"])
            res = c.export_results(job, out_file, errors=errors, to_sql=to_sql, table=table,
                                   on_progress=lambda i, n: prog.update(task, completed=i,
                                                                        total=n))
    dest = ", ".join(str(x) for x in (out_file, to_sql and f"{table}", errors) if x)
    errs = f"{res['errors']:,} record error" + ("" if res["errors"] == 1 else "s")
    say(f"{res['rows']:,} rows and {errs} from {res['units']} "
              f"units -> {dest}")


@handle_errors
def cancel(job: int = typer.Argument(...), server: str = ServerOpt, token: str = TokenOpt,
           ca: Path = CaOpt) -> None:
    """Cancel a job: queued units never run; running ones stop at their next heartbeat."""
    with client(server, token, ca) as c:
        show(_summary_line(c.cancel(job)))


@handle_errors
def retry(job: int = typer.Argument(...),
          release: str = typer.Option(None, "--release", help="run them on this release "
                                      "(id, prefix or channel)"),
          server: str = ServerOpt, token: str = TokenOpt, ca: Path = CaOpt) -> None:
    """Requeue a job's quarantined units (budgets reset) and resume it if paused."""
    with client(server, token, ca) as c:
        show(_summary_line(c.retry(job, release)))


@handle_errors
def logs(target: int = typer.Argument(..., help="UNIT id, or JOB id with --job"),
         job: bool = typer.Option(False, "--job", help="TARGET is a job: all its attempts"),
         failed_only: bool = typer.Option(False, "--failed", help="only failed attempts"),
         server: str = ServerOpt, token: str = TokenOpt, ca: Path = CaOpt) -> None:
    """Show the stdout, stderr and log of each attempt of a unit (or of a job's units)."""
    from officegrid.logblob import decode_logs

    with client(server, token, ca) as c:
        ident = target
        attempts = c.attempts(job_id=ident) if job else c.attempts(unit_id=ident)
        if failed_only:
            attempts = [a for a in attempts if a["state"] == "failed"]
        if not attempts:
            say("no failed attempts" if failed_only else "no attempts yet")
        for a in attempts:
            out.rule(f"unit {a['unit_id']} attempt {a['id'][:8]} on {a['worker']}: {a['state']}"
                     f" (release {a['release'][:12]})")
            if a["error"]:
                show(a["error"])
            if a["log"]:
                for name, text in decode_logs(c.get_blob(a["log"])).items():
                    if text.strip():
                        show(f"--- {name}")
                        show(text.rstrip())
