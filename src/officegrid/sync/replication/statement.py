"""What ``officegrid data sql`` may run on a master: exactly one statement that writes rows or
changes the replicated schema.

SQLite itself classifies the statement: an authorizer (``Connection.set_authorizer``) sees every
action the statement compiles to, so a comment, a CTE or odd spacing cannot hide a ``PRAGMA`` or
an ``ATTACH`` from a keyword check. Allowed: ``INSERT``/``REPLACE``/``UPSERT``, ``UPDATE``,
``DELETE``, ``CREATE TABLE``/``INDEX``, ``ALTER TABLE`` (add, rename, drop column; rename table)
and ``DROP TABLE``/``INDEX`` -- what the change log and epochs replicate. Refused: ``ATTACH``,
``DETACH``, ``PRAGMA``, transaction control (``BEGIN``/``COMMIT``/``SAVEPOINT``...), ``VACUUM``,
``ANALYZE``, ``REINDEX``, a statement that only reads (``SELECT``), views, triggers, virtual and
temporary objects (never replicated), direct writes to the change log (an index on it too) or
to SQLite's internal tables (``sqlite_sequence``, ``sqlite_stat1``), several statements, and an
empty statement.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any

from officegrid.sync.replication.errors import DataSourceError

ALLOWED = ("exactly one INSERT, REPLACE, UPDATE, DELETE, CREATE TABLE/INDEX, ALTER TABLE or "
           "DROP TABLE/INDEX")

# Actions a statement may compile to that make it a write (with the object they name).
_WRITES = {sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE,
           sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_ALTER_TABLE,
           sqlite3.SQLITE_DROP_TABLE, sqlite3.SQLITE_DROP_INDEX}
_ROW_WRITES = {sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE}
# Actions that are refused outright, with the name the error shows.
_REFUSED = {
    sqlite3.SQLITE_ATTACH: "ATTACH", sqlite3.SQLITE_DETACH: "DETACH",
    sqlite3.SQLITE_PRAGMA: "PRAGMA", sqlite3.SQLITE_TRANSACTION: "transaction control",
    sqlite3.SQLITE_SAVEPOINT: "transaction control (SAVEPOINT/RELEASE)",
    sqlite3.SQLITE_ANALYZE: "ANALYZE", sqlite3.SQLITE_REINDEX: "REINDEX",
    sqlite3.SQLITE_CREATE_VIEW: "CREATE VIEW (views are not replicated)",
    sqlite3.SQLITE_DROP_VIEW: "DROP VIEW (views are not replicated)",
    sqlite3.SQLITE_CREATE_TRIGGER: "CREATE TRIGGER (triggers are not replicated)",
    sqlite3.SQLITE_DROP_TRIGGER: "DROP TRIGGER (triggers are not replicated)",
    sqlite3.SQLITE_CREATE_VTABLE: "CREATE VIRTUAL TABLE (not replicated)",
    sqlite3.SQLITE_DROP_VTABLE: "DROP of a virtual table (not replicated)",
    sqlite3.SQLITE_CREATE_TEMP_TABLE: "a TEMP table (gone when the statement ends)",
    sqlite3.SQLITE_CREATE_TEMP_INDEX: "a TEMP index (gone when the statement ends)",
    sqlite3.SQLITE_CREATE_TEMP_TRIGGER: "a TEMP trigger (gone when the statement ends)",
    sqlite3.SQLITE_CREATE_TEMP_VIEW: "a TEMP view (gone when the statement ends)",
}
_LOG_TABLES = ("_og_log", "_og_meta")
_SCHEMA_TABLES = ("sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema")
_TABLE_IN_ARG2 = {sqlite3.SQLITE_ALTER_TABLE, sqlite3.SQLITE_CREATE_INDEX,
                  sqlite3.SQLITE_DROP_INDEX}


class _Judge:
    """The authorizer: remembers the first refused action and whether anything writes."""

    def __init__(self) -> None:
        self.refused: str | None = None
        self.writes = False
        self.ddl = False  # a CREATE/ALTER/DROP of a user table or index was seen
        self.actions = 0
        self.internal: str | None = None  # refused: a write to a sqlite_* table (see __call__)
        self.row_tables: set[str] = set()  # tables whose rows it writes (lower case)

    def __call__(self, action: int, arg1: Any, arg2: Any, db: Any, source: Any) -> int:
        self.actions += 1
        if source is not None:
            # Compiled from a trigger body (ours write the change log) or a view: SQLite has
            # already asked about the statement that fires them.
            return sqlite3.SQLITE_OK
        why = _REFUSED.get(action)
        if action == sqlite3.SQLITE_ATTACH and arg1 == "":
            why = "VACUUM"  # VACUUM compiles to an ATTACH of an unnamed database first
        elif action in (sqlite3.SQLITE_DROP_TRIGGER, sqlite3.SQLITE_REINDEX) and self.ddl:
            why = None  # DROP/ALTER TABLE drop its triggers; CREATE INDEX fills the index
        elif action in _WRITES:
            # The table written: ALTER TABLE gives (database, table) and CREATE/DROP INDEX
            # (index, table); the others give the table first.
            name = arg2 if action in _TABLE_IN_ARG2 else arg1
            name = name.lower() if isinstance(name, str) else ""
            if name.startswith("sqlite_"):
                if name in _SCHEMA_TABLES or self.ddl:
                    # SQLite's own bookkeeping of a DDL statement (a user write to the schema
                    # table fails in SQLite itself; DROP TABLE deletes from sqlite_sequence).
                    return sqlite3.SQLITE_OK
                # Kept apart: ANALYZE writes sqlite_stat1 before SQLite asks about ANALYZE,
                # and that name is the better reason.
                self.internal = self.internal or (f"a write to SQLite's internal table {name} "
                                                  "(not replicated; SQLite maintains it)")
                return sqlite3.SQLITE_DENY
            elif name in _LOG_TABLES:
                why = f"a write to the change log ({name}); officegrid keeps it"
            elif db == "temp":
                why = "a write to the TEMP database (gone when the statement ends)"
            else:
                self.writes = True
                self.ddl = self.ddl or action not in _ROW_WRITES
                if action in _ROW_WRITES and not self.ddl:  # not DROP TABLE's own delete
                    self.row_tables.add(name)
        if why is not None:
            if self.refused is None:
                self.refused = why
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK


def refusal(why: str) -> DataSourceError:
    """The one-line error for a refused statement."""
    return DataSourceError(f"data sql runs {ALLOWED}; refused: {why}")


@contextlib.contextmanager
def judged(conn: sqlite3.Connection) -> Iterator[_Judge]:
    """Guard running one user statement on ``conn`` (``conn.execute(statement)`` inside).
    Yields the judge, whose ``row_tables`` names (in lower case) the tables whose rows the
    statement writes.

    Raises:
        DataSourceError: the statement is not exactly one write (see the module docstring);
            nothing of it has run then (SQLite refuses while compiling).
    """
    judge = _Judge()
    conn.set_authorizer(judge)
    try:
        yield judge
    except sqlite3.ProgrammingError as exc:
        if "one statement at a time" in str(exc):
            raise refusal("several statements (run them one at a time)") from None
        raise
    except sqlite3.DatabaseError as exc:
        if (judge.refused or judge.internal) is not None:
            raise refusal(judge.refused or judge.internal or "") from None
        if judge.actions == 0 and "VACUUM" in str(exc):
            # Inside a transaction VACUUM fails before the authorizer is asked anything.
            raise refusal("VACUUM") from None
        raise
    finally:
        conn.set_authorizer(None)
    if (judge.refused or judge.internal) is not None:  # pragma: no cover - a DENY fails it
        raise refusal(judge.refused or judge.internal or "")
    if judge.actions == 0:
        raise refusal("an empty statement")
    if not judge.writes:
        raise refusal("a statement that writes nothing (e.g. a SELECT)")
