"""Delta compression of a blob against a base blob the receiver already holds.

A worker updating a release usually holds the previous version of every changed chunk and
manifest: the chunk that covered the same offsets of the same file, the manifest of the same
directory. Compressing the new content with the old one as a zstd raw-content dictionary (what
``zstd --patch-from`` does) shrinks a one-line edit of a 128 KiB chunk from ~70 KB to tens of
bytes, where rsync sends its block checksums and literal data.

Per blob, not per batch: one small dictionary per item keeps every match within zstd's reach at
the default level (a batch-wide dictionary of many megabytes is mostly out of its hash tables'
reach unless long-distance matching is tuned).
"""

from __future__ import annotations

import math

import zstandard

from officegrid.cas import ZSTD_LEVEL, BlobError, ContentStore, decompress, hash_bytes

#: Bases larger than this are not used (they would cost more to load than they save); the
#: largest chunk is 512 KiB (sync.chunking), the largest manifest a few MB.
MAX_BASE = 8 << 20
#: Largest stored frame a usable base can have: incompressible content grows by a few bytes per
#: 128 KiB block plus the frame header and checksum.
_MAX_BASE_FRAME = MAX_BASE + 4096


def _window_log(base_size: int, size: int) -> int:
    # The match window must reach from the end of the content back to the start of the base.
    return min(max(math.ceil(math.log2(max(base_size + size, 2))), 10), 27)


def delta_compress(data: bytes, base: bytes) -> bytes:
    """Compress ``data`` as one zstd frame using ``base`` as a raw-content dictionary.

    Args:
        data: the content to send (bytes).
        base: content the receiver holds (at most :data:`MAX_BASE` bytes).
    Returns:
        a zstd frame that :func:`delta_decompress` turns back into ``data`` given ``base``.
    Raises:
        ValueError: ``base`` is larger than :data:`MAX_BASE`.
    """
    if len(base) > MAX_BASE:
        raise ValueError(f"delta base of {len(base)} bytes exceeds {MAX_BASE}")
    # The checksum (4 bytes) makes decoding against another base an error: a raw-content
    # dictionary has no id that zstd could check.
    params = zstandard.ZstdCompressionParameters.from_level(
        ZSTD_LEVEL, window_log=_window_log(len(base), len(data)), write_content_size=True,
        write_checksum=True)
    dictionary = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdCompressor(dict_data=dictionary, compression_params=params).compress(data)


def delta_decompress(frame: bytes, base: bytes, max_size: int = 1 << 30) -> bytes:
    """Inverse of :func:`delta_compress`.

    Args:
        frame: a zstd frame from :func:`delta_compress` (untrusted: from the network).
        base: the base it was made against.
        max_size: most bytes the result may have.
    Raises:
        BlobError: the frame is corrupt, was made against another base (its checksum fails),
            or its content (as its header declares it, or as decoded) exceeds ``max_size``
            bytes. Callers verify the result's hash as well.
    """
    check_frame_size(frame, max_size)
    dictionary = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    try:
        return zstandard.ZstdDecompressor(dict_data=dictionary, max_window_size=1 << 27
                                          ).decompress(frame, max_output_size=max_size)
    except zstandard.ZstdError as exc:
        raise BlobError(f"corrupt delta frame: {exc}") from exc


def check_frame_size(frame: bytes, max_size: int) -> None:
    """Refuse a zstd frame whose header declares more than ``max_size`` uncompressed bytes.

    zstandard allocates the declared size up front: a 20-byte frame claiming a terabyte
    would raise MemoryError (or take the memory) instead of a clean error.

    Raises:
        BlobError: the header is malformed or declares more than ``max_size`` bytes.
    """
    try:
        declared = zstandard.get_frame_parameters(frame).content_size
    except zstandard.ZstdError as exc:
        raise BlobError(f"corrupt zstd frame: {exc}") from exc
    if declared != zstandard.CONTENTSIZE_UNKNOWN and declared > max_size:
        raise BlobError(f"zstd frame declares {declared} bytes, more than {max_size}")


def delta_frame(data: bytes, store: ContentStore, base: str) -> bytes | None:
    """``data`` compressed against ``store``'s blob ``base``; None when the base is unusable
    (missing, corrupt or over :data:`MAX_BASE` bytes).

    Args:
        data: the content (uncompressed bytes) of the blob to send, already read by the caller.
        store: where the base lives.
        base: hash of a blob the receiver holds.
    Returns:
        a frame for :func:`delta_decompress`, or None.

    The base is sized from its stored frame (file size, then the frame header) before it is
    decompressed: an asker naming a huge blob as a base costs a stat and a read, not its
    decompression.
    """
    try:
        if store.path(base).stat().st_size > _MAX_BASE_FRAME:
            return None
        frame = store.read_frame(base)
        check_frame_size(frame, MAX_BASE)
        base_data = decompress(frame, MAX_BASE)
    except (BlobError, OSError):
        return None
    if len(base_data) > MAX_BASE or hash_bytes(base_data) != base:
        return None  # corrupt: the receiver holds the good one, our delta would not decode
    return delta_compress(data, base_data)
