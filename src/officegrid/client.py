"""The HTTP client of the job control server, used by the CLI, the worker agent and Python users.

Example::

    from officegrid import Client
    c = Client("http://127.0.0.1:8765", token="oga_...")
    job = c.submit("enrich:process", "customers.csv", unit_size=1000)
    c.wait(job["id"])
    c.export_results(job["id"], "out.parquet")

Every call retries connection failures and 502/503/504/429 answers with capped exponential
backoff and full jitter, shared per client (one client per server), and obeys Retry-After.
Errors the server reports are raised as :class:`ApiError` with its code and message.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from officegrid import protocol as p
from officegrid.backoff import Backoff
from officegrid.cas import compress, decompress, hash_bytes
from officegrid.config import DEFAULT_SERVER

RETRY_STATUS = {429, 502, 503, 504}


DATA_WRITE_TIMEOUT = 3600.0
"""Seconds a data source write (create, apply, sql) may take on the server before the answer:
it answers only when done, and a million-row apply with its change log took ~90 s here (the
default 60 s timed out although the server applied the change)."""


class ApiError(Exception):
    """The server refused a request.

    Attributes:
        status: HTTP status code (0 when the server could not be reached).
        code: protocol error code (``protocol.E_*``).
        message: what is wrong, for people.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


class Unreachable(ApiError):
    """The server could not be reached within the retry budget."""


class Client:
    """A client of one job control server.

    Args:
        url: server URL; default ``OFFICEGRID_SERVER`` or http://127.0.0.1:8765.
        token: bearer token; default ``OFFICEGRID_TOKEN``.
        ca: CA bundle to verify the server's TLS certificate (default: system trust).
        timeout: seconds per request (long polls add their wait).
        max_retry_time: give up retrying after this many seconds (None: never, for agents).
        instance: the agent run id sent on worker calls (clone detection).
        backoff: shared backoff state; default a new one with base 0.5 s, cap 30 s.
    """

    def __init__(self, url: str | None = None, token: str | None = None, *,
                 ca: str | Path | None = None, timeout: float = 60.0,
                 max_retry_time: float | None = 60.0, instance: str | None = None,
                 backoff: Backoff | None = None) -> None:
        self.url = (url or os.environ.get("OFFICEGRID_SERVER") or DEFAULT_SERVER).rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"server URL {self.url!r} must start with http:// or https://")
        self.token = token if token is not None else os.environ.get("OFFICEGRID_TOKEN")
        self.max_retry_time = max_retry_time
        self.backoff = backoff or Backoff(0.5, 30.0)
        headers = {}
        if self.token:
            headers[p.AUTH_HEADER] = f"Bearer {self.token}"
        if instance:
            headers[p.INSTANCE_HEADER] = instance
        self._timeout = timeout
        self.http = httpx.Client(base_url=self.url + p.API, headers=headers,
                                 timeout=httpx.Timeout(timeout, connect=10.0),
                                 verify=ssl.create_default_context(cafile=str(ca)) if ca
                                 else True, event_hooks={"response": [self._pace]})
        self.bytes_sent = 0
        self.bytes_received = 0
        #: ``sync.bandwidth.TokenBucket`` pacing bulk downloads (blobs, data) as they are read
        #: from the socket; None: unlimited. One per agent, shared by all its transfers.
        self.bandwidth: Any = None

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transport

    def request(self, method: str, path: str, *, json: Any = None,
                content: bytes | FileUpload | None = None,
                params: dict | None = None, headers: dict | None = None,
                timeout: float | None = None, idempotent: bool = True,
                stream: bool = False) -> httpx.Response:
        """Send one request with retries; return the response (2xx) or raise :class:`ApiError`.

        Non-idempotent calls are retried only when the connection failed before sending. With
        ``stream`` the 2xx body is not read: the caller iterates it, counts it in
        ``bytes_received`` and closes the response.
        """
        start = time.monotonic()
        while True:
            try:
                req = self.http.build_request(
                    method, path, json=json, content=content, params=params, headers=headers,
                    timeout=httpx.USE_CLIENT_DEFAULT if timeout is None
                    else httpx.Timeout(timeout, connect=10.0))
                resp = self.http.send(req, stream=stream)
                if stream and resp.status_code >= 400:
                    resp.read()  # an error answer is small JSON: read it, free the connection
                    resp.close()
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                error: Exception = exc
                retry_after = None
            except (httpx.ReadError, httpx.ReadTimeout, httpx.RemoteProtocolError,
                    httpx.WriteError) as exc:
                if not idempotent:
                    raise ApiError(0, "network", f"{method} {path}: {exc!r} (the server may "
                                   "have acted on it; check before repeating)") from exc
                error, retry_after = exc, None
            else:
                self.bytes_sent += len(content or b"")
                if not (stream and resp.status_code < 400):
                    self.bytes_received += len(resp.content)
                if resp.status_code < 400:
                    self.backoff.success()
                    return resp
                if resp.status_code not in RETRY_STATUS:
                    raise _api_error(resp)
                error = _api_error(resp)
                ra = resp.headers.get(p.RETRY_AFTER)
                retry_after = float(ra) if ra and _is_number(ra) else None
            delay = (self.backoff.jitter(retry_after) if retry_after is not None
                     else self.backoff.next_delay())
            elapsed = time.monotonic() - start
            if self.max_retry_time is not None and elapsed + delay > self.max_retry_time:
                if isinstance(error, ApiError):
                    raise error
                raise Unreachable(0, "unreachable",
                                  f"cannot reach the server at {self.url}: {error}") from error
            time.sleep(delay)

    def _pace(self, resp: httpx.Response) -> None:
        """httpx response hook: pace bulk answers (blob bodies, data snapshots, log batches and
        repair rows) through ``self.bandwidth`` per piece read from the socket, whether the body
        is read at once or streamed."""
        bucket = self.bandwidth
        if bucket is None or resp.status_code >= 400:
            return
        kind = resp.headers.get("content-type", "").split(";")[0].strip()
        if kind in (p.ZSTD, p.ZSTD_JSON, p.BLOB_FETCH):
            resp.stream = _PacedStream(resp.stream, bucket)

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self.request(method, path, **kw).json()

    # ------------------------------------------------------------------ health / tokens

    def health(self) -> dict:
        return self._json("GET", "/health")

    def create_token(self, kind: str, name: str | None = None, uses: int | None = None,
                     expires_in: float | None = None) -> dict:
        """Create an enroll/worker/admin token; the secret is in ``["token"]`` (shown once)."""
        body = p.TokenCreate(kind=kind, name=name, uses=uses, expires_in=expires_in)
        return self._json("POST", "/tokens", json=body.model_dump(), idempotent=False)

    def tokens(self) -> list[dict]:
        return self._json("GET", "/tokens")

    def revoke_token(self, name: str) -> dict:
        return self._json("DELETE", f"/tokens/{name}")

    # ------------------------------------------------------------------ worker calls

    def enroll(self, hostname: str, platform: str, name: str | None = None) -> dict:
        """Register a new worker with a join token (this client's token)."""
        body = p.EnrollRequest(name=name, hostname=hostname, platform=platform)
        return self._json("POST", "/enroll", json=body.model_dump(), idempotent=False)

    def open_session(self, req: p.SessionRequest) -> p.SessionResponse:
        return p.SessionResponse(**self._json("POST", "/session", json=req.model_dump()))

    def lease(self, req: p.LeaseRequest) -> p.LeaseResponse:
        return p.LeaseResponse(**self._json("POST", "/lease", json=req.model_dump(),
                                            timeout=self._timeout + req.wait))

    def heartbeat(self, hb: p.Heartbeat) -> p.HeartbeatResponse:
        return p.HeartbeatResponse(**self._json("POST", "/heartbeat", json=hb.model_dump()))

    def complete(self, attempt: str, c: p.Completion) -> p.CompletionResponse:
        return p.CompletionResponse(**self._json("POST", f"/attempts/{attempt}/complete",
                                                 json=c.model_dump()))

    def fail(self, attempt: str, f: p.Failure) -> dict:
        return self._json("POST", f"/attempts/{attempt}/fail", json=f.model_dump())

    def vacate(self, attempt: str, v: p.Vacate) -> dict:
        return self._json("POST", f"/attempts/{attempt}/vacate", json=v.model_dump())

    def workers(self) -> list[dict]:
        return self._json("GET", "/workers")

    def drain(self, name: str, undo: bool = False) -> dict:
        return self._json("POST", f"/workers/{name}/drain", params={"undo": str(undo).lower()})

    # ------------------------------------------------------------------ blobs

    def put_blob(self, data: bytes, digest: str | None = None) -> str:
        """Upload ``data`` (uncompressed) as a zstd blob; return its hash. Idempotent."""
        digest = digest or hash_bytes(data)
        self.request("PUT", f"/blobs/{digest}", content=compress(data),
                     headers={"Content-Type": p.ZSTD})
        return digest

    def put_frame(self, digest: str, frame: bytes) -> None:
        """Upload an already-compressed zstd frame named ``digest``."""
        self.request("PUT", f"/blobs/{digest}", content=frame, headers={"Content-Type": p.ZSTD})

    def put_frames(self, items: list[tuple[str, bytes]]) -> None:
        """Upload several (hash, zstd frame) pairs in one request (at most 64 MiB)."""
        self.request("POST", "/blobs/batch", content=p.encode_blob_batch(items),
                     headers={"Content-Type": p.BLOB_BATCH})

    def missing_blobs(self, hashes: list[str], batch: int = 5000) -> list[str]:
        """Which of ``hashes`` the server lacks (one round trip per ``batch``)."""
        out: list[str] = []
        for i in range(0, len(hashes), batch):
            out += self._json("POST", "/blobs/missing",
                              json={"hashes": hashes[i:i + batch]})["missing"]
        return out

    def get_blob(self, digest: str) -> bytes:
        """Download one blob, verify it against its name, return the uncompressed bytes.

        Raises:
            ApiError: the server lacks it, or sent bytes that do not match (code "corrupt").
        """
        data = decompress(self.request("GET", f"/blobs/{digest}").content)
        if hash_bytes(data) != digest:
            raise ApiError(0, "corrupt", f"blob {digest} from the server does not match its hash")
        return data

    def fetch_blobs(self, hashes: list[str]) -> list[tuple[str, bytes]]:
        """Download several blobs in one round trip; return (hash, content) pairs, unverified
        (callers verify with cas.hash_bytes). Workers use ``worker.fetch.blob_fetcher``
        instead (streamed, resumable, deltas).

        Raises:
            ValueError: the answer is malformed or cut off.
        """
        resp = self.request("POST", "/blobs/fetch", json={"hashes": hashes})
        return [(digest, data) for digest, _kind, data in p.iter_fetch_answer([resp.content])]

    # ------------------------------------------------------------------ releases

    def create_release(self, body: p.ReleaseCreate) -> dict:
        return self._json("POST", "/releases", json=body.model_dump())

    def releases(self) -> list[dict]:
        return self._json("GET", "/releases")

    def release(self, ref: str) -> dict:
        return self._json("GET", f"/releases/{ref}")

    def channels(self) -> list[dict]:
        return self._json("GET", "/channels")

    def env_broken(self, release_id: str, body: p.EnvBroken) -> dict:
        """Worker: report that ``release_id``'s environment cannot be built here."""
        return self._json("POST", f"/releases/{release_id}/broken", json=body.model_dump())

    def promote(self, dst: str, *, source: str | None = None, release: str | None = None) -> dict:
        """Point channel ``dst`` at channel ``source``'s release or at ``release`` (id/prefix)."""
        body = p.ChannelMove(source=source, release=release)
        return self._json("PUT", f"/channels/{dst}", json=body.model_dump())

    # ------------------------------------------------------------------ jobs

    def submit(self, entry: str, input: str | Path, *, channel: str | None = "worker",
               release: str | None = None, unit_size: int = 1000, key: str | None = None,
               name: str | None = None, priority: int = 0, max_bad_rows: int = 0,
               fmt: str | None = None, delimiter: str | None = None, encoding: str = "utf-8",
               retry_budget: int | None = None, lost_budget: int | None = None,
               data: list[str] | None = None,
               on_progress: Callable[[int, int], None] | None = None,
               on_bad_row: Callable[[Any], None] | None = None) -> dict:
        """Read, check and upload ``input`` as a stream, then create the job in one request.

        The file is never held in memory: records are cut into units of ``unit_size`` records and
        each unit is uploaded as one compressed blob as soon as it is full.

        Args:
            on_progress: called as ``(records_read, bytes_read_estimate)`` after each unit.
            on_bad_row: called with each skipped ``records.BadRow`` (with ``max_bad_rows`` > 0).

        Returns:
            the created job (``protocol.JobInfo`` as a dict).
        Raises:
            records.InputError: bad input (names file, line and problem); nothing is created.
            ApiError: the server refused the job (e.g. unknown channel); nothing is created.
        """
        from officegrid.records.readers import iter_records
        from officegrid.records.units import batch_units

        if unit_size < 1:
            raise ValueError(f"--unit-size must be >= 1, got {unit_size}")
        if not p.ENTRY_RE.match(entry):
            raise ValueError(f"--entry {entry!r} is not of the form module:function "
                             "(e.g. enrich:process or pkg.mod:Class.method)")
        for source in data or []:  # an unknown data source refuses the job before any upload
            self.data_status(source)
        # Refuse an unknown channel or release before reading a possibly huge input.
        try:
            self.release(release or channel or "worker")
        except ApiError as exc:
            if exc.status != 404:
                raise
            if release:
                raise
            raise ApiError(404, exc.code, f"channel {channel!r} points at no release yet: "
                           f"publish with `officegrid release create DIR --channel {channel}` "
                           "or promote into it first") from None
        bad: list[str] = []

        def bad_row(row: Any) -> None:
            bad.append(str(row))
            if on_bad_row:
                on_bad_row(row)

        rows = iter_records(Path(input), fmt=fmt, delimiter=delimiter, encoding=encoding,
                            key=key, max_bad_rows=max_bad_rows, on_bad_row=bad_row)
        specs: list[dict] = []
        n = 0
        for unit in batch_units(rows, unit_size):
            digest = self.put_blob(unit.data)
            specs.append({"input": digest, "count": unit.count, "first_key": unit.first_key,
                          "last_key": unit.last_key})
            n += unit.count
            if on_progress:
                on_progress(n, len(specs))
        body = p.JobCreate(name=name, entry=entry, channel=None if release else channel,
                           release=release, key=key, priority=priority,
                           input_name=Path(input).name, units=[p.UnitSpec(**s) for s in specs],
                           bad_rows=bad, retry_budget=retry_budget, lost_budget=lost_budget,
                           data=list(data or []))
        return self._json("POST", "/jobs", json=body.model_dump(mode="json"), idempotent=False)

    def jobs(self, limit: int = 50) -> list[dict]:
        return self._json("GET", "/jobs", params={"limit": limit})

    def job(self, job_id: int) -> dict:
        return self._json("GET", f"/jobs/{job_id}")

    def cancel(self, job_id: int) -> dict:
        return self._json("POST", f"/jobs/{job_id}/cancel")

    def retry(self, job_id: int, release: str | None = None) -> dict:
        return self._json("POST", f"/jobs/{job_id}/retry", json={"release": release})

    def units(self, job_id: int, page: int = 1000) -> Iterator[dict]:
        """Every unit of a job in sequence order (paged)."""
        after = -1
        while True:
            rows = self._json("GET", f"/jobs/{job_id}/units",
                              params={"after": after, "limit": page})
            yield from rows
            if len(rows) < page:
                return
            after = rows[-1]["seq"]

    def unit(self, unit_id: int) -> dict:
        return self._json("GET", f"/units/{unit_id}")

    def attempts(self, *, unit_id: int | None = None, job_id: int | None = None) -> list[dict]:
        if unit_id is not None:
            return self._json("GET", f"/units/{unit_id}/attempts")
        return self._json("GET", f"/jobs/{job_id}/attempts")

    def wait(self, job_id: int, poll: float = 1.0, timeout: float | None = None,
             on_update: Callable[[dict], None] | None = None) -> dict:
        """Block until the job is done, failed, cancelled or paused (a paused job waits for a
        person: see its ``reason``); return its state.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        start = time.monotonic()
        while True:
            info = self.job(job_id)
            if on_update:
                on_update(info)
            if info["state"] in ("done", "failed", "cancelled", "paused"):
                return info
            if timeout is not None and time.monotonic() - start > timeout:
                raise TimeoutError(f"job {job_id} still {info['state']} after {timeout}s")
            time.sleep(poll)

    def export_results(self, job_id: int, out: str | Path | None = None, *,
                       errors: str | Path | None = None, to_sql: str | None = None,
                       table: str | None = None,
                       on_progress: Callable[[int, int], None] | None = None) -> dict:
        """Write a job's results (and optionally its record errors) in record order.

        Columns: the record's key (the ``--key`` column, or ``_key`` = input position), the union
        of all result fields in first-seen order, then ``_release``, ``_env`` (environment hash,
        None for releases without dependencies), ``_unit``, ``_worker``.
        Only done units are exported.

        Returns:
            ``{"rows": n, "errors": m, "units": k, "columns": [...]}``.
        """
        from officegrid.records.units import decode_unit_result
        from officegrid.records.writers import SqlWriter, open_writer

        job = self.job(job_id)
        key_col = job["key"] or "_key"
        units = [u for u in self.units(job_id) if u["state"] == "done"]
        fields: dict[str, None] = {}
        for u in units:
            for c in u["columns"] or []:
                if c != key_col:
                    fields.setdefault(c, None)
        columns = [key_col, *fields, "_release", "_env", "_unit", "_worker"]
        writers = []
        if out is not None:
            writers.append(open_writer(Path(out), columns))
        if to_sql:
            if not table:
                raise ValueError("--to-sql needs --table")
            writers.append(SqlWriter(to_sql, table, columns))
        err_writer = open_writer(Path(errors), [key_col, "error", "_release", "_env", "_unit",
                                                "_worker"]) if errors else None
        n_rows = n_err = 0
        try:
            for i, u in enumerate(units):
                data = self.get_blob(u["result"])
                meta = {"_release": u["release"], "_env": u.get("env"), "_unit": u["id"],
                        "_worker": u["worker"]}
                rows, errs = [], []
                for line in decode_unit_result(data):
                    if line.error is not None:
                        errs.append({key_col: line.key, "error": line.error, **meta})
                    else:
                        for r in line.rows:
                            rows.append({key_col: line.key, **r, **meta})
                for w in writers:
                    w.write_rows(rows)
                if err_writer:
                    err_writer.write_rows(errs)
                n_rows += len(rows)
                n_err += len(errs)
                if on_progress:
                    on_progress(i + 1, len(units))
        except BaseException:
            for w in [*writers, *([err_writer] if err_writer else [])]:
                abort = getattr(w, "abort", None)
                if abort:
                    abort()
            raise
        for w in writers:
            w.close()
        if err_writer:
            err_writer.close()
        return {"rows": n_rows, "errors": n_err, "units": len(units), "columns": columns}

    # ------------------------------------------------------------------ data sources

    def _zjson(self, method: str, path: str, body: Any | None = None, **kw: Any) -> Any:
        """Send ``body`` as zstd JSON (if given); decode a zstd JSON (or JSON) answer."""
        import json as _json

        headers = None
        content = None
        if body is not None:
            content = compress(_json.dumps(body, separators=(",", ":")).encode())
            headers = {"Content-Type": p.ZSTD_JSON}
        resp = self.request(method, path, content=content, headers=headers, **kw)
        data = resp.content
        if resp.headers.get("content-type", "").startswith(p.ZSTD_JSON):
            data = decompress(data)
        return _json.loads(data)

    def data_sources(self) -> list[dict]:
        """Every data source's status with its replicas."""
        return self._json("GET", p.DATA)

    def data_create(self, name: str, sqlite_file: str | Path, replace: bool = False) -> dict:
        """Upload a SQLite file as data source ``name`` (compressed); return its status."""
        # Compressed while sent, from disk: a big source is never whole in memory.
        return self._json("PUT", p.DATA_SOURCE.format(name=name),
                          content=FileUpload(sqlite_file),
                          params={"replace": str(replace).lower()},
                          headers={"Content-Type": p.ZSTD}, idempotent=False,
                          timeout=DATA_WRITE_TIMEOUT)

    def data_apply(self, name: str, table: str | None = None, *,
                   upsert: list[dict] | None = None, delete: list[list] | None = None) -> dict:
        body = p.DataApply(table=table, upsert=upsert, delete=delete).model_dump(mode="json")
        return self._zjson("POST", p.DATA_APPLY.format(name=name), body, idempotent=False,
                           timeout=DATA_WRITE_TIMEOUT)

    def data_apply_file(self, name: str, stage_file: str | Path,
                        table: str | None = None) -> dict:
        """Apply a stage file (``sync/replication/staging.py``) to ``name`` in one transaction,
        streamed compressed from disk; return ``{"rows", "epoch", "pos"}``. A row the master
        refuses raises :class:`ApiError` with ``record N: problem``."""
        return self._json("POST", p.DATA_APPLY.format(name=name), content=FileUpload(stage_file),
                          params={"table": table} if table else None,
                          headers={"Content-Type": p.ZSTD}, idempotent=False,
                          timeout=DATA_WRITE_TIMEOUT)

    def data_sql(self, name: str, sql: str) -> dict:
        return self._json("POST", p.DATA_SQL.format(name=name), json={"sql": sql},
                          idempotent=False, timeout=DATA_WRITE_TIMEOUT)

    def data_purge(self, name: str, before: int) -> dict:
        return self._json("POST", p.DATA_PURGE.format(name=name), json={"before": before})

    def data_status(self, name: str) -> dict:
        return self._json("GET", p.DATA_SOURCE.format(name=name))

    def data_log(self, name: str, epoch: str, after: int, max_entries: int = 1000,
                 replica: str | None = None, wait: float = 0.0) -> dict:
        """Log entries after ``after``. ``replica``: this replica's name (the server records
        ``(epoch, after)`` as its position); ``wait``: long-poll seconds while there is nothing
        new. Raises ``replication.errors.NeedsRepair`` on 409 resync."""
        from officegrid.sync.replication.errors import NeedsRepair

        params: dict[str, Any] = {"epoch": epoch, "after": after, "max": max_entries}
        if replica:
            params["replica"] = replica
        if wait > 0:
            params["wait"] = wait
        try:
            return self._zjson("GET", p.DATA_LOG.format(name=name), params=params,
                               timeout=self._timeout + wait)
        except ApiError as exc:
            if exc.code == p.E_RESYNC:
                raise NeedsRepair(exc.message) from None
            raise

    def data_snapshot_info(self, name: str) -> dict:
        return self._json("GET", p.DATA_SNAPSHOT.format(name=name))

    def data_snapshot_stream(self, name: str, snap_id: str, offset: int = 0,
                             chunk: int = 1 << 16) -> Iterator[bytes]:
        """Stream the compressed snapshot from byte ``offset`` (HTTP Range); a cut raises."""
        path = p.DATA_SNAPSHOT_FILE.format(name=name, snap_id=snap_id)
        # The first request (with retries and Retry-After for transfer slots) checks it exists.
        headers = {"Range": f"bytes={offset}-"} if offset else None
        while True:
            with self.http.stream("GET", path, headers=headers) as resp:
                if resp.status_code in RETRY_STATUS:
                    ra = resp.headers.get(p.RETRY_AFTER)
                    time.sleep(self.backoff.jitter(float(ra)) if ra and _is_number(ra)
                               else self.backoff.next_delay())
                    continue
                if resp.status_code >= 400:
                    resp.read()
                    raise _api_error(resp)
                if offset and resp.status_code != 206:
                    raise ApiError(resp.status_code, "range", "the server ignored the Range "
                                   "of a resumed snapshot download")
                for piece in resp.iter_raw(chunk):
                    self.bytes_received += len(piece)
                    yield piece
                return

    def data_ranges(self, name: str, table: str, bucket_rows: int) -> list[list]:
        return self._zjson("POST", p.DATA_RANGES.format(name=name),
                           {"table": table, "bucket_rows": bucket_rows})

    def data_row_hashes(self, name: str, table: str, ranges: list[list], size: int) -> list[dict]:
        return self._zjson("POST", p.DATA_ROW_HASHES.format(name=name),
                           {"table": table, "ranges": ranges, "size": size})

    def data_rows(self, name: str, table: str, keys: list[list] | None = None,
                  ranges: list[list] | None = None) -> dict:
        return self._zjson("POST", p.DATA_ROWS.format(name=name),
                           {"table": table, "keys": keys, "ranges": ranges})

    def data_report(self, name: str, replica: str, epoch: str, pos: int) -> None:
        self.request("PUT", p.DATA_REPLICA.format(name=name),
                     json={"replica": replica, "epoch": epoch, "pos": pos})


class FileUpload:
    """A request body that reads a file from disk and zstd-compresses it piece by piece while
    it is sent (chunked), so an upload never holds the file in memory. Iterable again for a
    retry; ``len()`` is the compressed bytes of the last pass (``Client.bytes_sent``)."""

    def __init__(self, path: str | Path, piece: int = 1 << 20) -> None:
        self.path = Path(path)
        self.piece = piece
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        import zstandard

        from officegrid.cas import ZSTD_LEVEL

        self.sent = 0
        comp = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
        with open(self.path, "rb") as f:
            while block := f.read(self.piece):
                out = comp.compress(block)
                if out:
                    self.sent += len(out)
                    yield out
        out = comp.flush()
        self.sent += len(out)
        yield out

    def __len__(self) -> int:
        return self.sent

    def __bool__(self) -> bool:
        return True


class _PacedStream(httpx.SyncByteStream):
    """A response byte stream that takes tokens from a bucket for every piece it yields."""

    def __init__(self, inner: Any, bucket: Any) -> None:
        self.inner = inner
        self.bucket = bucket

    def __iter__(self) -> Iterator[bytes]:
        for piece in self.inner:
            self.bucket.consume(len(piece))
            yield piece

    def close(self) -> None:
        self.inner.close()


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _api_error(resp: httpx.Response) -> ApiError:
    try:
        body = resp.json()["error"]
        return ApiError(resp.status_code, body.get("code", "error"), body.get("message", ""))
    except Exception:
        text = resp.text[:300] if resp.text else resp.reason_phrase
        return ApiError(resp.status_code, "error", f"HTTP {resp.status_code}: {text}")
