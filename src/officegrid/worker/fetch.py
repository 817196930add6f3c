"""Wiring the sync layer's ``fetch(hashes)`` to the server's batched blob endpoint.

The batch answer is streamed and decoded as it arrives, so every blob is handed to the sync
layer (which verifies and caches it) as soon as its last byte is in: a transfer cut off
mid-answer keeps every blob received before the cut, and the next try (in this process, or a
later ``release pull``) asks only for the rest. Pacing (``--max-bandwidth``) is the client's:
its token bucket is applied per piece read from the socket (``Client.bandwidth``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator

import httpx

from officegrid import protocol as p
from officegrid.cas import BlobError, ContentStore
from officegrid.client import Client, Unreachable
from officegrid.sync.delta import delta_decompress

log = logging.getLogger("officegrid.worker.fetch")

_PIECE = 64 * 1024  # bytes read from the socket at a time (the pacing granularity)


def stream_blobs(client: Client, hashes: list[str], bases: dict[str, str] | None = None
                 ) -> Iterator[tuple[str, int, bytes]]:
    """Yield (hash, kind, data) items of ``hashes`` as each arrives (unverified; kind
    ``protocol.FETCH_RAW`` (content) or ``FETCH_DELTA`` (against ``bases[hash]``); items not
    asked for, or repeated, are dropped), from one POST /blobs/fetch; if the connection is cut
    mid-answer, ask again (with the client's backoff, per server) for the blobs not yet
    received, until the client's retry budget (``max_retry_time`` seconds without progress) is
    spent.

    Raises:
        ApiError: the server refused the request (e.g. 404 for a blob it lacks).
        Unreachable: the connection kept failing for longer than the retry budget.
    """
    todo = list(dict.fromkeys(hashes))
    last_progress = time.monotonic()
    stalls = 0  # answers in a row cut off before any blob arrived
    while todo:
        query = {"hashes": todo, "bases": {h: bases[h] for h in todo if h in (bases or {})}}
        asked = set(todo)
        resp = client.request("POST", "/blobs/fetch", json=query, stream=True)
        received: set[str] = set()

        def pieces(resp: httpx.Response = resp) -> Iterator[bytes]:
            for piece in resp.iter_raw(_PIECE):
                client.bytes_received += len(piece)
                yield piece

        try:
            try:
                for digest, kind, data in p.iter_fetch_answer(pieces()):
                    if digest not in asked or digest in received:
                        continue  # not asked for, or again: not progress, not handed on
                    received.add(digest)
                    last_progress = time.monotonic()
                    yield digest, kind, data
            finally:
                resp.close()
        except (httpx.TransportError, ValueError) as exc:
            todo = [h for h in todo if h not in received]
            waited = time.monotonic() - last_progress
            # Each answer's 2xx headers reset the server's backoff: count the cuts in a row
            # back into it, so a server that keeps cutting answers sees the delay grow.
            stalls = 0 if received else stalls + 1
            for _ in range(stalls - 1):
                client.backoff.next_delay()
            delay = client.backoff.next_delay()
            if client.max_retry_time is not None and waited + delay > client.max_retry_time:
                raise Unreachable(0, "unreachable", f"blob transfer from {client.url} cut off "
                                  f"and not resumed ({len(todo)} blobs left): {exc!r}") from exc
            log.warning("blob transfer cut off (%r); resuming %d blobs in %.1fs", exc,
                        len(todo), delay)
            time.sleep(delay)
            continue
        return


def blob_fetcher(client: Client, cache: ContentStore | None = None
                 ) -> Callable[..., Iterable[tuple[str, bytes]]]:
    """Return ``fetch(hashes, bases=None) -> iterator of (hash, uncompressed bytes)``, one
    round trip per call (more only if the answer is cut off), as ``sync.materialize.Fetch``.

    Blobs are yielded as they arrive; corrupt deltas are skipped (the caller verifies and asks
    again for what is missing). With a ``cache``, ``bases`` (hash -> a cached older version)
    are offered to the server, and deltas it sends are decoded against them (sync.delta).
    """

    def fetch(hashes: list[str], bases: dict[str, str] | None = None
              ) -> Iterator[tuple[str, bytes]]:
        offered = {h: b for h, b in (bases or {}).items() if cache is not None}
        for digest, kind, data in stream_blobs(client, list(hashes), offered):
            if kind == p.FETCH_RAW:
                yield digest, data
                continue
            try:
                assert cache is not None
                yield digest, delta_decompress(data, cache.read(offered[digest]))
            except (BlobError, KeyError):
                continue

    return fetch
