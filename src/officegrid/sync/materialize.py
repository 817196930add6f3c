"""Materialize a release on a worker: fetch only what is missing, then appear atomically.

:func:`materialize` turns a release id into a directory. It walks the release's Merkle tree of
manifests level by level, fetching (in batches, one call per level or batch) only the manifests
its cache lacks, so an edit costs the manifests on the path from the root to the change; then it
fetches only the missing chunks. Everything fetched is verified against its hash and kept in the
worker's :class:`~officegrid.cas.ContentStore`. The tree is then written into a staging
directory next to ``dest`` (files unchanged since a release already materialized beside it are
copied from there instead of being decompressed again), made durable, given a completion marker
(``.officegrid-release``, holding the release id) last, and renamed to ``dest`` in one step:
``dest`` is either absent or complete, never half-written, and a transfer that was cut off is
never used (promise 4).

:func:`pull_into` is the same for ``officegrid release pull CHANNEL --to DIR``: it makes an
existing directory equal to a release, like ``rsync -a --delete``, in place: only files whose
content or mode differ are rewritten (each one atomically), guarded by a ``.officegrid-pull``
marker that says which release the directory holds, or that an update is under way.

Both markers carry an index of what was written: per file its hash, size, mtime, inode and mode.
A file whose stat data still match the index is known to hold that hash without reading it (the
bet rsync's quick check and git's index make; an edit changes the mtime, a save-by-rename the
inode).

Durability: on Linux the new files are flushed with one ``syncfs(2)`` of their filesystem before
the marker is written (one journal commit instead of an ``fsync`` per file); elsewhere every file
is fsynced.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import stat as stat_mod
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import blake3

from officegrid import cas
from officegrid.sync.manifest import DirEntry, Entry, FileEntry, join, parse_manifest
from officegrid.sync.tree import PULL_MARKER, RELEASE_MARKER

#: ``fetch(hashes, bases) -> iterable of (hash, uncompressed bytes)``: one round trip to the
#: server. ``bases`` maps some of the hashes to a blob the cache holds with their previous
#: version (the fetcher may ask the server for deltas against them; sync.delta); it is called
#: with only ``hashes`` when there are none.
Fetch = Callable[..., Iterable[tuple[str, bytes]]]

_SHOWN = 3  # hashes named in an error message

#: Most entries (files and directories) a release may have. Identical subdirectories share one
#: manifest, so a small malicious tree of manifests could otherwise describe 2**40 paths.
MAX_ENTRIES = 10_000_000

_INCOMPLETE = "incomplete"  # first word of a pull marker while an update is under way
_TMP_PREFIX = ".og-tmp-"  # files being written by pull_into (removed as extras if left over)

#: (size, mtime_ns, inode, permission bits) of a file as written
StatKey = tuple[int, int, int, int]
#: relative path -> (content hash, stat key when written)
Index = dict[str, tuple[str, StatKey]]


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
        files_written: files written (pull: files created or replaced; unchanged ones are not).
        files_reused: files copied from an earlier release instead of assembled from chunks.
        removed: pull: paths not in the release that were deleted (a directory counts once).
        seconds: wall-clock duration.
        fetch_calls: calls made to ``fetch`` (round trips), retries included.
        already_present: True if ``dest`` already held the release and nothing was done.
    """

    manifests_fetched: int = 0
    chunks_fetched: int = 0
    bytes_fetched: int = 0
    files_written: int = 0
    files_reused: int = 0
    removed: int = 0
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
    in ``dest.parent / f".staging-{release_id}-{random}"`` and renamed to ``dest``. A file that
    the most recently used complete release beside ``dest`` holds unchanged (same hash, stat
    data as indexed in its marker) is copied from there (a kernel copy, no decompression).
    Callers must not materialize the same release into the same parent directory from two
    processes at once.

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
    t0 = time.monotonic()
    dest = Path(dest)
    stats = MaterializeStats()
    _check_release_id(release_id)
    if _marker_holds(dest, RELEASE_MARKER, release_id):
        stats.already_present = True
        stats.seconds = time.monotonic() - t0
        return stats
    if dest.exists() or dest.is_symlink():
        raise MaterializeError(
            f"{dest}: exists but does not hold release {release_id} (no matching "
            f"{RELEASE_MARKER})"
        )
    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    blobs = _Blobs(cache, fetch, batch_size, stats)
    base = _newest_release_beside(dest)
    base_id, base_index = _read_marker(base, RELEASE_MARKER) if base is not None else (None, {})
    dirs, files, old_files = _fetch_release(release_id, blobs, base_id)
    _check_space(release_id, parent, sum(e.size for _, e in files))

    for leftover in parent.iterdir():
        if leftover.name.startswith(f".staging-{release_id}-"):
            _remove(leftover)
    staging = parent / f".staging-{release_id}-{secrets.token_hex(6)}"
    try:
        staging.mkdir()
        index: Index = {}
        for path, entries in dirs:  # parents come before their children
            directory = staging / path if path else staging
            if path:
                directory.mkdir()
            for e in entries:
                if not isinstance(e, FileEntry):
                    continue
                rel = join(path, e.name)
                target = directory / e.name
                if base is not None and _copy_unchanged(base, rel, e, base_index, target):
                    stats.files_reused += 1
                else:
                    basis = _basis(base, rel, old_files.get(rel), base_index) \
                        if base is not None else None
                    _write_file(target, rel, e, blobs, basis)
                stats.files_written += 1
                index[rel] = (e.hash, _stat_key(os.lstat(target)))
        _make_durable(staging, [staging / path for path, _ in dirs])
        _write_marker(staging / RELEASE_MARKER, release_id, index)
        _fsync_dir(staging)
        try:
            os.rename(staging, dest)
        except OSError:
            if _marker_holds(dest, RELEASE_MARKER, release_id):  # another run finished first
                _remove(staging)
                stats.files_written = stats.files_reused = 0
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


def pull_into(
    release_id: str,
    target: Path,
    *,
    cache: cas.ContentStore,
    fetch: Fetch,
    batch_size: int = 256,
) -> MaterializeStats:
    """Make the directory ``target`` equal to a release, like ``rsync -a --delete``.

    Everything missing is fetched (and verified) into ``cache`` before ``target`` is touched.
    Then, in place: the ``.officegrid-pull`` marker is switched to "incomplete"; every file of
    the release whose content or mode differs (judged by the marker's index of stat data, as
    rsync's quick check does, so unchanged files are never read) is written to a temporary
    file beside it and renamed over it; paths that are not in the release (including local
    additions) are removed; the new files are made durable; and the marker, naming the release
    and indexing its files, is written last. A pull that was cut off leaves the marker saying
    "incomplete" (never the new release id), and the next pull finishes the job.

    Args:
        release_id: the release id.
        target: the directory to fill; created if missing. An existing one must be empty or
            carry the ``.officegrid-pull`` marker of an earlier pull.
        cache: content store for manifests and chunks (as in :func:`materialize`).
        fetch: as in :func:`materialize`.
        batch_size: as in :func:`materialize`.
    Returns:
        a :class:`MaterializeStats`; ``already_present`` when ``target`` held the release
        unchanged and nothing was written.
    Raises:
        PullError: ``target`` is a symbolic link, not a directory, or a non-empty directory
            without the ``.officegrid-pull`` marker.
        MaterializeError, FetchError, ManifestError: as in :func:`materialize`; ``target`` is
            then left as it was.
        OSError: writing failed part-way; ``target``'s marker then says "incomplete".
    """
    t0 = time.monotonic()
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
    _check_release_id(release_id)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    swap = re.compile(rf"\.{re.escape(target.name)}\.pull-[0-9a-f]+-(new|old)")
    for leftover in parent.iterdir():  # swap directories of pulls by earlier versions
        if swap.fullmatch(leftover.name) and leftover.is_dir() and not leftover.is_symlink():
            _remove(leftover)
    stats = MaterializeStats()
    blobs = _Blobs(cache, fetch, batch_size, stats)
    state, old_index = _read_marker(target, PULL_MARKER)
    dirs, files, old_files = _fetch_release(release_id, blobs, state or _previous(target))
    target.mkdir(exist_ok=True)

    wanted_dirs = {path for path, _ in dirs}
    wanted_files = {rel: e for rel, e in files}
    extras = _extras(target, wanted_dirs, wanted_files)
    stale = [(rel, e) for rel, e in files if not _unchanged(target, rel, e, old_index)]
    if state == release_id and not extras and not stale:
        stats.already_present = True
        stats.seconds = time.monotonic() - t0
        return stats

    _check_space(release_id, target, sum(e.size for _, e in stale))
    _write_marker(target / PULL_MARKER, None, old_index, previous=state or _previous(target))
    # Directories whose entries change: made durable before the marker says complete.
    touched: set[Path] = set()
    for rel in sorted(extras, key=lambda r: r.count("/"), reverse=True):
        _remove(target / rel)  # deepest first; a file where a directory must go is gone too
        touched.add((target / rel).parent)
        stats.removed += 1
    for path in sorted(wanted_dirs):  # parents sort before their children
        directory = target / path if path else target
        if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
            _remove(directory)
        if not directory.is_dir():
            directory.mkdir()
            touched.update((directory, directory.parent))
    # The index vouches only for what this pull knows: the stat data of a file as written
    # (taken before it is renamed into place), or as the old index vouched for it. Stat data
    # read at the end could describe a file someone edited meanwhile.
    index: Index = {rel: old_index[rel] for rel, _ in files if rel in old_index}
    written: list[Path] = []
    for rel, e in stale:
        final = target / rel
        if final.is_dir() and not final.is_symlink():
            _remove(final)
        # Not named after the file: a name of up to 255 bytes leaves no room for a prefix.
        tmp = final.with_name(f"{_TMP_PREFIX}{secrets.token_hex(8)}")
        try:
            _write_file(tmp, rel, e, blobs, _basis(target, rel, old_files.get(rel), old_index))
            index[rel] = (e.hash, _stat_key(os.lstat(tmp)))
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        written.append(final)
        stats.files_written += 1
    touched.update(p.parent for p in written)
    if touched:
        _make_durable(target, sorted(touched))
    _write_marker(target / PULL_MARKER, release_id, index)
    stats.seconds = time.monotonic() - t0
    return stats


# --------------------------------------------------------------------------- internals


def _check_release_id(release_id: str) -> None:
    try:
        cas.check_hash(release_id)
    except cas.BlobError:
        raise MaterializeError(
            f"not a release id (64 lowercase hex characters): {release_id!r}"
        ) from None


def _stat_key(st: os.stat_result) -> StatKey:
    return (st.st_size, st.st_mtime_ns, st.st_ino, stat_mod.S_IMODE(st.st_mode))


def _read_marker(directory: Path, marker: str) -> tuple[str | None, Index]:
    """(the release id the marker names, or None; its index). Unreadable -> (None, {})."""
    try:
        lines = (directory / marker).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None, {}
    if not lines:
        return None, {}
    state = lines[0].strip()
    index: Index = {}
    for line in lines[1:]:
        try:
            rel, digest, size, mtime_ns, ino, mode = json.loads(line)
            index[rel] = (digest, (size, mtime_ns, ino, mode))
        except (ValueError, TypeError):
            return None, {}  # a damaged index vouches for nothing
    return (None if state.startswith(_INCOMPLETE) else state), index


def _marker_holds(directory: Path, marker: str, release_id: str) -> bool:
    return _read_marker(directory, marker)[0] == release_id


def _previous(directory: Path) -> str | None:
    """The release an interrupted pull was updating from (a base for deltas), or None."""
    try:
        with open(directory / PULL_MARKER, encoding="utf-8") as fh:
            words = fh.readline().split()
    except (OSError, UnicodeDecodeError):
        return None
    return words[1] if len(words) == 2 and words[0] == _INCOMPLETE else None


def _write_marker(path: Path, release_id: str | None, index: Index,
                  previous: str | None = None) -> None:
    """Write a marker atomically (temporary file, fsync, rename): the release id (None: an
    update from ``previous`` is under way) on the first line, then one JSON line per indexed
    file."""
    lines = [release_id or f"{_INCOMPLETE} {previous or ''}".strip()]
    lines += [json.dumps([rel, h, *key], ensure_ascii=False) for rel, (h, key) in index.items()]
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _unchanged(root: Path, rel: str, e: FileEntry, index: Index) -> bool:
    """True if ``root/rel`` is known, without reading it, to hold ``e``'s content and mode."""
    known = index.get(rel)
    if known is None or known[0] != e.hash:
        return False
    try:
        st = os.lstat(root / rel)
    except OSError:
        return False
    key = _stat_key(st)
    return stat_mod.S_ISREG(st.st_mode) and key == known[1] and key[3] == e.mode


def _copy_unchanged(base: Path, rel: str, e: FileEntry, index: Index, target: Path) -> bool:
    """Copy ``base/rel`` to ``target`` (which must not exist) if ``base``'s index vouches that
    it holds ``e``'s content, and it still does once copied (same stat data after the copy:
    a unit writing to it meanwhile changes its mtime). True if copied; False (``target``
    absent) when the file is changed, or gone (the cache bound may remove that release while
    this one is assembled): the caller then writes it from chunks."""
    if not _unchanged(base, rel, e, index):
        return False
    try:
        shutil.copyfile(base / rel, target)
        intact = _unchanged(base, rel, e, index)
        if intact and _SYNCFS is None:  # as in _write_file: without syncfs, fsync each file
            with open(target, "rb+") as fh:
                os.fsync(fh.fileno())
    except OSError:
        intact = False
    if not intact:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        return False
    os.chmod(target, e.mode)
    return True


def _newest_release_beside(dest: Path) -> Path | None:
    """The most recently used complete release directory next to ``dest`` (a source of
    unchanged files), or None."""
    best: tuple[float, Path] | None = None
    with contextlib.suppress(OSError):
        for d in dest.parent.iterdir():
            if d == dest or d.name.startswith(".") or not (d / RELEASE_MARKER).is_file():
                continue
            mtime = d.stat().st_mtime
            if best is None or mtime > best[0]:
                best = (mtime, d)
    return best[1] if best else None


def _extras(target: Path, dirs: set[str], files: dict[str, FileEntry]) -> list[str]:
    """Relative paths under ``target`` that are not in the release (the marker excepted);
    a directory that is not wanted is listed, not its contents."""
    out: list[str] = []
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(target / rel_dir if rel_dir else target) as it:
            for entry in it:
                rel = join(rel_dir, entry.name)
                if not rel_dir and entry.name == PULL_MARKER:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if rel in dirs:
                        stack.append(rel)
                    else:
                        out.append(rel)
                elif rel not in files:
                    out.append(rel)
    return out


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


def _load_syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_SYNCFS = _load_syncfs()


def _make_durable(root: Path, directories: Iterable[Path]) -> None:
    """Flush files written under ``root`` (one syncfs on Linux; elsewhere each file was fsynced
    as it was written) and the given directories' entries."""
    if _SYNCFS is None:
        for directory in directories:
            _fsync_dir(directory)
        return
    fd = os.open(root, os.O_RDONLY)
    try:
        if _SYNCFS(fd) != 0:  # flushes data and metadata of the whole filesystem
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs of {root}: {os.strerror(err)}")
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
               sizes: dict[str, int] | None = None,
               bases: dict[str, str] | None = None) -> None:
        """Fetch the blobs of ``wanted`` (hash -> path needing it) that the cache lacks, in
        batches of at most ``batch_size`` blobs and (with ``sizes``) about
        :data:`BATCH_BYTES` uncompressed bytes, so an answer stays below the server's cap even
        for content that does not compress. ``bases`` (hash -> hash of a cached blob holding
        its previous version) lets the server send deltas."""
        missing = self.cache.missing(wanted)
        batch: list[str] = []
        batch_bytes = 0
        for digest in missing:
            size = (sizes or {}).get(digest, 0)
            if batch and (len(batch) >= self.batch_size or batch_bytes + size > BATCH_BYTES):
                self._fetch_batch(batch, wanted, kind, bases)
                batch, batch_bytes = [], 0
            batch.append(digest)
            batch_bytes += size
        if batch:
            self._fetch_batch(batch, wanted, kind, bases)

    def read(self, digest: str, path: str, kind: str) -> bytes:
        """Return a blob's verified content; refetch it once if the cached copy is bad."""
        try:
            return self.cache.read(digest)
        except cas.BlobError:  # missing (BlobMissing) or corrupt: drop it and fetch it again
            self.cache.delete(digest)
        self._fetch_batch([digest], {digest: path}, kind)
        return self.cache.read(digest)

    def _fetch_batch(self, batch: list[str], where: dict[str, str], kind: str,
                     bases: dict[str, str] | None = None) -> None:
        pending = list(batch)
        wrong: dict[str, str] = {}
        for attempt in range(2):
            self.stats.fetch_calls += 1
            wanted = set(pending)
            # Deltas only on the first try: a bad base must not make a blob unobtainable.
            use = {d: bases[d] for d in pending if d in bases} if bases and not attempt else {}
            answer = self.fetch(list(pending), use) if use else self.fetch(list(pending))
            for digest, data in answer:
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
                self.cache.put_verified(digest, data)
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


def _fetch_release(release_id: str, blobs: _Blobs, old_root: str | None
                   ) -> tuple[list[tuple[str, list[Entry]]], list[tuple[str, FileEntry]],
                              dict[str, FileEntry]]:
    """Fetch what the cache lacks of a release (as deltas against ``old_root``, a release
    whose manifests the cache holds, where it has a previous version); return its directories
    (parents first), its files (relative path, entry) and, by path, the files of ``old_root``
    in the directories that changed (their previous versions)."""
    if old_root is not None and not cas.HASH_RE.match(old_root):
        old_root = None  # a damaged marker names no release
    dirs, old_files = _fetch_manifests(release_id, blobs, old_root)
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
    chunks: dict[str, str] = {}
    sizes: dict[str, int] = {}
    bases: dict[str, str] = {}
    for path, e in files:
        for digest, size in e.chunks:
            if size > 0:
                chunks.setdefault(digest, path)
                sizes[digest] = size
        old = old_files.get(path)
        if old is not None and old.hash != e.hash:
            bases.update(_chunk_bases(e, old))
    bases = {d: b for d, b in bases.items() if blobs.cache.has(b)}
    blobs.ensure(chunks, "chunk", sizes, bases)
    return dirs, files, old_files


def _check_space(release_id: str, where: Path, needed: int) -> None:
    free = shutil.disk_usage(where).free
    if needed > free:
        raise MaterializeError(
            f"release {release_id} needs {needed} bytes but only {free} are free in {where}"
        )


def _fetch_manifests(release_id: str, blobs: _Blobs, old_root: str | None
                     ) -> tuple[list[tuple[str, list[Entry]]], dict[str, FileEntry]]:
    """Return ``(dir_path, entries)`` for every directory, parents first (level order), and
    the files of ``old_root`` (a release the cache holds, or None) in the directories that
    changed, by path: their chunks are the bases of deltas. A changed directory's manifest is
    fetched as a delta against its previous version."""
    dirs: list[tuple[str, list[Entry]]] = []
    parsed: dict[str, list[Entry]] = {}
    old_dirs: dict[str, str] = {"": old_root} if old_root else {}
    old_files: dict[str, FileEntry] = {}
    total = 0
    level = [("", release_id)]
    while level:
        wanted: dict[str, str] = {}
        bases: dict[str, str] = {}
        for path, digest in level:
            wanted.setdefault(digest, path)
            old = old_dirs.get(path)
            if old is not None and old != digest and blobs.cache.has(old):
                bases[digest] = old
        blobs.ensure(wanted, "manifest", bases=bases)
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
            old = old_dirs.get(path)
            if old is not None and old != digest:
                for e in _cached_manifest(blobs.cache, old):
                    if isinstance(e, DirEntry):
                        old_dirs[join(path, e.name)] = e.hash
                    else:
                        old_files[join(path, e.name)] = e
        level = next_level
    return dirs, old_files


def _cached_manifest(cache: cas.ContentStore, digest: str) -> list[Entry]:
    """A manifest from the cache, or [] if it is not there (or not readable)."""
    try:
        return parse_manifest(cache.read(digest), where="(previous release)")
    except (cas.BlobError, ValueError):
        return []


def _chunk_bases(new: FileEntry, old: FileEntry) -> dict[str, str]:
    """For each chunk of ``new`` that ``old`` lacks, the chunk of ``old`` it most likely
    replaces: content-defined boundaries resynchronize after an edit, so a changed chunk right
    after an unchanged one replaces the old chunk that followed that one, and a changed chunk
    right before an unchanged one the old chunk that preceded it (this holds when an insert or
    a delete shifted every later offset). Other chunks fall back to the old chunk overlapping
    the same byte range most (:func:`_overlap_bases`)."""
    bases = _overlap_bases(new, old)
    old_chunks = [d for d, size in old.chunks if size > 0]
    where = {d: i for i, d in reversed(list(enumerate(old_chunks)))}  # first occurrence
    new_chunks = [d for d, size in new.chunks if size > 0]
    for k, digest in enumerate(new_chunks):
        if digest in where:
            continue  # unchanged: nothing to fetch
        before = where.get(new_chunks[k - 1]) if k > 0 else None
        after = where.get(new_chunks[k + 1]) if k + 1 < len(new_chunks) else None
        if before is not None and before + 1 < len(old_chunks):
            bases[digest] = old_chunks[before + 1]
        elif after is not None and after > 0:
            bases[digest] = old_chunks[after - 1]
    return bases


def _overlap_bases(new: FileEntry, old: FileEntry) -> dict[str, str]:
    """For each chunk of ``new``, the chunk of ``old`` that overlaps its byte range most."""
    old_ranges: list[tuple[int, int, str]] = []
    pos = 0
    for digest, size in old.chunks:
        if size > 0:
            old_ranges.append((pos, pos + size, digest))
        pos += size
    if not old_ranges:
        return {}
    bases: dict[str, str] = {}
    pos = 0
    first = 0  # both lists are in offset order: sweep, so a file of n chunks costs O(n)
    for digest, size in new.chunks:
        start, end = pos, pos + size
        pos = end
        if size == 0:
            continue
        while first < len(old_ranges) and old_ranges[first][1] <= start:
            first += 1
        best, best_overlap = old_ranges[-1][2], 0
        for k in range(first, len(old_ranges)):
            o_start, o_end, o_digest = old_ranges[k]
            if o_start >= end:
                break
            overlap = min(end, o_end) - max(start, o_start)
            if overlap > best_overlap:
                best, best_overlap = o_digest, overlap
        if best != digest:
            bases.setdefault(digest, best)
    return bases


def _basis(root: Path, rel: str, old: FileEntry | None, index: Index) -> Basis | None:
    """``root/rel`` as the basis of its new version (rsync's basis file): usable when it still
    holds ``old`` by its stat data (the marker's index), so chunks the two versions share are
    read from it instead of being decompressed from the cache."""
    if old is None or len(old.chunks) < 2 or not _unchanged(root, rel, old, index):
        return None
    offsets: dict[str, tuple[int, int]] = {}
    pos = 0
    for digest, size in old.chunks:
        offsets.setdefault(digest, (pos, size))
        pos += size
    return Basis(root / rel, offsets)


@dataclass(frozen=True)
class Basis:
    """The previous version of a file: its path and where each of its chunks lies in it
    (hash -> (offset, size) in bytes)."""

    path: Path
    offsets: dict[str, tuple[int, int]]


class _BasisChanged(Exception):
    """Bytes read from a basis file were not what its index promised."""


def _write_file(target: Path, path: str, e: FileEntry, blobs: _Blobs,
                basis: Basis | None = None) -> None:
    """Write ``e``'s content to ``target`` (created), chunk by chunk: from ``basis`` where the
    previous version has the chunk, else from the verified cache; several chunks are re-hashed
    as a whole against ``e.hash``. A basis that changed under us is dropped (the file is then
    written from the cache alone).

    Raises:
        MaterializeError: chunk sizes or the file hash disagree with the manifest.
        OSError: writing failed.
    """
    if basis is not None:
        try:
            return _assemble_file(target, path, e, blobs, basis)
        except (_BasisChanged, OSError):
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
    return _assemble_file(target, path, e, blobs, None)


def _assemble_file(target: Path, path: str, e: FileEntry, blobs: _Blobs,
                   basis: Basis | None) -> None:
    hasher = blake3.blake3() if len(e.chunks) > 1 else None
    src = os.open(basis.path, os.O_RDONLY) if basis is not None else None
    try:
        with open(target, "xb") as out:
            for digest, size in e.chunks:
                if size == 0:
                    continue
                where = basis.offsets.get(digest) if basis is not None else None
                if where is not None and src is not None:
                    data = os.pread(src, size, where[0])
                else:
                    data = blobs.read(digest, path, "chunk")
                if len(data) != size:
                    if where is not None:
                        raise _BasisChanged(path)
                    raise MaterializeError(
                        f"{path}: chunk {digest} has {len(data)} bytes, the manifest says {size}"
                    )
                if hasher is not None:
                    hasher.update(data)
                out.write(data)
            if _SYNCFS is None:
                out.flush()
                os.fsync(out.fileno())
    finally:
        if src is not None:
            os.close(src)
    # A one-chunk file's hash is its (verified) chunk's hash; several chunks are re-hashed,
    # which also checks every byte taken from a basis.
    if hasher is not None and hasher.hexdigest() != e.hash:
        if basis is not None:
            raise _BasisChanged(path)
        raise MaterializeError(f"{path}: the chunks' content does not hash to {e.hash}")
    os.chmod(target, e.mode)


