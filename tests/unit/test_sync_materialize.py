"""Worker-side materialization: byte-identical trees, minimal fetching, atomicity, pull_into."""

from __future__ import annotations

import os
import stat
import tempfile
import time
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from officegrid import cas
from officegrid.sync import materialize as mat_mod
from officegrid.sync.manifest import (
    DirEntry,
    FileEntry,
    ManifestError,
    diff,
    encode_manifest,
    file_entry,
)
from officegrid.sync.materialize import (
    FetchError,
    MaterializeError,
    PullError,
    materialize,
    pull_into,
)
from officegrid.sync.names import UnsafeName, check_name, fold_name
from officegrid.sync.tree import build_tree, store_tree

MARKERS = {".officegrid-release", ".officegrid-pull"}


# --------------------------------------------------------------------------- helpers


class Server:
    """A content store standing in for the server, with a fetch function that logs calls."""

    def __init__(self, root: Path) -> None:
        self.store = cas.ContentStore(root)
        self.calls: list[list[str]] = []
        self.fail_after: int | None = None  # raise on the call with this index
        self.bases: dict[str, str] = {}  # delta bases offered: hash -> base hash

    def publish(self, src: Path) -> str:
        tree = build_tree(src)
        store_tree(tree, self.store)
        return tree.root_hash

    def put_manifest(self, entries: Iterable[FileEntry | DirEntry]) -> str:
        return self.store.put(encode_manifest(entries))

    def fetch(self, hashes: list[str], bases: dict[str, str] | None = None
              ) -> list[tuple[str, bytes]]:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise ConnectionError("transfer cut off")
        self.calls.append(list(hashes))
        self.bases.update(bases or {})
        return [(h, self.store.read(h)) for h in hashes if self.store.has(h)]

    @property
    def fetched(self) -> list[str]:
        return [h for call in self.calls for h in call]


def write(root: Path, rel: str, data: bytes | str = b"x", executable: bool = False) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(0o755 if executable else 0o644)


def snapshot(root: Path) -> dict[str, Any]:
    """relative path -> "dir" or (content, executable), markers at the top level left out."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in dirnames:
            out[os.path.normpath(os.path.join(rel_dir, name))] = "dir"
        for name in filenames:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if rel in MARKERS:
                continue
            path = Path(dirpath, name)
            out[rel] = (path.read_bytes(), bool(path.stat().st_mode & stat.S_IXUSR))
    return out


def modes(root: Path) -> set[int]:
    return {
        stat.S_IMODE(p.stat().st_mode)
        for p in root.rglob("*")
        if p.is_file() and p.name not in MARKERS
    }


def staging_dirs(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(".staging-")]


@pytest.fixture
def server(tmp_path: Path) -> Server:
    return Server(tmp_path / "server")


@pytest.fixture
def cache(tmp_path: Path) -> cas.ContentStore:
    return cas.ContentStore(tmp_path / "cache")


# --------------------------------------------------------------------------- property: round trip


def _legal(name: str) -> bool:
    try:
        check_name(name)
    except UnsafeName:
        return False
    return name not in {".git", ".venv", "__pycache__", ".officegridignore"} | MARKERS and not (
        name.endswith(".pyc")
    )


names = st.one_of(
    st.sampled_from(["a", "B.txt", "run.sh", "with space", "été", "日本", ".hidden", "x.y.z"]),
    st.text(
        st.characters(codec="utf-8", categories=("L", "M", "N", "P", "S", "Zs")),
        min_size=1,
        max_size=10,
    ).map(lambda s: unicodedata.normalize("NFC", s)),
).filter(_legal)

files = st.tuples(
    st.one_of(st.just(b""), st.binary(max_size=64), st.binary(min_size=1000, max_size=5000)),
    st.booleans(),
)


def _dir(children: st.SearchStrategy[Any]) -> st.SearchStrategy[list[tuple[str, Any]]]:
    return st.lists(st.tuples(names, children), max_size=5, unique_by=lambda t: fold_name(t[0]))


trees = _dir(st.recursive(files, _dir, max_leaves=15))


def make_tree(root: Path, spec: list[tuple[str, Any]]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, node in spec:
        if isinstance(node, list):
            make_tree(root / name, node)
        else:
            data, executable = node
            write(root, name, data, executable)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(first=trees, second=trees)
def test_roundtrip_materialize_and_pull(
    first: list[tuple[str, Any]], second: list[tuple[str, Any]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        server = Server(base / "server")
        cache = cas.ContentStore(base / "cache")
        make_tree(base / "src1", first)
        make_tree(base / "src2", second)
        r1, r2 = server.publish(base / "src1"), server.publish(base / "src2")

        for rid, src in ((r1, "src1"), (r2, "src2")):
            dest = base / "releases" / rid
            stats = materialize(rid, dest, cache=cache, fetch=server.fetch)
            assert snapshot(dest) == snapshot(base / src)
            assert modes(dest) <= {0o644, 0o755}
            assert (dest / ".officegrid-release").read_text().splitlines()[0] == rid
            written = sum(1 for v in snapshot(dest).values() if v != "dir")
            assert stats.files_written == (0 if stats.already_present else written)
            assert stats.already_present == (rid == r1 == r2 and src == "src2")
        assert staging_dirs(base / "releases") == []

        target = base / "pulled"
        pull_into(r1, target, cache=cache, fetch=server.fetch)
        assert snapshot(target) == snapshot(base / "src1")
        calls = len(server.calls)
        pull_into(r2, target, cache=cache, fetch=server.fetch)  # replaces: rsync -a --delete
        assert snapshot(target) == snapshot(base / "src2")
        assert (target / ".officegrid-pull").read_text().splitlines()[0] == r2
        assert len(server.calls) == calls  # everything was cached already
        assert sorted(p.name for p in base.iterdir()) == [
            "cache",
            "pulled",
            "releases",
            "server",
            "src1",
            "src2",
        ]


# --------------------------------------------------------------------------- minimal transfer


def build_300(root: Path) -> None:
    for d in range(10):
        for e in range(3):
            for f in range(10):
                body = "".join(f"print({d}, {e}, {f}, {line})\n" for line in range(20))
                write(root, f"d{d}/e{e}/f{f}.py", body)


def test_one_line_edit_fetches_only_the_root_path_and_the_file(
    tmp_path: Path, server: Server, cache: cas.ContentStore
) -> None:
    src = tmp_path / "src"
    build_300(src)
    old = server.publish(src)
    first = materialize(old, tmp_path / "w" / old, cache=cache, fetch=server.fetch)
    assert first.files_written == 300
    assert first.manifests_fetched == 1 + 10 + 30
    assert first.chunks_fetched == 300
    assert first.fetch_calls == 3 + 2  # 3 levels of manifests, 300 chunks in 2 batches of 256

    path = src / "d3" / "e1" / "f5.py"
    lines = path.read_text().splitlines(keepends=True)
    lines[7] = "print('edited')\n"
    path.write_text("".join(lines))
    tree = build_tree(src)
    store_tree(tree, server.store)
    new = tree.root_hash
    assert new != old

    server.calls.clear()
    stats = materialize(new, tmp_path / "w" / new, cache=cache, fetch=server.fetch)
    manifests = {h for h in tree.manifests if not cache.has(h)}  # none: all fetched by now
    assert manifests == set()
    root_bytes = tree.manifests[new]
    d3 = next(e for e in _entries(root_bytes) if e.name == "d3").hash
    e1 = next(e for e in _entries(tree.manifests[d3]) if e.name == "e1").hash
    file_hash = cas.hash_bytes(path.read_bytes())
    assert server.calls == [[new], [d3], [e1], [file_hash]]
    # Each changed blob was offered as a delta against its previous version beside it.
    old_d3 = next(e for e in _entries(server.store.read(old)) if e.name == "d3").hash
    old_e1 = next(e for e in _entries(server.store.read(old_d3)) if e.name == "e1").hash
    old_file = next(e for e in _entries(server.store.read(old_e1)) if e.name == "f5.py").hash
    assert server.bases == {new: old, d3: old_d3, e1: old_e1, file_hash: old_file}
    assert (stats.manifests_fetched, stats.chunks_fetched, stats.files_written) == (3, 1, 300)
    assert stats.files_reused == 299
    expected = sum(len(tree.manifests[h]) for h in (new, d3, e1)) + path.stat().st_size
    assert stats.bytes_fetched == expected
    assert stats.bytes_fetched < 6000  # vs rsync's 42.7 KB file list for a similar tree
    assert snapshot(tmp_path / "w" / new) == snapshot(src)

    result = diff(old, new, server.store.read)
    assert result.changed == ["d3/e1/f5.py"]
    assert result.added == [] and result.removed == []
    assert result.bytes_to_fetch == path.stat().st_size

    # Unchanged release: nothing fetched, whether into a new directory or the existing one.
    server.calls.clear()
    again = materialize(new, tmp_path / "w2" / new, cache=cache, fetch=server.fetch)
    assert server.calls == [] and again.files_written == 300
    same = materialize(new, tmp_path / "w" / new, cache=cache, fetch=server.fetch)
    assert server.calls == [] and same.already_present and same.files_written == 0


def _entries(data: bytes) -> list[FileEntry | DirEntry]:
    from officegrid.sync.manifest import parse_manifest

    return parse_manifest(data, where="")


def test_batches_respect_batch_size(
    tmp_path: Path, server: Server, cache: cas.ContentStore
) -> None:
    for i in range(5):
        write(tmp_path / "src", f"f{i}", f"content {i}")
    rid = server.publish(tmp_path / "src")
    stats = materialize(rid, tmp_path / "dest", cache=cache, fetch=server.fetch, batch_size=2)
    assert [len(c) for c in server.calls] == [1, 2, 2, 1]
    assert stats.fetch_calls == 4
    with pytest.raises(ValueError, match="batch_size"):
        materialize(
            rid,
            tmp_path / "d2",
            cache=cas.ContentStore(tmp_path / "c2"),
            fetch=server.fetch,
            batch_size=0,
        )


def test_empty_files_need_no_fetch(tmp_path: Path, server: Server, cache: cas.ContentStore) -> None:
    write(tmp_path / "src", "empty", b"")
    (tmp_path / "src" / "empty_dir").mkdir()
    rid = server.publish(tmp_path / "src")
    stats = materialize(rid, tmp_path / "dest", cache=cache, fetch=server.fetch)
    assert server.fetched == [rid, cas.hash_bytes(encode_manifest([]))]
    assert stats.chunks_fetched == 0
    assert (tmp_path / "dest" / "empty").read_bytes() == b""
    assert (tmp_path / "dest" / "empty_dir").is_dir()


# --------------------------------------------------------------------------- bad servers


def test_wrong_bytes_once_are_refetched(
    tmp_path: Path, server: Server, cache: cas.ContentStore
) -> None:
    write(tmp_path / "src", "a.txt", "hello")
    rid = server.publish(tmp_path / "src")
    chunk = cas.hash_bytes(b"hello")
    lied: list[str] = []

    def flaky(hashes: list[str]) -> list[tuple[str, bytes]]:
        answer = server.fetch(hashes)
        if chunk in hashes and not lied:
            lied.append(chunk)
            return [(h, b"evil" if h == chunk else data) for h, data in answer]
        return answer

    stats = materialize(rid, tmp_path / "dest", cache=cache, fetch=flaky)
    assert (tmp_path / "dest" / "a.txt").read_bytes() == b"hello"
    assert server.calls == [[rid], [chunk], [chunk]]
    assert stats.chunks_fetched == 1 and stats.fetch_calls == 3


def test_wrong_bytes_twice_is_a_clear_error_and_no_dest(
    tmp_path: Path, server: Server, cache: cas.ContentStore
) -> None:
    write(tmp_path / "src", "pkg/a.txt", "hello")
    rid = server.publish(tmp_path / "src")
    chunk = cas.hash_bytes(b"hello")

    def liar(hashes: list[str]) -> list[tuple[str, bytes]]:
        return [(h, b"evil" if h == chunk else d) for h, d in server.fetch(hashes)]

    dest = tmp_path / "w" / "dest"
    with pytest.raises(FetchError) as info:
        materialize(rid, dest, cache=cache, fetch=liar)
    message = str(info.value)
    assert chunk in message and "pkg/a.txt" in message and "hashes to" in message
    assert not dest.exists()
    assert staging_dirs(dest.parent) == []
    assert not cache.has(chunk)


def test_blob_missing_from_answer_twice(
    tmp_path: Path, server: Server, cache: cas.ContentStore
) -> None:
    write(tmp_path / "src", "a.txt", "hello")
    rid = server.publish(tmp_path / "src")
    server.store.delete(cas.hash_bytes(b"hello"))
    with pytest.raises(FetchError, match="not in the server's answer"):
        materialize(rid, tmp_path / "dest", cache=cache, fetch=server.fetch)
    assert not (tmp_path / "dest").exists()


def test_extra_and_duplicate_blobs_in_answer_are_ignored(
    tmp_path: Path, server: Server, cache: cas.ContentStore
) -> None:
    write(tmp_path / "src", "a.txt", "hello")
    rid = server.publish(tmp_path / "src")
    junk = b"unrequested"

    def chatty(hashes: list[str]) -> list[tuple[str, bytes]]:
        answer = server.fetch(hashes)
        return answer + answer + [(cas.hash_bytes(junk), junk)]

    stats = materialize(rid, tmp_path / "dest", cache=cache, fetch=chatty)
    assert stats.chunks_fetched == 1 and stats.manifests_fetched == 1
    assert not cache.has(cas.hash_bytes(junk))


def test_malicious_manifest_refused(
    tmp_path: Path, server: Server, cache: cas.ContentStore
) -> None:
    evil = (
        b'{"entries":[{"hash":"' + cas.hash_bytes(b"x").encode() + b'","name":"..",'
        b'"type":"dir"}],"v":1}'
    )
    rid = server.store.put(evil)
    dest = tmp_path / "w" / "dest"
    with pytest.raises(ManifestError, match=r"'\.\.'"):
        materialize(rid, dest, cache=cache, fetch=server.fetch)
    assert not dest.exists() and not (tmp_path / "x").exists()


def test_top_level_marker_name_refused(
    tmp_path: Path, server: Server, cache: cas.ContentStore
) -> None:
    chunk = server.store.put(b"fake")
    rid = server.put_manifest(
        [file_entry(".officegrid-release", executable=False, size=4, digest=chunk)]
    )
    with pytest.raises(MaterializeError, match="reserved"):
        materialize(rid, tmp_path / "dest", cache=cache, fetch=server.fetch)


def test_multi_chunk_file_is_concatenated_and_checked(
    tmp_path: Path, server: Server, cache: cas.ContentStore
) -> None:
    parts = [b"first part,", b"second part,", b"third"]
    chunks = tuple((server.store.put(p), len(p)) for p in parts)
    whole = b"".join(parts)
    good = FileEntry("joined", 0o755, len(whole), cas.hash_bytes(whole), chunks)
    rid = server.put_manifest([good])
    materialize(rid, tmp_path / "dest", cache=cache, fetch=server.fetch)
    assert (tmp_path / "dest" / "joined").read_bytes() == whole
    assert stat.S_IMODE((tmp_path / "dest" / "joined").stat().st_mode) == 0o755

    wrong = FileEntry("joined", 0o644, len(whole), cas.hash_bytes(b"other" * 5), chunks)
    rid = server.put_manifest([wrong])
    with pytest.raises(MaterializeError, match="does not hash"):
        materialize(rid, tmp_path / "dest2", cache=cache, fetch=server.fetch)
    assert not (tmp_path / "dest2").exists()


def test_corrupt_cache_blob_is_refetched(
    tmp_path: Path, server: Server, cache: cas.ContentStore
) -> None:
    write(tmp_path / "src", "a.txt", "hello")
    rid = server.publish(tmp_path / "src")
    materialize(rid, tmp_path / "one", cache=cache, fetch=server.fetch)
    chunk = cas.hash_bytes(b"hello")
    cache.path(chunk).write_bytes(cas.compress(b"bitrot"))
    server.calls.clear()
    materialize(rid, tmp_path / "elsewhere" / "two", cache=cache, fetch=server.fetch)
    assert server.calls == [[chunk]]
    assert (tmp_path / "elsewhere" / "two" / "a.txt").read_bytes() == b"hello"


def test_unchanged_files_are_copied_from_the_release_beside_unless_touched(
    tmp_path: Path, server: Server, cache: cas.ContentStore
) -> None:
    for i in range(3):
        write(tmp_path / "src", f"f{i}.txt", f"file {i}\n" * 100)
    r1 = server.publish(tmp_path / "src")
    releases = tmp_path / "releases"
    materialize(r1, releases / r1, cache=cache, fetch=server.fetch)
    write(tmp_path / "src", "f0.txt", "changed\n")
    r2 = server.publish(tmp_path / "src")
    # A unit scribbled on one file of r1 (same size, new mtime): it must not be copied.
    (releases / r1 / "f1.txt").write_text("FILE 1\n" * 100)
    stats = materialize(r2, releases / r2, cache=cache, fetch=server.fetch)
    assert stats.files_written == 3 and stats.files_reused == 1  # f2 only
    assert snapshot(releases / r2) == snapshot(tmp_path / "src")


def test_pull_rewrites_only_what_differs_and_marks_incomplete_while_updating(
    tmp_path: Path, server: Server, cache: cas.ContentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(4):
        write(tmp_path / "src", f"d/f{i}.txt", f"file {i}\n")
    r1 = server.publish(tmp_path / "src")
    target = tmp_path / "out"
    assert pull_into(r1, target, cache=cache, fetch=server.fetch).files_written == 4
    again = pull_into(r1, target, cache=cache, fetch=server.fetch)
    assert again.already_present and again.files_written == 0
    inodes = {p.name: p.stat().st_ino for p in (target / "d").iterdir()}
    write(tmp_path / "src", "d/f0.txt", "edited\n")
    r2 = server.publish(tmp_path / "src")

    def cut(*args: object, **kwargs: object) -> None:
        raise OSError(5, "cut off while writing")

    monkeypatch.setattr(mat_mod, "_write_file", cut)
    with pytest.raises(OSError, match="cut off"):
        pull_into(r2, target, cache=cache, fetch=server.fetch)
    assert (target / ".officegrid-pull").read_text().splitlines()[0] == f"incomplete {r1}"
    monkeypatch.undo()
    stats = pull_into(r2, target, cache=cache, fetch=server.fetch)
    assert stats.files_written == 1
    assert snapshot(target) == snapshot(tmp_path / "src")
    assert {p.name: p.stat().st_ino for p in (target / "d").iterdir()
            if p.name != "f0.txt"} == {k: v for k, v in inodes.items() if k != "f0.txt"}


# --------------------------------------------------------------------------- interruption


def test_interrupted_fetch_leaves_no_dest_and_resumes_from_cache(
    tmp_path: Path, server: Server, cache: cas.ContentStore
) -> None:
    src = tmp_path / "src"
    for i in range(10):
        write(src, f"f{i}.txt", f"file {i}")
    rid = server.publish(src)
    dest = tmp_path / "w" / rid
    server.fail_after = 3  # root manifest, 2 chunk batches, then the cut
    with pytest.raises(ConnectionError):
        materialize(rid, dest, cache=cache, fetch=server.fetch, batch_size=3)
    assert not dest.exists()
    assert staging_dirs(dest.parent) == []
    server.fail_after = None
    server.calls.clear()
    stats = materialize(rid, dest, cache=cache, fetch=server.fetch, batch_size=3)
    assert stats.manifests_fetched == 0
    assert stats.chunks_fetched == 4  # 6 of the 10 chunks came before the cut
    assert snapshot(dest) == snapshot(src)


def test_crash_during_assembly_leaves_no_dest(
    tmp_path: Path, server: Server, cache: cas.ContentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "src", "a/b.txt", "hello")
    rid = server.publish(tmp_path / "src")
    dest = tmp_path / "w" / rid

    def boom(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mat_mod, "_write_marker", boom)
    with pytest.raises(OSError, match="No space"):
        materialize(rid, dest, cache=cache, fetch=server.fetch)
    assert not dest.exists()
    assert staging_dirs(dest.parent) == []
    monkeypatch.undo()
    server.calls.clear()
    materialize(rid, dest, cache=cache, fetch=server.fetch)
    assert server.calls == []
    assert (dest / "a" / "b.txt").read_bytes() == b"hello"


def test_leftover_staging_is_removed(
    tmp_path: Path, server: Server, cache: cas.ContentStore
) -> None:
    write(tmp_path / "src", "a.txt", "hello")
    rid = server.publish(tmp_path / "src")
    parent = tmp_path / "w"
    leftover = parent / f".staging-{rid}-deadbeef"
    write(leftover, "half.txt", "half-written")
    other = parent / f".staging-{'0' * 64}-cafe"
    other.mkdir()
    materialize(rid, parent / rid, cache=cache, fetch=server.fetch)
    assert not leftover.exists()
    assert other.exists()  # another release's staging is not ours to remove
    assert staging_dirs(parent) == [other]


def test_existing_foreign_dest_refused(
    tmp_path: Path, server: Server, cache: cas.ContentStore
) -> None:
    write(tmp_path / "src", "a.txt", "hello")
    rid = server.publish(tmp_path / "src")
    dest = tmp_path / "dest"
    write(dest, "user.txt", "mine")
    with pytest.raises(MaterializeError, match="does not hold"):
        materialize(rid, dest, cache=cache, fetch=server.fetch)
    assert (dest / "user.txt").read_text() == "mine"
    with pytest.raises(MaterializeError, match="not a release id"):
        materialize("../etc", tmp_path / "x", cache=cache, fetch=server.fetch)


# --------------------------------------------------------------------------- pull_into


def test_pull_refuses_non_empty_foreign_dir(
    tmp_path: Path, server: Server, cache: cas.ContentStore
) -> None:
    write(tmp_path / "src", "a.txt", "hello")
    rid = server.publish(tmp_path / "src")
    target = tmp_path / "home-stuff"
    write(target, "thesis.docx", "years of work")
    with pytest.raises(PullError, match=".officegrid-pull"):
        pull_into(rid, target, cache=cache, fetch=server.fetch)
    assert (target / "thesis.docx").read_text() == "years of work"
    assert server.calls == []
    write(tmp_path, "plain-file", "x")
    with pytest.raises(PullError, match="not a directory"):
        pull_into(rid, tmp_path / "plain-file", cache=cache, fetch=server.fetch)
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(PullError, match="symbolic link"):
        pull_into(rid, tmp_path / "link", cache=cache, fetch=server.fetch)


def test_pull_into_empty_dir_then_removes_extra_files(
    tmp_path: Path, server: Server, cache: cas.ContentStore
) -> None:
    write(tmp_path / "src", "keep.txt", "v1")
    write(tmp_path / "src", "bin/tool", "#!/bin/sh\n", executable=True)
    rid = server.publish(tmp_path / "src")
    target = tmp_path / "out"
    target.mkdir()
    pull_into(rid, target, cache=cache, fetch=server.fetch)
    assert snapshot(target) == snapshot(tmp_path / "src")
    # local changes: an extra file, an edited file, a lost exec bit
    write(target, "extra/junk.txt", "junk")
    write(target, "keep.txt", "locally edited")
    (target / "bin" / "tool").chmod(0o644)
    server.calls.clear()
    stats = pull_into(rid, target, cache=cache, fetch=server.fetch)
    assert snapshot(target) == snapshot(tmp_path / "src")
    assert server.calls == [] and stats.files_written == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_interrupted_pull_keeps_target_and_cleans_up(
    tmp_path: Path, server: Server, cache: cas.ContentStore
) -> None:
    write(tmp_path / "src1", "a.txt", "one")
    r1 = server.publish(tmp_path / "src1")
    write(tmp_path / "src2", "b.txt", "two")
    r2 = server.publish(tmp_path / "src2")
    target = tmp_path / "out"
    pull_into(r1, target, cache=cache, fetch=server.fetch)
    server.fail_after = len(server.calls) + 1
    with pytest.raises(ConnectionError):
        pull_into(r2, target, cache=cache, fetch=server.fetch)
    assert snapshot(target) == snapshot(tmp_path / "src1")
    write(tmp_path, ".out.pull-0123-new/half.txt", "leftover of a crash")
    server.fail_after = None
    pull_into(r2, target, cache=cache, fetch=server.fetch)
    assert snapshot(target) == snapshot(tmp_path / "src2")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_pull_into_unnormalized_path(
    tmp_path: Path, server: Server, cache: cas.ContentStore
) -> None:
    write(tmp_path / "src", "a.txt", "hello")
    rid = server.publish(tmp_path / "src")
    (tmp_path / "x").mkdir()
    pull_into(rid, tmp_path / "x" / ".." / "out", cache=cache, fetch=server.fetch)
    assert (tmp_path / "out" / "a.txt").read_text() == "hello"


def test_exploding_tree_of_shared_manifests_refused(
    tmp_path: Path, server: Server, cache: cas.ContentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    level = server.put_manifest([])
    for _ in range(20):  # 20 manifests describing 2**21 directories
        level = server.put_manifest([DirEntry("a", level), DirEntry("b", level)])
    monkeypatch.setattr(mat_mod, "MAX_ENTRIES", 5000)
    with pytest.raises(MaterializeError, match="more than 5000"):
        materialize(level, tmp_path / "dest", cache=cache, fetch=server.fetch)
    assert len(server.fetched) <= 21


def test_fetch_batches_are_bounded_by_size(tmp_path):
    """Incompressible chunks: no answer may exceed the batch byte bound (the server caps it)."""
    import os as _os

    from officegrid import cas as _cas
    from officegrid.sync import materialize as m
    from officegrid.sync.tree import build_tree as _build
    from officegrid.sync.tree import store_tree as _store

    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"f{i}.bin").write_bytes(_os.urandom(400_000))
    tree = _build(src)
    server = _cas.ContentStore(tmp_path / "server")
    _store(tree, server)
    sizes = []

    def fetch(hashes):
        out = [(h, server.read(h)) for h in hashes]
        sizes.append(sum(len(d) for _, d in out))
        return out

    old = m.BATCH_BYTES
    m.BATCH_BYTES = 1_000_000
    try:
        m.materialize(tree.root_hash, tmp_path / "dest", cache=_cas.ContentStore(tmp_path / "c"),
                      fetch=fetch)
    finally:
        m.BATCH_BYTES = old
    assert max(sizes) <= 1_000_000 and len(sizes) >= 5


# --------------------------------------------------------------------------- review R1


def _two_releases(tmp_path: Path, server: Server, cache: cas.ContentStore) -> tuple[str, str]:
    for i in range(3):
        write(tmp_path / "src", f"d/f{i}.txt", f"file {i}\n" * 100)
    r1 = server.publish(tmp_path / "src")
    materialize(r1, tmp_path / "releases" / r1, cache=cache, fetch=server.fetch)
    write(tmp_path / "src", "d/f0.txt", "changed\n")
    return r1, server.publish(tmp_path / "src")


@pytest.mark.parametrize("meanwhile", [
    lambda src: os.unlink(src),  # the cache bound (another slot's prune) removes that release
    lambda src: Path(src).write_text("SCRIBBLE\n" * 100),  # a unit of it writes to the file
], ids=["removed", "written"])
def test_a_file_of_the_release_beside_that_changes_as_it_is_copied_is_written_from_chunks(
    tmp_path: Path, server: Server, cache: cas.ContentStore, monkeypatch: pytest.MonkeyPatch,
    meanwhile: Any,
) -> None:
    r1, r2 = _two_releases(tmp_path, server, cache)
    real_copy = mat_mod.shutil.copyfile

    def copy(src: Any, dst: Any, **kw: Any) -> Any:
        meanwhile(src)
        return real_copy(src, dst, **kw)

    monkeypatch.setattr(mat_mod.shutil, "copyfile", copy)
    stats = materialize(r2, tmp_path / "releases" / r2, cache=cache, fetch=server.fetch)
    assert stats.files_reused == 0 and stats.files_written == 3
    assert snapshot(tmp_path / "releases" / r2) == snapshot(tmp_path / "src")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_reused_files_are_fsynced_where_there_is_no_syncfs(
    tmp_path: Path, server: Server, cache: cas.ContentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without syncfs (Windows, macOS) every file, copied ones too, is fsynced before the
    marker: else a power cut can leave a 'complete' release with empty files."""
    r1, r2 = _two_releases(tmp_path, server, cache)
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(mat_mod, "_SYNCFS", None)
    monkeypatch.setattr(mat_mod.os, "fsync", fsync)
    stats = materialize(r2, tmp_path / "releases" / r2, cache=cache, fetch=server.fetch)
    assert stats.files_reused == 2
    assert {"f0.txt", "f1.txt", "f2.txt"} <= set(synced)


def test_pull_handles_names_of_255_bytes(
    tmp_path: Path, server: Server, cache: cas.ContentStore
) -> None:
    name = "é" * 127  # 254 bytes: no room for a temporary name built on it
    write(tmp_path / "src", f"d/{name}", "long")
    rid = server.publish(tmp_path / "src")
    pull_into(rid, tmp_path / "out", cache=cache, fetch=server.fetch)
    assert snapshot(tmp_path / "out") == snapshot(tmp_path / "src")


def test_pull_makes_added_and_removed_directories_durable_before_the_marker(
    tmp_path: Path, server: Server, cache: cas.ContentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "src1", "a/b/old.txt", "old")
    r1 = server.publish(tmp_path / "src1")
    write(tmp_path / "src2", "a/new/c/f.txt", "new")
    r2 = server.publish(tmp_path / "src2")
    target = tmp_path / "out"
    pull_into(r1, target, cache=cache, fetch=server.fetch)
    synced: list[Path] = []
    real = mat_mod._fsync_dir

    def fsync_dir(path: Path) -> None:
        synced.append(Path(path))
        real(path)

    monkeypatch.setattr(mat_mod, "_SYNCFS", None)
    monkeypatch.setattr(mat_mod, "_fsync_dir", fsync_dir)
    pull_into(r2, target, cache=cache, fetch=server.fetch)
    assert snapshot(target) == snapshot(tmp_path / "src2")
    assert {target / "a", target / "a" / "new", target / "a" / "new" / "c"} <= set(synced)


def test_pull_removes_only_its_own_leftovers_beside_the_target(
    tmp_path: Path, server: Server, cache: cas.ContentStore
) -> None:
    """Only the swap directories of older pulls (``.{name}.pull-{hex}-new|old``) are swept."""
    write(tmp_path / "src", "a.txt", "one")
    rid = server.publish(tmp_path / "src")
    write(tmp_path, ".out.pull-notes.txt", "the user's own file")
    write(tmp_path, ".out.pull-backup/keep.txt", "the user's own directory")
    write(tmp_path, ".out.pull-0123abcd-old/half.txt", "leftover of a crash")
    pull_into(rid, tmp_path / "out", cache=cache, fetch=server.fetch)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == [
        ".out.pull-backup", ".out.pull-notes.txt"]


def _naive_chunk_bases(new: FileEntry, old: FileEntry) -> dict[str, str]:
    """The definition: for each chunk of ``new``, the chunk of ``old`` overlapping it most."""
    old_ranges, pos = [], 0
    for digest, size in old.chunks:
        if size > 0:
            old_ranges.append((pos, pos + size, digest))
        pos += size
    out: dict[str, str] = {}
    pos = 0
    for digest, size in new.chunks:
        start, end, pos = pos, pos + size, pos + size
        if size and old_ranges:
            best, most = old_ranges[-1][2], 0
            for o_start, o_end, o_digest in old_ranges:
                if min(end, o_end) - max(start, o_start) > most:
                    best, most = o_digest, min(end, o_end) - max(start, o_start)
            if best != digest:
                out.setdefault(digest, best)
    return out


def _entry(chunks: list[tuple[str, int]]) -> FileEntry:
    return FileEntry("f", 0o644, sum(n for _, n in chunks), "0" * 64, tuple(chunks))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(0, 9)), max_size=12),
       st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(0, 9)), max_size=12))
def test_chunk_bases_are_the_most_overlapping_old_chunks(new: list, old: list) -> None:
    new_e = _entry([(c * 64, n) for c, n in new])
    old_e = _entry([(c.upper() * 64, n) for c, n in old] + [("a" * 64, 3)])
    assert mat_mod._overlap_bases(new_e, old_e) == _naive_chunk_bases(new_e, old_e)


def test_chunk_bases_follow_unchanged_neighbours_across_a_shift() -> None:
    """An insert shifts every later offset: the changed chunks at its edges replace the old
    chunk between their unchanged neighbours, not the one at the same offset."""
    a, b, c, d, e = (ch * 64 for ch in "abcde")
    old = _entry([(a, 100), (b, 100), (c, 100), (d, 100), (e, 100)])
    x1, x2, x3 = (ch * 64 for ch in "123")  # c's region edited + 1,000 bytes inserted
    new = _entry([(a, 100), (b, 100), (x1, 500), (x2, 500), (x3, 100), (d, 100), (e, 100)])
    bases = mat_mod._chunk_bases(new, old)
    assert bases[x1] == c  # after the unchanged b
    assert bases[x3] == c  # before the unchanged d (same offset would give e's range)
    assert x2 in bases  # no unchanged neighbour: the most overlapping old chunk


def test_chunk_bases_of_a_huge_file_take_linear_time() -> None:
    """A 10 GB file has ~80,000 chunks: comparing every pair took minutes."""
    n = 80_000
    old = _entry([(f"{i:064x}", 131_072) for i in range(n)])
    new = _entry([(f"{i + n:064x}", 131_072 + (i == 0)) for i in range(n)])
    t0 = time.monotonic()
    bases = mat_mod._chunk_bases(new, old)
    assert time.monotonic() - t0 < 5
    assert len(bases) == n


def test_a_file_edited_while_a_pull_runs_is_not_vouched_for_by_the_index(
    tmp_path: Path, server: Server, cache: cas.ContentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review R1: the index was built from stat data read at the end of the pull, so an
    unchanged file edited meanwhile was indexed as holding the release's content, and no
    later pull repaired it."""
    write(tmp_path / "src", "a.txt", "one\n")
    write(tmp_path / "src", "b.txt", "two\n")
    r1 = server.publish(tmp_path / "src")
    target = tmp_path / "out"
    pull_into(r1, target, cache=cache, fetch=server.fetch)
    write(tmp_path / "src", "b.txt", "TWO\n")
    r2 = server.publish(tmp_path / "src")
    real_write = mat_mod._write_file

    def write_while_the_owner_edits(*args: Any) -> None:
        (target / "a.txt").write_text("local edit\n")  # a.txt is unchanged in r2
        real_write(*args)

    monkeypatch.setattr(mat_mod, "_write_file", write_while_the_owner_edits)
    pull_into(r2, target, cache=cache, fetch=server.fetch)
    monkeypatch.undo()
    again = pull_into(r2, target, cache=cache, fetch=server.fetch)
    assert not again.already_present and again.files_written == 1
    assert snapshot(target) == snapshot(tmp_path / "src")


def test_a_changed_large_file_takes_its_unchanged_chunks_from_the_old_version(
    tmp_path: Path, server: Server, cache: cas.ContentStore
) -> None:
    """rsync's basis file: the shared chunks of a changed file are read from its previous
    version in the target, not decompressed from (or fetched into) the cache."""
    import random as _random

    body = _random.Random(3).randbytes(3 << 20)
    write(tmp_path / "src", "big.bin", body)
    r1 = server.publish(tmp_path / "src")
    target = tmp_path / "out"
    pull_into(r1, target, cache=cache, fetch=server.fetch)
    (old_entry,) = _entries(server.store.read(r1))
    for digest, _size in old_entry.chunks:  # bit rot: a cache read would refetch the chunk
        cache.path(digest).write_bytes(cas.compress(b"bitrot"))
    edited = body[:1_500_000] + b"an inserted line\n" + body[1_500_000:]
    write(tmp_path / "src", "big.bin", edited)
    r2 = server.publish(tmp_path / "src")
    server.calls.clear()
    pull_into(r2, target, cache=cache, fetch=server.fetch)
    assert (target / "big.bin").read_bytes() == edited
    (entry,) = _entries(server.store.read(r2))
    chunks = {h for h, _ in entry.chunks}
    fetched_chunks = [h for h in server.fetched if h in chunks]
    assert len(chunks) > 10
    assert 1 <= len(fetched_chunks) <= 3  # the chunks around the insert, not all of them:
    # the others were read from the previous version of the file


def test_a_basis_that_lies_about_its_content_is_not_used(
    tmp_path: Path, server: Server, cache: cas.ContentStore
) -> None:
    import random as _random

    body = _random.Random(4).randbytes(3 << 20)
    write(tmp_path / "src", "big.bin", body)
    r1 = server.publish(tmp_path / "src")
    target = tmp_path / "out"
    pull_into(r1, target, cache=cache, fetch=server.fetch)
    path = target / "big.bin"
    st = path.stat()
    with open(path, "r+b") as fh:  # same size, same inode, mtime put back: the index is fooled
        fh.seek(100)
        fh.write(b"tampered")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    edited = body[:2_000_000] + b"x" + body[2_000_000:]
    write(tmp_path / "src", "big.bin", edited)
    r2 = server.publish(tmp_path / "src")
    pull_into(r2, target, cache=cache, fetch=server.fetch)
    assert path.read_bytes() == edited  # the whole-file hash caught it: written from the cache
