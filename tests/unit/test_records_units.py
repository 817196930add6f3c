"""Unit encoding: input and result JSON Lines."""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import uuid
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from officegrid.records.units import (
    ResultLine,
    UnitInput,
    batch_units,
    decode_unit_input,
    decode_unit_result,
    encode_unit_input,
    encode_unit_result,
    result_columns,
)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
keys = st.integers() | st.text(min_size=1)
records = st.dictionaries(st.text(), json_values, max_size=8)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(keys, records), max_size=20))
def test_unit_input_round_trip(rows):
    data = encode_unit_input(rows)
    assert isinstance(data, bytes)
    assert data.count(b"\n") == len(rows)  # exactly one line per record
    assert list(decode_unit_input(data)) == rows


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(keys, st.lists(records, max_size=3) | st.text()), max_size=15))
def test_unit_result_round_trip(items):
    lines = [ResultLine(k, [], v) if isinstance(v, str) else ResultLine(k, v) for k, v in items]
    assert list(decode_unit_result(encode_unit_result(lines))) == lines


def test_unit_input_format_is_plain_compact_json_lines():
    data = encode_unit_input([(1, {"city": "Köln", "n": 2}), ("C-7", {"t": "a\nb\u2028c"})])
    assert data == '[1,{"city":"Köln","n":2}]\n["C-7",{"t":"a\\nb\u2028c"}]\n'.encode()
    # the standard library alone reads it (what the worker runner does)
    assert [json.loads(line) for line in data.decode().split("\n") if line] == [
        [1, {"city": "Köln", "n": 2}],
        ["C-7", {"t": "a\nb\u2028c"}],
    ]


def test_parquet_types_are_mapped_to_json():
    rec = {
        "ts": dt.datetime(2024, 3, 1, 12, 30, tzinfo=dt.UTC),
        "day": dt.date(2024, 3, 1),
        "amount": Decimal("12.50"),
        "blob": b"\x00\xff",
        "wait": dt.timedelta(minutes=1, seconds=30),
        "id": uuid.UUID(int=1),
        "pair": (1, 2),
    }
    [(key, out)] = decode_unit_input(encode_unit_input([(1, rec)]))
    assert key == 1
    assert out == {
        "ts": "2024-03-01T12:30:00+00:00",
        "day": "2024-03-01",
        "amount": "12.50",
        "blob": base64.b64encode(b"\x00\xff").decode(),
        "wait": 90.0,
        "id": "00000000-0000-0000-0000-000000000001",
        "pair": [1, 2],
    }


def test_encoding_errors_name_the_record():
    with pytest.raises(TypeError, match="record 'K9'.*set"):
        encode_unit_input([("K9", {"x": {1, 2}})])
    with pytest.raises(ValueError, match="lone surrogate"):
        encode_unit_input([(1, {"x": "\ud800"})])
    with pytest.raises(ValueError, match="key must be"):
        encode_unit_input([(True, {})])
    with pytest.raises(TypeError, match="must be a dict"):
        encode_unit_input([(1, [1, 2])])


def test_decode_unit_input_rejects_bad_lines_with_line_number():
    with pytest.raises(ValueError, match="unit input line 2: invalid JSON"):
        list(decode_unit_input(b"[1,{}]\n[2,{\n"))
    with pytest.raises(ValueError, match="unit input line 1: expected"):
        list(decode_unit_input(b'{"k":1}\n'))
    with pytest.raises(ValueError, match="not UTF-8"):
        list(decode_unit_input(b'[1,{"a":"\xff"}]\n'))


def test_batch_units_sizes_and_keys():
    rows = [(i, {"i": i}) for i in range(1, 11)]
    units = list(batch_units(iter(rows), 3))
    assert [(u.first_key, u.last_key, u.count) for u in units] == [
        (1, 3, 3),
        (4, 6, 3),
        (7, 9, 3),
        (10, 10, 1),
    ]
    assert all(isinstance(u, UnitInput) for u in units)
    assert [r for u in units for r in decode_unit_input(u.data)] == rows
    assert units[0].data == encode_unit_input(rows[:3])


def test_batch_units_edges():
    assert list(batch_units([], 5)) == []
    [unit] = batch_units([("a", {}), ("b", {})], 2)
    assert (unit.first_key, unit.last_key, unit.count) == ("a", "b", 2)
    with pytest.raises(ValueError, match="unit_size"):
        list(batch_units([("a", {})], 0))


def test_batch_units_streams():
    endless = ((i, {"i": i}) for i in itertools.count(1))
    units = batch_units(endless, 1000)
    first, second = next(units), next(units)
    assert (first.first_key, second.last_key) == (1, 2000)


def test_decode_unit_result_and_columns():
    data = (
        b'{"k":1,"r":[{"name":"Ann","zip":"50667"}]}\n'
        b'{"k":"C-2","e":"KeyError: \'city\'"}\n'
        b'{"k":3,"r":[]}\n'
        b'{"k":4,"r":[{"extra":1,"name":"Bo"},{"zip":"1","late":true}]}\n'
    )
    assert list(decode_unit_result(data)) == [
        ResultLine(1, [{"name": "Ann", "zip": "50667"}]),
        ResultLine("C-2", [], "KeyError: 'city'"),
        ResultLine(3, []),
        ResultLine(4, [{"extra": 1, "name": "Bo"}, {"zip": "1", "late": True}]),
    ]
    assert result_columns(data) == ["name", "zip", "extra", "late"]


@pytest.mark.parametrize(
    "line",
    [
        b'{"k":1}',
        b'{"k":1,"r":[1]}',
        b'{"k":1,"e":5}',
        b'{"k":1,"r":[],"e":"x"}',
        b'{"k":null,"r":[]}',
        b"[1,{}]",
    ],
)
def test_decode_unit_result_rejects_malformed_lines(line):
    with pytest.raises(ValueError, match="unit result line 2"):
        list(decode_unit_result(b'{"k":0,"r":[]}\n' + line + b"\n"))


def test_error_result_line_drops_rows():
    data = encode_unit_result([ResultLine(5, [{"a": 1}], "boom")])
    assert data == b'{"k":5,"e":"boom"}\n'
