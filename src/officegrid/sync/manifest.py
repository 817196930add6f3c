"""Release manifests: one canonical JSON document per directory, forming a Merkle tree.

Wire format, version 1 (exact; the hashes depend on every byte)
----------------------------------------------------------------
A release tree is described by one *manifest per directory*. A manifest is the UTF-8 JSON text
of::

    {"v":1,"entries":[ENTRY, ...]}

serialized canonically as
``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()``
(keys sorted, no whitespace, non-ASCII characters written as themselves), with the entries sorted
by ``name`` in Python ``str`` order (code point order) of the NFC name; names are unique. An ENTRY
is one of:

* a file::

    {"chunks":[[HASH,SIZE],...],"hash":HASH,"mode":420|493,"name":NAME,"size":SIZE,"type":"file"}

  ``mode`` is 420 (``0o644``) or 493 (``0o755``): only the owner's executable bit is kept.
  ``size`` is the content length in bytes. ``hash`` is the blake3 hex digest (64 lowercase hex
  characters) of the whole content. ``chunks`` lists the content's pieces in order as
  ``[blake3 hex of the piece, piece size in bytes]``; the content is their concatenation, so the
  sizes add up to ``size``. Today a file is one chunk (``[[hash, size]]``, an empty file
  ``[[blake3(b""), 0]]``); readers accept any number of chunks (content-defined chunking).
* a directory::

    {"hash":HASH,"name":NAME,"type":"dir"}

  ``hash`` is the hash of that directory's own manifest. Empty directories are kept.

A manifest's hash is the blake3 hex digest of its bytes; the *release id* is the hash of the root
directory's manifest. So two releases share every unchanged subtree, and a worker that holds the
old release fetches only the manifests on the path from the root to each change (see the
"flat manifest" trap in DESIGN.md). Names obey :mod:`officegrid.sync.names` (no ``..``, no
separators, no Windows device names, NFC, no case-insensitive collisions among siblings).

:func:`parse_manifest` checks all of the above strictly and also that the bytes are exactly the
canonical encoding, so one tree has exactly one release id and a worker refuses a malformed or
malicious manifest even if its server sends one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from officegrid import cas
from officegrid.sync.names import UnsafeName, check_name, check_siblings

VERSION = 1
MODE_FILE = 0o644  # 420
MODE_EXEC = 0o755  # 493
MODES = frozenset({MODE_FILE, MODE_EXEC})
EMPTY_HASH = cas.hash_bytes(b"")

_FILE_KEYS = frozenset({"name", "type", "mode", "size", "hash", "chunks"})
_DIR_KEYS = frozenset({"name", "type", "hash"})


class ManifestError(ValueError):
    """A manifest is malformed, unsafe or not canonical.

    Attributes:
        where: relative path of the directory the manifest describes (``""`` for the root).
        problem: what is wrong, in words.
    """

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"bad manifest for directory {where or '.'!r}: {problem}")


@dataclass(frozen=True)
class FileEntry:
    """A regular file in a directory manifest.

    Attributes:
        name: the file's name (one safe NFC path component).
        mode: 0o644 or 0o755.
        size: content length in bytes.
        hash: blake3 hex digest of the whole content.
        chunks: the content's pieces in order, as ``(blake3 hex, size in bytes)`` pairs.
    """

    name: str
    mode: int
    size: int
    hash: str
    chunks: tuple[tuple[str, int], ...]
    type: str = field(default="file", init=False)

    @property
    def executable(self) -> bool:
        """True if the file's mode is 0o755."""
        return self.mode == MODE_EXEC


@dataclass(frozen=True)
class DirEntry:
    """A subdirectory in a directory manifest.

    Attributes:
        name: the directory's name (one safe NFC path component).
        hash: blake3 hex digest of the subdirectory's manifest bytes.
    """

    name: str
    hash: str
    type: str = field(default="dir", init=False)


Entry = FileEntry | DirEntry

#: ``get_manifest(hash) -> manifest bytes``; may raise whatever its store raises when missing.
GetManifest = Callable[[str], bytes]


def file_entry(name: str, *, executable: bool, size: int, digest: str,
               chunks: Iterable[tuple[str, int]] | None = None) -> FileEntry:
    """Return the :class:`FileEntry` of a file.

    Args:
        name: the file name.
        executable: keep the executable bit (mode 0o755) or not (0o644).
        size: content length in bytes.
        digest: blake3 hex digest of the content.
        chunks: (chunk hash, chunk size) pairs in file order; None for a one-chunk file.
    """
    return FileEntry(
        name=name,
        mode=MODE_EXEC if executable else MODE_FILE,
        size=size,
        hash=digest,
        chunks=tuple((h, n) for h, n in chunks) if chunks is not None else ((digest, size),),
    )


def encode_manifest(entries: Iterable[Entry]) -> bytes:
    """Return the canonical manifest bytes of one directory.

    Args:
        entries: the directory's entries, in any order (they are sorted by name here).
    Returns:
        UTF-8 JSON bytes, as described in this module's docstring.
    Raises:
        ManifestError: two entries have the same name.
        UnsafeName: a name is unsafe, or two names collide case-insensitively.
    """
    items = sorted(entries, key=lambda e: e.name)
    for e in items:
        check_name(e.name)
    for a, b in zip(items, items[1:], strict=False):
        if a.name == b.name:
            raise ManifestError("", f"duplicate entry {a.name!r}")
    check_siblings(e.name for e in items)
    return _encode([_entry_obj(e) for e in items])


def manifest_hash(data: bytes) -> str:
    """Return the hash (blake3 hex) of manifest bytes; for the root manifest, the release id."""
    return cas.hash_bytes(data)


def _entry_obj(e: Entry) -> dict[str, Any]:
    if isinstance(e, FileEntry):
        return {
            "name": e.name,
            "type": "file",
            "mode": e.mode,
            "size": e.size,
            "hash": e.hash,
            "chunks": [[h, n] for h, n in e.chunks],
        }
    return {"name": e.name, "type": "dir", "hash": e.hash}


def _encode(entry_objs: list[dict[str, Any]]) -> bytes:
    obj = {"v": VERSION, "entries": entry_objs}
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_hash(v: object) -> bool:
    return isinstance(v, str) and cas.HASH_RE.match(v) is not None


def parse_manifest(data: bytes, *, where: str) -> list[Entry]:
    """Parse and strictly validate one directory manifest.

    Args:
        data: the manifest bytes.
        where: relative ``/``-separated path of the directory it describes (``""`` for the root),
            used in error messages and to name entries.
    Returns:
        the entries, sorted by name.
    Raises:
        ManifestError: naming ``where`` and the problem, if the bytes are not UTF-8 JSON, the
            version is not 1, a field is missing, unknown or of the wrong type, a mode is not
            420/493, a size is negative, a hash is not 64 lowercase hex characters, the chunks do
            not add up to the file, a name is unsafe (see :func:`names.check_name`), two names
            collide (:func:`names.check_siblings`), the entries are not sorted or not unique, or
            the bytes are not the canonical encoding.
    """
    try:
        obj = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(where, f"not valid UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ManifestError(where, "not a JSON object")
    if set(obj) != {"v", "entries"}:
        raise ManifestError(where, f"expected keys 'v' and 'entries', got {sorted(obj)}")
    if not _is_int(obj["v"]) or obj["v"] != VERSION:
        raise ManifestError(where, f"unsupported version {obj['v']!r} (expected {VERSION})")
    raw = obj["entries"]
    if not isinstance(raw, list):
        raise ManifestError(where, "'entries' is not a list")
    entries = [_parse_entry(item, i, where) for i, item in enumerate(raw)]
    for a, b in zip(entries, entries[1:], strict=False):
        if a.name == b.name:
            raise ManifestError(where, f"duplicate entry {a.name!r}")
        if b.name < a.name:
            raise ManifestError(where, f"entries not sorted by name: {b.name!r} after {a.name!r}")
    try:
        check_siblings((e.name for e in entries), where=where)
    except UnsafeName as exc:
        raise ManifestError(where, str(exc)) from exc
    if _encode([_entry_obj(e) for e in entries]) != data:
        raise ManifestError(where, "not in canonical form (re-encoding gives different bytes)")
    return entries


def _parse_entry(item: object, i: int, where: str) -> Entry:
    if not isinstance(item, dict):
        raise ManifestError(where, f"entry #{i} is not an object")
    name = item.get("name")
    label = f"entry #{i}" if not isinstance(name, str) else f"entry {name!r}"
    if not isinstance(name, str):
        raise ManifestError(where, f"{label}: 'name' is missing or not a string")
    try:
        check_name(name, path=f"{where}/{name}" if where else name)
    except UnsafeName as exc:
        raise ManifestError(where, str(exc)) from exc
    kind = item.get("type")
    if kind == "file":
        expected = _FILE_KEYS
    elif kind == "dir":
        expected = _DIR_KEYS
    else:
        raise ManifestError(where, f"{label}: 'type' must be 'file' or 'dir', got {kind!r}")
    if set(item) != expected:
        missing = sorted(expected - set(item))
        extra = sorted(set(item) - expected)
        problem = "; ".join(
            p for p in (missing and f"missing {missing}", extra and f"unknown {extra}") if p
        )
        raise ManifestError(where, f"{label}: fields wrong: {problem}")
    digest = item["hash"]
    if not _is_hash(digest):
        raise ManifestError(where, f"{label}: 'hash' is not 64 lowercase hex characters")
    if kind == "dir":
        return DirEntry(name=name, hash=digest)
    mode, size, chunks = item["mode"], item["size"], item["chunks"]
    if not _is_int(mode) or mode not in MODES:
        raise ManifestError(where, f"{label}: 'mode' must be 420 or 493, got {mode!r}")
    if not _is_int(size) or size < 0:
        raise ManifestError(where, f"{label}: 'size' must be an integer >= 0, got {size!r}")
    if not isinstance(chunks, list):
        raise ManifestError(where, f"{label}: 'chunks' is not a list")
    pairs: list[tuple[str, int]] = []
    for c in chunks:
        if not (isinstance(c, list) and len(c) == 2 and _is_hash(c[0]) and _is_int(c[1])):
            raise ManifestError(where, f"{label}: a chunk is not [64-hex hash, size]: {c!r}")
        if c[1] < 0:
            raise ManifestError(where, f"{label}: a chunk has a negative size")
        if c[1] == 0 and c[0] != EMPTY_HASH:
            raise ManifestError(where, f"{label}: an empty chunk must have the empty hash")
        pairs.append((c[0], c[1]))
    if sum(n for _, n in pairs) != size:
        raise ManifestError(where, f"{label}: chunk sizes do not add up to 'size' ({size})")
    if len(pairs) == 1 and pairs[0][0] != digest:
        raise ManifestError(where, f"{label}: a one-chunk file's chunk hash must be its hash")
    if not pairs and digest != EMPTY_HASH:
        raise ManifestError(where, f"{label}: a file without chunks must have the empty hash")
    return FileEntry(name=name, mode=mode, size=size, hash=digest, chunks=tuple(pairs))


def join(dir_path: str, name: str) -> str:
    """Return the relative path of ``name`` inside ``dir_path`` (``""`` is the root)."""
    return f"{dir_path}/{name}" if dir_path else name


def load(digest: str, get_manifest: GetManifest, *, where: str) -> list[Entry]:
    """Get the manifest ``digest``, check that its bytes hash to ``digest``, and parse it.

    Raises:
        ManifestError: the bytes do not match ``digest`` or do not parse.
        whatever ``get_manifest`` raises (e.g. :class:`officegrid.cas.BlobMissing`).
    """
    data = get_manifest(digest)
    actual = cas.hash_bytes(data)
    if actual != digest:
        raise ManifestError(where, f"manifest bytes hash to {actual}, not {digest}")
    return parse_manifest(data, where=where)


def walk(
    root_hash: str, get_manifest: GetManifest, *, prefix: str = ""
) -> Iterator[tuple[str, list[Entry]]]:
    """Yield ``(dir_path, entries)`` for every directory of a release, parents first.

    Args:
        root_hash: the release id (hash of the root manifest), or any directory's manifest hash.
        get_manifest: returns the manifest bytes of a hash.
        prefix: relative path of the directory ``root_hash`` describes (``""``: the root).
    Yields:
        the directory's relative ``/``-separated path (``prefix`` for the first one) and its
        parsed, sorted entries; depth-first, in name order.
    Raises:
        ManifestError: a manifest is bad or does not match its hash.
    """
    stack = [(prefix, root_hash)]
    while stack:
        path, digest = stack.pop()
        entries = load(digest, get_manifest, where=path)
        yield path, entries
        subdirs = [(join(path, e.name), e.hash) for e in entries if isinstance(e, DirEntry)]
        stack.extend(reversed(subdirs))


def tree_blobs(root_hash: str, entries_of: Callable[[str, str], list[Entry] | None]
               ) -> Iterator[tuple[str, str, str]]:
    """Every blob a release references, each once: ``(kind, hash, where)`` with kind
    ``"manifest"`` (where: its directory, ``/``-rooted) or ``"chunk"`` (where: its file).

    ``entries_of(hash, where)`` returns a manifest's parsed entries, or None to skip that
    subtree (missing or unreadable; the caller decides whether that is an error). Shared by the
    server's publish check and the worker's cache bound.
    """
    seen: set[str] = set()
    stack = [(root_hash, "/")]
    while stack:
        digest, where = stack.pop()
        seen.add(digest)
        yield "manifest", digest, where
        for e in entries_of(digest, where) or []:
            if isinstance(e, DirEntry):
                stack.append((e.hash, where.rstrip("/") + "/" + e.name))
                continue
            for chunk, _size in e.chunks:
                if chunk not in seen:
                    seen.add(chunk)
                    yield "chunk", chunk, f"{where.rstrip('/')}/{e.name}"


@dataclass
class Diff:
    """What differs between two releases.

    Attributes:
        added: relative paths present only in the new release (everything inside an added
            directory included); directory paths end with ``/``. Sorted.
        removed: relative paths present only in the old release, in the same form. Sorted.
        changed: relative paths of files present in both whose content or mode differ. Sorted.
            (A file replaced by a directory, or the reverse, is removed and added.)
        bytes_to_fetch: bytes of the distinct chunks that the added or changed files need and
            that no removed or changed file of the old release had: what a worker holding the
            old release downloads at most for file content (manifests not counted).
    """

    added: list[str]
    removed: list[str]
    changed: list[str]
    bytes_to_fetch: int


def diff(old_root: str, new_root: str, get_manifest: GetManifest) -> Diff:
    """Compare two releases, descending only into directories whose manifest hash differs.

    Args:
        old_root: release id of the old release.
        new_root: release id of the new release.
        get_manifest: returns the manifest bytes of a hash (of either release).
    Returns:
        a :class:`Diff`.
    Raises:
        ManifestError: a visited manifest is bad or does not match its hash.
    """
    added: list[str] = []
    removed: list[str] = []
    changed: list[str] = []
    new_chunks: dict[str, int] = {}
    old_chunks: set[str] = set()

    def note(e: FileEntry, new: bool) -> None:
        for h, n in e.chunks:
            if new:
                new_chunks[h] = n
            else:
                old_chunks.add(h)

    def one_side(e: Entry, path: str, new: bool) -> None:
        out = added if new else removed
        if isinstance(e, FileEntry):
            out.append(path)
            note(e, new)
            return
        out.append(path + "/")
        for sub, entries in walk(e.hash, get_manifest, prefix=path):
            for child in entries:
                p = join(sub, child.name)
                if isinstance(child, DirEntry):
                    out.append(p + "/")
                else:
                    out.append(p)
                    note(child, new)

    def visit(old_h: str, new_h: str, path: str) -> None:
        if old_h == new_h:
            return
        old = {e.name: e for e in load(old_h, get_manifest, where=path)}
        new = {e.name: e for e in load(new_h, get_manifest, where=path)}
        for name in sorted(old.keys() | new.keys()):
            o, n = old.get(name), new.get(name)
            if o == n:
                continue
            p = join(path, name)
            if isinstance(o, DirEntry) and isinstance(n, DirEntry):
                visit(o.hash, n.hash, p)
            elif isinstance(o, FileEntry) and isinstance(n, FileEntry):
                changed.append(p)
                note(o, False)
                note(n, True)
            else:
                if o is not None:
                    one_side(o, p, False)
                if n is not None:
                    one_side(n, p, True)

    visit(old_root, new_root, "")
    return Diff(
        added=sorted(added),
        removed=sorted(removed),
        changed=sorted(changed),
        bytes_to_fetch=sum(n for h, n in new_chunks.items() if h not in old_chunks),
    )
