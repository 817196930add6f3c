"""Bulk bytes: content-addressed zstd blobs (unit inputs, results, logs, release files)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Self

import anyio
import blake3
import zstandard
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from officegrid import protocol as p
from officegrid.cas import BlobError, BlobMissing, check_hash
from officegrid.server.auth import admin_or_worker, ctx_of
from officegrid.server.store import pacing as pacing_q
from officegrid.server.transfer_pacer import PIECE, SitePacer, pieces_of
from officegrid.sync.delta import delta_frame

log = logging.getLogger("officegrid.server.blobs")

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


def _freer(request: Request, slot: int) -> Callable[[], Awaitable[None]]:
    """``async free()`` that gives the slot back once, however often it is called (a slot id
    can be reused by the next transfer once freed).

    The release is shielded from cancellation: a response is cancelled when its client goes
    away, and the slot must be freed then above all. It counts as done only once the store
    write succeeded; a failure is logged (the slot then expires after ``transfer_slot_ttl``
    seconds, as its renewal stops) and a later call tries again. Never raises."""
    ctx = ctx_of(request)
    done = False

    async def free() -> None:
        nonlocal done
        if done:
            return
        with anyio.CancelScope(shield=True):
            try:
                await ctx.tx(pacing_q.release, slot)
            except Exception as exc:  # noqa: BLE001 - the answer is over: log, let it expire
                log.warning("cannot free transfer slot %d (%r): it expires in %gs", slot, exc,
                            ctx.settings.transfer_slot_ttl)
                return
        done = True

    return free


async def _keep_slot(request: Request, slot: int) -> None:
    """Renew the slot's expiry every ``transfer_slot_ttl`` / 3 seconds, until cancelled.

    A transfer slower than the TTL (paced, or to a slow client) keeps its slot, so the slot cap
    and the pacer's count of transfers stay right; a crashed process stops renewing and its
    slots expire as before. Store errors are logged and retried at the next tick."""
    ctx = ctx_of(request)
    ttl = ctx.settings.transfer_slot_ttl
    lost = False
    while True:
        await anyio.sleep(ttl / 3)
        try:
            if not await ctx.tx(pacing_q.renew, slot, ctx.now() + ttl) and not lost:
                lost = True
                log.warning("transfer slot %d expired before it was renewed: its transfer "
                            "runs uncounted (store too slow?)", slot)
        except Exception as exc:  # noqa: BLE001 - retry at the next tick, before it expires
            log.warning("cannot renew transfer slot %d (%r); retrying in %gs", slot, exc,
                        ttl / 3)


class _HoldsSlot:
    """Mixin for a Starlette response class: the answer holds a transfer slot, renewed while it
    is sent (:func:`_keep_slot`) and freed when it ends, however it ends (sent, client gone,
    error, server shutdown). Set the slot with :meth:`holding` before returning the answer."""

    _slot_request: Request | None = None
    _slot: int = 0

    def holding(self, request: Request, slot: int) -> Self:
        """Make this answer hold ``slot`` (from :func:`take_slot`) for ``request``; returns
        self."""
        self._slot_request, self._slot = request, slot
        return self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request, slot = self._slot_request, self._slot
        assert request is not None, "call holding() first"
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_keep_slot, request, slot)
                try:
                    await super().__call__(scope, receive, send)  # type: ignore[misc]
                finally:
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                # Starlette cancels the sending task when the client goes: a streamed body may
                # be left suspended at a yield, holding its file open until garbage collection.
                body = getattr(self, "body_iterator", None)
                if isinstance(body, AsyncGenerator):
                    try:
                        await body.aclose()
                    except Exception as exc:  # noqa: BLE001 - the slot must be freed anyway
                        log.debug("closing a transfer's body: %r", exc)
                await _freer(request, slot)()


class SlotFileResponse(_HoldsSlot, FileResponse):
    """A FileResponse (Range, ETag) that holds a transfer slot: ``SlotFileResponse(path,
    media_type=...).holding(request, slot)``."""


class _SlotStreamingResponse(_HoldsSlot, StreamingResponse):
    """A streamed answer that holds a transfer slot, paced at this transfer's share of
    ``transfer_max_bandwidth`` when that is set.

    Args:
        request: the request answered.
        pieces: the body (an async generator of bytes), closed when the answer ends.
        media_type: the Content-Type.
        length: the body's length in bytes (the Content-Length).
    """

    def __init__(self, request: Request, pieces: AsyncGenerator[bytes, None], media_type: str,
                 length: int) -> None:
        pacer = _pacer(request)

        async def body() -> AsyncGenerator[bytes, None]:
            try:
                async for piece in (pacer.pace(pieces) if pacer is not None else pieces):
                    yield piece
            finally:
                await pieces.aclose()

        super().__init__(body(), media_type=media_type, headers={"Content-Length": str(length)})


def _pacer(request: Request) -> SitePacer | None:
    """This process's pacer when ``transfer_max_bandwidth`` is set, else None."""
    from officegrid.sync.bandwidth import parse_rate

    ctx = ctx_of(request)
    cap = ctx.settings.transfer_max_bandwidth
    if cap is None:
        return None
    if ctx.transfer_pacer is None:
        async def count_held() -> int:
            return await ctx.read(pacing_q.held, ctx.now())

        ctx.transfer_pacer = SitePacer(parse_rate(cap), count_held)
    return ctx.transfer_pacer


async def _file_pieces(request: Request, path: Path) -> AsyncGenerator[bytes, None]:
    """The file's bytes in pieces, read in the thread pool (never on the event loop)."""
    ctx = ctx_of(request)
    with open(path, "rb") as fh:
        while True:
            piece = await ctx.run(fh.read, PIECE)
            if not piece:
                return
            yield piece


async def _pieces(pieces: Iterable[bytes]) -> AsyncGenerator[bytes, None]:
    """``pieces`` (in memory already) as an async generator, for a streamed answer."""
    for piece in pieces:
        yield piece


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
    if _pacer(request) is None:
        return SlotFileResponse(path, media_type=p.ZSTD).holding(request, slot)
    try:
        size = path.stat().st_size
    except BaseException:  # gone meanwhile (or cancelled): give the slot back
        await _freer(request, slot)()
        raise
    return _SlotStreamingResponse(request, _file_pieces(request, path), p.ZSTD,
                                  size).holding(request, slot)


@router.post("/blobs/fetch")
async def fetch_blobs(body: p.BlobsQuery, request: Request) -> Response:
    """Several blobs in one answer (``protocol.encode_fetch_answer``), in the order asked.

    A blob with a base in ``body.bases`` that this server holds is sent as a delta against it
    when that is smaller than its stored frame (sync.delta).

    Raises 404 naming the first missing blob; 413 if the batch would exceed 64 MiB (before
    compression).
    """
    ctx = ctx_of(request)
    for h, base in body.bases.items():
        try:
            check_hash(h), check_hash(base)
        except BlobError as exc:
            raise _bad(f"bases: {exc}") from None

    def gather():
        parts, size = [], 0
        for h in body.hashes:
            data = ctx.blobs.read(check_hash(h))
            kind = p.FETCH_RAW
            base = body.bases.get(h)
            if base is not None and ctx.blobs.has(base):
                delta = delta_frame(data, ctx.blobs, base)  # data: read once, above
                if delta is not None and len(delta) < len(data):
                    data, kind = delta, p.FETCH_DELTA
            size += len(data)
            if size > MAX_BATCH_BYTES:
                raise HTTPException(413, detail={"code": p.E_INVALID,
                                                 "message": "batch too large: ask for fewer"})
            parts.append(p.encode_fetch_item(h, kind, data))
        return p.encode_fetch_answer(parts)

    slot = await take_slot(request)
    free = _freer(request, slot)
    try:
        data = await ctx.run(gather)
    except BlobMissing as exc:
        await free()
        # Not the server's path: a blob that is gone usually belongs to a pruned release.
        digest = str(exc).split()[1] if len(str(exc).split()) > 1 else "?"
        raise HTTPException(404, detail={"code": p.E_NOT_FOUND, "message": (
            f"blob {digest} is not on the server (its release may have been pruned by "
            "retention: keep_releases; publish it again to use it)")}) from None
    except BlobError as exc:
        await free()
        raise _bad(str(exc)) from None
    except BaseException:  # 413, cancellation (server shutdown), a bug: never keep the slot
        await free()
        raise
    # Unpaced, the answer goes in one piece (as a plain Response would send it).
    pieces = pieces_of(data) if _pacer(request) is not None else (data,)
    return _SlotStreamingResponse(request, _pieces(pieces), p.BLOB_FETCH,
                                  len(data)).holding(request, slot)
