"""Anti-entropy: compare hashes of primary-key ranges with the master, fetch only what differs.

Shipping pages or chunks cannot repair a stale replica cheaply (10% of rows changed at random
dirties nearly every SQLite page), so repair works on rows, in three levels of a tree over the
key space (in the spirit of range-based set reconciliation, A. Meyer, "Range-Based Set
Reconciliation", 2023, and Merkle trees):

1. *Buckets.* The master cuts its table, in key order, into ranges of ``bucket_rows`` rows and
   sends per range its first key, row count, an 8-byte hash of its keys and a 16-byte hash of its
   rows. The replica hashes its own rows in the same key ranges; equal ranges are done.
2. *Row hashes.* For each differing range the master sends a 2-byte hash per row: in rank order
   only, when count and key hash agree (the replica knows the keys), else with the keys. The
   replica deletes keys the master lacks and asks for the rows whose short hash differs.
3. *Rows*, by key, then a check: a range whose full hash still differs (a 2-byte collision, or a
   row changed meanwhile) is fetched whole.

Cost for ``n`` rows with a fraction ``d`` changed: about ``n/bucket_rows * 40`` bytes of bucket
hashes, ``2`` bytes per row of dirty buckets (all of them once ``d * bucket_rows >> 1``) and the
changed rows themselves, i.e. ``d`` of a snapshot plus a few bytes per row -- against a full
snapshot's tens of bytes per row (measured in the tests and in bench/replication).

Repair reads the master while it changes; the replica then tails from the head it read *before*
the repair, and since entries carry whole rows and keys, replaying them converges.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any, Protocol

import blake3

from officegrid.sync.replication import codec
from officegrid.sync.replication.schema import qi

BUCKET_ROWS = 64
ROW_HASH_BYTES = 2
RANGES_PER_REQUEST = 2000
KEYS_PER_REQUEST = 5000


class RangeSource(Protocol):
    """What repair needs from the master (an HTTP client or a local master file)."""

    def ranges(self, table: str, bucket_rows: int) -> list[list[Any]]: ...

    def row_hashes(self, table: str, ranges: list[list[Any]], size: int) -> list[dict]: ...

    def rows(self, table: str, keys: list[list[Any]] | None = None,
             ranges: list[list[Any]] | None = None) -> dict[str, Any]: ...


# ------------------------------------------------------------------------------ shared


def table_keys(conn: sqlite3.Connection, table: str) -> tuple[list[str], list[str]]:
    """``(primary key columns in key order, all columns)``."""
    info = conn.execute(f"PRAGMA table_info({qi(table)})").fetchall()
    pk = [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]
    return pk, [r[1] for r in info]


def _bound(pk: list[str], op: str) -> str:
    if len(pk) == 1:
        return f"{qi(pk[0])} {op} ?"
    return f"({', '.join(qi(c) for c in pk)}) {op} ({', '.join('?' for _ in pk)})"


def _range_sql(conn: sqlite3.Connection, table: str, lo: list | None,
               hi: list | None, sort_columns: bool = False
               ) -> tuple[str, list[Any], list[str], list[str]]:
    """``SELECT key columns, other columns FROM table WHERE [lo, hi) ORDER BY key``, its
    arguments, the key columns and the other columns (sorted by name with ``sort_columns``)."""
    pk, cols = table_keys(conn, table)
    if sort_columns:
        cols = sorted(cols)
    where, args = [], []
    if lo is not None:
        where.append(_bound(pk, ">="))
        args += [codec.from_json(v) for v in lo]
    if hi is not None:
        where.append(_bound(pk, "<"))
        args += [codec.from_json(v) for v in hi]
    sel = ", ".join(qi(c) for c in pk + cols)
    sql = (f"SELECT {sel} FROM {qi(table)}" + (f" WHERE {' AND '.join(where)}" if where else "")
           + f" ORDER BY {', '.join(qi(c) for c in pk)}")
    return sql, args, pk, cols


def hashed_rows(conn: sqlite3.Connection, table: str, lo: list | None = None,
                hi: list | None = None) -> tuple[sqlite3.Cursor, int]:
    """A cursor over the rows of ``[lo, hi)`` in key order, each a tuple of the key values
    then every column's value in column-name order (so column order does not matter), and the
    number of key values."""
    sql, args, pk, _ = _range_sql(conn, table, lo, hi, sort_columns=True)
    return conn.execute(sql, args), len(pk)


def iter_rows(conn: sqlite3.Connection, table: str, lo: list | None = None,
              hi: list | None = None) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Rows of ``[lo, hi)`` (bounds as JSON key values) in key order as ``(key values, row)``."""
    sql, args, pk, cols = _range_sql(conn, table, lo, hi)
    n = len(pk)
    for r in conn.execute(sql, args):
        yield r[:n], dict(zip(cols, r[n:], strict=True))


def key_text(values: tuple[Any, ...]) -> str:
    """A key's identity for hashing and matching (``repr`` of SQLite values: exact and about
    ten times faster than canonical JSON; both sides run the same code)."""
    return repr(values)


def key_json(values: tuple[Any, ...]) -> list[Any]:
    return [codec.to_json(v) for v in values]


def key_from_json(key: list[Any]) -> tuple[Any, ...]:
    return tuple(codec.from_json(v) for v in key)


def tuple_hash(values: tuple[Any, ...], size: int = 16) -> bytes:
    """Hash of one row as selected by :func:`hashed_rows` (``repr`` of SQLite values: exact,
    the same on every platform and done in C)."""
    return blake3.blake3(repr(values).encode()).digest(length=size)


def summary(rows: list[tuple[Any, ...]], npk: int) -> tuple[int, str, str]:
    """``(count, 8-byte key hash, 16-byte row hash)`` of a range's rows (tuples of
    :func:`hashed_rows`, key values first). One ``repr`` and one hash per range, not per row:
    the rows' text is made by C code in one call."""
    keys = repr([r[:npk] for r in rows]).encode()
    return (len(rows), blake3.blake3(keys).hexdigest(length=8),
            blake3.blake3(repr(rows).encode()).hexdigest(length=16))


# ------------------------------------------------------------------------------ master side


def bucket_hashes(conn: sqlite3.Connection, table: str,
                  bucket_rows: int = BUCKET_ROWS) -> list[list[Any]]:
    """``[[first key, count, key hash, row hash], ...]`` of ranges of ``bucket_rows`` rows
    (one pass over the table in key order; each range is one ``fetchmany``)."""
    out: list[list[Any]] = []
    cur, npk = hashed_rows(conn, table)
    while rows := cur.fetchmany(bucket_rows):
        out.append([key_json(rows[0][:npk]), *summary(rows, npk)])
    return out


def row_hashes(conn: sqlite3.Connection, table: str, ranges: list[list[Any]],
               size: int = ROW_HASH_BYTES) -> list[dict[str, Any]]:
    """Per ``[lo, hi, with_keys]`` range: ``{"h": hex of size-byte row hashes in key order,
    "keys": [keys] or None}``."""
    out = []
    for lo, hi, with_keys in ranges:
        cur, npk = hashed_rows(conn, table, lo, hi)
        rows = cur.fetchall()
        out.append({"h": "".join(tuple_hash(r, size).hex() for r in rows),
                    "keys": [key_json(r[:npk]) for r in rows] if with_keys else None})
    return out


def fetch_rows(conn: sqlite3.Connection, table: str, keys: list[list[Any]] | None = None,
               ranges: list[list[Any]] | None = None) -> dict[str, Any]:
    """Rows by key, or all rows of ``[lo, hi]`` ranges: ``{"cols": [...], "rows": [[...]]}``
    with JSON values (blobs tagged). Keys that do not exist are left out."""
    pk, cols = table_keys(conn, table)
    sel = ", ".join(qi(c) for c in cols)
    rows = []
    if keys:
        sql = f"SELECT {sel} FROM {qi(table)} WHERE {_bound(pk, '=')}"
        for k in keys:
            for r in conn.execute(sql, [codec.from_json(v) for v in k]):
                rows.append([codec.to_json(v) for v in r])
    for lo, hi in ranges or []:
        for _, row in iter_rows(conn, table, lo, hi):
            rows.append([codec.to_json(row[c]) for c in cols])
    return {"cols": cols, "rows": rows}


# ------------------------------------------------------------------------------ replica side


def _upsert(conn: sqlite3.Connection, table: str, got: dict[str, Any]) -> int:
    local = set(table_keys(conn, table)[1])
    idx = [i for i, c in enumerate(got["cols"]) if c in local]
    cols = [got["cols"][i] for i in idx]
    sql = (f"INSERT OR REPLACE INTO {qi(table)} ({', '.join(qi(c) for c in cols)}) "
           f"VALUES ({', '.join('?' for _ in cols)})")
    conn.executemany(sql, ([codec.from_json(r[i]) for i in idx] for r in got["rows"]))
    return len(got["rows"])


def _delete(conn: sqlite3.Connection, table: str, pk: list[str],
            keys: list[tuple[Any, ...]]) -> None:
    conn.executemany(f"DELETE FROM {qi(table)} WHERE {_bound(pk, '=')}", keys)


def _local(conn: sqlite3.Connection, table: str, lo: list | None,
           hi: list | None) -> list[tuple[Any, ...]]:
    return hashed_rows(conn, table, lo, hi)[0].fetchall()


def repair_table(conn: sqlite3.Connection, table: str, source: RangeSource,
                 bucket_rows: int = BUCKET_ROWS) -> dict[str, int]:
    """Make ``table`` of the replica equal the master's, inside the caller's transaction.

    Returns counts: ``buckets``, ``dirty`` (ranges that differed), ``fetched`` (rows fetched),
    ``deleted`` (local rows removed), ``whole`` (ranges fetched whole after the check).
    """
    pk, _ = table_keys(conn, table)
    npk = len(pk)
    buckets = source.ranges(table, bucket_rows)
    stats = {"buckets": len(buckets), "dirty": 0, "fetched": 0, "deleted": 0, "whole": 0}
    if not buckets:
        stats["deleted"] = conn.execute(f"DELETE FROM {qi(table)}").rowcount
        return stats
    # Rows before the master's first key exist only here.
    first = buckets[0][0]
    extra = [r[:npk] for r in _local(conn, table, None, first)]
    _delete(conn, table, pk, extra)
    stats["deleted"] += len(extra)
    bounds = [(b[0], buckets[i + 1][0] if i + 1 < len(buckets) else None)
              for i, b in enumerate(buckets)]
    dirty: list[int] = []
    aligned: dict[int, list[tuple[Any, ...]]] = {}
    for i, (lo, hi) in enumerate(bounds):
        rows = _local(conn, table, lo, hi)
        n, kh, rh = summary(rows, npk)
        if (n, kh, rh) == tuple(buckets[i][1:]):
            continue
        dirty.append(i)
        if (n, kh) == tuple(buckets[i][1:3]):
            aligned[i] = [r[:npk] for r in rows]
    stats["dirty"] = len(dirty)
    want: list[list[Any]] = []
    for j in range(0, len(dirty), RANGES_PER_REQUEST):
        part = dirty[j:j + RANGES_PER_REQUEST]
        got = source.row_hashes(table, [[*bounds[i], i not in aligned] for i in part],
                                ROW_HASH_BYTES)
        w = 2 * ROW_HASH_BYTES
        for i, g in zip(part, got, strict=True):
            theirs = [g["h"][x:x + w] for x in range(0, len(g["h"]), w)]
            rows = _local(conn, table, *bounds[i])
            mine = {key_text(r[:npk]): tuple_hash(r, ROW_HASH_BYTES).hex() for r in rows}
            if i in aligned:
                keys = aligned[i]
                if len(theirs) != len(keys):
                    continue  # the master changed meanwhile: the check below fetches it whole
                want += [key_json(keys[r]) for r, h in enumerate(theirs)
                         if mine[key_text(keys[r])] != h]
            else:
                master_keys = {key_text(key_from_json(k)): (k, h)
                               for k, h in zip(g["keys"], theirs, strict=True)}
                gone = [r[:npk] for r in rows if key_text(r[:npk]) not in master_keys]
                _delete(conn, table, pk, gone)
                stats["deleted"] += len(gone)
                want += [k for kt, (k, h) in master_keys.items() if mine.get(kt) != h]
    for j in range(0, len(want), KEYS_PER_REQUEST):
        got = source.rows(table, keys=want[j:j + KEYS_PER_REQUEST])
        stats["fetched"] += _upsert(conn, table, got)
    # Check: a range still differing is fetched whole (a short-hash collision or a change
    # made meanwhile).
    whole = [bounds[i] for i in dirty
             if summary(_local(conn, table, *bounds[i]), npk) != tuple(buckets[i][1:])]
    for j in range(0, len(whole), RANGES_PER_REQUEST):
        part = whole[j:j + RANGES_PER_REQUEST]
        for lo, hi in part:
            _delete(conn, table, pk, [r[:npk] for r in _local(conn, table, lo, hi)])
        stats["fetched"] += _upsert(conn, table, source.rows(table, ranges=[list(b) for b in part]))
        stats["whole"] += len(part)
    return stats
