"""Errors of replicated data sources."""

from __future__ import annotations


class DataSourceError(Exception):
    """A data source cannot do what was asked (bad input, no primary key, unknown table...)."""


class ChainBroken(DataSourceError):
    """A log batch does not continue the replica's chain: it must not be applied (repair)."""


class NeedsRepair(DataSourceError):
    """The replica cannot tail from its position (purged, other epoch, broken chain)."""


class ReplicaDiskFull(DataSourceError):
    """The replica's disk (or its page limit) is full; the last good state is kept."""
