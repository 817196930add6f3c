"""Results per data position: what the demo checks and shows after its mid-job master change.

Every result row of a job that declares data sources carries ``_data``
(``{"zips": [epoch, position]}``, as JSON text in exported files). A position alone is ambiguous:
a replaced source, a destructive ``data sql`` or a restored master start a new epoch at the same
position numbers. :func:`summarize_positions` counts rows and units per (epoch, position) of one
source and checks things that must hold whatever the timing:

- **one position per unit**: a unit reads one snapshot, so all rows of a ``_unit`` name the same
  position;
- **every row names its position**, in the epoch the change was made in (the demo's source
  keeps one epoch; a row of another epoch cannot be compared with the change's positions);
- **rows agree with their position**: for the ZIPs the change touched, a row at a position before
  the change shows the old reference values and a row at or after the change's position the new
  ones (a retired ZIP is flagged ``inactive_zip``; a re-pointed ZIP has the new city, county and
  coordinates).
- **late units see the change**: a unit still queued when every worker's replica had reported
  the change's position was leased later, so it must read that position or a newer one.

Which units saw which position depends on timing (when each worker's replica applied the
change); the checks above do not.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from officegrid.demo.master_change import MasterChange

__all__ = ["DataAt", "PositionReport", "PositionRow", "summarize_positions"]

#: ``(epoch, position)``: where a row's data came from (epoch the full id, as in ``data status``).
DataAt = tuple[str, int]

#: Result columns :func:`summarize_positions` reads.
COLUMNS = ("_unit", "_data", "zip", "flags", "city", "county", "lat", "long", "nearest_branch")
MAX_EXAMPLES = 5


@dataclass
class PositionRow:
    """Rows of one data position (``epoch``, ``pos``)."""

    epoch: str
    pos: int
    rows: int = 0
    units: set[int] = field(default_factory=set)
    inactive_zip: int = 0  # rows flagged inactive_zip
    retired_rows: int = 0  # rows whose ZIP the change retires
    repointed_rows: int = 0  # rows whose ZIP the change re-points
    branch_moved: int = 0  # re-pointed rows whose nearest branch differs from before the change

    def as_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos, "rows": self.rows, "units": len(self.units),
                "inactive_zip": self.inactive_zip, "retired_rows": self.retired_rows,
                "repointed_rows": self.repointed_rows, "branch_moved": self.branch_moved}


@dataclass
class PositionReport:
    """The outcome of :func:`summarize_positions`."""

    source: str
    epoch: str  # the master's epoch when it changed (``before`` and ``after`` are in it)
    before: int  # the master's position before the change
    after: int  # the master's position after the change
    positions: dict[DataAt, PositionRow] = field(default_factory=dict)
    mixed_units: dict[int, list[DataAt]] = field(default_factory=dict)  # unit -> its positions
    rows_without_position: int = 0
    other_epoch_rows: int = 0  # rows read in an epoch other than ``epoch``
    contradictions: int = 0  # rows whose values disagree with their position
    late_units: int = 0  # units queued once every replica had the change, seen in the rows
    late_stale: dict[int, int] = field(default_factory=dict)  # late unit -> older position read
    examples: list[str] = field(default_factory=list)  # the first few problems, readable

    @property
    def ok(self) -> bool:
        """No unit mixed positions, every row names one in the change's epoch, and every row
        agrees with it."""
        return not (self.mixed_units or self.rows_without_position or self.other_epoch_rows
                    or self.contradictions or self.late_stale)

    @property
    def epochs(self) -> set[str]:
        """The epochs the rows were read in (more than one only when something is wrong)."""
        return {e for e, _ in self.positions}

    def show(self, at: DataAt) -> str:
        """``at`` for people: the position, with the first 8 characters of its epoch when the
        rows name more than one epoch (else the epoch adds nothing)."""
        epoch, pos = at
        return f"{pos} (epoch {epoch[:8]})" if len(self.epochs | {self.epoch}) > 1 else str(pos)

    def label(self, at: DataAt | int) -> str:
        """``before the change`` / ``after the change`` / ``inside the change`` for a position
        (``(epoch, pos)``, or a bare position taken as in the change's epoch); ``another epoch``
        for a position in another epoch."""
        if isinstance(at, tuple):
            if at[0] != self.epoch:
                return "another epoch"
            at = at[1]
        pos = at
        if pos >= self.after:
            return "after the change"
        if pos <= self.before:
            return "before the change"
        return "inside the change"

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "epoch": self.epoch, "before": self.before,
                "after": self.after,
                "positions": [self.positions[p].as_dict() for p in self.ordered()],
                "mixed_units": {str(u): [list(at) for at in ps]
                                for u, ps in sorted(self.mixed_units.items())},
                "rows_without_position": self.rows_without_position,
                "other_epoch_rows": self.other_epoch_rows,
                "contradictions": self.contradictions, "late_units": self.late_units,
                "late_stale": {str(u): p for u, p in sorted(self.late_stale.items())},
                "examples": self.examples, "ok": self.ok}


    def ordered(self) -> list[DataAt]:
        """The keys of :attr:`positions`: the change's epoch first, then by epoch, position."""
        return sorted(self.positions, key=lambda at: (at[0] != self.epoch, at[0], at[1]))


def _position(data: Any, source: str, parsed: dict[str, DataAt | None]) -> DataAt | None:
    """``(epoch, position)`` of ``source`` in a row's ``_data`` (a dict or its JSON text, the
    value ``[epoch, position]``), else None. ``parsed`` caches JSON texts: a job has a handful
    of distinct ones."""
    if isinstance(data, str):
        if data in parsed:
            return parsed[data]
        try:
            found = _position(json.loads(data), source, parsed)
        except ValueError:
            found = None
        parsed[data] = found
        return found
    at = data.get(source) if isinstance(data, dict) else None
    # A bare position (the old shape) does not say which data it was: not a position.
    if not (isinstance(at, (list, tuple)) and len(at) == 2 and isinstance(at[0], str)
            and isinstance(at[1], int) and not isinstance(at[1], bool)):
        return None
    return at[0], at[1]


def _float(value: Any) -> float | None:
    if value in (None, ""):
        return None
    return float(value)


def _shows(row: dict[str, Any], ref: dict[str, str]) -> bool:
    """Whether a result row shows the reference row ``ref``'s city, county and coordinates."""
    return (row.get("city") == ref["city"] and row.get("county") == ref["county"]
            and _float(row.get("lat")) == _float(ref["lat"])
            and _float(row.get("long")) == _float(ref["long"]))


def summarize_positions(rows: Iterable[dict[str, Any]], change: MasterChange, *, epoch: str,
                        before: int, after: int, source: str = "zips",
                        late_units: Iterable[int] = ()) -> PositionReport:
    """Count result rows per (epoch, position) of ``source`` and check them (see the module
    docstring).

    Args:
        rows: result rows with at least the keys of :data:`COLUMNS` (``_data`` as a dict or
            its JSON text).
        change: the change made to the master between ``before`` and ``after``.
        epoch: the master's epoch (full id) ``before`` and ``after`` are positions of.
        before: the master's position before the change.
        after: the master's position once the change was applied (> ``before``).
        source: the data source name in ``_data``.
        late_units: ids of units that were still queued once every worker's replica had
            reported position ``after`` (they must read ``after`` or newer).

    Returns:
        A :class:`PositionReport`; ``report.ok`` is False on any problem, with up to
        :data:`MAX_EXAMPLES` described in ``report.examples``.

    Raises:
        ValueError: ``after`` is not greater than ``before``.
    """
    if after <= before:
        raise ValueError(f"after ({after}) must be greater than before ({before})")
    rep = PositionReport(source, epoch, before, after)
    unit_positions: dict[int, set[DataAt]] = {}
    parsed: dict[str, DataAt | None] = {}

    def problem(text: str) -> None:
        if len(rep.examples) < MAX_EXAMPLES:
            rep.examples.append(text)

    for row in rows:
        at = _position(row.get("_data"), source, parsed)
        unit = row.get("_unit")
        if at is None:
            rep.rows_without_position += 1
            problem(f"unit {unit}: a row without a {source} [epoch, position] "
                    f"({row.get('_data')!r})")
            continue
        unit_positions.setdefault(unit, set()).add(at)
        pr = rep.positions.get(at)
        if pr is None:
            pr = rep.positions[at] = PositionRow(*at)
        pr.rows += 1
        pr.units.add(unit)
        flags = (row.get("flags") or "").split(";")
        if "inactive_zip" in flags:
            pr.inactive_zip += 1
        if at[0] != epoch:  # its positions are not comparable with the change's
            rep.other_epoch_rows += 1
            problem(f"unit {unit}: a row read in epoch {at[0][:8]} (position {at[1]}), not in "
                    f"the change's epoch {epoch[:8]}")
            continue
        pos = at[1]
        z = row.get("zip")
        if z not in change.retired and z not in change.repointed:
            continue
        if before < pos < after:  # a snapshot holding part of one master transaction
            rep.contradictions += 1
            problem(f"unit {unit}, ZIP {z}: position {pos} is inside the change "
                    f"({before}..{after})")
            continue
        changed = pos >= after
        if z in change.retired:
            pr.retired_rows += 1
            if ("inactive_zip" in flags) != changed:
                rep.contradictions += 1
                problem(f"unit {unit}, ZIP {z} at position {pos}: retired "
                        f"{'after' if changed else 'before'} the change but flags are "
                        f"{row.get('flags')!r}")
        else:
            pr.repointed_rows += 1
            old, new = change.repointed[z]
            if not _shows(row, new if changed else old):
                rep.contradictions += 1
                problem(f"unit {unit}, ZIP {z} at position {pos}: shows {row.get('city')!r}, "
                        f"{row.get('county')!r}, expected the "
                        f"{'re-pointed' if changed else 'original'} row")
            if row.get("nearest_branch") != change.branches[z][0]:
                pr.branch_moved += 1
    for unit, ps in unit_positions.items():
        if len(ps) > 1:
            rep.mixed_units[unit] = sorted(ps)
            problem(f"unit {unit} mixed positions {[rep.show(at) for at in sorted(ps)]}")
    for unit in set(late_units) & unit_positions.keys():
        rep.late_units += 1
        seen = [pos for e, pos in unit_positions[unit] if e == epoch]
        if seen and min(seen) < after:  # other epochs are counted in other_epoch_rows
            rep.late_stale[unit] = min(seen)
            problem(f"unit {unit} was leased after every replica had position {after} but "
                    f"read position {min(seen)}")
    return rep
