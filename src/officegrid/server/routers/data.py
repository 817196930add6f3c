"""Replicated data sources: masters under ``DATA_DIR/data``, read routes for replicas, write
routes for the CLI (admin). The replication logic lives in ``officegrid.sync.replication``;
replica positions (``data status``) in ``server/store/replicas.py``."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zstandard
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, ValidationError

from officegrid import protocol as p
from officegrid.server.auth import admin, admin_or_worker, ctx_of
from officegrid.server.context import ServerContext
from officegrid.server.replica_feed import feed_of
from officegrid.server.routers.blobs import SlotFileResponse, take_slot
from officegrid.server.store import replicas as replicas_q
from officegrid.sync.replication import master
from officegrid.sync.replication.errors import DataSourceError, NeedsRepair
from officegrid.sync.replication.service import MasterService, Retention

router = APIRouter()

MAX_BODY = 1 << 30  # a change request's decompressed body, bytes


def data_dir(ctx: ServerContext) -> Path:
    d = ctx.settings.data_dir / "data"
    d.mkdir(parents=True, exist_ok=True)
    return d


def service(ctx: ServerContext, name: str, must_exist: bool = True) -> MasterService:
    s = ctx.settings
    try:
        svc = MasterService(data_dir(ctx), name,
                            Retention(max_age=s.data_log_max_age, max_bytes=s.data_log_max_bytes),
                            poll_interval=s.data_poll_interval)
    except DataSourceError as exc:
        raise _bad(str(exc)) from None
    if must_exist and not svc.exists():
        raise HTTPException(404, detail={"code": p.E_NOT_FOUND,
                                         "message": f"no data source {name!r}"})
    return svc


def _bad(message: str) -> HTTPException:
    return HTTPException(422, detail={"code": p.E_INVALID, "message": message})


@contextlib.contextmanager
def _http_errors() -> Iterator[None]:
    """Map replication errors to HTTP answers (409 resync, 404, 503 busy master, 422)."""
    try:
        yield
    except NeedsRepair as exc:
        raise HTTPException(409, detail={"code": p.E_RESYNC, "message": str(exc)}) from None
    except FileNotFoundError as exc:
        raise HTTPException(404, detail={"code": p.E_NOT_FOUND, "message": str(exc)}) from None
    except master.MasterBusy as exc:  # nothing was applied: the client retries after a while
        raise HTTPException(503, detail={"code": p.E_BUSY, "message": str(exc)},
                            headers={p.RETRY_AFTER: str(exc.retry_after)}) from None
    except DataSourceError as exc:
        raise _bad(str(exc)) from None


async def _call(ctx: ServerContext, fn: Any, *args: Any, **kw: Any) -> Any:
    """Run a blocking replication call in the pool, mapping its errors to HTTP answers."""
    with _http_errors():
        return await ctx.run(fn, *args, **kw)


def zjson(obj: Any) -> Response:
    """A zstd-compressed JSON answer."""
    body = zstandard.ZstdCompressor(level=3).compress(
        json.dumps(obj, separators=(",", ":")).encode())
    return Response(content=body, media_type=p.ZSTD_JSON)


async def read_body(request: Request, model: type[BaseModel]) -> Any:
    """A JSON body, zstd-compressed when its content type says so, validated by ``model``."""
    raw = bytearray()
    async for piece in request.stream():
        raw += piece
        if len(raw) > MAX_BODY:
            raise HTTPException(413, detail={"code": p.E_INVALID, "message": "body too large"})
    try:
        if request.headers.get("content-type", "").startswith(p.ZSTD_JSON):
            raw = bytearray(zstandard.ZstdDecompressor().decompress(bytes(raw),
                                                                    max_output_size=MAX_BODY))
        return model.model_validate(json.loads(raw))
    except (ValueError, zstandard.ZstdError, ValidationError) as exc:
        raise _bad(f"bad request body: {str(exc).splitlines()[0]}") from None


async def _status(ctx: ServerContext, svc: MasterService) -> p.DataStatus:
    st = await _call(ctx, svc.status)

    def loose() -> list[str]:
        conn = master.connect(svc.path, readonly=True)
        try:
            return master.unreplicated(conn)
        finally:
            conn.close()

    st["unreplicated"] = {t: "no primary key" for t in await _call(ctx, loose)}
    await feed_of(ctx).write_positions(ctx, force=True)  # positions noted by log requests
    reps = await ctx.read(replicas_q.list_for, svc.name)
    st["replicas"] = [p.DataReplicaInfo(
        replica=r["replica"], epoch=r["epoch"], pos=r["pos"], updated_at=r["updated_at"],
        lag=max(st["pos"] - r["pos"], 0) if r["epoch"] == st["epoch"] else None) for r in reps]
    return p.DataStatus(**st)


async def required_positions(ctx: ServerContext, names: list[str]) -> dict[str, list[Any]]:
    """``{name: [epoch, head position]}`` of each data source a job declares (``submit
    --data``). Raises 404 naming an unknown source."""
    out: dict[str, list[Any]] = {}
    for name in dict.fromkeys(names):
        st = await _call(ctx, service(ctx, name).status)
        out[name] = [st["epoch"], st["pos"]]
    return out


# ------------------------------------------------------------------------------ admin: writes


@router.get(p.DATA, response_model=list[p.DataStatus], dependencies=[Depends(admin)])
async def list_sources(request: Request) -> list[p.DataStatus]:
    """Every data source with its replicas."""
    ctx = ctx_of(request)
    names = sorted(f.stem for f in data_dir(ctx).glob("*.sqlite"))
    return [await _status(ctx, service(ctx, n)) for n in names]


@router.put(p.DATA_SOURCE, response_model=p.DataStatus, dependencies=[Depends(admin)])
async def create_source(name: str, request: Request, replace: bool = False) -> p.DataStatus:
    """Create (or with ``replace=true`` replace) a source from a zstd-compressed SQLite file.

    Refused (422) when the file is not a SQLite database or has a table without a primary key;
    (409) when the source exists and ``replace`` is not set. A replaced master starts a new epoch.
    """
    ctx = ctx_of(request)
    svc = service(ctx, name, must_exist=False)
    try:
        master.check_unique(data_dir(ctx), name)
    except DataSourceError as exc:
        raise HTTPException(409, detail={"code": p.E_CONFLICT, "message": str(exc)}) from None
    if svc.exists() and not replace:
        raise HTTPException(409, detail={"code": p.E_CONFLICT, "message": f"data source {name!r} "
                                         "exists (use --replace to replace it)"})
    tmp = svc.dir / f".{name}.{uuid.uuid4().hex}.upload"
    try:
        await _receive_file(ctx, request, tmp)
        await _call(ctx, master.adopt, tmp, svc.state if svc.state.exists() else None,
                    "replaced" if svc.exists() else "created")

        def install() -> None:
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(str(svc.path) + suffix)
            os.replace(tmp, svc.path)
            svc.poll(force=True)

        await _call(ctx, install)
    finally:
        for f in (tmp, Path(str(tmp) + "-wal"), Path(str(tmp) + "-shm")):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
    return await _status(ctx, svc)


async def _change(ctx: ServerContext, svc: MasterService, fn: Any, *args: Any) -> p.DataChange:
    def run() -> tuple[int, dict[str, Any]]:
        conn = master.connect(svc.path)
        try:
            n = fn(conn, *args)
        finally:
            conn.close()
        return n, svc.poll(force=True)

    n, polled = await _call(ctx, run)
    head = polled["head"]
    return p.DataChange(rows=n, epoch=head.epoch, pos=head.pos,
                        epoch_reason=polled["epoch_reason"])


async def _receive_file(ctx: ServerContext, request: Request, dest: Path) -> None:
    """Decompress a streamed zstd request body into ``dest`` piece by piece (never whole in
    memory). Raises 422 when the body is not a zstd stream."""
    try:
        with open(dest, "wb") as f:
            writer = zstandard.ZstdDecompressor().stream_writer(f, closefd=False)
            async for piece in request.stream():
                if piece:
                    await ctx.run(writer.write, piece)
            writer.flush()
    except zstandard.ZstdError as exc:
        raise _bad(f"upload is not a zstd stream: {exc}") from None


@router.post(p.DATA_APPLY, response_model=p.DataChange, dependencies=[Depends(admin)])
async def apply_rows(name: str, request: Request, table: str | None = None) -> p.DataChange:
    """Upsert rows or delete keys, in one transaction on the master.

    The body is either zstd JSON (:class:`protocol.DataApply`) or, with content type
    ``application/zstd``, a zstd-compressed stage file built by ``data apply`` (see
    ``sync/replication/staging.py``; ``table`` overrides the stage's), streamed to disk and
    applied with ``INSERT ... SELECT`` so no side holds the rows in memory. A row the master
    refuses fails the whole change with ``record N: problem``.
    """
    ctx = ctx_of(request)
    svc = service(ctx, name)
    if request.headers.get("content-type", "").split(";")[0].strip() == p.ZSTD:
        from officegrid.sync.replication import staging

        tmp = svc.dir / f".{name}.{uuid.uuid4().hex}.stage"
        try:
            await _receive_file(ctx, request, tmp)
            return await _change(ctx, svc, staging.apply_stage, tmp, table)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    body: p.DataApply = await read_body(request, p.DataApply)
    if (body.upsert is None) == (body.delete is None):
        raise _bad("give exactly one of upsert and delete")
    if body.upsert is not None:
        return await _change(ctx, svc, master.upsert_rows, body.table, body.upsert)
    return await _change(ctx, svc, master.delete_keys, body.table, body.delete)


@router.post(p.DATA_SQL, response_model=p.DataChange, dependencies=[Depends(admin)])
async def run_sql(name: str, body: p.DataSql, request: Request) -> p.DataChange:
    """Run one write statement on the master (captured like any other write)."""
    ctx = ctx_of(request)
    return await _change(ctx, service(ctx, name), master.execute_sql, body.sql)


@router.post(p.DATA_PURGE, response_model=p.DataChange, dependencies=[Depends(admin)])
async def purge(name: str, body: p.DataPurge, request: Request) -> p.DataChange:
    """Drop log entries at positions <= ``before`` (replicas behind it repair by range hashes).

    Refused (422) when ``before`` is negative or past the head: like MySQL's ``PURGE BINARY
    LOGS TO`` naming a log that does not exist, a position nobody has seen is a mistake (often
    a typo), not "everything"; purging the whole log is ``--before HEAD``.
    """
    from officegrid.sync.replication import changelog

    ctx = ctx_of(request)
    svc = service(ctx, name)
    if body.before < 0:
        raise _bad(f"--before {body.before}: a position is >= 0")

    def run(conn: Any) -> int:
        with master.write_tx(conn):
            h = changelog.head(conn)
            if body.before > h.pos:
                raise DataSourceError(
                    f"--before {body.before} is past the head of {name!r} (position {h.pos}): "
                    f"nothing was purged; use --before {h.pos} to drop the whole retained log")
            return changelog.purge(conn, before=body.before)

    await _call(ctx, svc.poll, True)  # seal first: only sealed entries are purged
    return await _change(ctx, svc, run)


# ------------------------------------------------------------------------------ replicas: reads


@router.get(p.DATA_SOURCE, response_model=p.DataStatus, dependencies=[Depends(admin_or_worker)])
async def status(name: str, request: Request) -> p.DataStatus:
    ctx = ctx_of(request)
    return await _status(ctx, service(ctx, name))


@router.get(p.DATA_LOG, dependencies=[Depends(admin_or_worker)])
async def log_batch(name: str, request: Request, epoch: str, after: int,
                    max: int = 1000,  # noqa: A002 - wire name
                    wait: float = 0.0, replica: str | None = None) -> Response:
    """Sealed entries after ``after`` (zstd JSON); 409 ``resync`` when the replica must repair.

    ``wait``: long-poll up to this many seconds (at most ``replica_feed.MAX_WAIT``) while there
    is nothing after ``after``. ``replica``: the asking replica's name; ``(epoch, after)`` is
    recorded as its position (``data status``), so replicas need no separate report.
    """
    ctx = ctx_of(request)
    svc = service(ctx, name)
    feed = feed_of(ctx)
    if replica:
        feed.note(name, replica[:200], epoch, after)
        # A store that cannot take the positions now must not fail the batch: they stay
        # pending for a later request (logged at WARNING now and then).
        await feed.write_positions(ctx, quiet=True)
    with _http_errors():
        body = await feed.log(ctx, svc, epoch, after, min(max, 10_000), wait)
    return Response(content=body, media_type=p.ZSTD_JSON)


@router.get(p.DATA_SNAPSHOT, response_model=p.SnapshotInfo,
            dependencies=[Depends(admin_or_worker)])
async def snapshot_info(name: str, request: Request) -> p.SnapshotInfo:
    """The current snapshot (made now if none can still be tailed from)."""
    ctx = ctx_of(request)
    info = await _call(ctx, service(ctx, name).snapshot_info)
    return p.SnapshotInfo(**{k: info[k] for k in ("id", "size", "hash", "epoch", "pos")})


@router.get(p.DATA_SNAPSHOT_FILE, dependencies=[Depends(admin_or_worker)])
async def snapshot_file(name: str, snap_id: str, request: Request) -> Response:
    """The compressed snapshot file; honours Range (resume). Takes a transfer slot."""
    ctx = ctx_of(request)
    path = await _call(ctx, service(ctx, name).snapshot_file, snap_id)
    slot = await take_slot(request)
    # Holds the slot (renewed while sent, freed however the answer ends); honours Range.
    return SlotFileResponse(path, media_type=p.ZSTD).holding(request, slot)


@router.post(p.DATA_RANGES, dependencies=[Depends(admin_or_worker)])
async def ranges(name: str, request: Request) -> Response:
    ctx = ctx_of(request)
    svc = service(ctx, name)
    body: p.DataRangesQuery = await read_body(request, p.DataRangesQuery)
    return zjson(await _call(ctx, svc.ranges, body.table, body.bucket_rows))


@router.post(p.DATA_ROW_HASHES, dependencies=[Depends(admin_or_worker)])
async def row_hashes(name: str, request: Request) -> Response:
    ctx = ctx_of(request)
    svc = service(ctx, name)
    body: p.DataRowHashesQuery = await read_body(request, p.DataRowHashesQuery)
    return zjson(await _call(ctx, svc.row_hashes, body.table, body.ranges, body.size))


@router.post(p.DATA_ROWS, dependencies=[Depends(admin_or_worker)])
async def rows(name: str, request: Request) -> Response:
    ctx = ctx_of(request)
    svc = service(ctx, name)
    body: p.DataRowsQuery = await read_body(request, p.DataRowsQuery)
    return zjson(await _call(ctx, svc.rows, body.table, body.keys, body.ranges))


@router.put(p.DATA_REPLICA, response_model=p.Ack, dependencies=[Depends(admin_or_worker)])
async def report(name: str, body: p.DataReport, request: Request) -> p.Ack:
    """A replica says where it stands (shown by ``data status`` with its lag)."""
    ctx = ctx_of(request)
    service(ctx, name)
    await ctx.tx(replicas_q.report, name, body.replica, body.epoch, body.pos, ctx.now())
    return p.Ack(detail="recorded")
