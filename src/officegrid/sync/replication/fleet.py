"""The replicas of one worker agent: a background thread per data source, applying changes
continuously in small jittered batches, with a free-disk check before a replica is taken, a
catch-up to a job's required position, and a WAL checkpoint between units.

A job replicates only the sources it declares (:meth:`ReplicaSet.ensure`). Jitter (``interval
* (1 +- jitter)`` between polls when idle, and a random start delay) spreads a fleet's requests
so a big master change does not reach the server from every worker in the same second.
"""

from __future__ import annotations

import logging
import random
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from officegrid.sync.replication.errors import DataSourceError
from officegrid.sync.replication.master import check_name
from officegrid.sync.replication.replica import LONG_POLL, Replica

log = logging.getLogger("officegrid.replicas")

DISK_HEADROOM = 3.0  # a replica needs its snapshot decompressed (often 3x) plus the download
MIN_FREE_BYTES = 256 << 20  # never fill the owner's disk to the brim


class _Closed(Exception):
    """The follower was closed while its request was out: the file is not touched again."""


class _FileGuard:
    """A follower's lock that refuses entry once the follower is closed: a step whose long
    poll returns after the close must not reopen the file (and so break its seal)."""

    def __init__(self, follower: _Follower) -> None:
        self.follower = follower

    def __enter__(self) -> None:
        self.follower.lock.acquire()
        if self.follower.closed:
            self.follower.lock.release()
            raise _Closed

    def __exit__(self, *exc: object) -> None:
        self.follower.lock.release()


class _Follower:
    def __init__(self, replica: Replica, interval: float, jitter: float,
                 may_transfer: Callable[[], bool] | None = None) -> None:
        self.replica = replica
        self.may_transfer = may_transfer
        self.lock = threading.Lock()
        self.closed = False
        self.guard = _FileGuard(self)
        self.stop = threading.Event()
        self.error: str | None = None
        # [epoch, pos] after the last step, read without the lock (a bootstrap holds it for the
        # whole download, and lease requests must not wait for that).
        self.at: list[Any] | None = self._position()
        self.interval = interval
        self.jitter = jitter
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"replica-{replica.path.stem}")

    def _run(self) -> None:
        self.stop.wait(random.uniform(0, self.interval * self.jitter))  # spread the fleet
        failures = 0
        while not self.stop.is_set():
            if self.may_transfer is not None and not self.may_transfer():
                # Outside the transfer window: no snapshot, no log batch (the server leases
                # no unit needing a newer position meanwhile).
                self.stop.wait(self.interval * (1 + random.uniform(-self.jitter, self.jitter)))
                continue
            try:
                # The lock is held while the replica file is read or changed, not while a
                # long poll waits at the head (lease requests read the position meanwhile).
                what = self.replica.step(wait=LONG_POLL, lock=self.guard)
                with self.guard:
                    self.at = self._position()
                self.error, failures = None, 0
            except _Closed:
                return
            except Exception as exc:  # noqa: BLE001 - keep following; report the error
                if self.stop.is_set():
                    return  # closing: the request was cut by the client's close
                failures += 1
                self.error = str(exc)
                log.warning("replica %s: %s", self.replica.path, exc)
                self.stop.wait(random.uniform(0, min(60.0, self.interval * 2 ** min(failures, 6))))
                continue
            if what == "idle":
                self.stop.wait(self.interval * (1 + random.uniform(-self.jitter, self.jitter)))

    def close(self, timeout: float | None = None) -> bool:
        """Stop following and close the replica, which seals it (:mod:`.seal`). Waits up to
        ``timeout`` seconds (None: for ever) for a step that is reading or changing the file,
        never for a long poll in flight. Returns False when that step was still running: the
        file is left unsealed (consistent, as every change is one transaction) and the next
        start checks it against the master."""
        self.stop.set()
        if not self.lock.acquire(timeout=-1 if timeout is None else timeout):
            log.info("replica %s: still busy (a snapshot or a repair): left unsealed, it is "
                     "checked at the next start", self.replica.path)
            return False
        try:
            self.closed = True
            self.replica.close()
        finally:
            self.lock.release()
        return True

    def _position(self) -> list[Any] | None:
        pos = self.replica.position()
        # An unverified file's position says nothing about its rows: claim none until checked.
        return None if pos is None or not self.replica.verified else [pos.epoch, pos.pos]


class ReplicaSet:
    """A worker's replicas under ``root`` (``root/NAME.sqlite``).

    Args:
        root: directory of the replica files.
        remote_for: ``name -> remote`` (e.g. ``lambda n: HttpRemote(client, n)``).
        replica_name: how the replicas report themselves (the worker's name).
        interval: seconds between polls when a replica is idle (jittered by ``jitter``).
        batch_entries: most log entries per request and applied transaction (readers are never
            blocked: WAL; about 1 MB of bodies at most; 1,000 entries cost ~8% fewer bytes than
            200, per bench/replication.py, as one answer compresses more together).
        free_bytes: ``() -> free bytes`` on the replica disk (default: ``shutil.disk_usage``).
        may_transfer: ``() -> bool``, False outside the agent's transfer window: followers
            then fetch nothing until it opens (default: always).
    """

    def __init__(self, root: str | Path, remote_for: Callable[[str], Any],
                 replica_name: str | None = None, interval: float = 1.0, jitter: float = 0.5,
                 batch_entries: int = 1000,
                 free_bytes: Callable[[], int] | None = None,
                 may_transfer: Callable[[], bool] | None = None) -> None:
        self.may_transfer = may_transfer
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.remote_for = remote_for
        self.replica_name = replica_name
        self.interval = interval
        self.jitter = jitter
        self.batch_entries = batch_entries
        self.free_bytes = free_bytes or (lambda: shutil.disk_usage(self.root).free)
        self._followers: dict[str, _Follower] = {}
        self._lock = threading.Lock()
        self._used: dict[str, float] = {}  # name -> UNIX time a unit or a job last asked for it
        # name -> set when its drop has closed and deleted the replica (ensure() waits for it).
        self._dropping: dict[str, threading.Event] = {}
        self._closed = False  # set by close(): no new follower may start (and unseal a file)

    def path(self, name: str) -> Path:
        return self.root / f"{check_name(name)}.sqlite"

    def ensure(self, names: list[str]) -> None:
        """Follow each of ``names`` (starting a thread for new ones).

        Raises:
            DataSourceError: not enough free disk for a new replica's snapshot, or the set is
                closed (the agent is stopping).
        """
        for name in names:
            with self._lock:
                if self._closed:
                    raise DataSourceError(f"replica {name!r}: the agent is stopping")
                while name in self._dropping:  # its file is being deleted: start afresh after
                    dropping = self._dropping[name]
                    self._lock.release()
                    try:
                        dropping.wait()
                    finally:
                        self._lock.acquire()
                self._used[name] = time.time()
                if name in self._followers:
                    continue
                remote = self.remote_for(name)
                rep = Replica(self.path(name), remote, name=self.replica_name,
                              batch_entries=self.batch_entries)
                if rep.position() is None:
                    need = int(remote.snapshot_info()["size"] * DISK_HEADROOM) + MIN_FREE_BYTES
                    free = self.free_bytes()
                    if free < need:
                        rep.close()
                        raise DataSourceError(
                            f"not enough free disk for a replica of {name!r}: {free:,} bytes "
                            f"free, {need:,} needed")
                f = _Follower(rep, self.interval, self.jitter, self.may_transfer)
                self._followers[name] = f
                f.thread.start()

    def positions(self) -> dict[str, list[Any]]:
        """``{name: [epoch, pos]}`` of every followed replica that has a position (as of its
        last step; never waits for a step in progress)."""
        return {name: f.at for name, f in list(self._followers.items()) if f.at is not None}

    def catch_up(self, name: str, min_pos: int, timeout: float = 300.0,
                 epoch: str | None = None) -> list[Any]:
        """Step ``name``'s replica until it is in the master's current epoch at a position of
        at least ``min_pos`` (a job's requirement at submit time). Returns ``[epoch, pos]``.

        The replica asks the master at least once (one log request, answered at once): a
        position number alone does not prove the replica's history is still the master's (a
        master restored from a backup starts a new epoch at the same numbers), while an answer
        in the replica's epoch does. If the server cannot be reached, a replica already in
        ``epoch`` (the job's) at ``min_pos`` is used as it is.

        Raises:
            TimeoutError: not there within ``timeout`` seconds.
            ApiError / Unreachable: the server could not confirm, and the replica is not
                already in ``epoch`` at ``min_pos``.
        """
        f = self._follower(name)
        deadline = time.monotonic() + timeout
        confirmed = False  # a step in this call proved the replica's epoch is the master's
        while True:
            try:
                with f.guard:
                    pos = f.replica.position()
                    if confirmed and pos is not None and pos.pos >= min_pos:
                        return [pos.epoch, pos.pos]
                    try:
                        what = f.replica.step()
                    except Exception:
                        # Server away: a verified replica already in the job's epoch will do.
                        if (pos is not None and f.replica.verified and pos.epoch == epoch
                                and pos.pos >= min_pos):
                            return [pos.epoch, pos.pos]
                        raise
                    f.at = f._position()
                    confirmed = what != "raced"
            except _Closed:  # dropped meanwhile: follow it afresh
                f, confirmed = self._follower(name), False
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica {name!r} did not reach position {min_pos} in "
                                   f"{timeout:.0f}s ({f.error or 'no error'})")
            if what == "idle":  # the master has not got there yet (sealing): ask again soon
                time.sleep(min(0.2, self.interval))

    def _follower(self, name: str) -> _Follower:
        """``name``'s follower, started if need be (again, if :meth:`drop` just removed it)."""
        while True:
            self.ensure([name])
            with self._lock:
                f = self._followers.get(name)
            if f is not None:
                return f

    def usage(self) -> list[tuple[float, int, str]]:
        """``(last used, bytes on disk, name)`` of every replica file under ``root``, followed
        or left by an earlier run. Last used: when a unit or a job last asked for it
        (:meth:`ensure`, :meth:`catch_up`), else the file's mtime."""
        out = []
        for path in self.root.glob("*.sqlite"):
            name = path.stem
            size = sum(_blocks(f) for f in _files_of(path))
            try:
                used = self._used.get(name) or path.stat().st_mtime
            except FileNotFoundError:
                continue
            out.append((used, size, name))
        return out

    def drop(self, name: str, busy: Callable[[str], bool] | None = None) -> int:
        """Stop following ``name`` and delete its replica (the file, its ``-wal``/``-shm`` and
        any partial snapshot download) to free disk. Returns the bytes freed (0: kept, or
        another drop of ``name`` is in progress).

        ``busy(name)`` is asked while this set's lock is held, and the replica is kept if it
        says True: a caller that registers a unit as reading ``name`` *before* it asks for the
        replica's path (:meth:`catch_up`) can never have the file deleted under it, because
        :meth:`ensure` (which :meth:`catch_up` calls) waits for a drop in progress and then
        starts the replica afresh. The set's lock is held only for that check and the removal
        from the set: stopping the thread and waiting for a step in progress (a bootstrap or a
        repair may take minutes) happen outside it, so other sources' ensure/catch_up/positions
        go on meanwhile.
        """
        with self._lock:
            if name in self._dropping or (busy is not None and busy(name)):
                return 0
            f = self._followers.pop(name, None)
            self._used.pop(name, None)
            done = self._dropping[name] = threading.Event()
        freed = 0
        try:
            if f is not None:
                f.close()  # waits for a step in progress (not for a long poll)
            for path in _files_of(self.path(name)):
                size = _blocks(path)
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                freed += size
        finally:
            with self._lock:
                del self._dropping[name]
            done.set()
        if freed:
            log.info("replica %s dropped (%d bytes freed)", name, freed)
        return freed

    def checkpoint(self, truncate: bool = True) -> None:
        """Checkpoint every replica's WAL between units, so it cannot grow without bound.
        ``truncate``: also empty the WAL file (only when no unit is reading: a TRUNCATE
        checkpoint waits for readers); else a PASSIVE checkpoint copies what it can."""
        mode = "TRUNCATE" if truncate else "PASSIVE"
        for f in list(self._followers.values()):
            try:
                with f.guard:
                    if f.replica.position() is not None:
                        f.replica.conn().execute(f"PRAGMA wal_checkpoint({mode})")
                        f.replica.reseal()
            except _Closed:
                continue

    def close(self, timeout: float = 10.0) -> None:
        """Stop every follower and close (and seal) its replica, waiting up to ``timeout``
        seconds in all for steps in progress (see :meth:`_Follower.close`); long polls in
        flight are not waited for (their answers are dropped). No follower starts after."""
        with self._lock:
            self._closed = True
            followers = list(self._followers.values())
            self._followers.clear()
        for f in followers:
            f.stop.set()
        deadline = time.monotonic() + timeout  # one wait for all, not one per replica
        for f in followers:
            f.close(max(0.0, deadline - time.monotonic()))


def _files_of(path: Path) -> list[Path]:
    """A replica file and the files SQLite and the snapshot download keep beside it."""
    return [path] + [path.with_name(path.name + suffix)
                     for suffix in ("-wal", "-shm", "-journal", ".part", ".part.json", ".seal")]


def _blocks(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0
