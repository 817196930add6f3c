"""Manifest wire format: exact encoding, strict parsing, walk and diff."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from officegrid import cas
from officegrid.sync.manifest import (
    EMPTY_HASH,
    DirEntry,
    FileEntry,
    ManifestError,
    diff,
    encode_manifest,
    file_entry,
    parse_manifest,
    walk,
)
from officegrid.sync.names import UnsafeName, check_name, fold_name

H1 = cas.hash_bytes(b"one")
H2 = cas.hash_bytes(b"two")


def raw(entries: list[dict[str, Any]], v: Any = 1) -> bytes:
    """Canonically encode arbitrary (possibly malicious) entry objects, bypassing validation."""
    obj = {"v": v, "entries": entries}
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def f(name: str, data: bytes = b"one", mode: int = 420) -> dict[str, Any]:
    h = cas.hash_bytes(data)
    return {
        "name": name,
        "type": "file",
        "mode": mode,
        "size": len(data),
        "hash": h,
        "chunks": [[h, len(data)]],
    }


def d(name: str, h: str = H2) -> dict[str, Any]:
    return {"name": name, "type": "dir", "hash": h}


def test_exact_bytes_of_the_wire_format() -> None:
    data = encode_manifest(
        [
            DirEntry(name="sub", hash=H2),
            file_entry("été.py", executable=True, size=3, digest=H1),
            file_entry("a", executable=False, size=0, digest=EMPTY_HASH),
        ]
    )
    expected = (
        '{"entries":['
        f'{{"chunks":[["{EMPTY_HASH}",0]],"hash":"{EMPTY_HASH}","mode":420,"name":"a",'
        '"size":0,"type":"file"},'
        f'{{"hash":"{H2}","name":"sub","type":"dir"}},'
        f'{{"chunks":[["{H1}",3]],"hash":"{H1}","mode":493,"name":"été.py","size":3,'
        '"type":"file"}'
        '],"v":1}'
    ).encode()
    assert data == expected
    assert data == raw([f("a", b""), d("sub"), {**f("été.py", b"one"), "mode": 493}])


def test_parse_roundtrip_and_sorted() -> None:
    entries = [file_entry("b", executable=False, size=3, digest=H1), DirEntry(name="A", hash=H2)]
    parsed = parse_manifest(encode_manifest(entries), where="x")
    assert parsed == sorted(entries, key=lambda e: e.name)
    assert parsed[1].executable is False


def test_multi_chunk_file_accepted() -> None:
    c1, c2 = cas.hash_bytes(b"ab"), cas.hash_bytes(b"cde")
    whole = cas.hash_bytes(b"abcde")
    entry = {
        "name": "big",
        "type": "file",
        "mode": 420,
        "size": 5,
        "hash": whole,
        "chunks": [[c1, 2], [c2, 3]],
    }
    [parsed] = parse_manifest(raw([entry]), where="")
    assert isinstance(parsed, FileEntry)
    assert parsed.chunks == ((c1, 2), (c2, 3))


def test_encode_refuses_unsafe_and_duplicates() -> None:
    with pytest.raises(UnsafeName):
        encode_manifest([DirEntry(name="..", hash=H1)])
    with pytest.raises(UnsafeName):
        encode_manifest([DirEntry(name="A", hash=H1), DirEntry(name="a", hash=H1)])
    with pytest.raises(ManifestError):
        encode_manifest([DirEntry(name="a", hash=H1), DirEntry(name="a", hash=H2)])


def _bad_cases() -> list[tuple[str, bytes, str]]:
    good = f("ok")
    no_hash = {k: v for k, v in good.items() if k != "hash"}
    return [
        ("dotdot", raw([d("..")]), "not allowed"),
        ("slash", raw([f("a/b")]), "separator"),
        ("nul", raw([f("a\x00b")]), "NUL"),
        ("con", raw([f("CON.txt")]), "reserved"),
        ("case", raw([f("A"), f("a")]), "collides"),
        ("nfd", raw([f("e\u0301")]), "NFC"),
        ("unsorted", raw([f("b"), f("a")]), "not sorted"),
        ("duplicate", raw([f("a"), f("a", b"two")]), "duplicate"),
        ("mode", raw([f("a", mode=0o777)]), "mode"),
        ("mode-str", raw([{**good, "mode": "420"}]), "mode"),
        ("hash-upper", raw([{**good, "hash": H1.upper()}]), "hash"),
        ("hash-short", raw([d("x", h="abc")]), "hash"),
        ("missing-field", raw([no_hash]), "missing ['hash']"),
        ("unknown-field", raw([{**good, "owner": "root"}]), "unknown ['owner']"),
        ("wrong-version", raw([good], v=2), "version"),
        ("bool-version", raw([good], v=True), "version"),
        ("no-version", b'{"entries":[]}', "expected keys"),
        ("bad-type", raw([{**d("x"), "type": "link"}]), "'type'"),
        ("neg-size", raw([{**good, "size": -1, "chunks": [[H1, -1]]}]), "size"),
        ("bool-size", raw([{**f("e", b""), "size": False}]), "size"),
        ("chunk-sum", raw([{**good, "size": 4}]), "add up"),
        ("chunk-shape", raw([{**good, "chunks": [[H1]]}]), "chunk"),
        ("chunk-hash", raw([{**good, "chunks": [[H2, 3]]}]), "chunk hash"),
        ("empty-chunk", raw([{**f("e", b""), "chunks": [[H1, 0]]}]), "empty hash"),
        ("not-json", b"{nope", "JSON"),
        ("not-utf8", b'{"v":1,"entries":[]}\xff', "UTF-8"),
        ("not-object", b"[]", "not a JSON object"),
        ("entries-not-list", b'{"entries":{},"v":1}', "not a list"),
        ("entry-not-object", raw(["x"]), "not an object"),  # type: ignore[list-item]
        ("name-not-str", raw([{**good, "name": 7}]), "name"),
        ("dup-json-key", b'{"entries":[],"v":1,"v":1}', "duplicate key"),
        ("whitespace", b'{"entries": [], "v": 1}', "canonical"),
        (
            "ascii-escaped",
            json.dumps(
                {"entries": [f("é")], "v": 1}, sort_keys=True, separators=(",", ":")
            ).encode(),
            "canonical",
        ),
    ]


@pytest.mark.parametrize(
    ("label", "data", "problem"),
    _bad_cases(),
    ids=lambda x: x if isinstance(x, str) and len(x) < 20 else "",
)
def test_parse_refuses(label: str, data: bytes, problem: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data, where="pkg/sub")
    assert info.value.where == "pkg/sub"
    assert "pkg/sub" in str(info.value)
    assert problem.lower() in str(info.value).lower(), str(info.value)


def test_parse_accepts_empty_directory() -> None:
    assert parse_manifest(b'{"entries":[],"v":1}', where="") == []


names = st.text(
    st.characters(codec="utf-8", categories=("L", "N", "P", "Zs")), min_size=1, max_size=8
).filter(lambda s: _legal(s))


def _legal(s: str) -> bool:
    try:
        check_name(s)
    except UnsafeName:
        return False
    return True


entry_st = st.one_of(
    st.builds(
        lambda n, data, x: file_entry(n, executable=x, size=len(data), digest=cas.hash_bytes(data)),
        names,
        st.binary(max_size=20),
        st.booleans(),
    ),
    st.builds(lambda n, data: DirEntry(name=n, hash=cas.hash_bytes(data)), names, st.binary()),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(entry_st, unique_by=lambda e: fold_name(e.name), max_size=12))
def test_encode_parse_roundtrip_property(entries: list[FileEntry | DirEntry]) -> None:
    data = encode_manifest(entries)
    assert parse_manifest(data, where="") == sorted(entries, key=lambda e: e.name)
    assert encode_manifest(reversed(entries)) == data


# --------------------------------------------------------------------------- walk and diff


class Manifests(dict[str, bytes]):
    """A hash -> manifest bytes map built bottom-up, counting get() calls."""

    def __init__(self) -> None:
        super().__init__()
        self.gets: list[str] = []

    def dir(self, entries: list[FileEntry | DirEntry]) -> str:
        data = encode_manifest(entries)
        h = cas.hash_bytes(data)
        self[h] = data
        return h

    def get_manifest(self, h: str) -> bytes:
        self.gets.append(h)
        return self[h]


def fe(name: str, content: bytes, executable: bool = False) -> FileEntry:
    return file_entry(
        name, executable=executable, size=len(content), digest=cas.hash_bytes(content)
    )


def test_walk_parents_first_in_name_order() -> None:
    m = Manifests()
    empty = m.dir([])
    inner = m.dir([fe("x", b"x"), DirEntry(name="deep", hash=empty)])
    root = m.dir([DirEntry(name="b", hash=inner), DirEntry(name="a", hash=empty), fe("f", b"")])
    got = [(path, [e.name for e in entries]) for path, entries in walk(root, m.get_manifest)]
    assert got == [("", ["a", "b", "f"]), ("a", []), ("b", ["deep", "x"]), ("b/deep", [])]


def test_walk_refuses_manifest_not_matching_hash() -> None:
    m = Manifests()
    root = m.dir([fe("a", b"a")])
    m[root] = encode_manifest([fe("a", b"b")])
    with pytest.raises(ManifestError, match="hash"):
        list(walk(root, m.get_manifest))


def test_diff_descends_only_into_differing_directories() -> None:
    m = Manifests()
    big_same = m.dir([fe(f"f{i}", str(i).encode()) for i in range(50)])
    old_sub = m.dir([fe("keep", b"k"), fe("edit", b"old"), fe("gone", b"g"), fe("mode", b"m")])
    new_sub = m.dir(
        [fe("keep", b"k"), fe("edit", b"new!"), fe("mode", b"m", True), fe("new", b"nnn")]
    )
    added_dir = m.dir([fe("inside", b"12345"), DirEntry(name="empty", hash=m.dir([]))])
    old_root = m.dir(
        [
            DirEntry(name="same", hash=big_same),
            DirEntry(name="sub", hash=old_sub),
            fe("was_file", b"w"),
        ]
    )
    new_root = m.dir(
        [
            DirEntry(name="same", hash=big_same),
            DirEntry(name="sub", hash=new_sub),
            DirEntry(name="was_file", hash=added_dir),
        ]
    )
    m.gets.clear()
    result = diff(old_root, new_root, m.get_manifest)
    assert result.changed == ["sub/edit", "sub/mode"]
    assert result.removed == ["sub/gone", "was_file"]
    assert result.added == [
        "sub/new",
        "was_file/",
        "was_file/empty/",
        "was_file/inside",
    ]
    assert result.bytes_to_fetch == len(b"new!") + len(b"nnn") + len(b"12345")
    assert big_same not in m.gets  # the unchanged directory was never read


def test_diff_of_identical_releases_reads_nothing() -> None:
    m = Manifests()
    root = m.dir([fe("a", b"a")])
    m.gets.clear()
    result = diff(root, root, m.get_manifest)
    assert (result.added, result.removed, result.changed, result.bytes_to_fetch) == ([], [], [], 0)
    assert m.gets == []


def test_diff_moved_content_costs_nothing() -> None:
    m = Manifests()
    old_root = m.dir([fe("a.py", b"print(1)\n")])
    new_root = m.dir([fe("b.py", b"print(1)\n")])
    result = diff(old_root, new_root, m.get_manifest)
    assert result.added == ["b.py"] and result.removed == ["a.py"]
    assert result.bytes_to_fetch == 0
