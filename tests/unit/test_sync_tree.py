"""Building releases from real directories: hashing, modes, ignores, refusals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from officegrid import cas
from officegrid.sync.manifest import DirEntry, FileEntry, parse_manifest, walk
from officegrid.sync.names import UnsafeName
from officegrid.sync.tree import BuildError, IgnoreRules, build_tree, store_tree


def write(root: Path, rel: str, data: bytes | str = b"x", executable: bool = False) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(0o755 if executable else 0o644)
    return path


def paths(tree_root: str, manifests: dict[str, bytes]) -> list[str]:
    out = []
    for d, entries in walk(tree_root, manifests.__getitem__):
        for e in entries:
            p = f"{d}/{e.name}" if d else e.name
            out.append(p + "/" if isinstance(e, DirEntry) else p)
    return sorted(out)


def test_build_simple_tree(tmp_path: Path) -> None:
    write(tmp_path, "run.sh", "#!/bin/sh\n", executable=True)
    write(tmp_path, "pkg/mod.py", "x = 1\n")
    write(tmp_path, "pkg/copy.py", "x = 1\n")
    write(tmp_path, "pkg/empty.txt", b"")
    (tmp_path / "empty_dir").mkdir()
    tree = build_tree(tmp_path)
    assert paths(tree.root_hash, tree.manifests) == [
        "empty_dir/",
        "pkg/",
        "pkg/copy.py",
        "pkg/empty.txt",
        "pkg/mod.py",
        "run.sh",
    ]
    assert tree.file_count == 4
    assert tree.total_bytes == 10 + 6 + 6 + 0
    assert set(tree.files) == {
        cas.hash_bytes(b"#!/bin/sh\n"),
        cas.hash_bytes(b"x = 1\n"),
        cas.hash_bytes(b""),
    }
    root = parse_manifest(tree.manifests[tree.root_hash], where="")
    run = next(e for e in root if e.name == "run.sh")
    assert isinstance(run, FileEntry) and run.mode == 0o755
    assert cas.hash_bytes(tree.manifests[tree.root_hash]) == tree.root_hash
    assert tree.warnings == []


def test_release_id_depends_on_content_and_exec_bit_only(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        write(root, "x/y.py", "print()\n")
        write(root, "z", "data")
    (b / "z").chmod(0o600)  # group/other bits are not kept
    assert build_tree(a).root_hash == build_tree(b).root_hash
    (b / "z").chmod(0o700)
    assert build_tree(a).root_hash != build_tree(b).root_hash


def test_large_file_streamed_and_stored(tmp_path: Path) -> None:
    src = tmp_path / "src"
    blob = os.urandom(3 * (1 << 20) + 17)
    write(src, "big.bin", blob)
    tree = build_tree(src)
    digest = cas.hash_bytes(blob)
    assert tree.files[digest][1] == len(blob)
    assert len(tree.chunks) > 1  # content-defined chunks
    store = cas.ContentStore(tmp_path / "store")
    assert store_tree(tree, store) == 1 + len(tree.chunks)
    ordered = sorted(tree.chunks.items(), key=lambda kv: kv[1][1])
    assert b"".join(store.read(h) for h, _ in ordered) == blob
    assert store_tree(tree, store) == 0


def test_store_tree_detects_a_file_changed_after_build(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src, "a.txt", "one")
    tree = build_tree(src)
    write(src, "a.txt", "two")
    store = cas.ContentStore(tmp_path / "store")
    with pytest.raises(BuildError, match="a.txt"):
        store_tree(tree, store)
    write(src, "a.txt", "longer now")
    with pytest.raises(BuildError, match="a.txt"):
        store_tree(tree, store)
    assert not any(store.root.joinpath("tmp").iterdir())


def test_default_ignores(tmp_path: Path) -> None:
    write(tmp_path, ".git/HEAD", "ref")
    write(tmp_path, "pkg/__pycache__/m.cpython-311.pyc", "x")
    write(tmp_path, "pkg/m.pyc", "x")
    write(tmp_path, ".venv/bin/python", "x")
    write(tmp_path, "sub/.git", "gitdir: ..")  # a worktree's .git file
    write(tmp_path, ".officegrid-pull", "marker")
    write(tmp_path, "sub/.officegrid-pull", "kept: only the top-level marker is skipped")
    write(tmp_path, "pkg/m.py", "x")
    tree = build_tree(tmp_path)
    assert paths(tree.root_hash, tree.manifests) == [
        "pkg/",
        "pkg/m.py",
        "sub/",
        "sub/.officegrid-pull",
    ]


def test_ignore_file_patterns(tmp_path: Path) -> None:
    write(
        tmp_path,
        ".officegridignore",
        "\n".join(
            [
                "# comment",
                "",
                "*.log",
                "!keep.log",
                "build/",
                "/top.txt",
                "docs/**/*.tmp",
                "**/cache",
                "data/**",
                "?.bak",
                "lit\\#",
            ]
        )
        + "\n",
    )
    for rel in [
        "a.log",
        "sub/b.log",
        "keep.log",
        "sub/keep.log",
        "build/out.o",
        "src/build/out.o",
        "src/build.py",
        "notes/build",  # a file named build: "build/" matches directories only
        "top.txt",
        "sub/top.txt",
        "docs/x.tmp",
        "docs/a/b/x.tmp",
        "docs/x.md",
        "cache/c",
        "sub/deep/cache",
        "data/d.csv",
        "x.bak",
        "xy.bak",
        "lit#",
    ]:
        write(tmp_path, rel, rel)
    (tmp_path / "data" / "sub").mkdir()
    tree = build_tree(tmp_path)
    assert paths(tree.root_hash, tree.manifests) == [
        ".officegridignore",
        "data/",  # "data/**" ignores what is inside, not the directory
        "docs/",
        "docs/a/",
        "docs/a/b/",
        "docs/x.md",
        "keep.log",
        "notes/",
        "notes/build",
        "src/",
        "src/build.py",
        "sub/",
        "sub/deep/",
        "sub/keep.log",
        "sub/top.txt",
        "xy.bak",
    ]


@pytest.mark.parametrize(
    ("pattern", "path", "is_dir", "ignored"),
    [
        ("*.py", "a.py", False, True),
        ("*.py", "a/b/c.py", False, True),
        ("*.py", "a.pyc", False, False),
        ("/a.py", "sub/a.py", False, False),
        ("/a.py", "a.py", False, True),
        ("a/b", "a/b", False, True),
        ("a/b", "x/a/b", False, False),
        ("a/*.py", "a/b/c.py", False, False),
        ("**/foo", "foo", True, True),
        ("**/foo", "x/y/foo", False, True),
        ("**/foo/bar", "x/foo/bar", False, True),
        ("a/**/b", "a/b", False, True),
        ("a/**/b", "a/x/y/b", False, True),
        ("a/**/b", "a/xb", False, False),
        ("a/**", "a", True, False),
        ("a/**", "a/x/y", False, True),
        ("dir/", "dir", False, False),
        ("dir/", "x/dir", True, True),
        ("fil?.txt", "file.txt", False, True),
        ("fil?.txt", "fil/.txt", False, False),
        ("[ab].txt", "a.txt", False, True),
        ("[!ab].txt", "a.txt", False, False),
        ("[!ab].txt", "c.txt", False, True),
        ("[a-c]x", "bx", False, True),
        ("\\!bang", "!bang", False, True),
        ("*", "anything/at/all", False, True),
        ("a**b", "axxb", False, True),
        ("a**b", "ax/xb", False, False),
        ("[unclosed", "[unclosed", False, True),
        ("sp\\ ", "sp ", False, True),
        ("sp   ", "sp", False, True),
    ],
)
def test_ignore_rules(pattern: str, path: str, is_dir: bool, ignored: bool) -> None:
    assert IgnoreRules([pattern]).ignored(path, is_dir=is_dir) is ignored


def test_ignore_last_match_wins() -> None:
    rules = IgnoreRules(["*.txt", "!important.txt", "important.txt"])
    assert rules.ignored("important.txt", is_dir=False)
    rules = IgnoreRules(["*.txt", "!important.txt"])
    assert not rules.ignored("important.txt", is_dir=False)


def test_symlink_refused_with_its_path(tmp_path: Path) -> None:
    write(tmp_path, "real.txt", "x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "link").symlink_to("../real.txt")
    with pytest.raises(BuildError) as info:
        build_tree(tmp_path)
    assert info.value.path.endswith(os.path.join("sub", "link"))
    assert "symbolic link" in str(info.value)


def test_ignored_symlink_is_fine(tmp_path: Path) -> None:
    write(tmp_path, "real.txt", "x")
    (tmp_path / "link").symlink_to("real.txt")
    write(tmp_path, ".officegridignore", "link\n")
    build_tree(tmp_path)


def test_special_file_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(BuildError, match="pipe"):
        build_tree(tmp_path)


@pytest.mark.parametrize("name", ["CON.txt", "a:b", "trailing.", "nfd-e\u0301", "tab\tname"])
def test_unsafe_name_refused_at_build(tmp_path: Path, name: str) -> None:
    write(tmp_path, f"pkg/{name}", "x")
    with pytest.raises(UnsafeName) as info:
        build_tree(tmp_path)
    assert info.value.path == f"pkg/{name}"


def test_case_collision_refused_at_build(tmp_path: Path) -> None:
    write(tmp_path, "pkg/Readme", "x")
    write(tmp_path, "pkg/README", "y")
    with pytest.raises(UnsafeName, match="collides"):
        build_tree(tmp_path)


def test_long_path_is_a_warning(tmp_path: Path) -> None:
    rel = "/".join(["d" * 50] * 5) + "/file-1.txt"  # 50*5 + 4 + 11 = 265 characters
    write(tmp_path, rel, "x")
    tree = build_tree(tmp_path)
    assert len(tree.warnings) == 1 and rel in tree.warnings[0]
    write(tmp_path, "/".join(["e" * 50] * 6) + "/x/y/z.txt", "deeper")
    tree = build_tree(tmp_path)
    assert len(tree.warnings) == 2
    assert tree.warnings[1].endswith("/ (and everything inside)")


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    write(tmp_path, "f", "x")
    with pytest.raises(BuildError, match="not a directory"):
        build_tree(tmp_path / "f")
    with pytest.raises(BuildError):
        build_tree(tmp_path / "missing")


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_named(tmp_path: Path) -> None:
    path = write(tmp_path, "secret.txt", "x")
    path.chmod(0)
    with pytest.raises(BuildError, match="secret.txt"):
        build_tree(tmp_path)


def test_read_error_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "pkg/locked.bin", "x")
    from officegrid.sync import tree as tree_mod

    def refuse(path: Path) -> tuple[str, int, list]:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(tree_mod, "chunk_file", refuse)
    with pytest.raises(BuildError) as info:
        build_tree(tmp_path)
    assert info.value.path.endswith(os.path.join("pkg", "locked.bin"))
    assert "Permission denied" in str(info.value)
