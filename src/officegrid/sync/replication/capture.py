"""Change capture: triggers that write the change log in the writer's own transaction.

Every replicated table gets three triggers (names ``_og_i_/_og_u_/_og_d_<table>``): after an
insert or update the new row is logged as ``U`` (upsert the full row); after a delete, or an
update that changed the key, the old key is logged as ``D``. Values are SQLite ``quote()``
literals (see :mod:`.codec`); the server seals them later (:mod:`.changelog`).

``REPLACE`` and ``INSERT ... ON CONFLICT DO UPDATE`` are captured: the update trigger fires for
an upsert, and the rows a ``REPLACE`` deletes fire the delete trigger when the writing connection
has ``PRAGMA recursive_triggers=ON`` (SQLite documents that REPLACE deletes fire triggers only
then, https://sqlite.org/lang_conflict.html). Our own connections set it; for a foreign writer
without it, replicas apply upserts with ``INSERT OR REPLACE`` against the same unique indexes, so
the row such a REPLACE removed is removed on the replica too.

A trigger body can pass at most SQLITE_MAX_FUNCTION_ARG (127 in SQLite's default build)
arguments to ``json_object``; wider tables are logged as ``json_patch`` of several objects.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from officegrid.sync.replication.schema import qi

LOG_DDL = """
CREATE TABLE IF NOT EXISTS _og_log (
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    tbl TEXT NOT NULL,
    op TEXT NOT NULL,      -- U upsert row, D delete key, S schema step, X reconcile table
    k TEXT,                -- trigger-written: JSON array of quote() literals of the key
    r TEXT,                -- trigger-written: JSON object column -> quote() literal
    ts REAL NOT NULL,      -- UNIX seconds when written
    body TEXT,             -- sealed canonical entry (NULL until sealed)
    h TEXT                 -- sealed: blake3(prev hash || body), hex
);
CREATE TABLE IF NOT EXISTS _og_meta (k TEXT PRIMARY KEY, v TEXT);
"""

NOW_SQL = "((julianday('now') - 2440587.5) * 86400.0)"
_ARGS_PER_OBJECT = 60  # column pairs per json_object call (2 args each, below 127)
PREFIXES = ("_og_i_", "_og_u_", "_og_k_", "_og_d_")


def lit(text: str) -> str:
    """An SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def ensure_log(conn: sqlite3.Connection) -> None:
    """Create the change log and meta tables if missing."""
    for stmt in LOG_DDL.split(";"):
        if stmt.strip():
            conn.execute(stmt)


def _value(expr: str) -> str:
    """A value as a literal: ``quote()``, except text as ``T<hex of its UTF-8>`` because
    ``quote()`` cuts text at an embedded NUL character (found by the property test)."""
    return f"CASE WHEN typeof({expr})='text' THEN 'T'||hex({expr}) ELSE quote({expr}) END"


def _row_json(alias: str, cols: list[str]) -> str:
    parts = []
    for i in range(0, len(cols), _ARGS_PER_OBJECT):
        args = ", ".join(f"{lit(c)}, {_value(f'{alias}.{qi(c)}')}"
                         for c in cols[i:i + _ARGS_PER_OBJECT])
        parts.append(f"json_object({args})")
    out = parts[0]
    for p in parts[1:]:
        out = f"json_patch({out}, {p})"
    return out


def _key_json(alias: str, pk: list[str]) -> str:
    return "json_array(" + ", ".join(_value(f"{alias}.{qi(c)}") for c in pk) + ")"


def trigger_sql(table: str, tdesc: dict[str, Any]) -> dict[str, str]:
    """The CREATE TRIGGER statements for ``table`` (name -> SQL)."""
    cols = [c[0] for c in tdesc["cols"]]
    pk = tdesc["pk"]
    t = lit(table)
    ins = (f"INSERT INTO _og_log(tbl, op, k, r, ts) VALUES ({t}, 'U', {_key_json('NEW', pk)}, "
           f"{_row_json('NEW', cols)}, {NOW_SQL})")
    dele = (f"INSERT INTO _og_log(tbl, op, k, r, ts) VALUES ({t}, 'D', {_key_json('OLD', pk)}, "
            f"NULL, {NOW_SQL})")
    changed = " OR ".join(f"OLD.{qi(c)} IS NOT NEW.{qi(c)}" for c in pk)
    q = qi
    return {
        f"_og_i_{table}": f"CREATE TRIGGER {q('_og_i_' + table)} AFTER INSERT ON {q(table)} "
                          f"BEGIN {ins}; END",
        f"_og_k_{table}": f"CREATE TRIGGER {q('_og_k_' + table)} AFTER UPDATE ON {q(table)} "
                          f"WHEN {changed} BEGIN {dele}; END",
        f"_og_u_{table}": f"CREATE TRIGGER {q('_og_u_' + table)} AFTER UPDATE ON {q(table)} "
                          f"BEGIN {ins}; END",
        f"_og_d_{table}": f"CREATE TRIGGER {q('_og_d_' + table)} AFTER DELETE ON {q(table)} "
                          f"BEGIN {dele}; END",
    }


def install(conn: sqlite3.Connection, table: str, tdesc: dict[str, Any]) -> None:
    """(Re)install the capture triggers of ``table`` (drops stale ones first)."""
    for name in trigger_sql(table, tdesc):
        conn.execute(f"DROP TRIGGER IF EXISTS {qi(name)}")
    for sql in trigger_sql(table, tdesc).values():
        conn.execute(sql)


def drop_all(conn: sqlite3.Connection) -> None:
    """Drop every capture trigger (used on snapshots, which are replicas, not masters)."""
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger' "
                                "AND name LIKE '\\_og\\_%' ESCAPE '\\'").fetchall():
        conn.execute(f"DROP TRIGGER IF EXISTS {qi(name)}")


def lost_triggers(conn: sqlite3.Connection, desc: dict[str, Any]) -> list[str]:
    """Tables whose capture triggers are missing or not the ones their columns need (an ETL tool
    that rebuilds a table drops its triggers silently)."""
    have = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type='trigger'").fetchall())
    lost = []
    for table, tdesc in desc["tables"].items():
        if not tdesc["pk"]:
            continue
        if any(have.get(n) != sql for n, sql in trigger_sql(table, tdesc).items()):
            lost.append(table)
    return lost


def log_all_rows(conn: sqlite3.Connection, table: str, tdesc: dict[str, Any]) -> int:
    """Log every row of ``table`` as an upsert (a table that appeared without triggers).
    Returns the number of rows logged."""
    cols = [c[0] for c in tdesc["cols"]]
    cur = conn.execute(
        f"INSERT INTO _og_log(tbl, op, k, r, ts) SELECT {lit(table)}, 'U', "
        f"{_key_json('x', tdesc['pk'])}, {_row_json('x', cols)}, {NOW_SQL} "
        f"FROM {qi(table)} AS x")
    return cur.rowcount


def log_entry(conn: sqlite3.Connection, table: str, op: str, r: str | None) -> None:
    """Log a server-made entry (``S`` schema step with its JSON, ``X`` reconcile)."""
    conn.execute(f"INSERT INTO _og_log(tbl, op, k, r, ts) VALUES (?, ?, NULL, ?, {NOW_SQL})",
                 (table, op, r))
