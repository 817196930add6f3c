"""``data apply`` by staging file: the CLI streams an input file into a small SQLite file (the
*stage*), uploads it compressed and streamed, and the server applies it to the master in one
transaction with ``INSERT ... SELECT`` / ``DELETE ... IN (SELECT ...)``. Neither side holds the
input in memory (the JSON body this replaces held it three times on each side).

The stage has a table ``s`` (``_n`` the record's 1-based position in the input file, ``_cols``
the JSON list of the table columns the record gives, then ``c0..cK`` untyped, so the master's
column affinity applies as it would to bound parameters) and ``meta`` (``kind`` upsert|delete,
``table``, ``cols`` the table columns of ``c0..cK``, ``source`` the file name).

Errors name ``FILE:LINE``: the CLI checks columns and keys while staging; a row the master
refuses (NOT NULL, CHECK, UNIQUE) is found by the server, which names its record number
(``record N: ...``), and the CLI turns that into the file's line (:func:`record_line`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import sqlite3
from pathlib import Path
from typing import Any

from officegrid.records.errors import InputError
from officegrid.sync.replication import coltypes, master
from officegrid.sync.replication.errors import DataSourceError
from officegrid.sync.replication.schema import qi

BATCH = 2000  # rows per executemany while staging
RECORD_ERROR = re.compile(r"^record (\d+): (.*)$", re.DOTALL)


# ------------------------------------------------------------------------------ the CLI side


def build_stage(dest: str | os.PathLike[str], path: str | os.PathLike[str], *, kind: str,
                table: str, cols: list[str], pk: list[str], fmt: str | None = None,
                delimiter: str | None = None, encoding: str = "utf-8",
                types: dict[str, str] | None = None) -> int:
    """Stream the records of ``path`` into a new stage file ``dest`` for ``kind`` ("upsert" or
    "delete") on ``table`` (``cols`` its columns, ``pk`` its key). Returns the number of rows.

    ``types`` (column -> declared type): in a number column an empty text value is stored as
    NULL and any other text must spell a number (as ``data create`` typed it).

    Raises:
        records.InputError: bad input, naming ``FILE:LINE``: what ``submit`` refuses, a column
            the table does not have (upsert), a record without a value for a key column, text
            that is not a number for a number column.
        DataSourceError: the file has no records.
    """
    from officegrid.records.readers import detect_format, iter_records

    if kind not in ("upsert", "delete"):
        raise ValueError(f"kind must be upsert or delete, got {kind!r}")
    fmt = fmt or detect_format(path)
    known = set(cols)
    stage_cols = cols if kind == "upsert" else pk
    at = {c: i for i, c in enumerate(stage_cols)}
    key = pk[0] if len(pk) == 1 else None
    numeric = {c for c, t in (types or {}).items() if coltypes.is_number_type(t)}

    def bad(n: int, problem: str) -> InputError:
        return InputError(path, record_line(path, n, fmt=fmt, encoding=encoding,
                                            delimiter=delimiter), problem)

    conn = sqlite3.connect(os.fspath(dest), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        conn.execute("CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT)")
        conn.executemany("INSERT INTO meta VALUES (?, ?)", [
            ("kind", kind), ("table", table), ("cols", json.dumps(stage_cols)),
            ("source", os.fspath(path))])
        conn.execute("CREATE TABLE s (_n INTEGER PRIMARY KEY, _cols TEXT, "
                     + ", ".join(f"c{i}" for i in range(len(stage_cols))) + ")")
        sql = (f"INSERT INTO s VALUES (?, ?, {', '.join('?' for _ in stage_cols)})")
        pending: list[list[Any]] = []
        n = 0
        for _key, rec in iter_records(path, fmt=fmt, delimiter=delimiter, encoding=encoding,
                                      key=key):
            n += 1  # no bad row is skipped (max_bad_rows=0): n is the record's position
            if kind == "upsert":
                unknown = [c for c in rec if c not in known]
                if unknown:  # a CSV's columns are its header's: name the header line
                    raise bad(0 if fmt == "csv" else n, f"table {table!r} has no column "
                                 f"{', '.join(repr(c) for c in unknown)}")
            missing = [k for k in pk if rec.get(k) in (None, "")]
            if missing:
                raise bad(n, f"no value for key column {', '.join(repr(k) for k in missing)}")
            given = [c for c in rec if c in at]
            row: list[Any] = [None] * len(stage_cols)
            for c in given:
                v = rec[c]
                if c in numeric and isinstance(v, str):
                    if v == "":
                        v = None
                    elif not coltypes.spells_number(v):
                        raise bad(n, f"column {c!r} holds numbers ({types[c]}): {v!r} is not "
                                     "a number")
                row[at[c]] = master.sql_value(v)
            pending.append([n, json.dumps(given), *row])
            if len(pending) >= BATCH:
                conn.executemany(sql, pending)
                pending.clear()
        if pending:
            conn.executemany(sql, pending)
        if n == 0:
            raise DataSourceError(f"{os.fspath(path)}: no records: nothing to apply")
        conn.execute("COMMIT")
        return n
    finally:
        conn.close()


def record_line(path: str | os.PathLike[str], n: int, *, fmt: str, encoding: str = "utf-8",
                delimiter: str | None = None) -> int | None:
    """The 1-based line where record ``n`` (1-based, bad rows counted, blank lines not) of an
    input file starts (CSV: ``n`` 0 is the header); Parquet: ``n`` (its row number, as the
    readers say). Only called on an
    error, so reading the file again costs nothing in the common case. None if not found."""
    if fmt == "parquet":
        return n
    # The readers' own BOM and delimiter rules, so the line found is the one they read.
    from officegrid.records.readers import _codec_for, _guess_delimiter

    with open(path, "rb") as raw:
        encoding = _codec_for(raw, encoding)
        if delimiter is None and fmt == "csv":
            delimiter = _guess_delimiter(raw, encoding)
        skip = raw.tell()
    with open(path, encoding=encoding, errors="replace", newline="") as f:
        if skip:
            f.read(1)  # the byte order mark, decoded as one character
        if fmt == "jsonl":
            seen = 0
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    seen += 1
                    if seen == n:
                        return lineno
            return None
        reader = csv.reader(f, delimiter=delimiter)
        end, seen, header = 0, -1, False
        for row in reader:
            start, end = end + 1, reader.line_num
            if not row:
                continue
            if not header:
                if n == 0:
                    return start  # the header
                header = True
                seen = 0
                continue
            seen += 1
            if seen == n:
                return start
    return None


# ------------------------------------------------------------------------------ the server side


def apply_stage(conn: sqlite3.Connection, stage: str | os.PathLike[str],
                table: str | None = None) -> int:
    """Apply a stage file to the master ``conn`` in one transaction; nothing is applied if any
    row fails. Returns the rows upserted, or deleted.

    Records are applied in file order, so a key given twice ends as its last record says.

    Raises:
        DataSourceError: a bad stage, an unknown table or column, or a row the master refuses
            (a constraint), as ``record N: problem`` (N the record's position in the input
            file); any other SQLite failure (disk full, I/O) as "the change was not applied:
            ..." without a record number.
        master.MasterBusy: the master stayed locked past its busy timeout (nothing applied).
    """
    conn.execute("ATTACH DATABASE ? AS stage", (f"file:{os.fspath(stage)}?mode=ro",))
    try:
        try:
            meta = dict(conn.execute("SELECT k, v FROM stage.meta").fetchall())
            kind, stage_cols = meta["kind"], json.loads(meta["cols"])
        except (sqlite3.Error, KeyError, ValueError) as exc:
            raise DataSourceError(f"not a data apply stage file: {exc}") from None
        table = table or meta.get("table")
        td: dict[str, Any] | None = None
        try:
            with master.write_tx(conn):
                table, td = master.table_info(conn, table)
                return _apply(conn, kind, table, td, stage_cols)
        except sqlite3.IntegrityError:
            pass  # a row the master refuses (NOT NULL, CHECK, UNIQUE...): find it, to name it
        except sqlite3.Error as exc:
            # Busy past the timeout, disk full, I/O: no row is to blame, and a replay row by
            # row would only fail the same way and blame one.
            raise master.db_error(exc) from None
        if td is None:  # pragma: no cover - constraint errors come from the apply, after it
            raise DataSourceError("the change was not applied: the table could not be read")
        raise _first_bad_row(conn, kind, table, td, stage_cols)
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("DETACH DATABASE stage")


def _upsert_sql(table: str, pk: list[str], cols: list[str], stage_cols: list[str],
                where: str) -> str:
    src = ", ".join(f"c{stage_cols.index(c)}" for c in cols)
    return master.upsert_sql(table, pk, cols, f"SELECT {src} FROM stage.s WHERE {where} "
                             "ORDER BY _n", schema="main")


def _delete_sql(table: str, pk: list[str], stage_cols: list[str], where: str) -> str:
    lhs = ", ".join(qi(k) for k in pk)
    rhs = ", ".join(f"c{stage_cols.index(k)}" for k in pk)
    return (f"DELETE FROM main.{qi(table)} WHERE ({lhs}) IN "
            f"(SELECT {rhs} FROM stage.s WHERE {where})")


def _check(kind: str, table: str, td: dict[str, Any], stage_cols: list[str]) -> None:
    known = [c[0] for c in td["cols"]]
    if kind == "delete":
        if stage_cols != td["pk"]:
            raise DataSourceError(f"the stage deletes by ({', '.join(stage_cols)}), the key of "
                                  f"{table!r} is ({', '.join(td['pk'])})")
        return
    unknown = [c for c in stage_cols if c not in known]
    if unknown:
        raise DataSourceError(f"table {table!r} has no column "
                              f"{', '.join(repr(c) for c in unknown)}")
    if any(k not in stage_cols for k in td["pk"]):
        raise DataSourceError(f"the stage lacks key column(s) {', '.join(td['pk'])}")


def _apply(conn: sqlite3.Connection, kind: str, table: str, td: dict[str, Any],
           stage_cols: list[str]) -> int:
    _check(kind, table, td, stage_cols)
    pk = td["pk"]
    empty = " OR ".join(f"c{stage_cols.index(k)} IS NULL OR c{stage_cols.index(k)} = ''"
                        for k in pk)
    row = conn.execute(f"SELECT min(_n) FROM stage.s WHERE {empty}").fetchone()
    if row[0] is not None:
        raise DataSourceError(f"record {row[0]}: no value for key {', '.join(pk)}")
    if kind == "delete":
        return conn.execute(_delete_sql(table, pk, stage_cols, "1")).rowcount
    n = 0
    # Runs of consecutive records giving the same columns, in file order (one statement per
    # run; most files are one run). Grouping all records by columns would apply an earlier
    # record after a later one of the same key (a composite key repeated with other columns).
    # _n minus its rank among the records with the same columns is constant along a run.
    runs = conn.execute(
        "SELECT _cols, min(_n) AS lo, max(_n) FROM (SELECT _n, _cols, _n - row_number() OVER "
        "(PARTITION BY _cols ORDER BY _n) AS run FROM stage.s) GROUP BY _cols, run "
        "ORDER BY lo").fetchall()
    for cols_json, lo, hi in runs:
        cols = json.loads(cols_json)
        n += conn.execute(_upsert_sql(table, pk, cols, stage_cols, "_n BETWEEN ? AND ?"),
                          (lo, hi)).rowcount
    return n


def _first_bad_row(conn: sqlite3.Connection, kind: str, table: str, td: dict[str, Any],
                   stage_cols: list[str]) -> DataSourceError:
    """Replay the stage row by row (rolled back) to name the first row the master refuses
    (a constraint error); any other SQLite error is returned as :func:`master.db_error`."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        return master.db_error(exc)
    try:
        for n, cols_json in conn.execute("SELECT _n, _cols FROM stage.s ORDER BY _n").fetchall():
            try:
                if kind == "delete":
                    conn.execute(_delete_sql(table, td["pk"], stage_cols, "_n = ?"), (n,))
                else:
                    conn.execute(_upsert_sql(table, td["pk"], json.loads(cols_json), stage_cols,
                                             "_n = ?"), (n,))
            except sqlite3.IntegrityError as exc:
                return DataSourceError(f"record {n}: {exc}")
        return DataSourceError("the change failed, but no single row fails alone")
    except sqlite3.Error as exc:
        return master.db_error(exc)
    finally:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")


def line_error(message: str, path: str | os.PathLike[str], *, fmt: str,
               encoding: str = "utf-8", delimiter: str | None = None) -> InputError | None:
    """The server's ``record N: problem`` as ``FILE:LINE: problem`` (None for other messages)."""
    m = RECORD_ERROR.match(message)
    if m is None:
        return None
    line = record_line(path, int(m.group(1)), fmt=fmt, encoding=encoding, delimiter=delimiter)
    return InputError(Path(path), line, m.group(2))
