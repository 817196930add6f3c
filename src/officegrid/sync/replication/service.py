"""What the server offers replicas for one master: status, log batches, snapshots, range hashes.

One :class:`MasterService` per data source file; the server's data router and the in-process
:class:`~officegrid.sync.replication.remote.LocalRemote` (tests, tools) call the same methods.
Every read first polls the master (:func:`.master.poll`), at most every ``poll_interval`` seconds,
so schema changes, lost triggers and restores are noticed before anything is served.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from officegrid.sync.replication import changelog, master, merkle, snapshot
from officegrid.sync.replication.errors import DataSourceError


@dataclass
class Retention:
    """Change-log retention: entries older than ``max_age`` seconds or beyond ``max_bytes`` of
    entry text are purged (None: no limit)."""

    max_age: float | None = 7 * 86400.0
    max_bytes: int | None = 1 << 30


RETENTION_EVERY = 30.0  # seconds between retention runs (each scans the log under the lock)

_polled: dict[str, float] = {}
_retained: dict[str, float] = {}
_heads: dict[str, changelog.Head] = {}  # master path -> head as of this process's last poll
_poll_lock = threading.Lock()


class MasterService:
    """Replica-facing reads of the master ``<data_dir>/<name>.sqlite``.

    Files: the master, ``<name>.state.json`` (the server's record of the log head, kept outside
    the master to detect restores) and ``snapshots/`` (compressed snapshots).
    """

    def __init__(self, data_dir: str | Path, name: str, retention: Retention | None = None,
                 poll_interval: float = 0.0) -> None:
        self.name = master.check_name(name)
        self.dir = Path(data_dir)
        self.path = self.dir / f"{name}.sqlite"
        self.state = self.dir / f"{name}.state.json"
        self.snapshots = self.dir / "snapshots"
        self.retention = retention or Retention()
        self.poll_interval = poll_interval

    def exists(self) -> bool:
        return self.path.is_file()

    def require(self) -> None:
        if not self.exists():
            raise FileNotFoundError(f"no data source {self.name!r}")

    def poll(self, force: bool = False) -> dict[str, Any]:
        """Poll the master (see :func:`.master.poll`) unless polled within ``poll_interval``."""
        self.require()
        key = str(self.path)
        now = time.monotonic()
        if not force and now - _polled.get(key, -1e9) < self.poll_interval:
            return {}
        with _poll_lock:
            _polled[key] = now
            # Retention scans the whole log (by age and by size) inside the master's write
            # transaction, which blocks the master's writers: it need not run every 0.2 s.
            retain = force or now - _retained.get(key, -1e9) >= RETENTION_EVERY
            if retain:
                _retained[key] = now
        out = master.poll(self.path, self.state,
                          max_age=self.retention.max_age if retain else None,
                          max_bytes=self.retention.max_bytes if retain else None)
        _heads[key] = out["head"]
        return out

    def poll_due(self) -> bool:
        """Whether :meth:`poll` would poll the master now (not polled within the interval)."""
        return time.monotonic() - _polled.get(str(self.path), -1e9) >= self.poll_interval

    def known_head(self) -> changelog.Head | None:
        """The master's head as of this process's last poll (no I/O), or None."""
        return _heads.get(str(self.path))

    def _read(self):
        conn = master.connect(self.path, readonly=True)
        conn.execute("BEGIN")
        return conn

    def status(self) -> dict[str, Any]:
        """``{"name", "epoch", "pos", "hash", "base_pos", "schema" (JSON text), "retained",
        "epoch_reason", "tables": {table: rows}}``."""
        self.poll()
        conn = self._read()
        try:
            h = changelog.head(conn)
            m = changelog.get_meta(conn)
            schema = json.loads(m["schema"])
            tables = {t: conn.execute(f'SELECT count(*) FROM "{t.replace(chr(34), chr(34) * 2)}"'
                                      ).fetchone()[0] for t in schema["tables"]}
            return {"name": self.name, "epoch": h.epoch, "pos": h.pos, "hash": h.hash,
                    "base_pos": h.base_pos, "schema": m["schema"],
                    "retained": changelog.retained(conn), "epoch_reason": m.get("epoch_reason"),
                    "tables": tables}
        finally:
            conn.close()

    def log(self, epoch: str, after: int, max_entries: int = 1000,
            max_bytes: int = 1 << 20) -> dict[str, Any]:
        """A batch of sealed entries after ``after`` (see :func:`.changelog.batch`).

        Raises:
            NeedsRepair: other epoch, purged position, or a position ahead of the head.
        """
        self.poll()
        conn = self._read()
        try:
            return changelog.batch(conn, epoch, after, max_entries, max_bytes)
        finally:
            conn.close()

    def snapshot_info(self) -> dict[str, Any]:
        self.require()
        return snapshot.ensure(self.path, self.state, self.snapshots, self.name,
                               max_age=self.retention.max_age,
                               max_bytes=self.retention.max_bytes)

    def snapshot_file(self, snap_id: str) -> Path:
        return snapshot.file_for(self.snapshots, self.name, snap_id)

    def ranges(self, table: str, bucket_rows: int) -> list[list[Any]]:
        conn = self._read()
        try:
            self._table(conn, table)
            return merkle.bucket_hashes(conn, table, bucket_rows)
        finally:
            conn.close()

    def row_hashes(self, table: str, ranges: list[list[Any]], size: int) -> list[dict]:
        conn = self._read()
        try:
            self._table(conn, table)
            return merkle.row_hashes(conn, table, ranges, size)
        finally:
            conn.close()

    def rows(self, table: str, keys: list[list[Any]] | None = None,
             ranges: list[list[Any]] | None = None) -> dict[str, Any]:
        conn = self._read()
        try:
            self._table(conn, table)
            return merkle.fetch_rows(conn, table, keys, ranges)
        finally:
            conn.close()

    @staticmethod
    def _table(conn, table: str) -> None:
        schema = json.loads(changelog.get_meta(conn)["schema"])
        if table not in schema["tables"]:
            raise DataSourceError(f"no replicated table {table!r}")
