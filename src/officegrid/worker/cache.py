"""Bounds on a worker's release cache: keep the releases in use and the most recently used
few; drop chunk blobs no kept release needs once the cache is over its size cap; keep the work
dir in its disk budget (replicas no unit reads and no job needs go last)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from officegrid.cas import BlobError, ContentStore
from officegrid.sync.manifest import Entry, ManifestError, parse_manifest, tree_blobs

if TYPE_CHECKING:
    from officegrid.envs.build import EnvBuilder
    from officegrid.sync.replication.fleet import ReplicaSet

log = logging.getLogger("officegrid.worker.cache")

REPLICA_NEEDED_FOR = 600.0  # s: a replica asked for this recently is needed by a job: kept


def _release_blobs(cache: ContentStore, release_id: str) -> set[str]:
    """Every manifest and chunk of a release, from the cached manifests (best effort)."""

    def entries_of(digest: str, where: str) -> list[Entry] | None:
        try:
            return parse_manifest(cache.read(digest), where=where)
        except (BlobError, ManifestError):
            return None

    return {digest for _kind, digest, _where in tree_blobs(release_id, entries_of)}


def prune_worker_cache(releases_dir: Path, cache: ContentStore, in_use: set[str],
                       keep: int = 3, max_bytes: int = 5 << 30,
                       envs: EnvBuilder | None = None) -> tuple[int, int]:
    """Remove materialized releases beyond the ``keep`` most recently used (never one in
    ``in_use``), then, if the chunk cache holds more than ``max_bytes``, the chunks no kept
    release references, least recently written first. With ``envs``, the environments no kept
    release uses are removed too. Returns (releases removed, blobs removed).
    """
    dirs = sorted((d for d in releases_dir.iterdir() if len(d.name) == 64 and d.is_dir()),
                  key=lambda d: d.stat().st_mtime, reverse=True) if releases_dir.is_dir() else []
    kept = [d.name for d in dirs[:keep]] + [r for r in in_use]
    removed_releases = 0
    for d in dirs[keep:]:
        if d.name not in in_use:
            shutil.rmtree(d, ignore_errors=True)
            removed_releases += 1
    if envs is not None:
        removed_envs = envs.prune(set(kept))
        if removed_envs:
            log.info("cache: removed %d environments no kept release uses", removed_envs)
    paths = []
    total = 0
    for digest in cache:
        p = cache.path(digest)
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        total += st.st_size
        paths.append((st.st_mtime, st.st_size, digest))
    removed_blobs = 0
    if total > max_bytes:
        needed: set[str] = set()
        for rid in kept:
            needed |= _release_blobs(cache, rid)
        for _mtime, size, digest in sorted(paths):
            if total <= max_bytes:
                break
            if digest in needed:
                continue
            try:
                os.unlink(cache.path(digest))
            except FileNotFoundError:
                continue
            total -= size
            removed_blobs += 1
    if removed_releases or removed_blobs:
        log.info("cache: removed %d releases and %d blobs", removed_releases, removed_blobs)
    return removed_releases, removed_blobs


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                continue
    return total


def enforce_disk_budget(work_dir: Path, budget: int, cache: ContentStore, in_use: set[str],
                        envs: EnvBuilder | None = None, replicas: ReplicaSet | None = None,
                        replica_busy: Callable[[str], bool] | None = None,
                        needed_for: float = REPLICA_NEEDED_FOR, now: float | None = None) -> int:
    """Keep the whole work dir within ``budget`` bytes (disk blocks used): releases,
    environments, the chunk cache, data source replicas and attempt logs all count; what was
    used least recently (mtime) is evicted first among what may go: materialized releases not
    in ``in_use``, environments no remaining release uses, cached chunks.

    Then, still over budget and given ``replicas`` (the agent's ``ReplicaSet``), replicas go,
    least recently used first (a replica costs a snapshot to get back, so it goes after what
    is cheap to fetch again), except one a running unit reads (``replica_busy(name)`` True,
    asked under the set's lock: see ``ReplicaSet.drop``) or one a job needs now (asked for by
    a unit or the server's lease answer within ``needed_for`` seconds: dropping it would only
    make the agent fetch it again). Dropping stops its follower and deletes the file with its
    ``-wal``/``-shm``.

    Returns the bytes freed. Logs a warning when what may not go alone exceeds the budget.
    """
    items: list[tuple[float, int, str, Path]] = []  # (last used, bytes, kind, path)
    fixed = 0  # bytes that may not be evicted
    releases = work_dir / "releases"
    if releases.is_dir():
        for d in releases.iterdir():
            if len(d.name) != 64 or not d.is_dir():
                fixed += _tree_size(d) if d.is_dir() else 0
                continue
            size = _tree_size(d)
            if d.name in in_use:
                fixed += size
            else:
                items.append((d.stat().st_mtime, size, "release", d))
    envs_dir = work_dir / "envs"
    if envs_dir.is_dir():
        fixed += _tree_size(envs_dir)  # attributed below when an env may go
    for digest in cache:
        path = cache.path(digest)
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        items.append((st.st_mtime, st.st_blocks * 512, "chunk", path))
    for other in ("data", "attempts", "logs"):
        if (work_dir / other).is_dir():
            fixed += _tree_size(work_dir / other)
    total = fixed + sum(size for _t, size, _k, _p in items)
    freed = 0
    if total <= budget:
        return 0
    removed_releases: set[str] = set()
    for _t, size, kind, path in sorted(items):
        if total <= budget:
            break
        if kind == "release":
            shutil.rmtree(path, ignore_errors=True)
            removed_releases.add(path.name)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
        total -= size
        freed += size
    if envs is not None and removed_releases and envs_dir.is_dir():
        before = _tree_size(envs_dir)
        kept = {d.name for d in releases.iterdir()} if releases.is_dir() else set()
        envs.prune(kept | in_use)
        gone = before - _tree_size(envs_dir)
        total -= gone
        freed += gone
    if total > budget and replicas is not None:
        now = time.time() if now is None else now
        for used, _size, name in sorted(replicas.usage()):
            if total <= budget:
                break
            if used > now - needed_for:
                break  # this one and all after it were asked for recently
            gone = replicas.drop(name, busy=replica_busy)
            total -= gone
            freed += gone
    if total > budget:
        log.warning("disk budget: the work dir uses %d bytes, over its budget of %d, and "
                    "nothing else may be evicted (releases in use, environments, replicas "
                    "in use or needed)",
                    total, budget)
    elif freed:
        log.info("disk budget: freed %d bytes (least recently used first)", freed)
    return freed
