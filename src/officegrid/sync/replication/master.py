"""The master of a data source: a SQLite file whose changes are captured into a change log.

- :func:`build_from_file` turns a CSV/JSONL/Parquet file into a new SQLite file with one table
  keyed by a column (the input checks of ``submit`` apply: errors name ``file:line``).
- :func:`adopt` makes a SQLite file a master: refuses tables without a primary key, installs the
  capture triggers and starts an epoch.
- :func:`upsert_rows`, :func:`delete_keys`, :func:`execute_sql` change a master.
- :func:`poll` is what the server runs before it answers replicas: it checks SQLite's
  ``schema_version`` (additive changes go into the log, destructive ones start an epoch, lost
  triggers are reinstalled and their table reconciled), detects a master restored from a backup
  by comparing with a state file kept *outside* the master, seals new entries and applies
  retention.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from officegrid.sync.replication import capture, changelog, codec, coltypes
from officegrid.sync.replication.errors import DataSourceError
from officegrid.sync.replication.schema import describe, diff, qi, require_keys
from officegrid.sync.replication.statement import judged

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
BUSY_TIMEOUT_MS = 30_000
INSERT_BATCH = 2000


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid data source name, else raise :class:`DataSourceError`."""
    if not NAME_RE.match(name) or name.endswith((".sqlite", ".json")):
        raise DataSourceError(f"data source name {name!r} must be 1-64 letters, digits, '_' "
                              "or '-', starting with a letter or digit")
    return name


def check_unique(data_dir: str | os.PathLike[str], name: str) -> None:
    """Refuse ``name`` when another source's name differs from it only in case: ``ZIPS.sqlite``
    and ``zips.sqlite`` are one file on a case-insensitive disk (macOS, Windows).

    Raises:
        DataSourceError: naming the existing source.
    """
    for f in Path(data_dir).glob("*.sqlite"):
        if f.stem != name and f.stem.lower() == name.lower():
            raise DataSourceError(f"data source name {name!r} differs from the existing "
                                  f"{f.stem!r} only in case: names are compared without case "
                                  "(one file on a case-insensitive disk)")


def unreplicated(conn: sqlite3.Connection) -> list[str]:
    """Tables of a master left out of replication: those without a primary key (created
    straight in the master file; see :func:`poll`)."""
    return sorted(t for t, d in describe(conn)["tables"].items() if not d["pk"])


def connect(path: str | os.PathLike[str], *, readonly: bool = False) -> sqlite3.Connection:
    """Open a master (autocommit mode: callers ``BEGIN IMMEDIATE`` themselves) with WAL, a busy
    timeout and ``recursive_triggers`` on (so REPLACE deletes are captured)."""
    if readonly:
        conn = sqlite3.connect(f"file:{os.fspath(path)}?mode=ro", uri=True, isolation_level=None,
                               timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    else:
        conn = sqlite3.connect(os.fspath(path), isolation_level=None,
                               timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA recursive_triggers=ON")
    return conn


@contextlib.contextmanager
def write_tx(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        # SQLite may have rolled back already (disk full, I/O error): a ROLLBACK then fails
        # with "no transaction is active" and would hide the real error.
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class MasterBusy(DataSourceError):
    """The master stayed locked by another writer past the busy timeout; nothing was changed
    and the same change may be sent again after ``retry_after`` seconds."""

    retry_after = 10


_BUSY_CODES = ("SQLITE_BUSY", "SQLITE_LOCKED")


def db_error(exc: sqlite3.Error) -> DataSourceError:
    """A SQLite error that is not about one row (busy past the timeout, disk full, I/O) as the
    error to report: :class:`MasterBusy` for a lock, else a :class:`DataSourceError` saying
    that nothing was applied (never ``record N: ...``: no row is to blame)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith(_BUSY_CODES) or "database is locked" in str(exc):
        return MasterBusy(f"the master is busy (another change held it for more than "
                          f"{BUSY_TIMEOUT_MS // 1000} s); nothing was applied: try again")
    return DataSourceError(f"the change was not applied: {exc}")


def upsert_sql(table: str, pk: Sequence[str], cols: Sequence[str], rows: str,
               schema: str | None = None) -> str:
    """``INSERT INTO table (cols) <rows> ON CONFLICT (pk) DO UPDATE`` of the non-key ``cols``
    (``DO NOTHING`` when ``cols`` are all key columns): an upsert that changes only the
    columns given. ``rows``: ``VALUES (?, ...)``, or a ``SELECT`` (which must have a WHERE
    clause: ``INSERT ... SELECT ... ON CONFLICT`` is ambiguous to SQLite's parser without
    one). ``schema``: the database the table is in (e.g. ``main`` when another is attached).
    """
    upd = [c for c in cols if c not in pk]
    tail = (f"DO UPDATE SET {', '.join(f'{qi(c)}=excluded.{qi(c)}' for c in upd)}"
            if upd else "DO NOTHING")
    target = f"{schema}.{qi(table)}" if schema else qi(table)
    return (f"INSERT INTO {target} ({', '.join(qi(c) for c in cols)}) {rows} "
            f"ON CONFLICT ({', '.join(qi(k) for k in pk)}) {tail}")


# ------------------------------------------------------------------------------ values


def sql_value(v: Any) -> codec.Value:
    """A record value as a SQLite value: bools as 0/1, dates as ISO text, lists/dicts as JSON
    text, a Decimal as the int or float that equals it exactly, else as its exact text (a
    ``decimal(30,2)`` value does not fit a 64-bit float)."""
    if v is None or isinstance(v, int | float | str | bytes):
        return int(v) if isinstance(v, bool) else v
    if isinstance(v, decimal.Decimal):
        return coltypes.exact_number(v)
    if isinstance(v, dt.date | dt.datetime | dt.time):
        return v.isoformat()
    if isinstance(v, list | dict | tuple):
        return json.dumps(v, default=str)
    return str(v)


# ------------------------------------------------------------------------------ creating


def build_from_records(dest: str | os.PathLike[str], records: Iterable[dict[str, Any]],
                       key: str, table: str, types: dict[str, str] | None = None) -> int:
    """Write ``records`` into a new SQLite file ``dest`` as table ``table`` keyed by ``key``.

    Columns come from the records in order of first appearance. A column's declared type is
    ``types[column]`` when given (see :mod:`.coltypes`; an empty string in a number column is
    stored as NULL), else that of its first non-null value. Returns the number of rows.

    Raises:
        DataSourceError: a record lacks the key, or two records have the same key.
    """
    conn = sqlite3.connect(os.fspath(dest), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        cols: list[str] = []
        typed: dict[str, str] = {}
        created = False
        n = 0
        pending: list[dict[str, Any]] = []

        def flush() -> None:
            nonlocal created
            if not created:
                defs = [f"{qi(c)} {typed.get(c, '')}".rstrip() for c in cols]
                conn.execute(f"CREATE TABLE {qi(table)} ({', '.join(defs)}, "
                             f"PRIMARY KEY ({qi(key)}))")
                created = True
            have = [r[1] for r in conn.execute(f"PRAGMA table_info({qi(table)})")]
            for c in cols:
                if c not in have:
                    conn.execute(f"ALTER TABLE {qi(table)} ADD COLUMN {qi(c)} {typed.get(c, '')}")
            sql = (f"INSERT INTO {qi(table)} ({', '.join(qi(c) for c in cols)}) "
                   f"VALUES ({', '.join('?' for _ in cols)})")
            blank_is_null = [coltypes.is_number_type(typed.get(c, "")) for c in cols]
            values = [[None if (blank and r.get(c) == "") else sql_value(r.get(c))
                       for c, blank in zip(cols, blank_is_null, strict=True)] for r in pending]
            try:
                conn.executemany(sql, values)
            except sqlite3.IntegrityError as exc:
                raise DataSourceError(f"key column {key!r}: {exc}") from None
            pending.clear()

        for rec in records:
            for c, v in rec.items():
                if c not in typed or (typed[c] == "" and v is not None):
                    if c not in typed:
                        cols.append(c)
                    typed[c] = (types.get(c, "") if types is not None
                                else coltypes.value_type(v) or "")
            if key not in rec or rec[key] in (None, ""):
                raise DataSourceError(f"record {n + 1} has no value for the key column {key!r}")
            pending.append(rec)
            n += 1
            if len(pending) >= INSERT_BATCH:
                flush()
        if not cols:
            raise DataSourceError("the input has no records: nothing to create")
        flush()
        conn.execute("COMMIT")
        return n
    finally:
        conn.close()


def build_from_file(dest: str | os.PathLike[str], path: str | os.PathLike[str], *, key: str,
                    table: str | None = None, fmt: str | None = None,
                    delimiter: str | None = None, encoding: str = "utf-8",
                    max_bad_rows: int = 0,
                    on_bad_row: Callable[[Any], object] | None = None) -> int:
    """Read CSV/JSONL/Parquet ``path`` with the checks of ``submit`` into a new SQLite ``dest``.

    ``table`` defaults to the file's stem. ``on_bad_row`` is called with each skipped
    :class:`records.BadRow` (``file:line: reason``). Returns the number of rows.

    Raises:
        records.InputError: bad input, naming ``file:line`` (missing/duplicate keys included).
        DataSourceError: no records.
    """
    from officegrid.records.readers import detect_format, iter_records

    table = table or Path(path).stem

    def rows(report: Callable[[Any], object] | None) -> Iterator[dict[str, Any]]:
        return (rec for _, rec in iter_records(path, fmt=fmt, delimiter=delimiter,
                                               encoding=encoding, key=key,
                                               max_bad_rows=max_bad_rows, on_bad_row=report))

    types = None
    if (fmt or detect_format(path)) == "csv" and Path(path).is_file():  # a pipe reads once
        # A CSV field is text: one pass finds the columns that hold numbers only.
        types = coltypes.infer(rows(None), text_may_be_number=True)
    return build_from_records(dest, rows(on_bad_row), key, table, types)


def adopt(path: str | os.PathLike[str], state_path: str | os.PathLike[str] | None = None,
          reason: str = "created") -> changelog.Head:
    """Make the SQLite file ``path`` a master: capture triggers on every table, a new epoch.

    Raises:
        DataSourceError: not a SQLite database, fails its integrity check, has no tables, or a
            table without a primary key.
    """
    conn = connect(path)
    try:
        try:
            ok = conn.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise DataSourceError(f"not a SQLite database: {exc}") from None
        if ok != "ok":
            raise DataSourceError(f"database fails its integrity check: {ok}")
        with write_tx(conn):
            desc = describe(conn)
            if not desc["tables"]:
                raise DataSourceError("the database has no tables")
            require_keys(desc)
            capture.ensure_log(conn)
            old = None
            if state_path is not None:
                old = _read_state(state_path)
            h = changelog.new_epoch(conn, reason, min_pos=old["pos"] if old else 0)
            for t, td in desc["tables"].items():
                capture.install(conn, t, td)
            _store_schema(conn, desc)
            if state_path is not None:
                _write_state(state_path, h)
        return h
    finally:
        conn.close()


def _store_schema(conn: sqlite3.Connection, desc: dict[str, Any]) -> None:
    sv = conn.execute("PRAGMA schema_version").fetchone()[0]
    changelog.set_meta(conn, schema=codec.dumps(desc), schema_version=str(sv))


# ------------------------------------------------------------------------------ changing


def table_info(conn: sqlite3.Connection, table: str | None) -> tuple[str, dict[str, Any]]:
    """``(table, description)``; ``table`` None means the only table.

    Raises:
        DataSourceError: unknown table, or None with several tables.
    """
    desc = describe(conn)
    # Tables without a key are not replicated (see poll): never a default, never written here.
    desc["tables"] = {t: d for t, d in desc["tables"].items() if d["pk"]}
    if table is None:
        if len(desc["tables"]) != 1:
            raise DataSourceError(f"the source has tables {', '.join(sorted(desc['tables']))}: "
                                  "name one with --table")
        table = next(iter(desc["tables"]))
    if table not in desc["tables"]:
        raise DataSourceError(f"no table {table!r} (tables: "
                              f"{', '.join(sorted(desc['tables'])) or 'none'})")
    return table, desc["tables"][table]


def upsert_rows(conn: sqlite3.Connection, table: str | None,
                rows: list[dict[str, Any]]) -> int:
    """Insert or update ``rows`` by primary key in one transaction (only the columns given are
    updated). Returns the number of rows.

    Raises:
        DataSourceError: unknown table or column, or a row without its key.
    """
    with write_tx(conn):
        table, td = table_info(conn, table)
        known = [c[0] for c in td["cols"]]
        pk = td["pk"]
        # Runs of consecutive rows giving the same columns, applied in order: grouping all
        # rows by columns would let an earlier row of one group overwrite a later one.
        runs: list[tuple[tuple[str, ...], list[list[Any]]]] = []
        for i, r in enumerate(rows, 1):
            bad = [c for c in r if c not in known]
            if bad:
                raise DataSourceError(f"row {i}: table {table!r} has no column "
                                      f"{', '.join(repr(b) for b in bad)}")
            if any(r.get(k) in (None, "") for k in pk):
                raise DataSourceError(f"row {i}: no value for key {', '.join(pk)}")
            cols = tuple(r)
            if not runs or runs[-1][0] != cols:
                runs.append((cols, []))
            runs[-1][1].append([sql_value(r[c]) for c in cols])
        for cols, values in runs:
            conn.executemany(upsert_sql(table, pk, cols,
                                        f"VALUES ({', '.join('?' for _ in cols)})"), values)
    return len(rows)


def delete_keys(conn: sqlite3.Connection, table: str | None, keys: list[list[Any]]) -> int:
    """Delete rows by primary key (each key a list of the key columns' values). Returns how many
    rows were deleted."""
    with write_tx(conn):
        table, td = table_info(conn, table)
        where = " AND ".join(f"{qi(k)}=?" for k in td["pk"])
        n = 0
        for i, k in enumerate(keys, 1):
            if len(k) != len(td["pk"]):
                raise DataSourceError(f"key {i}: expected {len(td['pk'])} values "
                                      f"({', '.join(td['pk'])})")
            n += conn.execute(f"DELETE FROM {qi(table)} WHERE {where}",
                              [sql_value(v) for v in k]).rowcount
    return n


_DROP_COLUMN = re.compile(r"\s*ALTER\s+TABLE\s+(?P<t>\"(?:[^\"]|\"\")+\"|`[^`]+`|\[[^\]]+\]|\S+)"
                          r"\s+DROP\s+(?:COLUMN\s+)?", re.IGNORECASE)


def _unquote(name: str) -> str:
    if name[:1] == '"' and name[-1:] == '"':
        return name[1:-1].replace('""', '"')
    if name[:1] in "`[" and name[-1:] in "`]":
        return name[1:-1]
    return name


def execute_sql(conn: sqlite3.Connection, statement: str) -> int:
    """Run one SQL write statement in a write transaction; refuse (and roll back) if it is not
    exactly one write (see :mod:`.statement`: no ATTACH, PRAGMA, transaction control, SELECT,
    VACUUM, several statements or an empty one) or if it leaves a table without a primary key.
    Returns the rows changed.

    ``ALTER TABLE t DROP COLUMN c``: SQLite refuses to drop a column a trigger names, and the
    capture triggers name every column; they are dropped first and reinstalled for the new
    columns in the same transaction (the next poll sees a destructive change: a new epoch).

    Raises:
        DataSourceError: the statement is refused, failed, or would leave a table without a key.
    """
    drop = _DROP_COLUMN.match(statement)
    try:
        with write_tx(conn):
            # Tables already without a key (made straight in the master file) are left out of
            # replication by poll: they must not block writes to the other tables.
            loose = set(unreplicated(conn))
            if drop:
                table = _unquote(drop.group("t"))
                for (name,) in conn.execute(
                        "SELECT name FROM sqlite_master WHERE type='trigger' AND tbl_name=? "
                        "AND name LIKE '\\_og\\_%' ESCAPE '\\'", (table,)).fetchall():
                    conn.execute(f"DROP TRIGGER {qi(name)}")
            before = conn.total_changes
            schema_before = conn.execute("PRAGMA schema_version").fetchone()[0]
            with judged(conn) as judge:  # exactly one write, classified by SQLite itself
                conn.execute(statement)
            unkeyed = sorted(t for t in loose if t.lower() in judge.row_tables)
            if unkeyed:
                raise DataSourceError(
                    f"table {unkeyed[0]!r} has no primary key, so it is not replicated and "
                    "data sql does not write its rows (drop it, or copy it into a table with a "
                    "PRIMARY KEY)")
            # Python 3.11's rowcount is -1 for a write that starts with WITH; changes() counts
            # the statement's own rows (not the capture triggers' log rows). A statement that
            # changed nothing (DDL) leaves total_changes alone and changes() stale: 0 then.
            n = (conn.execute("SELECT changes()").fetchone()[0]
                 if conn.total_changes != before else 0)
            desc = describe(conn)
            require_keys({"tables": {t: d for t, d in desc["tables"].items()
                                     if t not in loose}})
            if drop and table in desc["tables"] and table not in loose:
                capture.install(conn, table, desc["tables"][table])
            elif judge.ddl:
                _log_additive(conn, desc, schema_before)
    except sqlite3.Error as exc:
        raise DataSourceError(f"SQL failed: {exc}") from None
    return max(n, 0)


# ------------------------------------------------------------------------------ polling


def _read_state(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _write_state(path: str | os.PathLike[str], h: changelog.Head) -> None:
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"epoch": h.epoch, "pos": h.pos, "hash": h.hash, "time": time.time()}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


def poll(path: str | os.PathLike[str], state_path: str | os.PathLike[str], *,
         max_age: float | None = None, max_bytes: int | None = None) -> dict[str, Any]:
    """Bring a master's log up to date; see the module docstring. Returns what happened:
    ``{"head": Head, "sealed": n, "epoch_reason": str | None, "reconciled": [tables],
    "schema_steps": n, "purged": n, "unreplicated": [tables without a key]}``.

    The state file (``{"epoch", "pos", "hash"}`` of the last sealed entry) lives outside the
    master, so a master file restored from a backup -- or replaced by another file -- is told
    apart from a master that merely advanced: its epoch differs, its head is behind the
    remembered position, or its hash at that position differs. It is written before the commit:
    a crash in between makes the next poll see a mismatch and start a new epoch (safe: replicas
    repair), never miss one.
    """
    conn = connect(path)
    out: dict[str, Any] = {"sealed": 0, "epoch_reason": None, "reconciled": [],
                           "schema_steps": 0, "purged": 0, "unreplicated": []}
    try:
        with write_tx(conn):
            meta = changelog.get_meta(conn)
            state = _read_state(state_path)
            reason = None
            if "epoch" not in meta:
                capture.ensure_log(conn)
                reason = "master recreated (no change log)"
            elif state is not None:
                h = changelog.head(conn)
                if state["epoch"] != h.epoch:
                    reason = "master replaced (epoch differs from the server's record)"
                elif h.pos < state["pos"]:
                    reason = (f"master restored from an older copy (head {h.pos} < position "
                              f"{state['pos']} already served)")
                elif state["pos"] >= h.base_pos and \
                        changelog.hash_at(conn, state["pos"]) not in (None, state["hash"]):
                    reason = "master restored (hash at a served position differs)"
            desc = None
            if reason is None:
                sv = conn.execute("PRAGMA schema_version").fetchone()[0]
                if str(sv) != meta.get("schema_version"):
                    desc = describe(conn)
                    reason = _schema_changed(conn, json.loads(meta["schema"]), desc, out)
            if reason is not None:
                desc = describe(conn)
                out["unreplicated"] = [t for t, d in desc["tables"].items() if not d["pk"]]
                for t in out["unreplicated"]:
                    del desc["tables"][t]
                changelog.new_epoch(conn, reason, min_pos=max(
                    state["pos"] if state else 0, int(meta.get("head_pos", 0))))
                for t, td in desc["tables"].items():
                    capture.install(conn, t, td)
                out["epoch_reason"] = reason
            if desc is not None:
                _store_schema(conn, desc)
            out["sealed"] = changelog.seal(conn)
            if max_age is not None or max_bytes is not None:
                out["purged"] = changelog.purge(conn, max_age=max_age, max_bytes=max_bytes)
            h = changelog.head(conn)
            if state is None or (h.epoch, h.pos, h.hash) != (state["epoch"], state["pos"],
                                                             state["hash"]):
                _write_state(state_path, h)
        out["head"] = h
        return out
    finally:
        conn.close()


def _log_additive(conn: sqlite3.Connection, desc: dict[str, Any], schema_before: int) -> None:
    """In the transaction of a ``data sql`` schema change: log an additive change (new table,
    column or index) and install the triggers for it at once, so rows written after it carry
    the new columns and replicas get the schema step before them, with no reconcile. A
    destructive change is left to the next poll, which starts a new epoch; so is any change
    when the schema already differed from the last poll's before this statement
    (``schema_before``: a program changed the master file directly, and rows written since
    may lack the new columns: the poll reconciles)."""
    meta = changelog.get_meta(conn)
    if "schema" not in meta or meta.get("schema_version") != str(schema_before):
        return
    sub: dict[str, Any] = {"unreplicated": [], "schema_steps": 0, "reconciled": []}
    if _schema_changed(conn, json.loads(meta["schema"]), desc, sub, atomic=True) is None:
        _store_schema(conn, desc)


def _schema_changed(conn: sqlite3.Connection, old: dict[str, Any], new: dict[str, Any],
                    out: dict[str, Any], atomic: bool = False) -> str | None:
    """Log additive changes and reinstall lost triggers; return why a new epoch is needed.
    ``atomic``: called in the transaction of the change itself, so no row was written under
    the old triggers and changed tables need no reconcile."""
    d = diff(old, new)
    if d.destructive:
        return d.destructive
    for t in list(new["tables"]):
        if not new["tables"][t]["pk"]:
            out["unreplicated"].append(t)
            del new["tables"][t]
    skip = set(out["unreplicated"])
    for step in d.steps:
        if step["table"] in skip:
            continue
        capture.log_entry(conn, step["table"], "S", codec.dumps(step))
        out["schema_steps"] += 1
    for t in d.new_tables:
        if t in skip:
            continue
        capture.install(conn, t, new["tables"][t])
        capture.log_all_rows(conn, t, new["tables"][t])
    for t in d.changed_tables:
        capture.install(conn, t, new["tables"][t])
        if not atomic:
            # Rows written between the ALTER and this poll were logged by the old triggers
            # without the new columns: replicas reconcile the table (only those rows differ).
            capture.log_entry(conn, t, "X", None)
            out["reconciled"].append(t)
    for t in capture.lost_triggers(conn, new):
        # Rows written while the triggers were missing are unknown: replicas reconcile the table
        # by range hashes (merkle) when they reach this entry.
        capture.install(conn, t, new["tables"][t])
        capture.log_entry(conn, t, "X", None)
        out["reconciled"].append(t)
    return None
