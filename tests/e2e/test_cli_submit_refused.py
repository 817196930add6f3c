"""`officegrid submit` with bad input: a clear error naming file, line and problem, and nothing
created on the server (design promise 6: "the submit is refused whole").

No test of this module may create a job: each one checks that the server still has none.
"""

from __future__ import annotations

import json

import pytest

from .test_cli_support import Cli, module_grid


@pytest.fixture(scope="module")
def mgrid(tmp_path_factory):
    with module_grid(tmp_path_factory, "refused") as g:
        # A release on the default channel, so that only the input can be what is wrong.
        code = tmp_path_factory.mktemp("code")
        (code / "job.py").write_text("def process(record, ctx):\n    return record\n")
        from grid import publish

        publish(g.admin, code)
        yield g


@pytest.fixture
def cli(mgrid, tmp_path) -> Cli:
    return Cli(mgrid.server.url, mgrid.server.admin_token, tmp_path)


def assert_nothing_created(cli: Cli, mgrid) -> None:
    """No job on the server: the Python client sees none and `status` lists none."""
    assert mgrid.admin.jobs() == []
    table = cli.ok("status")
    assert "job" in table.stdout, table  # the table header is there ...
    rows = [line for line in table.stdout.splitlines() if line.startswith("│")]
    assert rows == [], table  # ... but not one row


def test_status_lists_no_job(cli, mgrid):
    listed = cli.ok("status", "--json")
    assert json.loads(listed.stdout) == [], listed
    assert_nothing_created(cli, mgrid)


# (id, file name, content or None for "no such file", extra submit args, location, problem)
BAD_INPUTS = [
    ("invalid-utf8", "bad.csv", b"id,value\nr1,1\nr2,\xff2\nr3,3\n", [],
     "bad.csv:3:", "invalid utf-8 byte 0xff at column 4"),
    ("ragged-row", "ragged.csv", b"id,value\nr1,1\nr2,2,3\nr3,3\n", [],
     "ragged.csv:3:", "row has 3 fields, header has 2"),
    ("broken-jsonl", "broken.jsonl", b'{"id": 1}\n{"id": 2\n{"id": 3}\n', [],
     "broken.jsonl:2:", "invalid JSON: Expecting ',' delimiter"),
    ("jsonl-not-object", "list.jsonl", b'{"id": 1}\n\n[1, 2]\n', [],
     "list.jsonl:3:", "expected a JSON object, got an array"),
    ("duplicate-key", "dup.csv", b"id,value\na,1\nb,2\na,3\n", ["--key", "id"],
     "dup.csv:4:", "duplicate key 'a', first seen at line 2"),
    ("empty-key", "nokey.csv", b"id,value\na,1\n,2\n", ["--key", "id"],
     "nokey.csv:3:", "key column 'id' is empty"),
    ("key-column-absent", "cols.csv", b"id,value\na,1\n", ["--key", "customer"],
     "cols.csv:1:", "key column 'customer' is not in the header; columns: 'id', 'value'"),
    ("unknown-extension", "book.xlsx", b"PK\x03\x04 not really a workbook", [],
     "book.xlsx:", "unknown format '.xlsx'"),
    ("missing-file", "nope.csv", None, [],
     "nope.csv:", "file not found"),
    ("cp1252-read-as-utf8", "latin.csv", "id,name\n1,café\n".encode("cp1252"), [],
     "latin.csv:2:", "invalid utf-8 byte 0xe9 at column 6 (if the file is not UTF-8, give its "
     "encoding, e.g. cp1252)"),
    ("three-bad-rows-max-2", "three.csv",
     b"id,value\nr1,1\nr2,2,x\nr3,3\nr4\nr5,5\nr6,6,6\nr7,7\n", ["--max-bad-rows", "2"],
     "three.csv:7:", "row has 3 fields, header has 2 (more than max_bad_rows=2 bad rows)"),
]


def test_third_bad_row_refuses_after_reporting_the_two_skipped(cli, mgrid, tmp_path):
    (tmp_path / "three.csv").write_text("id,value\nr1,1\nr2,2,x\nr3,3\nr4\nr5,5\nr6,6,6\n")
    res = cli("submit", "--entry", "job:process", "--input", "three.csv", "--max-bad-rows", "2")
    assert res.returncode == 1, res
    assert res.err.startswith("skipped bad row three.csv:3: row has 3 fields, header has 2 "
                              "skipped bad row three.csv:5: row has 1 field, header has 2 "
                              "error: three.csv:7: row has 3 fields"), res
    assert_nothing_created(cli, mgrid)


@pytest.mark.parametrize(("name", "content", "args", "where", "problem"),
                         [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_refused_whole(cli, mgrid, tmp_path, name, content, args, where, problem):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    # --unit-size 1: the rows before the bad one are already cut into units (and uploaded)
    # when the problem is found; the job must still not exist.
    res = cli("submit", "--entry", "job:process", "--input", name, "--unit-size", "1", *args)
    assert res.returncode == 1, res
    assert res.stdout == "", res  # no job id
    assert "Traceback" not in res.stderr, res
    assert f"error: {where} {problem}" in res.err, res
    assert res.err.count("error:") == 1, res
    assert_nothing_created(cli, mgrid)


def test_max_bad_rows_counts_each_kind(cli, mgrid, tmp_path):
    # Two different kinds of bad rows are skipped with --max-bad-rows 2 ... but a third refuses.
    (tmp_path / "mixed.csv").write_bytes(b"id,value\nr1,1\nr2,\xff\nr3,3,3\nr4,4\n,5\n")
    res = cli("submit", "--entry", "job:process", "--input", "mixed.csv", "--key", "id",
              "--max-bad-rows", "2")
    assert res.returncode == 1, res
    assert "skipped bad row mixed.csv:3: invalid utf-8 byte 0xff" in res.err, res
    assert "skipped bad row mixed.csv:4: row has 3 fields, header has 2" in res.err, res
    assert ("error: mixed.csv:6: key column 'id' is empty (more than max_bad_rows=2 bad rows)"
            in res.err), res
    assert_nothing_created(cli, mgrid)


def test_bad_arguments_are_refused(cli, mgrid, tmp_path):
    (tmp_path / "ok.csv").write_text("id,value\nr1,1\n")
    for args, message in [
        (["--unit-size", "0"], "--unit-size must be >= 1, got 0"),
        (["--encoding", "klingon"], "unknown encoding 'klingon'"),
        (["--delimiter", "::"], "delimiter must be one character"),
        (["--format", "xml"], "unknown format 'xml'"),
        (["--max-bad-rows", "-1"], "max_bad_rows must be an int >= 0, got -1"),
        (["--channel", "nobody-published-this"],
         "channel 'nobody-published-this' points at no release yet"),
    ]:
        res = cli("submit", "--entry", "job:process", "--input", "ok.csv", *args)
        assert res.returncode == 1, res
        assert res.stdout == "", res
        assert message in res.err, res
        assert "Traceback" not in res.stderr, res
    assert_nothing_created(cli, mgrid)


def test_missing_required_flags_is_a_usage_error(cli, mgrid):
    res = cli("submit", "--input", "whatever.csv")
    assert res.returncode == 2, res  # click's usage error
    assert "--entry" in res.err, res
    assert_nothing_created(cli, mgrid)


def test_error_names_a_file_with_brackets_exactly(cli, mgrid, tmp_path):
    (tmp_path / "export[final].csv").write_text("id,value\nr1,1\nr2,2,3\n")
    res = cli("submit", "--entry", "job:process", "--input", "export[final].csv")
    assert res.returncode == 1, res
    assert_nothing_created(cli, mgrid)
    assert "export[final].csv:3: row has 3 fields" in res.err, res


def test_error_quoting_markup_like_data_does_not_crash(cli, mgrid, tmp_path):
    (tmp_path / "dupm.csv").write_text("id,value\n[/x],1\n[/x],2\n")
    res = cli("submit", "--entry", "job:process", "--input", "dupm.csv", "--key", "id")
    assert res.returncode == 1, res
    assert_nothing_created(cli, mgrid)
    assert "Traceback" not in res.stderr, res
    assert "dupm.csv:3: duplicate key '[/x]'" in res.err, res


def test_error_keeps_a_long_path_whole(cli, mgrid, tmp_path):
    d = tmp_path / "a-rather-long-directory-name-for-inputs" / "another-level-of-nesting"
    d.mkdir(parents=True)
    bad = d / "bad.csv"
    bad.write_text("id,value\nr1,1\nr2,2,3\n")
    assert len(str(bad)) > 80
    res = cli("submit", "--entry", "job:process", "--input", bad)
    assert res.returncode == 1, res
    assert_nothing_created(cli, mgrid)
    assert f"{bad}:3: row has 3 fields, header has 2" in res.stderr, res


def test_broken_json_line_reports_the_right_column(cli, mgrid, tmp_path):
    (tmp_path / "cut.jsonl").write_text('{"id": 1}\n{"id": 2\n')
    res = cli("submit", "--entry", "job:process", "--input", "cut.jsonl")
    assert res.returncode == 1, res
    assert_nothing_created(cli, mgrid)
    assert "cut.jsonl:2: invalid JSON: Expecting ',' delimiter at column 9" in res.err, res
