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
