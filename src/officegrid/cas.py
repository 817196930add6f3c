"""Content-addressed storage of zstd-compressed blobs, used by the server and by worker caches.

A blob is named by the blake3 hex digest (64 characters) of its *uncompressed* bytes and stored
as one zstd frame at ``root/ab/cdef...``. Writes go to a temporary file in the same directory,
are fsynced, then renamed into place, so a reader never sees a partial blob and a crash leaves
at most a stray ``*.tmp`` file (removed by :meth:`ContentStore.sweep_temp`).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import blake3
import zstandard

HASH_RE = re.compile(r"^[0-9a-f]{64}$")
ZSTD_LEVEL = 3  # zstd's default: about 300 MB/s per core, a good ratio for records and code.


class BlobError(Exception):
    """A blob is malformed, does not match its name, or is missing."""


class BlobMissing(BlobError):
    """The named blob is not in the store."""


def hash_bytes(data: bytes) -> str:
    """Return the blake3 hex digest (64 characters) of ``data``."""
    return blake3.blake3(data).hexdigest()


def check_hash(name: str) -> str:
    """Return ``name`` if it is a well-formed blob name; raise :class:`BlobError` otherwise."""
    if not isinstance(name, str) or not HASH_RE.match(name):
        raise BlobError(f"not a blob hash (64 lowercase hex characters): {name!r}")
    return name


def compress(data: bytes) -> bytes:
    """Compress ``data`` into one zstd frame that records the content size."""
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(data)


def decompress(frame: bytes, max_size: int = 1 << 34) -> bytes:
    """Decompress one zstd frame; raise :class:`BlobError` on corrupt input."""
    try:
        return zstandard.ZstdDecompressor().decompress(frame, max_output_size=max_size)
    except zstandard.ZstdError as exc:
        raise BlobError(f"corrupt zstd frame: {exc}") from exc


class ContentStore:
    """A directory of content-addressed zstd blobs.

    Args:
        root: directory to keep blobs in; created if missing.
        durable: fsync every blob and its directory (the server's store, which references blobs
            from transactions). A cache whose blobs are verified on read and fetched again when
            bad (a worker's) can skip it: fsync per blob dominates materialization time.
    """

    def __init__(self, root: Path | str, durable: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.durable = durable

    def path(self, digest: str) -> Path:
        """Return where the blob ``digest`` lives (whether or not it exists)."""
        check_hash(digest)
        return self.root / digest[:2] / digest[2:]

    def has(self, digest: str) -> bool:
        """True if the blob is present."""
        return self.path(digest).is_file()

    def missing(self, digests: Iterable[str]) -> list[str]:
        """Return the digests of ``digests`` that are not present, in order, without duplicates."""
        seen: set[str] = set()
        out = []
        for d in digests:
            if d not in seen and not self.has(d):
                out.append(d)
            seen.add(d)
        return out

    def put(self, data: bytes) -> str:
        """Store ``data`` (uncompressed) and return its digest. Idempotent."""
        digest = hash_bytes(data)
        if not self.has(digest):
            self._write(digest, compress(data))
        return digest

    def put_verified(self, digest: str, data: bytes) -> None:
        """Store ``data`` (uncompressed) under ``digest``, which the caller has just checked is
        its hash (no second hashing). Idempotent."""
        if not self.has(digest):
            self._write(digest, compress(data))

    def put_frame(self, digest: str, frame: bytes) -> int:
        """Store a zstd ``frame`` claimed to hold the content named ``digest``.

        The frame is decompressed and hashed before it is kept.

        Returns:
            the uncompressed size in bytes.
        Raises:
            BlobError: the frame is corrupt or its content does not hash to ``digest``.
        """
        check_hash(digest)
        data = decompress(frame)
        actual = hash_bytes(data)
        if actual != digest:
            raise BlobError(f"blob content hashes to {actual}, not {digest}")
        if not self.has(digest):
            self._write(digest, frame)
        return len(data)

    def put_file(self, digest: str, src: Path) -> None:
        """Move an already-verified zstd file ``src`` into place as ``digest`` (fsynced)."""
        dest = self.path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(src, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(src, dest)
        _fsync_dir(dest.parent)

    def read_frame(self, digest: str) -> bytes:
        """Return the stored zstd frame of ``digest``; raise :class:`BlobMissing` if absent."""
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise BlobMissing(f"blob {digest} is not in {self.root}") from None

    def read(self, digest: str) -> bytes:
        """Return the uncompressed content of ``digest``, verified against its name.

        Raises:
            BlobMissing: not present.
            BlobError: present but corrupt (the caller should delete and refetch it).
        """
        data = decompress(self.read_frame(digest))
        if hash_bytes(data) != digest:
            raise BlobError(f"blob {digest} in {self.root} is corrupt")
        return data

    def delete(self, digest: str) -> None:
        """Remove a blob if present."""
        with contextlib.suppress(FileNotFoundError):
            self.path(digest).unlink()

    def __iter__(self) -> Iterator[str]:
        """Iterate over the digests present (in no particular order)."""
        for sub in self.root.iterdir():
            if sub.is_dir() and len(sub.name) == 2:
                for f in sub.iterdir():
                    name = sub.name + f.name
                    if HASH_RE.match(name):
                        yield name

    def temp_file(self) -> tuple[int, Path]:
        """Create a temporary file inside the store (same filesystem, for atomic rename)."""
        tmp = self.root / "tmp"
        tmp.mkdir(exist_ok=True)
        fd, name = tempfile.mkstemp(dir=tmp, suffix=".tmp")
        return fd, Path(name)

    def sweep_temp(self, min_age: float = 0.0) -> int:
        """Remove temporary files older than ``min_age`` seconds (leftovers of a crash or a
        cut-off upload); return how many were removed. Other processes sharing the store may be
        writing younger ones."""
        tmp = self.root / "tmp"
        cutoff = time.time() - min_age
        n = 0
        if tmp.is_dir():
            for f in tmp.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if f.stat().st_mtime <= cutoff:
                        f.unlink()
                        n += 1
        return n

    def _write(self, digest: str, frame: bytes) -> None:
        fd, tmp = self.temp_file()
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(frame)
                if self.durable:
                    fh.flush()
                    os.fsync(fh.fileno())
            dest = self.path(digest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
            if self.durable:
                _fsync_dir(dest.parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise


def _fsync_dir(path: Path) -> None:
    # Make the rename durable; not possible (nor needed) on Windows.
    if os.name != "nt":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
