"""Bounds on a worker's release cache: keep the releases in use and the most recently used
few; drop chunk blobs no kept release needs once the cache is over its size cap."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from officegrid.cas import BlobError, ContentStore
from officegrid.sync.manifest import ManifestError, parse_manifest

log = logging.getLogger("officegrid.worker.cache")


def _release_blobs(cache: ContentStore, release_id: str) -> set[str]:
    """Every manifest and chunk of a release, from the cached manifests (best effort)."""
    out: set[str] = set()
    stack = [release_id]
    while stack:
        digest = stack.pop()
        out.add(digest)
        try:
            entries = parse_manifest(cache.read(digest), where=digest[:12])
        except (BlobError, ManifestError):
            continue
        for e in entries:
            if e.type == "dir":
                stack.append(e.hash)
            else:
                out.update(h for h, _ in e.chunks)
    return out


def prune_worker_cache(releases_dir: Path, cache: ContentStore, in_use: set[str],
                       keep: int = 3, max_bytes: int = 5 << 30) -> tuple[int, int]:
    """Remove materialized releases beyond the ``keep`` most recently used (never one in
    ``in_use``), then, if the chunk cache holds more than ``max_bytes``, the chunks no kept
    release references, least recently written first. Returns (releases removed, blobs removed).
    """
    dirs = sorted((d for d in releases_dir.iterdir() if len(d.name) == 64 and d.is_dir()),
                  key=lambda d: d.stat().st_mtime, reverse=True) if releases_dir.is_dir() else []
    kept = [d.name for d in dirs[:keep]] + [r for r in in_use]
    removed_releases = 0
    for d in dirs[keep:]:
        if d.name not in in_use:
            shutil.rmtree(d, ignore_errors=True)
            removed_releases += 1
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
