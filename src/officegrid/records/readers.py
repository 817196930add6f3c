"""Streaming readers for job input files: CSV, JSON Lines and Parquet.

:func:`iter_records` yields ``(key, record)`` pairs one at a time and never holds the whole file:
memory is one line (CSV, JSON Lines) or one record batch (Parquet) plus, when a key column is
named, a compact index of key digests (see :class:`_KeyIndex`, 24 to 48 bytes per key).

Bad input follows design promise 6: every problem names the file, the line (or Parquet row) and
what is wrong. A problem with the whole file (missing, unknown format, no header, duplicate column
names, key column absent) raises :class:`~officegrid.records.errors.InputError` at once; a problem
with one row is a :class:`~officegrid.records.errors.BadRow` that is skipped (up to
``max_bad_rows``) so the rest of the job goes on, or refused whole when the limit is passed.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import re
import stat
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from hashlib import blake2b
from typing import IO, Any

from officegrid.records.errors import BadRow, InputError
from officegrid.records.units import Key

__all__ = ["EXTENSIONS", "FORMATS", "Key", "detect_format", "iter_records"]

FORMATS = ("csv", "jsonl", "parquet")
"""The input formats :func:`iter_records` reads."""

EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
"""File name extension (lower case) -> format."""

SNIFF_BYTES = 64 * 1024  # how much of a CSV file the delimiter guess looks at
SNIFF_ROWS = 200  # at most this many records of that sample are parsed per candidate
DELIMITERS = ",;\t|"  # the candidates, in order of preference on a tie
PARQUET_BATCH_ROWS = 8192  # rows per record batch taken from a Parquet file
_READ_BUFFER = 1 << 16
_MAX_SHOWN = 80  # longest key or column list quoted in a message

_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def detect_format(path: str | os.PathLike[str]) -> str:
    """Return the input format of ``path`` from its extension: ``"csv"``, ``"jsonl"`` or
    ``"parquet"`` (see :data:`EXTENSIONS`; case does not matter).

    Raises:
        InputError: the extension is not one of :data:`EXTENSIONS` ("unknown format").
    """
    p = os.fspath(path)
    ext = os.path.splitext(p)[1].lower()
    try:
        return EXTENSIONS[ext]
    except KeyError:
        known = "; ".join(
            f"{fmt} ({', '.join(e for e, f in EXTENSIONS.items() if f == fmt)})" for fmt in FORMATS
        )
        shown = repr(ext) if ext else "(no extension)"
        raise InputError(p, None, f"unknown format {shown}; known formats: {known}") from None


def iter_records(
    path: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    delimiter: str | None = None,
    encoding: str = "utf-8",
    key: str | None = None,
    max_bad_rows: int = 0,
    on_bad_row: Callable[[BadRow], object] | None = None,
) -> Iterator[tuple[Key, dict[str, Any]]]:
    """Stream the records of an input file as ``(key, record)`` pairs, in file order.

    Args:
        path: the input file.
        fmt: ``"csv"``, ``"jsonl"`` or ``"parquet"``; ``None`` picks it from the extension
            (:func:`detect_format`).
        delimiter: CSV only: one character; ``None`` guesses it from the first 64 KB among
            ``, ; TAB |`` by parsing the sample with each and keeping the one that gives the
            widest consistent rows (``csv.Sniffer`` was not used: its quote guess takes time
            quadratic in the sample, 0.4 s for 64 KB of text with apostrophes, and it counts
            characters instead of parsing quotes).
        encoding: text encoding of CSV and JSON Lines files (e.g. ``"cp1252"``). A byte order
            mark at the start of the file wins over it: UTF-8 and UTF-16 (LE/BE) BOMs are
            recognised and stripped.
        key: ``None``: the key of a record is its 1-based position among the data records of
            the file (bad rows count, blank lines do not), so keys do not depend on
            ``max_bad_rows``. A column name: the key is that column's value -- a ``str`` for
            CSV, a ``str`` or ``int`` for JSON Lines and Parquet; a missing, empty or duplicate
            key makes the row bad. Two keys that print the same (``5`` and ``"5"``) are
            duplicates.
        max_bad_rows: how many bad rows may be skipped (``>= 0``); the next one raises.
        on_bad_row: called with each skipped :class:`BadRow`.

    Yields:
        ``(key, record)``; ``record`` is a new ``dict``. CSV: ``{column: str}`` with every value
        as written in the file (an empty field is ``""``). JSON Lines: the decoded object.
        Parquet: ``pyarrow``'s Python values (int, float, bool, str, None, bytes, Decimal,
        datetime, date, list, dict).

    What is a bad row: CSV -- a row with another number of fields than the header, malformed
    quoting, an undecodable byte; JSON Lines -- a line that is not valid JSON, not an object,
    holds an undecodable byte or a lone surrogate escape; any format -- a missing, empty,
    wrongly typed or duplicate key. Blank lines are skipped and are not records.

    Duplicate keys are found with an 8-byte BLAKE2b digest of each key (``str(key)``), so a
    distinct key is wrongly taken for a duplicate with probability about ``n**2 / 2**65`` for
    ``n`` keys: 3e-8 for a million keys, 3e-6 for ten million.

    Raises:
        InputError: (at the call) unknown format, file missing or not a regular file;
            (while iterating) unreadable file, empty CSV, duplicate column names, key column
            absent from the CSV header or Parquet schema, unreadable Parquet data, a bad CSV
            header, or a bad row beyond ``max_bad_rows`` (the message names that row).
        ValueError: an invalid argument (``fmt``, ``delimiter``, ``encoding``, ``key``,
            ``max_bad_rows``).
    """
    p = os.fspath(path)
    if fmt is None:
        fmt = detect_format(p)
    elif fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")
    if delimiter is not None and (len(delimiter) != 1 or delimiter in "\r\n\"'"):
        raise ValueError(
            f"delimiter must be one character other than quotes and newlines, got {delimiter!r}"
        )
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ValueError(f"unknown encoding {encoding!r}") from None
    if key is not None and (not isinstance(key, str) or not key):
        raise ValueError(f"key must be a non-empty column name or None, got {key!r}")
    if isinstance(max_bad_rows, bool) or not isinstance(max_bad_rows, int) or max_bad_rows < 0:
        raise ValueError(f"max_bad_rows must be an int >= 0, got {max_bad_rows!r}")
    _check_file(p)
    bad = _BadRowGate(p, max_bad_rows, on_bad_row)
    if fmt == "parquet":
        return _iter_parquet(p, key, bad)
    if fmt == "csv":
        return _iter_csv(p, encoding, delimiter, key, bad)
    return _iter_jsonl(p, encoding, key, bad)


# --------------------------------------------------------------------------------------------
# shared pieces


def _check_file(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(path, None, "file not found") from None
    except OSError as e:
        raise InputError(path, None, f"cannot open: {e.strerror or e}") from None
    if stat.S_ISDIR(mode):
        raise InputError(path, None, "is a directory, not a file")


def _open(path: str) -> IO[bytes]:
    try:
        return open(path, "rb", buffering=_READ_BUFFER)  # noqa: SIM115 (closed by the caller)
    except OSError as e:
        raise InputError(path, None, f"cannot open: {e.strerror or e}") from None


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 4] + "...'"


def _column_list(names: list[str]) -> str:
    text = ", ".join(repr(n) for n in names)
    return text if len(text) <= 200 else text[:196] + " ..."


class _BadRowGate:
    """Counts bad rows; skips (and reports) up to ``limit`` of them, raises on the next."""

    __slots__ = ("path", "limit", "callback", "count")

    def __init__(self, path: str, limit: int, callback: Callable[[BadRow], object] | None):
        self.path = path
        self.limit = limit
        self.callback = callback
        self.count = 0

    def __call__(self, line: int, message: str) -> None:
        self.count += 1
        if self.count > self.limit:
            if self.limit:
                message = f"{message} (more than max_bad_rows={self.limit} bad rows)"
            raise InputError(self.path, line, message)
        if self.callback is not None:
            self.callback(BadRow(self.path, line, message))


class _KeyIndex:
    """A set of key digests that remembers the line of each key's first appearance.

    Open addressing with linear probing over two ``array('Q')`` (digest, line): 16 bytes a slot,
    kept between 1/3 and 2/3 full, so 24 to 48 bytes a key, half as much again while it grows
    (measured: 34 MB for a million keys, 50 MB peak; a Python ``set`` of int digests takes about
    70 bytes a key, a ``dict`` digest -> line about 110). Cost: about 1.2 us a key. The digest
    is the first 8 bytes of BLAKE2b(``key`` in UTF-8); 0 marks an empty slot, so a digest of 0
    is stored as 1.
    """

    __slots__ = ("_digests", "_lines", "_mask", "_count")

    def __init__(self, size: int = 1 << 12) -> None:
        self._digests = array("Q", [0]) * size
        self._lines = array("Q", [0]) * size
        self._mask = size - 1
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, key: str, line: int) -> int | None:
        """Remember ``key`` first seen at ``line``; return the earlier line if already seen."""
        d = blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        digest = int.from_bytes(d, "little") or 1
        digests, mask = self._digests, self._mask
        i = digest & mask
        while True:
            v = digests[i]
            if v == digest:
                return self._lines[i]
            if not v:
                break
            i = (i + 1) & mask
        digests[i] = digest
        self._lines[i] = line
        self._count += 1
        if self._count * 3 > (mask + 1) * 2:
            self._grow()
        return None

    def _grow(self) -> None:
        size = (self._mask + 1) * 2
        mask = size - 1
        digests = array("Q", [0]) * size
        lines = array("Q", [0]) * size
        for digest, line in zip(self._digests, self._lines, strict=True):
            if digest:
                i = digest & mask
                while digests[i]:
                    i = (i + 1) & mask
                digests[i] = digest
                lines[i] = line
        self._digests, self._lines, self._mask = digests, lines, mask


def _codec_for(f: IO[bytes], encoding: str) -> str:
    """Skip a byte order mark at the start of ``f`` and return the encoding to read with."""
    head = f.read(3)
    for bom, name in _BOMS:
        if head.startswith(bom):
            f.seek(len(bom))
            return name
    f.seek(0)
    name = codecs.lookup(encoding).name
    return "utf-8" if name == "utf-8-sig" else encoding


def _codec_label(encoding: str) -> str:
    name = codecs.lookup(encoding).name
    return {"utf-8": "utf-8", "cp1252": "cp1252"}.get(name, name)


def _decode_problem(exc: UnicodeDecodeError, encoding: str, before: str) -> tuple[int, int, str]:
    """(lines to add, column, message) for a decode error; ``before`` is the undone text."""
    done = before + exc.object[: exc.start].decode(encoding, "replace")
    column = len(done) - (done.rfind("\n") + 1) + 1
    label = _codec_label(encoding)
    message = f"invalid {label} byte 0x{exc.object[exc.start]:02x} at column {column}"
    if label == "utf-8":
        message += " (if the file is not UTF-8, give its encoding, e.g. cp1252)"
    return done.count("\n"), column, message


def _decoded_lines(f: IO[bytes], encoding: str, problems: deque[tuple[int, str]]) -> Iterator[str]:
    """Yield the physical lines of ``f`` as text (with their line ends), one at a time.

    An undecodable byte does not stop the stream: ``(line, message)`` is appended to
    ``problems`` and the line is yielded with U+FFFD in its place, so the caller can reject the
    record that holds it and go on with the next.
    """
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    if "\n".encode(encoding) == b"\n":
        # An ASCII-compatible encoding: every binary line is one text line.
        decode = decoder.decode
        for lineno, raw in enumerate(f, 1):
            try:
                text = decode(raw, raw[-1:] != b"\n")
            except UnicodeDecodeError as e:
                problems.append((lineno, _decode_problem(e, encoding, "")[2]))
                decoder.reset()
                text = raw.decode(encoding, "replace")
            yield text
        return
    # UTF-16 and the like: decode blocks and split the text.
    pending = ""
    lineno = 0
    for raw in iter(lambda: f.read(_READ_BUFFER), b""):
        try:
            text = decoder.decode(raw)
        except UnicodeDecodeError as e:
            extra, _, message = _decode_problem(e, encoding, pending)
            problems.append((lineno + extra + 1, message))
            decoder.reset()
            text = raw.decode(encoding, "replace")
        *complete, pending = (pending + text).split("\n")
        for line in complete:
            lineno += 1
            yield line + "\n"
    try:
        pending += decoder.decode(b"", True)
    except UnicodeDecodeError as e:
        problems.append((lineno + 1, _decode_problem(e, encoding, pending)[2]))
        pending += "\ufffd"
    if pending:
        yield pending


def _pop_problem(problems: deque[tuple[int, str]], last_line: int) -> tuple[int, str] | None:
    """The first decode problem on or before ``last_line`` (dropping all of those), if any."""
    first = None
    while problems and problems[0][0] <= last_line:
        found = problems.popleft()
        if first is None:
            first = found
    return first


# --------------------------------------------------------------------------------------------
# CSV


def _guess_delimiter(f: IO[bytes], encoding: str) -> str:
    """Pick the delimiter among :data:`DELIMITERS` that parses the start of ``f`` best.

    Each candidate parses the first :data:`SNIFF_BYTES` (complete lines only); it qualifies if
    the header has at least two fields, and the best is the one whose rows most often have the
    header's width, then the widest header, then the earliest in :data:`DELIMITERS`. With no
    candidate qualifying (a one-column file) the answer is ``","``.
    """
    start = f.tell()
    sample = f.read(SNIFF_BYTES)
    f.seek(start)
    text = codecs.getincrementaldecoder(encoding)("replace").decode(sample, False)
    if len(sample) == SNIFF_BYTES and "\n" in text:
        text = text[: text.rindex("\n") + 1]
    lines = [line + "\n" for line in text.split("\n") if line]
    best: tuple[float, int, int] | None = None
    choice = ","
    for rank, candidate in enumerate(DELIMITERS):
        rows: list[list[str]] = []
        reader = csv.reader(lines, delimiter=candidate)
        try:
            for row in reader:
                if row:
                    rows.append(row)
                    if len(rows) > SNIFF_ROWS:
                        break
        except csv.Error:
            pass
        if len(rows) > 2:
            rows.pop()  # the last record of the sample may be cut off
        if not rows or len(rows[0]) < 2:
            continue
        width = len(rows[0])
        body = rows[1:] or rows
        score = (sum(len(r) == width for r in body) / len(body), width, -rank)
        if best is None or score > best:
            best, choice = score, candidate
    return choice


def _csv_error_message(exc: csv.Error) -> str:
    text = str(exc)
    if text == "unexpected end of data":
        return "a quoted field is not closed before the end of the file"
    if text.startswith("field larger than field limit"):
        return f"field longer than {csv.field_size_limit()} characters (is a quote left open?)"
    if text.startswith("new-line character seen in unquoted field"):
        return (
            "carriage return (CR) inside an unquoted field: quote the field, or save the file "
            "with CRLF or LF line ends (CR-only line ends are not supported)"
        )
    return f"malformed CSV: {text}"


def _iter_csv(
    path: str, encoding: str, delimiter: str | None, key: str | None, bad: _BadRowGate
) -> Iterator[tuple[Key, dict[str, str]]]:
    with _open(path) as f:
        codec = _codec_for(f, encoding)
        if delimiter is None:
            delimiter = _guess_delimiter(f, codec)
        problems: deque[tuple[int, str]] = deque()
        reader = csv.reader(_decoded_lines(f, codec, problems), delimiter=delimiter, strict=True)

        # The header: the first non-blank record.
        header: list[str] = []
        end = 0
        while not header:
            start = end + 1
            try:
                header = next(reader)
            except StopIteration:
                raise InputError(path, None, "file is empty: a header row is required") from None
            except csv.Error as e:
                raise InputError(path, start, f"bad header: {_csv_error_message(e)}") from None
            end = reader.line_num
        found = _pop_problem(problems, end)
        if found is not None:
            raise InputError(path, found[0], f"bad header: {found[1]}")
        header_line = start
        positions: dict[str, int] = {}
        for i, name in enumerate(header):
            if name in positions:
                raise InputError(
                    path,
                    header_line,
                    f"duplicate column name {_short(name)} in header "
                    f"(columns {positions[name] + 1} and {i + 1})",
                )
            positions[name] = i
        width = len(header)
        key_at = -1
        index = None
        if key is not None:
            if key not in positions:
                raise InputError(
                    path,
                    header_line,
                    f"key column {_short(key)} is not in the header; columns: "
                    f"{_column_list(header)}",
                )
            key_at = positions[key]
            index = _KeyIndex()

        number = 0  # data records so far, bad ones included
        while True:
            start = end + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                if str(e).startswith("field larger than field limit"):
                    # Most likely a quote left open: where records start is lost for the rest
                    # of the file, so skipping on could accept garbage rows. Refuse the file.
                    raise InputError(path, start, _csv_error_message(e)) from None
                end = reader.line_num
                number += 1
                _pop_problem(problems, end)
                bad(start, _csv_error_message(e))
                continue
            end = reader.line_num
            if not row:  # a blank line
                continue
            number += 1
            if problems:
                found = _pop_problem(problems, end)
                if found is not None:
                    bad(*found)
                    continue
            if len(row) != width:
                bad(start, f"row has {_n(len(row), 'field')}, header has {width}")
                continue
            if index is None:
                yield number, dict(zip(header, row, strict=True))
                continue
            value = row[key_at]
            if not value:
                bad(start, f"key column {_short(key)} is empty")
                continue
            first = index.add(value, start)
            if first is not None:
                bad(start, f"duplicate key {_short(value)}, first seen at line {first}")
                continue
            yield value, dict(zip(header, row, strict=True))


# --------------------------------------------------------------------------------------------
# JSON Lines


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def _has_lone_surrogate(value: dict[str, Any]) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_key(value: object, key: str) -> str | None:
    """Why ``value`` cannot be the key of a JSON Lines or Parquet record (None if it can)."""
    if value is None:
        return f"key {_short(key)} is null"
    if isinstance(value, bool) or not isinstance(value, int | str):
        return f"key {_short(key)} must be a string or an integer, got {_json_kind(value)}"
    if value == "":
        return f"key {_short(key)} is empty"
    return None


def _iter_jsonl(
    path: str, encoding: str, key: str | None, bad: _BadRowGate
) -> Iterator[tuple[Key, dict[str, Any]]]:
    loads = json.loads
    index = _KeyIndex() if key is not None else None
    with _open(path) as f:
        codec = _codec_for(f, encoding)
        problems: deque[tuple[int, str]] = deque()
        number = 0
        for lineno, line in enumerate(_decoded_lines(f, codec, problems), 1):
            if problems and problems[0][0] <= lineno:
                number += 1
                bad(*_pop_problem(problems, lineno))  # type: ignore[misc]
                continue
            if line.isspace() or not line:
                continue
            number += 1
            try:
                record = loads(line)
            except json.JSONDecodeError as e:
                # Columns counted on the line without its end, where a cut-short line stops.
                column = min(e.pos, len(line.rstrip("\r\n"))) + 1
                bad(lineno, f"invalid JSON: {e.msg} at column {column}")
                continue
            except (ValueError, RecursionError) as e:
                bad(lineno, f"invalid JSON: {e}")
                continue
            if type(record) is not dict:
                bad(lineno, f"expected a JSON object, got {_json_kind(record)}")
                continue
            if "\\u" in line and _SURROGATE_ESCAPE.search(line) and _has_lone_surrogate(record):
                bad(
                    lineno,
                    "a string holds a lone surrogate escape (\\ud800-\\udfff), "
                    "which is not valid Unicode",
                )
                continue
            if index is None:
                yield number, record
                continue
            if key not in record:
                bad(lineno, f"key {_short(key)} is missing")
                continue
            value = record[key]
            why = _check_key(value, key)  # type: ignore[arg-type]
            if why is not None:
                bad(lineno, why)
                continue
            first = index.add(str(value), lineno)
            if first is not None:
                bad(lineno, f"duplicate key {_short(value)}, first seen at line {first}")
                continue
            yield value, record


# --------------------------------------------------------------------------------------------
# Parquet


def _iter_parquet(
    path: str, key: str | None, bad: _BadRowGate
) -> Iterator[tuple[Key, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise InputError(path, None, f"not a readable Parquet file: {e}") from None
    with pf:
        names = pf.schema_arrow.names
        seen: dict[str, int] = {}
        for i, name in enumerate(names):
            if name in seen:
                raise InputError(
                    path,
                    None,
                    f"duplicate column name {_short(name)} (columns {seen[name] + 1} and {i + 1})",
                )
            seen[name] = i
        if key is not None and key not in seen:
            raise InputError(
                path,
                None,
                f"key column {_short(key)} is not in the file; columns: {_column_list(names)}",
            )
        index = _KeyIndex() if key is not None else None
        batches = pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, use_threads=False)
        number = 0
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except (pa.ArrowException, OSError) as e:
                raise InputError(path, number + 1, f"cannot read Parquet data: {e}") from None
            for record in batch.to_pylist():
                number += 1
                if index is None:
                    yield number, record
                    continue
                value = record.get(key)
                why = _check_key(value, key)  # type: ignore[arg-type]
                if why is not None:
                    bad(number, why)
                    continue
                first = index.add(str(value), number)
                if first is not None:
                    bad(number, f"duplicate key {_short(value)}, first seen at row {first}")
                    continue
                yield value, record
