"""The demo behind ``officegrid demo``: real reference data, generated input, the reference job.

Importing this package is cheap; ``faker`` and ``zipcodes`` (the ``demo`` extra) are imported only
by the functions of :mod:`officegrid.demo.data` that need them.
"""

from __future__ import annotations

from officegrid.demo.data import (
    CUSTOMER_COLUMNS,
    FAULT_KINDS,
    ZIP_COLUMNS,
    example_dir,
    generate_customers,
    iter_customers,
    prepare_example,
    write_zips_csv,
)

__all__ = [
    "CUSTOMER_COLUMNS",
    "FAULT_KINDS",
    "ZIP_COLUMNS",
    "example_dir",
    "generate_customers",
    "iter_customers",
    "prepare_example",
    "write_zips_csv",
]
