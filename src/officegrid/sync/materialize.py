"""Materialize a release on a worker: fetch only what is missing, then appear atomically.

:func:`materialize` turns a release id into a directory. It walks the release's Merkle tree of
manifests level by level, fetching (in batches, one call per level or batch) only the manifests
its cache lacks, so an edit costs the manifests on the path from the root to the change; then it
fetches only the missing chunks. Everything fetched is verified against its hash and kept in the
worker's :class:`~officegrid.cas.ContentStore`. The tree is then written into a staging
directory next to ``dest``, every file fsynced and given its mode, a completion marker
(``.officegrid-release``, holding the release id) written last, and the staging directory renamed
to ``dest`` in one step: ``dest`` is either absent or complete, never half-written, and a
transfer that was cut off is never used (promise 4).

:func:`pull_into` is the same for ``officegrid release pull CHANNEL --to DIR``: it makes an
existing directory equal to a release (like ``rsync -a --delete``), guarded by a
``.officegrid-pull`` marker.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import blake3

from officegrid import cas
from officegrid.sync.manifest import DirEntry, Entry, FileEntry, join, parse_manifest
from officegrid.sync.tree import PULL_MARKER, RELEASE_MARKER

#: ``fetch(hashes) -> iterable of (hash, uncompressed bytes)``: one round trip to the server.
Fetch = Callable[[list[str]], Iterable[tuple[str, bytes]]]

_SHOWN = 3  # hashes named in an error message

#: Most entries (files and directories) a release may have. Identical subdirectories share one
#: manifest, so a small malicious tree of manifests could otherwise describe 2**40 paths.
MAX_ENTRIES = 10_000_000


class MaterializeError(Exception):
    """A release cannot be materialized (bad id, inconsistent release, foreign directory...)."""


class FetchError(MaterializeError):
    """The server did not deliver a blob, or delivered wrong bytes twice in a row."""


class PullError(MaterializeError):
    """:func:`pull_into` refuses its target (not a directory, or not one it created)."""


@dataclass
class MaterializeStats:
    """What one materialization did.

    Attributes:
        manifests_fetched: manifests received from the server (verified).
        chunks_fetched: file chunks received from the server (verified).
        bytes_fetched: uncompressed bytes of those manifests and chunks.
        files_written: files written into the new directory.
        seconds: wall-clock duration.
        fetch_calls: calls made to ``fetch`` (round trips), retries included.
        already_present: True if ``dest`` already held the release and nothing was done.
    """

    manifests_fetched: int = 0
    chunks_fetched: int = 0
    bytes_fetched: int = 0
    files_written: int = 0
    seconds: float = 0.0
    fetch_calls: int = 0
    already_present: bool = False


def materialize(
    release_id: str,
    dest: Path,
    *,
    cache: cas.ContentStore,
    fetch: Fetch,
    batch_size: int = 256,
) -> MaterializeStats:
    """Make ``dest`` a complete copy of release ``release_id``, atomically.

    If ``dest`` already holds the release (its ``.officegrid-release`` marker holds
    ``release_id``) nothing is fetched or written. Otherwise leftover staging directories of
    this release next to ``dest`` (``.staging-{release_id}-*``, from an interrupted run) are
    removed, missing manifests and chunks are fetched into ``cache``, and the tree is assembled
    in ``dest.parent / f".staging-{release_id}-{random}"`` and renamed to ``dest``. Callers must
    not materialize the same release into the same parent directory from two processes at once.

    Args:
        release_id: the release id (hash of the root manifest, 64 lowercase hex characters).
        dest: the directory to create; must not exist unless it already holds this release.
            Its parent is created if missing.
        cache: the worker's content store: holds the manifests and chunks of earlier releases,
            receives the fetched ones.
        fetch: ``fetch(hashes)`` returns ``(hash, uncompressed bytes)`` pairs for the requested
            hashes (one server round trip). Every pair is verified; a missing or wrong blob is
            requested once more, alone with the other failures of its batch. Its exceptions
            propagate (and leave ``dest`` absent; what was fetched stays cached).
        batch_size: most hashes per ``fetch`` call (>= 1).
    Returns:
        a :class:`MaterializeStats`.
    Raises:
        MaterializeError: ``release_id`` is malformed; ``dest`` exists and does not hold this
            release; the release is inconsistent (chunk sizes or file hash do not match the
            manifest, a top-level entry uses a marker name); it has more than
            :data:`MAX_ENTRIES` entries; not enough free disk space for its files.
        FetchError: a blob was missing from, or wrong in, two answers in a row.
        ManifestError: a manifest is malformed or unsafe (names the directory).
        OSError: writing the directory failed (``dest`` is left absent).
    """
    return _materialize(release_id, Path(dest), cache, fetch, batch_size, RELEASE_MARKER)


def pull_into(
    release_id: str,
    target: Path,
    *,
    cache: cas.ContentStore,
    fetch: Fetch,
    batch_size: int = 256,
) -> MaterializeStats:
    """Make the directory ``target`` equal to a release, like ``rsync -a --delete``.

    The release is materialized next to ``target`` (see :func:`materialize`, same fetching and
    verification) with a ``.officegrid-pull`` marker (holding the release id), then swapped in:
    ``target`` is renamed aside, the new tree renamed to ``target``, the old tree removed. Files
    in ``target`` that are not in the release (including local edits) are therefore gone. Between
    the two renames ``target`` is briefly absent, but never half-written; leftovers of an
    interrupted pull (``.{name}.pull-*`` next to ``target``) are removed by the next pull.

    Args:
        release_id: the release id.
        target: the directory to fill; created if missing. An existing one must be empty or
            carry the ``.officegrid-pull`` marker of an earlier pull.
        cache: content store for manifests and chunks (as in :func:`materialize`).
        fetch: as in :func:`materialize`.
        batch_size: as in :func:`materialize`.
    Returns:
        a :class:`MaterializeStats` (``already_present`` is always False).
    Raises:
        PullError: ``target`` is a symbolic link, not a directory, or a non-empty directory
            without the ``.officegrid-pull`` marker.
        MaterializeError, FetchError, ManifestError, OSError: as in :func:`materialize`;
            ``target`` is then left as it was.
    """
    target = Path(os.path.abspath(target))  # so that "." or "sub/.." have a parent and a name
    if target.is_symlink():
        raise PullError(f"{target}: is a symbolic link; give the real directory")
    if target.exists():
        if not target.is_dir():
            raise PullError(f"{target}: exists and is not a directory")
        if not (target / PULL_MARKER).is_file() and any(target.iterdir()):
            raise PullError(
                f"{target}: refusing to overwrite a non-empty directory that was not created "
                f"by 'release pull' (it has no {PULL_MARKER} marker)"
            )
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.pull-"
    for leftover in parent.iterdir():
        if leftover.name.startswith(prefix):
            _remove(leftover)
    token = secrets.token_hex(6)
    new = parent / f"{prefix}{token}-new"
    stats = _materialize(release_id, new, cache, fetch, batch_size, PULL_MARKER)
    t0 = time.monotonic()
    try:
        if target.exists():
            old = parent / f"{prefix}{token}-old"
            os.rename(target, old)
            try:
                os.rename(new, target)
            except BaseException:
                os.rename(old, target)
                raise
            _remove(old)
        else:
            os.rename(new, target)
    except BaseException:
        _remove(new)
        raise
    _fsync_dir(parent)
    stats.seconds += time.monotonic() - t0
    return stats


# --------------------------------------------------------------------------- internals


def _check_release_id(release_id: str) -> None:
    try:
        cas.check_hash(release_id)
    except cas.BlobError:
        raise MaterializeError(
            f"not a release id (64 lowercase hex characters): {release_id!r}"
        ) from None


def _marker_holds(directory: Path, marker: str, release_id: str) -> bool:
    try:
        return (directory / marker).read_text(encoding="utf-8").strip() == release_id
    except (OSError, UnicodeDecodeError):
        return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _fsync_dir(path: Path) -> None:
    if os.name != "nt":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


BATCH_BYTES = 16 << 20  # uncompressed bytes asked for per fetch (the server caps 64 MiB)


class _Blobs:
    """Verified access to blobs: from the cache, else fetched (in batches) into the cache."""

    def __init__(
        self, cache: cas.ContentStore, fetch: Fetch, batch_size: int, stats: MaterializeStats
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.cache = cache
        self.fetch = fetch
        self.batch_size = batch_size
        self.stats = stats

    def ensure(self, wanted: dict[str, str], kind: str,
               sizes: dict[str, int] | None = None) -> None:
        """Fetch the blobs of ``wanted`` (hash -> path needing it) that the cache lacks, in
        batches of at most ``batch_size`` blobs and (with ``sizes``) about
        :data:`BATCH_BYTES` uncompressed bytes, so an answer stays below the server's cap even
        for content that does not compress."""
        missing = self.cache.missing(wanted)
        batch: list[str] = []
        batch_bytes = 0
        for digest in missing:
            size = (sizes or {}).get(digest, 0)
            if batch and (len(batch) >= self.batch_size or batch_bytes + size > BATCH_BYTES):
                self._fetch_batch(batch, wanted, kind)
                batch, batch_bytes = [], 0
            batch.append(digest)
            batch_bytes += size
        if batch:
            self._fetch_batch(batch, wanted, kind)

    def read(self, digest: str, path: str, kind: str) -> bytes:
        """Return a blob's verified content; refetch it once if the cached copy is bad."""
        try:
            return self.cache.read(digest)
        except cas.BlobError:  # missing (BlobMissing) or corrupt: drop it and fetch it again
            self.cache.delete(digest)
        self._fetch_batch([digest], {digest: path}, kind)
        return self.cache.read(digest)

    def _fetch_batch(self, batch: list[str], where: dict[str, str], kind: str) -> None:
        pending = list(batch)
        wrong: dict[str, str] = {}
        for _attempt in range(2):
            self.stats.fetch_calls += 1
            wanted = set(pending)
            for digest, data in self.fetch(list(pending)):
                if digest not in wanted:
                    continue  # not asked for (or already received): ignore
                if not isinstance(data, bytes | bytearray | memoryview):
                    wrong[digest] = f"got a {type(data).__name__}, not bytes"
                    continue
                data = bytes(data)
                actual = cas.hash_bytes(data)
                if actual != digest:
                    wrong[digest] = f"content hashes to {actual}"
                    continue
                self.cache.put(data)
                wanted.discard(digest)
                wrong.pop(digest, None)
                if kind == "manifest":
                    self.stats.manifests_fetched += 1
                else:
                    self.stats.chunks_fetched += 1
                self.stats.bytes_fetched += len(data)
            pending = [d for d in pending if d in wanted]
            if not pending:
                return
        details = [
            f"{d} (for {where.get(d, '?') or '.'}): " + wrong.get(d, "not in the server's answer")
            for d in pending[:_SHOWN]
        ]
        more = f" and {len(pending) - _SHOWN} more" if len(pending) > _SHOWN else ""
        raise FetchError(
            f"the server failed twice to deliver {len(pending)} {kind} blob(s): "
            + "; ".join(details)
            + more
        )


def _materialize(
    release_id: str,
    dest: Path,
    cache: cas.ContentStore,
    fetch: Fetch,
    batch_size: int,
    marker: str,
) -> MaterializeStats:
    t0 = time.monotonic()
    stats = MaterializeStats()
    _check_release_id(release_id)
    if _marker_holds(dest, marker, release_id):
        stats.already_present = True
        stats.seconds = time.monotonic() - t0
        return stats
    if dest.exists() or dest.is_symlink():
        raise MaterializeError(
            f"{dest}: exists but does not hold release {release_id} (no matching {marker})"
        )
    blobs = _Blobs(cache, fetch, batch_size, stats)
    dirs = _fetch_manifests(release_id, blobs)
    for e in dirs[0][1]:
        if e.name in (RELEASE_MARKER, PULL_MARKER):
            raise MaterializeError(
                f"release {release_id} has a top-level entry named {e.name!r}, which is "
                "reserved for the completion marker"
            )
    files = [
        (join(path, e.name), e)
        for path, entries in dirs
        for e in entries
        if isinstance(e, FileEntry)
    ]
    total = sum(e.size for _, e in files)
    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if total > free:
        raise MaterializeError(
            f"release {release_id} needs {total} bytes but only {free} are free in {parent}"
        )
    chunks: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for path, e in files:
        for digest, size in e.chunks:
            if size > 0:
                chunks.setdefault(digest, path)
                sizes[digest] = size
    blobs.ensure(chunks, "chunk", sizes)

    for leftover in parent.iterdir():
        if leftover.name.startswith(f".staging-{release_id}-"):
            _remove(leftover)
    staging = parent / f".staging-{release_id}-{secrets.token_hex(6)}"
    try:
        _assemble(staging, dirs, blobs, stats)
        _write_marker(staging / marker, release_id)
        _fsync_dir(staging)
        try:
            os.rename(staging, dest)
        except OSError:
            if _marker_holds(dest, marker, release_id):  # another run finished first
                _remove(staging)
                stats.files_written = 0
                stats.already_present = True
                stats.seconds = time.monotonic() - t0
                return stats
            raise
    except BaseException:
        _remove(staging)
        raise
    _fsync_dir(parent)
    stats.seconds = time.monotonic() - t0
    return stats


def _fetch_manifests(release_id: str, blobs: _Blobs) -> list[tuple[str, list[Entry]]]:
    """Return ``(dir_path, entries)`` for every directory, parents first (level order)."""
    dirs: list[tuple[str, list[Entry]]] = []
    parsed: dict[str, list[Entry]] = {}
    total = 0
    level = [("", release_id)]
    while level:
        wanted: dict[str, str] = {}
        for path, digest in level:
            wanted.setdefault(digest, path)
        blobs.ensure(wanted, "manifest")
        next_level: list[tuple[str, str]] = []
        for path, digest in level:
            entries = parsed.get(digest)
            if entries is None:
                data = blobs.read(digest, path, "manifest")
                entries = parsed[digest] = parse_manifest(data, where=path)
            dirs.append((path, entries))
            total += len(entries)
            if total > MAX_ENTRIES:
                raise MaterializeError(
                    f"release {release_id} has more than {MAX_ENTRIES} files and directories"
                )
            next_level.extend(
                (join(path, e.name), e.hash) for e in entries if isinstance(e, DirEntry)
            )
        level = next_level
    return dirs


def _assemble(
    staging: Path,
    dirs: list[tuple[str, list[Entry]]],
    blobs: _Blobs,
    stats: MaterializeStats,
) -> None:
    staging.mkdir()
    made: list[Path] = []
    for path, entries in dirs:  # parents come before their children
        directory = staging / path if path else staging
        if path:
            directory.mkdir()
        made.append(directory)
        for e in entries:
            if isinstance(e, FileEntry):
                _write_file(directory / e.name, join(path, e.name), e, blobs)
                stats.files_written += 1
    for directory in reversed(made):
        _fsync_dir(directory)


def _write_file(target: Path, path: str, e: FileEntry, blobs: _Blobs) -> None:
    hasher = blake3.blake3() if len(e.chunks) > 1 else None
    with open(target, "xb") as out:
        for digest, size in e.chunks:
            if size == 0:
                continue
            data = blobs.read(digest, path, "chunk")
            if len(data) != size:
                raise MaterializeError(
                    f"{path}: chunk {digest} has {len(data)} bytes, the manifest says {size}"
                )
            if hasher is not None:
                hasher.update(data)
            out.write(data)
        out.flush()
        os.fsync(out.fileno())
    # A one-chunk file's hash is its (verified) chunk's hash; several chunks are re-hashed.
    if hasher is not None and hasher.hexdigest() != e.hash:
        raise MaterializeError(f"{path}: the chunks' content does not hash to {e.hash}")
    os.chmod(target, e.mode)


def _write_marker(path: Path, release_id: str) -> None:
    with open(path, "x", encoding="utf-8") as fh:
        fh.write(release_id + "\n")
        fh.flush()
        os.fsync(fh.fileno())
