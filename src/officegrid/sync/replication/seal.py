"""A replica's seal: proof that its file has not changed since its follower's last commit.

While a follower has the replica open, ``PRAGMA data_version`` tells it when another program
wrote the file (:meth:`.replica.Replica.written_by_others`). Between runs nothing watches, so
after each committed change (a snapshot installed, a batch applied, a repair, a checkpoint) and
at a clean close the follower writes ``NAME.sqlite.seal`` beside the file: the identity and
change times of the database file and its WAL (``st_ino``, ``st_size``, ``st_mtime_ns``,
``st_ctime_ns``; a program can set mtime back, but not ctime). The next open compares. A
follower killed while idle at the head (most of its life) leaves a matching seal and its
replica is trusted as it is; one killed during a write, a power loss, or any other program's
write leaves a mismatch, and the replica is not trusted until a range-hash check against the
master (:func:`.merkle.repair_table`) has made it equal.

This catches accidents (a job or a person that opened the file for writing, a restored backup,
a sync tool) and a crash mid-write; it is not a defence against someone who controls the
worker's disk.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

SUFFIX = ".seal"


def seal_path(path: Path) -> Path:
    return path.with_name(path.name + SUFFIX)


def _stamp(path: Path) -> dict[str, Any] | None:
    """Identity and change times of ``path`` and of its WAL (None: missing or empty, as
    SQLite deletes the WAL at a clean close and a reader may leave an empty one)."""

    def one(p: Path) -> list[int] | None:
        try:
            st = p.stat()
        except FileNotFoundError:
            return None
        return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]

    wal = one(path.with_name(path.name + "-wal"))
    return {"db": one(path), "wal": wal if wal and wal[1] else None}


def write(path: Path) -> None:
    """Seal ``path`` as it is now (after its last writing connection closed).

    Raises:
        OSError: the seal could not be written (the next open then checks the replica).
    """
    tmp = seal_path(path).with_suffix(SUFFIX + ".tmp")
    tmp.write_text(json.dumps(_stamp(path)))
    os.replace(tmp, seal_path(path))


def broken(path: Path) -> str | None:
    """Why ``path`` cannot be trusted as its follower left it, or None when its seal matches
    (to be called before the file is opened)."""
    try:
        saved = json.loads(seal_path(path).read_text())
    except FileNotFoundError:
        return ("the replica has no seal (made by an older officegrid, or its seal was lost): "
                "checking it against the master")
    except (OSError, ValueError):
        saved = None
    if saved != _stamp(path):
        return ("the replica file changed after its follower's last commit (a write cut short "
                "by a crash, or another program)")
    return None


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        seal_path(path).unlink()
