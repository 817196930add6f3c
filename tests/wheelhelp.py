"""Tiny pure-Python wheels made inside tests (no network, no build backend).

A wheel is a zip holding the package's files plus ``{name}-{version}.dist-info/`` with
``METADATA``, ``WHEEL`` and ``RECORD`` (PEP 427: RECORD lists every file with its urlsafe-base64
sha256 digest and size, and itself without a hash).
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from collections.abc import Iterable
from pathlib import Path


def make_wheel(directory: Path, name: str, version: str, files: dict[str, str],
               requires: Iterable[str] = ()) -> Path:
    """Write ``{name}-{version}-py3-none-any.whl`` into ``directory``; return its path.

    ``files`` maps paths inside the wheel (e.g. ``"pkg/__init__.py"``) to their text.
    ``requires`` become ``Requires-Dist`` lines. The bytes are deterministic (fixed zip times).
    """
    directory.mkdir(parents=True, exist_ok=True)
    dist = f"{name.replace('-', '_')}-{version}"
    meta = (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            + "".join(f"Requires-Dist: {r}\n" for r in requires))
    wheel = "Wheel-Version: 1.0\nGenerator: officegrid-tests\nRoot-Is-Purelib: true\n" \
            "Tag: py3-none-any\n"
    items = dict(files)
    items[f"{dist}.dist-info/METADATA"] = meta
    items[f"{dist}.dist-info/WHEEL"] = wheel
    record = []
    for path, text in items.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}.dist-info/RECORD,,")
    items[f"{dist}.dist-info/RECORD"] = "\n".join(record) + "\n"
    out = directory / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for path, text in items.items():
            info = zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            z.writestr(info, text)
    return out


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tiny_wheelhouse(directory: Path, value: int = 1) -> Path:
    """A wheelhouse with ``tinypkg 1.0`` (needs ``tinydep>=2``) and ``tinydep 2.1``.

    ``tinypkg.VALUE`` is ``value``; ``tinypkg.where()`` returns the module's file path."""
    make_wheel(directory, "tinypkg", "1.0", {
        "tinypkg/__init__.py": (f"import tinydep\nVALUE = {value}\n"
                                "def where():\n    return __file__\n")},
        requires=["tinydep>=2"])
    make_wheel(directory, "tinydep", "2.1", {"tinydep.py": "DEP = 21\n"})
    return directory
