"""Bulk bytes: content-addressed zstd blobs (unit inputs, results, logs, release files)."""

from __future__ import annotations

import contextlib
import os

import blake3
import zstandard
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from officegrid import protocol as p
from officegrid.cas import BlobError, BlobMissing, check_hash
from officegrid.server.auth import admin_or_worker, ctx_of
from officegrid.server.store import pacing as pacing_q

router = APIRouter(dependencies=[Depends(admin_or_worker)])

MAX_BATCH_BYTES = 64 << 20  # one fetch batch answer stays below this (compressed)


def _bad(message: str) -> HTTPException:
    return HTTPException(422, detail={"code": p.E_INVALID, "message": message})


@router.post("/blobs/missing", response_model=p.BlobsMissing)
async def missing(body: p.BlobsQuery, request: Request) -> p.BlobsMissing:
    """Which of these blobs the server lacks (one round trip per batch)."""
    ctx = ctx_of(request)
    try:
        for h in body.hashes:
            check_hash(h)
    except BlobError as exc:
        raise _bad(str(exc)) from None
    return p.BlobsMissing(missing=await ctx.run(ctx.blobs.missing, body.hashes))


@router.put("/blobs/{digest}", response_model=p.Ack)
async def put_blob(digest: str, request: Request) -> p.Ack:
    """Store one zstd frame named by the blake3 of its uncompressed content.

    The body is streamed to a temporary file, then decompressed and hashed; only a verified
    blob is renamed into place (fsynced), so a cut-off upload is never used.
    """
    ctx = ctx_of(request)
    try:
        check_hash(digest)
    except BlobError as exc:
        raise _bad(str(exc)) from None
    if await ctx.run(ctx.blobs.has, digest):
        async for _ in request.stream():
            pass
        return p.Ack(detail="present")
    fd, tmp = ctx.blobs.temp_file()
    try:
        with os.fdopen(fd, "wb") as fh:
            async for piece in request.stream():
                await ctx.run(fh.write, piece)

        def verify() -> None:
            hasher = blake3.blake3()
            with open(tmp, "rb") as fh:
                reader = zstandard.ZstdDecompressor().stream_reader(fh)
                while True:
                    data = reader.read(1 << 20)
                    if not data:
                        break
                    hasher.update(data)
            if hasher.hexdigest() != digest:
                raise BlobError(f"uploaded content hashes to {hasher.hexdigest()}, not {digest}")
            ctx.blobs.put_file(digest, tmp)

        try:
            await ctx.run(verify)
        except (BlobError, zstandard.ZstdError) as exc:
            raise _bad(f"blob {digest} rejected: {exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return p.Ack(detail="stored")


@router.post("/blobs/batch", response_model=p.Ack)
async def put_blobs(request: Request) -> p.Ack:
    """Store several blobs from one body (``protocol.encode_blob_batch`` of (hash, zstd frame)).

    Each frame is verified against its hash before it is kept; the first bad one refuses the
    request (422, naming it) after the good ones before it were stored. At most 64 MiB.
    """
    ctx = ctx_of(request)
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > MAX_BATCH_BYTES + (1 << 20):
            raise HTTPException(413, detail={"code": p.E_INVALID,
                                             "message": "batch too large: send fewer blobs"})
    try:
        items = p.decode_blob_batch(bytes(body))
    except ValueError as exc:
        raise _bad(str(exc)) from None

    def store() -> int:
        for digest, frame in items:
            check_hash(digest)
            if not ctx.blobs.has(digest):
                ctx.blobs.put_frame(digest, frame)
        return len(items)

    try:
        n = await ctx.run(store)
    except BlobError as exc:
        raise _bad(f"batch rejected: {exc}") from None
    return p.Ack(detail=f"stored {n}")


async def take_slot(request: Request) -> int:
    """Take a site-wide transfer slot or answer 503 with Retry-After (the client backs off with
    jitter, per server). Returns the slot id, to be released after the answer is sent."""
    ctx = ctx_of(request)
    s = ctx.settings
    now = ctx.now()
    slot, held = await ctx.tx(pacing_q.acquire, s.transfer_slots, f"pid{os.getpid()}", now,
                              s.transfer_slot_ttl)
    if not slot:
        raise HTTPException(
            503, detail={"code": p.E_BUSY, "message": f"all {s.transfer_slots} transfer slots "
                         "are in use: retry later"},
            headers={p.RETRY_AFTER: f"{s.transfer_retry_after:g}"})
    ctx.transfer_peak = max(ctx.transfer_peak, held)
    return slot


def _release_task(request: Request, slot: int) -> BackgroundTask:
    ctx = ctx_of(request)

    async def free() -> None:
        await ctx.tx(pacing_q.release, slot)

    return BackgroundTask(free)


@router.get("/transfers")
async def transfers(request: Request) -> dict:
    """Transfer slots: the cap, how many are held now, the most this process saw held."""
    ctx = ctx_of(request)
    held = await ctx.read(pacing_q.held, ctx.now())
    return {"cap": ctx.settings.transfer_slots, "held": held, "peak": ctx.transfer_peak}


@router.get("/blobs/{digest}")
async def get_blob(digest: str, request: Request) -> Response:
    """One blob as its stored zstd frame (takes a transfer slot while it is sent)."""
    ctx = ctx_of(request)
    try:
        path = ctx.blobs.path(digest)
    except BlobError as exc:
        raise _bad(str(exc)) from None
    if not path.is_file():
        raise HTTPException(404, detail={"code": p.E_NOT_FOUND, "message": f"no blob {digest}"})
    slot = await take_slot(request)
    return FileResponse(path, media_type=p.ZSTD, background=_release_task(request, slot))


@router.post("/blobs/fetch")
async def fetch_blobs(body: p.BlobsQuery, request: Request) -> Response:
    """Several blobs in one answer (``protocol.encode_blob_batch``), in the order asked.

    Raises 404 naming the first missing blob; 413 if the batch would exceed 64 MiB.
    """
    ctx = ctx_of(request)

    def gather():
        items, size = [], 0
        for h in body.hashes:
            frame = ctx.blobs.read_frame(check_hash(h))
            size += len(frame)
            if size > MAX_BATCH_BYTES:
                raise HTTPException(413, detail={"code": p.E_INVALID,
                                                 "message": "batch too large: ask for fewer"})
            items.append((h, frame))
        return p.encode_blob_batch(items)

    slot = await take_slot(request)
    try:
        data = await ctx.run(gather)
    except BlobMissing as exc:
        await ctx.tx(pacing_q.release, slot)
        raise HTTPException(404, detail={"code": p.E_NOT_FOUND, "message": str(exc)}) from None
    except BlobError as exc:
        await ctx.tx(pacing_q.release, slot)
        raise _bad(str(exc)) from None
    except BaseException:
        await ctx.tx(pacing_q.release, slot)
        raise
    return Response(content=data, media_type=p.BLOB_BATCH,
                    background=_release_task(request, slot))
