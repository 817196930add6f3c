"""Delta compression against a base the receiver holds."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from officegrid.cas import BlobError, compress
from officegrid.sync.delta import MAX_BASE, delta_compress, delta_decompress


@settings(max_examples=60, deadline=None)
@given(base=st.binary(max_size=4000), data=st.binary(max_size=4000))
def test_roundtrip_any_bytes(base: bytes, data: bytes) -> None:
    assert delta_decompress(delta_compress(data, base), base) == data


def test_a_small_edit_costs_bytes_not_the_chunk() -> None:
    base = os.urandom(300_000)
    edited = base[:150_000] + b"one inserted line\n" + base[150_000:]
    frame = delta_compress(edited, base)
    assert len(frame) < 200 < len(compress(edited)) // 1000
    assert delta_decompress(frame, base) == edited


def test_wrong_base_or_corrupt_frame_is_an_error() -> None:
    base = os.urandom(10_000)
    data = base[:5000] + b"x" + base[5000:]
    frame = delta_compress(data, base)
    with pytest.raises(BlobError, match="corrupt delta frame"):
        delta_decompress(frame[:-3] + b"\0\0\0", base)
    with pytest.raises(BlobError):  # the frame's checksum; callers verify the hash as well
        delta_decompress(frame, os.urandom(10_000))


def test_oversized_base_refused() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        delta_compress(b"x", b"\0" * (MAX_BASE + 1))


def test_a_delta_decoded_against_another_base_is_an_error() -> None:
    """A raw-content dictionary has no id: only the frame's checksum tells a wrong base."""
    base = b"abcdefgh" * 1000
    frame = delta_compress(base + b"X", base)
    with pytest.raises(BlobError, match="corrupt delta frame"):
        delta_decompress(frame, b"zzzzzzzz" * 1000)


def test_a_frame_declaring_a_huge_size_is_refused_before_allocating() -> None:
    """20 bytes from a malicious server claiming 1 TiB: a BlobError, not a MemoryError."""
    header = (0xFD2FB528).to_bytes(4, "little") + bytes([0b11100000])  # 8-byte size, 1 segment
    frame = header + (1 << 40).to_bytes(8, "little") + bytes([1, 0, 0])  # last, raw, empty
    with pytest.raises(BlobError, match="declares 1099511627776 bytes"):
        delta_decompress(frame, b"base")
    with pytest.raises(BlobError):
        delta_decompress(b"not a zstd frame at all", b"base")


def test_delta_frame_uses_the_content_given_and_refuses_unusable_bases(tmp_path) -> None:
    """The server passes the blob's content it already read (read once); a base that is
    missing, corrupt or larger than MAX_BASE gives None (the blob is then sent whole)."""
    from officegrid.cas import ContentStore, hash_bytes
    from officegrid.sync.delta import delta_frame

    store = ContentStore(tmp_path / "blobs")
    old = os.urandom(100_000)
    base = store.put(old)
    new = old[:50_000] + b"an edit" + old[50_000:]
    frame = delta_frame(new, store, base)
    assert frame is not None and len(frame) < 1000
    assert delta_decompress(frame, old) == new

    assert delta_frame(new, store, hash_bytes(b"not stored")) is None
    # Over MAX_BASE once decompressed, though its frame is tiny: refused by its header.
    assert delta_frame(new, store, store.put(b"\0" * (MAX_BASE + 1))) is None
    # A stored frame too large to hold a usable base: refused by its size, unread.
    big = store.put(os.urandom(MAX_BASE + 8192))
    assert delta_frame(new, store, big) is None
    # Corrupt on disk (another content under the base's name).
    bad = store.put(b"x" * 1000)
    store.path(bad).write_bytes(compress(b"y" * 1000))
    assert delta_frame(new, store, bad) is None
