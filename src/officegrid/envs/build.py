"""Build and keep the per-lock virtual environments of a worker (the worker's side).

Layout under ``<work_dir>/envs/``::

    <env hash>/                 the virtual environment (not relocatable: built in place)
    <env hash>/.officegrid-complete   written last: an env without it is incomplete
    <env hash>.lock             file lock: one build of an env at a time (slots, agents)
    by-release/<release id>     the env hash a materialized release uses (for cache pruning)
    broken/<release id>.json    a failed build: error (installer output tail) and time

An environment is built with ``uv venv`` + ``uv pip install --require-hashes --no-deps`` when
``uv`` is on PATH, else ``python -m venv`` + ``pip install --require-hashes --no-deps``; with
wheels shipped in the release the installer sees only them (``--no-index --find-links``, pip
configuration and ``PIP_*`` variables ignored), without them it may use the configured index.
An incomplete environment (an agent killed mid-build) is deleted and rebuilt.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import filelock

from officegrid.envs import LOCK_PATH, WHEELS_PATH
from officegrid.envs.lock import env_hash, python_tag

log = logging.getLogger("officegrid.worker.envs")

COMPLETE = ".officegrid-complete"
BUILD_TIMEOUT = 1800.0  # seconds one installer step may take
TAIL_CHARS = 4000  # characters of installer output kept with a broken env

# pip: "No matching distribution found for tinydep==2.1"; uv: "Because tinydep was not found in
# the provided package locations" / "tinydep==2.1 ... not found in the provided".
_MISSING_RES = (re.compile(r"No matching distribution found for (\S+)"),
                re.compile(r"Because (\S+) was not found"))


class EnvBuildError(RuntimeError):
    """A build failed. ``str()`` says which step, ``output`` is the installer's output tail."""

    def __init__(self, message: str, output: str = "") -> None:
        self.message = message
        self.output = output
        super().__init__(message + (f"; the installer said:\n{output}" if output else ""))


@dataclass(frozen=True)
class EnvSpec:
    """What a materialized release needs: its lock file, shipped wheels (None: none) and the
    env hash for this worker's interpreter."""

    env: str
    lock: Path
    wheels: Path | None


def env_python(env_dir: Path) -> Path:
    """The interpreter of the virtual environment at ``env_dir``."""
    if os.name == "nt":  # pragma: no cover - Windows
        return env_dir / "Scripts" / "python.exe"
    return env_dir / "bin" / "python"


def release_env(release_dir: Path, python: str | None = None) -> EnvSpec | None:
    """The environment ``release_dir`` needs with interpreter ``python`` (None: this one), or
    None when the release carries no lock."""
    lock = release_dir / LOCK_PATH
    if not lock.is_file():
        return None
    wheels = release_dir / WHEELS_PATH
    return EnvSpec(env=env_hash(lock.read_bytes(), python_tag(python)), lock=lock,
                   wheels=wheels if wheels.is_dir() else None)


def _installer_env(isolated: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    if isolated:
        env = {k: v for k, v in env.items() if not k.startswith(("PIP_", "UV_"))}
        env["PIP_CONFIG_FILE"] = os.devnull
        env["UV_NO_CONFIG"] = "1"
    return env


def _run(cmd: list[str], what: str, env: dict[str, str]) -> None:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
                             env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise EnvBuildError(f"{what} took more than {BUILD_TIMEOUT:.0f}s",
                            str(exc.output or "")[-TAIL_CHARS:]) from None
    except OSError as exc:
        raise EnvBuildError(f"{what}: cannot run {cmd[0]}: {exc}") from None
    if res.returncode != 0:
        out = (res.stdout + "\n" + res.stderr).strip()[-TAIL_CHARS:]
        raise EnvBuildError(f"{what} failed (exit code {res.returncode})", out)


def _install(spec: EnvSpec, cmd: list[str], what: str, env: dict[str, str]) -> None:
    """Run the install step; a requirement missing from the shipped wheels is named with the
    directory ("... is not in the wheelhouse DIR"), besides the installer's own words."""
    try:
        _run(cmd, what, env)
    except EnvBuildError as exc:
        if spec.wheels is None:
            raise
        for pattern in _MISSING_RES:
            m = pattern.search(exc.output)
            if m:
                raise EnvBuildError(f"{exc.message}: "
                                    f"{m.group(1)} is not in the wheelhouse {spec.wheels}",
                                    exc.output) from None
        raise


class EnvBuilder:
    """Builds environments under ``envs_dir`` for interpreter ``python`` (None: this one).

    Args:
        envs_dir: ``<work_dir>/envs``.
        python: the base interpreter of every environment (the worker's ``--python``).
        uv: path of ``uv`` to use, "" to never use it, None to look it up on PATH.
    """

    def __init__(self, envs_dir: Path, python: str | None = None,
                 uv: str | None = None) -> None:
        self.envs_dir = envs_dir
        self.python = python
        self.uv = shutil.which("uv") if uv is None else (uv or None)
        envs_dir.mkdir(parents=True, exist_ok=True)

    def spec(self, release_dir: Path) -> EnvSpec | None:
        """See :func:`release_env` (with this builder's interpreter)."""
        return release_env(release_dir, self.python)

    def is_built(self, env: str) -> bool:
        return (self.envs_dir / env / COMPLETE).is_file()

    def python_of(self, env: str) -> Path:
        return env_python(self.envs_dir / env)

    def remember(self, release_id: str, env: str) -> None:
        """Record that ``release_id`` uses ``env`` (read by cache pruning)."""
        d = self.envs_dir / "by-release"
        d.mkdir(exist_ok=True)
        (d / release_id).write_text(env)

    def ensure(self, spec: EnvSpec) -> Path:
        """Build ``spec.env`` unless it is complete; return its interpreter.

        Holds the env's file lock while checking and building, so two slots or two agents
        sharing a work dir never build the same env at once (the second waits, then reuses).

        Raises:
            EnvBuildError: the venv or the install failed (with the installer's output).
        """
        target = self.envs_dir / spec.env
        with filelock.FileLock(str(self.envs_dir / f"{spec.env}.lock")):
            if (target / COMPLETE).is_file():
                return env_python(target)
            if target.exists():
                log.warning("env %s: removing an incomplete build", spec.env[:12])
                shutil.rmtree(target, ignore_errors=True)
            start = time.monotonic()
            try:
                self._build(spec, target)
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)
                raise
            log.info("env %s: built in %.1fs", spec.env[:12], time.monotonic() - start)
            return env_python(target)

    def _build(self, spec: EnvSpec, target: Path) -> None:
        base = self.python or sys.executable
        isolated = spec.wheels is not None
        env = _installer_env(isolated)
        source = (["--no-index", "--find-links", str(spec.wheels)] if spec.wheels else [])
        if self.uv:
            _run([self.uv, "venv", "--quiet", "--python", base, str(target)], "uv venv", env)
            _install(spec, [self.uv, "pip", "install", "--quiet", "--python",
                            str(env_python(target)), "--require-hashes", "--no-deps", *source,
                            "-r", str(spec.lock)], "uv pip install", env)
        else:
            _run([base, "-m", "venv", str(target)], "python -m venv", env)
            _install(spec, [str(env_python(target)), "-m", "pip", "install", "--quiet",
                            "--no-input", "--disable-pip-version-check", "--require-hashes",
                            "--no-deps", *source, "-r", str(spec.lock)], "pip install", env)
        info = {"env": spec.env, "python": list(python_tag(self.python)),
                "lock": spec.lock.read_text(errors="replace"), "built_at": time.time()}
        (target / ".officegrid-env.json").write_text(json.dumps(info, indent=1))
        # The marker is written last and fsynced: its presence means the env is whole.
        fd = os.open(target / COMPLETE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, spec.env.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    # ---------------------------------------------------------------- broken builds

    def mark_broken(self, release_id: str, env: str, error: str) -> None:
        """Persist a failed build of ``release_id`` (survives agent restarts)."""
        d = self.envs_dir / "broken"
        d.mkdir(exist_ok=True)
        (d / f"{release_id}.json").write_text(json.dumps(
            {"release": release_id, "env": env, "error": error, "at": time.time()}))

    def broken_records(self, retry_after: float, now: float | None = None) -> list[dict]:
        """The persisted failed builds younger than ``retry_after`` seconds, as dicts
        ``{"release", "env", "error", "at"}``. Older records are deleted (the release may be
        tried once more)."""
        now = time.time() if now is None else now
        out: list[dict] = []
        d = self.envs_dir / "broken"
        if not d.is_dir():
            return out
        for f in d.glob("*.json"):
            try:
                rec = json.loads(f.read_text())
                at = float(rec.get("at", 0))
                str(rec["release"])
            except (OSError, ValueError, KeyError, TypeError):
                f.unlink(missing_ok=True)
                continue
            if now - at >= retry_after:
                f.unlink(missing_ok=True)
                continue
            out.append(rec)
        return out

    def broken(self, retry_after: float, now: float | None = None) -> dict[str, str]:
        """Releases whose build failed less than ``retry_after`` seconds ago -> error."""
        return {str(r["release"]): str(r.get("error", ""))
                for r in self.broken_records(retry_after, now)}

    # ---------------------------------------------------------------- pruning

    def prune(self, keep_releases: set[str]) -> int:
        """Delete environments no release in ``keep_releases`` uses (and the by-release records
        of other releases); an env whose lock is held (being built or checked) is skipped.
        Returns the number of environments removed."""
        by_release = self.envs_dir / "by-release"
        needed: set[str] = set()
        if by_release.is_dir():
            for f in by_release.iterdir():
                if f.name in keep_releases:
                    needed.add(f.read_text().strip())
                else:
                    f.unlink(missing_ok=True)
        removed = 0
        for d in self.envs_dir.iterdir():
            if len(d.name) != 64 or not d.is_dir() or d.name in needed:
                continue
            lock = filelock.FileLock(str(self.envs_dir / f"{d.name}.lock"))
            try:
                lock.acquire(timeout=0)
            except filelock.Timeout:
                continue
            try:
                shutil.rmtree(d, ignore_errors=True)
                removed += 1
            finally:
                lock.release()
        return removed
