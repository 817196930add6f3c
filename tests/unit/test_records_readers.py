"""Input readers: CSV, JSON Lines, Parquet; keys, bad rows, streaming (design promise 6)."""

from __future__ import annotations

import codecs
import json
import tracemalloc
from pathlib import Path

import pytest

from officegrid.records import BadRow, InputError, detect_format, iter_records
from officegrid.records.readers import _KeyIndex


def write(path: Path, data: bytes | str) -> Path:
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


def read_all(path: Path, **kw) -> list[tuple[object, dict]]:
    return list(iter_records(path, **kw))


def collect_bad(path: Path, limit: int = 100, **kw) -> tuple[list, list[BadRow]]:
    bad: list[BadRow] = []
    rows = list(iter_records(path, max_bad_rows=limit, on_bad_row=bad.append, **kw))
    return rows, bad


# --- CSV ---------------------------------------------------------------------------------


def test_csv_basic_values_stay_strings_and_keys_are_positions(tmp_path):
    p = write(tmp_path / "a.csv", "id,name,note\n1,Ann,\n2,Bob,x y\n")
    assert read_all(p) == [
        (1, {"id": "1", "name": "Ann", "note": ""}),
        (2, {"id": "2", "name": "Bob", "note": "x y"}),
    ]


def test_csv_utf8_bom_is_stripped(tmp_path):
    p = write(tmp_path / "bom.csv", codecs.BOM_UTF8 + "id,city\n1,Köln\n".encode())
    rows = read_all(p, key="id")
    assert rows == [("1", {"id": "1", "city": "Köln"})]


def test_csv_semicolon_sniffed_with_decimal_commas(tmp_path):
    p = write(tmp_path / "eu.csv", "name;price;note\nBob;3,50;a, b\nAmy;4,20;\n")
    rows = read_all(p)
    assert [r for _, r in rows] == [
        {"name": "Bob", "price": "3,50", "note": "a, b"},
        {"name": "Amy", "price": "4,20", "note": ""},
    ]


def test_csv_tab_sniffed_in_tsv_and_pipe_in_txt(tmp_path):
    tsv = write(tmp_path / "t.tsv", 'a\tb\n1\t"x, y"\n2\tz\n')
    assert [r for _, r in read_all(tsv)] == [{"a": "1", "b": "x, y"}, {"a": "2", "b": "z"}]
    txt = write(tmp_path / "p.txt", "a|b|c\n1|2|3\n")
    assert read_all(txt) == [(1, {"a": "1", "b": "2", "c": "3"})]


def test_csv_explicit_delimiter_wins_over_guess(tmp_path):
    p = write(tmp_path / "x.csv", "a;b,c\n1;2,3\n")
    assert read_all(p, delimiter=";") == [(1, {"a": "1", "b,c": "2,3"})]
    assert read_all(p, delimiter=",") == [(1, {"a;b": "1;2", "c": "3"})]


def test_csv_one_column_file(tmp_path):
    p = write(tmp_path / "one.csv", "name\nAnn\nBob\n")
    assert [r for _, r in read_all(p)] == [{"name": "Ann"}, {"name": "Bob"}]


def test_csv_cp1252(tmp_path):
    p = write(tmp_path / "win.csv", "id;name\r\n1;Café – Müller €\r\n".encode("cp1252"))
    assert read_all(p, encoding="cp1252") == [(1, {"id": "1", "name": "Café – Müller €"})]


def test_csv_invalid_byte_names_file_line_and_byte(tmp_path):
    p = write(tmp_path / "win.csv", "id,name\n1,ok\n2,Caf\xe9\n".encode("cp1252"))
    with pytest.raises(InputError) as ei:
        read_all(p)
    e = ei.value
    assert (e.path, e.line) == (str(p), 3)
    assert str(e).startswith(f"{p}:3: invalid utf-8 byte 0xe9 at column 6")


def test_csv_invalid_byte_is_a_bad_row_and_reading_goes_on(tmp_path):
    p = write(tmp_path / "win.csv", b"id,name\n1,Caf\xe9\n2,ok\n")
    rows, bad = collect_bad(p)
    assert rows == [(2, {"id": "2", "name": "ok"})]
    assert [(b.line, b.message.split(" (")[0]) for b in bad] == [
        (2, "invalid utf-8 byte 0xe9 at column 6")
    ]


def test_csv_invalid_byte_inside_a_multiline_field_names_its_own_line(tmp_path):
    p = write(tmp_path / "m.csv", b'id,text\n1,"line one\nline tw\xf6"\n2,ok\n')
    with pytest.raises(InputError) as ei:
        read_all(p)
    assert ei.value.line == 3
    assert ei.value.problem.startswith("invalid utf-8 byte 0xf6 at column 8")


def test_csv_utf16_with_bom_as_excel_unicode_text(tmp_path):
    p = write(tmp_path / "excel.txt", "id\tname\r\n1\tÅsa\r\n2\t李\r\n".encode("utf-16"))
    assert read_all(p, key="id") == [
        ("1", {"id": "1", "name": "Åsa"}),
        ("2", {"id": "2", "name": "李"}),
    ]


def test_csv_ragged_row(tmp_path):
    p = write(tmp_path / "customers.csv", "a,b,c,d\n1,2,3,4\n1,2,3,4,5\n")
    with pytest.raises(InputError) as ei:
        read_all(p)
    assert str(ei.value) == f"{p}:3: row has 5 fields, header has 4"
    assert ei.value.problem == "row has 5 fields, header has 4"


def test_csv_multiline_quoted_field_keeps_line_numbers(tmp_path):
    text = (
        "id,text\n"  # 1
        '1,"first\n'  # 2
        "second\r\n"  # 3
        'third"\n'  # 4
        "\n"  # 5 (blank, skipped)
        "2,plain\n"  # 6
        "3,too,many\n"  # 7
    )
    p = write(tmp_path / "m.csv", text)
    rows, bad = collect_bad(p)
    assert rows == [
        (1, {"id": "1", "text": "first\nsecond\r\nthird"}),
        (2, {"id": "2", "text": "plain"}),
    ]
    assert [str(b) for b in bad] == [f"{p}:7: row has 3 fields, header has 2"]


def test_csv_unclosed_quote_is_reported_where_the_record_starts(tmp_path):
    p = write(tmp_path / "q.csv", 'id,text\n1,ok\n2,"never closed\n3,x\n')
    rows, bad = collect_bad(p)
    assert rows == [(1, {"id": "1", "text": "ok"})]
    assert [(b.line, b.message) for b in bad] == [
        (3, "a quoted field is not closed before the end of the file")
    ]


def test_csv_runaway_quote_refuses_the_file_even_with_bad_rows_allowed(tmp_path):
    body = "".join(f"{i},row {i}\n" for i in range(2, 20_000))
    p = write(tmp_path / "q.csv", f'id,text\n1,"opened here\n{body}')
    with pytest.raises(InputError) as ei:
        read_all(p, max_bad_rows=1000)
    assert ei.value.line == 2
    assert "field longer than" in ei.value.problem and "quote left open" in ei.value.problem


def test_csv_bare_carriage_return_is_explained(tmp_path):
    p = write(tmp_path / "cr.csv", "a,b\n1\r2,3\n4,5\n")
    rows, bad = collect_bad(p)
    assert rows == [(2, {"a": "4", "b": "5"})]
    assert bad[0].line == 2 and bad[0].message.startswith("carriage return (CR) inside")


def test_csv_junk_after_closing_quote_is_a_bad_row(tmp_path):
    p = write(tmp_path / "q.csv", 'id,text\n1,"a"b\n2,c\n')
    rows, bad = collect_bad(p)
    assert rows == [(2, {"id": "2", "text": "c"})]
    assert bad[0].line == 2 and bad[0].message.startswith("malformed CSV:")


def test_csv_duplicate_header_is_refused_whole(tmp_path):
    p = write(tmp_path / "h.csv", "id,name,id\n1,a,2\n")
    with pytest.raises(InputError) as ei:
        read_all(p, max_bad_rows=10)
    assert ei.value.line == 1
    assert "duplicate column name 'id' in header (columns 1 and 3)" in str(ei.value)


def test_csv_empty_file_is_refused(tmp_path):
    p = write(tmp_path / "e.csv", "\n\n")
    with pytest.raises(InputError, match="header row is required"):
        read_all(p)


def test_csv_header_only_has_no_records(tmp_path):
    assert read_all(write(tmp_path / "h.csv", "a,b\n")) == []


# --- keys --------------------------------------------------------------------------------


def test_key_column_values_become_keys(tmp_path):
    p = write(tmp_path / "k.csv", "cust,name\nC-1,Ann\nC-2,Bob\n")
    assert [k for k, _ in read_all(p, key="cust")] == ["C-1", "C-2"]


def test_duplicate_key_names_both_lines(tmp_path):
    p = write(tmp_path / "k.csv", "id,v\nA,1\nB,2\n\nA,3\n")
    with pytest.raises(InputError) as ei:
        read_all(p, key="id")
    assert str(ei.value) == f"{p}:5: duplicate key 'A', first seen at line 2"


def test_duplicate_key_keeps_the_first_record(tmp_path):
    p = write(tmp_path / "k.csv", "id,v\nA,1\nA,2\nB,3\n")
    rows, bad = collect_bad(p, key="id")
    assert rows == [("A", {"id": "A", "v": "1"}), ("B", {"id": "B", "v": "3"})]
    assert [b.line for b in bad] == [3]


def test_empty_key_is_a_bad_row(tmp_path):
    p = write(tmp_path / "k.csv", "id,v\n,1\nB,2\n")
    rows, bad = collect_bad(p, key="id")
    assert [k for k, _ in rows] == ["B"]
    assert str(bad[0]) == f"{p}:2: key column 'id' is empty"


def test_missing_key_column_is_refused_whole(tmp_path):
    p = write(tmp_path / "k.csv", "cust,name\nC-1,Ann\n")
    with pytest.raises(InputError) as ei:
        read_all(p, key="id", max_bad_rows=100)
    assert "key column 'id' is not in the header" in str(ei.value)
    assert "'cust', 'name'" in str(ei.value)


def test_positional_keys_do_not_depend_on_max_bad_rows(tmp_path):
    p = write(tmp_path / "k.csv", "a,b\n1,2\n\n1,2,3\n4,5\n")
    rows, bad = collect_bad(p)
    # data rows: line 2 -> 1, line 4 (bad) -> 2, line 5 -> 3; the blank line is not a record
    assert [k for k, _ in rows] == [1, 3]
    assert [b.line for b in bad] == [4]


def test_key_index_grows_and_keeps_first_lines():
    index = _KeyIndex(size=8)
    for i in range(20_000):
        assert index.add(f"k{i}", i + 2) is None
    assert len(index) == 20_000
    assert index.add("k0", 99_999) == 2
    assert index.add("k19999", 99_999) == 20_001
    assert index.add("new", 7) is None


# --- bad-row budget ----------------------------------------------------------------------


def test_max_bad_rows_skips_and_reports(tmp_path):
    p = write(tmp_path / "b.csv", "a,b\n1,2\nx\n3,4\ny,y,y\n5,6\n")
    rows, bad = collect_bad(p, limit=2)
    assert [k for k, _ in rows] == [1, 3, 5]
    assert bad == [
        BadRow(str(p), 3, "row has 1 field, header has 2"),
        BadRow(str(p), 5, "row has 3 fields, header has 2"),
    ]


def test_max_bad_rows_exceeded_names_the_row(tmp_path):
    p = write(tmp_path / "b.csv", "a,b\n1,2\nx\n3,4\ny,y,y\n5,6\n")
    seen: list[BadRow] = []
    got: list = []
    with pytest.raises(InputError) as ei:
        for item in iter_records(p, max_bad_rows=1, on_bad_row=seen.append):
            got.append(item)
    assert ei.value.line == 5
    assert "row has 3 fields, header has 2" in str(ei.value)
    assert "more than max_bad_rows=1 bad rows" in str(ei.value)
    assert [b.line for b in seen] == [3]
    assert [k for k, _ in got] == [1, 3]


def test_bad_arguments_raise_value_error(tmp_path):
    p = write(tmp_path / "a.csv", "a\n1\n")
    with pytest.raises(ValueError, match="max_bad_rows"):
        iter_records(p, max_bad_rows=-1)
    with pytest.raises(ValueError, match="unknown encoding"):
        iter_records(p, encoding="no-such-codec")
    with pytest.raises(ValueError, match="delimiter"):
        iter_records(p, delimiter=",,")
    with pytest.raises(ValueError, match="unknown format"):
        iter_records(p, fmt="xlsx")


# --- whole-file problems -----------------------------------------------------------------


def test_unknown_extension(tmp_path):
    p = write(tmp_path / "data.xlsx", b"PK")
    with pytest.raises(InputError) as ei:
        iter_records(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}: unknown format '.xlsx'")
    assert "csv" in msg and "jsonl" in msg and "parquet" in msg
    assert ei.value.line is None


def test_detect_format():
    assert detect_format("a.CSV") == "csv"
    assert detect_format("a.ndjson") == "jsonl"
    assert detect_format("dir.v2/a.pq") == "parquet"


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as ei:
        iter_records(tmp_path / "nope.csv")
    assert str(ei.value) == f"{tmp_path / 'nope.csv'}: file not found"


def test_directory_is_refused(tmp_path):
    d = tmp_path / "dir.csv"
    d.mkdir()
    with pytest.raises(InputError, match="is a directory"):
        iter_records(d)


# --- JSON Lines --------------------------------------------------------------------------


def test_jsonl_reads_objects_and_skips_blank_lines(tmp_path):
    p = write(tmp_path / "a.jsonl", '{"id": 7, "v": [1, {"x": null}]}\n\n  \n{"id": "B"}\n')
    assert read_all(p) == [(1, {"id": 7, "v": [1, {"x": None}]}), (2, {"id": "B"})]
    assert [k for k, _ in read_all(p, key="id")] == [7, "B"]


def test_jsonl_with_bom_and_crlf(tmp_path):
    p = write(tmp_path / "a.jsonl", codecs.BOM_UTF8 + b'{"a": "\xc3\xa9"}\r\n{"a": 2}\r\n')
    assert read_all(p) == [(1, {"a": "é"}), (2, {"a": 2})]


def test_jsonl_broken_line(tmp_path):
    p = write(tmp_path / "a.ndjson", '{"id": 1}\n{"id": 2 "v": 3}\n')
    with pytest.raises(InputError) as ei:
        read_all(p)
    assert str(ei.value) == f"{p}:2: invalid JSON: Expecting ',' delimiter at column 10"


def test_jsonl_non_object_and_bad_utf8_and_surrogate_are_bad_rows(tmp_path):
    p = write(
        tmp_path / "a.jsonl",
        b'{"id": 1}\n[1, 2]\n"text"\n{"id": "caf\xe9"}\n'
        b'{"s": "\\ud800"}\n{"s": "\\ud83d\\ude00"}\n',
    )
    rows, bad = collect_bad(p)
    assert rows == [(1, {"id": 1}), (6, {"s": "😀"})]
    assert [(b.line, b.message.split(" (")[0]) for b in bad] == [
        (2, "expected a JSON object, got an array"),
        (3, "expected a JSON object, got a string"),
        (4, "invalid utf-8 byte 0xe9 at column 12"),
        (5, "a string holds a lone surrogate escape"),
    ]


def test_jsonl_key_problems(tmp_path):
    p = write(
        tmp_path / "k.jsonl",
        '{"id": 1}\n{"x": 1}\n{"id": null}\n{"id": 1.5}\n{"id": true}\n{"id": "1"}\n{"id": ""}\n',
    )
    rows, bad = collect_bad(p, key="id")
    assert rows == [(1, {"id": 1})]
    assert [(b.line, b.message) for b in bad] == [
        (2, "key 'id' is missing"),
        (3, "key 'id' is null"),
        (4, "key 'id' must be a string or an integer, got a number"),
        (5, "key 'id' must be a string or an integer, got a boolean"),
        (6, "duplicate key '1', first seen at line 1"),
        (7, "key 'id' is empty"),
    ]


# --- Parquet -----------------------------------------------------------------------------


def write_parquet(path: Path, rows: list[dict], row_group_size: int = 2) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def test_parquet_read_across_row_groups(tmp_path):
    import datetime as dt

    rows = [
        {"id": i, "name": f"n{i}", "score": i / 2, "ok": i % 2 == 0, "day": dt.date(2024, 1, i)}
        for i in range(1, 6)
    ]
    p = write_parquet(tmp_path / "a.parquet", rows)
    assert read_all(p) == list(enumerate(rows, 1))
    assert [k for k, _ in read_all(p, key="id")] == [1, 2, 3, 4, 5]


def test_parquet_key_problems_use_row_numbers(tmp_path):
    rows = [{"id": "a"}, {"id": None}, {"id": "a"}, {"id": "b"}]
    p = write_parquet(tmp_path / "k.pq", rows)
    got, bad = collect_bad(p, key="id")
    assert [k for k, _ in got] == ["a", "b"]
    assert [str(b) for b in bad] == [
        f"{p}:2: key 'id' is null",
        f"{p}:3: duplicate key 'a', first seen at row 1",
    ]
    with pytest.raises(InputError, match="key column 'nope' is not in the file"):
        read_all(p, key="nope")


def test_parquet_that_is_not_parquet(tmp_path):
    p = write(tmp_path / "fake.parquet", b"id,name\n1,a\n")
    with pytest.raises(InputError) as ei:
        read_all(p)
    assert str(ei.value).startswith(f"{p}: not a readable Parquet file")


# --- streaming ---------------------------------------------------------------------------


def test_csv_streams_a_50mb_file_in_small_memory(tmp_path):
    p = tmp_path / "big.csv"
    filler = "x" * 480
    block = "".join(f"{i},{filler},{i % 7}\n" for i in range(1000)).encode()
    blocks = 105  # 105,000 rows of ~490 bytes: ~51 MB
    with p.open("wb") as f:
        f.write(b"id,text,n\n")
        for _ in range(blocks):
            f.write(block)
    size = p.stat().st_size
    assert size > 50_000_000
    tracemalloc.start()
    try:
        count = 0
        total = 0
        for _key, record in iter_records(p):
            count += 1
            total += int(record["n"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == blocks * 1000
    assert total == blocks * sum(i % 7 for i in range(1000))
    assert peak < 20_000_000, f"peak {peak} bytes for a {size}-byte file"


def test_jsonl_is_lazy(tmp_path):
    p = write(tmp_path / "a.jsonl", "".join(json.dumps({"i": i}) + "\n" for i in range(10)) + "[")
    it = iter_records(p)
    assert next(it) == (1, {"i": 0})  # the broken last line is not read yet
    with pytest.raises(InputError, match=":11: invalid JSON"):
        list(it)
