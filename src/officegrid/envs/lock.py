"""Resolve a release's dependencies into a lock with hashes (the publisher's side).

A release directory may declare dependencies in ``requirements.txt`` (used first) or in
``pyproject.toml``'s ``[project].dependencies``. :func:`resolve` turns them into a lock in pip's
requirements format, one exact pin per distribution with every allowed archive hash::

    tinydep==2.1 \\
        --hash=sha256:e757...
    tinypkg==1.0 \\
        --hash=sha256:d67b...

It resolves with ``uv pip compile --generate-hashes`` when ``uv`` is on PATH, else with the
target interpreter's pip (``pip install --dry-run --ignore-installed --report FILE``, whose JSON
report lists the resolved set with archive hashes: ``archive_info.hashes`` in recent pips,
only ``archive_info.hash`` = ``"sha256=..."`` in older ones such as Debian 12's pip 23.0; both are
understood). With a wheelhouse the resolver sees that directory only (``--no-index
--find-links DIR``, pip configuration and ``PIP_*`` variables ignored) and the wheels the lock
names travel inside the release. A directory that already holds ``.officegrid/lock.txt`` is
honoured as is. Editable (``-e``) and local directory requirements are refused before resolving
(they cannot be locked: build a wheel).

The environment's identity (:func:`env_hash`) is blake3 of the lock's normalized requirement lines
(what is installed: comments, line breaks, order and name spelling do not count), the target
Python's ``major.minor`` and its platform tag (``sysconfig.get_platform()``): releases with the
same lock share one environment on a worker, whichever file the pins came from.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from officegrid.envs import LOCK_PATH

RESOLVE_TIMEOUT = 900.0  # seconds one resolver run may take (an index may be slow)
TAIL_CHARS = 4000  # characters of installer output kept in errors

_HASH_RE = re.compile(r"--hash[=\s]+(sha256:[0-9a-fA-F]{64})")
_PIN_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*===?\s*([^\s;]+)")
_NO_MATCH_RE = re.compile(r"No matching distribution found for ([^\s]+)")
_UV_NO_MATCH_RE = re.compile(r"Because (\S+) was not found")


class LockError(ValueError):
    """The dependencies cannot be locked. The message names the requirement file (and the
    requirement, when the installer says which) and carries the installer's output tail."""


@dataclass
class Lock:
    """A resolved lock.

    Attributes:
        text: the lock file's bytes (``.officegrid/lock.txt`` in the release).
        pins: canonical name -> (pinned requirement line without hashes, sorted sha256 hashes).
        wheels: files of the wheelhouse to ship in ``.officegrid/wheels/`` (empty without one).
        source: where the requirements came from (``requirements.txt``, ``pyproject.toml`` or
            ``.officegrid/lock.txt`` for a lock the user wrote).
        user_lock: True when the directory already held the lock (nothing to add to the tree).
        python: (``major.minor``, platform tag) of the target interpreter.
        env: the environment's identity, see :func:`env_hash`.
    """

    text: bytes
    pins: dict[str, tuple[str, list[str]]]
    source: str
    python: tuple[str, str]
    env: str
    wheels: list[Path] = field(default_factory=list)
    user_lock: bool = False


def canonical_name(name: str) -> str:
    """PEP 503 normalized project name (``Foo_Bar`` -> ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.lru_cache(maxsize=16)
def python_tag(python: str | None = None) -> tuple[str, str]:
    """(``major.minor``, platform tag) of interpreter ``python`` (None: this one).

    Raises:
        LockError: the interpreter cannot be run.
    """
    if python is None or Path(python) == Path(sys.executable):
        import sysconfig

        return f"{sys.version_info[0]}.{sys.version_info[1]}", sysconfig.get_platform()
    code = ("import sys, sysconfig; "
            "print('%d.%d' % sys.version_info[:2]); print(sysconfig.get_platform())")
    try:
        res = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LockError(f"cannot run the target interpreter {python}: {exc}") from None
    lines = res.stdout.split()
    if res.returncode != 0 or len(lines) != 2:
        raise LockError(f"cannot run the target interpreter {python}: {res.stderr[-500:]}")
    return lines[0], lines[1]


def normalized_lock(lock: bytes) -> bytes | None:
    """What a lock installs, one line per pin sorted by canonical name: ``name[extras]==version
    [; markers] sha256:... sha256:...`` (canonical name, whitespace collapsed, hashes sorted and
    lower case); comments and layout dropped. None when ``lock`` does not parse as a lock."""
    try:
        pins = parse_lock(lock.decode("utf-8"))
    except (LockError, UnicodeDecodeError):
        return None
    out = []
    for name in sorted(pins):
        req, hashes = pins[name]
        m = _PIN_RE.match(req)
        assert m is not None  # parse_lock accepted it
        extras = sorted(canonical_name(e.strip()) for e in (m.group(2) or "[]")[1:-1].split(",")
                        if e.strip())
        tail = " ".join(req[m.end(2) if m.group(2) else m.end(1):].split())
        tail = re.sub(r"^\s*(===?)\s*", r"\1", tail)
        out.append(f"{name}{'[' + ','.join(extras) + ']' if extras else ''}{tail} "
                   + " ".join(hashes) + "\n")
    return "".join(out).encode()


def env_hash(lock: bytes, python: tuple[str, str]) -> str:
    """The environment's identity: blake3 hex of the lock's normalized requirement lines
    (:func:`normalized_lock`: the same pins give the same identity whatever comments or layout
    the lock has) + ``major.minor`` + platform tag (NUL-separated so no two different triples
    give the same input). A lock that does not parse (never shipped: ``release create`` checks
    it) is hashed as raw bytes, under another prefix."""
    body = normalized_lock(lock)
    h = blake3.blake3(b"officegrid-env-2\0" + body if body is not None
                      else b"officegrid-env-raw\0" + lock)
    h.update(b"\0" + python[0].encode() + b"\0" + python[1].encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- lock text


def parse_lock(text: str, where: str = LOCK_PATH) -> dict[str, tuple[str, list[str]]]:
    """Parse a lock in pip's requirements format into canonical name -> (requirement without
    hashes, sorted hashes). Continuation lines (``\\``) and ``#`` comments are understood.

    Raises:
        LockError: a line is not an exact ``name==version`` pin with at least one
            ``--hash=sha256:`` (names the file and line).
    """
    pins: dict[str, tuple[str, list[str]]] = {}
    logical: list[tuple[int, str]] = []
    buf, start = "", 0
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0] if not raw.lstrip().startswith("#") else ""
        if not buf:
            start = no
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        if buf.strip():
            logical.append((start, buf.strip()))
        buf = ""
    if buf.strip():
        logical.append((start, buf.strip()))
    for no, line in logical:
        hashes = sorted(h.lower() for h in _HASH_RE.findall(line))
        req = _HASH_RE.sub("", line).strip()
        m = _PIN_RE.match(req)
        if m is None:
            raise LockError(f"{where}, line {no}: {req!r} is not an exact pin (name==version)")
        if not hashes:
            raise LockError(f"{where}, line {no}: {req!r} has no --hash=sha256:... line")
        pins[canonical_name(m.group(1))] = (" ".join(req.split()), hashes)
    return pins


def render_lock(pins: dict[str, tuple[str, list[str]]], source: str) -> bytes:
    """The lock file's bytes for ``pins`` (sorted by name: the same set gives the same bytes)."""
    out = [f"# officegrid lock of {source}: generated by `officegrid release create`\n"]
    for name in sorted(pins):
        req, hashes = pins[name]
        out.append(req + "".join(f" \\\n    --hash={h}" for h in hashes) + "\n")
    return "".join(out).encode()


# --------------------------------------------------------------------------- resolving


def find_requirements(directory: Path) -> tuple[str, list[str]] | None:
    """(source file name, requirement lines) of ``directory``, or None when it declares none.

    Raises:
        LockError: ``pyproject.toml`` is not valid TOML or its dependencies are not a list.
    """
    req = directory / "requirements.txt"
    if req.is_file():
        lines = [ln for ln in req.read_text(encoding="utf-8").splitlines()
                 if ln.strip() and not ln.lstrip().startswith("#")]
        return ("requirements.txt", lines) if lines else None
    pyproject = directory / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise LockError(f"{pyproject}: not valid TOML: {exc}") from None
        deps = data.get("project", {}).get("dependencies", [])
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            raise LockError(f"{pyproject}: [project].dependencies must be a list of strings")
        return ("pyproject.toml", deps) if deps else None
    return None


def _installer_env(isolated: bool) -> dict[str, str]:
    env = dict(os.environ)
    if isolated:
        # A wheelhouse resolve must see nothing else: no pip.conf index, no PIP_FIND_LINKS.
        env = {k: v for k, v in env.items() if not k.startswith(("PIP_", "UV_"))}
        env["PIP_CONFIG_FILE"] = os.devnull
        env["UV_NO_CONFIG"] = "1"
    return env


def _tail(text: str) -> str:
    return text.strip()[-TAIL_CHARS:]


def _fail(source: str, output: str, pattern: re.Pattern[str],
          wheelhouse: Path | None = None) -> LockError:
    m = pattern.search(output)
    what = f"requirement {m.group(1)!r} cannot be resolved" if m else "cannot resolve"
    if m and wheelhouse is not None:
        what += _wheelhouse_lacks(m.group(1), wheelhouse)
    return LockError(f"{source}: {what}; the installer said:\n{_tail(output)}")


def _wheelhouse_lacks(requirement: str, wheelhouse: Path) -> str:
    """Why a requirement the resolver could not satisfy is missing: ``": not in the wheelhouse
    DIR"`` (with the files of other versions it holds, if any)."""
    m = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    if m is None:
        return ""
    name = canonical_name(m.group(0))
    try:
        files = sorted(f.name for f in wheelhouse.iterdir()
                       if (_dist_of(f.name) or ("", ""))[0] == name)
    except OSError:
        files = []
    if not files:
        return f": not in the wheelhouse {wheelhouse}"
    return (f": not in the wheelhouse {wheelhouse} (it holds only {', '.join(files[:5])}"
            f"{', ...' if len(files) > 5 else ''}: none fits)")


_EDITABLE_RE = re.compile(r"^(-e|--editable)(\s|=|$)")
_ARCHIVE_SUFFIXES = (".whl", ".tar.gz", ".tgz", ".zip", ".tar.bz2", ".tar.xz")


def _unlockable(line: str) -> bool:
    """True for an editable requirement (``-e ...``) or one naming a local directory (``../pkg``,
    ``name @ file:///src/pkg``): what it installs is a tree, not an archive with a hash."""
    text = line.split(" #", 1)[0].strip()
    if _EDITABLE_RE.match(text):
        return True
    if text.startswith("-"):
        return False  # another option (-r, --hash, --index-url...)
    req = text.split(";", 1)[0].strip()
    if "@" in req and not req.startswith(("/", ".", "~")):
        req = req.split("@", 1)[1].strip()
        if not req.startswith(("file:", ".", "/", "~")):
            return False  # a remote URL: its archive hash decides (see _resolve_pip)
    if req.startswith("file:"):
        req = re.sub(r"^file:(//)?", "", req)
    elif not (req.startswith((".", "/", "~", "\\")) or re.match(r"^[A-Za-z]:[\\/]", req)):
        return False  # a name (with version specifiers)
    # A local wheel or sdist file has a hash; a directory does not.
    return not req.lower().endswith(_ARCHIVE_SUFFIXES)


def _refuse_unlockable(source: str, directory: Path, where: str) -> None:
    """Raise LockError naming the first editable or local directory requirement of ``source``
    (``requirements.txt`` lines, ``pyproject.toml`` dependencies)."""
    if source == "requirements.txt":
        numbered = list(enumerate((directory / source).read_text(encoding="utf-8")
                                  .splitlines(), 1))
        label = "line"
    else:
        numbered = list(enumerate(find_requirements(directory)[1], 1))  # type: ignore[index]
        label = "dependency"
    for no, line in numbered:
        if line.strip() and not line.lstrip().startswith("#") and _unlockable(line):
            raise LockError(
                f"{where}, {label} {no}: {line.strip()!r}: editable/path requirements cannot be "
                "locked: build a wheel (`pip wheel PATH -w WHEELHOUSE`), require the package "
                "by name and pass --wheelhouse WHEELHOUSE")


def _archive_sha256(info: dict) -> str | None:
    """The sha256 hex of a pip report item's ``download_info``: ``archive_info.hashes`` (recent
    pips) or ``archive_info.hash`` (``"sha256=..."``, older pips such as 23.0); None when
    there is none (a directory, a VCS checkout, or only another algorithm)."""
    archive = info.get("archive_info") or {}
    hashes = archive.get("hashes") or {}
    if isinstance(hashes, dict) and isinstance(hashes.get("sha256"), str):
        return hashes["sha256"].lower()
    legacy = archive.get("hash")
    if isinstance(legacy, str):
        algo, _, hexdigest = legacy.partition("=")
        if algo.lower() == "sha256" and re.fullmatch(r"[0-9a-fA-F]{64}", hexdigest):
            return hexdigest.lower()
    return None


def pins_from_report(data: dict, source: str) -> dict[str, tuple[str, list[str]]]:
    """The pins of a pip ``--report`` (its ``install`` list), each with its archive's sha256.

    Raises:
        LockError: an item has no sha256 archive hash (a directory or VCS checkout).
    """
    pins: dict[str, tuple[str, list[str]]] = {}
    for item in data.get("install", []):
        meta = item["metadata"]
        info = item.get("download_info") or {}
        sha = _archive_sha256(info)
        if sha is None:
            raise LockError(f"{source}: {meta['name']} {meta['version']} comes from "
                            f"{info.get('url')!r}, which has no archive hash (a directory or "
                            "VCS checkout cannot be locked): publish it as a wheel")
        pins[canonical_name(meta["name"])] = (f"{meta['name']}=={meta['version']}",
                                              [f"sha256:{sha}"])
    return pins


def _run_resolver(cmd: list[str], cwd: Path, wheelhouse: Path | None,
                  cannot: str) -> subprocess.CompletedProcess[str]:
    """Run a resolver command (offline against ``wheelhouse`` when given).

    Raises:
        LockError: ``cannot: <why>`` when it could not be run or timed out.
    """
    if wheelhouse is not None:
        cmd = [*cmd, "--no-index", "--find-links", str(wheelhouse)]
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                              timeout=RESOLVE_TIMEOUT, env=_installer_env(wheelhouse is not None))
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LockError(f"{cannot}: {exc}") from None


def _resolve_pip(req_file: Path, cwd: Path, python: str, wheelhouse: Path | None,
                 source: str) -> dict[str, tuple[str, list[str]]]:
    with tempfile.TemporaryDirectory(prefix="og-lock-") as tmp:
        report = Path(tmp) / "report.json"
        cmd = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--disable-pip-version-check", "--no-input", "--report", str(report),
               "-r", str(req_file)]
        res = _run_resolver(cmd, cwd, wheelhouse, f"{source}: cannot run pip with {python}")
        if res.returncode != 0 or not report.exists():
            raise _fail(source, res.stderr + res.stdout, _NO_MATCH_RE, wheelhouse)
        data = json.loads(report.read_text())
    return pins_from_report(data, source)


def _resolve_uv(uv: str, req_file: Path, cwd: Path, python: str, wheelhouse: Path | None,
                source: str) -> dict[str, tuple[str, list[str]]]:
    with tempfile.TemporaryDirectory(prefix="og-lock-") as tmp:
        out = Path(tmp) / "lock.txt"
        cmd = [uv, "pip", "compile", "--generate-hashes", "--no-header", "--quiet",
               "--python", python, "-o", str(out), str(req_file)]
        res = _run_resolver(cmd, cwd, wheelhouse, f"{source}: cannot run uv")
        if res.returncode != 0 or not out.exists():
            raise _fail(source, res.stderr + res.stdout, _UV_NO_MATCH_RE, wheelhouse)
        return parse_lock(out.read_text(), where=f"uv output for {source}")


def _dist_of(filename: str) -> tuple[str, str] | None:
    """(canonical name, version) of a wheel or sdist file name, or None for other files."""
    if filename.endswith(".whl"):
        parts = filename[:-4].split("-")
        return (canonical_name(parts[0]), parts[1]) if len(parts) >= 5 else None
    for ext in (".tar.gz", ".zip"):
        if filename.endswith(ext):
            name, _, version = filename[: -len(ext)].rpartition("-")
            return (canonical_name(name), version) if name else None
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while piece := fh.read(1 << 20):
            h.update(piece)
    return "sha256:" + h.hexdigest()


def _ship_wheels(pins: dict[str, tuple[str, list[str]]], wheelhouse: Path, source: str
                 ) -> list[Path]:
    """Every wheelhouse file of each pinned (name, version), for all platforms it holds; their
    hashes join the pin's allowed hashes so any of them installs."""
    by_dist: dict[tuple[str, str], list[Path]] = {}
    for f in sorted(wheelhouse.iterdir()):
        dist = _dist_of(f.name) if f.is_file() else None
        if dist is not None:
            by_dist.setdefault(dist, []).append(f)
    shipped: list[Path] = []
    for name, (req, hashes) in list(pins.items()):
        m = _PIN_RE.match(req)
        assert m is not None  # pins come from parse_lock or pip's report: exact pins
        files = by_dist.get((name, m.group(3)), [])
        if not files:
            raise LockError(f"{source}: {req} is not in the wheelhouse {wheelhouse}")
        pins[name] = (req, sorted(set(hashes) | {_sha256(f) for f in files}))
        shipped += files
    return shipped


def resolve(directory: Path, *, wheelhouse: Path | None = None,
            python: str | None = None) -> Lock | None:
    """Lock ``directory``'s dependencies; None when it declares none.

    Args:
        directory: the release directory.
        wheelhouse: resolve against this directory only and ship the wheels the lock names.
        python: the target interpreter (default: this one); resolution runs with it so
            environment markers and wheel tags match the workers that share it.
    Raises:
        LockError: an unresolvable requirement (named, with the installer's output), a bad
            ``pyproject.toml``, a malformed user lock, or a wheelhouse that is not a directory.
    """
    directory = Path(directory).resolve()
    py = python or sys.executable
    tag = python_tag(python)
    user_lock = directory / LOCK_PATH
    if user_lock.is_file():
        if wheelhouse is not None:
            raise LockError(f"{user_lock} exists: put the wheels it needs in "
                            f"{user_lock.parent / 'wheels'} instead of using --wheelhouse")
        text = user_lock.read_bytes()
        pins = parse_lock(text.decode("utf-8", errors="replace"), where=str(user_lock))
        return Lock(text=text, pins=pins, source=LOCK_PATH, python=tag,
                    env=env_hash(text, tag), user_lock=True)
    if (directory / ".officegrid").exists():
        raise LockError(f"{directory / '.officegrid'} is reserved for the lock that `release "
                        "create` adds; remove it (or put your own lock in .officegrid/lock.txt)")
    found = find_requirements(directory)
    if found is None:
        return None
    source, lines = found
    if wheelhouse is not None:
        wheelhouse = Path(wheelhouse).resolve()
        if not wheelhouse.is_dir():
            raise LockError(f"--wheelhouse {wheelhouse}: not a directory")
    uv = shutil.which("uv")
    where = str(directory / source)  # errors name the file
    _refuse_unlockable(source, directory, where)
    with tempfile.TemporaryDirectory(prefix="og-req-") as tmp:
        if source == "requirements.txt":
            req_file = directory / source
        else:
            req_file = Path(tmp) / "requirements.in"
            req_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        if uv:
            pins = _resolve_uv(uv, req_file, directory, py, wheelhouse, where)
        else:
            pins = _resolve_pip(req_file, directory, py, wheelhouse, where)
    wheels = _ship_wheels(pins, wheelhouse, where) if wheelhouse is not None else []
    text = render_lock(pins, source)
    return Lock(text=text, pins=pins, source=source, python=tag, env=env_hash(text, tag),
                wheels=wheels)
