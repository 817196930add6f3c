"""``officegrid data``: replicated data sources (create, apply, sql, status, pull, purge)."""

from __future__ import annotations

import json
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from officegrid.cli.common import (
    CaOpt,
    JsonOpt,
    ServerOpt,
    TokenOpt,
    client,
    emit,
    handle_errors,
    say,
    show,
)
from officegrid.worker.policy import format_duration

app = typer.Typer(rich_markup_mode=None, no_args_is_help=True,
                  help="Replicated data sources: a master on the server, replicas everywhere.")


def _errors(fn: Any) -> Any:
    """handle_errors plus the replication library's own errors."""
    from functools import wraps

    from officegrid.cli.common import fail
    from officegrid.sync.replication.errors import DataSourceError

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DataSourceError as exc:
            fail(str(exc))

    return handle_errors(wrapper)


@app.command("create")
@_errors
def create(
    name: str = typer.Argument(..., help="data source name"),
    from_file: Path = typer.Option(None, "--from", help="CSV, JSONL or Parquet file"),
    key: str = typer.Option(..., "--key", help="primary key column"),
    table: str = typer.Option(None, "--table", help="table name [default: the file's stem]"),
    replace: bool = typer.Option(False, "--replace", help="replace an existing source"),
    fmt: str = typer.Option(None, "--format", help="csv | jsonl | parquet [default: extension]"),
    delimiter: str = typer.Option(None, "--delimiter", help="CSV delimiter [default: sniffed]"),
    encoding: str = typer.Option("utf-8", "--encoding", help="CSV/JSONL text encoding"),
    max_bad_rows: int = typer.Option(0, "--max-bad-rows", help="skip up to N bad rows"),
    from_sql: str = typer.Option(None, "--from-sql",
                                 help="SQLAlchemy URL of a MySQL/MariaDB/PostgreSQL database"),
    query: str = typer.Option(None, "--query", help="with --from-sql: the SELECT to import"),
    refresh: float = typer.Option(None, "--refresh",
                                  help="with --from-sql: re-import every N seconds (diff by key)"),
    server: str = ServerOpt, token: str = TokenOpt, ca: Path = CaOpt, as_json: bool = JsonOpt,
) -> None:
    """Create data source NAME from a file (checked like `submit` input); prints NAME."""
    from officegrid.sync.replication import master

    master.check_name(name)
    if (from_file is None) == (from_sql is None):
        raise ValueError("give exactly one of --from FILE and --from-sql URL")
    if replace and table is None:
        with client(server, token, ca) as c:
            table = _kept_table(c, name)
    if from_sql:
        _create_from_sql(name, from_sql, query, key, table, refresh, replace,
                         client(server, token, ca), as_json)
        return
    bad: list[Any] = []

    def skipped(row: Any) -> None:
        bad.append(row)
        say(f"skipped bad row {row}")

    with tempfile.TemporaryDirectory(prefix="og-data-") as tmp:
        db = Path(tmp) / f"{name}.sqlite"
        n = master.build_from_file(db, from_file, key=key, table=table, fmt=fmt,
                                   delimiter=delimiter, encoding=encoding,
                                   max_bad_rows=max_bad_rows, on_bad_row=skipped)
        with client(server, token, ca) as c:
            st = c.data_create(name, db, replace=replace)
    emit(st, as_json, name, f"data source {name}: {_rows(n)}"
                            + (f" ({_n(len(bad), 'bad row')} skipped)" if bad else "")
                            + f", epoch {st['epoch'][:8]}, position {st['pos']}")


def _n(n: int, what: str, plural: str | None = None) -> str:
    """``1 row``, ``2 rows``: a count with its noun, plural unless it is one."""
    return f"{n:,} {what if n == 1 else plural or what + 's'}"


def _rows(n: int) -> str:
    return _n(n, "row")


def _kept_table(c: Any, name: str) -> str | None:
    """``--replace`` without ``--table``: the existing source's table name when it has exactly
    one (job code names it; a new file name must not rename it), else None (the default)."""
    from officegrid.client import ApiError

    try:
        st = c.data_status(name)
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise
    tables = list(json.loads(st["schema"])["tables"])
    if len(tables) != 1:
        return None
    say(f"--replace: keeping the table name {tables[0]!r} of {name} (give --table to change it)")
    return tables[0]


def _table_key(st: dict, table: str | None) -> tuple[str, list[str]]:
    schema = json.loads(st["schema"])
    tables = schema["tables"]
    if table is None:
        if len(tables) != 1:
            raise ValueError(f"source has tables {', '.join(sorted(tables))}: name one with "
                             "--table")
        table = next(iter(tables))
    if table not in tables:
        raise ValueError(f"source has no table {table!r}")
    return table, tables[table]["pk"]


@app.command("apply")
@_errors
def apply_cmd(
    name: str = typer.Argument(..., help="data source name"),
    upsert: Path = typer.Option(None, "--upsert", help="file of rows to insert or update by key"),
    delete: Path = typer.Option(None, "--delete", help="file of keys (key columns) to delete"),
    table: str = typer.Option(None, "--table", help="table [default: the only one]"),
    fmt: str = typer.Option(None, "--format", help="csv | jsonl | parquet [default: extension]"),
    delimiter: str = typer.Option(None, "--delimiter"),
    encoding: str = typer.Option("utf-8", "--encoding"),
    server: str = ServerOpt, token: str = TokenOpt, ca: Path = CaOpt, as_json: bool = JsonOpt,
) -> None:
    """Upsert rows or delete keys of NAME in one transaction; prints the new position.

    The file is streamed into a temporary SQLite stage and uploaded compressed from disk (never
    whole in memory). Errors name FILE:LINE; when any row is bad nothing is applied.
    """
    from officegrid.client import ApiError
    from officegrid.records.readers import detect_format
    from officegrid.sync.replication import staging

    if (upsert is None) == (delete is None):
        raise ValueError("give exactly one of --upsert FILE and --delete FILE")
    path = upsert or delete
    fmt = fmt or detect_format(path)
    with client(server, token, ca) as c, tempfile.TemporaryDirectory(prefix="og-data-") as tmp:
        st = c.data_status(name)
        table, pk = _table_key(st, table)
        described = json.loads(st["schema"])["tables"][table]["cols"]
        stage = Path(tmp) / "stage.sqlite"
        staging.build_stage(stage, path, kind="upsert" if upsert is not None else "delete",
                            table=table, cols=[col[0] for col in described], pk=pk, fmt=fmt,
                            delimiter=delimiter, encoding=encoding,
                            types={col[0]: col[1] for col in described})
        try:
            res = c.data_apply_file(name, stage, table)
        except ApiError as exc:
            err = staging.line_error(exc.message, path, fmt=fmt, encoding=encoding,
                                     delimiter=delimiter)
            if err is None:
                raise
            raise err from None
    verb = "deleted" if delete is not None else "upserted"
    emit(res, as_json, res["pos"], f"{name}: {_rows(res['rows'])} {verb}, position {res['pos']}")


@app.command("sql")
@_errors
def sql_cmd(
    name: str = typer.Argument(..., help="data source name"),
    statement: str = typer.Argument(..., help="one SQL statement (a write)"),
    server: str = ServerOpt, token: str = TokenOpt, ca: Path = CaOpt, as_json: bool = JsonOpt,
) -> None:
    """Run one write statement on NAME's master; prints the new position."""
    with client(server, token, ca) as c:
        res = c.data_sql(name, statement)
    text = f"{name}: {_rows(res['rows'])} changed, position {res['pos']}"
    if res.get("epoch_reason"):
        text += (f"\nnew epoch {res['epoch'][:8]}: {res['epoch_reason']}; replicas repair by "
                 "range hashes")
    emit(res, as_json, res["pos"], text)


@app.command("purge")
@_errors
def purge_cmd(
    name: str = typer.Argument(..., help="data source name"),
    before: int = typer.Option(..., "--before", help="drop log entries at positions <= this "
                               "(0..head; past the head is refused)"),
    server: str = ServerOpt, token: str = TokenOpt, ca: Path = CaOpt, as_json: bool = JsonOpt,
) -> None:
    """Drop the change log up to a position (replicas behind it repair by range hashes)."""
    with client(server, token, ca) as c:
        res = c.data_purge(name, before)
    n = res["rows"]
    emit(res, as_json, res["pos"], f"{name}: {n:,} log {'entry' if n == 1 else 'entries'} purged")


@app.command("status")
@_errors
def status_cmd(
    name: str = typer.Argument(None, help="one source [default: all]"),
    server: str = ServerOpt, token: str = TokenOpt, ca: Path = CaOpt, as_json: bool = JsonOpt,
) -> None:
    """Each source's epoch, position, retained log, and every replica's position and lag."""
    with client(server, token, ca) as c:
        sources = [c.data_status(name)] if name else c.data_sources()
    if as_json:
        show(json.dumps(sources, indent=2))
        return
    if not sources:
        say("no data sources")
    for st in sources:
        r = st["retained"]
        rows = ", ".join(f"{t} {_rows(n)}" for t, n in st["tables"].items())
        kept = (f"log {st['base_pos'] + 1}..{st['pos']}, {_n(r['entries'], 'entry', 'entries')}, "
                f"{r['bytes']:,} bytes kept" if st["pos"] > st["base_pos"] else "log empty")
        show(f"{st['name']}: epoch {st['epoch'][:8]} position {st['pos']} ({kept}); {rows}")
        for t, why in st.get("unreplicated", {}).items():
            show(f"  table {t}: not replicated: {why}")
        for rep in st["replicas"]:
            lag = f"lag {rep['lag']}" if rep["lag"] is not None else "other epoch: resyncing"
            # A replica that stopped reporting (its worker gone, its file dropped) keeps its
            # last row: its age tells a live replica from a stale one.
            seen = format_duration(time.time() - rep["updated_at"])
            show(f"  {rep['replica']}: position {rep['pos']} ({lag}, seen {seen} ago)")


@app.command("pull")
@_errors
def pull(
    name: str = typer.Argument(..., help="data source name"),
    to: Path = typer.Option(..., "--to", help="the local replica file"),
    follow: bool = typer.Option(False, "--follow", help="keep applying changes until stopped"),
    interval: float = typer.Option(1.0, "--interval", help="--follow: seconds between polls "
                                   "when idle (jittered +-50%)"),
    max_bandwidth: str = typer.Option(None, "--max-bandwidth",
                                      help="cap the download (snapshot, changes), e.g. 2MB/s"),
    replica_name: str = typer.Option(None, "--name", help="how this replica appears in "
                                     "`data status` [default: pull:HOST:FILE]"),
    batch: int = typer.Option(1000, "--batch", min=1, help="log entries applied per transaction"),
    server: str = ServerOpt, token: str = TokenOpt, ca: Path = CaOpt, as_json: bool = JsonOpt,
) -> None:
    """Keep a local read-only replica FILE of NAME: bootstrap, tail, repair; prints the
    position."""
    from officegrid.sync.replication.remote import HttpRemote
    from officegrid.sync.replication.replica import Replica, check_target

    check_target(to, name)
    bucket = None
    if max_bandwidth:
        from officegrid.sync.bandwidth import TokenBucket, parse_rate

        bucket = TokenBucket(parse_rate(max_bandwidth))
    rname = replica_name or f"pull:{socket.gethostname()}:{to.resolve()}"
    with client(server, token, ca) as c:
        c.bandwidth = bucket  # paces the snapshot, log batches and repair rows alike
        rep = Replica(to, HttpRemote(c, name), name=rname, batch_entries=batch)
        stop = threading.Event()
        if follow:
            # SIGTERM stops like Ctrl-C, at once even in a long poll; a batch being applied is
            # rolled back by the close (the replica stays at its last committed position).
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            try:
                rep.catch_up()
                _report(rep)
                _say_repairs(rep)
                rep.follow(stop, interval)
            except KeyboardInterrupt:
                rep.close()
        else:
            rep.catch_up()
        pos = rep.position()
        _report(rep)
        rep.close()
    assert pos is not None
    if as_json:
        show(json.dumps({"epoch": pos.epoch, "pos": pos.pos, "hash": pos.hash,
                         "stats": rep.stats.__dict__}))
    else:
        show(str(pos.pos))


def _say_repairs(rep: Any) -> None:
    """``pull --follow``: print one line per repair or epoch change as it happens (the follow
    loop is otherwise silent). Wraps this replica's ``step``, which ``follow`` calls."""
    step = rep.step
    seen = {"repairs": rep.stats.repairs, "epoch": rep.position().epoch}

    def watched(*args: Any, **kw: Any) -> Any:
        out = step(*args, **kw)
        s, pos = rep.stats, rep.position()
        new = s.repairs - seen["repairs"]
        for reason in s.repair_reasons[-new:] if new > 0 else []:
            say(f"repaired: {reason}; now at position {pos.pos} (epoch {pos.epoch[:8]})")
        if new <= 0 and pos.epoch != seen["epoch"]:  # a repair line already names the epoch
            say(f"epoch changed: {seen['epoch'][:8]} -> {pos.epoch[:8]}, position {pos.pos}")
        seen["repairs"], seen["epoch"] = s.repairs, pos.epoch
        return out

    rep.step = watched


def _report(rep: Any) -> None:
    s = rep.stats
    pos = rep.position()
    parts = [f"replica {rep.path} at position {pos.pos} (epoch {pos.epoch[:8]})"]
    if s.bootstraps:
        parts.append(f"snapshot {s.snapshot_bytes:,} bytes fetched"
                     + (f" (resumed at {s.snapshot_resumed_at:,})" if s.snapshot_resumed_at
                        else ""))
    if s.entries:
        parts.append(f"{_n(s.entries, 'entry', 'entries')} in {_n(s.batches, 'batch', 'batches')}")
    if s.repairs:
        parts.append(f"{_n(s.repairs, 'repair')} ({s.repair_bytes:,} bytes: "
                     f"{'; '.join(s.repair_reasons[-3:])})")
    say(", ".join(parts))


def _create_from_sql(name: str, url: str, query: str | None, key: str, table: str | None,
                     refresh: float | None, replace: bool, c: Any, as_json: bool) -> None:
    """``data create --from-sql``: import, then (with ``--refresh``) re-import every N seconds,
    sending only the rows that changed (diffed against a local replica of the source)."""
    from officegrid.sync.replication import importer
    from officegrid.sync.replication.remote import HttpRemote
    from officegrid.sync.replication.replica import Replica

    if not query:
        raise ValueError("--from-sql needs --query SQL")
    if refresh is not None and refresh <= 0:
        raise ValueError("--refresh must be > 0 seconds")
    table = table or name
    with tempfile.TemporaryDirectory(prefix="og-data-") as tmp:
        db = Path(tmp) / f"{name}.sqlite"
        with c:
            existing = _source(c, name) if refresh is not None and not replace else None
            if existing is not None:
                # A restarted refresher (a service restart) goes on by difference: loading
                # the source anew would start a new epoch, and every replica would repair.
                tables = json.loads(existing["schema"])["tables"]
                if table not in tables or tables[table]["pk"] != [key]:
                    have = ", ".join(f"{t} keyed by ({', '.join(d['pk'])})"
                                     for t, d in tables.items())
                    raise ValueError(f"data source {name} exists with {have or 'no table'}, not "
                                     f"{table} keyed by ({key}): give the same --table and "
                                     "--key to go on refreshing it, or --replace")
                say(f"data source {name} exists: refreshing it by difference (--replace "
                    "loads it anew)")
            else:
                n = importer.build_from_query(db, url, query, key, table)
                st = c.data_create(name, db, replace=replace)
                emit(st, as_json, name, f"data source {name}: {_rows(n)} from the query, "
                                        f"epoch {st['epoch'][:8]}, position {st['pos']}")
            if refresh is None:
                return
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            rep = Replica(Path(tmp) / "replica.sqlite", HttpRemote(c, name))
            failures = 0
            wait = 0.0 if existing is not None else refresh  # a restart refreshes at once
            try:
                while not stop.wait(wait):
                    try:
                        _refresh_once(c, rep, name, url, query, table, key)
                        failures = 0
                    except Exception as exc:  # noqa: BLE001 - a long-running sync outlives
                        # upstream trouble (a table renamed and back, a database restarting):
                        # log it and try again later; only Ctrl-C / SIGTERM end it.
                        failures += 1
                        say(f"refresh failed ({failures} in a row): {exc}; retrying in "
                            f"{refresh_delay(refresh, failures):.0f} s")
                    wait = refresh_delay(refresh, failures)
            except KeyboardInterrupt:
                pass
            finally:
                rep.close()


def _source(c: Any, name: str) -> dict[str, Any] | None:
    """Data source ``name``'s status, or None if there is none."""
    from officegrid.client import ApiError

    try:
        return c.data_status(name)
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


REFRESH_MAX_BACKOFF = 300.0  # seconds: the longest wait between failed refreshes


def refresh_delay(refresh: float, failures: int) -> float:
    """Seconds to wait before the next refresh: ``refresh`` after a success, doubling per
    failure in a row up to ``max(refresh, REFRESH_MAX_BACKOFF)``."""
    if failures <= 0:
        return refresh
    return min(max(refresh, REFRESH_MAX_BACKOFF), refresh * 2 ** min(failures, 20))


def _refresh_once(c: Any, rep: Any, name: str, url: str, query: str, table: str,
                  key: str) -> None:
    """One refresh: diff the query's rows against the local replica, add columns the query
    now returns to the master (``ALTER TABLE ADD COLUMN`` through ``data sql``: an additive
    change that travels through the log), then write the changed rows and deleted keys."""
    from officegrid.sync.replication import importer
    from officegrid.sync.replication.schema import qi

    rep.catch_up()
    returned: list[str] = []  # the query's columns, from its first row
    first: dict[str, Any] = {}  # each column's first non-null value, as the driver gave it

    def rows() -> Iterator[dict[str, Any]]:
        for row in importer.query_rows(url, query):
            returned[:] = returned or list(row)
            if len(first) < len(row):
                for c, v in row.items():
                    if v is not None:
                        first.setdefault(c, v)
            yield row

    ups, dels = importer.diff(rep.conn(), table, key, rows())
    # Typed from the driver's values (a Decimal column gets no affinity), not from the
    # converted rows (where an exact decimal is already an int or float).
    for col, typ in importer.new_columns(rep.conn(), table,
                                         [{c: first.get(c) for c in returned}]):
        c.data_sql(name, f"ALTER TABLE {qi(table)} ADD COLUMN {qi(col)} {typ}".rstrip())
        say(f"refresh: the query returns a new column {col!r}: added to table {table!r}")
    for col in importer.dropped_columns(rep.conn(), table, returned):
        # Kept, the column would hold values the upstream no longer has, silently.
        c.data_sql(name, f"ALTER TABLE {qi(table)} DROP COLUMN {qi(col)}")
        say(f"refresh: the query no longer returns column {col!r}: dropped from table "
            f"{table!r} (a destructive change: the source starts a new epoch and its replicas "
            "repair by range hashes)")
    pos = rep.position()
    if ups:
        pos = c.data_apply(name, table, upsert=ups)
    if dels:
        pos = c.data_apply(name, table, delete=dels)
    say(f"refresh: {_rows(len(ups))} upserted, {len(dels):,} deleted, "
        f"position {pos['pos'] if isinstance(pos, dict) else pos.pos}")
