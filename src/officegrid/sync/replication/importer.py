"""Import a data source from another database (MySQL/MariaDB, PostgreSQL: SQLAlchemy URLs) and
refresh it by difference: only rows whose values changed are written (diff by key).

The diff runs where the import runs (the CLI), against a local replica of the source, so a
refresh sends the server only the changed rows and deleted keys, never the whole result.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from typing import Any

from officegrid.sync.replication import coltypes
from officegrid.sync.replication.errors import DataSourceError
from officegrid.sync.replication.master import build_from_records, sql_value
from officegrid.sync.replication.schema import qi

FETCH_ROWS = 5000


def query_rows(url: str, query: str) -> Iterator[dict[str, Any]]:
    """Stream the rows of ``query`` on database ``url`` as dicts (server-side cursor).

    Raises:
        DataSourceError: the URL or query is refused (the message names the database error).
    """
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(url)
    except Exception as exc:  # noqa: BLE001 - any bad URL or missing driver
        raise DataSourceError(f"--from-sql {url!r}: {exc}") from None
    try:
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True,
                                            yield_per=FETCH_ROWS).execute(sa.text(query))
            cols = list(result.keys())
            if len(set(cols)) != len(cols):
                raise DataSourceError(f"query returns duplicate column names: {cols}")
            for row in result:
                yield dict(zip(cols, row, strict=True))
    except sa.exc.SQLAlchemyError as exc:
        msg = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise DataSourceError(f"--from-sql query failed: {msg}") from None
    finally:
        engine.dispose()


def build_from_query(dest: str | os.PathLike[str], url: str, query: str, key: str,
                     table: str) -> int:
    """A new SQLite file ``dest`` with the query's rows as ``table`` keyed by ``key``.

    Raises:
        DataSourceError: query failed, no rows, a row without a key, or a duplicate key.
    """
    return build_from_records(dest, query_rows(url, query), key, table)


def diff(replica: sqlite3.Connection, table: str, key: str,
         rows: Iterator[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    """Compare fresh ``rows`` with ``table`` of a replica by ``key``: return ``(rows to upsert
    (new or changed), keys to delete (gone))``. Values are compared as SQLite stores them, and
    numbers by value (:func:`.coltypes.same_value`): a key stored as text ``"123"`` by an older
    import is the same key as ``123`` now."""
    cols = [r[1] for r in replica.execute(f"PRAGMA table_info({qi(table)})")]
    have: dict[Any, dict[str, Any]] = {}
    for r in replica.execute(f"SELECT {', '.join(qi(c) for c in cols)} FROM {qi(table)}"):
        rec = dict(zip(cols, r, strict=True))
        have[coltypes.key_value(rec[key])] = rec
    upserts, seen = [], set()
    for row in rows:
        new = {c: sql_value(v) for c, v in row.items()}
        if new.get(key) is None:
            raise DataSourceError(f"a row has no value for the key column {key!r}")
        k = coltypes.key_value(new[key])
        seen.add(k)
        old = have.get(k)
        if old is None or not all(coltypes.same_value(old.get(c), v) for c, v in new.items()):
            upserts.append(new)
    deletes = [[rec[key]] for k, rec in have.items() if k not in seen]
    return upserts, deletes


def new_columns(replica: sqlite3.Connection, table: str,
                rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Columns the fresh ``rows`` have that ``table`` of the replica lacks, in order of first
    appearance, each with its SQLite type (that of its first non-null value; ``""`` when all
    are null): ``[(column, type)]``. The refresher adds them to the master before writing."""
    have = {r[1] for r in replica.execute(f"PRAGMA table_info({qi(table)})")}
    typed: dict[str, str] = {}
    for row in rows:
        for c, v in row.items():
            if c not in have and (c not in typed or (typed[c] == "" and v is not None)):
                typed[c] = "" if v is None else coltypes.value_type(v) or ""
    return list(typed.items())


def dropped_columns(replica: sqlite3.Connection, table: str, returned: list[str]) -> list[str]:
    """Columns of ``table`` of the replica that the query no longer returns (``returned``: the
    query's columns; empty when it returned no rows, which says nothing about its columns)."""
    if not returned:
        return []
    keep = set(returned)
    return [r[1] for r in replica.execute(f"PRAGMA table_info({qi(table)})")
            if r[1] not in keep]

