"""What a database's replicated tables look like, and how two such descriptions differ.

A schema description is plain JSON-able data (kept in the master's ``_og_meta`` and sent to
replicas)::

    {"tables": {name: {"sql": CREATE TABLE text, "cols": [[name, type, notnull, default], ...],
                       "pk": [column, ...]}},
     "indexes": {name: {"table": t, "sql": CREATE INDEX text}}}

Internal tables (``_og_*``) and SQLite's own (``sqlite_*``) are never replicated. Changes are
*additive* (a new table, a new column at the end, a new or dropped index) or *destructive*
(anything else: a dropped or renamed table or column, a changed type, key or constraint): additive
ones travel through the change log, destructive ones start a new epoch.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

from officegrid.sync.replication.errors import DataSourceError

INTERNAL_PREFIXES = ("_og_", "sqlite_")


def qi(name: str) -> str:
    """Quote an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def is_internal(name: str) -> bool:
    return name.lower().startswith(INTERNAL_PREFIXES)


def describe(conn: sqlite3.Connection) -> dict[str, Any]:
    """The schema description of ``conn``'s main database (see the module docstring)."""
    tables: dict[str, Any] = {}
    indexes: dict[str, Any] = {}
    for name, sql in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type='table' ORDER BY name").fetchall():
        if is_internal(name):
            continue
        info = conn.execute(f"PRAGMA table_info({qi(name)})").fetchall()
        cols = [[c[1], c[2], int(c[3]), c[4]] for c in info]
        pk = [c[1] for c in sorted((c for c in info if c[5]), key=lambda c: c[5])]
        tables[name] = {"sql": sql, "cols": cols, "pk": pk}
    for name, tbl, sql in conn.execute(
            "SELECT name, tbl_name, sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL "
            "ORDER BY name").fetchall():
        if is_internal(tbl) or is_internal(name):
            continue
        indexes[name] = {"table": tbl, "sql": sql}
    return {"tables": tables, "indexes": indexes}


def require_keys(desc: dict[str, Any]) -> None:
    """Raise :class:`DataSourceError` naming every table without a primary key."""
    bad = [t for t, d in desc["tables"].items() if not d["pk"]]
    if bad:
        raise DataSourceError(
            f"table{'s' if len(bad) > 1 else ''} {', '.join(repr(t) for t in bad)} "
            "ha" + ("ve" if len(bad) > 1 else "s") + " no primary key: a data source needs one "
            "per table (to address rows in the change log and in repairs)")


@dataclass
class SchemaDiff:
    """How ``new`` differs from ``old``: additive DDL steps, or why it is destructive."""

    steps: list[dict[str, Any]] = field(default_factory=list)  # {"kind","table","sql",...}
    destructive: str | None = None  # why, for the log and ``data status``
    new_tables: list[str] = field(default_factory=list)
    changed_tables: list[str] = field(default_factory=list)  # columns added: triggers redone


def column_ddl(col: list[Any]) -> str:
    """The column definition of an ``ALTER TABLE ADD COLUMN`` for a ``cols`` entry."""
    name, typ, notnull, default = col
    ddl = qi(name) + (f" {typ}" if typ else "")
    if notnull:
        ddl += " NOT NULL"
    if default is not None:
        ddl += f" DEFAULT {default}"
    return ddl


def diff(old: dict[str, Any], new: dict[str, Any]) -> SchemaDiff:
    """Compare two schema descriptions (see the module docstring for what is additive)."""
    d = SchemaDiff()
    for name, t in old["tables"].items():
        n = new["tables"].get(name)
        if n is None:
            d.destructive = f"table {name!r} was dropped or renamed"
            return d
        if n["pk"] != t["pk"]:
            d.destructive = f"primary key of {name!r} changed"
            return d
        oc, nc = t["cols"], n["cols"]
        if nc[:len(oc)] != oc:
            d.destructive = f"columns of {name!r} were dropped, renamed or changed"
            return d
        for col in nc[len(oc):]:
            d.steps.append({"kind": "add_column", "table": name, "column": col[0],
                            "sql": f"ALTER TABLE {qi(name)} ADD COLUMN {column_ddl(col)}"})
        if len(nc) > len(oc):
            d.changed_tables.append(name)
    for name, n in new["tables"].items():
        if name not in old["tables"]:
            d.steps.append({"kind": "create_table", "table": name, "sql": n["sql"]})
            d.new_tables.append(name)
    for name, ix in old["indexes"].items():
        if name not in new["indexes"] or new["indexes"][name]["sql"] != ix["sql"]:
            d.steps.append({"kind": "drop_index", "table": ix["table"], "index": name,
                            "sql": f"DROP INDEX IF EXISTS {qi(name)}"})
    for name, ix in new["indexes"].items():
        if name not in old["indexes"] or old["indexes"][name]["sql"] != ix["sql"]:
            d.steps.append({"kind": "create_index", "table": ix["table"], "index": name,
                            "sql": ix["sql"]})
    return d


def apply_step(conn: sqlite3.Connection, step: dict[str, Any]) -> None:
    """Apply one additive step on a replica; a step already applied is skipped (idempotent:
    repairs can make a replica replay entries whose effect it already has)."""
    kind, table = step["kind"], step["table"]
    if kind == "create_table":
        if not _exists(conn, "table", table):
            conn.execute(step["sql"])
    elif kind == "add_column":
        cols = [r[1] for r in conn.execute(f"PRAGMA table_info({qi(table)})")]
        if step["column"] not in cols:
            conn.execute(step["sql"])
    elif kind == "create_index":
        if not _exists(conn, "index", step["index"]):
            conn.execute(step["sql"])
    elif kind == "drop_index":
        conn.execute(step["sql"])
    else:
        raise DataSourceError(f"unknown schema step {kind!r}")


def _exists(conn: sqlite3.Connection, kind: str, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type=? AND name=?",
                        (kind, name)).fetchone() is not None
