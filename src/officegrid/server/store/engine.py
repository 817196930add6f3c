"""Database engines for the store: SQLite (default) and PostgreSQL.

SQLite runs in WAL mode with a busy timeout; every write transaction starts with
``BEGIN IMMEDIATE`` so two writers never deadlock upgrading a read lock, and read-only
transactions use a plain deferred ``BEGIN`` (see DESIGN.md, "SQLite under a threaded server").
PostgreSQL claims use ``FOR UPDATE SKIP LOCKED`` so several server processes can share one
database.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text

MIGRATIONS = Path(__file__).parent / "migrations"
_READONLY = "officegrid_readonly"
SQLITE_BUSY_MS = 30_000
PG_MIGRATION_LOCK = 0x0FF1CE  # advisory lock key serializing migrations across server processes


def sqlite_url(data_dir: Path) -> str:
    """The default store URL: ``sqlite:///<data_dir>/officegrid.db``."""
    return f"sqlite:///{Path(data_dir).resolve() / 'officegrid.db'}"


def make_engine(url: str, pool_size: int = 16) -> Engine:
    """Create an engine for ``url`` with the pragmas/options the store relies on.

    Raises:
        sqlalchemy.exc.ArgumentError: the URL is not a valid SQLAlchemy URL.
    """
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_MS / 1000, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=pool_size,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # pragma: no cover - trivial
            # Let us issue BEGIN ourselves (pysqlite's implicit transactions are DEFERRED).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection):
            if conn.get_execution_options().get(_READONLY):
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


class Database:
    """An engine plus transaction helpers.

    Use ``with db.tx() as conn:`` for a write transaction and ``with db.read() as conn:`` for a
    read-only one. Never hold either across an await or a network call.
    """

    def __init__(self, url: str, pool_size: int = 16) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size)
        self.dialect = self.engine.dialect.name
        # SQLite has one writer: queue write transactions here instead of letting pool threads
        # contend in SQLite's busy handler, which sleeps up to 100 ms per retry (long tails).
        self._write_lock = threading.RLock() if self.dialect == "sqlite" else None

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @contextlib.contextmanager
    def tx(self) -> Iterator[Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite); commits on success."""
        if self._write_lock is None:
            with self.engine.connect() as conn, conn.begin():
                yield conn
            return
        with self._write_lock, self.engine.connect() as conn, conn.begin():
            yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction: one consistent snapshot, no write lock."""
        with self.engine.connect().execution_options(**{_READONLY: True}) as conn, conn.begin():
            yield conn

    def migrate(self) -> None:
        """Apply Alembic migrations up to every head (serialized across processes on PostgreSQL)."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        if self.dialect == "postgresql":
            with self.engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PG_MIGRATION_LOCK})
                try:
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, "heads")
                    conn.commit()
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_MIGRATION_LOCK})
                    conn.commit()
        else:
            with self.engine.connect() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "heads")
                conn.commit()

    def dispose(self) -> None:
        self.engine.dispose()
