"""Add a lock (and the wheels it ships) to a release tree built from the user's directory.

The user's directory is never written to: the lock and the wheels are staged in a temporary
directory, built as their own subtree (``.officegrid/``) and joined into the root manifest, so
they travel as ordinary content-addressed chunks (delta, caches and signatures apply).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from officegrid import cas
from officegrid.envs import LOCK_DIR
from officegrid.envs.lock import Lock
from officegrid.sync.manifest import DirEntry, encode_manifest, parse_manifest
from officegrid.sync.tree import Tree, build_tree


def add_lock(tree: Tree, lock: Lock, staging: Path) -> Tree:
    """Join ``.officegrid/lock.txt`` and ``.officegrid/wheels/*`` into ``tree`` (in place).

    Args:
        tree: the release tree of the user's directory (must not contain ``.officegrid``).
        lock: the resolved lock (``lock.wheels``: files to ship).
        staging: an empty temporary directory that must outlive the upload (the tree's chunks
            of the added files point into it).
    Returns:
        ``tree``, with a new ``root_hash``.
    Raises:
        ValueError: the tree already has a ``.officegrid`` entry.
    """
    sub = staging / LOCK_DIR
    (sub / "wheels" if lock.wheels else sub).mkdir(parents=True)
    (sub / "lock.txt").write_bytes(lock.text)
    for wheel in lock.wheels:
        dest = sub / "wheels" / wheel.name
        try:
            os.link(wheel, dest)  # no copy when the wheelhouse is on the same filesystem
        except OSError:
            shutil.copy2(wheel, dest)
    added = build_tree(sub, ignore_file=None)
    entries = parse_manifest(tree.manifests[tree.root_hash], where="/")
    if any(e.name == LOCK_DIR for e in entries):
        raise ValueError(f"the release already has a {LOCK_DIR} entry")
    entries.append(DirEntry(name=LOCK_DIR, hash=added.root_hash))
    old_root = tree.root_hash
    data = encode_manifest(entries)
    tree.root_hash = cas.hash_bytes(data)
    tree.manifests.update(added.manifests)
    tree.manifests[tree.root_hash] = data
    if not any(old_root.encode() in m for h, m in tree.manifests.items() if h != old_root):
        del tree.manifests[old_root]  # not referenced by any directory: nothing to upload
    for digest, where in added.files.items():
        tree.files.setdefault(digest, where)
    for digest, piece in added.chunks.items():
        tree.chunks.setdefault(digest, piece)
    tree.file_count += added.file_count
    tree.total_bytes += added.total_bytes
    return tree
