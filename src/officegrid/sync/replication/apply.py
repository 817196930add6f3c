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

from officegrid.sync.replication import codec, schema
from officegrid.sync.replication.changelog import chain
from officegrid.sync.replication.errors import ChainBroken, ReplicaDiskFull
from officegrid.sync.replication.schema import qi

META_DDL = "CREATE TABLE IF NOT EXISTS _og_replica (k TEXT PRIMARY KEY, v TEXT)"
BUSY_TIMEOUT_MS = 30_000


@dataclass
class Position:
    """Where a replica stands: ``(epoch, pos, hash)`` of the last applied entry."""

    source: str
    epoch: str
    pos: int
    hash: str


def connect(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open a replica for writing (autocommit; WAL so readers see one snapshot while it applies).
    """
    conn = sqlite3.connect(os.fspath(path), isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                           check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
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

    Raises:
        ChainBroken: a position goes back, or the chain through the bodies does not end at
            ``last`` (a changed, missing or foreign entry).
    """
    out = []
    for body in entries:
        e = codec.loads(body)
        if e["p"] <= after:
            raise ChainBroken(f"log positions go back ({e['p']} after {after})")
        out.append(e)
        prev, after = chain(prev, body), e["p"]
    if prev != last:
        raise ChainBroken(f"log hash mismatch up to position {after}: the log does not "
                          "continue this replica's history")
    return out


def _cols(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({qi(table)})")]


def apply_entry(conn: sqlite3.Connection, e: dict[str, Any], cache: dict[str, Any]) -> bool:
    """Apply one parsed entry inside the caller's transaction. Returns True for an ``X`` entry
    (that table must be reconciled by :mod:`.merkle`)."""
    op, table = e["o"], e["t"]
    if op == "S":
        schema.apply_step(conn, e["r"])
        cache.clear()
        return False
    if op == "X":
        return True
    if table not in cache:
        cols = _cols(conn, table)
        pk = [r[1] for r in sorted((r for r in conn.execute(f"PRAGMA table_info({qi(table)})")
                                    if r[5]), key=lambda r: r[5])]
        cache[table] = (set(cols), pk)
    cols, pk = cache[table]
    if not cols:
        return False  # a table this replica does not have (dropped in a later epoch)
    if op == "U":
        row = {c: codec.from_json(v) for c, v in e["r"].items() if c in cols}
        conn.execute(f"INSERT OR REPLACE INTO {qi(table)} ({', '.join(qi(c) for c in row)}) "
                     f"VALUES ({', '.join('?' for _ in row)})", list(row.values()))
    elif op == "D":
        where = " AND ".join(f"{qi(c)} IS ?" for c in pk)
        conn.execute(f"DELETE FROM {qi(table)} WHERE {where}",
                     [codec.from_json(v) for v in e["k"]])
    return False


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
        cache: dict[str, Any] = {}
        reconcile: list[str] = []
        for e in entries:
            if apply_entry(conn, e, cache):
                reconcile.append(e["t"])
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
