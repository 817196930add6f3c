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
