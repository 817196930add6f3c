"""Content-defined chunking of release files (FastCDC, via the maintained ``fastcdc`` package).

Files up to :data:`WHOLE_FILE_MAX` bytes stay one chunk (the chunk is the file). Larger files
are cut where their content says so, so an insert or a delete moves chunk boundaries only near
the edit: a 1-byte insert in the middle of a 200 MB file changes about one chunk, and only that
chunk crosses the network. Chunks are named by their blake3 digest, like every blob.

Sizes follow FastCDC's paper (Xia et al., "FastCDC: a Fast and Efficient Content-Defined
Chunking Approach for Data Deduplication", USENIX ATC 2016): a minimum of a quarter and a maximum
of four times the average. The average, 128 KiB, keeps a 200 MB file's chunk list (its manifest
entry) around 1,600 entries while an edit re-sends about 128 KiB.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3
from fastcdc import fastcdc

AVG_SIZE = 128 * 1024
MIN_SIZE = AVG_SIZE // 4
MAX_SIZE = AVG_SIZE * 4
WHOLE_FILE_MAX = MAX_SIZE  # files this small are one chunk
READ_PIECE = 8 << 20  # bytes read per call while chunking a large file


@dataclass(frozen=True)
class Chunk:
    """One piece of a file: ``offset`` and ``size`` in bytes, ``hash`` its blake3 hex digest."""

    offset: int
    size: int
    hash: str


def chunk_file(path: Path) -> tuple[str, int, list[Chunk]]:
    """Hash and chunk one file, reading it once.

    Returns:
        (blake3 hex of the whole content, size in bytes, chunks in order). A file of at most
        :data:`WHOLE_FILE_MAX` bytes is one chunk whose hash is the file's hash.
    Raises:
        OSError: the file cannot be read.
    """
    size = os.stat(path).st_size
    if size <= WHOLE_FILE_MAX:
        data = Path(path).read_bytes()
        digest = blake3.blake3(data).hexdigest()
        return digest, len(data), [Chunk(0, len(data), digest)]
    whole = blake3.blake3()
    chunks: list[Chunk] = []
    for chunk_bytes, offset in _cdc_pieces(path):
        whole.update(chunk_bytes)
        chunks.append(Chunk(offset, len(chunk_bytes), blake3.blake3(chunk_bytes).hexdigest()))
    total = sum(c.size for c in chunks)
    return whole.hexdigest(), total, chunks


def _cdc_pieces(path: Path) -> Iterator[tuple[bytes, int]]:
    """Yield (chunk bytes, offset) over a large file, streaming: at most a few read pieces are
    held in memory. A cut point found near the end of a buffer is re-decided once more data is
    appended, so the chunks equal those of chunking the whole file at once."""
    buf = b""
    base = 0
    with open(path, "rb") as fh:
        eof = False
        while not eof or buf:
            if not eof and len(buf) < READ_PIECE + MAX_SIZE:
                piece = fh.read(READ_PIECE)
                if piece:
                    buf += piece
                    continue
                eof = True
            cuts = list(fastcdc(buf, min_size=MIN_SIZE, avg_size=AVG_SIZE, max_size=MAX_SIZE,
                                fat=False, hf=None))
            # Keep the last chunk back unless the file ended: its end may move with more data.
            keep = cuts if eof else cuts[:-1]
            if not keep:
                keep = cuts
            pos = 0
            for c in keep:
                yield buf[c.offset:c.offset + c.length], base + c.offset
                pos = c.offset + c.length
            buf = buf[pos:]
            base += pos
            if eof and not buf:
                break
