"""The change log: positions, the hash chain, retention and epochs (master side).

Triggers append raw entries (:mod:`.capture`); :func:`seal` turns them, in position order, into
canonical entries, each hashed together with the hash of the entry before it::

    h(pos) = blake3(bytes.fromhex(h(pos - 1)) || body(pos))      h(base) = base hash

so a replica that knows ``(pos, h(pos))`` can prove a batch continues its history before it
applies it. An epoch (a random id) names one history: a new epoch starts with the hash
``blake3("officegrid-epoch:" + epoch)`` and an empty log. Retention (:func:`purge`) drops the
oldest sealed entries by age and total size, like MySQL's binlog expiry; the position and hash of
the last dropped entry become the base that the first kept entry chains from.

The master's ``_og_meta`` keys: ``epoch``, ``base_pos``/``base_hash`` (start of the retained log),
``head_pos``/``head_hash`` (last sealed entry), ``schema`` (JSON, :mod:`.schema`),
``schema_version`` (SQLite's counter when ``schema`` was taken), ``epoch_reason``.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Any

import blake3

from officegrid.sync.replication import codec
from officegrid.sync.replication.errors import DataSourceError, NeedsRepair

SEAL_BATCH = 5000  # entries sealed per query round


@dataclass
class Head:
    """Where a master's log stands."""

    epoch: str
    pos: int
    hash: str
    base_pos: int
    base_hash: str


def epoch_hash(epoch: str) -> str:
    return blake3.blake3(f"officegrid-epoch:{epoch}".encode()).hexdigest()


def chain(prev_hex: str, body: str) -> str:
    """The hash of an entry whose canonical text is ``body`` after an entry hashed ``prev_hex``."""
    return blake3.blake3(bytes.fromhex(prev_hex) + body.encode()).hexdigest()


def get_meta(conn: sqlite3.Connection) -> dict[str, str]:
    try:
        return dict(conn.execute("SELECT k, v FROM _og_meta").fetchall())
    except sqlite3.OperationalError:
        return {}


def set_meta(conn: sqlite3.Connection, **values: Any) -> None:
    for k, v in values.items():
        conn.execute("INSERT INTO _og_meta(k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET "
                     "v=excluded.v", (k, v if isinstance(v, str) else json.dumps(v)))


def head(conn: sqlite3.Connection) -> Head:
    m = get_meta(conn)
    if "epoch" not in m:
        raise DataSourceError("not a data source master (no change log)")
    return Head(m["epoch"], int(m["head_pos"]), m["head_hash"], int(m["base_pos"]),
                m["base_hash"])


def new_epoch(conn: sqlite3.Connection, reason: str, min_pos: int = 0) -> Head:
    """Start a new history: a new epoch id, an empty log (replicas resync by repair).

    Positions never go back: the next entry's position is above both the log's own sequence and
    ``min_pos`` (e.g. the last position the server saw before a restore)."""
    conn.execute("DELETE FROM _og_log")
    seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='_og_log'").fetchone()
    pos = max(seq[0] if seq else 0, min_pos)
    if seq:
        conn.execute("UPDATE sqlite_sequence SET seq=? WHERE name='_og_log'", (pos,))
    else:
        conn.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('_og_log', ?)", (pos,))
    epoch = uuid.uuid4().hex
    h = epoch_hash(epoch)
    set_meta(conn, epoch=epoch, base_pos=str(pos), base_hash=h, head_pos=str(pos), head_hash=h,
             epoch_reason=reason, epoch_started=str(time.time()))
    return head(conn)


def _canonical(pos: int, tbl: str, op: str, k: str | None, r: str | None) -> str:
    if op in ("U", "D"):
        key = [codec.to_json(codec.parse_literal(x)) for x in json.loads(k or "[]")]
        row = None if r is None else {c: codec.to_json(codec.parse_literal(v))
                                      for c, v in json.loads(r).items()}
    else:
        key, row = None, (None if r is None else json.loads(r))
    return codec.dumps({"p": pos, "t": tbl, "o": op, "k": key, "r": row})


def seal(conn: sqlite3.Connection) -> int:
    """Seal every unsealed entry (in a write transaction the caller holds). Returns how many."""
    h = head(conn)
    prev, n = h.hash, 0
    while True:
        rows = conn.execute("SELECT pos, tbl, op, k, r FROM _og_log WHERE pos > ? AND body IS NULL "
                            "ORDER BY pos LIMIT ?", (h.pos, SEAL_BATCH)).fetchall()
        if not rows:
            break
        sealed = []
        for pos, tbl, op, k, r in rows:
            body = _canonical(pos, tbl, op, k, r)
            prev = chain(prev, body)
            sealed.append((body, prev, pos))
            h.pos = pos
        conn.executemany("UPDATE _og_log SET body=?, h=?, k=NULL, r=NULL WHERE pos=?", sealed)
        n += len(rows)
    if n:
        set_meta(conn, head_pos=str(h.pos), head_hash=prev)
    return n


def hash_at(conn: sqlite3.Connection, pos: int) -> str | None:
    """The chain hash at ``pos`` (the base or a retained sealed entry), else None."""
    h = head(conn)
    if pos == h.base_pos:
        return h.base_hash
    row = conn.execute("SELECT h FROM _og_log WHERE pos=?", (pos,)).fetchone()
    return row[0] if row else None


def batch(conn: sqlite3.Connection, epoch: str, after: int, max_entries: int = 1000,
          max_bytes: int = 1 << 20) -> dict[str, Any]:
    """Sealed entries after position ``after`` of ``epoch``.

    Returns ``{"epoch", "after", "prev": h(after), "head": head pos, "entries": [body, ...],
    "last": h(last entry)}`` (at most ``max_entries`` entries and about ``max_bytes`` of
    bodies). Only the chain hash after the last entry travels: the replica recomputes the chain
    from its own hash through every body, so per-entry hashes would only cost bytes (about a
    third of a batch).

    Raises:
        NeedsRepair: another epoch, ``after`` purged (below the retained range) or beyond the head
            (the replica is ahead of this master: it must have been restored).
    """
    h = head(conn)
    if epoch != h.epoch:
        raise NeedsRepair(f"epoch changed ({epoch[:8]} -> {h.epoch[:8]}): resync")
    if after < h.base_pos:
        held = (f"the log holds {h.base_pos + 1}..{h.pos}" if h.pos > h.base_pos
                else f"the log is empty, purged up to the head {h.pos}")
        raise NeedsRepair(f"position {after} was purged ({held})")
    if after > h.pos:
        raise NeedsRepair(f"position {after} is ahead of the master's head {h.pos}")
    prev = hash_at(conn, after)
    if prev is None:
        raise NeedsRepair(f"position {after} is not in the log")
    out, size, last = [], 0, prev
    for body, hh in conn.execute("SELECT body, h FROM _og_log WHERE pos > ? AND pos <= ? "
                                 "ORDER BY pos LIMIT ?", (after, h.pos, max_entries)):
        out.append(body)
        last = hh
        size += len(body)
        if size >= max_bytes:
            break
    return {"epoch": h.epoch, "after": after, "prev": prev, "head": h.pos, "entries": out,
            "last": last}


def retained(conn: sqlite3.Connection) -> dict[str, Any]:
    """Entries and bytes kept, and the oldest entry's time."""
    n, size, oldest = conn.execute("SELECT count(*), coalesce(sum(length(body)), 0), min(ts) "
                                   "FROM _og_log WHERE body IS NOT NULL").fetchone()
    return {"entries": n, "bytes": size, "oldest": oldest}


def bytes_after(conn: sqlite3.Connection, pos: int) -> int:
    """Bytes of the sealed entry bodies after position ``pos`` (what a replica at ``pos``
    would fetch to reach the head, before compression)."""
    return conn.execute("SELECT coalesce(sum(length(body)), 0) FROM _og_log WHERE pos > ? "
                        "AND body IS NOT NULL", (pos,)).fetchone()[0]


def purge(conn: sqlite3.Connection, *, max_age: float | None = None,
          max_bytes: int | None = None, before: int | None = None,
          now: float | None = None) -> int:
    """Drop the oldest sealed entries: older than ``max_age`` seconds, beyond ``max_bytes`` of
    bodies kept (newest kept first), or at positions ``<= before``. Returns how many."""
    h = head(conn)
    cut = h.base_pos
    now = time.time() if now is None else now
    if before is not None:
        row = conn.execute("SELECT max(pos) FROM _og_log WHERE body IS NOT NULL AND pos <= ?",
                           (before,)).fetchone()
        if row[0] is not None:
            cut = max(cut, row[0])
    if max_age is not None:
        row = conn.execute("SELECT max(pos) FROM _og_log WHERE body IS NOT NULL AND ts < ?",
                           (now - max_age,)).fetchone()
        if row[0] is not None:
            cut = max(cut, row[0])
    if max_bytes is not None:
        kept = 0
        for pos, size in conn.execute("SELECT pos, length(body) FROM _og_log WHERE "
                                      "body IS NOT NULL ORDER BY pos DESC"):
            kept += size
            if kept > max_bytes:
                cut = max(cut, pos)
                break
    if cut <= h.base_pos:
        return 0
    cut_hash = conn.execute("SELECT h FROM _og_log WHERE pos=?", (cut,)).fetchone()[0]
    n = conn.execute("DELETE FROM _og_log WHERE pos <= ?", (cut,)).rowcount
    set_meta(conn, base_pos=str(cut), base_hash=cut_hash)
    return n
