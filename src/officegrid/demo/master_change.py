"""The change the demo makes to the ``zips`` master while its job runs.

Two kinds of real-world ZIP maintenance, on ZIP codes the demo's customers actually use (so the
change shows in the results):

- **retired**: the ZIP is set ``active=false`` (the reference job then flags ``inactive_zip``);
- **re-pointed**: the ZIP takes the city, county, acceptable cities and coordinates of another ZIP
  of the same state whose nearest branch office is a different one, so the job's
  ``nearest_branch`` moves too.

The plan is deterministic: the same ZIP export, customer file and seed give the same change.
"""

from __future__ import annotations

import csv
import math
import random
import runpy
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["MasterChange", "plan_master_change"]

#: The columns a re-pointed ZIP takes from its donor.
REPOINT_COLUMNS = ("city", "county", "lat", "long", "acceptable_cities")
DONOR_TRIES = 20  # random ZIPs of the state tried as the donor of a re-pointed ZIP


@dataclass
class MasterChange:
    """What the demo changes in the ``zips`` master, as rows of the ZIP export (text values).

    Attributes:
        retired: ``{zip: row}`` of the ZIPs to retire, rows as before the change.
        repointed: ``{zip: (row before, row after)}`` of the ZIPs to re-point.
        branches: ``{zip: (nearest branch before, after)}`` of the re-pointed ZIPs.
    """

    retired: dict[str, dict[str, str]] = field(default_factory=dict)
    repointed: dict[str, tuple[dict[str, str], dict[str, str]]] = field(default_factory=dict)
    branches: dict[str, tuple[str, str]] = field(default_factory=dict)

    def upserts(self) -> list[dict[str, str]]:
        """The rows to upsert into the master (only the changed columns and the key), in one
        transaction: retired ZIPs first, then re-pointed ones, each group by ZIP."""
        rows: list[dict[str, str]] = [{"zip": z, "active": "false"} for z in sorted(self.retired)]
        for z in sorted(self.repointed):
            after = self.repointed[z][1]
            rows.append({"zip": z, **{c: after[c] for c in REPOINT_COLUMNS}})
        return rows

    def __len__(self) -> int:
        return len(self.retired) + len(self.repointed)


def _unit_vector(lat: float, lon: float) -> tuple[float, float, float]:
    la, lo = math.radians(lat), math.radians(lon)
    return math.cos(la) * math.cos(lo), math.cos(la) * math.sin(lo), math.sin(la)


def _branch_finder(branches_py: Path):
    """``(lat, lon) -> branch name``, the nearest branch of ``branches.py`` by great-circle
    distance (largest dot product of unit vectors, as the reference job orders them)."""
    branches = runpy.run_path(str(branches_py))["BRANCHES"]
    vectors = [(name, _unit_vector(lat, lon)) for name, (lat, lon) in branches.items()]

    def nearest(lat: float, lon: float) -> str:
        x, y, z = _unit_vector(lat, lon)
        return max(vectors, key=lambda b: b[1][0] * x + b[1][1] * y + b[1][2] * z)[0]

    return nearest


def _located(row: dict[str, str]) -> bool:
    return float(row["lat"] or 0) != 0 or float(row["long"] or 0) != 0


def plan_master_change(zips_csv: Path, customers_csv: Path, *, retire: int = 300,
                       repoint: int = 300, seed: int = 4, branches_py: Path | None = None
                       ) -> MasterChange:
    """Choose ZIPs of the customer file to retire and to re-point (see the module docstring).

    Candidates are the standard, active ZIPs with a location that appear (as written, 5 digits)
    in ``customers_csv``; a re-pointed ZIP needs a donor ZIP in its state with another nearest
    branch, found among :data:`DONOR_TRIES` random ZIPs of the state (otherwise the candidate
    is left alone). With fewer candidates than asked, fewer ZIPs change.

    Args:
        zips_csv: the export of :func:`officegrid.demo.data.write_zips_csv`.
        customers_csv: the input of the job (column ``zip``).
        retire: how many ZIPs to retire (>= 0).
        repoint: how many ZIPs to re-point (>= 0).
        seed: seed of the choice.
        branches_py: the job's ``branches.py`` (default: the example's).

    Returns:
        The planned :class:`MasterChange`; retired and re-pointed ZIPs are disjoint.

    Raises:
        ValueError: ``retire`` or ``repoint`` is negative.
        OSError: a file cannot be read.
    """
    if retire < 0 or repoint < 0:
        raise ValueError(f"retire and repoint must be >= 0, got {retire}, {repoint}")
    if branches_py is None:
        from officegrid.demo.data import example_dir

        branches_py = example_dir() / "branches.py"
    nearest = _branch_finder(branches_py)
    with Path(zips_csv).open(encoding="utf-8", newline="") as fh:
        zips = {r["zip"]: r for r in csv.DictReader(fh)}
    with Path(customers_csv).open(encoding="utf-8", newline="") as fh:
        rows = csv.reader(fh)
        i = next(rows).index("zip")
        used = {r[i] for r in rows}
    located = {z: r for z, r in zips.items() if _located(r)}
    branches: dict[str, str] = {}

    def branch(z: str) -> str:  # computed only for the ZIPs looked at
        found = branches.get(z)
        if found is None:
            found = branches[z] = nearest(float(located[z]["lat"]), float(located[z]["long"]))
        return found

    by_state: dict[str, list[str]] = {}
    for z in sorted(located):
        by_state.setdefault(located[z]["state"], []).append(z)
    candidates = sorted(z for z in used & located.keys()
                        if zips[z]["type"] == "STANDARD" and zips[z]["active"] == "true")
    rng = random.Random(seed)
    rng.shuffle(candidates)

    change = MasterChange()
    for z in candidates:
        if len(change.retired) < retire:
            change.retired[z] = zips[z]
            continue
        if len(change.repointed) >= repoint:
            break
        # A donor of the same state served by another branch, by a few random tries (a state
        # served by one branch, or nearly, leaves the ZIP alone: cheaper than scanning it).
        state = by_state[zips[z]["state"]]
        tries = [rng.choice(state) for _ in range(DONOR_TRIES)]
        donor = next((d for d in tries if branch(d) != branch(z)), None)
        if donor is None:
            continue
        after = {**zips[z], **{c: zips[donor][c] for c in REPOINT_COLUMNS}}
        change.repointed[z] = (zips[z], after)
        change.branches[z] = (branch(z), branch(donor))
    return change
