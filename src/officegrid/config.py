"""Settings: defaults < ``officegrid.toml`` < ``OFFICEGRID_*`` environment variables < flags.

One plain class per part (arq's style). The TOML file has ``[server]``, ``[worker]`` and
``[client]`` tables; an environment variable ``OFFICEGRID_<FIELD>`` (upper case) sets the field of
that name in whichever part has it, e.g. ``OFFICEGRID_LEASE_SECONDS=2``. All durations are seconds
(floats, so tests can use milliseconds); sizes are bytes.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

DEFAULT_SERVER = "http://127.0.0.1:8765"
CONFIG_ENV = "OFFICEGRID_CONFIG"


class ConfigError(ValueError):
    """A setting is invalid; the message names the file or variable and the key."""


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ServerSettings(_Settings):
    """Job control server settings."""

    data_dir: Path = Path("officegrid-data")
    db: str | None = None  # SQLAlchemy URL; default: SQLite file in data_dir
    host: str = "127.0.0.1"
    port: int = 8765
    tls_cert: Path | None = None
    tls_key: Path | None = None
    threads: int = 16  # bounded pool for blocking store calls
    # Token lookups are reused this long: at least one heartbeat interval, or idle workers never
    # hit the cache. A revocation is immediate in the process that revokes; other server
    # processes (PostgreSQL deployments) see it within this delay.
    auth_cache_seconds: float = 30.0
    lease_seconds: float = 120.0  # a lease lives this long without a heartbeat
    heartbeat_interval: float = 20.0  # what workers are told to use
    reaper_interval: float = 2.0  # how often expired leases are requeued
    poll_interval: float = 0.5  # long-poll re-check of the store (other server processes)
    long_poll_max: float = 30.0
    idle_retry_after: float = 10.0  # retry-after when there is no work after the long poll
    restart_grace: float | None = None  # default: lease_seconds; live leases get this after start
    retry_budget: int = 3  # exceptions/crashes of a unit before it is quarantined
    lost_budget: int = 10  # lost leases of a unit before it is quarantined
    import_pause_after: int = 3  # import failures of a release (no success) before the job pauses
    unhealthy_after: int = 5  # consecutive failures spanning >= 2 jobs sideline a worker
    sideline_seconds: float = 600.0
    speculative_after: float = 60.0  # min age of a lease before a second copy may be run
    keep_releases: int = 10  # per channel, the last N releases stay available for rollback
    blob_gc_interval: float = 600.0
    blob_gc_grace: float = 3600.0  # unreferenced blobs younger than this are kept (uploads)
    transfer_slots: int = 32  # bulk downloads served at once, site-wide (all server processes)
    transfer_retry_after: float = 2.0  # seconds a refused transfer is told to wait (+ jitter)
    transfer_slot_ttl: float = 300.0


class WorkerSettings(_Settings):
    """Worker agent settings."""

    server: str = DEFAULT_SERVER
    token: str | None = None
    enroll: str | None = None
    name: str | None = None
    work_dir: Path | None = None  # default: platformdirs user data dir
    slots: int = 1
    python: str | None = None  # interpreter for the runner; default: this one
    ca: Path | None = None
    lease_wait: float = 20.0  # long-poll seconds per lease request
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    vacate_grace: float = 5.0  # seconds a runner gets to stop before its tree is killed
    progress_interval: float = 0.5
    keep_releases: int = 3  # materialized releases kept besides those in use
    cache_max_bytes: int = 5 << 30  # chunk cache cap; unneeded chunks beyond it are dropped
    trusted_keys: list[Path] = []  # public keys; when set, only releases they signed run


class ClientSettings(_Settings):
    """CLI / Python client settings."""

    server: str = DEFAULT_SERVER
    token: str | None = None
    ca: Path | None = None
    timeout: float = 60.0


S = TypeVar("S", bound=_Settings)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV, "officegrid.toml"))


def load(cls: type[S], section: str, overrides: dict[str, Any] | None = None,
         config_file: Path | None = None, env_skip: frozenset[str] = frozenset()) -> S:
    """Build settings of type ``cls`` from the TOML ``section``, the environment and ``overrides``.

    ``overrides`` with value None are ignored (unset CLI flags). ``env_skip`` names fields whose
    ``OFFICEGRID_<FIELD>`` variable belongs to another part (the CLI's admin OFFICEGRID_TOKEN must
    not become a worker's token).

    Raises:
        ConfigError: naming the file/variable and the key that is wrong.
    """
    path = config_file or _config_path()
    values: dict[str, Any] = {}
    table = _read_toml(path).get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{section}] must be a table")
    for key, value in table.items():
        if key not in cls.model_fields:
            raise ConfigError(f"{path}: unknown key [{section}].{key}")
        values[key] = value
    for key in cls.model_fields:
        if key in env_skip:
            continue
        env = os.environ.get(f"OFFICEGRID_{key.upper()}")
        if env is not None and env != "":
            values[key] = env
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    try:
        return cls(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ConfigError(
            f"setting {section}.{key} (from {path}, OFFICEGRID_{key.upper()} or a flag): "
            f"{err['msg']}"
        ) from exc
