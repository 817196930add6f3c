"""A replica's state machine: bootstrap -> tail -> repair (-> tail ...).

- *bootstrap*: no replica file yet: download the master's snapshot (resumable, verified,
  :mod:`.snapshot`).
- *tail*: ask for the entries after the replica's position and apply each batch in one
  transaction with the new position (:mod:`.apply`).
- *repair*: when the position was purged, the epoch changed, a batch does not continue the chain,
  or an entry asks a table to be reconciled: sync the schema, compare key-range hashes with the
  master and fetch only differing rows (:mod:`.merkle`), all in one transaction that also moves
  the position to the master's head read before the repair; then tail again.

Readers of the replica (WAL) always see a state at some position, never half a batch or half a
repair.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from officegrid.sync.replication import apply, merkle, schema, seal, snapshot
from officegrid.sync.replication.errors import (
    ChainBroken,
    DataSourceError,
    NeedsRepair,
    ReplicaDiskFull,
)
from officegrid.sync.replication.schema import qi

log = logging.getLogger("officegrid.replica")

LONG_POLL = 5.0  # seconds a follower's log request may wait at the head for new entries


@dataclass
class Stats:
    """What a replica did (for ``data pull`` output and tests)."""

    bootstraps: int = 0
    batches: int = 0
    entries: int = 0
    repairs: int = 0
    repair_reasons: list[str] = field(default_factory=list)
    snapshot_bytes: int = 0
    snapshot_resumed_at: int = 0
    repair_bytes: int = 0
    last_repair: dict[str, Any] = field(default_factory=dict)


def check_target(path: str | Path, source: str) -> None:
    """Refuse to make ``path`` a replica of ``source`` when it holds something else: a file that
    is not SQLite, a SQLite database that is not a replica (someone's data), or a replica of
    another source (it would be silently repaired into this one).

    Raises:
        DataSourceError: naming the file and what it holds.
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb") as fh:
        if fh.read(16) != b"SQLite format 3\x00":
            raise DataSourceError(f"{path}: exists and is not a SQLite database; refusing to "
                                  "replace it (give another --to)")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        pos = apply.position(conn)
    except sqlite3.Error as exc:
        raise DataSourceError(f"{path}: cannot read it as a replica: {exc}") from None
    finally:
        conn.close()
    if pos is None:
        raise DataSourceError(f"{path}: is a SQLite database that is not a replica made by "
                              "`officegrid data pull`; refusing to replace it (give another "
                              "--to)")
    if pos.source and pos.source != source:
        raise DataSourceError(f"{path}: is a replica of data source {pos.source!r}, not "
                              f"{source!r} (give another --to)")


class Replica:
    """A local replica file of one data source.

    Args:
        path: the replica file (created by bootstrap).
        remote: a :class:`~.remote.LocalRemote` or :class:`~.remote.HttpRemote`.
        name: how this replica reports itself to the server (``data status``); None: no reports.
        batch_entries: log entries asked per batch.
        max_page_count: if set, ``PRAGMA max_page_count`` on the replica (a disk quota; tests).

    A bandwidth cap is the client's (``Client.bandwidth``): it paces every data answer (snapshot
    pieces, log batches, repair rows) as it is read from the socket.
    """

    def __init__(self, path: str | Path, remote: Any, name: str | None = None,
                 batch_entries: int = 1000, max_page_count: int | None = None) -> None:
        self.path = Path(path)
        self.remote = remote
        self.name = name
        self.batch_entries = batch_entries
        self.max_page_count = max_page_count
        self.stats = Stats()
        self._conn: sqlite3.Connection | None = None
        self._reported: tuple[str, int] | None = None
        self._data_version = 0  # PRAGMA data_version as this connection last saw it
        # Why the file is not trusted until a repair has checked it (see :mod:`.seal`).
        self._unverified: str | None = None

    # -------------------------------------------------------------- plumbing

    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            if self.path.exists():
                self._unverified = seal.broken(self.path) or self._unverified
            self._conn = apply.connect(self.path)
            if self.max_page_count:
                self._conn.execute(f"PRAGMA max_page_count={int(self.max_page_count)}")
            self._data_version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        return self._conn

    def written_by_others(self) -> bool:
        """True if another connection committed to the replica file since this one last
        looked (SQLite's ``PRAGMA data_version``, which only other connections' commits move):
        a replica is read-only for everyone else, so job code that opened the file and wrote to
        it made it differ from the master; :meth:`step` then repairs it."""
        if self._conn is None:
            return False
        seen = self._conn.execute("PRAGMA data_version").fetchone()[0]
        changed, self._data_version = seen != self._data_version, seen
        return changed

    def _distrust(self) -> str | None:
        """Why the file is not trusted now (None: trusted), noting a write by another program
        since the last look."""
        if self._unverified is None and self.written_by_others():
            self._unverified = "the replica file was written by another program"
        return self._unverified

    @property
    def verified(self) -> bool:
        """False while the file may differ from what this replica's log applied (it was not
        sealed at its last close, or changed since): :meth:`step` repairs it first."""
        return self._unverified is None

    def reseal(self) -> None:
        """Seal the file as it is after a commit (:mod:`.seal`), unless it is unverified or
        another program wrote it since the last look (then it is marked for repair)."""
        try:
            if self._distrust() is None and self.path.exists():
                seal.write(self.path)
            else:
                seal.remove(self.path)
        except OSError as exc:
            log.warning("replica %s: cannot write its seal (%s); the next start checks it "
                        "against the master", self.path, exc)

    def close(self) -> None:
        """Close the replica's connection and seal the file (:mod:`.seal`) unless it is still
        unverified, so the next open can tell whether anything wrote it meanwhile."""
        if self._conn is not None:
            self._distrust()  # a write by someone else since the last step is not ours to seal
            self._conn.close()
            self._conn = None
            self.reseal()  # the last connection's close may have checkpointed the WAL

    def position(self) -> apply.Position | None:
        if not self.path.exists():
            return None
        return apply.position(self.conn())

    # -------------------------------------------------------------- states

    def bootstrap(self) -> None:
        """Download and install the master's snapshot (resuming a partial download)."""
        self.close()
        info = self.remote.snapshot_info()

        def fetch(offset: int) -> Iterator[bytes]:
            return self.remote.snapshot_fetch(info["id"], offset)

        got = snapshot.download(info, self.path, fetch)
        seal.write(self.path)  # just verified against the snapshot's hash
        self._unverified = None
        self.stats.bootstraps += 1
        self.stats.snapshot_bytes += got["fetched"]
        self.stats.snapshot_resumed_at = got["resumed_at"]
        log.info("replica %s: snapshot at position %d (%d bytes)", self.path, info["pos"],
                 got["fetched"])

    def repair(self, reason: str) -> dict[str, Any]:
        """Anti-entropy repair (see the module docstring). Returns per-table merkle stats.

        Raises:
            ReplicaDiskFull: the disk filled up; the replica keeps its previous state.
        """
        log.info("replica %s: repair (%s)", self.path, reason)
        before = self.remote.bytes_received
        st = self.remote.status()
        master_schema = json.loads(st["schema"])
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._sync_schema(conn, master_schema)
            result = {t: merkle.repair_table(conn, t, self.remote)
                      for t in master_schema["tables"]}
            apply.set_meta(conn, epoch=st["epoch"], pos=st["pos"], hash=st["hash"],
                           schema=json.dumps(schema.describe(conn)))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:  # SQLITE_FULL may have rolled back already
                conn.execute("ROLLBACK")
            if apply.is_disk_full(exc):
                raise ReplicaDiskFull(f"replica disk full during repair: kept the previous "
                                      f"state ({exc})") from None
            raise
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._unverified = None
        self.reseal()
        self.stats.repairs += 1
        self.stats.repair_reasons.append(reason)
        self.stats.repair_bytes += self.remote.bytes_received - before
        self.stats.last_repair = result
        log.info("replica %s: repaired at position %d: %d of %d key ranges differed; rows "
                 "fetched %d, deleted %d; %d bytes received", self.path, st["pos"],
                 sum(r["dirty"] for r in result.values()),
                 sum(r["buckets"] for r in result.values()),
                 sum(r["fetched"] for r in result.values()),
                 sum(r["deleted"] for r in result.values()),
                 self.remote.bytes_received - before)
        return result

    @staticmethod
    def _sync_schema(conn: sqlite3.Connection, want: dict[str, Any]) -> None:
        have = schema.describe(conn)
        for name, ix in have["indexes"].items():
            if want["indexes"].get(name, {}).get("sql") != ix["sql"]:
                conn.execute(f"DROP INDEX IF EXISTS {qi(name)}")
        for t in have["tables"]:
            if t not in want["tables"]:
                conn.execute(f"DROP TABLE {qi(t)}")
        for t, td in want["tables"].items():
            cur = have["tables"].get(t)
            if cur is not None:
                d = schema.diff({"tables": {t: cur}, "indexes": {}},
                                {"tables": {t: td}, "indexes": {}})
                if d.destructive:
                    conn.execute(f"DROP TABLE {qi(t)}")
                    cur = None
                else:
                    for step in d.steps:
                        schema.apply_step(conn, step)
            if cur is None:
                conn.execute(td["sql"])
        for name, ix in want["indexes"].items():
            schema.apply_step(conn, {"kind": "create_index", "table": ix["table"],
                                     "index": name, "sql": ix["sql"]})

    def step(self, wait: float = 0.0, lock: Any = None) -> str:
        """Do one thing: ``"bootstrap"``, ``"repair"``, ``"applied"`` (a batch), ``"idle"``
        (nothing new, answered at once), ``"waited"`` (nothing new after the server held the
        request for ``wait``: ask again at once) or ``"raced"`` (someone else moved the replica
        while the request was out: the batch was dropped, ask again).

        Args:
            wait: long-poll seconds: the server holds the request until the master has entries
                after this replica's position (a remote without long polls answers at once).
            lock: a lock held while the replica file is read or changed but not while the
                request is out, so a long poll does not block readers of the position.

        Raises:
            ReplicaDiskFull: applying needs more space than there is (previous state kept).
            ApiError / Unreachable: the server refused or is away (the caller backs off).
        """
        guard = lock if lock is not None else contextlib.nullcontext()
        with guard:
            pos = self.position()
            if pos is None:
                self.bootstrap()
                self._report()
                return "bootstrap"
            distrust = self._distrust()
            if distrust is not None:
                log.warning("replica %s: %s: repairing", self.path, distrust)
                self.repair(distrust)
                self._report()
                return "repair"
        # The log request tells an HTTP server this replica's position (no separate report).
        in_log = bool(self.name) and getattr(self.remote, "reports_in_log", False)
        started = time.monotonic()
        try:
            batch = self.remote.log(pos.epoch, pos.pos, self.batch_entries,
                                    replica=self.name if in_log else None, wait=wait)
        except NeedsRepair as exc:
            with guard:
                if self.position() != pos:
                    return "raced"
                self.repair(str(exc))
                self._report()
            return "repair"
        if not batch["entries"]:
            held = wait > 0 and time.monotonic() - started >= wait / 2
            return "waited" if held else "idle"
        with guard:
            if self.position() != pos:
                return "raced"
            try:
                _, reconcile = apply.apply_batch(self.conn(), batch)
                if not reconcile:
                    self.reseal()
                self.stats.batches += 1
                self.stats.entries += len(batch["entries"])
                what = "applied"
                if reconcile:
                    # The batch is committed past the reconcile entry: until the repair is
                    # done, the file is owed one (a cut repair must not be sealed as whole).
                    self._unverified = f"reconcile tables {', '.join(sorted(set(reconcile)))}"
                    self.repair(self._unverified)
                    what = "repair"
            except ChainBroken as exc:
                self.repair(str(exc))
                what = "repair"
            if not in_log:
                self._report()
        return what

    def _report(self) -> None:
        if not self.name or getattr(self.remote, "reports_in_log", False):
            return  # the next log request carries the position
        pos = self.position()
        if pos is None or self._reported == (pos.epoch, pos.pos):
            return
        try:
            self.remote.report(self.name, pos.epoch, pos.pos)
            self._reported = (pos.epoch, pos.pos)
        except Exception as exc:  # noqa: BLE001 - reporting is best effort
            log.debug("replica report failed: %s", exc)

    def catch_up(self, max_steps: int = 100_000) -> apply.Position:
        """Step until idle (the replica is at the master's head as of the last answer)."""
        for _ in range(max_steps):
            if self.step() == "idle":
                break
        pos = self.position()
        assert pos is not None
        return pos

    def follow(self, stop: threading.Event, interval: float = 1.0, jitter: float = 0.5) -> None:
        """Keep stepping until ``stop`` is set, long-polling the server at the head
        (:data:`LONG_POLL`); sleep ``interval * (1 +- jitter)`` when a remote answered "nothing
        new" at once (no long polls) so a fleet of replicas does not poll in the same second."""
        failures = 0
        while not stop.is_set():
            try:
                what = self.step(wait=LONG_POLL)
                failures = 0
            except Exception as exc:  # noqa: BLE001 - a follower outlives server trouble
                failures += 1
                delay = min(60.0, interval * 2 ** min(failures, 6))
                log.warning("replica %s: %s (retry in about %.0fs)", self.path, exc, delay)
                stop.wait(random.uniform(0, delay))  # full jitter, per server
                continue
            if what == "idle":
                stop.wait(interval * (1 + random.uniform(-jitter, jitter)))
