"""Exact, canonical encoding of SQLite values for change-log entries and the wire.

Triggers cannot call Python, so they record each value as SQLite's ``quote()`` literal (which
round-trips integers, reals and blobs exactly; verified for SQLite 3.40) and text as the hex of
its UTF-8 bytes (``quote()`` stops at an embedded NUL). The server
*seals* an entry by parsing those literals (:func:`parse_literal`) into Python values and
re-encoding them as canonical JSON (:func:`dumps`): blobs become ``{"$b": "<hex>"}``, reals stay
JSON numbers with Python's shortest round-trip ``repr``. The sealed text is what is hashed and
sent, so master and replica hash the very same bytes.
"""

from __future__ import annotations

import json
from typing import Any

import blake3

Value = int | float | str | bytes | None


def parse_literal(text: str) -> Value:
    """Parse one SQLite ``quote()`` literal: ``NULL``, an integer, a real, ``'text'``, ``X'hex'``,
    or ``T<hex>``: text as the hex of its UTF-8 bytes (what the triggers write for text, since
    ``quote()`` cuts text at an embedded NUL).

    Raises:
        ValueError: ``text`` is not such a literal.
    """
    if text == "NULL":
        return None
    if text[:1] == "T":
        return bytes.fromhex(text[1:]).decode("utf-8")
    if text.startswith("'") and text.endswith("'") and len(text) >= 2:
        return text[1:-1].replace("''", "'")
    if text[:2] in ("X'", "x'") and text.endswith("'"):
        return bytes.fromhex(text[2:-1])
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"not an SQL literal: {text[:60]!r}") from None


def to_json(v: Value) -> Any:
    """One SQLite value as a JSON-able value (blobs tagged)."""
    if isinstance(v, bytes | bytearray | memoryview):
        return {"$b": bytes(v).hex()}
    return v


def from_json(v: Any) -> Value:
    """Inverse of :func:`to_json`.

    Raises:
        ValueError: an object other than a tagged blob.
    """
    if isinstance(v, dict):
        if set(v) != {"$b"}:
            raise ValueError(f"unexpected object in a row value: {str(v)[:60]}")
        return bytes.fromhex(v["$b"])
    return v


def dumps(obj: Any) -> str:
    """Canonical JSON text (sorted keys, no spaces, Infinity allowed) used for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def loads(text: str | bytes) -> Any:
    return json.loads(text)


def row_digest(values: list[Value] | tuple[Value, ...], size: int = 16) -> bytes:
    """BLAKE3 of the canonical JSON of a row's values (``size`` bytes)."""
    return blake3.blake3(dumps([to_json(v) for v in values]).encode()).digest(length=size)
