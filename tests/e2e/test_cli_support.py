"""Helpers shared by the CLI end-to-end tests (this module holds no tests).

The CLI is run as a user runs it: ``python -m officegrid ...`` in a subprocess, in a scratch
working directory, with ``OFFICEGRID_SERVER`` / ``OFFICEGRID_TOKEN`` in its environment and no
terminal (so rich renders at its default width of 80 columns, as in a pipe or a cron job).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import IN_CI, Grid

# Variables that change how rich renders (width, colour, terminal detection): dropped so the
# output does not depend on the shell pytest was started from.
_RICH_ENV = ("COLUMNS", "LINES", "FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE",
             "JUPYTER_COLUMNS", "JUPYTER_LINES")

_UNSET = object()


@dataclass
class Result:
    """One finished CLI run."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        """Non-blank stdout lines."""
        return [line for line in self.stdout.splitlines() if line.strip()]

    @property
    def last_line(self) -> str:
        return self.lines[-1].strip() if self.lines else ""

    @property
    def err(self) -> str:
        """stderr with every run of whitespace (rich's line wrapping included) made one space."""
        return " ".join(self.stderr.split())

    @property
    def out(self) -> str:
        """stdout with every run of whitespace made one space."""
        return " ".join(self.stdout.split())

    def __str__(self) -> str:
        return (f"officegrid {' '.join(self.args)} -> exit {self.returncode}\n"
                f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}")


class Cli:
    """Runs ``python -m officegrid`` against one server with the admin token by default."""

    def __init__(self, url: str, token: str | None, cwd: Path) -> None:
        self.url = url
        self.token = token
        self.cwd = cwd

    def env(self, token: object = _UNSET, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("OFFICEGRID_") and k not in _RICH_ENV}
        env["OFFICEGRID_SERVER"] = self.url
        tok = self.token if token is _UNSET else token
        if tok is not None:
            env["OFFICEGRID_TOKEN"] = str(tok)
        env.update(extra or {})
        return env

    def __call__(self, *args: str, token: object = _UNSET, env: dict[str, str] | None = None,
                 cwd: Path | None = None, timeout: float = 120) -> Result:
        argv = [str(a) for a in args]
        proc = subprocess.run([sys.executable, "-m", "officegrid", *argv],
                              cwd=cwd or self.cwd, env=self.env(token, env), capture_output=True,
                              text=True, timeout=timeout)
        return Result(argv, proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, **kw) -> Result:
        """Run and require exit status 0 and no traceback."""
        res = self(*args, **kw)
        assert res.returncode == 0, res
        assert "Traceback" not in res.stderr, res
        return res

    def publish(self, directory: Path, channel: str) -> str:
        """``release create DIR --channel C``; returns the release id (last stdout line)."""
        return self.ok("release", "create", directory, "--channel", channel).last_line


@contextlib.contextmanager
def module_grid(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Grid]:
    """For module-scoped fixtures: one server (SQLite) shared by every test of a module;
    it and the workers started on it are killed on leaving."""
    g = Grid(tmp_path_factory.mktemp(name), None).start()
    try:
        yield g
    finally:
        g.close()


def module_grid_and_cli(name: str) -> tuple[Any, Any]:
    """``(mgrid, cli)`` fixtures: one server shared by a module's tests (module scope) and a
    :class:`Cli` on it in each test's tmp dir. Assign both at module level:
    ``mgrid, cli = module_grid_and_cli("data")``."""

    @pytest.fixture(scope="module")
    def mgrid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grid]:
        with module_grid(tmp_path_factory, name) as g:
            yield g

    @pytest.fixture
    def cli(mgrid: Grid, tmp_path: Path) -> Cli:
        return Cli(mgrid.server.url, mgrid.server.admin_token, tmp_path)

    return mgrid, cli


def write_tree(directory: Path, files: dict[str, str | bytes]) -> Path:
    """Create ``directory`` holding ``files`` (relative path -> text or bytes)."""
    for rel, content in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return directory


def tree_of(directory: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[bytes, bool]]:
    """relative path -> (content, executable?) of every file under ``directory``."""
    out = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if path.is_file() and rel not in skip:
            out[rel] = (path.read_bytes(), os.access(path, os.X_OK))
    return out


def sql_url_or_skip(url: str) -> str:
    """``url`` if that database answers; else skip (fail when CI=true)."""
    import sqlalchemy as sa

    try:
        eng = sa.create_engine(url)
        try:
            with eng.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        finally:
            eng.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        why = f"{url} unreachable: {exc}"
        if IN_CI:
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)
    return url
