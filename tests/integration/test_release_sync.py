"""Releases move only what changed: chunk-level delta both ways, pull, diff."""

from __future__ import annotations

import random

from grid import publish
from officegrid.cli.release import publish as do_publish


def _tree(root, big: bytes):
    (root / "pkg").mkdir(parents=True, exist_ok=True)
    for i in range(30):
        (root / "pkg" / f"m{i}.py").write_text(f"VALUE = {i}\n" * 50)
    (root / "data.bin").write_bytes(big)


def test_insert_in_a_large_file_uploads_and_fetches_about_one_chunk(grid, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    big = random.Random(3).randbytes(12 << 20)
    src = tmp_path / "src"
    _tree(src, big)
    first = do_publish(grid.admin, src, "worker", show_progress=False)
    assert first["bytes_uploaded"] > 10 << 20
    mid = len(big) // 2
    (src / "data.bin").write_bytes(big[:mid] + b"one inserted line\n" + big[mid:])
    second = do_publish(grid.admin, src, "worker", show_progress=False)
    assert second["id"] != first["id"]
    # Changed chunks (about one) + the changed manifests along the path: well under 1 MB.
    assert second["bytes_uploaded"] < 1 << 20, second
    assert second["blobs_uploaded"] <= 4, second
    again = do_publish(grid.admin, src, "worker", show_progress=False)
    assert again["id"] == second["id"] and again["blobs_uploaded"] == 0


def test_pull_and_diff(grid, tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    big = random.Random(4).randbytes(6 << 20)
    src = tmp_path / "src"
    _tree(src, big)
    r1 = publish(grid.admin, src)
    env = {"OFFICEGRID_SERVER": grid.server.url, "OFFICEGRID_TOKEN": grid.server.admin_token,
           "XDG_CACHE_HOME": str(tmp_path / "cache2"), "PATH": "/usr/bin:/bin"}

    def og(*args):
        return subprocess.run([sys.executable, "-m", "officegrid", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    dest = tmp_path / "checkout"
    res = og("release", "pull", "worker", "--to", str(dest))
    assert res.returncode == 0, res.stderr
    assert (dest / "data.bin").read_bytes() == big
    first_received = int(res.stderr.split(" bytes received")[0].split(", ")[-1].replace(",", ""))
    (src / "pkg" / "m7.py").write_text("VALUE = 'edited'\n")
    mid = len(big) // 2
    (src / "data.bin").write_bytes(big[:mid] + b"x" + big[mid:])
    r2 = publish(grid.admin, src)
    d = og("release", "diff", r1, r2)
    assert d.returncode == 0, d.stderr
    assert d.stdout.split() == ["M", "data.bin", "M", "pkg/m7.py"]
    res = og("release", "pull", "worker", "--to", str(dest))
    assert res.returncode == 0, res.stderr
    assert (dest / "pkg" / "m7.py").read_text() == "VALUE = 'edited'\n"
    received = int(res.stderr.split(" bytes received")[0].split(", ")[-1].replace(",", ""))
    assert received < first_received / 5, (received, first_received)


def test_items_not_asked_for_are_not_progress_and_not_handed_on():
    """Review R1: a (malicious or broken) server that answers every try with a blob nobody
    asked for and then cuts the answer must exhaust the retry budget, not reset it forever."""
    import httpx
    import pytest

    from officegrid import protocol as p
    from officegrid.client import Unreachable
    from officegrid.worker.fetch import stream_blobs

    asked, junk = "a" * 64, "b" * 64
    body = p.encode_fetch_answer([p.encode_fetch_item(junk, p.FETCH_RAW, b"junk")])

    class Resp:
        def iter_raw(self, size):
            yield body
            raise httpx.RemoteProtocolError("peer closed the connection")

        def close(self):
            pass

    class Backoff:
        def next_delay(self):
            return 0.01

    class FakeClient:
        url, max_retry_time, bytes_received, backoff, calls = "http://x", 0.2, 0, Backoff(), 0

        def request(self, *args, **kwargs):
            self.calls += 1
            assert self.calls < 200, "retries forever"
            return Resp()

    client = FakeClient()
    with pytest.raises(Unreachable, match="1 blobs left"):
        for item in stream_blobs(client, [asked]):
            raise AssertionError(f"handed on {item[0]}, which was not asked for")


def test_answers_cut_off_again_and_again_back_off_exponentially(monkeypatch):
    """Review R1: each cut answer's 2xx headers reset the server's backoff, so an agent (no
    retry budget) retried a server that keeps cutting answers at the base delay forever."""
    import random

    import httpx
    import pytest

    from officegrid import protocol as p
    from officegrid.backoff import Backoff
    from officegrid.worker import fetch as fetch_mod

    class Ceiling(random.Random):
        def uniform(self, a, b):
            return b

    delays: list[float] = []

    class Stop(Exception):
        pass

    def sleep(seconds):
        delays.append(seconds)
        if len(delays) == 5:
            raise Stop

    class Resp:
        def iter_raw(self, size):
            yield p.encode_fetch_answer([])[:3]
            raise httpx.ReadTimeout("cut")

        def close(self):
            pass

    class FakeClient:
        url, max_retry_time, bytes_received = "http://x", None, 0
        backoff = Backoff(1.0, 1000.0, rng=Ceiling())

        def request(self, *args, **kwargs):
            self.backoff.success()  # as Client.request does on a 2xx
            return Resp()

    monkeypatch.setattr(fetch_mod.time, "sleep", sleep)
    with pytest.raises(Stop):
        list(fetch_mod.stream_blobs(FakeClient(), ["a" * 64]))
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_a_pruned_release_published_again_is_usable(tmp_path, monkeypatch):
    """Retention pruned it (files gone, row kept); publishing the same content again uploads
    the files and makes it promotable and runnable again, as the refusal message says."""
    import os
    import subprocess
    import sys

    from conftest import Grid
    from grid import wait_for

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    g = Grid(tmp_path, None).start({"OFFICEGRID_KEEP_RELEASES": "1",
                                    "OFFICEGRID_BLOB_GC_INTERVAL": "0.3",
                                    "OFFICEGRID_BLOB_GC_GRACE": "0.5"})
    try:
        dirs = []
        for i in range(3):
            d = tmp_path / f"r{i}"
            d.mkdir()
            (d / "job.py").write_text(f"VERSION = {i}\n")
            dirs.append(d)
        ids = [publish(g.admin, d) for d in dirs]
        wait_for(lambda: g.admin.release(ids[0])["pruned_at"], 30, what="r0 pruned")
        again = do_publish(g.admin, dirs[0], "worker", show_progress=False)
        assert again["id"] == ids[0] and again["existed"]
        assert again["blobs_uploaded"] >= 1  # its files had been collected
        info = g.admin.release("worker")
        assert info["id"] == ids[0] and info["pruned_at"] is None
        dest = tmp_path / "checkout"
        res = subprocess.run([sys.executable, "-m", "officegrid", "release", "pull", "worker",
                              "--to", str(dest)], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "OFFICEGRID_SERVER": g.server.url,
                                  "OFFICEGRID_TOKEN": g.server.admin_token})
        assert res.returncode == 0, res.stderr
        assert (dest / "job.py").read_text() == "VERSION = 0\n"
    finally:
        g.close()
