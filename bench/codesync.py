"""codesync: officegrid release sync against ``rsync -az --delete`` from an rsync daemon.

Usage::

    .venv/bin/python bench/codesync.py [--quick] [--runs N] [--trees source,csv,random]
                                       [--keep] [--no-write] [--results FILE]

Three trees are synced through the same kind of counting TCP proxy on 127.0.0.1, once with
officegrid (a real ``officegrid server`` process; the "worker" side is
``officegrid.sync.materialize.pull_into`` in this process with a persistent chunk cache) and once
with ``rsync -az --delete rsync://127.0.0.1:PROXY/module/ dest/`` (a real ``rsync --daemon``):

* ``source``: ~2,000 files / ~50 MB copied from the sources of installed packages;
* ``csv``: one ~200 MB CSV of generated customers (compressible);
* ``random``: one 200 MB file of random bytes.

(``--quick``: about a fifth of every size.) Scenarios: first sync into an empty directory, no
change, a one-line edit, 1 MiB inserted in the middle of a file, a directory renamed, and (source
tree) 10 % of the files edited. Each scenario is repeated ``--runs`` times, the destination (and
the officegrid chunk cache) being put back into the previous state before each repetition;
times are medians, bytes are those of the last repetition (they are deterministic; a difference
between repetitions is reported). After every sync the destination must equal the source tree
(paths, contents, executable bit), else the run fails loudly.

The script rewrites its own section of ``bench/RESULTS.md`` (between ``<!-- BEGIN codesync -->``
and ``<!-- END codesync -->``) and kills every process it started, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import blake3

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))

from grid import ServerProc  # noqa: E402  (tests/grid.py: a real server on 127.0.0.1)
from officegrid import cas  # noqa: E402
from officegrid.cli.release import publish  # noqa: E402
from officegrid.client import Client  # noqa: E402
from officegrid.protocol import FETCH_DELTA  # noqa: E402
from officegrid.sync import manifest as mf  # noqa: E402
from officegrid.sync import materialize  # noqa: E402
from officegrid.sync.materialize import pull_into  # noqa: E402
from officegrid.sync.tree import PULL_MARKER  # noqa: E402
from officegrid.worker import fetch as fetch_mod  # noqa: E402
from officegrid.worker.fetch import blob_fetcher  # noqa: E402

RESULTS = BENCH / "RESULTS.md"
SECTION = "codesync"
SITE = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / \
    "site-packages"
MiB = 1 << 20

# Packages copied into the source tree, in order of preference (large pure-Python code bases,
# plus cryptography for the compiled extension modules a real code release also carries).
PACKAGES = ["sqlalchemy", "faker", "pip", "pygments", "cryptography", "rich", "pydantic",
            "hypothesis", "_pytest", "setuptools", "alembic", "fastapi", "psycopg", "typer",
            "click", "anyio", "httpx", "uvicorn", "starlette", "mako", "fastcdc", "packaging"]

BARS = ("first sync: bytes <= 1.02x rsync's; updates: bytes <= rsync's; no change: <= 4,096 "
        "bytes; every scenario: time <= 1.5x rsync's")


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as fh:
        vals = [int(x) for x in fh.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals) - idle, sum(vals)


def proc_cpu(pid: int) -> float:
    """CPU seconds of a live process and its reaped children."""
    import psutil

    with contextlib.suppress(psutil.Error):
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system + t.children_user + t.children_system
    return 0.0


def log(msg: str) -> None:
    print(f"[codesync {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- counting proxy


class CountingProxy:
    """A TCP proxy on 127.0.0.1 in front of ``127.0.0.1:target_port`` that counts the payload
    bytes it forwards in each direction (TCP/IP headers not counted, for both tools alike).

    TCP_NODELAY is set on both legs so the proxy adds no Nagle delays of its own.
    """

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.up = 0  # client -> server
        self.down = 0  # server -> client
        self.active = 0
        self._cv = threading.Condition()
        self._socks: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def counters(self) -> tuple[int, int]:
        with self._cv:
            return self.up, self.down

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until every proxied connection is closed (so every byte has been counted)."""
        with self._cv:
            if not self._cv.wait_for(lambda: self.active == 0, timeout):
                raise TimeoutError(f"proxy on port {self.port}: {self.active} connections open")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        with self._cv:
            socks = list(self._socks)
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            state = {"open": 2}
            with self._cv:
                self.active += 1
                self._socks.update((client, server))
            for src, dst, up in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, up, state, (client, server)),
                                 daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool, state: dict,
              pair: tuple[socket.socket, socket.socket]) -> None:
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        try:
            while True:
                n = src.recv_into(buf)
                if n == 0:
                    break
                with self._cv:
                    if up:
                        self.up += n
                    else:
                        self.down += n
                dst.sendall(view[:n])
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            with self._cv:
                state["open"] -= 1
                if state["open"] == 0:
                    for s in pair:
                        with contextlib.suppress(OSError):
                            s.close()
                        self._socks.discard(s)
                    self.active -= 1
                    self._cv.notify_all()


# ----------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)


class RsyncDaemon:
    """``rsync --daemon --no-detach`` on 127.0.0.1 with one read-only module per tree."""

    def __init__(self, work: Path, modules: dict[str, Path]) -> None:
        self.work = work
        self.modules = modules
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def start(self) -> RsyncDaemon:
        self.work.mkdir(parents=True, exist_ok=True)
        lines = [f"pid file = {self.work / 'rsyncd.pid'}", f"lock file = {self.work / 'lock'}",
                 f"log file = {self.work / 'rsyncd.log'}", "use chroot = no",
                 "address = 127.0.0.1"]
        if os.getuid() == 0:
            lines += ["uid = 0", "gid = 0"]
        for name, path in self.modules.items():
            lines += [f"[{name}]", f"    path = {path}", "    read only = yes"]
        conf = self.work / "rsyncd.conf"
        conf.write_text("\n".join(lines) + "\n")
        for _ in range(5):
            self.port = free_port()
            self.proc = subprocess.Popen(
                ["rsync", "--daemon", "--no-detach", "--address", "127.0.0.1", "--port",
                 str(self.port), "--config", str(conf)],
                stdout=subprocess.DEVNULL, stderr=open(self.work / "stderr.log", "ab"))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                with contextlib.suppress(OSError), socket.create_connection(
                        ("127.0.0.1", self.port), timeout=1):
                    return self
                time.sleep(0.05)
            stop_process(self.proc)
        raise RuntimeError("rsync daemon did not start: "
                           + (self.work / "stderr.log").read_text(errors="replace")[-2000:])

    def stop(self) -> None:
        stop_process(self.proc)


# ----------------------------------------------------------------------------- trees


def file_blake3(path: Path) -> str:
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with open(path, "rb") as fh:
        while piece := fh.read(8 * MiB):
            h.update(piece)
    return h.hexdigest()


def snapshot(root: Path, skip_top: frozenset[str] = frozenset()) -> dict[str, tuple]:
    """path -> ('dir',) | ('file', blake3, executable) | ('other',) for everything under root."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == "." else rel.replace(os.sep, "/")
        if not rel:
            dirnames[:] = [d for d in dirnames if d not in skip_top]
            filenames = [f for f in filenames if f not in skip_top]
        for d in dirnames:
            out[f"{rel}/{d}/" if rel else f"{d}/"] = ("dir",)
        for f in filenames:
            p = Path(dirpath, f)
            key = f"{rel}/{f}" if rel else f
            st = os.lstat(p)
            if os.path.islink(p) or not os.path.isfile(p):
                out[key] = ("other",)
            else:
                out[key] = ("file", file_blake3(p), bool(st.st_mode & 0o100))
    return out


def compare(expected: dict[str, tuple], actual: dict[str, tuple]) -> list[str]:
    problems = []
    for k in sorted(expected.keys() - actual.keys())[:5]:
        problems.append(f"missing {k}")
    for k in sorted(actual.keys() - expected.keys())[:5]:
        problems.append(f"extra {k}")
    for k in sorted(expected.keys() & actual.keys()):
        if expected[k] != actual[k] and len(problems) < 10:
            problems.append(f"differs {k}: {actual[k]} != {expected[k]}")
    return problems


def tree_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def pick_packages(target_files: int, target_bytes: int) -> list[tuple[str, int, int]]:
    chosen: list[tuple[str, int, int]] = []
    files = size = 0
    for name in PACKAGES:
        d = SITE / name
        if not d.is_dir():
            continue
        items = [p for p in d.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                 and not p.name.endswith(".pyc")]
        n, s = len(items), sum(p.stat().st_size for p in items)
        if files + n > 1.2 * target_files or size + s > 1.2 * target_bytes:
            continue
        chosen.append((name, n, s))
        files, size = files + n, size + s
        if files >= 0.9 * target_files and size >= 0.8 * target_bytes:
            break
    return chosen


def build_source_tree(root: Path, target_files: int, target_bytes: int) -> str:
    chosen = pick_packages(target_files, target_bytes)
    root.mkdir(parents=True)
    for name, _n, _s in chosen:
        shutil.copytree(SITE / name, root / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), symlinks=False)
    files = tree_files(root)
    return (f"{len(files):,} files, {sum(p.stat().st_size for p in files) / MiB:.1f} MiB from "
            + ", ".join(n for n, _, _ in chosen))


def build_csv_tree(root: Path, size: int) -> str:
    from officegrid.demo.data import generate_customers

    path = root / "data" / "customers.csv"
    n = max(1000, size // 111)  # about 111 bytes per generated record
    generate_customers(path, n=n)
    return f"data/customers.csv: {n:,} generated customers, {path.stat().st_size / MiB:.1f} MiB"


def build_random_tree(root: Path, size: int) -> str:
    path = root / "data" / "random.bin"
    path.parent.mkdir(parents=True)
    rng = random.Random(20261129)
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, 8 * MiB)
            fh.write(rng.randbytes(n))
            left -= n
    return f"data/random.bin: {size / MiB:.0f} MiB of random bytes"


def python_text(rng: random.Random, size: int) -> bytes:
    """About ``size`` bytes of Python-looking source lines (compressible like real code)."""
    words = ["value", "config", "result", "handler", "record", "index", "buffer", "state",
             "client", "server", "update", "return", "lambda", "default", "offset", "token"]
    out = bytearray()
    i = 0
    while len(out) < size:
        w = rng.sample(words, 3)
        out += (f"    _{w[0]}_{i:06d} = {w[1]}({w[2]!r}, {rng.randrange(10**6)})"
                f"  # {rng.getrandbits(32):08x}\n").encode()
        i += 1
    return bytes(out[:size].rsplit(b"\n", 1)[0] + b"\n")


def edit_line(path: Path, tag: str) -> None:
    """Change one line in the middle of a text file (appends a comment), or 16 bytes in the
    middle of a binary file."""
    data = path.read_bytes()
    if b"\x00" in data[:8192] or b"\n" not in data:
        mid = len(data) // 2
        path.write_bytes(data[:mid] + blake3.blake3(tag.encode()).digest()[:16]
                         + data[mid + 16:])
        return
    lines = data.split(b"\n")
    i = len(lines) // 2
    lines[i] += f"  # {tag}".encode()
    path.write_bytes(b"\n".join(lines))


def insert_middle(path: Path, blob: bytes, at_line: bool) -> None:
    data = path.read_bytes()
    mid = len(data) // 2
    if at_line:
        nl = data.find(b"\n", mid)
        mid = len(data) if nl < 0 else nl + 1
    path.write_bytes(data[:mid] + blob + data[mid:])


def closest_file(root: Path, size: int, suffix: str, avoid: set[Path]) -> Path:
    files = [p for p in tree_files(root) if p.suffix == suffix and p not in avoid]
    return min(files, key=lambda p: (abs(p.stat().st_size - size), str(p)))


def rename_candidate(root: Path, share: float) -> Path:
    """The directory (below the top level) whose file count is closest to ``share`` of all."""
    total = len(tree_files(root))
    best: tuple[float, str, Path] | None = None
    for d in sorted(p for p in root.rglob("*") if p.is_dir()):
        if d.parent == root:
            continue
        n = sum(1 for p in d.rglob("*") if p.is_file())
        key = (abs(n - share * total), str(d), d)
        if best is None or key < best:
            best = key
    assert best is not None
    return best[2]


@dataclass
class Change:
    """What a scenario did to the tree: a description and the files edited (for estimates)."""

    what: str
    edited: list[str] = field(default_factory=list)


@dataclass
class TreeSpec:
    name: str
    root: Path
    kind: str  # source | csv | random
    description: str = ""


def scenarios_for(spec: TreeSpec) -> list[tuple[str, Callable[[], Change] | None]]:
    root = spec.root
    rng = random.Random(f"codesync-{spec.name}")
    rel = lambda p: str(p.relative_to(root))  # noqa: E731
    state: dict[str, Path] = {}

    if spec.kind == "source":
        def one_line() -> Change:
            p = closest_file(root, 24_000, ".py", set())
            state["edited"] = p
            edit_line(p, "codesync one-line edit")
            return Change(f"one line of {rel(p)} ({p.stat().st_size:,} B)", [rel(p)])

        def insert() -> Change:
            p = closest_file(root, 100_000, ".py", {state.get("edited", root)})
            old = p.stat().st_size
            insert_middle(p, python_text(rng, MiB), at_line=True)
            return Change(f"1 MiB of new code lines into {rel(p)} ({old:,} B)", [rel(p)])

        def rename() -> Change:
            d = rename_candidate(root, 0.05)
            n = sum(1 for p in d.rglob("*") if p.is_file())
            d.rename(d.with_name(d.name + "_renamed"))
            return Change(f"{rel(d)}/ -> {d.name}_renamed/ ({n} files)")

        def ten_percent() -> Change:
            files = tree_files(root)
            picked = rng.sample(files, round(0.1 * len(files)))
            for p in picked:
                edit_line(p, "codesync 10% edit")
            return Change(f"{len(picked)} of {len(files)} files: one line each (16 B in "
                          "binaries)", [rel(p) for p in picked])

        return [("first sync", None), ("no change", lambda: Change("nothing")),
                ("one-line edit", one_line), ("1 MiB insert", insert),
                ("dir renamed", rename), ("10% files", ten_percent)]

    data_dir = root / "data"

    def big() -> Path:
        return next(p for p in tree_files(root))

    if spec.kind == "csv":
        def one_line() -> Change:
            p = big()
            data = p.read_bytes()
            start = data.find(b"\n", len(data) // 2) + 1
            end = data.find(b"\n", start)
            line = data[start:end]
            fields = line.split(b",")
            fields[1] = fields[1] + b"-Marie"
            p.write_bytes(data[:start] + b",".join(fields) + data[end:])
            return Change(f"one CSV record in the middle of {rel(p)} (+6 B)", [rel(p)])

        def insert() -> Change:
            from officegrid.demo.data import generate_customers

            p = big()
            tmp = p.parent.parent.parent / f".{spec.name}-insert.csv"
            generate_customers(tmp, n=MiB // 100, seed=7)
            rows = tmp.read_bytes().split(b"\n", 1)[1]
            tmp.unlink()
            blob = rows[:MiB].rsplit(b"\n", 1)[0] + b"\n"
            insert_middle(p, blob, at_line=True)
            return Change(f"{len(blob):,} B of new CSV records into the middle of {rel(p)}",
                          [rel(p)])
    else:
        def one_line() -> Change:
            p = big()
            with open(p, "r+b") as fh:
                fh.seek(p.stat().st_size // 2)
                fh.write(rng.randbytes(64))
            return Change(f"64 B overwritten in the middle of {rel(p)}", [rel(p)])

        def insert() -> Change:
            p = big()
            insert_middle(p, rng.randbytes(MiB), at_line=False)
            return Change(f"1 MiB of random bytes into the middle of {rel(p)}", [rel(p)])

    def rename() -> Change:
        data_dir.rename(root / "data_renamed")
        return Change("data/ -> data_renamed/")

    return [("first sync", None), ("no change", lambda: Change("nothing")),
            ("one-line edit", one_line), ("1 MiB insert", insert), ("dir renamed", rename)]


# ----------------------------------------------------------------------------- syncing


@dataclass
class OgRun:
    seconds: float
    up: int
    down: int
    net_seconds: float = 0.0
    fetch_calls: int = 0
    requests: int = 0
    manifests: int = 0
    manifest_frame_bytes: int = 0
    deltas: int = 0  # blobs received as deltas against a version the cache held
    chunks: int = 0
    chunk_frame_bytes: int = 0
    files_written: int = 0
    fsync: bool = True
    assemble_seconds: float = 0.0  # pull_into writing changed files + making them durable
    remove_seconds: float = 0.0  # removing paths that are not in the release
    cache_put_seconds: float = 0.0  # ContentStore.put of fetched blobs (compress, no fsync)
    fetched: list[tuple[str, int]] = field(default_factory=list, repr=False)
    release: str = ""
    cpu_seconds: float = 0.0  # worker side (this thread) + server process

    def rest_seconds(self) -> float:
        return (self.seconds - self.net_seconds - self.assemble_seconds - self.remove_seconds
                - self.cache_put_seconds)


@dataclass
class RsRun:
    seconds: float
    up: int
    down: int
    cpu_seconds: float = 0.0  # rsync client + daemon-side process


@dataclass
class Result:
    tree: str
    scenario: str
    change: str
    og: list[OgRun] = field(default_factory=list)
    rs: list[RsRun] = field(default_factory=list)
    og_nofsync: list[OgRun] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    publish_seconds: float = 0.0

    def og_s(self) -> float:
        return statistics.median(r.seconds for r in self.og)

    def rs_s(self) -> float:
        return statistics.median(r.seconds for r in self.rs)


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.server: ServerProc | None = None
        self.og_proxy: CountingProxy | None = None
        self.rs_proxy: CountingProxy | None = None
        self.daemon: RsyncDaemon | None = None
        self.token = ""
        self.results: list[Result] = []
        self.notes: list[str] = []
        self.rsync_compress = "?"

    # -- officegrid side

    def og_sync(self, dest: Path, store: cas.ContentStore, fsync: bool = True) -> OgRun:
        assert self.og_proxy is not None
        proxy = self.og_proxy
        up0, down0 = proxy.counters()
        client = Client(f"http://127.0.0.1:{proxy.port}", self.token)
        fetched: list[tuple[str, int]] = []
        timing = {"net": 0.0, "calls": 0, "requests": 0, "deltas": 0}
        orig_stream, orig_request = fetch_mod.stream_blobs, client.request

        def stream_blobs(c: Client, hashes: list[str], bases: dict[str, str] | None = None
                         ) -> Iterator[tuple[str, int, bytes]]:
            # Time only the waits for the next blob (the consumer's work happens in between).
            timing["calls"] += 1
            items = orig_stream(c, hashes, bases)
            while True:
                t = time.perf_counter()
                try:
                    digest, kind, frame = next(items)
                except StopIteration:
                    timing["net"] += time.perf_counter() - t
                    return
                timing["net"] += time.perf_counter() - t
                fetched.append((digest, len(frame)))
                timing["deltas"] += kind == FETCH_DELTA
                yield digest, kind, frame

        def request(*a, **kw):  # type: ignore[no-untyped-def]
            timing["requests"] += 1
            return orig_request(*a, **kw)

        fetch_mod.stream_blobs = stream_blobs  # type: ignore[assignment]
        client.request = request  # type: ignore[method-assign]
        saved_fsync = os.fsync
        # write tree = assembling files from chunks + making them durable; remove = extras
        spent = {"_write_file": 0.0, "_make_durable": 0.0, "_remove": 0.0}
        saved = {name: getattr(materialize, name) for name in spent}  # module functions

        def timed(name: str) -> Callable:
            def wrapper(*a, **kw):  # type: ignore[no-untyped-def]
                t = time.perf_counter()
                try:
                    return saved[name](*a, **kw)
                finally:
                    spent[name] += time.perf_counter() - t
            return wrapper

        put = store.put

        def timed_put(data: bytes) -> str:
            t = time.perf_counter()
            try:
                return put(data)
            finally:
                spent["put"] += time.perf_counter() - t

        spent["put"] = 0.0
        store.put = timed_put  # type: ignore[method-assign]
        os.sync()  # start every timed sync without dirty pages left by earlier steps
        try:
            for name in spent:
                setattr(materialize, name, timed(name))
            saved_syncfs = materialize._SYNCFS
            if not fsync:
                os.fsync = lambda fd: None
                materialize._SYNCFS = lambda fd: 0
            assert self.server is not None and self.server.proc is not None
            server_cpu0 = proc_cpu(self.server.proc.pid)
            cpu0 = time.thread_time()
            t0 = time.perf_counter()
            t = time.perf_counter()
            rid = client.release("worker")["id"]
            timing["net"] += time.perf_counter() - t
            stats = pull_into(rid, dest, cache=store, fetch=blob_fetcher(client, store))
            seconds = time.perf_counter() - t0
            cpu = time.thread_time() - cpu0
        finally:
            os.fsync = saved_fsync
            fetch_mod.stream_blobs = orig_stream  # type: ignore[assignment]
            materialize._SYNCFS = saved_syncfs
            for name, fn in saved.items():
                setattr(materialize, name, fn)
            del store.put
            client.close()
        proxy.wait_idle()
        cpu += proc_cpu(self.server.proc.pid) - server_cpu0
        up1, down1 = proxy.counters()
        manifests: set[str] = {rid}
        for _path, entries in mf.walk(rid, store.read):
            manifests.update(e.hash for e in entries if isinstance(e, mf.DirEntry))
        run = OgRun(seconds=seconds, up=up1 - up0, down=down1 - down0, net_seconds=timing["net"],
                    fetch_calls=int(timing["calls"]), requests=int(timing["requests"]),
                    files_written=stats.files_written, fsync=fsync,
                    assemble_seconds=spent["_write_file"] + spent["_make_durable"],
                    remove_seconds=spent["_remove"],
                    cache_put_seconds=spent["put"],
                    fetched=fetched, release=rid, cpu_seconds=cpu,
                    deltas=int(timing["deltas"]))
        for h, n in fetched:
            if h in manifests:
                run.manifests += 1
                run.manifest_frame_bytes += n
            else:
                run.chunks += 1
                run.chunk_frame_bytes += n
        return run

    # -- rsync side

    def rs_sync(self, module: str, dest: Path) -> RsRun:
        assert self.rs_proxy is not None
        proxy = self.rs_proxy
        up0, down0 = proxy.counters()
        os.sync()
        cmd = ["rsync", "-az", "--delete", f"rsync://127.0.0.1:{proxy.port}/{module}/",
               f"{dest}/"]
        assert self.daemon is not None and self.daemon.proc is not None
        daemon_cpu0 = self.daemon_cpu()
        c0 = os.times()
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        c1 = os.times()
        if res.returncode != 0:
            raise RuntimeError(f"rsync failed ({res.returncode}): {res.stderr[-2000:]}")
        proxy.wait_idle()
        cpu = (c1.children_user - c0.children_user + c1.children_system - c0.children_system
               + self.daemon_cpu() - daemon_cpu0)
        up1, down1 = proxy.counters()
        return RsRun(seconds=seconds, up=up1 - up0, down=down1 - down0, cpu_seconds=cpu)

    def daemon_cpu(self) -> float:
        """CPU seconds of the rsync daemon and its reaped per-connection children, once no
        child is left (the daemon reaps them asynchronously)."""
        import psutil

        assert self.daemon is not None and self.daemon.proc is not None
        deadline = time.monotonic() + 10
        with contextlib.suppress(psutil.Error):
            daemon = psutil.Process(self.daemon.proc.pid)
            while daemon.children() and time.monotonic() < deadline:
                time.sleep(0.01)
        return proc_cpu(self.daemon.proc.pid)

    # -- one tree

    def run_tree(self, spec: TreeSpec) -> None:
        args = self.args
        assert self.server is not None
        publisher = Client(self.server.url, self.token)
        og_dest = self.work / "dest" / spec.name / "og"
        rs_dest = self.work / "dest" / spec.name / "rsync"
        og_base = og_dest.with_name("og-base")
        rs_base = rs_dest.with_name("rsync-base")
        og_dest.parent.mkdir(parents=True)
        # as `officegrid release pull` and the worker keep it: verified on read, not fsynced
        store = cas.ContentStore(self.work / "cache" / spec.name, durable=False)
        try:
            for scenario, mutate in scenarios_for(spec):
                change = mutate() if mutate else Change("into an empty directory")
                res = Result(spec.name, scenario, change.what)
                if scenario != "no change":
                    t = time.perf_counter()
                    publish(publisher, spec.root, "worker", show_progress=False)
                    res.publish_seconds = time.perf_counter() - t
                expected = snapshot(spec.root)
                if og_dest.exists():
                    og_dest.rename(og_base)
                    rs_dest.rename(rs_base)
                cache_before = set(cache_files(store.root))
                runs = args.runs
                for _ in range(runs):
                    restore((og_dest, og_base), (rs_dest, rs_base))
                    drop_new(store.root, cache_before)
                    og = self.og_sync(og_dest, store)
                    problems = compare(expected, snapshot(og_dest, frozenset({PULL_MARKER})))
                    if problems:
                        res.failures.append("officegrid: " + "; ".join(problems))
                    res.og.append(og)
                    rs = self.rs_sync(spec.name, rs_dest)
                    problems = compare(expected, snapshot(rs_dest))
                    if problems:
                        res.failures.append("rsync: " + "; ".join(problems))
                    res.rs.append(rs)
                    if scenario in args.nofsync:  # interleaved, so both see the same load
                        restore((og_dest, og_base))
                        drop_new(store.root, cache_before)
                        og = self.og_sync(og_dest, store, fsync=False)
                        problems = compare(expected,
                                           snapshot(og_dest, frozenset({PULL_MARKER})))
                        if problems:
                            res.failures.append("officegrid (no fsync): " + "; ".join(problems))
                        res.og_nofsync.append(og)
                for base in (og_base, rs_base):
                    if base.exists():
                        shutil.rmtree(base)
                self.results.append(res)
                og, rs = res.og[-1], res.rs[-1]
                log(f"{spec.name:7s} {scenario:14s} officegrid {fmt_b(og.up + og.down):>10s} "
                    f"{res.og_s():6.2f}s | rsync {fmt_b(rs.up + rs.down):>10s} "
                    f"{res.rs_s():6.2f}s" + ("  FAILED: " + res.failures[0]
                                             if res.failures else ""))
                if res.failures:
                    for f in res.failures:
                        print(f"!!! {spec.name} / {scenario}: sync did not reproduce the tree: "
                              f"{f}", file=sys.stderr, flush=True)
        finally:
            publisher.close()
        if spec.kind == "source":
            self.cli_startup(og_dest, store)

    # -- a release whose blobs do not fit one fetch batch

    def batch_check(self) -> None:
        """Publish 200 incompressible files of 400 kB (80 MB) and pull them: one fetch batch
        of `pull_into` (256 hashes) then holds more than the server's 64 MiB answer limit."""
        assert self.server is not None
        root = self.work / "trees" / "assets"
        root.mkdir(parents=True)
        rng = random.Random(413)
        for i in range(200):
            (root / f"asset{i:03d}.bin").write_bytes(rng.randbytes(400_000))
        with Client(self.server.url, self.token) as c:
            publish(c, root, "assets", show_progress=False)
            rid = c.release("assets")["id"]
            t = time.perf_counter()
            try:
                pull_into(rid, self.work / "dest" / "assets",
                          cache=cas.ContentStore(self.work / "cache" / "assets", durable=False),
                          fetch=blob_fetcher(c))
                outcome = f"pulled in {time.perf_counter() - t:.2f} s"
            except Exception as exc:  # reported, not fatal: it is what this check looks for
                outcome = f"**FAILED**: {type(exc).__name__}: {exc}"
        shutil.rmtree(root)
        self.batch_outcome = outcome
        log(f"batch check (200 x 400 kB incompressible files): {outcome}")

    # -- CLI start-up, once

    def cli_startup(self, og_dest: Path, store: cas.ContentStore) -> None:
        assert self.og_proxy is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("OFFICEGRID_")}
        py = sys.executable

        def wall(cmd: list[str]) -> float:
            times = []
            for _ in range(3):
                t = time.perf_counter()
                subprocess.run(cmd, env=env, check=True, capture_output=True)
                times.append(time.perf_counter() - t)
            return statistics.median(times)

        bare = wall([py, "-c", "pass"])
        helptime = wall([py, "-m", "officegrid", "release", "pull", "--help"])
        rsync_v = wall(["rsync", "--version"])
        t = time.perf_counter()
        subprocess.run([py, "-m", "officegrid", "release", "pull", "worker", "--to",
                        str(og_dest), "--cache", str(store.root), "--server",
                        f"http://127.0.0.1:{self.og_proxy.port}", "--token", self.token],
                       env=env, check=True, capture_output=True)
        cli_pull = time.perf_counter() - t
        self.og_proxy.wait_idle()
        self.startup = (bare, helptime, rsync_v, cli_pull)

    # -- everything

    def run(self) -> int:
        args = self.args
        quick = args.quick
        trees_dir = self.work / "trees"
        specs: list[TreeSpec] = []
        big = (40 if quick else 200) * MiB
        for name in args.trees:
            spec = TreeSpec(name, trees_dir / name, name)
            t = time.perf_counter()
            if name == "source":
                spec.description = build_source_tree(spec.root, 400 if quick else 2000,
                                                     (10 if quick else 50) * MiB)
            elif name == "csv":
                spec.description = build_csv_tree(spec.root, big)
            else:
                spec.description = build_random_tree(spec.root, big)
            log(f"tree {name}: {spec.description} ({time.perf_counter() - t:.1f}s)")
            specs.append(spec)
        self.daemon = RsyncDaemon(self.work / "rsyncd", {s.name: s.root for s in specs}).start()
        self.rs_proxy = CountingProxy(self.daemon.port)
        self.server = ServerProc(self.work / "server" / "data").start()
        self.token = self.server.admin_token
        self.og_proxy = CountingProxy(self.server.port)
        self.rsync_compress = negotiated_compression(self.rs_proxy.port, specs[0].name)
        self.rs_proxy.wait_idle()
        self.specs = specs
        busy0, total0 = busy_jiffies()
        own0 = self.own_cpu()
        t0 = time.perf_counter()
        for spec in specs:
            self.run_tree(spec)
        if not args.no_batch_check:
            self.batch_check()
        busy1, total1 = busy_jiffies()
        wall = time.perf_counter() - t0
        machine = (busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1) * wall
        self.load = (wall, machine, self.own_cpu() - own0)
        return 1 if any(r.failures for r in self.results) else 0

    def own_cpu(self) -> float:
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        for proc in (self.server.proc if self.server else None,
                     self.daemon.proc if self.daemon else None):
            if proc is not None:
                own += proc_cpu(proc.pid)
        return own

    def close(self) -> None:
        for proxy in (self.og_proxy, self.rs_proxy):
            if proxy is not None:
                proxy.close()
        if self.server is not None:
            self.server.stop()
        if self.daemon is not None:
            self.daemon.stop()


def restore(*pairs: tuple[Path, Path]) -> None:
    """Make each ``dest`` the directory its previous sync left (``base``), or absent.

    Hard links (``cp -al``): the same inodes, sizes, modes and mtimes the previous sync left,
    which both tools' quick checks look at. Neither writes into an existing file (rsync and
    officegrid both write a temporary file and rename it), so ``base`` stays intact.
    """
    for dest, base in pairs:
        if dest.exists():
            shutil.rmtree(dest)
        if base.exists():
            subprocess.run(["cp", "-al", str(base), str(dest)], check=True)


def cache_files(root: Path) -> Iterator[str]:
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            yield os.path.join(dirpath, f)


def drop_new(root: Path, before: set[str]) -> None:
    for f in list(cache_files(root)):
        if f not in before:
            os.unlink(f)


def negotiated_compression(port: int, module: str) -> str:
    res = subprocess.run(["rsync", "-az", "--dry-run", "--debug=NSTR",
                          f"rsync://127.0.0.1:{port}/{module}/", "/nonexistent-codesync/"],
                         capture_output=True, text=True)
    for line in (res.stdout + res.stderr).splitlines():
        if "compress" in line.lower():
            return line.strip()
    return "?"


# ----------------------------------------------------------------------------- report


def fmt_b(n: float) -> str:
    if n < 10_000:
        return f"{n:,.0f} B"
    if n < 10_000_000:
        return f"{n / 1000:,.1f} KB"
    return f"{n / 1e6:,.1f} MB"


def machine_line() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    rsync = subprocess.run(["rsync", "--version"], capture_output=True, text=True).stdout
    rsync_v = rsync.splitlines()[0] if rsync else "?"
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "src"],
                           capture_output=True, text=True).stdout.strip()
    fs = subprocess.run(["df", "-T", tempfile.gettempdir()], capture_output=True,
                        text=True).stdout.splitlines()[-1].split()[1]
    return (f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, "
            f"Python {platform.python_version()}, {rsync_v.replace('  ', ' ')}, "
            f"scratch on {fs}; officegrid {commit}{' (src modified)' if dirty else ''}")


def bar_bytes(r: Result) -> tuple[bool, str]:
    og = r.og[-1].up + r.og[-1].down
    rs = r.rs[-1].up + r.rs[-1].down
    if r.scenario == "no change":
        return og <= 4096, "<= 4,096 B"
    if r.scenario == "first sync":
        return og <= 1.02 * rs, "<= 1.02x"
    return og <= rs, "<= 1x"


def med(values: Iterator[float]) -> float:
    return statistics.median(list(values))


def mark(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def report(bench: Bench, seconds: float) -> str:
    args = bench.args
    res = bench.results
    cmd = "python bench/codesync.py" + (" --quick" if args.quick else "")
    out = [f"## Code sync: officegrid vs `rsync -az --delete` (`{cmd}`)", ""]
    out.append(f"Run {time.strftime('%Y-%m-%d %H:%M')} in {seconds / 60:.1f} min on "
               f"{machine_line()}. rsync negotiated: `{bench.rsync_compress}`.")
    if hasattr(bench, "load"):
        wall, machine, own = bench.load
        out.append(f"Load during the scenarios ({wall:.0f} s): the machine was busy "
                   f"{machine / wall:.2f} cores on average, this benchmark's processes "
                   f"{own / wall:.2f}: other processes used about "
                   f"{max(0.0, machine - own) / wall:.2f} of the {os.cpu_count()} cores "
                   "(times are noisier the higher that is).")
    out.append("")
    out.append("Trees: " + "; ".join(f"**{s.name}**: {s.description}" for s in bench.specs)
               + ".")
    out.append("")
    out.append(
        "Both tools sync over 127.0.0.1 through the same kind of counting TCP proxy (payload "
        "bytes both ways; TCP/IP headers not counted). officegrid: a real `officegrid server`, "
        "the worker side is `GET /releases/worker` + `pull_into` in the benchmark process with "
        "a chunk cache kept across scenarios (interpreter start-up excluded, see below); "
        "rsync: `rsync --daemon` and one `rsync -az --delete rsync://...` process per sync "
        "(its start-up included). The publisher's upload is not counted. Every sync is "
        f"verified (paths, contents, executable bit). Times: median of {args.runs} runs, the "
        "destination and the cache put back into the previous state before each run. "
        "CPU s: medians of the CPU time of the officegrid worker side (the syncing thread) "
        "plus the server process, and of the rsync client plus the daemon's connection "
        f"process; less sensitive to other load than wall-clock times. Bars: {BARS}.")
    out.append("")
    out.append("| tree | scenario | officegrid bytes up / down | rsync bytes up / down | "
               "bytes ratio | bytes bar | officegrid s | rsync s | time ratio | time bar | "
               "CPU s officegrid / rsync |")
    out.append("|---|---|---:|---:|---:|---|---:|---:|---:|---|---:|")
    met = {"bytes": [0, 0], "time": [0, 0]}
    for r in res:
        og, rs = r.og[-1], r.rs[-1]
        ogt, rst = og.up + og.down, rs.up + rs.down
        ok_b, _ = bar_bytes(r)
        ok_t = r.og_s() <= 1.5 * r.rs_s()
        met["bytes"][0] += ok_b
        met["bytes"][1] += 1
        met["time"][0] += ok_t
        met["time"][1] += 1
        fail = " **SYNC FAILED**" if r.failures else ""
        out.append(
            f"| {r.tree} | {r.scenario}{fail} | {fmt_b(og.up)} / {fmt_b(og.down)} | "
            f"{fmt_b(rs.up)} / {fmt_b(rs.down)} | {ogt / max(rst, 1):.2f}x | {mark(ok_b)} | "
            f"{r.og_s():.3f} | {r.rs_s():.3f} | {r.og_s() / r.rs_s():.1f}x | {mark(ok_t)} | "
            f"{med(x.cpu_seconds for x in r.og):.2f} / {med(x.cpu_seconds for x in r.rs):.2f} |")
    out.append("")
    out.append(f"Bars met: bytes {met['bytes'][0]} of {met['bytes'][1]} scenarios, time "
               f"{met['time'][0]} of {met['time'][1]}."
               + (" **Some syncs did not reproduce the tree: see below.**"
                  if any(r.failures for r in res) else " Every sync reproduced the tree."))
    out.append("")
    out.append("What each scenario changed, and where officegrid's bytes and time went (last run; "
               "`manifests` and `chunks` are blobs received, with their bytes inside the answers "
               "before the answer's zstd stream compression (a delta counts its delta frame); "
               "`deltas` how many came as deltas; `net` is time waiting for the server "
               "(medians); `cache put` storing fetched blobs into the worker cache "
               "(`ContentStore.put`: re-compress, not fsynced, as the CLI and the worker keep it);"
               " `write tree` `pull_into` writing the files that changed (read, decompress, "
               "verify; each to a temporary file renamed into place) and one `syncfs` to make them"
               " durable; `remove old` deleting paths not in the release; `rest` mostly the quick "
               "check of unchanged files (stat against the marker's index), decompressing and "
               "verifying fetched blobs; `no-fsync` extra, uncounted runs with `fsync` and "
               "`syncfs` no-ops):")
    out.append("")
    out.append("| tree | scenario | change | manifests | chunks | deltas | fetch calls / "
               "requests | files written | net s | cache put s | write tree s | remove old s | "
               "rest s | no-fsync s | publish s |")
    out.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in res:
        og = r.og[-1]
        nof = f"{med(x.seconds for x in r.og_nofsync):.3f}" if r.og_nofsync else ""
        out.append(
            f"| {r.tree} | {r.scenario} | {r.change} | {og.manifests} = "
            f"{fmt_b(og.manifest_frame_bytes)} | {og.chunks} = {fmt_b(og.chunk_frame_bytes)} | "
            f"{og.deltas} | {og.fetch_calls} / {og.requests} | {og.files_written:,} | "
            f"{med(x.net_seconds for x in r.og):.3f} | "
            f"{med(x.cache_put_seconds for x in r.og):.3f} | "
            f"{med(x.assemble_seconds for x in r.og):.3f} | "
            f"{med(x.remove_seconds for x in r.og):.3f} | "
            f"{med(x.rest_seconds() for x in r.og):.3f} | {nof} | "
            f"{r.publish_seconds:.2f} |")
    out.append("")
    spread = []
    for r in res:
        ogs = sorted(x.seconds for x in r.og)
        rss = sorted(x.seconds for x in r.rs)
        spread.append(f"{r.tree}/{r.scenario} {ogs[0]:.2f}-{ogs[-1]:.2f} vs "
                      f"{rss[0]:.2f}-{rss[-1]:.2f}")
        for tool, runs in (("officegrid", r.og), ("rsync", r.rs)):
            totals = [x.up + x.down for x in runs]
            if max(totals) != min(totals):
                bench.notes.append(
                    f"{r.tree}/{r.scenario}: {tool}'s bytes varied between runs by "
                    f"{max(totals) - min(totals):,} B ({fmt_b(min(totals))} - "
                    f"{fmt_b(max(totals))}); the table shows the last run.")
    out.append("Time spread (min-max s, officegrid vs rsync): " + "; ".join(spread) + ".")
    out.append("")
    if hasattr(bench, "startup"):
        bare, helptime, rsync_v, cli_pull = bench.startup
        nochange = next((r for r in res if r.tree == "source" and r.scenario == "no change"),
                        None)
        inproc = f" (in-process no-change sync of the same tree: {nochange.og_s():.2f} s)" \
            if nochange else ""
        out.append(
            f"Start-up (median of 3): `python -c pass` {bare:.3f} s; `python -m officegrid "
            f"release pull --help` {helptime:.3f} s; `rsync --version` {rsync_v:.4f} s. A whole "
            f"`python -m officegrid release pull worker --to DIR` of the source tree with "
            f"nothing new: {cli_pull:.2f} s{inproc}.")
        out.append("")
    if hasattr(bench, "batch_outcome"):
        out.append(
            "Large incompressible files: a release of 200 random 400 kB files (80 MB, one "
            "chunk each; `pull_into` asks for 256 hashes per fetch call, the server answers "
            f"at most 64 MiB per call): {bench.batch_outcome}")
        out.append("")
    out.extend(findings(bench))
    failures = [(r, f) for r in res for f in r.failures]
    if failures:
        out.append("")
        out.append("**Syncs that did not reproduce the tree:**")
        for r, f in failures:
            out.append(f"- {r.tree} / {r.scenario}: {f}")
    if bench.notes:
        out.append("")
        out.extend(f"- {n}" for n in bench.notes)
    return "\n".join(out)


def findings(bench: Bench) -> list[str]:
    """Observations computed from this run's numbers."""
    res = bench.results
    out = ["Observations from this run (computed from the numbers above):", ""]

    def total(run: OgRun | RsRun) -> int:
        return run.up + run.down

    rows = [f"{r.tree} {r.og_s():.2f} s, {r.og[-1].files_written:,} files written "
            f"(rsync {r.rs_s():.2f} s)" for r in res if r.scenario == "no change"]
    if rows:
        out.append("- **No change**: " + "; ".join(rows) + ". `pull_into` updates in place "
                   "and judges unchanged files by their stat data (the marker's index), so "
                   "what is left is the release lookup, the directory walk and the stats.")
    rows = [f"{r.tree}/{r.scenario} {r.og[-1].deltas} of {r.og[-1].manifests + r.og[-1].chunks} "
            f"blobs as deltas, {fmt_b(total(r.og[-1]))} (rsync {fmt_b(total(r.rs[-1]))})"
            for r in res if r.og[-1].deltas]
    if rows:
        out.append("- **Deltas**: " + "; ".join(rows) + ". A changed manifest or chunk is "
                   "sent compressed against its previous version, which the worker holds "
                   "(zstd with the old content as a raw dictionary, as `--patch-from`).")
    rows = [f"{r.tree}/{r.scenario} {r.og_s():.2f} s -> "
            f"{med(x.seconds for x in r.og_nofsync):.2f} s "
            f"(cache put {med(x.cache_put_seconds for x in r.og):.2f} -> "
            f"{med(x.cache_put_seconds for x in r.og_nofsync):.2f} s, write tree "
            f"{med(x.assemble_seconds for x in r.og):.2f} -> "
            f"{med(x.assemble_seconds for x in r.og_nofsync):.2f} s; rsync {r.rs_s():.2f} s)"
            for r in res if r.og_nofsync]
    if rows:
        out.append("- **fsync**: officegrid with `os.fsync` made a no-op (extra, uncounted runs, "
                   "medians): "
                   + "; ".join(rows) + ". rsync does not fsync.")
    return out


def update_section(path: Path, body: str) -> None:
    begin, end = f"<!-- BEGIN {SECTION} -->", f"<!-- END {SECTION} -->"
    text = path.read_text() if path.exists() else "# officegrid benchmark results\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _old, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path.with_name(f".{path.name}.codesync.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="about 1/5 of every size")
    ap.add_argument("--runs", type=int, default=3, help="repetitions per scenario (default 3)")
    ap.add_argument("--trees", default="source,csv,random",
                    help="comma-separated subset of source,csv,random")
    ap.add_argument("--no-fsync-run", default="first sync,one-line edit",
                    help="scenarios that get --runs extra, uncounted officegrid runs with "
                         "os.fsync made a no-op, interleaved with the counted ones "
                         "(comma-separated; '' for none)")
    ap.add_argument("--no-batch-check", action="store_true",
                    help="skip pulling a release of 200 incompressible 400 kB files")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the scratch dir")
    ap.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    args.trees = [t.strip() for t in args.trees.split(",") if t.strip()]
    if not args.trees or set(args.trees) - {"source", "csv", "random"}:
        ap.error("--trees: choose among source, csv, random")
    if args.runs < 1:
        ap.error("--runs must be >= 1")
    args.nofsync = {s.strip() for s in args.no_fsync_run.split(",") if s.strip()}
    if shutil.which("rsync") is None:
        print("rsync is not installed (apt-get install -y rsync)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="codesync-", dir=args.workdir))
    # The publisher's stat cache (and any other user cache) goes into the scratch directory.
    os.environ["XDG_CACHE_HOME"] = str(work / "xdg-cache")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bench = Bench(args, work)
    t0 = time.perf_counter()
    code = 1
    try:
        code = bench.run()
        body = report(bench, time.perf_counter() - t0)
        print(body)
        if not args.no_write:
            update_section(args.results, body)
            log(f"wrote the {SECTION} section of {args.results}")
    finally:
        bench.close()
        if args.keep:
            log(f"scratch kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if code:
        print("!!! at least one sync did not reproduce the source tree", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
