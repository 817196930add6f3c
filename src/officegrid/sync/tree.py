"""Build a release from a directory (the publisher's side of ``officegrid release create``).

:func:`build_tree` walks a directory once, hashes every file as a stream, and returns the
release's per-directory manifests (see :mod:`officegrid.sync.manifest` for the format) with the
release id. :func:`store_tree` then copies the manifests and file contents into a
:class:`~officegrid.cas.ContentStore`, again as a stream.

Skipped always (unless re-included by a ``!`` pattern): ``.git``, ``__pycache__``, ``.venv``,
``*.pyc``, and at the top level the materialization markers ``.officegrid-release`` and
``.officegrid-pull`` (so a pulled directory can be published again). Further patterns come from
``ROOT/.officegridignore`` in gitignore syntax, see :class:`IgnoreRules`.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import zstandard

from officegrid import cas
from officegrid.sync.chunking import Chunk, chunk_file
from officegrid.sync.manifest import DirEntry, Entry, encode_manifest, file_entry, join
from officegrid.sync.names import MAX_PATH, check_name, check_siblings, long_path_warning
from officegrid.sync.statcache import StatCache

PIECE = 1 << 20  # read and hash files in 1 MiB pieces

RELEASE_MARKER = ".officegrid-release"
PULL_MARKER = ".officegrid-pull"
DEFAULT_IGNORES = (
    ".git",
    "__pycache__",
    ".venv",
    "*.pyc",
    "/" + RELEASE_MARKER,
    "/" + PULL_MARKER,
)


class BuildError(ValueError):
    """A directory cannot be published as a release.

    Attributes:
        path: the offending file or directory (absolute or as found during the walk).
        reason: what is wrong, in words.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


# --------------------------------------------------------------------------- ignore patterns


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool
    source: str


def _translate(pattern: str) -> str:
    """Translate a gitignore glob (already stripped of ``!``, trailing ``/``) into a regex."""
    anchored = "/" in pattern
    pattern = pattern.lstrip("/") if pattern.startswith("/") else pattern
    parts = pattern.split("/")
    out: list[str] = [] if anchored else ["(?:.*/)?"]
    n = len(parts)
    for i, part in enumerate(parts):
        last = i == n - 1
        if part == "**":
            if last:
                # "a/**": everything inside a (but not a itself); a lone "**": everything.
                out.append(".*" if i == 0 else "/.+")
            else:
                # "**/b", "a/**/b": zero or more directories.
                out.append("(?:.*/)?" if i == 0 else "/(?:.*/)?")
            continue
        if i > 0 and parts[i - 1] != "**":
            out.append("/")
        out.append(_translate_part(part))
    return "".join(out)


def _translate_part(part: str) -> str:
    res: list[str] = []
    i, n = 0, len(part)
    while i < n:
        c = part[i]
        i += 1
        if c == "\\" and i < n:
            res.append(re.escape(part[i]))
            i += 1
        elif c == "*":
            while i < n and part[i] == "*":
                i += 1
            res.append("[^/]*")
        elif c == "?":
            res.append("[^/]")
        elif c == "[":
            j = i
            if j < n and part[j] in "!^":
                j += 1
            if j < n and part[j] == "]":
                j += 1
            while j < n and part[j] != "]":
                j += 1
            if j >= n:
                res.append(re.escape("["))
                continue
            body = part[i:j]
            i = j + 1
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            body = "".join("\\" + ch if ch in "\\[]^&~|" else ch for ch in body)
            body = ("^" if negate else "") + body
            res.append(f"(?!/)[{body}]")
        else:
            res.append(re.escape(c))
    return "".join(res)


class IgnoreRules:
    """A small gitignore-style matcher for paths relative to the release root.

    Supported: blank lines and ``#`` comments; ``*`` (any run of characters except ``/``), ``?``,
    ``[abc]``/``[!a-z]`` classes and ``\\`` escapes; a trailing ``/`` (matches directories only);
    a ``/`` at the start or in the middle anchors the pattern to the root (otherwise it matches at
    any depth); ``**/`` (any leading directories), ``/**`` (everything inside), ``/**/`` (zero or
    more directories); ``!`` re-includes what an earlier pattern excluded. The last matching
    pattern wins. As in git, a file inside an excluded directory cannot be re-included (the
    builder does not descend into excluded directories). Trailing spaces are ignored.

    Args:
        lines: the patterns, one per line, in order.
    """

    def __init__(self, lines: Iterable[str] = ()) -> None:
        self.rules: list[_Rule] = []
        for line in lines:
            self.add(line)

    def add(self, line: str) -> None:
        """Add one pattern line (blank lines and comments are ignored)."""
        source = line
        line = line.rstrip("\r\n")
        stripped = line.rstrip(" ")
        if stripped.endswith("\\") and len(line) > len(stripped):
            stripped += " "  # "foo\ " keeps its escaped trailing space
        line = stripped
        if not line or line.startswith("#"):
            return
        negate = line.startswith("!")
        if negate:
            line = line[1:]  # an escaped "\\!" or "\\#" stays: the translator unescapes it
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            return
        regex = re.compile(_translate(line), re.DOTALL)
        self.rules.append(_Rule(regex, negate, dir_only, source.strip()))

    def ignored(self, rel_path: str, *, is_dir: bool) -> bool:
        """True if ``rel_path`` (relative, ``/``-separated) is excluded by the patterns."""
        result = False
        for rule in self.rules:
            if rule.dir_only and not is_dir:
                continue
            if rule.regex.fullmatch(rel_path):
                result = not rule.negate
        return result

    @classmethod
    def for_root(cls, root: Path, ignore_file: str | None = ".officegridignore") -> IgnoreRules:
        """Return the default rules followed by those of ``root/ignore_file`` if it exists.

        Raises:
            BuildError: the ignore file exists but cannot be read as UTF-8 text.
        """
        rules = cls(DEFAULT_IGNORES)
        if ignore_file:
            path = root / ignore_file
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                return rules
            except (OSError, UnicodeDecodeError) as exc:
                raise BuildError(path, f"cannot read the ignore file: {exc}") from exc
            for line in text.splitlines():
                rules.add(line)
        return rules


# --------------------------------------------------------------------------- building


@dataclass
class Tree:
    """A release built from a directory.

    Attributes:
        root_hash: the release id (blake3 hex of the root manifest).
        manifests: manifest hash -> manifest bytes, for every directory (identical directories,
            e.g. empty ones, share one manifest).
        files: content hash -> (a path holding that content, size in bytes); one entry per
            distinct content.
        chunks: chunk hash -> (a path holding it, offset, size in bytes); one entry per distinct
            chunk (a file of at most ``chunking.WHOLE_FILE_MAX`` bytes is one chunk).
        file_count: number of files in the release (duplicates counted).
        total_bytes: sum of the files' sizes in bytes (duplicates counted).
        warnings: human-readable warnings: paths longer than 260 characters (one per long
            directory, not one per file inside it).
    """

    root_hash: str
    manifests: dict[str, bytes]
    files: dict[str, tuple[Path, int]]
    chunks: dict[str, tuple[Path, int, int]] = field(default_factory=dict)
    stat_cache: StatCache | None = field(default=None, repr=False, compare=False)
    file_count: int = 0
    total_bytes: int = 0
    warnings: list[str] = field(default_factory=list)


def hash_file(path: Path) -> tuple[str, int]:
    """Hash a file as a stream of 1 MiB pieces.

    Returns:
        (blake3 hex digest, size in bytes read).
    Raises:
        OSError: the file cannot be read.
    """
    hasher = blake3.blake3()
    size = 0
    with open(path, "rb") as fh:
        while piece := fh.read(PIECE):
            hasher.update(piece)
            size += len(piece)
    return hasher.hexdigest(), size


def _chunk(path: Path, st: os.stat_result, cache: StatCache | None
           ) -> tuple[str, int, list[Chunk]]:
    if cache is not None:
        hit = cache.get(path.resolve(), st)
        if hit is not None:
            return hit
    digest, size, chunks = chunk_file(path)
    if cache is not None and size == st.st_size:
        cache.put(path.resolve(), st, digest, size, chunks)
    return digest, size, chunks


def build_tree(root: Path, *, ignore_file: str | None = ".officegridignore",
               stat_cache: StatCache | None = None) -> Tree:
    """Walk ``root`` and build its release: one manifest per directory and the release id.

    Every file is read once (large files are cut into content-defined chunks, see
    :mod:`.chunking`); with a ``stat_cache``, files whose stat data did not change are not read
    at all. Empty directories are kept. Only the executable bit of a file's mode is kept
    (owner-executable -> 0o755, else 0o644).

    Args:
        root: the directory to publish.
        stat_cache: remembers the hashes of files by stat data between builds.
        ignore_file: name of the gitignore-style pattern file at ``root`` (``None``: none), see
            :class:`IgnoreRules`; the defaults (``.git``, ``__pycache__``, ``.venv``, ``*.pyc``)
            always apply first.
    Returns:
        a :class:`Tree`.
    Raises:
        BuildError: ``root`` is not a directory; a symbolic link or a special file (socket,
            device, FIFO) is found; a file or directory cannot be read. Names the path.
        UnsafeName: a name is unsafe or collides with a sibling (see :mod:`.names`); its
            ``path`` is relative to ``root``.
    """
    root = Path(root)
    if not root.is_dir():
        raise BuildError(root, "not a directory")
    rules = IgnoreRules.for_root(root, ignore_file)
    tree = Tree(root_hash="", manifests={}, files={}, stat_cache=stat_cache)
    tree.root_hash = _build_dir(root, "", rules, tree)
    if stat_cache is not None:
        stat_cache.commit()
    return tree


def _build_dir(directory: Path, rel: str, rules: IgnoreRules, tree: Tree) -> str:
    try:
        with os.scandir(directory) as it:
            found = sorted(it, key=lambda d: d.name)
    except OSError as exc:
        raise BuildError(directory, f"cannot list the directory: {exc}") from exc
    entries: list[Entry] = []
    for item in found:
        path = join(rel, item.name)
        try:
            st = item.stat(follow_symlinks=False)
        except OSError as exc:
            raise BuildError(item.path, f"cannot stat: {exc}") from exc
        is_dir = stat.S_ISDIR(st.st_mode)
        if rules.ignored(path, is_dir=is_dir):
            continue
        check_name(item.name, path=path)
        warning = long_path_warning(path) if len(rel) <= MAX_PATH else None
        if warning:  # one warning per long subtree, not one per file inside it
            tree.warnings.append(warning + ("/ (and everything inside)" if is_dir else ""))
        if stat.S_ISLNK(st.st_mode):
            raise BuildError(item.path, "symbolic links are not supported in releases")
        if is_dir:
            child = _build_dir(Path(item.path), path, rules, tree)
            entries.append(DirEntry(name=item.name, hash=child))
        elif stat.S_ISREG(st.st_mode):
            try:
                digest, size, chunks = _chunk(Path(item.path), st, tree.stat_cache)
            except OSError as exc:
                raise BuildError(item.path, f"cannot read: {exc}") from exc
            executable = bool(st.st_mode & stat.S_IXUSR)
            entries.append(file_entry(item.name, executable=executable, size=size, digest=digest,
                                      chunks=[(c.hash, c.size) for c in chunks]))
            tree.files.setdefault(digest, (Path(item.path), size))
            for c in chunks:
                tree.chunks.setdefault(c.hash, (Path(item.path), c.offset, c.size))
            tree.file_count += 1
            tree.total_bytes += size
        else:
            raise BuildError(item.path, "not a regular file or directory (special file)")
    check_siblings((e.name for e in entries), where=rel)
    data = encode_manifest(entries)
    digest = cas.hash_bytes(data)
    tree.manifests[digest] = data
    return digest


# --------------------------------------------------------------------------- storing


def store_tree(tree: Tree, store: cas.ContentStore) -> int:
    """Copy a built release into ``store``: every manifest and every distinct file content.

    Files are compressed as a stream (1 MiB pieces) into one zstd frame each and re-hashed on
    the way; blobs already present are skipped.

    Args:
        tree: the result of :func:`build_tree`.
        store: the content store to fill.
    Returns:
        the number of blobs written (not counting those already present).
    Raises:
        BuildError: a file changed (content or size) since :func:`build_tree`, or cannot be read.
    """
    written = 0
    for digest, data in tree.manifests.items():
        if not store.has(digest):
            store.put(data)
            written += 1
    for digest, (path, offset, size) in tree.chunks.items():
        if store.has(digest):
            continue
        data = read_chunk(path, offset, size)
        if cas.hash_bytes(data) != digest:
            raise BuildError(path, "the file changed while the release was being built")
        store.put(data)
        written += 1
    return written


def read_chunk(path: Path, offset: int, size: int) -> bytes:
    """The ``size`` bytes of ``path`` at ``offset``. Raises BuildError if the file is shorter
    (it changed since the build) or unreadable."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(size)
    except OSError as exc:
        raise BuildError(path, f"cannot read: {exc}") from exc
    if len(data) != size:
        raise BuildError(path, "the file changed while the release was being built")
    return data


def _store_file(store: cas.ContentStore, digest: str, path: Path, size: int) -> None:
    fd, tmp = store.temp_file()
    try:
        hasher = blake3.blake3()
        cctx = zstandard.ZstdCompressor(level=cas.ZSTD_LEVEL, write_content_size=True)
        with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
            writer = cctx.stream_writer(out, size=size, closefd=False)
            while piece := src.read(PIECE):
                hasher.update(piece)
                writer.write(piece)
            writer.close()
        if hasher.hexdigest() != digest:
            raise BuildError(path, "the file changed while the release was being built")
        store.put_file(digest, tmp)
    except zstandard.ZstdError as exc:
        tmp.unlink(missing_ok=True)
        raise BuildError(path, f"the file changed size while being stored ({exc})") from exc
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BuildError(path, f"cannot read: {exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
