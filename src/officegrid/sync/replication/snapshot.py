"""Consistent, compressed snapshots of a master at a position; resumable, verified download.

A snapshot is made from one read transaction of the master (SQLite's online backup of a
connection that holds a read transaction copies exactly what that transaction sees), together
with the sealed head ``(epoch, pos, hash)`` read in the same transaction. The copy loses the
triggers, the change log and the master's meta, gains the replica meta (:mod:`.apply`), is
vacuumed and zstd-compressed; its BLAKE3 (of the compressed bytes) names and verifies it.

The download (:func:`download`) appends to ``FILE.part`` and resumes from its size after a cut;
only a complete file whose hash matches is decompressed and renamed into place, so a cut-off
transfer is never opened as a database (design promise 4).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blake3
import filelock
import zstandard

from officegrid.sync.replication import apply as apply_mod
from officegrid.sync.replication import capture, changelog, master
from officegrid.sync.replication.errors import DataSourceError

ZSTD_LEVEL = 9
COPY_CHUNK = 1 << 20
# A new snapshot is made once the log after the latest one would cost a new replica more than
# this share of the snapshot to replay (the trial's fresh replica replayed 1,000 entries and
# reconciled a table after a snapshot made at position 9).
STALE_LOG_FRACTION = 0.25
LOG_COMPRESSION = 0.25  # about how much zstd shrinks a log batch's JSON (bench/replication)
UNSEALED_RETRIES = 3  # times a snapshot waits for the sealer to catch up with busy writers


def _info_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}.snapshot.json"


def current(out_dir: str | os.PathLike[str], name: str) -> dict[str, Any] | None:
    """The latest snapshot's info (``id, file, size, hash, epoch, pos, created``) or None."""
    try:
        info = json.loads(_info_path(Path(out_dir), name).read_text())
    except (OSError, ValueError):
        return None
    return info if (Path(out_dir) / info["file"]).is_file() else None


def ensure(master_path: str | os.PathLike[str], state_path: str | os.PathLike[str],
           out_dir: str | os.PathLike[str], name: str, **poll_kw: Any) -> dict[str, Any]:
    """The latest snapshot if a replica made from it can still tail the log (same epoch, position
    not purged) and the log after it is small next to it (at most :data:`STALE_LOG_FRACTION`
    of its size, so a new replica does not replay most of the table), else a new one.
    Serialized per source by a file lock."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(out / f".{name}.snapshot.lock")):
        res = master.poll(master_path, state_path, **poll_kw)
        h: changelog.Head = res["head"]
        info = current(out, name)
        if info and info["epoch"] == h.epoch and h.base_pos <= info["pos"] <= h.pos:
            conn = master.connect(master_path, readonly=True)
            try:
                behind = changelog.bytes_after(conn, info["pos"])
            finally:
                conn.close()
            # Log bodies are JSON, the snapshot zstd: compare with a zstd-sized share of the log.
            if behind * LOG_COMPRESSION <= info["size"] * STALE_LOG_FRACTION:
                return info
        return make(master_path, out, name)


def make(master_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
         name: str) -> dict[str, Any]:
    """Make a snapshot of a (polled) master now; return its info (see :func:`current`)."""
    out = Path(out_dir)
    tmp = out / f".{name}.{uuid.uuid4().hex}.sqlite"
    conn = master.connect(master_path)
    try:
        for attempt in range(UNSEALED_RETRIES + 1):
            conn.execute("BEGIN")
            h = changelog.head(conn)
            unsealed = conn.execute("SELECT 1 FROM _og_log WHERE body IS NULL LIMIT 1").fetchone()
            if unsealed and attempt < UNSEALED_RETRIES:
                # A writer got in after the poll: seal and take the copy again.
                conn.execute("COMMIT")
                with master.write_tx(conn):
                    changelog.seal(conn)
                continue
            # With unsealed entries left (a writer faster than us, rare) the copy holds their
            # effects as well; a replica replays them after it, which converges because entries
            # carry whole rows and keys (idempotent).
            schema = changelog.get_meta(conn)["schema"]
            dst = sqlite3.connect(tmp)
            try:
                conn.backup(dst)
            finally:
                dst.close()
            conn.execute("COMMIT")
            break
    finally:
        conn.close()
    try:
        _strip(tmp, name, h, schema)
        work = f".{name}.{uuid.uuid4().hex}.zst"
        hasher, size = blake3.blake3(), 0
        with open(tmp, "rb") as src, open(out / work, "wb") as f:
            writer = zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(f, closefd=False)
            while piece := src.read(COPY_CHUNK):
                writer.write(piece)
            writer.flush(zstandard.FLUSH_FRAME)
            f.flush()
            os.fsync(f.fileno())
        with open(out / work, "rb") as f:
            while piece := f.read(COPY_CHUNK):
                hasher.update(piece)
                size += len(piece)
        file = f"{name}.{hasher.hexdigest()[:32]}.zst"
        os.replace(out / work, out / file)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    info = {"id": hasher.hexdigest()[:32], "file": file, "size": size,
            "hash": hasher.hexdigest(), "epoch": h.epoch, "pos": h.pos, "created": time.time()}
    prev = current(out, name)
    ip = _info_path(out, name)
    ip.with_name(ip.name + ".tmp").write_text(json.dumps(info))
    os.replace(ip.with_name(ip.name + ".tmp"), ip)
    # Keep the previous file one round so a download in progress can still resume from it.
    keep = {info["file"], prev["file"] if prev else None}
    for f in out.glob(f"{name}.*.zst"):
        if f.name not in keep:
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
    return info


def _strip(path: Path, name: str, h: changelog.Head, schema: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("BEGIN")
        capture.drop_all(conn)
        conn.execute("DROP TABLE IF EXISTS _og_log")
        conn.execute("DROP TABLE IF EXISTS _og_meta")
        conn.execute("DELETE FROM sqlite_sequence WHERE name='_og_log'")
        apply_mod.init_meta(conn, source=name, epoch=h.epoch, pos=h.pos, hash=h.hash,
                            schema=schema)
        conn.execute("COMMIT")
        conn.execute("VACUUM")
    finally:
        conn.close()


def file_for(out_dir: str | os.PathLike[str], name: str, snap_id: str) -> Path:
    """The file of snapshot ``snap_id`` of source ``name`` (the current or the previous one).

    Raises:
        DataSourceError: no such snapshot (any more): the client starts over.
    """
    if not snap_id.isalnum():
        raise DataSourceError(f"bad snapshot id {snap_id!r}")
    f = Path(out_dir) / f"{name}.{snap_id}.zst"
    if not f.is_file():
        raise DataSourceError(f"snapshot {snap_id} of {name!r} is gone: start over")
    return f


def download(info: dict[str, Any], dest: str | os.PathLike[str],
             fetch: Callable[[int], Iterator[bytes]]) -> dict[str, int]:
    """Download snapshot ``info`` to replica file ``dest``, resuming a ``dest.part`` of the same
    snapshot; verify it; decompress it beside ``dest`` and rename it into place.

    ``fetch(offset)`` yields the compressed bytes from ``offset`` on. Returns
    ``{"fetched": bytes received now, "resumed_at": offset}``.

    Raises:
        DataSourceError: the downloaded file does not match the snapshot's hash (the partial
            file is removed, so the next try starts over).
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    marker = dest.with_name(dest.name + ".part.json")
    try:
        same = json.loads(marker.read_text()).get("hash") == info["hash"]
    except (OSError, ValueError):
        same = False
    if not same:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        marker.write_text(json.dumps({"hash": info["hash"], "id": info["id"]}))
    offset = part.stat().st_size if part.exists() else 0
    if offset > info["size"]:
        part.unlink()
        offset = 0
    fetched = 0
    if offset < info["size"]:
        with open(part, "ab") as f:
            for piece in fetch(offset):
                f.write(piece)
                fetched += len(piece)
            f.flush()
            os.fsync(f.fileno())
    hasher = blake3.blake3()
    with open(part, "rb") as f:
        while piece := f.read(COPY_CHUNK):
            hasher.update(piece)
    if hasher.hexdigest() != info["hash"]:
        part.unlink()
        raise DataSourceError(f"snapshot download does not match its hash ({offset + fetched} "
                              f"of {info['size']} bytes): discarded, try again")
    tmp = dest.with_name(dest.name + ".new")
    with open(part, "rb") as src, open(tmp, "wb") as out:
        zstandard.ZstdDecompressor().copy_stream(src, out)
        out.flush()
        os.fsync(out.fileno())
    for suffix in ("-wal", "-shm"):  # a stale WAL must never be replayed onto the new file
        with contextlib.suppress(FileNotFoundError):
            dest.with_name(dest.name + suffix).unlink()
    os.replace(tmp, dest)
    part.unlink()
    marker.unlink()
    return {"fetched": fetched, "resumed_at": offset}
