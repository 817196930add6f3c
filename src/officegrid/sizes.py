"""Byte sizes for people: the one formatter of sizes in messages and the checks of size settings.

Sizes in settings are bytes or pydantic ``ByteSize`` strings ("512MiB", "2GB"); messages show
them with :func:`human_bytes` (decimal units, as "2GB" in a setting means 2e9 bytes).
"""

from __future__ import annotations

from typing import Any

_UNITS = (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3))


def human_bytes(n: float) -> str:
    """``2300000000`` -> ``"2.3 GB"``: decimal units up to PB, 3 significant digits, never an
    exponent (``1e+05 GB``); under 1 kB exact bytes ("512 B")."""
    for i, (unit, size) in enumerate(_UNITS):
        if abs(n) >= size:
            text = f"{n / size:.3g}"
            if "e" in text:  # 999.96 kB rounds to "1e+03": it is 1 MB (or >= 1000 PB)
                if i > 0:
                    return f"{n / _UNITS[i - 1][1]:.3g} {_UNITS[i - 1][0]}"
                text = f"{n / size:.0f}"
            return f"{text} {unit}"
    return f"{int(n)} B"


def bytes_pair(a: float, b: float) -> tuple[str, str]:
    """``a`` and ``b`` for a comparison such as "free A < B": :func:`human_bytes` unless both
    read the same (3 significant digits hide the difference), then exact byte counts."""
    ta, tb = human_bytes(a), human_bytes(b)
    if ta == tb and int(a) != int(b):
        return f"{int(a):,} B", f"{int(b):,} B"
    return ta, tb


def check_size(value: Any, key: str, *, allow_zero: bool) -> Any:
    """Refuse a negative size (and 0 when ``allow_zero`` is False) before pydantic's ByteSize
    parses it, whose message for "-3" ("could not parse value and unit from byte string") does
    not say what is wrong. Returns ``value`` unchanged (None passes).

    Raises:
        ValueError: naming ``key`` and the value, e.g. "max_memory must be more than 0 (a cap
            of 0 bytes would kill every unit; leave it unset for no cap), got '0'".
    """
    if value is None or isinstance(value, bool):
        return value
    number: float | None = None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("-"):
            raise ValueError(f"{key} must not be negative, got {value!r}")
        digits = text.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ")
        try:
            number = float(digits) if digits else None
        except ValueError:
            number = None
    if number is None:
        return value  # ByteSize says what it cannot parse
    if number < 0:
        raise ValueError(f"{key} must not be negative, got {value!r}")
    if number == 0 and not allow_zero:
        raise ValueError(f"{key} must be more than 0 (a cap of 0 bytes would stop every unit; "
                         f"leave {key} unset for no cap), got {value!r}")
    return value
