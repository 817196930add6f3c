"""The worker's release cache stays bounded and never drops what is in use."""

from __future__ import annotations

import os
import time

from officegrid.cas import ContentStore
from officegrid.sync.materialize import materialize
from officegrid.sync.tree import build_tree, store_tree
from officegrid.worker.cache import prune_worker_cache


def _release(tmp, name, size, server: ContentStore) -> str:
    d = tmp / name
    d.mkdir()
    (d / "data.bin").write_bytes(os.urandom(size))
    (d / "job.py").write_text(f"NAME = {name!r}\n")
    tree = build_tree(d)
    store_tree(tree, server)
    return tree.root_hash


def test_prune_keeps_recent_and_in_use(tmp_path):
    server = ContentStore(tmp_path / "server")
    cache = ContentStore(tmp_path / "cache")
    releases = tmp_path / "releases"

    def fetch(hashes):
        return [(h, server.read(h)) for h in hashes]

    ids = []
    for i in range(5):
        rid = _release(tmp_path, f"r{i}", 300_000, server)
        materialize(rid, releases / rid, cache=cache, fetch=fetch)
        os.utime(releases / rid, (time.time() + i, time.time() + i))
        ids.append(rid)
    removed, blobs = prune_worker_cache(releases, cache, in_use={ids[0]}, keep=2,
                                        max_bytes=700_000)
    left = {d.name for d in releases.iterdir() if len(d.name) == 64}
    assert left == {ids[0], ids[3], ids[4]} and removed == 2
    assert blobs > 0
    # Everything the kept releases need is still cached: materializing them fetches nothing.
    for rid in (ids[0], ids[3], ids[4]):
        (releases / rid / ".officegrid-release").unlink()
        import shutil

        shutil.rmtree(releases / rid)
        stats = materialize(rid, releases / rid, cache=cache,
                            fetch=lambda h: (_ for _ in ()).throw(AssertionError(h)))
        assert stats.chunks_fetched == 0
