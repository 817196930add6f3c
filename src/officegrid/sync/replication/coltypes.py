"""The declared SQLite type of each column of a new data source.

Typed inputs (JSON Lines, Parquet, a database query) give each value a Python type, and a column
takes the type of its values. A CSV file has only text, and a table of TEXT columns compares
``price > 10`` as text (``'9.99' > '10'``), so a CSV column whose every non-empty value is a
canonical number is declared INTEGER or REAL; SQLite's type affinity then stores those values
as numbers (https://sqlite.org/datatype3.html, section 3). A column with any other value stays
TEXT -- including numbers written with leading zeros, such as ZIP codes ``01234``, which a
numeric column would turn into ``1234``.
"""

from __future__ import annotations

import decimal
import math
import re
from collections.abc import Iterable
from typing import Any

INTEGER, REAL, NUMERIC, TEXT, BLOB = "INTEGER", "REAL", "NUMERIC", "TEXT", "BLOB"
UNTYPED = ""  # no declared type: values are stored as given (a column of mixed blobs and text)

# At most 18 digits: always inside SQLite's 64-bit integers.
_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,17})")
_REAL = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]{1,3})?")
_NUMBERS = {INTEGER: 0, REAL: 1, NUMERIC: 2}


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
        return NUMERIC  # SQLite keeps a decimal as a number where that loses nothing
    if isinstance(v, bytes):
        return BLOB
    if text_may_be_number and isinstance(v, str):
        if _INT.fullmatch(v):
            return INTEGER
        if _REAL.fullmatch(v) and math.isfinite(float(v)):
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


def is_number_type(declared: str) -> bool:
    return declared in _NUMBERS


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
