"""Shared fixtures: store URLs (SQLite and the machine's PostgreSQL), servers, workers."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from grid import ServerProc, WorkerProc  # noqa: E402

PG_URL = os.environ.get("OFFICEGRID_TEST_PG_URL",
                        "postgresql+psycopg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"


def _pg_admin_engine():
    from sqlalchemy import create_engine

    return create_engine(PG_URL, isolation_level="AUTOCOMMIT")


def pg_available() -> str | None:
    """None if PostgreSQL answers, else why not."""
    try:
        with _pg_admin_engine().connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        return f"PostgreSQL at {PG_URL} unreachable: {exc}"


@pytest.fixture
def pg_db() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    why = pg_available()
    if why:
        if IN_CI:
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)
    name = f"og_test_{uuid.uuid4().hex[:10]}"
    eng = _pg_admin_engine()
    with eng.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    base, _, _ = PG_URL.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with eng.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        eng.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str | None:
    """None (SQLite in the data dir) or a fresh PostgreSQL database URL."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("pg_db")


class Grid:
    """A server plus the workers a test starts; everything is killed at the end."""

    def __init__(self, tmp: Path, db: str | None) -> None:
        self.tmp = tmp
        self.db = db
        self.server = ServerProc(tmp / "server", db)
        self.workers: list[WorkerProc] = []
        self.extra_servers: list[ServerProc] = []

    def start(self, env: dict | None = None) -> Grid:
        if env:
            self.server.env.update(env)
        self.server.start()
        self.admin = self.server.client()
        return self

    def enroll_token(self, uses: int = 100) -> str:
        return self.admin.create_token("enroll", uses=uses)["token"]

    def worker(self, name: str = "w", slots: int = 1, env: dict | None = None,
               start: bool = True, extra_args: list[str] | None = None) -> WorkerProc:
        w = WorkerProc(self.server.url, self.tmp / f"work-{name}-{len(self.workers)}",
                       enroll=self.enroll_token(), slots=slots, env=env,
                       extra_args=["--name", name, *(extra_args or [])])
        self.workers.append(w)
        return w.start() if start else w

    def close(self) -> None:
        for w in self.workers:
            w.kill()
        for s in self.extra_servers:
            s.kill()
        self.server.kill()
        if hasattr(self, "admin"):
            self.admin.close()


@pytest.fixture
def grid(tmp_path) -> Iterator[Grid]:
    """A running server on SQLite."""
    g = Grid(tmp_path, None).start()
    try:
        yield g
    finally:
        g.close()


@pytest.fixture
def any_grid(tmp_path, store_url) -> Iterator[Grid]:
    """A running server on SQLite, then on PostgreSQL."""
    g = Grid(tmp_path, store_url).start()
    try:
        yield g
    finally:
        g.close()
