"""A stat cache: files whose size, mtime, ctime and inode did not change are not re-hashed.

Kept in a small SQLite file (rsync and git make the same bet: a file whose stat data is unchanged
has unchanged content). Entries are keyed by absolute path and remember the chunking parameters,
so changing them invalidates the cache.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path

from officegrid.sync.chunking import AVG_SIZE, MAX_SIZE, MIN_SIZE, WHOLE_FILE_MAX, Chunk

PARAMS = f"cdc1:{MIN_SIZE}:{AVG_SIZE}:{MAX_SIZE}:{WHOLE_FILE_MAX}"


class StatCache:
    """Remembers (digest, size, chunks) of files by their stat data.

    Args:
        path: the SQLite file (created with its parent directory).
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, stat TEXT NOT NULL, "
            "digest TEXT NOT NULL, size INTEGER NOT NULL, chunks TEXT NOT NULL)")
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _key(st: os.stat_result) -> str:
        return f"{PARAMS}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"

    def get(self, path: Path, st: os.stat_result) -> tuple[str, int, list[Chunk]] | None:
        """The cached (digest, size, chunks) if ``st`` still matches, else None."""
        with self._lock:
            row = self._db.execute("SELECT stat, digest, size, chunks FROM files WHERE path=?",
                                   (str(path),)).fetchone()
        if row is None or row[0] != self._key(st):
            self.misses += 1
            return None
        self.hits += 1
        return row[1], row[2], [Chunk(*c) for c in json.loads(row[3])]

    def put(self, path: Path, st: os.stat_result, digest: str, size: int,
            chunks: list[Chunk]) -> None:
        data = json.dumps([[c.offset, c.size, c.hash] for c in chunks])
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)",
                             (str(path), self._key(st), digest, size, data))

    def commit(self) -> None:
        with self._lock:
            self._db.commit()

    def close(self) -> None:
        self.commit()
        self._db.close()
