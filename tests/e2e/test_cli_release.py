"""`officegrid release create | list | promote | pull` as a user runs them."""

from __future__ import annotations

import json
import os
import re

import pytest

from .test_cli_support import Cli, module_grid, tree_of, write_tree

HEX64 = re.compile(r"[0-9a-f]{64}")
PULL_MARKER = ".officegrid-pull"


@pytest.fixture(scope="module")
def mgrid(tmp_path_factory):
    with module_grid(tmp_path_factory, "release") as g:
        yield g


@pytest.fixture
def cli(mgrid, tmp_path) -> Cli:
    return Cli(mgrid.server.url, mgrid.server.admin_token, tmp_path)


def code_dir(base, tag: str):
    """A small code tree whose content (so whose release id) is unique to ``tag``."""
    d = write_tree(base / f"code-{tag}", {
        "job.py": f"TAG = {tag!r}\n\ndef process(record, ctx):\n    return {{'tag': TAG}}\n",
        "pkg/__init__.py": "",
        "pkg/helpers.py": "def double(x):\n    return 2 * x\n",
        "data/blob.bin": bytes(range(256)) * 64 + tag.encode(),
        "run.sh": "#!/bin/sh\necho hi\n",
    })
    (d / "run.sh").chmod(0o755)
    return d


def test_create_prints_id_alone_on_last_line(cli, mgrid, tmp_path):
    src = code_dir(tmp_path, "create")
    res = cli.ok("release", "create", src, "--channel", "worker")
    assert len(res.lines) == 1, res  # the id and nothing else on stdout
    rid = res.last_line
    assert HEX64.fullmatch(rid), res
    assert f"channel worker -> {rid[:12]}" in res.err, res
    assert "5 file(s)" in res.err, res
    # The server knows it under that id, and the channel points at it.
    assert mgrid.admin.release(rid)["id"] == rid
    assert mgrid.admin.release("worker")["id"] == rid
    # Publishing the same tree again gives the same id and uploads nothing.
    again = cli.ok("release", "create", src, "--channel", "worker")
    assert again.lines == [rid], again
    assert "uploaded 0 blob(s)" in again.err, again


def test_create_json_prints_whole_object(cli, tmp_path):
    src = code_dir(tmp_path, "json")
    res = cli.ok("release", "create", src, "--channel", "json-ch", "-m", "first cut", "--json")
    info = json.loads(res.stdout)  # the whole of stdout is one JSON object
    assert HEX64.fullmatch(info["id"]), res
    assert info["channels"] == ["json-ch"]
    assert info["file_count"] == 5
    expected_bytes = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    assert info["total_bytes"] == expected_bytes
    assert info["message"] == "first cut"
    assert info["blobs_uploaded"] >= 1 and info["bytes_uploaded"] > 0
    assert isinstance(info["created_at"], float)


def test_list_shows_release_with_its_channels(cli, tmp_path):
    rid = cli.publish(code_dir(tmp_path, "list"), "list-a")
    cli.ok("release", "promote", "list-a", "list-b")
    rows = json.loads(cli.ok("release", "list", "--json").stdout)
    mine = [r for r in rows if r["id"] == rid]
    assert len(mine) == 1, rows
    assert sorted(mine[0]["channels"]) == ["list-a", "list-b"]
    assert mine[0]["file_count"] == 5
    # The table, on a terminal wide enough for it, shows the short id and both channels.
    table = cli.ok("release", "list", env={"COLUMNS": "200"})
    row = [line for line in table.stdout.splitlines() if rid[:12] in line]
    assert len(row) == 1, table
    assert "list-a,list-b" in row[0], table


def test_promote_trunk_worker_moves_the_channel(cli, mgrid, tmp_path):
    old = cli.publish(code_dir(tmp_path, "promote-old"), "worker")
    new = cli.publish(code_dir(tmp_path, "promote-new"), "trunk")
    assert mgrid.admin.release("worker")["id"] == old
    res = cli.ok("release", "promote", "trunk", "worker")
    assert res.last_line == new, res
    assert f"channel worker -> {new[:12]}" in res.err, res
    assert mgrid.admin.release("worker")["id"] == new
    assert mgrid.admin.release("trunk")["id"] == new  # the source stays where it was
    rows = {r["id"]: r for r in json.loads(cli.ok("release", "list", "--json").stdout)}
    assert sorted(rows[new]["channels"]) == ["trunk", "worker"]
    assert "worker" not in rows[old]["channels"]
    # Rolling back with --to points the channel at an older release again.
    back = cli.ok("release", "promote", "worker", "--to", old)
    assert back.last_line == old, back
    assert mgrid.admin.release("worker")["id"] == old


def test_promote_unknown_channel_is_refused(cli, mgrid):
    res = cli("release", "promote", "no-such-channel", "worker-x")
    assert res.returncode == 1, res
    assert "no channel or release 'no-such-channel'" in res.err, res
    assert "Traceback" not in res.stderr, res
    assert all(c["name"] != "worker-x" for c in mgrid.admin.channels())


def test_pull_makes_dir_equal_to_the_release(cli, tmp_path):
    src = code_dir(tmp_path, "pull")
    rid = cli.publish(src, "worker")
    dest = tmp_path / "deploy" / "code"
    res = cli.ok("release", "pull", "worker", "--to", dest)
    assert res.last_line == rid, res
    assert tree_of(dest, skip=(PULL_MARKER,)) == tree_of(src)
    assert os.access(dest / "run.sh", os.X_OK)

    # A new release on the channel: pulling again adds, changes and deletes files like
    # `rsync -a --delete`, and also throws away local edits in DIR.
    (src / "pkg" / "helpers.py").write_text("def double(x):\n    return x + x\n")
    (src / "data" / "blob.bin").unlink()
    (src / "NEW.txt").write_text("new file\n")
    (dest / "job.py").write_text("# edited by hand\n")
    (dest / "stray.txt").write_text("not in any release\n")
    rid2 = cli.publish(src, "worker")
    assert rid2 != rid
    res2 = cli.ok("release", "pull", "worker", "--to", dest)
    assert res2.last_line == rid2, res2
    assert tree_of(dest, skip=(PULL_MARKER,)) == tree_of(src)
    assert not (dest / "data" / "blob.bin").exists()
    assert not (dest / "stray.txt").exists()


def _snapshot(directory):
    return {p.relative_to(directory).as_posix(): (p.read_bytes() if p.is_file() else None,
                                                  p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*"))}


def test_pull_refuses_non_empty_foreign_dir(cli, tmp_path):
    cli.publish(code_dir(tmp_path, "foreign"), "foreign-ch")
    foreign = write_tree(tmp_path / "mywork", {"notes.txt": "precious\n",
                                               "job.py": "my own job.py\n",
                                               "sub/data.csv": "a,b\n1,2\n"})
    before = _snapshot(foreign)
    res = cli("release", "pull", "foreign-ch", "--to", "mywork")
    assert res.returncode == 1, res
    assert res.stdout == "", res
    assert "refusing to overwrite a non-empty directory" in res.err, res
    assert "mywork" in res.err, res
    assert _snapshot(foreign) == before  # not one byte or timestamp touched
    assert not (foreign / PULL_MARKER).exists()


def test_pull_refusal_is_one_error_line(cli, tmp_path):
    cli.publish(code_dir(tmp_path, "foreign2"), "foreign2-ch")
    write_tree(tmp_path / "mywork", {"notes.txt": "precious\n"})
    res = cli("release", "pull", "foreign2-ch", "--to", "mywork")
    assert res.returncode == 1, res
    assert "Traceback" not in res.stderr, res
    assert res.err.startswith("error: "), res


def test_pull_unknown_channel_is_refused(cli, tmp_path):
    res = cli("release", "pull", "never-published", "--to", "out")
    assert res.returncode == 1, res
    assert "no channel or release 'never-published'" in res.err, res
    assert not (tmp_path / "out").exists()


# ------------------------------------------------- issue 3 new-user trial: release command fixes


def _keypair(tmp_path, name: str):
    from officegrid.signing import create_keypair

    key = tmp_path / f"{name}.key"
    return key, create_keypair(key, tmp_path / f"{name}.pub")


def test_resigning_with_another_key_is_refused(cli, mgrid, tmp_path):
    key1, id1 = _keypair(tmp_path, "key1")
    key2, id2 = _keypair(tmp_path, "key2")
    src = code_dir(tmp_path, "resign")
    rid = cli.ok("release", "create", src, "--channel", "resign-ch", "--sign", key1).last_line
    assert mgrid.admin.release(rid)["signer"] == id1
    res = cli("release", "create", src, "--channel", "resign-other", "--sign", key2)
    assert res.returncode == 1, res
    assert "Traceback" not in res.stderr, res
    assert "(HTTP 409)" in res.err, res
    assert f"release {rid[:12]} is already published, signed by key {id1}" in res.err, res
    assert id2 in res.err and "without --sign" in res.err, res
    info = mgrid.admin.release(rid)
    assert info["signer"] == id1  # the workers trusting key1 still run it
    assert "resign-other" not in info["channels"]  # refused as a whole: no channel moved
    # The same signature again, or no signature, is fine and keeps key1's.
    cli.ok("release", "create", src, "--channel", "resign-ch", "--sign", key1)
    cli.ok("release", "create", src, "--channel", "resign-ch")
    assert mgrid.admin.release(rid)["signer"] == id1


def test_signing_an_unsigned_release_adds_the_signature(cli, mgrid, tmp_path):
    key, kid = _keypair(tmp_path, "late")
    src = code_dir(tmp_path, "late-sign")
    rid = cli.publish(src, "late-ch")
    assert mgrid.admin.release(rid)["signer"] is None
    res = cli.ok("release", "create", src, "--channel", "late-ch", "--sign", key)
    assert res.last_line == rid
    assert f"signed by key {kid}" in res.err, res
    info = mgrid.admin.release(rid)
    assert info["signer"] == kid and info["signature"]


def test_republishing_same_content_says_so_and_keeps_first_metadata(cli, mgrid, tmp_path):
    src = code_dir(tmp_path, "again")
    first = cli.ok("release", "create", src, "--channel", "again-a", "-m", "first cut")
    rid = first.last_line
    assert "already exists" not in first.err, first
    res = cli.ok("release", "create", src, "--channel", "again-b", "-m", "second try")
    assert res.last_line == rid
    assert f"release {rid[:12]} already exists (published " in res.err, res
    assert "with message 'first cut'" in res.err, res
    assert "nothing changed except the channel" in res.err, res
    info = mgrid.admin.release(rid)
    assert info["message"] == "first cut"
    assert sorted(info["channels"]) == ["again-a", "again-b"]
    as_json = json.loads(cli.ok("release", "create", src, "--channel", "again-b", "-m", "x",
                                "--json").stdout)
    assert as_json["existed"] is True and as_json["message"] == "first cut"


BAD_CHANNELS = ["a/b", "../x", "with space", "", "x" * 300, ".hidden", "0123abcd" * 8,
                "7478adc048d0", "DEADBEEF"]  # read as release id prefixes: would hide one


@pytest.mark.parametrize("name", BAD_CHANNELS, ids=["slash", "dotdot", "space", "empty",
                                                     "long", "dot", "hex64", "hex12", "HEX8"])
def test_bad_channel_names_are_refused_early(cli, mgrid, tmp_path, name):
    src = code_dir(tmp_path, "badch")
    res = cli("release", "create", src, "--channel", name)
    assert res.returncode == 1, res
    assert "Traceback" not in res.stderr, res
    shown = name if len(name) <= 80 else name[:80] + "..."
    assert f"invalid channel name {shown!r}" in res.err, res
    assert "1 to 64 letters, digits" in res.err, res
    assert res.stdout == "", res
    # promote to it, rollback it, pull or diff it: the same clear error, not a 404 or a
    # JSON decoding error.
    for args in (("promote", "trunk", name), ("promote", name, "--to", "a" * 64)):
        res = cli("release", *args)
        assert res.returncode == 1 and f"invalid channel name {shown!r}" in res.err, res
    for args in (("pull", name, "--to", "out"), ("diff", name, "trunk")):
        res = cli("release", *args)
        assert res.returncode == 1, res
        if name in ("0123abcd" * 8, "7478adc048d0", "DEADBEEF"):
            # not a channel, but a release id or prefix: looked up, not found
            assert f"no channel or release {name!r}" in res.err, res
            continue
        assert f"invalid channel or release {shown!r}" in res.err, res
        assert "at least 6 hex characters" in res.err, res
    assert name not in [c["name"] for c in mgrid.admin.channels()]


def test_server_refuses_bad_channel_names(mgrid):
    from officegrid.client import ApiError

    with pytest.raises(ApiError) as exc:
        mgrid.admin.request("POST", "/releases", json={"id": "0" * 64, "channel": "a b"})
    assert exc.value.status == 422
    assert "invalid channel name 'a b'" in exc.value.message
    with pytest.raises(ApiError) as exc:
        mgrid.admin.promote("with space", source="trunk")
    assert exc.value.status == 422
    assert "invalid channel name 'with space'" in exc.value.message


def test_promote_with_dst_and_to_is_refused(cli, mgrid, tmp_path):
    old = cli.publish(code_dir(tmp_path, "both-old"), "both-src")
    new = cli.publish(code_dir(tmp_path, "both-new"), "both-src")
    res = cli("release", "promote", "both-src", "both-dst", "--to", old)
    assert res.returncode == 1, res
    assert "Traceback" not in res.stderr, res
    assert "give SRC DST, or CHANNEL --to RELEASE_ID, not both" in res.err, res
    assert "both-dst" in res.err, res
    assert mgrid.admin.release("both-src")["id"] == new  # nothing moved
    assert all(c["name"] != "both-dst" for c in mgrid.admin.channels())
    alone = cli("release", "promote", "both-src")
    assert alone.returncode == 1 and "give SRC DST, or CHANNEL --to RELEASE_ID" in alone.err


def test_short_release_prefix_says_too_short(cli, tmp_path):
    rid = cli.publish(code_dir(tmp_path, "short"), "short-ch")
    res = cli("release", "pull", rid[:4], "--to", "out")
    assert res.returncode == 1, res
    assert f"{rid[:4]!r} is too short for a release id prefix" in res.err, res
    assert "at least 6 hex characters" in res.err, res
    ok = cli.ok("release", "pull", rid[:6], "--to", "out")
    assert ok.last_line == rid


def test_pull_reports_removed_paths(cli, tmp_path):
    src = code_dir(tmp_path, "removed")
    cli.publish(src, "removed-ch")
    dest = tmp_path / "co"
    first = cli.ok("release", "pull", "removed-ch", "--to", dest)
    assert "5 files written, 0 removed" in first.err, first
    (src / "pkg" / "helpers.py").unlink()
    (src / "pkg" / "__init__.py").unlink()
    (src / "pkg").rmdir()
    (dest / "stray.txt").write_text("local\n")
    cli.publish(src, "removed-ch")
    res = cli.ok("release", "pull", "removed-ch", "--to", dest)
    # pkg/ (one directory, with its two files) and stray.txt
    assert "0 files written, 2 removed (files or directories not in the release)" in res.err, res
    assert not (dest / "pkg").exists() and not (dest / "stray.txt").exists()


def test_diff_says_bytes_are_before_compression(cli, tmp_path):
    src = code_dir(tmp_path, "diffmsg")
    a = cli.publish(src, "diffmsg-ch")
    (src / "data" / "blob.bin").write_bytes(b"changed" * 1000)
    b = cli.publish(src, "diffmsg-ch")
    res = cli.ok("release", "diff", a, b)
    assert res.stdout.split() == ["M", "data/blob.bin"], res
    assert "fetches at most 7,000 bytes of file content" in res.err, res
    assert "before compression and delta encoding" in res.err, res


def test_git_commit_is_recorded_and_marked_dirty(cli, mgrid, tmp_path):
    import subprocess

    src = code_dir(tmp_path, "git")

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com",
                               "-C", str(src), *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "c1")
    head = git("rev-parse", "HEAD")
    clean = cli.publish(src, "git-ch")
    assert mgrid.admin.release(clean)["git_commit"] == head
    (src / "job.py").write_text("# uncommitted edit\n")
    dirty = cli.publish(src, "git-ch")
    assert mgrid.admin.release(dirty)["git_commit"] == f"{head}-dirty"
