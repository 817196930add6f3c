"""Wiring the sync layer's ``fetch(hashes)`` to the server's batched blob endpoint."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from officegrid.cas import BlobError, decompress
from officegrid.client import Client


def blob_fetcher(client: Client) -> Callable[[list[str]], Iterator[tuple[str, bytes]]]:
    """Return ``fetch(hashes) -> iterator of (hash, uncompressed bytes)``, one round trip per
    call. Corrupt frames are skipped (the caller verifies and asks again for what is missing)."""

    def fetch(hashes: list[str]) -> Iterator[tuple[str, bytes]]:
        for digest, frame in client.fetch_blobs(list(hashes)):
            try:
                yield digest, decompress(frame)
            except BlobError:
                continue

    return fetch
