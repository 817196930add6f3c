"""Empty benchmark job: returns each record unchanged, to measure the grid's own overhead.

Entry point ``empty_job:process``. Standard library only.
"""

from __future__ import annotations


def process(record: object, ctx: object = None) -> object:
    """Return ``record`` itself (no copy, no work)."""
    return record
