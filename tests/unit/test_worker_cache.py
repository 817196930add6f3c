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

    def fetch(hashes, bases=None):
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


def test_disk_budget_evicts_least_recently_used_first_and_never_what_is_in_use(tmp_path):
    from officegrid.worker.cache import enforce_disk_budget

    server = ContentStore(tmp_path / "server")
    work = tmp_path / "work"
    cache = ContentStore(work / "cache")
    releases = work / "releases"

    def fetch(hashes, bases=None):
        return [(h, server.read(h)) for h in hashes]

    ids = []
    for i in range(4):
        rid = _release(tmp_path, f"r{i}", 400_000, server)
        materialize(rid, releases / rid, cache=cache, fetch=fetch)
        os.utime(releases / rid, (time.time() - 100 + i, time.time() - 100 + i))
        ids.append(rid)
    replica = work / "data" / "zips.sqlite"
    replica.parent.mkdir(parents=True)
    replica.write_bytes(os.urandom(300_000))
    os.utime(replica, (1, 1))  # oldest of all, but replicas are not evicted here

    def usage() -> int:
        return sum(f.stat().st_blocks * 512 for f in work.rglob("*") if f.is_file())

    chunks = [cache.path(d) for d in cache]
    for f in chunks:  # written when their releases were fetched, before those were last used
        os.utime(f, (time.time() - 200, time.time() - 200))
    chunk_bytes = sum(f.stat().st_blocks * 512 for f in chunks)
    one_release = sum(f.stat().st_blocks * 512 for f in (releases / ids[1]).rglob("*")
                      if f.is_file())
    before = usage()
    budget = before - chunk_bytes - one_release - one_release // 2  # two releases must go
    freed = enforce_disk_budget(work, budget, cache, in_use={ids[0]})
    left = {d.name for d in releases.iterdir()}
    assert freed > 0 and usage() <= budget
    assert list(cache) == []  # least recently used: went first
    assert ids[0] in left  # in use, although the least recently used release
    assert ids[1] not in left and ids[2] not in left  # then the oldest that may go
    assert ids[3] in left  # the most recently used stays
    assert replica.exists()
    assert enforce_disk_budget(work, budget, cache, in_use={ids[0]}) == 0  # already within
