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


def _sources(tmp, names, rows=3000):
    """Real masters (MasterService over SQLite files) named ``names``."""
    import random

    from officegrid.sync.replication import master
    from officegrid.sync.replication.service import MasterService

    data = tmp / "masters"
    data.mkdir()
    out = {}
    for name in names:
        csv = tmp / f"{name}.csv"
        rnd = random.Random(name)
        csv.write_text("id,name,city\n" + "".join(
            f"{i},Person {rnd.randrange(10**6)},City{rnd.randrange(500)}\n"
            for i in range(1, rows + 1)))
        svc = MasterService(data, name)
        master.build_from_file(svc.path, csv, key="id")
        master.adopt(svc.path, svc.state)
        out[name] = svc
    return out


def test_disk_budget_evicts_replicas_last_lru_first_never_busy_or_needed(tmp_path):
    """Replicas were counted but never evicted: over budget, least recently used replicas go
    (follower stopped, file, -wal and -shm deleted), never one a running unit reads or a job
    asked for recently; a dropped replica comes back (bootstraps again) when asked for."""
    import sqlite3

    from officegrid.sync.replication.fleet import ReplicaSet
    from officegrid.sync.replication.remote import LocalRemote
    from officegrid.worker.cache import enforce_disk_budget

    work = tmp_path / "work"
    cache = ContentStore(work / "cache")
    svcs = _sources(tmp_path, ["a", "b", "c", "d"])
    reps = ReplicaSet(work / "data", lambda n: LocalRemote(svcs[n]), interval=0.05)
    try:
        for name in svcs:
            reps.catch_up(name, 0)
        # Last used: a, b, c long ago (in that order), d just now.
        now = time.time()
        for i, name in enumerate(["a", "b", "c"]):
            reps._used[name] = now - 3600 + i
        files = {n: reps.path(n) for n in svcs}
        assert all(f.exists() for f in files.values())
        assert files["b"].with_name("b.sqlite-wal").exists()  # WAL mode: siblings to delete
        followers = {n: reps._followers[n] for n in svcs}
        sizes = {used_name[2]: used_name[1] for used_name in reps.usage()}

        def usage() -> int:
            return sum(f.stat().st_blocks * 512 for f in work.rglob("*") if f.is_file())

        budget = usage() - sizes["b"] // 2  # one replica must go
        reader = sqlite3.connect(f"file:{files['a']}?mode=ro", uri=True)  # a unit reads a
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM a").fetchone()[0] == 3000
        freed = enforce_disk_budget(work, budget, cache, in_use=set(), replicas=reps,
                                    replica_busy=lambda n: n == "a", now=now)
        assert freed > 0
        assert not any(p.exists() for p in (files["b"], files["b"].with_name("b.sqlite-wal"),
                                            files["b"].with_name("b.sqlite-shm")))
        assert not followers["b"].thread.is_alive() and "b" not in reps._followers
        assert files["a"].exists() and files["c"].exists() and files["d"].exists()
        assert reader.execute("SELECT count(*) FROM a").fetchone()[0] == 3000  # still readable
        reader.close()
        assert usage() <= budget
        # Far over budget: still never a busy one, nor one asked for within needed_for.
        freed = enforce_disk_budget(work, 1, cache, in_use=set(), replicas=reps,
                                    replica_busy=lambda n: n == "a", now=now)
        assert not files["c"].exists() and files["a"].exists() and files["d"].exists()
        assert freed > 0
        # Asked for again, a dropped replica is followed afresh and equals its master.
        assert reps.catch_up("b", 0)[1] >= 0
        conn = sqlite3.connect(files["b"])
        assert conn.execute("SELECT count(*) FROM b").fetchone()[0] == 3000
        conn.close()
    finally:
        reps.close()
