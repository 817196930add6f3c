"""Shared helpers of the benchmarks: real server and worker processes, a scratch PostgreSQL
database, statistics, machine facts and the generated sections of ``bench/RESULTS.md``.

Every process started here is registered and killed at exit (``cleanup()``, also run by
``atexit`` and on SIGTERM/SIGINT), so a failed or interrupted benchmark leaves nothing behind.
All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "RESULTS.md"
JOBS = BENCH / "jobs"
PG_URL = os.environ.get("OFFICEGRID_BENCH_PG_URL",
                        "postgresql+psycopg://postgres@127.0.0.1:5432/test")

_PROCS: list[subprocess.Popen] = []

sys.path.insert(0, str(ROOT / "tests"))
from grid import wait_for as _grid_wait_for  # noqa: E402  (tests/grid.py)

# ----------------------------------------------------------------------------- processes


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without OFFICEGRID_* variables (server/worker defaults)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFICEGRID_")}
    env.update(extra or {})
    return env


def _kill(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)


def cleanup() -> None:
    """Kill every process this module started that is still running (newest first)."""
    while _PROCS:
        _kill(_PROCS.pop())


def _on_signal(signum: int, _frame: Any) -> None:
    cleanup()
    raise SystemExit(128 + signum)


atexit.register(cleanup)


def install_signal_handlers() -> None:
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)


def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """``tests/grid.py``'s ``wait_for`` with the benchmarks' argument order: poll ``cond``
    every ``interval`` seconds until truthy; raise TimeoutError after ``timeout`` seconds."""
    return _grid_wait_for(cond, timeout, interval=interval, what=what)


class Server:
    """A real ``python -m officegrid server`` on 127.0.0.1 with a free port."""

    def __init__(self, data_dir: Path, db: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.db = db
        self.env = clean_env(env)
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.log = data_dir.parent / f"{data_dir.name}.log"

    def start(self) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ready = self.data_dir.parent / f"ready-{uuid.uuid4().hex[:8]}.json"
        cmd = [sys.executable, "-m", "officegrid", "server", "--data-dir", str(self.data_dir),
               "--host", "127.0.0.1", "--port", "0", "--ready-file", str(ready)]
        if self.db:
            cmd += ["--db", self.db]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        _PROCS.append(self.proc)

        def is_ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n"
                                   + self.log.read_text(errors="replace")[-3000:])
            return ready.exists()

        wait_for(is_ready, 60, "the server's ready file")
        self.url = json.loads(ready.read_text())["url"]
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def client(self, **kw: Any):
        from officegrid.client import Client

        return Client(self.url, self.admin_token, **kw)

    def stop(self) -> None:
        if self.proc is not None:
            _kill(self.proc)
            with contextlib.suppress(ValueError):
                _PROCS.remove(self.proc)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Worker:
    """A real ``python -m officegrid worker`` agent process (one slot, default settings)."""

    def __init__(self, url: str, work_dir: Path, enroll: str, name: str) -> None:
        self.url = url
        self.work_dir = work_dir
        self.enroll = enroll
        self.name = name
        self.proc: subprocess.Popen | None = None
        self.log = work_dir.parent / f"{work_dir.name}.log"

    def start(self) -> Worker:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "officegrid", "worker", "--server", self.url,
               "--work-dir", str(self.work_dir), "--enroll", self.enroll, "--name", self.name]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, env=clean_env(), stdout=out,
                                         stderr=subprocess.STDOUT)
        _PROCS.append(self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _kill(self.proc, grace=20)
            with contextlib.suppress(ValueError):
                _PROCS.remove(self.proc)


def start_workers(server: Server, admin: Any, tmp: Path, n: int, tag: str) -> list[Worker]:
    """Start ``n`` worker agents and wait until each holds a session and is asking for work."""
    join = admin.create_token("enroll", uses=n)["token"]
    workers = [Worker(server.url, tmp / f"work-{tag}-{i}", join, f"{tag}-{i}").start()
               for i in range(n)]
    names = {w.name for w in workers}
    started = time.time()

    def ready() -> bool:
        for w in workers:
            assert w.proc is not None
            if w.proc.poll() is not None:
                raise RuntimeError(f"worker {w.name} exited with {w.proc.returncode}:\n"
                                   + w.log.read_text(errors="replace")[-3000:])
        rows = {r["name"]: r for r in admin.workers()}
        return all(name in rows and (rows[name]["last_seen"] or 0) >= started - 1
                   and rows[name]["state"] != "offline" for name in names)

    wait_for(ready, 90, f"{n} worker agent(s) to open their sessions", interval=0.1)
    time.sleep(0.5)  # let each slot thread reach its first (long-poll) lease request
    return workers


def keepalive_latency(url: str, n: int = 30) -> float:
    """Median seconds of ``GET /api/v1/health`` on one kept-alive connection (idle server).

    A guard against the Nagle + delayed-ACK stall (about 40 ms per request on Linux) that the
    server had until it set TCP_NODELAY on its connections (commit fa1bf7d)."""
    import httpx

    with httpx.Client(base_url=url) as h:
        h.get("/api/v1/health")
        times = []
        for _ in range(n):
            t = time.perf_counter()
            h.get("/api/v1/health").raise_for_status()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def server_line(keepalive: float, env: dict[str, str] | None = None, store: str = "") -> str:
    """A sentence on the server measured, with the keep-alive latency guard."""
    extra = (" with " + ", ".join(f"{k}={v}" for k, v in env.items())) if env else ""
    text = (f"Server: `python -m officegrid server`{store}, default settings{extra}; an idle "
            f"`GET /health` on a kept-alive connection takes {keepalive * 1000:.1f} ms "
            "(median of 30).")
    if keepalive > 0.01:
        text += (" **That is the Nagle + delayed-ACK stall (about 40 ms a request): check that "
                 "the server sets TCP_NODELAY on its connections.**")
    return text


# ----------------------------------------------------------------------------- PostgreSQL


@contextlib.contextmanager
def pg_database(url: str = PG_URL) -> Iterator[str]:
    """A fresh, empty PostgreSQL database on the machine's server; dropped afterwards."""
    from sqlalchemy import create_engine

    name = f"og_bench_{uuid.uuid4().hex[:10]}"
    eng = create_engine(url, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    base = url.rpartition("/")[0]
    try:
        yield f"{base}/{name}"
    finally:
        with eng.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        eng.dispose()


def pg_available(url: str = PG_URL) -> str | None:
    """None if PostgreSQL answers at ``url``, else why not."""
    try:
        from sqlalchemy import create_engine

        eng = create_engine(url, isolation_level="AUTOCOMMIT")
        with eng.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        eng.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"


# ----------------------------------------------------------------------------- statistics


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max) of ``values``."""
    return statistics.median(values), min(values), max(values)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest-rank."""
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, int(round(q * len(sorted_values) + 0.5)) - 1))
    return sorted_values[i]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` and its children."""
    import psutil

    try:
        proc = psutil.Process(pid)
        total = sum(proc.cpu_times()[:2])
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += sum(child.cpu_times()[:2])
        return total
    except psutil.Error:
        return float("nan")


# ----------------------------------------------------------------------------- report


def source_version() -> str:
    """The commit of the code measured, and whether src/ had uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted changes in src/' if dirty else ''}"


def machine() -> str:
    """One line describing the machine and software versions."""
    import importlib.metadata as md

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.1f} GiB RAM"
    versions = []
    for pkg in ("uvicorn", "fastapi", "httpx", "SQLAlchemy"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions.append(f"{pkg} {md.version(pkg)}")
    return (f"nproc {os.cpu_count()} ({cpu}){mem}; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}; " + ", ".join(versions)
            + f"; officegrid at {source_version()}")


HEADER = """# officegrid benchmark results

Generated by the scripts in `bench/` (see `bench/README.md`); each script rewrites only its own
sections, between `<!-- BEGIN name -->` and `<!-- END name -->` markers. Everything runs on one
machine: the server, the simulated or real workers and the load generators share its cores, and
all traffic goes over 127.0.0.1.
"""


def update_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section ``name`` of RESULTS.md with ``body``."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text if text.endswith("\n") else text + "\n")
    os.replace(tmp, path)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M %Z")


# ----------------------------------------------------------------------------- profiles


class Profiler:
    """``py-spy record`` attached to a process while the block runs (if py-spy is installed).

    Writes collapsed stacks (``--format raw``) to ``out``; :func:`summarize_profile` reads them.
    """

    def __init__(self, pid: int, out: Path, rate: int = 250, wall: bool = False) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate
        # wall=False: only samples holding the GIL (CPU of the interpreter); True: every
        # thread's stack, idle or not (wall time per thread).
        self.mode = ["--idle", "--threads"] if wall else ["--gil"]
        self.proc: subprocess.Popen | None = None
        self.error: str | None = None

    def __enter__(self) -> Profiler:
        import shutil

        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(exe).exists():
            self.error = "py-spy is not installed (pip install py-spy)"
            return self
        self.log = self.out.with_suffix(".log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [exe, "record", "--pid", str(self.pid), "--rate", str(self.rate),
                 "--format", "raw", "--output", str(self.out), "--nonblocking", *self.mode],
                stdout=log, stderr=subprocess.STDOUT)
        _PROCS.append(self.proc)
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        _kill(self.proc, signal.SIGINT, grace=30)
        with contextlib.suppress(ValueError):
            _PROCS.remove(self.proc)
        if not self.out.exists():
            self.error = self.log.read_text(errors="replace")[-500:]


# (label, markers): a sample belongs to the first category one of whose markers appears in one
# of its frames; samples matching none are grouped by the package of their innermost frame.
SERVER_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("complete + claim next (store, write tx)", ("complete.<locals>.run",)),
    ("lease claim (store, write tx)", ("try_claim",)),
    ("heartbeat (store, write tx)", ("heartbeat.<locals>.run",)),
    ("auth: token + worker lookup (store, read tx)", ("principal.<locals>.look",)),
    ("blob PUT: exists check, verify, store", ("put_blob.<locals>.verify", "ContentStore.has",
                                               "ContentStore.temp_file")),
    ("reaper", ("run_reaper", "expire (")),
    ("BEGIN/COMMIT, connection pool", ("Database.tx", "Database.read")),
]
PACKAGE_GROUPS = {
    "uvicorn": "HTTP: uvicorn + h11", "h11": "HTTP: uvicorn + h11",
    "starlette": "ASGI app: starlette + fastapi (routing, dependencies, validation)",
    "fastapi": "ASGI app: starlette + fastapi (routing, dependencies, validation)",
    "pydantic": "pydantic models", "pydantic_core": "pydantic models",
    "anyio": "thread hand-offs + event loop (anyio, asyncio, threading)",
    "asyncio": "thread hand-offs + event loop (anyio, asyncio, threading)",
    "threading": "thread hand-offs + event loop (anyio, asyncio, threading)",
    "selectors": "thread hand-offs + event loop (anyio, asyncio, threading)",
    "queue": "thread hand-offs + event loop (anyio, asyncio, threading)",
    "concurrent": "thread hand-offs + event loop (anyio, asyncio, threading)",
    "sqlalchemy": "sqlalchemy (other)", "officegrid": "officegrid (other)",
}


def _frame_package(frame: str) -> str:
    """Top-level package of a py-spy frame ``func (pkg/mod.py:12)`` (py-spy shortens paths)."""
    m = re.search(r"\(([^()]*?)(?::\d+)?\)$", frame.strip())
    path = m.group(1) if m else frame
    for marker in ("site-packages/", "/src/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return path.lstrip("/").split("/", 1)[0].removesuffix(".py") or "?"


WORKER_SLOT_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("waiting for the runner process (start-up, imports, the unit, exit)",
     ("RunnerProcess.read_message", "RunnerProcess.wait")),
    ("process-tree scans and kill after the unit (psutil)",
     ("RunnerProcess.kill_tree", "RunnerProcess.close", "RunnerProcess.tree")),
    ("starting the runner (fork/exec, priority)", ("spawn_runner",)),
    ("HTTP: download the unit's input", ("Client.get_blob",)),
    ("HTTP: upload result and log blobs", ("Client.put_blob",)),
    ("HTTP: complete (+ next lease)", ("Client.complete",)),
    ("release check (materialize)", ("_ensure_release",)),
    ("attempt files (spec, input, clean-up)", ("rmtree", "write_bytes", "write_text", "mkdir")),
    ("result summary, log encoding, resources", ("_summarize", "encode_logs", "_resources")),
]


def profile_breakdown(raw: Path, categories: list[tuple[str, tuple[str, ...]]] | None = None,
                      only: str | None = None, skip: str | None = None
                      ) -> tuple[int, list[tuple[str, float]]]:
    """(samples, [(category, % of samples)]) of a py-spy raw profile, largest first.

    ``only``: count only stacks with a frame containing this text (e.g. one thread's loop);
    ``skip``: ignore stacks containing this text (e.g. an idle long poll).
    """
    cats = SERVER_CATEGORIES if categories is None else categories
    counts: dict[str, int] = {}
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        if (only is not None and only not in stack) or (skip is not None and skip in stack):
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        label = next((lab for lab, marks in cats
                      if any(m in f for f in frames for m in marks)), None)
        if label is None:
            pkg = _frame_package(frames[-1])
            label = PACKAGE_GROUPS.get(pkg, f"other ({pkg})")
        counts[label] = counts.get(label, 0) + n
    if not total:
        return 0, []
    return total, [(k, 100.0 * v / total) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])]


def store_breakdown(raw: Path, marker: str, top: int = 8) -> list[tuple[str, float]]:
    """Within samples whose stack holds ``marker``: the officegrid store function called next
    (e.g. ``claim``, ``complete > finalize_job``), as % of all samples."""
    counts: dict[str, int] = {}
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        idx = next((i for i, f in enumerate(frames) if marker in f), None)
        if idx is None:
            continue
        inner = [f.strip().split(" (", 1)[0] for f in frames[idx + 1:]
                 if "officegrid/server/store" in f]
        label = " > ".join(inner[:2]) or "(route code, sqlalchemy building statements)"
        counts[label] = counts.get(label, 0) + n
    if not total:
        return []
    return [(k, 100.0 * v / total)
            for k, v in sorted(counts.items(), key=lambda kv: -kv[1])][:top]


# ----------------------------------------------------------------------------- machine load


def _tree_cpu() -> float:
    """CPU seconds of this process and all its live descendants, including their reaped
    children (so exited runners and serial loops count)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def _postgres_cpu() -> float:
    """CPU seconds of the local PostgreSQL server's processes (its backends serve our server:
    counted apart, not as other people's load)."""
    import psutil

    total = 0.0
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in ("postgres", "postmaster"):
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system
    return total


def _system_busy() -> float:
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + \
        getattr(t, "steal", 0)


class LoadMeter:
    """CPU used by this benchmark's process tree vs by everything else on the machine.

    ``with LoadMeter() as m: ...`` then ``m.ours``, ``m.postgres`` and ``m.others`` in cores
    (CPU seconds per second of wall time). ``postgres`` is the local PostgreSQL server (it works
    for our server in the PostgreSQL runs); ``others`` is what everything else (other people's
    tests, builds) took from the same cores: the main source of noise on a shared machine.
    """

    def __enter__(self) -> LoadMeter:
        self.t0, self.sys0, self.tree0 = time.monotonic(), _system_busy(), _tree_cpu()
        self.pg0 = _postgres_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(1e-6, time.monotonic() - self.t0)
        tree = _tree_cpu() - self.tree0
        pg = max(0.0, _postgres_cpu() - self.pg0)
        busy = _system_busy() - self.sys0
        self.ours = tree / wall
        self.postgres = pg / wall
        self.others = max(0.0, (busy - tree - pg) / wall)


def wait_quiet(threshold: float = 0.3, max_wait: float = 60.0, window: float = 0.5) -> float:
    """Wait (up to ``max_wait`` s) until other processes use less than ``threshold`` cores over
    a ``window``; return the last measured foreign load (cores). ``max_wait`` <= 0: no wait."""
    if max_wait <= 0:
        return float("nan")
    deadline = time.monotonic() + max_wait
    while True:
        with LoadMeter() as m:
            time.sleep(window)
        if m.others < threshold or time.monotonic() > deadline:
            return m.others
