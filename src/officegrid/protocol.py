"""The v1 wire protocol: every path, header and message shared by server, worker and client.

Control messages are small JSON bodies described by the pydantic models below (so the server's
OpenAPI schema documents them); bulk bytes (unit inputs, results, release files) travel as zstd
frames through the blob endpoints. Times on the wire are server-clock UNIX seconds (float);
durations are seconds (float). Nothing here imports server or worker code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

API = "/api/v1"

# Headers
AUTH_HEADER = "Authorization"  # "Bearer <token>"
INSTANCE_HEADER = "X-Officegrid-Instance"  # a worker agent's per-run random id (clone detection)
RETRY_AFTER = "Retry-After"  # seconds, on 503/429 and on empty lease answers
BLOB_SIZE_HEADER = "X-Officegrid-Size"  # uncompressed size of a blob, bytes

# Content types of bulk endpoints
ZSTD = "application/zstd"
BLOB_BATCH = "application/x-officegrid-blobs"  # see encode_blob_batch (uploads)
BLOB_FETCH = "application/x-officegrid-fetch"  # see encode_fetch_item (POST /blobs/fetch)

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
    prepared: list[str] = Field(default_factory=list, description="release ids whose "
                                "environment is built here (releases with a lock)")
    fetch_allowed: bool = Field(True, description="False outside the worker's transfer window: "
                                "only releases already cached may be leased")
    data: dict[str, list[Any]] = Field(
        default_factory=dict, description="data source -> [epoch, position] of each replica the "
        "worker follows; units of jobs needing a newer position are held back (see "
        "LeaseResponse.replicate)")


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
    # Each base costs the server a read of up to 8 MiB and a dictionary build: bounded per request.
    bases: dict[str, str] = Field(default_factory=dict, max_length=1024,
                                  description="hash -> hash of a blob the asker holds with its "
                                  "previous version: the answer may be a delta against it "
                                  "(sync.delta); at most 1024 per request")


class BlobsMissing(Model):
    missing: list[str]


CHANNEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
CHANNEL_RULE = ("1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit, "
                "and not 6 or more hex characters alone (that reads as a release id prefix)")
RELEASE_PREFIX_MIN = 6  # shortest release id prefix the server resolves
_RELEASE_ID_RE = re.compile(r"[0-9a-f]{64}")
#: what reads as a release id or id prefix; a channel so named would hide that release
_RELEASE_REF_RE = re.compile(rf"[0-9a-fA-F]{{{RELEASE_PREFIX_MIN},64}}")


def check_channel_name(name: str) -> str:
    """Return ``name`` if it is a valid channel name (see ``CHANNEL_RULE``).

    Raises:
        ValueError: naming the bad name and the rule.
    """
    if not isinstance(name, str) or not CHANNEL_RE.fullmatch(name) \
            or _RELEASE_REF_RE.fullmatch(name):
        shown = name if not isinstance(name, str) or len(name) <= 80 else name[:80] + "..."
        raise ValueError(f"invalid channel name {shown!r}: a channel name is {CHANNEL_RULE}")
    return name


def check_release_ref(ref: str) -> str:
    """Return ``ref`` if it can name a release: a channel name, a release id or an id prefix.

    Raises:
        ValueError: naming the bad reference and the rule.
    """
    if isinstance(ref, str) and _RELEASE_REF_RE.fullmatch(ref):
        return ref
    try:
        return check_channel_name(ref)
    except ValueError:
        shown = ref if len(ref) <= 80 else ref[:80] + "..."
        raise ValueError(f"invalid channel or release {shown!r}: give a channel name, a "
                         f"release id or an id prefix of at least {RELEASE_PREFIX_MIN} hex "
                         f"characters; a channel name is {CHANNEL_RULE}") from None


class ReleaseCreate(Model):
    id: str = Field(description="root manifest hash")
    channel: str | None = Field("trunk", description="channel to point at the release; "
                                "None: none. Names: " + CHANNEL_RULE)
    message: str | None = None
    author: str | None = None
    git_commit: str | None = None
    file_count: int = 0
    total_bytes: int = 0
    signature: str | None = Field(None, description="base64 Ed25519 signature of the id")
    signer: str | None = Field(None, description="id of the signing key")
    env: str | None = Field(None, description="environment hash of the release's lock "
                            "(.officegrid/lock.txt) for the publisher's Python; None: no lock")

    @field_validator("channel")
    @classmethod
    def _channel_name(cls, v: str | None) -> str | None:
        return None if v is None else check_channel_name(v)


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
    env: str | None = Field(None, description="environment hash (None: no dependencies)")
    channels: list[str] = Field(default_factory=list)
    existed: bool = Field(False, description="answer to a create only: the release was "
                          "already published; its first metadata (created_at, author, message, "
                          "git_commit) is kept and only the channel moved (and a signature "
                          "added if it had none)")


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
    data: list[str] = Field(default_factory=list,
                            description="data sources the job reads (replicated to workers)")


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
    env: str | None = Field(None, description="environment hash of the completing attempt")
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
    data: dict[str, list[Any]] = Field(
        default_factory=dict, description="data source -> [epoch, position] the unit must read "
        "at least (the master's head when the job was submitted)")


class LeaseRequest(Model):
    resources: WorkerResources
    max_units: int = Field(1, ge=1, le=64)
    wait: float = Field(0.0, ge=0, le=120, description="long-poll seconds when there is no work")


class LeaseResponse(Model):
    leases: list[Lease]
    retry_after: float | None = Field(None, description="seconds to wait before asking again")
    reason: str | None = Field(None, description="why no work was given")
    prepare: list[str] = Field(default_factory=list, description="release ids to get ready "
                               "(materialize and build the environment) before leasing them")
    replicate: dict[str, int] = Field(
        default_factory=dict, description="data source -> position the worker's replica must "
        "reach before units of jobs that need it are leased (follow it, then ask again)")


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
    env: str | None = Field(None, description="environment hash the unit ran in (None: none)")


class CompletionResponse(Model):
    outcome: str = Field(description="'accepted' or 'discarded' (another attempt won)")
    next: Lease | None = None


class Failure(Model):
    kind: FailureKind
    error: str
    log: str | None = None


class Vacate(Model):
    """A unit given back. With ``done`` > 0 the worker hands in the finished prefix: the result
    of the unit's first ``done`` records (shaped like a Completion's); the server commits them as
    done and makes the rest a new queued unit that sorts right after this one."""

    reason: str = "vacate"
    log: str | None = None
    done: int = Field(0, ge=0, description="records of the finished prefix (0: plain vacate)")
    result: str | None = Field(None, description="blob hash of the prefix's result")
    result_inline: str | None = Field(None, description="base64 zstd frame of the result")
    records_done: int = Field(0, ge=0)
    record_errors: int = Field(0, ge=0)
    columns: list[str] = Field(default_factory=list)
    env: str | None = Field(None, description="environment hash the prefix ran in")


class EnvBroken(Model):
    """A worker could not build a release's environment (POST /releases/{id}/broken)."""

    env: str | None = None
    error: str = Field(description="what failed, with the installer's output tail")


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


#: Kinds of an item of a fetch answer
FETCH_RAW = 0  # the blob's content
FETCH_DELTA = 1  # a zstd frame of the blob against the base the query named (sync.delta)
FETCH_END = 2  # the last item (hash of 64 zeros, no data): the answer is complete
_FETCH_HEADER = 73  # 64 hex characters of hash, 1 byte kind, 8 bytes big-endian length
_END_ITEM = b"0" * 64 + bytes((FETCH_END,)) + bytes(8)


def encode_fetch_item(digest: str, kind: int, data: bytes) -> bytes:
    """One item of a POST /blobs/fetch answer before compression: the hash (64 ASCII hex
    bytes), the kind (:data:`FETCH_RAW` or :data:`FETCH_DELTA`, one byte), the length of
    ``data`` (8 bytes big-endian), ``data``. An answer is its items, in the order asked, then an
    end item, compressed as ONE zstd stream (so small blobs share context, as in ``rsync -z``);
    the end item tells a complete answer from one cut off between two items."""
    return digest.encode("ascii") + bytes((kind,)) + len(data).to_bytes(8, "big") + data


def encode_fetch_answer(items: list[bytes], level: int = 3) -> bytes:
    """Compress encoded items (:func:`encode_fetch_item`) and the end item into one answer."""
    import zstandard

    return zstandard.ZstdCompressor(level=level).compress(b"".join(items) + _END_ITEM)


class FetchDecoder:
    """Parser of a fetch answer's decompressed bytes: feed them in pieces, get the (hash, kind,
    data) items completed so far (unverified). :func:`iter_fetch_answer` does the bounded
    decompression in front of it."""

    #: largest item accepted (an answer carries at most 64 MiB of blobs)
    MAX_ITEM = 80 << 20

    def __init__(self) -> None:
        self._buf = bytearray()
        self.ended = False

    def feed(self, plain: bytes) -> list[tuple[str, int, bytes]]:
        """Add decompressed bytes; return the items they completed.

        Raises:
            ValueError: a bad item header, an oversized item, or bytes after the end item.
        """
        self._buf += plain
        out = []
        while len(self._buf) >= _FETCH_HEADER:
            if self.ended:
                raise ValueError("fetch answer has bytes after its end")
            try:
                digest = self._buf[:64].decode("ascii")
            except UnicodeDecodeError:
                raise ValueError("malformed fetch answer header") from None
            kind = self._buf[64]
            if kind not in (FETCH_RAW, FETCH_DELTA, FETCH_END):
                raise ValueError(f"unknown fetch item kind {kind} for {digest}")
            n = int.from_bytes(self._buf[65:_FETCH_HEADER], "big")
            if n > self.MAX_ITEM:
                raise ValueError(f"fetch answer item {digest} claims {n} bytes")
            if len(self._buf) < _FETCH_HEADER + n:
                break
            if kind == FETCH_END:
                self.ended = True
            else:
                out.append((digest, kind, bytes(self._buf[_FETCH_HEADER:_FETCH_HEADER + n])))
            del self._buf[:_FETCH_HEADER + n]
        return out

    def finish(self) -> None:
        """Raise ValueError unless the answer ended properly (its end item, nothing after)."""
        if self._buf or not self.ended:
            raise ValueError(f"truncated fetch answer ({len(self._buf)} bytes of a partial item)")


def iter_fetch_answer(pieces: Iterable[bytes], out_piece: int = 64 * 1024
                      ) -> Iterator[tuple[str, int, bytes]]:
    """Decode a fetch answer arriving as compressed ``pieces`` (e.g. off a socket): yield each
    (hash, kind, data) item as soon as it is complete.

    Decompression is pulled ``out_piece`` bytes at a time, so a small malicious answer that
    inflates to gigabytes is refused (item size limit) before it is held in memory.

    Raises:
        ValueError: the answer is corrupt, malformed or cut off (no end item).
    """
    import io

    import zstandard

    source = iter(pieces)

    class _Pieces(io.RawIOBase):
        def __init__(self) -> None:
            self.left = b""

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
            while not self.left:
                try:
                    self.left = next(source)
                except StopIteration:
                    return 0
            n = min(len(b), len(self.left))
            b[:n] = self.left[:n]
            self.left = self.left[n:]
            return n

    decoder = FetchDecoder()
    reader = zstandard.ZstdDecompressor().stream_reader(_Pieces(), read_size=64 * 1024)
    try:
        while plain := reader.read(out_piece):
            yield from decoder.feed(plain)
    except zstandard.ZstdError as exc:
        raise ValueError(f"corrupt fetch answer: {exc}") from None
    decoder.finish()


# ----------------------------------------------------------------------------- data sources

DATA = "/data"
DATA_SOURCE = "/data/{name}"
DATA_APPLY = "/data/{name}/apply"
DATA_SQL = "/data/{name}/sql"
DATA_PURGE = "/data/{name}/purge"
DATA_LOG = "/data/{name}/log"
DATA_SNAPSHOT = "/data/{name}/snapshot"
DATA_SNAPSHOT_FILE = "/data/{name}/snapshot/{snap_id}"
DATA_RANGES = "/data/{name}/ranges"
DATA_ROW_HASHES = "/data/{name}/rowhashes"
DATA_ROWS = "/data/{name}/rows"
DATA_REPLICA = "/data/{name}/replicas"
ZSTD_JSON = "application/x-officegrid-json+zstd"
E_RESYNC = "resync"


class DataApply(Model):
    """Rows to upsert (dicts by column) or keys to delete (lists of key values) in ``table``
    (None: the source's only table). Exactly one of ``upsert`` and ``delete``."""

    table: str | None = None
    upsert: list[dict[str, Any]] | None = None
    delete: list[list[Any]] | None = None


class DataSql(Model):
    sql: str = Field(description="one SQL statement, run in a write transaction on the master")


class DataPurge(Model):
    before: int = Field(description="drop log entries at positions <= this")


class DataChange(Model):
    """The answer to a change: rows affected and the log head after it."""

    rows: int
    epoch: str
    pos: int
    # Set when the change started a new epoch (a destructive schema change): why.
    epoch_reason: str | None = None


class DataReplicaInfo(Model):
    replica: str
    epoch: str
    pos: int
    lag: int | None = Field(None, description="entries behind the head (None: other epoch)")
    updated_at: float


class DataStatus(Model):
    """A data source: epoch, head position and hash, retained log, schema and replicas."""

    name: str
    epoch: str
    pos: int
    hash: str
    base_pos: int = Field(description="oldest position a replica can tail from")
    schema_: str = Field(alias="schema", description="schema description (JSON text)")
    retained: dict[str, Any] = Field(description="entries, bytes, oldest (UNIX s) kept")
    epoch_reason: str | None = None
    tables: dict[str, int] = Field(default_factory=dict, description="rows per table")
    replicas: list[DataReplicaInfo] = Field(default_factory=list)
    unreplicated: dict[str, str] = Field(
        default_factory=dict, description="tables left out of replication: table -> why")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SnapshotInfo(Model):
    id: str
    size: int = Field(description="bytes of the compressed file")
    hash: str = Field(description="blake3 of the compressed file")
    epoch: str
    pos: int


class DataRangesQuery(Model):
    table: str
    bucket_rows: int = Field(64, ge=1, le=100_000)


class DataRowHashesQuery(Model):
    table: str
    ranges: list[list[Any]] = Field(description="[lo key | null, hi key | null, with_keys]")
    size: int = Field(2, ge=1, le=32)


class DataRowsQuery(Model):
    table: str
    keys: list[list[Any]] | None = None
    ranges: list[list[Any]] | None = Field(None, description="[lo key | null, hi key | null]")


class DataReport(Model):
    replica: str = Field(max_length=200, description="worker name or a `data pull` replica")
    epoch: str
    pos: int
