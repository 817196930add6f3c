"""Errors raised for bad input files (design promise 6: name the file, the line and the problem).

Two kinds of trouble are told apart:

* :class:`InputError` -- the file (or a row, when no more bad rows may be skipped) cannot be used.
  It is a ``ValueError`` so callers that only care about "bad value" can catch that.
* :class:`BadRow` -- one row that is wrong; a reader skips it (up to ``max_bad_rows``) and hands it
  to an ``on_bad_row`` callback, so the rest of the job goes on.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BadRow", "InputError"]


def _where(path: str, line: int | None) -> str:
    return path if line is None else f"{path}:{line}"


class InputError(ValueError):
    """An input file that cannot be read as a whole, or a bad row that may not be skipped.

    Attributes:
        path: the file as the caller named it (``str``).
        line: 1-based physical line (CSV, JSON Lines) or 1-based row number (Parquet) of the
            problem, or ``None`` when the problem is the whole file (missing, unknown format).
        problem: what is wrong, without the location (``str``).

    ``str(error)`` is ``"path:line: problem"`` (``"path: problem"`` when ``line`` is None), e.g.
    ``"customers.csv:17: row has 5 fields, header has 4"``.
    """

    def __init__(self, path: object, line: int | None, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        super().__init__(f"{_where(self.path, line)}: {problem}")

    def __reduce__(self):  # keep the three attributes across pickling (multiprocessing, logging)
        return (type(self), (self.path, self.line, self.problem))


@dataclass(frozen=True)
class BadRow:
    """One input row that was rejected; what a reader passes to ``on_bad_row``.

    Attributes:
        path: the file (``str``).
        line: 1-based physical line where the problem is (CSV, JSON Lines; for a CSV record that
            spans lines, the line it starts on unless the problem is on a later line, such as an
            invalid byte) or the 1-based row number (Parquet).
        message: what is wrong, e.g. ``"row has 5 fields, header has 4"``.

    ``str(bad_row)`` is ``"path:line: message"``.
    """

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{_where(self.path, self.line)}: {self.message}"
