"""Results per data position: what the demo checks and shows after its mid-job master change.

Every result row of a job that declares data sources carries ``_data`` (``{"zips": position}``,
as JSON text in exported files). :func:`summarize_positions` counts rows and units per position
of one source and checks three things that must hold whatever the timing:

- **one position per unit**: a unit reads one snapshot, so all rows of a ``_unit`` name the same
  position;
- **every row names its position**;
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

__all__ = ["PositionReport", "PositionRow", "summarize_positions"]

#: Result columns :func:`summarize_positions` reads.
COLUMNS = ("_unit", "_data", "zip", "flags", "city", "county", "lat", "long", "nearest_branch")
MAX_EXAMPLES = 5


@dataclass
class PositionRow:
    """Rows of one data position."""

    pos: int
    rows: int = 0
    units: set[int] = field(default_factory=set)
    inactive_zip: int = 0  # rows flagged inactive_zip
    retired_rows: int = 0  # rows whose ZIP the change retires
    repointed_rows: int = 0  # rows whose ZIP the change re-points
    branch_moved: int = 0  # re-pointed rows whose nearest branch differs from before the change

    def as_dict(self) -> dict[str, Any]:
        return {"pos": self.pos, "rows": self.rows, "units": len(self.units),
                "inactive_zip": self.inactive_zip, "retired_rows": self.retired_rows,
                "repointed_rows": self.repointed_rows, "branch_moved": self.branch_moved}


@dataclass
class PositionReport:
    """The outcome of :func:`summarize_positions`."""

    source: str
    before: int  # the master's position before the change
    after: int  # the master's position after the change
    positions: dict[int, PositionRow] = field(default_factory=dict)
    mixed_units: dict[int, list[int]] = field(default_factory=dict)  # unit -> its positions
    rows_without_position: int = 0
    contradictions: int = 0  # rows whose values disagree with their position
    late_units: int = 0  # units queued once every replica had the change, seen in the rows
    late_stale: dict[int, int] = field(default_factory=dict)  # late unit -> older position read
    examples: list[str] = field(default_factory=list)  # the first few problems, readable

    @property
    def ok(self) -> bool:
        """No unit mixed positions, every row names one, and every row agrees with it."""
        return not (self.mixed_units or self.rows_without_position or self.contradictions
                    or self.late_stale)

    def label(self, pos: int) -> str:
        """``before the change`` / ``after the change`` / ``inside the change`` for a position."""
        if pos >= self.after:
            return "after the change"
        if pos <= self.before:
            return "before the change"
        return "inside the change"

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "before": self.before, "after": self.after,
                "positions": [self.positions[p].as_dict() for p in sorted(self.positions)],
                "mixed_units": {str(u): ps for u, ps in sorted(self.mixed_units.items())},
                "rows_without_position": self.rows_without_position,
                "contradictions": self.contradictions, "late_units": self.late_units,
                "late_stale": {str(u): p for u, p in sorted(self.late_stale.items())},
                "examples": self.examples, "ok": self.ok}


def _position(data: Any, source: str, parsed: dict[str, int | None]) -> int | None:
    """The position of ``source`` in a row's ``_data`` (a dict or its JSON text), else None.
    ``parsed`` caches JSON texts: a job has a handful of distinct ones."""
    if isinstance(data, str):
        if data in parsed:
            return parsed[data]
        try:
            found = _position(json.loads(data), source, parsed)
        except ValueError:
            found = None
        parsed[data] = found
        return found
    if not isinstance(data, dict) or not isinstance(data.get(source), int):
        return None
    return data[source]


def _float(value: Any) -> float | None:
    if value in (None, ""):
        return None
    return float(value)


def _shows(row: dict[str, Any], ref: dict[str, str]) -> bool:
    """Whether a result row shows the reference row ``ref``'s city, county and coordinates."""
    return (row.get("city") == ref["city"] and row.get("county") == ref["county"]
            and _float(row.get("lat")) == _float(ref["lat"])
            and _float(row.get("long")) == _float(ref["long"]))


def summarize_positions(rows: Iterable[dict[str, Any]], change: MasterChange, *, before: int,
                        after: int, source: str = "zips",
                        late_units: Iterable[int] = ()) -> PositionReport:
    """Count result rows per position of ``source`` and check them (see the module docstring).

    Args:
        rows: result rows with at least the keys of :data:`COLUMNS` (``_data`` as a dict or
            its JSON text).
        change: the change made to the master between ``before`` and ``after``.
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
    rep = PositionReport(source, before, after)
    unit_positions: dict[int, set[int]] = {}
    parsed: dict[str, int | None] = {}

    def problem(text: str) -> None:
        if len(rep.examples) < MAX_EXAMPLES:
            rep.examples.append(text)

    for row in rows:
        pos = _position(row.get("_data"), source, parsed)
        unit = row.get("_unit")
        if pos is None:
            rep.rows_without_position += 1
            problem(f"unit {unit}: a row without a {source} position ({row.get('_data')!r})")
            continue
        unit_positions.setdefault(unit, set()).add(pos)
        pr = rep.positions.get(pos)
        if pr is None:
            pr = rep.positions[pos] = PositionRow(pos)
        pr.rows += 1
        pr.units.add(unit)
        flags = (row.get("flags") or "").split(";")
        if "inactive_zip" in flags:
            pr.inactive_zip += 1
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
            problem(f"unit {unit} mixed positions {sorted(ps)}")
    for unit in set(late_units) & unit_positions.keys():
        rep.late_units += 1
        if min(unit_positions[unit]) < after:
            rep.late_stale[unit] = min(unit_positions[unit])
            problem(f"unit {unit} was leased after every replica had position {after} but "
                    f"read position {min(unit_positions[unit])}")
    return rep
