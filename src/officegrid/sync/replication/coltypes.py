"""The declared SQLite type of each column of a new data source.

Typed inputs (JSON Lines, Parquet, a database query) give each value a Python type, and a column
takes the type of its values. A CSV file has only text, and a table of TEXT columns compares
``price > 10`` as text (``'9.99' > '10'``), so a CSV column whose every non-empty value is a
canonical number that a 64-bit integer or float holds exactly is declared INTEGER or REAL;
SQLite's type affinity then stores those values as numbers (https://sqlite.org/datatype3.html,
section 3). A column with any other value stays TEXT -- including numbers written with leading
zeros, such as ZIP codes ``01234``, which a numeric column would turn into ``1234``, and long
numeric codes a float would round. Decimals (``--from-sql`` numeric columns) get no declared
type: each is stored as the int or float equal to it, else as its exact text.
"""

from __future__ import annotations

import decimal
import math
import re
from collections.abc import Iterable
from typing import Any

INTEGER, REAL, TEXT, BLOB = "INTEGER", "REAL", "TEXT", "BLOB"
UNTYPED = ""  # no declared type: values are stored as given (a column of mixed blobs and text)

# At most 18 digits: always inside SQLite's 64-bit integers.
_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,17})")
_REAL = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]{1,3})?")
_NUMBERS = {INTEGER: 0, REAL: 1}
# A number as SQLite, Python or a database prints one ("123", "2.4", "1.0e-05"), any length;
# no leading zeros (a code such as "007" stays text).
_NUMBER_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
# While inferring only: an integer a 64-bit float does not hold exactly (over 2**53). It is
# declared INTEGER, but beside REAL values the column becomes TEXT rather than round it.
_WIDE_INT = "WIDE INTEGER"


def value_type(v: Any, text_may_be_number: bool = False) -> str | None:
    """The SQLite type a value asks for, or None when it says nothing (null; an empty CSV
    field). ``text_may_be_number``: a string is a CSV field, which may spell a number."""
    if v is None or (text_may_be_number and v == ""):
        return None
    if isinstance(v, bool | int):
        return INTEGER
    if isinstance(v, float):
        return REAL
    if isinstance(v, decimal.Decimal):
        # No affinity: each value is stored as :func:`exact_number` made it (NUMERIC affinity
        # would round a decimal(30,2) through a 64-bit float).
        return UNTYPED
    if isinstance(v, bytes):
        return BLOB
    if text_may_be_number and isinstance(v, str):
        if _INT.fullmatch(v):
            return INTEGER if abs(int(v)) <= 2 ** 53 else _WIDE_INT
        if _REAL.fullmatch(v) and _exact_float(v):
            return REAL
    return TEXT


def widen(a: str | None, b: str | None) -> str | None:
    """The type that holds values of types ``a`` and ``b`` (None: no value seen yet)."""
    if a is None or a == b:
        return b
    if b is None:
        return a
    if a in _NUMBERS and b in _NUMBERS:
        return max(a, b, key=_NUMBERS.__getitem__)
    if {a, b} == {INTEGER, _WIDE_INT}:
        return _WIDE_INT
    if BLOB in (a, b) or UNTYPED in (a, b):
        return UNTYPED
    return TEXT


def infer(records: Iterable[dict[str, Any]], text_may_be_number: bool) -> dict[str, str]:
    """``{column: declared type}`` over all ``records`` (a column of nulls only: TEXT)."""
    seen: dict[str, str | None] = {}
    for rec in records:
        for c, v in rec.items():
            seen[c] = widen(seen.get(c), value_type(v, text_may_be_number))
    return {c: TEXT if t is None else INTEGER if t == _WIDE_INT else t for c, t in seen.items()}


def _exact_float(text: str) -> bool:
    """Whether a 64-bit float holds the number ``text`` spells exactly (``2.40`` yes; a
    24-digit code no: it stays text rather than lose digits)."""
    f = float(text)
    return math.isfinite(f) and decimal.Decimal(repr(f)) == decimal.Decimal(text)


def exact_number(d: decimal.Decimal) -> int | float | str:
    """``d`` as an int (integral, 64-bit) or float when that equals it exactly, else its text."""
    if d.is_finite():
        if d == d.to_integral_value() and -(2 ** 63) <= d < 2 ** 63:
            return int(d)
        f = float(d)
        if math.isfinite(f) and decimal.Decimal(repr(f)) == d:
            return f
    return str(d)


def is_number_type(declared: str) -> bool:
    """Whether a column declared ``declared`` has SQLite's INTEGER or REAL affinity (rules of
    https://sqlite.org/datatype3.html section 3.1). NUMERIC affinity (DATE, BOOLEAN,
    DECIMAL(p,s)...) is not counted: such columns often hold dates and other text."""
    t = declared.upper()
    return "INT" in t or (not any(s in t for s in ("CHAR", "CLOB", "TEXT"))
                          and any(s in t for s in ("REAL", "FLOA", "DOUB")))


def spells_number(text: str) -> bool:
    """Whether ``text`` is a plain number (``-12``, ``2.40``, ``1e5``)."""
    return bool(_INT.fullmatch(text) or _REAL.fullmatch(text))


def same_value(stored: Any, new: Any) -> bool:
    """Whether a replica's ``stored`` value equals a fresh ``new`` one as the column stores it:
    when either is a number they compare by value (``2.4`` and ``"2.40"``, ``3`` and
    ``Decimal("3.00")``, a TEXT column's ``"1.0e-05"`` and ``1e-05``), else as text, so a
    refresh writes only rows that really changed."""
    if stored is None or new is None:
        return stored is None and new is None
    if isinstance(stored, bytes) or isinstance(new, bytes):
        return stored == new
    if _is_number(stored) or _is_number(new):
        a, b = key_value(stored), key_value(new)
        return a == b
    return str(stored) == str(new)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | decimal.Decimal) and not isinstance(v, bool)


def key_value(v: Any) -> Any:
    """``v`` as a dict key that equal numbers share: a number, or text that spells one
    (``"123"`` in a TEXT column of an older source, ``"1.0e-05"``), as a Decimal; anything
    else as it is."""
    if isinstance(v, float):
        return decimal.Decimal(repr(v)) if math.isfinite(v) else v
    if _is_number(v):
        return decimal.Decimal(v)
    if isinstance(v, str) and _NUMBER_TEXT.fullmatch(v):
        return decimal.Decimal(v)
    return v
