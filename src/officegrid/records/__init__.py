"""Records: reading job input files, encoding work units, exporting results.

* :func:`iter_records` streams ``(key, record)`` pairs from CSV, JSON Lines or Parquet, with
  clear errors for bad input (:class:`InputError`, :class:`BadRow`).
* :mod:`officegrid.records.units` is the unit input/result wire format (standard library only).
* :func:`open_writer` and :class:`SqlWriter` export result rows.

pyarrow and SQLAlchemy are imported only when Parquet or SQL is used.
"""

from __future__ import annotations

from officegrid.records.errors import BadRow, InputError
from officegrid.records.readers import detect_format, iter_records
from officegrid.records.units import (
    ResultLine,
    UnitInput,
    batch_units,
    decode_unit_input,
    decode_unit_result,
    encode_unit_input,
    encode_unit_result,
    result_columns,
)
from officegrid.records.writers import ResultWriter, SqlWriter, open_writer

__all__ = [
    "BadRow",
    "InputError",
    "ResultLine",
    "ResultWriter",
    "SqlWriter",
    "UnitInput",
    "batch_units",
    "decode_unit_input",
    "decode_unit_result",
    "detect_format",
    "encode_unit_input",
    "encode_unit_result",
    "iter_records",
    "open_writer",
    "result_columns",
]
