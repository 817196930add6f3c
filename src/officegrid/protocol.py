"""The v1 wire protocol: every path, header and message shared by server, worker and client.

Control messages are small JSON bodies described by the pydantic models below (so the server's
OpenAPI schema documents them); bulk bytes (unit inputs, results, release files) travel as zstd
frames through the blob endpoints. Times on the wire are server-clock UNIX seconds (float);
durations are seconds (float). Nothing here imports server or worker code.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

API = "/api/v1"

# Headers
AUTH_HEADER = "Authorization"  # "Bearer <token>"
INSTANCE_HEADER = "X-Officegrid-Instance"  # a worker agent's per-run random id (clone detection)
RETRY_AFTER = "Retry-After"  # seconds, on 503/429 and on empty lease answers
BLOB_SIZE_HEADER = "X-Officegrid-Size"  # uncompressed size of a blob, bytes

# Content types of bulk endpoints
ZSTD = "application/zstd"
BLOB_BATCH = "application/x-officegrid-blobs"  # see encode_blob_batch

# Error codes carried in ErrorBody.code
E_AUTH = "unauthorized"
E_FORBIDDEN = "forbidden"
E_NOT_FOUND = "not_found"
E_CONFLICT = "conflict"
E_REENROLL = "identity_in_use"  # another live agent holds this identity: re-enroll
E_INVALID = "invalid"
E_BUSY = "busy"


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(Model):
    """Every error answer: ``{"error": {"code": ..., "message": ...}}``."""

    code: str
    message: str


# ----------------------------------------------------------------------------- states


class UnitState(StrEnum):
    """A unit's state. Transitions live in ``officegrid.server.store.units`` only."""

    queued = "queued"
    leased = "leased"
    done = "done"
    quarantined = "quarantined"
    cancelled = "cancelled"


class AttemptState(StrEnum):
    active = "active"
    completed = "completed"  # its result was recorded
    discarded = "discarded"  # finished after another attempt completed the unit
    failed = "failed"  # exception/crash of the unit's process
    lost = "lost"  # lease expired without word from the worker
    vacated = "vacated"  # given back (owner returned, shutdown): not a failure
    aborted = "aborted"  # the server told the worker to stop (cancel, unit already done)


class JobState(StrEnum):
    running = "running"
    paused = "paused"  # e.g. its release cannot be imported; `retry` resumes
    done = "done"  # every unit done
    failed = "failed"  # every unit finished, some quarantined
    cancelled = "cancelled"


class FailureKind(StrEnum):
    crash = "crash"  # the unit's process died or the runner failed: uses the retry budget
    import_error = "import_error"  # the release cannot be imported: may pause the job
    setup = "setup"  # the worker could not fetch inputs/release: uses the retry budget
    refused = "refused"  # the worker will not run this release (e.g. unsigned): pauses the job


# ----------------------------------------------------------------------------- tokens


class TokenKind(StrEnum):
    admin = "admin"
    worker = "worker"
    enroll = "enroll"


class TokenCreate(Model):
    kind: TokenKind
    name: str | None = Field(None, description="worker name for kind=worker; label otherwise")
    uses: int | None = Field(None, ge=1, description="enroll tokens: how many workers may join")
    expires_in: float | None = Field(None, gt=0, description="seconds until the token expires")


class TokenInfo(Model):
    id: int
    kind: TokenKind
    name: str
    token: str | None = Field(None, description="the secret, shown once at creation")
    uses_left: int | None = None
    expires_at: float | None = None
    revoked: bool = False
    created_at: float


class EnrollRequest(Model):
    name: str | None = Field(None, description="requested worker name; default: hostname")
    hostname: str
    platform: str


class EnrollResponse(Model):
    worker_id: int
    name: str
    token: str


# ----------------------------------------------------------------------------- workers


class WorkerResources(Model):
    """What a worker has, sent with sessions and lease requests."""

    slots: int = 1
    free_disk: int | None = Field(None, description="bytes free in the work dir")
    free_memory: int | None = Field(None, description="bytes of available memory")
    releases: list[str] = Field(default_factory=list, description="release ids cached")
    broken_releases: list[str] = Field(default_factory=list)


class SessionRequest(Model):
    """Sent once when an agent starts: claims the identity for this instance.

    ``nonce`` is the last session nonce this work dir received: an agent restarting on the
    same work dir proves with it that it is the live session's successor, while a copy of the
    work dir made earlier (a cloned disk image) holds a stale one.
    """

    nonce: str | None = None
    hostname: str
    platform: str
    version: str
    resources: WorkerResources


class SessionResponse(Model):
    nonce: str
    worker_id: int
    name: str
    lease_seconds: float
    heartbeat_interval: float
    server_time: float


class WorkerInfo(Model):
    id: int
    name: str
    hostname: str | None
    platform: str | None
    state: str
    reason: str | None
    last_seen: float | None
    active_units: list[int]
    release: str | None
    draining: bool
    sidelined_until: float | None
    consecutive_failures: int
    completed: int
    failed: int


# ----------------------------------------------------------------------------- releases


class BlobsQuery(Model):
    hashes: list[str] = Field(max_length=10_000)


class BlobsMissing(Model):
    missing: list[str]


class ReleaseCreate(Model):
    id: str = Field(description="root manifest hash")
    channel: str | None = "trunk"
    message: str | None = None
    author: str | None = None
    git_commit: str | None = None
    file_count: int = 0
    total_bytes: int = 0
    signature: str | None = Field(None, description="base64 Ed25519 signature of the id")
    signer: str | None = Field(None, description="id of the signing key")


class ReleaseInfo(Model):
    id: str
    created_at: float
    author: str | None
    message: str | None
    git_commit: str | None
    file_count: int
    total_bytes: int
    signature: str | None = None
    signer: str | None = None
    pruned_at: float | None = Field(None, description="set once retention released its files")
    channels: list[str] = Field(default_factory=list)


class ChannelMove(Model):
    release: str | None = Field(None, description="release id to point at")
    source: str | None = Field(None, description="channel whose release to point at")


class ChannelInfo(Model):
    name: str
    release: str
    updated_at: float


# ----------------------------------------------------------------------------- jobs


class UnitSpec(Model):
    """One unit of a job at submit time: its input blob and record range."""

    input: str = Field(description="blob hash of the unit's input (JSONL of [key, record])")
    count: int = Field(ge=1)
    first_key: Any
    last_key: Any


ENTRY_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


class JobCreate(Model):
    name: str | None = None
    entry: str = Field(description="module:function", pattern=ENTRY_RE.pattern)
    channel: str | None = "worker"
    release: str | None = Field(None, description="pin a release instead of following a channel")
    key: str | None = Field(None, description="key column; None = input position")
    priority: int = 0
    input_name: str | None = None
    units: list[UnitSpec]
    bad_rows: list[str] = Field(default_factory=list, description="rows skipped at submit")
    retry_budget: int | None = Field(None, ge=0)
    lost_budget: int | None = Field(None, ge=0)
    data: list[str] = Field(default_factory=list, description="data sources (later)")


class JobCounts(Model):
    units: int = 0
    queued: int = 0
    leased: int = 0
    done: int = 0
    quarantined: int = 0
    cancelled: int = 0
    records: int = 0
    records_done: int = 0
    record_errors: int = 0


class JobInfo(Model):
    id: int
    name: str | None
    state: JobState
    reason: str | None
    entry: str
    channel: str | None
    release: str | None
    key: str | None
    priority: int
    created_at: float
    finished_at: float | None
    counts: JobCounts
    releases: dict[str, int] = Field(default_factory=dict, description="records done per release")
    bad_rows: list[str] = Field(default_factory=list)
    first_done_at: float | None = None
    last_done_at: float | None = None


class JobRetry(Model):
    release: str | None = Field(None, description="run requeued units on this release")


class UnitInfo(Model):
    id: int
    job_id: int
    seq: int
    state: UnitState
    count: int
    first_key: Any
    last_key: Any
    input: str
    result: str | None
    columns: list[str] | None
    release: str | None
    worker: str | None
    records_done: int
    record_errors: int
    failures: int
    losses: int
    last_error: str | None


class AttemptInfo(Model):
    id: str
    unit_id: int
    worker: str
    release: str
    state: AttemptState
    leased_at: float
    finished_at: float | None
    error: str | None
    log: str | None = Field(None, description="blob hash of the attempt's logs")


# ----------------------------------------------------------------------------- leases


class Lease(Model):
    """A time-bounded claim of one unit by one worker."""

    attempt: str = Field(description="attempt id; results must name it")
    unit: int
    job: int
    seq: int
    release: str
    entry: str
    input: str = Field(description="blob hash of the unit's input")
    count: int
    expires_at: float
    lease_seconds: float
    speculative: bool = False


class LeaseRequest(Model):
    resources: WorkerResources
    max_units: int = Field(1, ge=1, le=64)
    wait: float = Field(0.0, ge=0, le=120, description="long-poll seconds when there is no work")


class LeaseResponse(Model):
    leases: list[Lease]
    retry_after: float | None = Field(None, description="seconds to wait before asking again")
    reason: str | None = Field(None, description="why no work was given")


class Heartbeat(Model):
    attempts: list[str]
    state: str = "idle"
    reason: str | None = None
    progress: dict[str, int] = Field(default_factory=dict, description="attempt -> records done")
    resources: WorkerResources | None = None


class HeartbeatResponse(Model):
    renewed: list[str]
    abort: list[str] = Field(description="attempts to stop: lost, cancelled or done elsewhere")
    expires_at: float
    drain: bool = False
    server_time: float
    nonce: str | None = Field(None, description="the new session nonce to keep in the work dir")


class Completion(Model):
    """A finished attempt. A small result (and log) may travel inline as a base64 zstd frame;
    the server stores it, fsynced, before the transaction that records the completion."""

    result: str = Field(description="blob hash of the unit's result")
    result_inline: str | None = Field(None, description="base64 zstd frame of the result")
    log_inline: str | None = Field(None, description="base64 zstd frame of the log blob")
    records_done: int
    record_errors: int
    columns: list[str]
    log: str | None = None
    want_next: bool = False
    resources: WorkerResources | None = None


class CompletionResponse(Model):
    outcome: str = Field(description="'accepted' or 'discarded' (another attempt won)")
    next: Lease | None = None


class Failure(Model):
    kind: FailureKind
    error: str
    log: str | None = None


class Vacate(Model):
    reason: str = "vacate"
    log: str | None = None


class Ack(Model):
    ok: bool = True
    detail: str | None = None


# ----------------------------------------------------------------------------- blob batches


def encode_blob_batch(items: list[tuple[str, bytes]]) -> bytes:
    """Frame (hash, zstd frame) pairs for one response: per item 64 ASCII hex bytes of the hash,
    8 bytes big-endian frame length, then the frame."""
    out = bytearray()
    for digest, frame in items:
        out += digest.encode("ascii") + len(frame).to_bytes(8, "big") + frame
    return bytes(out)


def decode_blob_batch(data: bytes) -> list[tuple[str, bytes]]:
    """Inverse of :func:`encode_blob_batch`. Raises ValueError on a truncated or malformed body."""
    items = []
    pos = 0
    while pos < len(data):
        if pos + 72 > len(data):
            raise ValueError("truncated blob batch header")
        digest = data[pos : pos + 64].decode("ascii")
        n = int.from_bytes(data[pos + 64 : pos + 72], "big")
        pos += 72
        if pos + n > len(data):
            raise ValueError(f"truncated blob batch item {digest}")
        items.append((digest, data[pos : pos + n]))
        pos += n
    return items
