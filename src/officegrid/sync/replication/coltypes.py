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
            return INTEGER
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
    if BLOB in (a, b) or UNTYPED in (a, b):
        return UNTYPED
    return TEXT


def infer(records: Iterable[dict[str, Any]], text_may_be_number: bool) -> dict[str, str]:
    """``{column: declared type}`` over all ``records`` (a column of nulls only: TEXT)."""
    seen: dict[str, str | None] = {}
    for rec in records:
        for c, v in rec.items():
            seen[c] = widen(seen.get(c), value_type(v, text_may_be_number))
    return {c: TEXT if t is None else t for c, t in seen.items()}


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
    """Whether a column declared ``declared`` stores numbers (SQLite's INTEGER, REAL or
    NUMERIC affinity, by the rules of https://sqlite.org/datatype3.html section 3.1)."""
    t = declared.upper()
    if "INT" in t:
        return True
    # REAL, FLOA, DOUB and anything else that is not text or blob: NUMERIC.
    return bool(t) and not any(s in t for s in ("CHAR", "CLOB", "TEXT", "BLOB"))


def spells_number(text: str) -> bool:
    """Whether ``text`` is a plain number (``-12``, ``2.40``, ``1e5``)."""
    return bool(_INT.fullmatch(text) or _REAL.fullmatch(text))


def same_value(stored: Any, new: Any) -> bool:
    """Whether a replica's ``stored`` value equals a fresh ``new`` one as the column stores it:
    numbers compare by value (``2.4`` and ``"2.40"``, ``3`` and ``Decimal("3.00")``), text as
    text, so a refresh writes only rows that really changed."""
    if stored is None or new is None:
        return stored is None and new is None
    if isinstance(stored, int | float) and not isinstance(stored, bool):
        try:
            return decimal.Decimal(repr(stored)) == decimal.Decimal(str(new))
        except decimal.InvalidOperation:
            return False
    if isinstance(stored, bytes) or isinstance(new, bytes):
        return stored == new
    return str(stored) == str(new)
