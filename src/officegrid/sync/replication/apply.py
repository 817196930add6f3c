"""A replica applies a batch of log entries in one transaction together with its new position.

The replica file is an ordinary SQLite database (WAL) holding the source's tables and a meta
table ``_og_replica(k, v)`` with ``source``, ``epoch``, ``pos``, ``hash`` (the chain hash at
``pos``) and ``schema``. :func:`apply_batch` first proves the batch continues the replica's
chain -- the batch's ``prev`` equals the replica's hash and every entry's hash is
``blake3(prev || body)`` (:mod:`.changelog`) -- and refuses it otherwise (:class:`ChainBroken`):
a replica never applies a log it cannot prove continuous. Entries carry whole rows (``U``,
applied as ``INSERT OR REPLACE``) and keys (``D``), so replaying an entry whose effect is already
there changes nothing; repairs rely on that.

A full disk (``SQLITE_FULL``, also what ``PRAGMA max_page_count`` gives) rolls the batch back and
raises :class:`ReplicaDiskFull`: the replica stays at its previous position, still readable.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from typing import Any

from blake3 import blake3

from officegrid.sync.replication import codec, schema
from officegrid.sync.replication.errors import ChainBroken, ReplicaDiskFull
from officegrid.sync.replication.schema import qi

META_DDL = "CREATE TABLE IF NOT EXISTS _og_replica (k TEXT PRIMARY KEY, v TEXT)"
BUSY_TIMEOUT_MS = 30_000
CACHE_KIB = 16 << 10  # page cache of a replica connection: b-tree interior pages stay cached
# Checkpoint the WAL every 10,000 pages (40 MB), not SQLite's 1,000: a page changed by several
# batches (b-tree interior pages: all of them) is copied back once, and there are a tenth of
# the checkpoint fsyncs (about 12% less CPU per applied entry, measured). The fleet also
# checkpoints between units.
WAL_CHECKPOINT_PAGES = 10_000


@dataclass
class Position:
    """Where a replica stands: ``(epoch, pos, hash)`` of the last applied entry."""

    source: str
    epoch: str
    pos: int
    hash: str


def connect(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open a replica for writing (autocommit; WAL so readers see one snapshot while it applies).

    ``synchronous=NORMAL``: in WAL mode a commit then does not wait for an fsync; a power loss
    may roll back the last batches, never leave half of one (the position is in the same
    transaction), so the replica comes back consistent at an earlier position and fetches them
    again. A crash of the process alone loses nothing.
    """
    conn = sqlite3.connect(os.fspath(path), isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                           check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
    return conn


def init_meta(conn: sqlite3.Connection, **values: Any) -> None:
    conn.execute(META_DDL)
    set_meta(conn, **values)


def set_meta(conn: sqlite3.Connection, **values: Any) -> None:
    for k, v in values.items():
        conn.execute("INSERT INTO _og_replica(k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET "
                     "v=excluded.v", (k, str(v)))


def position(conn: sqlite3.Connection) -> Position | None:
    """The replica's position, or None if it has none (not a replica yet)."""
    try:
        m = dict(conn.execute("SELECT k, v FROM _og_replica").fetchall())
    except sqlite3.OperationalError:
        return None
    if "epoch" not in m:
        return None
    return Position(m.get("source", ""), m["epoch"], int(m["pos"]), m["hash"])


def verify(prev: str, entries: list[str], after: int, last: str) -> list[dict[str, Any]]:
    """Check that ``entries`` (bodies) chain from ``prev`` to the master's chain hash ``last``
    with rising positions after ``after``; return the parsed bodies.

    The chain is checked over the bodies' text first; only a proved batch is parsed, in one
    ``json.loads`` of the bodies joined into a list (each body is one canonical JSON object, so
    the join parses to exactly those objects; one call instead of one per entry).

    Raises:
        ChainBroken: a position goes back, or the chain through the bodies does not end at
            ``last`` (a changed, missing or foreign entry).
    """
    h = bytes.fromhex(prev)
    for body in entries:
        h = blake3(h + body.encode()).digest()  # == changelog.chain, without hex per entry
    if h.hex() != last:
        raise ChainBroken(f"log hash mismatch after position {after}: the log does not "
                          "continue this replica's history")
    out = json.loads("[" + ",".join(entries) + "]") if entries else []
    if len(out) != len(entries):
        raise ChainBroken("log entries do not parse one object each")
    for e in out:
        if e["p"] <= after:
            raise ChainBroken(f"log positions go back ({e['p']} after {after})")
        after = e["p"]
    return out


@dataclass
class _Table:
    """What the applier needs of one replica table (cached per batch)."""

    cols: set[str]
    pk: list[str]
    # An upsert can update rows in place (no other UNIQUE index a REPLACE would act on).
    in_place: bool
    all_cols: frozenset[str] = frozenset()


def _blob_affinity(decl: str) -> bool:
    """Whether a column declared ``decl`` has BLOB (no) affinity (SQLite's rules, 3.1)."""
    d = decl.upper()
    return "INT" not in d and not any(x in d for x in ("CHAR", "CLOB", "TEXT")) and (
        d == "" or "BLOB" in d)


def _table(conn: sqlite3.Connection, table: str) -> _Table:
    info = list(conn.execute(f"PRAGMA table_info({qi(table)})"))
    cols = [r[1] for r in info]
    pk = [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]
    indexes = list(conn.execute(f"PRAGMA index_list({qi(table)})"))
    other_unique = any(r[2] and r[3] != "pk" for r in indexes)
    # In place is the same row as REPLACE only if keys that conflict are identical values:
    # BINARY collation (not NOCASE: 'ABC' would keep the old 'abc') and a key affinity that
    # converts equal numbers alike (not BLOB affinity, where 1 and 1.0 conflict but differ).
    exact = not any(_blob_affinity(r[2]) for r in info if r[5])
    for r in indexes:
        if r[3] == "pk":
            exact = exact and all(x[4] == "BINARY" for x in conn.execute(
                f"PRAGMA index_xinfo({qi(r[1])})") if x[5])
    return _Table(set(cols), pk, bool(pk) and not other_unique and exact, frozenset(cols))


def _upsert_sql(table: str, cols: tuple[str, ...], t: _Table) -> str:
    """The statement that applies a ``U`` entry with columns ``cols``.

    An entry carries the whole row. When it names every column of the replica's table and the
    table has no UNIQUE constraint besides its key, ``INSERT ... ON CONFLICT (key) DO UPDATE``
    gives the same row as ``INSERT OR REPLACE`` but updates it in place (REPLACE deletes the old
    row and inserts a new one: twice the b-tree work, and a new rowid). Otherwise (an entry
    logged before a column was added, or another UNIQUE index whose conflicting row a REPLACE
    must remove, as it did on the master) it is ``INSERT OR REPLACE``.
    """
    names = ", ".join(qi(c) for c in cols)
    marks = ", ".join("?" for _ in cols)
    if t.in_place and frozenset(cols) == t.all_cols:
        rest = [c for c in cols if c not in t.pk]
        tail = (f"DO UPDATE SET {', '.join(f'{qi(c)}=excluded.{qi(c)}' for c in rest)}"
                if rest else "DO NOTHING")
        return (f"INSERT INTO {qi(table)} ({names}) VALUES ({marks}) "
                f"ON CONFLICT ({', '.join(qi(c) for c in t.pk)}) {tail}")
    return f"INSERT OR REPLACE INTO {qi(table)} ({names}) VALUES ({marks})"


def _value(v: Any) -> codec.Value:
    return codec.from_json(v) if type(v) is dict else v


def apply_entries(conn: sqlite3.Connection, entries: list[dict[str, Any]]) -> list[str]:
    """Apply parsed entries, in order, inside the caller's transaction. Returns the tables of
    ``X`` entries (they must be reconciled by :mod:`.merkle`).

    Consecutive entries of the same table, operation and columns run as one ``executemany`` of
    one statement (SQLite's statement cache keeps it prepared): the per-entry cost is binding
    and the b-tree work, not Python building SQL.
    """
    tables: dict[str, _Table | None] = {}
    # (table, op, entry columns) -> (statement, columns it binds if not all of the entry's)
    stmts: dict[tuple[str, str, tuple[str, ...]], tuple[str, tuple[str, ...] | None]] = {}
    reconcile: list[str] = []
    group: tuple[str, str, tuple[str, ...]] | None = None
    params: list[list[Any]] = []

    def flush() -> None:
        if params:
            conn.executemany(stmts[group][0], params)  # type: ignore[index]
            params.clear()

    for e in entries:
        op, table = e["o"], e["t"]
        if op == "S":
            flush()
            schema.apply_step(conn, e["r"])
            tables.clear()
            stmts.clear()
            group = None
            continue
        if op == "X":
            reconcile.append(table)
            continue
        if table not in tables:
            t = _table(conn, table)
            tables[table] = t if t.cols else None  # None: a table this replica does not have
        t = tables[table]
        if t is None:
            continue
        if op == "U":
            row = e["r"]
            key = (table, op, tuple(row))
            st = stmts.get(key)
            if st is None:
                cols = key[2]
                if not t.cols.issuperset(cols):  # a column this replica no longer has
                    cols = tuple(c for c in cols if c in t.cols)
                st = stmts[key] = (_upsert_sql(table, cols, t), None if cols == key[2] else cols)
            if key != group:
                flush()
                group = key
            # Blobs are the only tagged values ({"$b": hex}); the test is inlined (per value).
            params.append([v if type(v) is not dict else codec.from_json(v)
                           for v in row.values()] if st[1] is None
                          else [_value(row[c]) for c in st[1]])
        elif op == "D":
            key = (table, op, ())
            if key not in stmts:
                where = " AND ".join(f"{qi(c)} IS ?" for c in t.pk)
                stmts[key] = (f"DELETE FROM {qi(table)} WHERE {where}", None)
            if key != group:
                flush()
                group = key
            params.append([_value(v) for v in e["k"]])
    flush()
    return reconcile


def apply_entry(conn: sqlite3.Connection, e: dict[str, Any], cache: dict[str, Any]) -> bool:
    """Apply one parsed entry inside the caller's transaction. Returns True for an ``X`` entry
    (that table must be reconciled by :mod:`.merkle`). ``cache`` is unused (kept for callers);
    batches go through :func:`apply_entries`."""
    return bool(apply_entries(conn, [e]))


def is_disk_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == 13 or "full" in str(exc).lower()  # SQLITE_FULL


def apply_batch(conn: sqlite3.Connection, batch: dict[str, Any]) -> tuple[Position, list[str]]:
    """Apply a log batch (``changelog.batch`` answer) in one transaction with the new position.

    Returns ``(new position, tables to reconcile)``.

    Raises:
        ChainBroken: the batch is for another epoch, does not start at the replica's position or
            its chain does not continue (nothing applied).
        ReplicaDiskFull: the disk or page limit is full (nothing applied).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        cur = position(conn)
        if cur is None:
            raise ChainBroken("not a replica (no position)")
        if batch["epoch"] != cur.epoch or batch["after"] != cur.pos or batch["prev"] != cur.hash:
            raise ChainBroken(f"batch after {batch['after']} does not continue the replica at "
                              f"{cur.pos}")
        entries = verify(cur.hash, batch["entries"], cur.pos, batch["last"])
        reconcile = apply_entries(conn, entries)
        if entries:
            cur.pos, cur.hash = entries[-1]["p"], batch["last"]
            set_meta(conn, pos=cur.pos, hash=cur.hash)
            if any(e["o"] == "S" for e in entries):
                set_meta(conn, schema=json.dumps(schema.describe(conn)))
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:  # SQLITE_FULL may have rolled back already
            conn.execute("ROLLBACK")
        if is_disk_full(exc):
            raise ReplicaDiskFull(f"replica disk full while applying the batch after {cur.pos}: "
                                  f"kept position {cur.pos} ({exc})") from None
        raise
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return cur, reconcile
