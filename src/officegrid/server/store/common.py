"""Small helpers shared by store modules."""

from __future__ import annotations

import json
from typing import Any


def dumps(value: Any) -> str | None:
    """JSON-encode for a Text column (None stays NULL)."""
    return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def loads(value: str | None) -> Any:
    """Decode a JSON Text column (NULL gives None)."""
    return None if value is None else json.loads(value)


class StoreError(Exception):
    """Base of store errors; ``code`` is a protocol error code, the message is for users."""

    code = "invalid"


class NotFound(StoreError):
    code = "not_found"


class Conflict(StoreError):
    code = "conflict"


class Invalid(StoreError):
    code = "invalid"


class Forbidden(StoreError):
    code = "forbidden"
