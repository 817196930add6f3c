"""A worker's identity (name, id, token) kept in its work dir, and the one-agent-per-dir lock."""

from __future__ import annotations

import json
import os
import platform
import socket
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import filelock
import platformdirs

IDENTITY_FILE = "identity.json"
LOCK_FILE = "agent.lock"
PID_FILE = "agent.pid"
WORKDIR_ID_FILE = "workdir.id"
NONCE_FILE = "session.nonce"


class AgentError(Exception):
    """The agent cannot start; the message says why and what to do."""


@dataclass
class Identity:
    """What the server issued at enrollment: ``server`` URL, ``worker_id``, ``name``, ``token``."""

    server: str
    worker_id: int
    name: str
    token: str


def default_work_dir() -> Path:
    """The per-machine default work dir (platformdirs' user data dir + ``/worker``)."""
    return Path(platformdirs.user_data_dir("officegrid", appauthor=False)) / "worker"


def load_identity(work_dir: Path) -> Identity | None:
    """The identity saved in ``work_dir``, or None. Raises AgentError if the file is corrupt."""
    path = work_dir / IDENTITY_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise AgentError(f"{path}: unreadable identity ({exc}); remove it and enroll again") \
            from exc
    try:
        return Identity(**data)
    except TypeError as exc:
        raise AgentError(f"{path}: malformed identity ({exc}); remove it and enroll again") \
            from exc


def save_identity(work_dir: Path, ident: Identity) -> None:
    """Write the identity atomically with mode 0600 (it holds the worker's token)."""
    path = work_dir / IDENTITY_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(ident), fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_nonce(work_dir: Path) -> str | None:
    """The last session nonce the server gave this work dir, or None."""
    try:
        return (work_dir / NONCE_FILE).read_text().strip() or None
    except OSError:
        return None


def save_nonce(work_dir: Path, nonce: str) -> None:
    """Keep the latest session nonce (atomic rename; fsync is not needed: a lost update only
    makes a restart wait for the old session to lapse)."""
    tmp = work_dir / (NONCE_FILE + ".tmp")
    tmp.write_text(nonce)
    os.replace(tmp, work_dir / NONCE_FILE)


def workdir_id(work_dir: Path) -> str:
    """A random id for this work dir, used to mark (and later sweep) its unit processes."""
    path = work_dir / WORKDIR_ID_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        ident = uuid.uuid4().hex[:16]
        path.write_text(ident)
        return ident


def lock_work_dir(work_dir: Path) -> filelock.BaseFileLock:
    """Take the OS lock that allows one agent per work dir.

    Raises:
        AgentError: another agent holds it (names its pid when known).
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(work_dir / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        try:
            pid = (work_dir / PID_FILE).read_text().strip()
        except OSError:
            pid = "unknown"
        raise AgentError(f"another worker agent (pid {pid}) is already running on work dir "
                         f"{work_dir}; stop it first or use another --work-dir") from None
    (work_dir / PID_FILE).write_text(str(os.getpid()))
    return lock


def host_info() -> tuple[str, str]:
    """(hostname, platform string) of this machine."""
    return socket.gethostname(), f"{platform.system()} {platform.release()} {platform.machine()}"
