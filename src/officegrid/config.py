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

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from officegrid.sizes import check_size

DEFAULT_SERVER = "http://127.0.0.1:8765"
CONFIG_ENV = "OFFICEGRID_CONFIG"


class ConfigError(ValueError):
    """A setting is invalid; the message names the file or variable and the key."""


def _check_rate(v: str | None) -> str | None:
    if v is not None:
        from officegrid.sync.bandwidth import parse_rate

        parse_rate(v)  # ValueError names the bad text
    return v


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
    # Data sources (issue 4): change-log retention, like binlog expiry (None: no limit), and how
    # often a master is polled (schema check, sealing) at most when replicas ask.
    data_log_max_age: float | None = 7 * 86400.0
    data_log_max_bytes: int | None = 1 << 30
    data_poll_interval: float = 0.2
    # Total bulk download rate, site-wide (e.g. "50MB/s"; sync/bandwidth.parse_rate); each
    # transfer paces itself at this / the transfer slots held (server/routers/blobs.py).
    transfer_max_bandwidth: str | None = None

    @field_validator("transfer_max_bandwidth")
    @classmethod
    def _check_server_rate(cls, v: str | None) -> str | None:
        return _check_rate(v)


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
    env_retry_after: float = 3600.0  # seconds before a release whose env failed is tried again
    max_bandwidth: str | None = None  # cap on this agent's bulk downloads, e.g. "2MB/s"
    transfer_window: str | None = None  # release fetches only then, e.g. "20:00-06:00"

    @field_validator("max_bandwidth")
    @classmethod
    def _check_worker_rate(cls, v: str | None) -> str | None:
        return _check_rate(v)

    @field_validator("transfer_window")
    @classmethod
    def _check_window(cls, v: str | None) -> str | None:
        if v is not None:
            from officegrid.worker.windows import Schedule

            Schedule.parse(v)  # ValueError names the bad part
        return v
    # Resource guards (worker/owner.py); bytes, or a size such as "2GB" / "512MiB". Caps
    # (max_memory, disk_budget) must be > 0 (unset: no cap); floors accept 0 (no floor).
    max_memory: ByteSize | None = None  # RSS summed over a unit's tree; over it the attempt fails
    min_free_disk: ByteSize | None = None  # below this free in the work dir, take no units
    # The whole work dir (releases, environments, chunk cache, replicas, logs) stays within
    # this; least recently used releases, environments and chunks are evicted first.
    disk_budget: ByteSize | None = None

    @field_validator("max_memory", "disk_budget", mode="before")
    @classmethod
    def _check_cap(cls, v: Any, info: ValidationInfo) -> Any:
        # A cap of 0 would fail every unit (max_memory) or evict everything (disk_budget):
        # refused, unlike the floors below, where 0 means "no floor" (as min_free_memory).
        return check_size(v, info.field_name or "size", allow_zero=False)

    @field_validator("min_free_disk", mode="before")
    @classmethod
    def _check_floor(cls, v: Any, info: ValidationInfo) -> Any:
        return check_size(v, info.field_name or "size", allow_zero=True)

    # cgroup v2 for unit trees (worker/cgroup.py): "auto" (the agent's own cgroup when systemd
    # delegated it), "self", "off", or a cgroup2 directory. None: "auto".
    cgroup_root: str | None = None
    # Owner policy: a PolicySettings (worker/policy.py) from [policy] and --policy, set by
    # load_policy(); a preset name is accepted too. None: "always".
    policy: Any = None


class ClientSettings(_Settings):
    """CLI / Python client settings."""

    server: str = DEFAULT_SERVER
    token: str | None = None
    ca: Path | None = None
    timeout: float = 60.0


S = TypeVar("S", bound=_Settings)


SECTIONS = ("server", "worker", "client", "policy")  # the tables officegrid.toml may hold


def _read_toml(path: Path) -> dict[str, Any]:
    """The file's tables; {} when the default ``officegrid.toml`` is absent.

    Raises:
        ConfigError: a file named by OFFICEGRID_CONFIG is missing, the file is not TOML, or
            it has a table officegrid does not know (a misspelt ``[polcy]`` would otherwise
            be ignored silently).
    """
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        if os.environ.get(CONFIG_ENV):
            raise ConfigError(f"{path}: no such file (named by {CONFIG_ENV})") from None
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    for key in data:
        if key not in SECTIONS:
            raise ConfigError(f"{path}: unknown table [{key}] (known: "
                              + ", ".join(f"[{s}]" for s in SECTIONS) + ")")
    return data


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
    origin: dict[str, str] = {}  # key -> where its value came from, for error messages
    table = _read_toml(path).get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{section}] must be a table")
    for key, value in table.items():
        if key not in cls.model_fields:
            raise ConfigError(f"{path}: unknown key [{section}].{key}")
        values[key] = value
        origin[key] = f"{path} [{section}].{key}"
    for key in cls.model_fields:
        if key in env_skip:
            continue
        env = os.environ.get(f"OFFICEGRID_{key.upper()}")
        if env is not None and env != "":
            values[key] = env
            origin[key] = f"environment variable OFFICEGRID_{key.upper()}"
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
            origin[key] = f"flag --{key.replace('_', '-')}"
    try:
        return cls(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        where = origin.get(str(err["loc"][0]) if err["loc"] else "", "the defaults")
        # pydantic prefixes messages of validators that raised ValueError: not for users
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"setting {section}.{key} (from {where}): {msg}") from exc


def load_policy(preset: str | None = None, config_file: Path | None = None) -> Any:
    """The ``[policy]`` table as a ``PolicySettings`` (officegrid.worker.policy).

    ``preset`` (the ``--policy`` flag) or else ``OFFICEGRID_POLICY`` overrides the table's preset;
    the table's other keys still override the preset's numbers.

    Raises:
        ConfigError: e.g. "officegrid.toml: unknown key [policy].strat_idle".
    """
    from officegrid.worker.policy import PolicySettings

    preset = preset or os.environ.get("OFFICEGRID_POLICY") or None
    try:
        return load(PolicySettings, "policy", {"preset": preset}, config_file,
                    env_skip=frozenset(PolicySettings.model_fields))
    except ConfigError as exc:  # [policy] keys come from the file only (preset: also a flag)
        text = str(exc).replace("flag --preset", "OFFICEGRID_POLICY or --policy")
        raise ConfigError(text) from exc
