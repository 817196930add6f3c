"""Result export: write result rows to a CSV, JSON Lines or Parquet file, or to an SQL table.

The columns are fixed up front (the caller passes the union of the result fields in first-seen
order, see :func:`officegrid.records.units.result_columns`); a row's value for a column it lacks
is written as empty (CSV) or null (JSON Lines, Parquet, SQL); fields not among the columns are
ignored.

Files are written to ``path + ".part"`` and renamed to ``path`` by :meth:`ResultWriter.close`,
so a failed export never leaves a truncated file under the real name (:meth:`ResultWriter.abort`,
or leaving a ``with`` block by an exception, deletes the partial file).

Text form of a value (CSV cells, Parquet string columns, SQL text columns): a ``str`` as is;
``dict``/``list``/``tuple`` as compact JSON; anything else ``str(value)`` (so ``True``,
``1.5``, ``2024-05-01 12:00:00``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from officegrid.records.units import json_default

if TYPE_CHECKING:
    import pyarrow as pa
    import sqlalchemy as sa

__all__ = [
    "PARQUET_ROW_GROUP_ROWS",
    "SQL_BATCH_ROWS",
    "ResultWriter",
    "SqlWriter",
    "WRITER_EXTENSIONS",
    "open_writer",
]

WRITER_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
"""File name extension (lower case) -> output format."""

PARQUET_ROW_GROUP_ROWS = 65_536
"""Rows per Parquet row group (and per buffered batch)."""

SQL_BATCH_ROWS = 1000
"""Rows per INSERT batch of :class:`SqlWriter`."""

_json_text = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), default=json_default
).encode

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _text(value: object) -> str:
    """The text form of a non-None value (see the module docstring)."""
    if type(value) is str:
        return value  # type: ignore[return-value]
    if isinstance(value, dict | list | tuple):
        return _json_text(value)
    return str(value)


def _check_columns(columns: list[str]) -> list[str]:
    columns = list(columns)
    seen: set[str] = set()
    for name in columns:
        if not isinstance(name, str):
            raise ValueError(f"column names must be str, got {name!r}")
        if name in seen:
            raise ValueError(f"duplicate column name {name!r}")
        seen.add(name)
    return columns


class ResultWriter:
    """Base of the file writers returned by :func:`open_writer`.

    Use as a context manager, or call :meth:`close` (success) or :meth:`abort` (failure) once::

        with open_writer("out.parquet", columns) as w:
            w.write_rows(rows)

    Attributes:
        path: the final file name (``str``).
        columns: the output columns (``list[str]``).
        rows_written: rows written so far (``int``).
    """

    def __init__(self, path: str | os.PathLike[str], columns: list[str]) -> None:
        self.path = os.fspath(path)
        self.columns = _check_columns(columns)
        self.rows_written = 0
        self._part = self.path + ".part"
        self._closed = False

    def write_rows(self, rows: Iterable[dict[str, Any]]) -> int:
        """Write ``rows`` (dicts keyed by column name); return how many were written.

        Raises:
            ValueError: the writer is closed.
            OSError: the file cannot be written (full disk, ...).
        """
        if self._closed:
            raise ValueError(f"{self.path}: writer is closed")
        n = self._write(rows)
        self.rows_written += n
        return n

    def close(self) -> None:
        """Finish the file and move it to :attr:`path` (replacing any file there).

        Idempotent. If finishing fails, the partial file is removed and the error raised.

        Raises:
            OSError: the file cannot be finished or renamed.
        """
        if self._closed:
            return
        self._closed = True
        try:
            part = self._finish()
            os.replace(part, self.path)
        except BaseException:
            self._discard()
            raise

    def abort(self) -> None:
        """Give up: close and delete the partial file; :attr:`path` is left untouched.

        Idempotent; never raises for a missing partial file.
        """
        if self._closed:
            return
        self._closed = True
        self._discard()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # for subclasses
    def _write(self, rows: Iterable[dict[str, Any]]) -> int:
        raise NotImplementedError

    def _finish(self) -> str:
        """Flush and close; return the name of the finished partial file."""
        raise NotImplementedError

    def _discard(self) -> None:
        raise NotImplementedError


def open_writer(
    path: str | os.PathLike[str],
    columns: list[str],
    *,
    row_group_rows: int = PARQUET_ROW_GROUP_ROWS,
) -> ResultWriter:
    """Open a result file for writing, in the format its extension names.

    Args:
        path: ``*.csv`` (UTF-8 without BOM, header row, RFC 4180 quoting, CRLF line ends),
            ``*.jsonl``/``*.ndjson`` (UTF-8, LF, one object a line with exactly ``columns`` as
            keys) or ``*.parquet`` (column types inferred from the values: bool, int64, double,
            else string with the text form; see :class:`_ParquetWriter`).
        columns: the output columns, in order (unique ``str``).
        row_group_rows: Parquet only: rows per row group (and rows buffered in memory).

    Raises:
        ValueError: unknown extension (the message names it and the known ones), duplicate or
            non-str column names.
        OSError: the partial file ``path + ".part"`` cannot be created.
    """
    p = os.fspath(path)
    ext = os.path.splitext(p)[1].lower()
    kind = WRITER_EXTENSIONS.get(ext)
    if kind is None:
        known = ", ".join(WRITER_EXTENSIONS)
        shown = repr(ext) if ext else "(no extension)"
        raise ValueError(f"{p}: unknown output format {shown}; known extensions: {known}")
    if kind == "csv":
        return _CsvWriter(p, columns)
    if kind == "jsonl":
        return _JsonlWriter(p, columns)
    if row_group_rows < 1:
        raise ValueError(f"row_group_rows must be >= 1, got {row_group_rows}")
    return _ParquetWriter(p, columns, row_group_rows)


class _TextFileWriter(ResultWriter):
    def __init__(self, path: str, columns: list[str]) -> None:
        super().__init__(path, columns)
        self._file = open(self._part, "w", encoding="utf-8", newline="")  # noqa: SIM115

    def _finish(self) -> str:
        self._file.close()
        return self._part

    def _discard(self) -> None:
        self._file.close()
        _remove(self._part)


class _CsvWriter(_TextFileWriter):
    def __init__(self, path: str, columns: list[str]) -> None:
        super().__init__(path, columns)
        self._csv = csv.writer(self._file)
        self._csv.writerow(self.columns)

    def _write(self, rows: Iterable[dict[str, Any]]) -> int:
        columns = self.columns
        writerow = self._csv.writerow
        n = 0
        for row in rows:
            writerow(
                [
                    "" if (v := row.get(c)) is None else v if type(v) is str else _text(v)
                    for c in columns
                ]
            )
            n += 1
        return n


class _JsonlWriter(_TextFileWriter):
    def _write(self, rows: Iterable[dict[str, Any]]) -> int:
        columns = self.columns
        write = self._file.write
        n = 0
        for row in rows:
            write(_json_text({c: row.get(c) for c in columns}) + "\n")
            n += 1
        return n


# --------------------------------------------------------------------------------------------
# Parquet

# A column's kind is what its values so far need; kinds only widen:
# null -> bool | int | float | str;  int -> float;  anything else mixed -> str.
_NULL, _BOOL, _INT, _FLOAT, _STR = "null", "bool", "int", "float", "str"


def _join(a: str, b: str) -> str:
    if a == b or b == _NULL:
        return a
    if a == _NULL:
        return b
    if {a, b} == {_INT, _FLOAT}:
        return _FLOAT
    return _STR


def _kind_of(values: list[Any]) -> str:
    types = set(map(type, values))
    kind = _NULL
    for t in types:
        if t is type(None):
            k = _NULL
        elif t is bool:
            k = _BOOL
        elif t is int:
            ints = [v for v in values if type(v) is int]
            k = _INT if min(ints) >= _INT64_MIN and max(ints) <= _INT64_MAX else _STR
        elif t is float:
            k = _FLOAT
        else:
            k = _STR
        kind = _join(kind, k)
    return kind


class _ParquetWriter(ResultWriter):
    """Parquet result writer: typed columns inferred from the values, one row group a batch.

    A column's type is inferred from the values written so far: all bool -> ``bool``; all int
    (within int64) -> ``int64``; int and float -> ``double``; anything else (str, mixed types,
    dict/list, ints beyond int64) -> ``string`` holding the text form; no value yet -> ``string``
    (all null). When a later row group needs a wider type than the row groups already written
    (null -> any, int -> double, any -> string), the partial file is rewritten once with the
    wider column type (``path.part.N``, N counting rewrites), so every row keeps its value and
    the file has one schema. Types only widen, so there are at most two rewrites a column, and
    none when the first row group already shows every column's type (the usual case). Memory:
    one row group of Python rows.
    """

    def __init__(self, path: str, columns: list[str], row_group_rows: int) -> None:
        super().__init__(path, columns)
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        self._pq = pq
        self._group = row_group_rows
        self._buffer: list[dict[str, Any]] = []
        self._kinds = dict.fromkeys(self.columns, _NULL)
        self._current = self._part  # the partial file being written (changes on rewrite)
        self._rewrites = 0
        self._writer: Any = None
        # Create the partial file now, so a path that cannot be written fails at open.
        open(self._part, "wb").close()

    def _type(self, kind: str) -> pa.DataType:
        pa = self._pa
        return {_BOOL: pa.bool_(), _INT: pa.int64(), _FLOAT: pa.float64()}.get(kind, pa.string())

    def _schema(self, kinds: dict[str, str]) -> pa.Schema:
        return self._pa.schema([(c, self._type(kinds[c])) for c in self.columns])

    def _array(self, values: list[Any], kind: str) -> pa.Array:
        pa = self._pa
        if kind == _NULL:
            return pa.nulls(len(values), pa.string())
        if kind == _STR:
            values = [v if v is None or type(v) is str else _text(v) for v in values]
        elif kind == _FLOAT:
            values = [float(v) if type(v) is int else v for v in values]
        return pa.array(values, self._type(kind))

    def _write(self, rows: Iterable[dict[str, Any]]) -> int:
        n = 0
        for row in rows:
            self._buffer.append(row)
            n += 1
            if len(self._buffer) >= self._group:
                self._flush()
        return n

    def _flush(self) -> None:
        rows, self._buffer = self._buffer, []
        columns = {c: [row.get(c) for row in rows] for c in self.columns}
        kinds = {c: _join(self._kinds[c], _kind_of(v)) for c, v in columns.items()}
        if self._writer is None:
            self._writer = self._pq.ParquetWriter(self._current, self._schema(kinds))
        elif any(self._type(kinds[c]) != self._type(self._kinds[c]) for c in self.columns):
            self._rewrite(kinds)
        self._kinds = kinds
        arrays = [self._array(columns[c], kinds[c]) for c in self.columns]
        table = self._pa.Table.from_arrays(arrays, schema=self._schema(kinds))
        self._writer.write_table(table, row_group_size=max(1, len(rows)))

    def _rewrite(self, kinds: dict[str, str]) -> None:
        """Copy the row groups written so far into a new partial file with wider types."""
        self._writer.close()
        self._writer = None
        old = self._current
        self._rewrites += 1
        new = f"{self._part}.{self._rewrites}"
        schema = self._schema(kinds)
        writer = self._pq.ParquetWriter(new, schema)
        try:
            with self._pq.ParquetFile(old) as pf:
                for i in range(pf.num_row_groups):
                    group = pf.read_row_group(i)
                    arrays = []
                    for c in self.columns:
                        column = group.column(c)
                        if self._type(kinds[c]) == column.type:
                            arrays.append(column.combine_chunks())
                        else:
                            arrays.append(self._array(column.to_pylist(), kinds[c]))
                    writer.write_table(
                        self._pa.Table.from_arrays(arrays, schema=schema),
                        row_group_size=max(1, group.num_rows),
                    )
        except BaseException:
            writer.close()
            _remove(new)
            raise
        _remove(old)
        self._writer, self._current = writer, new

    def _finish(self) -> str:
        if self._buffer or self._writer is None:
            if self._buffer:
                self._flush()
            else:
                self._writer = self._pq.ParquetWriter(self._current, self._schema(self._kinds))
        self._writer.close()
        self._writer = None
        return self._current

    def _discard(self) -> None:
        self._buffer = []
        if self._writer is not None:
            with contextlib.suppress(Exception):  # the file is deleted anyway
                self._writer.close()
            self._writer = None
        _remove(self._current)
        if self._current != self._part:
            _remove(self._part)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


# --------------------------------------------------------------------------------------------
# SQL


class SqlWriter:
    """Append result rows to a table of an existing database (SQLAlchemy 2 Core).

    Args:
        url: an SQLAlchemy URL (``postgresql+psycopg://...``, ``mysql+pymysql://...``,
            ``sqlite:///file.db``) or an ``Engine`` (then it is not disposed on close).
        table: table name (quoted as needed); ``schema`` selects a schema other than the default.
        columns: the output columns, in order (unique ``str``).
        batch_rows: rows per INSERT batch.

    If the table does not exist it is created on the first batch (or at :meth:`close` if there
    were no rows), each column typed from the values of that first batch: all bool ->
    ``Boolean``, all int -> ``BigInteger``, int/float -> ``Double`` (``DOUBLE PRECISION``),
    anything else or no value -> ``Text`` (``LONGTEXT`` on MySQL/MariaDB, tables there are
    ``utf8mb4``). If it exists, rows are inserted into the named columns and every column must be
    in the table. Values are converted to each table column's type: text columns take the text
    form (see the module docstring), integer columns ints (or integral floats), float columns
    numbers, boolean columns bools (or 0/1); another value raises ``ValueError`` naming column,
    row and value.

    All rows go in in one transaction, committed by :meth:`close`, rolled back by :meth:`abort`
    (or by an exception leaving a ``with`` block): a failed export leaves no rows behind, so it
    can simply be run again. (On MySQL/MariaDB, creating the table commits on its own, so a
    failed first export may leave an empty table.)

    Raises (from the constructor, :meth:`write_rows`, :meth:`close`):
        ValueError: bad columns; a column missing from an existing table (the message lists
            what the table has); a value that does not fit its column's type.
        sqlalchemy.exc.SQLAlchemyError: connection or database errors.
    """

    def __init__(
        self,
        url: str | sa.Engine,
        table: str,
        columns: list[str],
        *,
        schema: str | None = None,
        batch_rows: int = SQL_BATCH_ROWS,
    ) -> None:
        import sqlalchemy as sa

        self._sa = sa
        self.columns = _check_columns(columns)
        if not self.columns:
            raise ValueError("an SQL table needs at least one column")
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
        self.table_name = table
        self.schema = schema
        self.rows_written = 0
        self._batch_rows = batch_rows
        if isinstance(url, str):
            self._engine = sa.create_engine(url)
            self._own_engine = True
        else:
            self._engine = url
            self._own_engine = False
        self._buffer: list[dict[str, Any]] = []
        self._table: sa.Table | None = None
        self._converters: dict[str, Any] = {}
        self._conn: sa.Connection | None = None
        self._tx: sa.RootTransaction | None = None
        self._closed = False

    @property
    def where(self) -> str:
        """``schema.table`` or ``table``, for messages."""
        return f"{self.schema}.{self.table_name}" if self.schema else self.table_name

    def write_rows(self, rows: Iterable[dict[str, Any]]) -> int:
        """Buffer ``rows`` and insert full batches; return how many rows were taken.

        Raises:
            ValueError: the writer is closed; see the class docstring.
            sqlalchemy.exc.SQLAlchemyError: database errors.
        """
        if self._closed:
            raise ValueError(f"table {self.where}: writer is closed")
        n = 0
        for row in rows:
            self._buffer.append(row)
            n += 1
            if len(self._buffer) >= self._batch_rows:
                self._flush()
        return n

    def close(self) -> None:
        """Insert what is buffered, commit, and release the connection. Idempotent.

        On error the transaction is rolled back and the error raised.
        """
        if self._closed:
            return
        try:
            if self._buffer or self._table is None:
                self._flush()
            if self._tx is not None:
                self._tx.commit()
        except BaseException:
            self._release(rollback=True)
            raise
        self._release(rollback=False)

    def abort(self) -> None:
        """Roll back every row written by this writer and release the connection. Idempotent."""
        if not self._closed:
            self._release(rollback=True)

    def __enter__(self) -> SqlWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _release(self, rollback: bool) -> None:
        self._closed = True
        self._buffer = []
        try:
            if rollback and self._tx is not None and self._tx.is_active:
                self._tx.rollback()
        finally:
            if self._conn is not None:
                self._conn.close()
            if self._own_engine:
                self._engine.dispose()

    def _prepare(self, first: list[dict[str, Any]]) -> None:
        sa = self._sa
        inspector = sa.inspect(self._engine)
        if inspector.has_table(self.table_name, schema=self.schema):
            table = sa.Table(
                self.table_name, sa.MetaData(), schema=self.schema, autoload_with=self._engine
            )
            missing = [c for c in self.columns if c not in table.c]
            if missing:
                raise ValueError(
                    f"table {self.where} has no column(s) {', '.join(map(repr, missing))}; "
                    f"it has: {', '.join(repr(c.name) for c in table.columns)}"
                )
        else:
            from sqlalchemy.dialects import mysql

            text_type = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
            types = {_BOOL: sa.Boolean(), _INT: sa.BigInteger(), _FLOAT: sa.Double()}
            cols = []
            for c in self.columns:
                kind = _kind_of([row.get(c) for row in first]) if first else _NULL
                cols.append(sa.Column(c, types.get(kind, text_type), nullable=True))
            table = sa.Table(
                self.table_name,
                sa.MetaData(),
                *cols,
                schema=self.schema,
                mysql_charset="utf8mb4",
            )
            table.create(self._engine, checkfirst=True)
        self._table = table
        self._converters = {c: _sql_converter(sa, table.c[c].type) for c in self.columns}
        self._conn = self._engine.connect()
        self._tx = self._conn.begin()

    def _flush(self) -> None:
        rows, self._buffer = self._buffer, []
        if self._table is None:
            self._prepare(rows)
        if not rows:
            return
        converted = []
        for n, row in enumerate(rows, self.rows_written + 1):
            out = {}
            for c, convert in self._converters.items():
                value = row.get(c)
                if value is not None:
                    try:
                        value = convert(value)
                    except (TypeError, ValueError):
                        raise ValueError(
                            f"table {self.where}: column {c!r} is "
                            f"{self._table.c[c].type}, but row {n} has {value!r}"  # type: ignore[union-attr]
                        ) from None
                out[c] = value
            converted.append(out)
        assert self._conn is not None
        self._conn.execute(self._table.insert(), converted)  # type: ignore[union-attr]
        self.rows_written += len(rows)


def _to_int(value: Any) -> int:
    if type(value) is int or type(value) is bool:
        return int(value)
    if type(value) is float and value.is_integer():
        return int(value)
    raise ValueError


def _to_float(value: Any) -> float:
    if type(value) is int or type(value) is float:
        return float(value)
    raise ValueError


def _to_bool(value: Any) -> bool:
    if type(value) is bool:
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    raise ValueError


def _as_is(value: Any) -> Any:
    return _text(value) if isinstance(value, dict | list | tuple) else value


def _sql_converter(sa: Any, column_type: Any) -> Any:
    if isinstance(column_type, sa.Boolean):
        return _to_bool
    if isinstance(column_type, sa.Integer):
        return _to_int
    if isinstance(column_type, sa.Float | sa.Numeric):
        return _to_float
    if isinstance(column_type, sa.String):
        return _text
    if isinstance(column_type, sa.JSON):
        return lambda value: value
    return _as_is
