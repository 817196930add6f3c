"""The server's tables (SQLAlchemy Core). Migrations in ``migrations/`` must match this file.

Conventions: times are server-clock UNIX seconds (Float); JSON values are stored as Text holding
JSON (portable across SQLite and PostgreSQL); release and blob ids are blake3 hex (64 chars);
attempt ids are 32 hex chars.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

HASH = String(64)

tokens = Table(
    "tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("name", String(200), nullable=False),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("uses_left", Integer),
    Column("expires_at", Float),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("created_at", Float, nullable=False),
)

workers = Table(
    "workers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("token_id", Integer, ForeignKey("tokens.id"), nullable=False),
    Column("hostname", String(255)),
    Column("platform", String(100)),
    Column("version", String(50)),
    Column("instance", String(64)),  # the live agent run holding this identity
    Column("instance_seen_at", Float),
    Column("session_nonce", String(32)),  # rotated each heartbeat; a restarted agent proves it
    Column("previous_instance", String(64)),  # the run a live session was taken over from
    Column("banned_instance", String(64)),  # a run found to be a copy: told to re-enroll
    Column("state", String(32), nullable=False, default="offline"),
    Column("reason", Text),
    Column("last_seen", Float),
    Column("resources", Text),
    Column("draining", Boolean, nullable=False, default=False),
    Column("sidelined_until", Float),
    Column("consecutive_failures", Integer, nullable=False, default=0),
    Column("failure_jobs", Text),  # JSON list of job ids of the current failure streak
    Column("completed", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
)

releases = Table(
    "releases",
    metadata,
    Column("id", HASH, primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("author", String(200)),
    Column("message", Text),
    Column("git_commit", String(64)),
    Column("file_count", Integer, nullable=False, default=0),
    Column("total_bytes", BigInteger, nullable=False, default=0),
    Column("signature", Text),  # base64 Ed25519 over the release id (see officegrid.signing)
    Column("signer", String(32)),  # key id
    Column("pruned_at", Float),  # its blobs were released by retention; it can no longer run
    Column("env", HASH),  # env hash of its lock (officegrid.envs); None: no dependencies
)

release_blobs = Table(
    "release_blobs",
    metadata,
    Column("release_id", HASH, ForeignKey("releases.id"), primary_key=True),
    Column("blob", HASH, primary_key=True),
)

channels = Table(
    "channels",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("release_id", HASH, ForeignKey("releases.id"), nullable=False),
    Column("updated_at", Float, nullable=False),
)

channel_history = Table(
    "channel_history",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False),
    Column("release_id", HASH, nullable=False),
    Column("at", Float, nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200)),
    Column("state", String(16), nullable=False),
    Column("reason", Text),
    Column("entry", String(300), nullable=False),
    Column("channel", String(100)),
    Column("release_id", HASH),  # pinned release (None: follow the channel)
    Column("key", String(200)),
    Column("priority", Integer, nullable=False, default=0),
    Column("input_name", Text),
    Column("retry_budget", Integer, nullable=False),
    Column("lost_budget", Integer, nullable=False),
    Column("unit_count", Integer, nullable=False),
    Column("record_count", BigInteger, nullable=False),
    Column("bad_rows", Text),
    Column("data", Text),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float),
)

units = Table(
    "units",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("job_id", Integer, ForeignKey("jobs.id"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("count", Integer, nullable=False),
    Column("first_key", Text),
    Column("last_key", Text),
    Column("input_blob", HASH, nullable=False),
    Column("result_blob", HASH),
    Column("columns", Text),
    Column("release_id", HASH),  # the release of the completing attempt
    Column("pinned_release", HASH),  # set by `retry --release`
    Column("worker_id", Integer),
    Column("attempt_id", String(32)),  # the completing attempt
    Column("records_done", Integer, nullable=False, default=0),
    Column("record_errors", Integer, nullable=False, default=0),
    Column("failures", Integer, nullable=False, default=0),
    Column("losses", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("leased_at", Float),
    Column("done_at", Float),
    Column("env", HASH),  # the environment the completing attempt ran in (None: none)
    UniqueConstraint("job_id", "seq"),
)
Index("ix_units_state_job_seq", units.c.state, units.c.job_id, units.c.seq)
Index("ix_units_job_state_seq", units.c.job_id, units.c.state, units.c.seq)

attempts = Table(
    "attempts",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("unit_id", Integer, ForeignKey("units.id"), nullable=False),
    Column("worker_id", Integer, ForeignKey("workers.id"), nullable=False),
    Column("release_id", HASH, nullable=False),
    Column("state", String(16), nullable=False),
    Column("speculative", Boolean, nullable=False, default=False),
    Column("leased_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("progress", Integer, nullable=False, default=0),
    Column("error", Text),
    Column("log_blob", HASH),
)
Index("ix_attempts_state_expires", attempts.c.state, attempts.c.expires_at)
Index("ix_attempts_worker_state", attempts.c.worker_id, attempts.c.state)
Index("ix_attempts_unit", attempts.c.unit_id)

import_failures = Table(
    "import_failures",
    metadata,
    Column("job_id", Integer, ForeignKey("jobs.id"), primary_key=True),
    Column("release_id", HASH, primary_key=True),
    Column("failures", Integer, nullable=False, default=0),
    Column("last_error", Text),
)

transfer_slots = Table(
    "transfer_slots",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("holder", String(100), nullable=False),
    Column("expires_at", Float, nullable=False),
)

data_replicas = Table(  # where each replica of a data source stands (`data status`; migration 0008)
    "data_replicas",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("replica", String(200), primary_key=True),  # worker name, or a `data pull` replica
    Column("epoch", String(32), nullable=False),
    Column("pos", BigInteger, nullable=False),
    Column("updated_at", Float, nullable=False),
)

env_failures = Table(  # a worker could not build a release's environment (officegrid.envs)
    "env_failures",
    metadata,
    Column("release_id", HASH, primary_key=True),
    Column("worker_id", Integer, ForeignKey("workers.id"), primary_key=True),
    Column("env", HASH),
    Column("error", Text, nullable=False),
    Column("at", Float, nullable=False),
)
