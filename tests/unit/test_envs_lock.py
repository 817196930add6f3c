"""Locking a release's dependencies (envs.lock), shipping them (envs.ship) and building the
environment on a worker (envs.build), with wheels made in the test: no network."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))

from officegrid.envs import LOCK_PATH  # noqa: E402
from officegrid.envs.build import COMPLETE, EnvBuilder, EnvBuildError  # noqa: E402
from officegrid.envs.errors import summarize  # noqa: E402
from officegrid.envs.lock import (  # noqa: E402
    LockError,
    env_hash,
    parse_lock,
    pins_from_report,
    python_tag,
    render_lock,
    resolve,
)
from wheelhelp import make_wheel, sha256_of, tiny_wheelhouse  # noqa: E402


def _app(tmp: Path, requirements: str | None = "tinypkg\n") -> Path:
    app = tmp / "app"
    app.mkdir(parents=True)
    (app / "job.py").write_text("def process(r):\n    return r\n")
    if requirements is not None:
        (app / "requirements.txt").write_text(requirements)
    return app


def test_parse_and_render_round_trip():
    text = ("# comment\nfoo==1.0 \\\n    --hash=sha256:" + "a" * 64 + " \\\n"
            "    --hash=sha256:" + "b" * 64 + "\n    # via bar\nBar_Baz==2.0 --hash=sha256:"
            + "c" * 64 + "\n")
    pins = parse_lock(text)
    assert pins == {"foo": ("foo==1.0", ["sha256:" + "a" * 64, "sha256:" + "b" * 64]),
                    "bar-baz": ("Bar_Baz==2.0", ["sha256:" + "c" * 64])}
    assert parse_lock(render_lock(pins, "requirements.txt").decode()) == pins


@pytest.mark.parametrize("line, what", [
    ("foo>=1.0 --hash=sha256:" + "a" * 64, "not an exact pin"),
    ("foo==1.0", "has no --hash"),
])
def test_parse_lock_refuses_loose_lines_naming_the_line(line, what):
    with pytest.raises(LockError, match=rf"lock.txt, line 2: .*{what}"):
        parse_lock("# header\n" + line + "\n", where="x/lock.txt")


def test_wheelhouse_resolve_pins_every_dependency_with_the_wheel_hashes(tmp_path):
    wh = tiny_wheelhouse(tmp_path / "wh")
    make_wheel(wh, "unrelated", "9.0", {"unrelated.py": ""})
    app = _app(tmp_path)
    lock = resolve(app, wheelhouse=wh)
    assert lock is not None and lock.source == "requirements.txt" and not lock.user_lock
    assert set(lock.pins) == {"tinypkg", "tinydep"}
    for name, wheel in (("tinypkg", "tinypkg-1.0-py3-none-any.whl"),
                        ("tinydep", "tinydep-2.1-py3-none-any.whl")):
        req, hashes = lock.pins[name]
        assert req == f"{name}=={'1.0' if name == 'tinypkg' else '2.1'}"
        assert hashes == [f"sha256:{sha256_of(wh / wheel)}"]
    assert sorted(w.name for w in lock.wheels) == ["tinydep-2.1-py3-none-any.whl",
                                                   "tinypkg-1.0-py3-none-any.whl"]
    assert lock.env == env_hash(lock.text, python_tag())
    # Deterministic: the same inputs give the same lock bytes and env hash.
    assert resolve(app, wheelhouse=wh).text == lock.text
    # The identity depends on the target interpreter's version and platform.
    assert env_hash(lock.text, ("3.99", python_tag()[1])) != lock.env
    assert not (app / ".officegrid").exists()  # the user's directory is never written


def test_pyproject_dependencies_are_locked(tmp_path):
    wh = tiny_wheelhouse(tmp_path / "wh")
    app = _app(tmp_path, None)
    (app / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["tinydep"]\n')
    lock = resolve(app, wheelhouse=wh)
    assert lock is not None and lock.source == "pyproject.toml"
    assert list(lock.pins) == ["tinydep"]


def test_no_dependencies_means_no_lock(tmp_path):
    assert resolve(_app(tmp_path, None)) is None
    assert resolve(_app(tmp_path / "b", "# only a comment\n")) is None


def test_unresolvable_requirement_is_named_with_the_installer_message(tmp_path):
    wh = tiny_wheelhouse(tmp_path / "wh")
    app = _app(tmp_path, "tinypkg\nnosuchpkg-xyz==1.0\n")
    with pytest.raises(LockError) as info:
        resolve(app, wheelhouse=wh)
    msg = str(info.value)
    first = msg.splitlines()[0]
    assert first.startswith(f"{app / 'requirements.txt'}: requirement 'nosuchpkg-xyz")
    # Said in our words (the wheelhouse is the only place looked at)...
    assert f"cannot be resolved: not in the wheelhouse {wh.resolve()}; the installer said:" \
        in first
    # ...and in the installer's own (pip's, or uv's when uv is on PATH).
    assert "No matching distribution found" in msg or "No solution found" in msg
    # Another version in the wheelhouse is named.
    app2 = _app(tmp_path / "b", "tinydep==3.0\n")
    with pytest.raises(LockError, match=r"cannot be resolved: not in the wheelhouse .* \(it "
                       r"holds only tinydep-2\.1-py3-none-any\.whl: none fits\)"):
        resolve(app2, wheelhouse=wh)


def _report_item(name: str, version: str, archive_info: dict | None, url: str) -> dict:
    info: dict = {"url": url}
    if archive_info is not None:
        info["archive_info"] = archive_info
    return {"metadata": {"name": name, "version": version}, "download_info": info}


def test_pip_report_hashes_in_both_shapes():
    """pip >= 23.1 writes ``archive_info.hashes``; pip 23.0 (Debian 12's python3.11) only
    ``archive_info.hash`` = ``"sha256=..."``: both give the same pins."""
    a, b = "a" * 64, "B" * 64
    new = {"install": [
        _report_item("Tiny_Pkg", "1.0", {"hash": f"sha256={a}", "hashes": {"sha256": a}},
                     "file:///wh/tiny_pkg-1.0-py3-none-any.whl"),
        _report_item("tinydep", "2.1", {"hashes": {"sha256": b}},
                     "file:///wh/tinydep-2.1-py3-none-any.whl")]}
    old = {"install": [
        _report_item("Tiny_Pkg", "1.0", {"hash": f"sha256={a}"},
                     "file:///wh/tiny_pkg-1.0-py3-none-any.whl"),
        _report_item("tinydep", "2.1", {"hash": f"sha256={b}"},
                     "file:///wh/tinydep-2.1-py3-none-any.whl")]}
    want = {"tiny-pkg": ("Tiny_Pkg==1.0", [f"sha256:{a}"]),
            "tinydep": ("tinydep==2.1", [f"sha256:{b.lower()}"])}
    assert pins_from_report(new, "requirements.txt") == want
    assert pins_from_report(old, "requirements.txt") == want
    # No sha256 (a directory, or only another algorithm): refused, naming the source.
    for bad in (None, {}, {"hash": "md5=" + "c" * 32}, {"hashes": {"md5": "c" * 32}}):
        with pytest.raises(LockError, match=r"^req.txt: x 1 comes from 'file:///src/x', which "
                           "has no archive hash"):
            pins_from_report({"install": [_report_item("x", "1", bad, "file:///src/x")]},
                             "req.txt")


@pytest.mark.parametrize("line", ["-e ../pkg", "--editable=../pkg", "../pkg", "./vendored/pkg",
                                  "pkg @ file:///src/pkg"])
def test_editable_and_path_requirements_are_refused_clearly(tmp_path, line):
    wh = tiny_wheelhouse(tmp_path / "wh")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "pyproject.toml").write_text('[project]\nname = "pkg"\nversion = "1"\n')
    app = _app(tmp_path, f"tinypkg\n# a comment\n{line}\n")
    with pytest.raises(LockError) as info:
        resolve(app, wheelhouse=wh)
    assert str(info.value) == (
        f"{app / 'requirements.txt'}, line 3: {line!r}: editable/path requirements cannot be "
        "locked: build a wheel (`pip wheel PATH -w WHEELHOUSE`), require the package by name "
        "and pass --wheelhouse WHEELHOUSE")
    # The same in pyproject.toml's dependencies.
    app2 = _app(tmp_path / "b", None)
    (app2 / "pyproject.toml").write_text(
        f'[project]\nname = "x"\ndependencies = ["tinydep", {line!r}]\n'.replace("'", '"'))
    with pytest.raises(LockError, match=r"pyproject.toml, dependency 2: .* editable/path "
                       "requirements cannot be locked: build a wheel"):
        resolve(app2, wheelhouse=wh)


def test_same_pins_share_one_environment_whatever_the_source(tmp_path):
    """The env hash depends on what is installed, not on the lock's comments or layout."""
    wh = tiny_wheelhouse(tmp_path / "wh")
    from_req = resolve(_app(tmp_path / "r", "tinydep\n"), wheelhouse=wh)
    app = _app(tmp_path / "p", None)
    (app / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["tinydep"]\n')
    from_pyproject = resolve(app, wheelhouse=wh)
    assert from_req.text != from_pyproject.text  # the header comment names the source
    assert from_req.env == from_pyproject.env
    # A hand-written lock with the same pins (other comments, name spelling, layout, order).
    (req, hashes), = from_req.pins.values()
    text = ("# mine\n\nTinyDep == 2.1 " + " ".join(f"--hash={h.upper().replace('SHA', 'sha')}"
                                                   for h in reversed(hashes))
            + "  # pinned by hand\n").encode()
    assert env_hash(text, python_tag()) == from_req.env
    # What is installed differs: another identity.
    other = text.replace(b"2.1", b"2.2")
    assert env_hash(other, python_tag()) != from_req.env
    both = resolve(_app(tmp_path / "t", "tinypkg\n"), wheelhouse=wh)
    assert both.env != from_req.env
    # The interpreter counts too.
    assert env_hash(text, ("3.99", python_tag()[1])) != from_req.env


PIP_HASH_ERROR = """environment 0123456789ab of release 89abcdef0123: pip install failed (exit \
code 1); the installer said:
ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE. If you have updated \
the package versions, please update the hashes. Otherwise, examine the package contents \
carefully; someone may have tampered with them.
    tinydep==2.1 from file:///w/releases/89ab/.officegrid/wheels/tinydep-2.1-py3-none-any.whl \
(from -r /w/releases/89ab/.officegrid/lock.txt (line 3)):
        Expected sha256 0000000000000000000000000000000000000000000000000000000000000000
             Got        78e28a52c3ddb4186559f15cf2f6edc2ba689bc019b44c8d826bef5ea93a4e52
"""

UV_HASH_ERROR = """uv pip install failed (exit code 1); the installer said:
error: Failed to prepare distributions
  Caused by: Failed to fetch wheel: tinydep==2.1
  Caused by: Hash mismatch for `tinydep==2.1`

Expected:
  sha256:0000000000000000000000000000000000000000000000000000000000000000

Computed:
  sha256:78e28a52c3ddb4186559f15cf2f6edc2ba689bc019b44c8d826bef5ea93a4e52
"""


def test_summary_keeps_the_package_and_hashes_of_a_mismatch():
    s = summarize(PIP_HASH_ERROR)
    assert s == (
        "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE. | "
        "tinydep==2.1 from file:///w/releases/89ab/.officegrid/wheels/tinydep-2.1-py3-none-any"
        ".whl (from -r /w/releases/89ab/.officegrid/lock.txt (line 3)): | "
        "Expected sha256 0000000000000000000000000000000000000000000000000000000000000000 | "
        "Got 78e28a52c3ddb4186559f15cf2f6edc2ba689bc019b44c8d826bef5ea93a4e52")
    s = summarize(UV_HASH_ERROR)
    assert s.startswith("error: Failed to prepare distributions | ")
    for part in ("Hash mismatch for `tinydep==2.1`", "Expected: | sha256:" + "0" * 64,
                 "Computed: | sha256:78e28a52"):
        assert part in s
    assert summarize("") == ""
    assert summarize("no installer lines\nhere\nat all") == "no installer lines | here | at all"


def test_a_lock_the_user_wrote_is_honoured_as_is(tmp_path):
    app = _app(tmp_path, "something-else\n")
    (app / ".officegrid").mkdir()
    text = b"tinydep==2.1 --hash=sha256:" + b"d" * 64 + b"\n"
    (app / LOCK_PATH).write_bytes(text)
    lock = resolve(app)
    assert lock is not None and lock.user_lock and lock.text == text
    assert lock.env == env_hash(text, python_tag())
    with pytest.raises(LockError, match="instead of using --wheelhouse"):
        resolve(app, wheelhouse=tmp_path)


def test_add_lock_joins_the_lock_and_wheels_into_the_release_tree(tmp_path):
    from officegrid.envs.ship import add_lock
    from officegrid.sync.manifest import walk
    from officegrid.sync.tree import build_tree

    wh = tiny_wheelhouse(tmp_path / "wh")
    app = _app(tmp_path)
    lock = resolve(app, wheelhouse=wh)
    tree = build_tree(app)
    plain_root = tree.root_hash
    staging = tmp_path / "staging"
    staging.mkdir()
    add_lock(tree, lock, staging)
    assert tree.root_hash != plain_root
    from officegrid.sync.manifest import join

    paths = {join(d, e.name) for d, entries in walk(tree.root_hash, tree.manifests.__getitem__)
             for e in entries}
    assert {"job.py", "requirements.txt", ".officegrid/lock.txt",
            ".officegrid/wheels/tinypkg-1.0-py3-none-any.whl",
            ".officegrid/wheels/tinydep-2.1-py3-none-any.whl"} <= paths
    assert sorted(p.name for p in app.iterdir()) == ["job.py", "requirements.txt"]


def _release_with_lock(tmp: Path, lock_text: bytes, wheels: list[Path]) -> Path:
    rel = tmp / "release"
    (rel / ".officegrid" / "wheels").mkdir(parents=True)
    (rel / LOCK_PATH).write_bytes(lock_text)
    for w in wheels:
        (rel / ".officegrid" / "wheels" / w.name).write_bytes(w.read_bytes())
    return rel


INSTALLERS = [
    "pip",
    pytest.param("uv", marks=pytest.mark.skipif(shutil.which("uv") is None,
                                                reason="uv is not on PATH")),
]


@pytest.mark.parametrize("installer", INSTALLERS)
def test_builder_installs_the_lock_and_reuses_it(tmp_path, installer):
    wh = tiny_wheelhouse(tmp_path / "wh", value=7)
    lock = resolve(_app(tmp_path), wheelhouse=wh)
    rel = _release_with_lock(tmp_path, lock.text, lock.wheels)
    builder = EnvBuilder(tmp_path / "envs", uv=None if installer == "uv" else "")
    spec = builder.spec(rel)
    assert spec is not None and spec.env == lock.env
    python = builder.ensure(spec)
    assert builder.is_built(spec.env)
    out = subprocess.run([str(python), "-c", "import tinypkg; print(tinypkg.VALUE, "
                          "tinypkg.tinydep.DEP)"], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["7", "21"]
    marker = tmp_path / "envs" / spec.env / COMPLETE
    before = marker.stat().st_mtime_ns
    assert builder.ensure(spec) == python  # complete: reused, not rebuilt
    assert marker.stat().st_mtime_ns == before
    # An incomplete env (an agent killed mid-build) is deleted and rebuilt.
    marker.unlink()
    (tmp_path / "envs" / spec.env / "leftover").write_text("x")
    builder.ensure(spec)
    assert marker.exists() and not (tmp_path / "envs" / spec.env / "leftover").exists()
    # Pruning keeps envs a kept release uses and removes the others.
    builder.remember("r" * 64, spec.env)
    assert builder.prune({"r" * 64}) == 0 and builder.is_built(spec.env)
    assert builder.prune(set()) == 1 and not (tmp_path / "envs" / spec.env).exists()


@pytest.mark.parametrize("installer", INSTALLERS)
@pytest.mark.parametrize("fault", ["hash mismatch", "wheel missing"])
def test_broken_lock_fails_with_the_installer_output_and_leaves_no_env(tmp_path, installer,
                                                                        fault):
    wh = tiny_wheelhouse(tmp_path / "wh")
    lock = resolve(_app(tmp_path), wheelhouse=wh)
    if fault == "hash mismatch":
        bad = lock.text.replace(lock.pins["tinydep"][1][0].encode(), b"sha256:" + b"0" * 64)
        rel = _release_with_lock(tmp_path, bad, lock.wheels)
    else:
        rel = _release_with_lock(tmp_path, lock.text,
                                 [w for w in lock.wheels if "tinydep" not in w.name])
    builder = EnvBuilder(tmp_path / "envs", uv=None if installer == "uv" else "")
    spec = builder.spec(rel)
    with pytest.raises(EnvBuildError) as info:
        builder.ensure(spec)
    assert "pip install failed" in str(info.value)  # "pip install" or "uv pip install"
    out = info.value.output
    if fault == "hash mismatch":
        assert "HASH" in out.upper()  # pip: "DO NOT MATCH THE HASHES", uv: "Hash mismatch"
        # The job's reason keeps the package and both hashes (not only "tampered with them").
        summary = summarize(str(info.value))
        assert "tinydep" in summary and "0" * 64 in summary
        assert sha256_of(next(w for w in lock.wheels if "tinydep" in w.name))[:12] in summary
    else:
        assert "tinydep" in out  # the installer names the wheel it cannot find
        # ...and the message says where it looked.
        assert f"is not in the wheelhouse {rel / '.officegrid' / 'wheels'}" in str(info.value)
        assert "not in the wheelhouse" in summarize(str(info.value))
    assert not (tmp_path / "envs" / spec.env).exists()
    builder.mark_broken("a" * 64, spec.env, str(info.value))
    assert builder.broken(3600) == {"a" * 64: str(info.value)}
    assert builder.broken(0) == {}  # older than the retry delay: forgotten, may be tried again
