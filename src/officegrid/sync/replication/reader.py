"""How job code reads a replica: one read-only connection holding one read transaction.

Standard library only (``sqlite3``), so the worker's runner -- which runs inside release
environments where officegrid is not importable -- can carry the same few lines. The replica is
in WAL mode: while the background thread applies new batches, a reader that opened its
transaction earlier keeps seeing the state at its position (SQLite WAL snapshot isolation,
https://sqlite.org/wal.html), and the position it reports comes from the same transaction.
"""

from __future__ import annotations

import os
import sqlite3
from urllib.parse import quote


def open_snapshot(path: str | os.PathLike[str]) -> tuple[sqlite3.Connection, dict]:
    """Open replica ``path`` read-only (``mode=ro`` URI) and start one read transaction.

    Returns ``(connection, {"epoch", "pos"})``: every query on the connection sees the replica
    as of that position until ``connection.rollback()``/``close()``. Writes raise
    ``sqlite3.OperationalError`` ("attempt to write a readonly database").

    Raises:
        sqlite3.OperationalError: the file is missing or not a replica.
    """
    uri = "file:" + quote(os.path.abspath(os.fspath(path))) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA query_only=ON")
    conn.execute("BEGIN")
    # The first read fixes the snapshot; reading the position here ties it to the data.
    meta = dict(conn.execute("SELECT k, v FROM _og_replica WHERE k IN ('epoch', 'pos')"))
    if "pos" not in meta:
        conn.close()
        raise sqlite3.OperationalError(f"{path}: not a replica (no position)")
    return conn, {"epoch": meta["epoch"], "pos": int(meta["pos"])}
