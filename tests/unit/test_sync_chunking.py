"""Content-defined chunking: stable boundaries, small deltas, streaming, the stat cache."""

from __future__ import annotations

import os
import random
from pathlib import Path

from fastcdc import fastcdc
from hypothesis import given, settings
from hypothesis import strategies as st

from officegrid.sync import chunking
from officegrid.sync.chunking import chunk_file
from officegrid.sync.statcache import StatCache
from officegrid.sync.tree import build_tree


def _data(n: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    return rng.randbytes(n)


def test_small_file_is_one_chunk(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"x" * 1000)
    digest, size, chunks = chunk_file(p)
    assert size == 1000 and len(chunks) == 1 and chunks[0].hash == digest


def test_insert_in_the_middle_changes_about_one_chunk(tmp_path: Path) -> None:
    data = _data(20 << 20)
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(data)
    mid = len(data) // 2
    b.write_bytes(data[:mid] + b"!" + data[mid:])
    _, _, ca = chunk_file(a)
    _, _, cb = chunk_file(b)
    new = {c.hash for c in cb} - {c.hash for c in ca}
    assert 1 <= len(new) <= 2
    assert sum(c.size for c in cb if c.hash in new) <= 2 * chunking.MAX_SIZE


def test_streaming_equals_whole_buffer_chunking(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(chunking, "READ_PIECE", 300_000)  # many buffer refills
    data = _data(5 << 20, seed=2)
    p = tmp_path / "f"
    p.write_bytes(data)
    digest, size, chunks = chunk_file(p)
    expected = [(c.offset, c.length) for c in fastcdc(
        data, min_size=chunking.MIN_SIZE, avg_size=chunking.AVG_SIZE,
        max_size=chunking.MAX_SIZE, fat=False, hf=None)]
    assert [(c.offset, c.size) for c in chunks] == expected
    assert size == len(data)
    assert b"".join(data[c.offset:c.offset + c.size] for c in chunks) == data


@settings(max_examples=15, deadline=None)
@given(n=st.integers(min_value=chunking.WHOLE_FILE_MAX + 1, max_value=3 << 20),
       seed=st.integers(0, 1000))
def test_chunks_cover_the_file_exactly(tmp_path_factory, n: int, seed: int) -> None:
    p = tmp_path_factory.mktemp("c") / "f"
    p.write_bytes(_data(n, seed))
    _, size, chunks = chunk_file(p)
    assert size == n
    pos = 0
    for c in chunks:
        assert c.offset == pos and 0 < c.size <= chunking.MAX_SIZE
        pos += c.size
    assert pos == n


def test_stat_cache_skips_unchanged_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}.py").write_text(f"x = {i}\n")
    cache = StatCache(tmp_path / "stat.db")
    first = build_tree(src, stat_cache=cache)
    assert cache.misses == 20 and cache.hits == 0
    second = build_tree(src, stat_cache=cache)
    assert cache.hits == 20 and second.root_hash == first.root_hash
    (src / "f3.py").write_text("x = 'changed'\n")
    os.utime(src / "f3.py", ns=(1, 1))  # even an old mtime: size/ctime differ
    third = build_tree(src, stat_cache=cache)
    assert cache.misses == 21 and third.root_hash != first.root_hash
