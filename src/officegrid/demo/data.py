"""Reference data and input records for the demo job (``examples/address_enrichment``).

Two generators, both deterministic:

- :func:`write_zips_csv` exports the real US ZIP code records shipped with the ``zipcodes``
  package (about 42,800 rows) to CSV, unchanged: military ZIPs have no county or time zone and
  lat/long ``0``; some Puerto Rico ZIPs have no county. Those gaps are part of the data.
- :func:`generate_customers` writes synthetic customer records whose city/state/zip come from the
  real ZIP list, with a few percent of the faults real customer files have (ZIP typos, wrong city,
  missing fields, ZIP+4, ZIPs that lost their leading zero, non-ASCII names).

``faker`` and ``zipcodes`` are the ``demo`` extra (``pip install 'officegrid[demo]'``); they are
imported only when a function needs them.
"""

from __future__ import annotations

import csv
import datetime as _dt
import importlib
import json
import random
import shutil
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

ZIP_COLUMNS = (
    "zip",
    "city",
    "state",
    "county",
    "lat",
    "long",
    "timezone",
    "type",
    "active",
    "acceptable_cities",
)

CUSTOMER_COLUMNS = (
    "customer_id",
    "first_name",
    "last_name",
    "email",
    "street",
    "city",
    "state",
    "zip",
    "phone",
    "signup_date",
)

#: Fault kinds reported by :func:`generate_customers`, in a fixed order.
FAULT_KINDS = (
    "zip_typo",  # one digit changed or two adjacent digits swapped: unknown or another place
    "wrong_city",  # a city of the same state that is not the ZIP's city nor an acceptable one
    "missing_zip",  # zip is empty
    "missing_city",  # city is empty
    "zip4",  # ZIP+4 format "12345-6789"
    "leading_zero_lost",  # "2134" for "02134" (a spreadsheet read the ZIP as a number)
    "non_ascii_name",  # first or last name has non-ASCII letters (José, Müller, Nguyễn)
)

# Probabilities of the mutually exclusive ZIP/city faults, per record.
_P_ZIP_TYPO = 0.010
_P_WRONG_CITY = 0.010
_P_MISSING_ZIP = 0.005
_P_MISSING_CITY = 0.005
_P_ZIP4 = 0.012
# Of the records whose ZIP starts with 0 (about 8 % of standard ZIPs) and have no fault above.
_P_LEADING_ZERO_LOST = 0.15
# Share of customers whose name comes from a non-US faker locale (about a third are non-ASCII).
_P_FOREIGN_NAME = 0.07
# Harmless variations (not faults): an acceptable alternative city name, an upper-case city.
_P_ALT_CITY = 0.05
_P_UPPER_CITY = 0.02

_FOREIGN_LOCALES = ("es_MX", "de_DE", "fr_FR", "vi_VN", "pt_BR")
_EN_POOL = 3000
_FOREIGN_POOL = 400
_STREET_POOL = 3000
_SIGNUP_START = _dt.date(2016, 1, 1)
_SIGNUP_DAYS = 3653  # ten years
_FALLBACK_AREA_CODES = ("212", "312", "415", "617", "713", "305", "206", "303", "404", "602")
# Letters NFKD does not decompose to ASCII.
_ASCII_FOLD = str.maketrans(
    {
        "đ": "d",
        "Đ": "D",
        "ß": "ss",
        "ø": "o",
        "Ø": "O",
        "æ": "ae",
        "Æ": "AE",
        "ł": "l",
        "Ł": "L",
        "œ": "oe",
        "Œ": "OE",
    }
)


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            f"the demo needs the '{module}' package: pip install 'officegrid[demo]'"
        ) from exc


def _zip_records() -> list[dict[str, Any]]:
    return _require("zipcodes").list_all()


def write_zips_csv(path: Path) -> int:
    """Export the real US ZIP code records of the ``zipcodes`` package to a CSV file.

    Columns, in order: ``zip`` (5 digits, text), ``city``, ``state`` (2 letters), ``county``,
    ``lat``, ``long`` (decimal degrees, as published), ``timezone`` (IANA name), ``type``
    (STANDARD, PO BOX, UNIQUE, MILITARY), ``active`` (``true``/``false``) and
    ``acceptable_cities`` ('|'-joined). Values are kept as published: rows without a county or a
    time zone keep them empty. The file is UTF-8 with ``\\n`` line ends, sorted as the package
    lists it (by ZIP), so the same package version always gives the same bytes.

    Args:
        path: file to write (parent directories are created; an existing file is replaced).

    Returns:
        The number of data rows written (about 42,800 for zipcodes 3.x).

    Raises:
        RuntimeError: the ``zipcodes`` package is not installed.
        OSError: the file cannot be written.
    """
    rows = _zip_records()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(ZIP_COLUMNS)
        writer.writerows(
            (
                z["zip_code"],
                z["city"],
                z["state"],
                z["county"] or "",
                z["lat"],
                z["long"],
                z["timezone"] or "",
                z["zip_code_type"],
                "true" if z["active"] else "false",
                "|".join(z["acceptable_cities"] or ()),
            )
            for z in rows
        )
    return len(rows)


def _ascii_slug(name: str) -> str:
    folded = unicodedata.normalize("NFKD", name.translate(_ASCII_FOLD))
    return "".join(c for c in folded.lower() if c.isascii() and c.isalnum())


def _person_pools(faker_cls: Any, locale: str, size: int, seed: int) -> tuple[list, list]:
    fake = faker_cls(locale)
    fake.seed_instance(seed)
    # first_name_male/female: vi_VN's plain first_name() answers "John"/"Jane".
    firsts = [fake.first_name_male() if i % 2 else fake.first_name_female() for i in range(size)]
    lasts = [fake.last_name() for _ in range(size)]
    return [(n, _ascii_slug(n)) for n in firsts], [(n, _ascii_slug(n)) for n in lasts]


class _Pools:
    """Everything drawn from faker and zipcodes once, before the per-record loop."""

    def __init__(self, seed: int) -> None:
        faker_cls = _require("faker").Faker
        self.en_first, self.en_last = _person_pools(faker_cls, "en_US", _EN_POOL, seed)
        self.foreign = [
            _person_pools(faker_cls, loc, _FOREIGN_POOL, seed + i + 1)
            for i, loc in enumerate(_FOREIGN_LOCALES)
        ]
        fake = faker_cls("en_US")
        fake.seed_instance(seed + 100)
        self.streets = [fake.street_name() for _ in range(_STREET_POOL)]
        self.domains = [fake.free_email_domain() for _ in range(44)]
        self.domains += [fake.domain_name() for _ in range(6)]

        zips = [z for z in _zip_records() if z["zip_code_type"] == "STANDARD" and z["active"]]
        # (zip, city, state, acceptable cities, area codes)
        self.zips = [
            (
                z["zip_code"],
                z["city"],
                z["state"],
                tuple(z["acceptable_cities"] or ()),
                tuple(z["area_codes"] or ()) or _FALLBACK_AREA_CODES,
            )
            for z in zips
        ]
        cities: dict[str, set[str]] = {}
        for z in zips:
            cities.setdefault(z["state"], set()).add(z["city"])
        self.state_cities = {s: sorted(c) for s, c in cities.items()}
        self.all_cities = sorted(set().union(*cities.values()))


def _zip_typo(zip5: str, rng: random.Random) -> str:
    digits = list(zip5)
    swaps = [i for i in range(4) if digits[i] != digits[i + 1]]
    if swaps and rng.random() < 0.5:
        i = rng.choice(swaps)
        digits[i], digits[i + 1] = digits[i + 1], digits[i]
    else:
        i = rng.randrange(5)
        digits[i] = rng.choice([d for d in "0123456789" if d != digits[i]])
    return "".join(digits)


def _wrong_city(city: str, state: str, acceptable: tuple, pools: _Pools, rng: random.Random) -> str:
    taken = {city.lower(), *(a.lower() for a in acceptable)}
    candidates = pools.state_cities[state]
    for _ in range(20):
        other = rng.choice(candidates)
        if other.lower() not in taken:
            return other
    # A state with a single city name (DC is all "Washington"): take a city of any state.
    while True:
        other = rng.choice(pools.all_cities)
        if other.lower() not in taken:
            return other


def iter_customers(
    n: int = 200_000, seed: int = 20261129
) -> Iterator[tuple[dict[str, str], tuple[str, ...]]]:
    """Yield ``n`` synthetic customer records with the faults injected into each one.

    This is the generator behind :func:`generate_customers`; tests use it as ground truth.

    Args:
        n: number of records (>= 0).
        seed: seed of every random choice (faker pools and the record-level draws).

    Yields:
        ``(record, faults)``: ``record`` maps each name of :data:`CUSTOMER_COLUMNS` to a string;
        ``faults`` is a tuple of :data:`FAULT_KINDS` names (empty for a clean record). At most
        one ZIP/city fault per record; ``non_ascii_name`` may come on top of one.

    Raises:
        ValueError: ``n`` is negative.
        RuntimeError: ``faker`` or ``zipcodes`` is not installed.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    pools = _Pools(seed)
    rng = random.Random(seed)
    rand, choice, randrange = rng.random, rng.choice, rng.randrange
    width = max(7, len(str(n)))
    en_first, en_last, foreign = pools.en_first, pools.en_last, pools.foreign
    streets, domains, zips = pools.streets, pools.domains, pools.zips
    t_typo = _P_ZIP_TYPO
    t_city = t_typo + _P_WRONG_CITY
    t_nozip = t_city + _P_MISSING_ZIP
    t_nocity = t_nozip + _P_MISSING_CITY
    t_zip4 = t_nocity + _P_ZIP4

    for i in range(1, n + 1):
        if rand() < _P_FOREIGN_NAME:
            firsts, lasts = choice(foreign)
        else:
            firsts, lasts = en_first, en_last
        first, first_slug = choice(firsts)
        last, last_slug = choice(lasts)

        zip5, city, state, acceptable, area_codes = choice(zips)
        if acceptable and rand() < _P_ALT_CITY:
            city = choice(acceptable)
        if rand() < _P_UPPER_CITY:
            city = city.upper()

        faults: list[str] = []
        zip_out = zip5
        r = rand()
        if r < t_typo:
            zip_out = _zip_typo(zip5, rng)
            faults.append("zip_typo")
        elif r < t_city:
            city = _wrong_city(city, state, acceptable, pools, rng)
            faults.append("wrong_city")
        elif r < t_nozip:
            zip_out = ""
            faults.append("missing_zip")
        elif r < t_nocity:
            city = ""
            faults.append("missing_city")
        elif r < t_zip4:
            zip_out = f"{zip5}-{randrange(1, 10000):04d}"
            faults.append("zip4")
        elif zip5[0] == "0" and rand() < _P_LEADING_ZERO_LOST:
            zip_out = zip5.lstrip("0")
            faults.append("leading_zero_lost")
        if not (first.isascii() and last.isascii()):
            faults.append("non_ascii_name")

        style = randrange(4)
        if style == 0:
            local = f"{first_slug}.{last_slug}"
        elif style == 1:
            local = f"{first_slug}{last_slug}{randrange(1, 100)}"
        elif style == 2:
            local = f"{first_slug[:1]}{last_slug}"
        else:
            local = f"{last_slug}.{first_slug}{randrange(1, 1000)}"
        street = f"{randrange(1, 10000) if rand() < 0.8 else randrange(1, 100)} {choice(streets)}"
        if rand() < 0.15:
            street += f" Apt {randrange(1, 400)}"
        area, exchange, line = choice(area_codes), randrange(200, 1000), randrange(10000)
        fmt = randrange(3)
        if fmt == 0:
            phone = f"({area}) {exchange}-{line:04d}"
        elif fmt == 1:
            phone = f"{area}-{exchange}-{line:04d}"
        else:
            phone = f"+1 {area} {exchange} {line:04d}"
        signup = _SIGNUP_START + _dt.timedelta(days=randrange(_SIGNUP_DAYS))

        yield (
            {
                "customer_id": f"C{i:0{width}d}",
                "first_name": first,
                "last_name": last,
                "email": f"{local}@{choice(domains)}",
                "street": street,
                "city": city,
                "state": state,
                "zip": zip_out,
                "phone": phone,
                "signup_date": signup.isoformat(),
            },
            tuple(faults),
        )


def generate_customers(path: Path, n: int = 200_000, seed: int = 20261129) -> dict[str, int]:
    """Write ``n`` synthetic customer records to a CSV file, with realistic faults.

    Columns: :data:`CUSTOMER_COLUMNS` (``customer_id`` is unique: ``C0000001``, ...). Names,
    streets and e-mail domains come from pools drawn once from faker (en_US plus a few percent
    of es_MX, de_DE, fr_FR, vi_VN and pt_BR names); city/state/zip from a random standard, active
    real ZIP; the phone's area code from that ZIP. About 5.4 % of records carry a ZIP/city fault
    of :data:`FAULT_KINDS` and 3 % a non-ASCII name. The same ``seed`` (and package versions)
    gives a byte-identical file: UTF-8, ``\\n`` line ends. About 2.3 s for 200,000 records on a
    2-core desktop.

    Args:
        path: file to write (parent directories are created; an existing file is replaced).
        n: number of records (>= 0).
        seed: seed of every random choice.

    Returns:
        Count of records per fault kind: every key of :data:`FAULT_KINDS`, in that order.

    Raises:
        ValueError: ``n`` is negative.
        RuntimeError: ``faker`` or ``zipcodes`` is not installed.
        OSError: the file cannot be written.
    """
    counts = dict.fromkeys(FAULT_KINDS, 0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CUSTOMER_COLUMNS)
        for record, faults in iter_customers(n, seed):
            writer.writerow(record.values())
            for kind in faults:
                counts[kind] += 1
    return counts


def example_dir() -> Path:
    """Return the directory of the reference job ``address_enrichment`` (read-only source).

    Looks in the installed package (``officegrid/_examples``) first, then in the source tree.

    Raises:
        FileNotFoundError: neither location holds the example.
    """
    here = Path(__file__).resolve()
    for candidate in (
        here.parents[1] / "_examples" / "address_enrichment",
        here.parents[3] / "examples" / "address_enrichment",
    ):
        if (candidate / "enrich.py").is_file():
            return candidate
    raise FileNotFoundError("examples/address_enrichment not found next to the officegrid package")


def prepare_example(
    dest: Path,
    *,
    release: int = 1,
    zips_csv: Path | None = None,
    source: Path | None = None,
    reference_data: bool = True,
) -> Path:
    """Copy the reference job into ``dest`` ready to publish as release 1 or release 2.

    Copies the example (without caches), writes ``data/zips.csv`` (a copy of ``zips_csv`` if
    given, else a fresh export; none with ``reference_data=False``) and sets ``config.json``:
    release 1 has no extra feature, release 2 turns on the ``region`` output field.

    Args:
        dest: target directory; must not exist yet.
        release: 1 or 2.
        zips_csv: an existing export of :func:`write_zips_csv` to copy (saves about 0.5 s).
        source: the example directory to copy (default: :func:`example_dir`).
        reference_data: False: ship no ``data/zips.csv``; the release then works only for jobs
            that declare the data source ``zips`` (``submit --data zips``), as in the demo.

    Returns:
        ``dest``.

    Raises:
        ValueError: ``release`` is not 1 or 2.
        FileExistsError: ``dest`` exists.
        FileNotFoundError: the example or ``zips_csv`` is missing.
    """
    features = {1: [], 2: ["region"]}.get(release)
    if features is None:
        raise ValueError(f"release must be 1 or 2, got {release}")
    dest = Path(dest)
    shutil.copytree(
        source or example_dir(), dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    data = dest / "data" / "zips.csv"
    if not reference_data:
        pass
    elif zips_csv is not None:
        data.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(zips_csv, data)
    else:
        write_zips_csv(data)
    (dest / "config.json").write_text(json.dumps({"features": features}, indent=2) + "\n")
    return dest
