"""officegrid: turn idle office desktops into a batch-processing grid.

The public Python API is :class:`officegrid.Client` (the HTTP client the CLI uses) and
:func:`officegrid.batch` (marks a processing function as taking lists of records).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Client", "batch", "__version__"]


def batch(size: int = 500):
    """Mark a processing function as the batch form: ``fn(records: list[dict], ctx) -> list``.

    The runner then calls it with up to ``size`` records at a time; it must return one entry per
    record (a dict, a list of dicts, or None). If a call raises, the runner retries that batch one
    record at a time so that the exception is pinned on the record that caused it.

    Code that must run without officegrid installed may instead set ``fn.batch_size = N``.
    """
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")

    def mark(fn):
        fn.batch_size = size
        return fn

    return mark


def __getattr__(name: str):
    # Lazy: the client pulls in httpx, which job code running under the runner must not need.
    if name == "Client":
        from officegrid.client import Client

        return Client
    raise AttributeError(name)
