"""replication: replicated data sources against what users would otherwise do, in one run.

Usage::

    .venv/bin/python bench/replication.py [--quick] [--rows N] [--replicas N] [--seconds S]
                                          [--keep] [--no-write] [--results FILE]

One real ``officegrid server`` process on 127.0.0.1 holds a data source ``customers`` of
1,000,000 generated customers (``--quick``: 100,000): the demo's generator
(``officegrid.demo.data.iter_customers``: names, e-mail, street, city/state/zip of real ZIP
codes, phone, sign-up date) plus a segment, a balance and an ``updated_at`` timestamp. Replicas
talk to the server through a counting TCP proxy (payload bytes both ways, as ``codesync.py``).

(a) *Burst.* 1 % of the rows (random) move: new street, city, state, zip, phone and
    ``updated_at``, sent with ``data apply --upsert`` (one request). A replica at the position
    before the burst catches up (``Replica.catch_up``, batches of 1,000 entries as a worker's
    replica set uses; also 1,000 as ``data pull``). Compared with: a full compressed copy (zstd
    level 3 of the user's database file after the burst), ``rsync -az`` of that file from its
    old to its new version (``rsync --daemon`` behind the same kind of counting proxy; its
    ``--stats`` are reported too) and the floor: zstd level 3 of just the changed rows (whole
    rows, CSV). The "user's database file" is the plain SQLite file the source was created from,
    updated with the same values by ``UPDATE`` statements (no change log, no triggers).
(c) *Repair.* A replica copied at the head, then 10 % of the rows (random) change and the log
    is purged past its position (``data purge``): it must repair by key-range hashes. Its bytes
    are compared with the full compressed snapshot a new replica would download at that moment,
    and with ``rsync -az`` of the user's file for the same change.
(b) *Lag.* ``--replicas`` replicas (50; ``--quick``: 10), each a worker's ``ReplicaSet`` with
    its own ``Client`` and the worker's defaults (poll interval 1 s +- 50 % jitter when idle,
    batches of 1,000), in a few follower processes, follow a writer that commits 1,000 changes/s
    (50 random rows every 50 ms, ``updated_at`` set) straight into the master file (a program
    writing the master: the server's triggers capture it, the server seals on its next poll).
    Lag of a change on a replica = the first time the replica reports (right after its commit)
    or asks from a position at or past the change, minus the writer's commit time (one clock).

Bars (issue 4): (a) <= 1.5x the floor and below rsync's; (b) p99 <= 2 s; (c) <= 25 % of a full
snapshot. Every replica is checked against the master (or the user's file) after (a) and (c).
The script rewrites its section of ``bench/RESULTS.md`` (``<!-- BEGIN replication -->``) and
kills every process it started, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import csv
import io
import json
import logging
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import blake3
import zstandard

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import benchlib as bl  # noqa: E402

cs: Any = None  # bench/codesync.py (counting proxy, rsync daemon), imported in main()

SECTION = "replication"
SOURCE = "customers"
KEY = "customer_id"
SEED = 20261129
MOVE_COLS = ("street", "city", "state", "zip", "phone", "updated_at")
SEGMENTS = ("consumer", "consumer", "consumer", "small business", "enterprise", "public sector")
T0 = 1_735_689_600.0  # 2025-01-01: base of the generated updated_at values
WORKER_BATCH = 1000  # fleet.ReplicaSet's default batch_entries (what a worker uses)
PULL_BATCH = 1000  # `officegrid data pull --batch` default
BARS = ("(a) bytes <= 1.5x the floor and < rsync's; (b) p99 lag <= 2 s; (c) repair bytes <= 25 % "
        "of a full compressed snapshot")


def log(msg: str) -> None:
    print(f"[replication {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fmt_b(n: float) -> str:
    if n < 10_000:
        return f"{n:,.0f} B"
    if n < 10_000_000:
        return f"{n / 1000:,.1f} KB"
    return f"{n / 1e6:,.1f} MB"


def mark(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


# ----------------------------------------------------------------------------- data


def customers(n: int) -> Any:
    """``n`` generated customer records (deterministic), with segment, balance, updated_at."""
    from officegrid.demo.data import iter_customers

    rng = random.Random(SEED + 1)
    for rec, _faults in iter_customers(n, SEED):
        rec["segment"] = rng.choice(SEGMENTS)
        rec["balance"] = round(rng.uniform(-500.0, 20_000.0), 2)
        rec["updated_at"] = T0 + rng.randrange(300 * 86400) + rng.randrange(1000) / 1000
        yield rec


def moves(n: int, seed: int) -> list[tuple[str, str, str, str, str]]:
    """``n`` new (street, city, state, zip, phone) of customers who move."""
    from officegrid.demo.data import iter_customers

    return [(r["street"], r["city"], r["state"], r["zip"], r["phone"])
            for r, _ in iter_customers(n, seed)]


def key_of(i: int, n: int) -> str:
    return f"C{i:0{max(7, len(str(n)))}d}"


def change_rows(n: int, share: float, seed: int) -> list[dict[str, Any]]:
    """Rows of a random ``share`` of the keys with new address, phone and updated_at."""
    rng = random.Random(seed)
    picked = sorted(rng.sample(range(1, n + 1), int(n * share)))
    new = moves(len(picked), seed)
    base = T0 + 400 * 86400 + seed % 1000
    return [{KEY: key_of(i, n), **dict(zip(MOVE_COLS[:5], m, strict=True)),
             "updated_at": base + j / 1000} for j, (i, m) in enumerate(zip(picked, new,
                                                                            strict=True))]


def update_user_db(path: Path, rows: list[dict[str, Any]]) -> None:
    """Apply ``rows`` to the user's plain SQLite file with UPDATE statements, one transaction."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.executemany(f"UPDATE customers SET {', '.join(f'{c}=?' for c in MOVE_COLS)} "
                         f"WHERE {KEY}=?", [[r[c] for c in MOVE_COLS] + [r[KEY]] for r in rows])
        conn.execute("COMMIT")
    finally:
        conn.close()


def table_digest(path: Path, readonly: bool = False) -> tuple[int, str]:
    """(rows, BLAKE3 of every row in key order) of the customers table of a SQLite file."""
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    conn = sqlite3.connect(uri, uri=True)
    try:
        h, n = blake3.blake3(), 0
        for row in conn.execute(f"SELECT * FROM customers ORDER BY {KEY}"):
            h.update(repr(row).encode())
            n += 1
        return n, h.hexdigest()
    finally:
        conn.close()


def changed_rows_floor(path: Path, rows: list[dict[str, Any]]) -> tuple[int, int]:
    """(raw CSV bytes, zstd-3 bytes) of the whole changed rows, read back from ``path``."""
    conn = sqlite3.connect(path)
    try:
        cols = [r[1] for r in conn.execute("PRAGMA table_info(customers)")]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        q = f"SELECT * FROM customers WHERE {KEY}=?"
        for r in rows:
            w.writerow(conn.execute(q, (r[KEY],)).fetchone())
    finally:
        conn.close()
    raw = buf.getvalue().encode()
    return len(raw), len(zstandard.ZstdCompressor(level=3).compress(raw))


def zstd_file(path: Path, level: int = 3) -> int:
    """Bytes of ``path`` compressed with zstd at ``level`` (one frame, one thread)."""
    cctx = zstandard.ZstdCompressor(level=level)
    out = 0
    with open(path, "rb") as f:
        reader = cctx.stream_reader(f)
        while piece := reader.read(1 << 20):
            out += len(piece)
    return out


def checkpoint(path: Path) -> None:
    """Fold a replica's WAL into its file (so a plain copy of the file is the whole replica)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def copy_replica(src: Path, dst: Path) -> None:
    """Copy a replica as a worker stopped cleanly would have left it: sealed (else its
    follower would first check it against the master by range hashes)."""
    from officegrid.sync.replication import seal

    checkpoint(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    seal.write(dst)


def sqlite_floor(replica: Path, scratch: Path, n: int, batches: int = 20) -> float:
    """CPU microseconds per row that SQLite alone spends applying a replica's updates: batches
    of 1,000 in-place upserts of random rows (all columns), one transaction each, on a copy of
    a replica opened as replicas are (WAL, its pragmas), plus the final checkpoint."""
    from officegrid.sync.replication import apply

    shutil.copyfile(replica, scratch)
    conn = apply.connect(scratch)
    try:
        cols = [r[1] for r in conn.execute("PRAGMA table_info(customers)")]
        upd = [c for c in cols if c != KEY]
        sql = (f"INSERT INTO customers ({', '.join(cols)}) VALUES "
               f"({', '.join('?' for _ in cols)}) ON CONFLICT ({KEY}) DO UPDATE SET "
               + ", ".join(f"{c}=excluded.{c}" for c in upd))
        rng = random.Random(SEED + 55)
        keys = [key_of(rng.randrange(1, n + 1), n) for _ in range(batches * 1000)]
        rows = {k: r for k, *r in conn.execute(
            f"SELECT {KEY}, {', '.join(upd)} FROM customers WHERE {KEY} IN (SELECT value "
            "FROM json_each(?))", (json.dumps(keys),))}
        # Changed values (as in the lag test's moves): SQLite skips writing a row whose new
        # content equals the old one, which would understate the cost.
        new = moves(len(keys), SEED + 66)
        at = {c: i for i, c in enumerate(upd)}
        data = []
        for i, k in enumerate(keys):
            row = list(rows[k])
            for c, v in zip(MOVE_COLS, (*new[i], time.time()), strict=True):
                row[at[c]] = v
            data.append([k, *row])
        t = time.process_time()
        for b in range(batches):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sql, data[b * 1000:(b + 1) * 1000])
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return (time.process_time() - t) / len(data) * 1e6
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{scratch}{suffix}")


# ----------------------------------------------------------------------------- remotes


class RecordingRemote:
    """An ``HttpRemote`` that keeps the log batches it received (for the byte breakdown)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batches: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def bytes_received(self) -> int:
        return self.inner.bytes_received

    def log(self, epoch: str, after: int, max_entries: int = 1000,
            **kw: Any) -> dict[str, Any]:
        b = self.inner.log(epoch, after, max_entries, **kw)
        if b["entries"]:
            self.batches.append(b)
        return b


class TimedRemote:
    """An ``HttpRemote`` that notes ``(time, position)`` whenever the replica reveals its
    position: when it asks for the entries after it, and when it reports it (right after it
    committed a batch)."""

    def __init__(self, inner: Any, marks: list[tuple[float, int]],
                 stats: dict[str, float]) -> None:
        self.inner = inner
        self.marks = marks
        self.stats = stats

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def bytes_received(self) -> int:
        return self.inner.bytes_received

    def log(self, epoch: str, after: int, max_entries: int = 1000,
            **kw: Any) -> dict[str, Any]:
        t = time.time()
        self.marks.append((t, after))
        b = self.inner.log(epoch, after, max_entries, **kw)
        self.stats["log_s"] += time.time() - t
        self.stats["log_n"] += 1
        self.stats["entries"] += len(b["entries"])
        self.stats["busy_n"] += bool(b["entries"])
        return b

    def report(self, replica: str, epoch: str, pos: int) -> None:
        t = time.time()
        self.marks.append((t, pos))
        self.inner.report(replica, epoch, pos)
        self.stats["report_s"] += time.time() - t
        self.stats["report_n"] += 1


def batch_wire(batches: list[dict[str, Any]]) -> dict[str, int]:
    """Where the bytes of log batches go: zstd-3 of each answer as served, and of all entries
    as one stream."""
    cctx = zstandard.ZstdCompressor(level=3)

    def z(obj: Any) -> int:
        return len(cctx.compress(json.dumps(obj, separators=(",", ":")).encode()))

    served = sum(z(b) for b in batches)
    bodies = [e for b in batches for e in b["entries"]]
    one = len(cctx.compress("\n".join(bodies).encode()))
    return {"served": served, "one_stream": one,
            "entries": len(bodies)}


# ----------------------------------------------------------------------------- followers


def follower_main(cfg_path: str) -> int:
    """A follower process: one ReplicaSet (own Client) per replica directory; on SIGTERM,
    stop and write every replica's ``(time, position)`` marks to ``cfg["out"]``."""
    from officegrid.client import Client
    from officegrid.sync.replication.fleet import ReplicaSet
    from officegrid.sync.replication.remote import HttpRemote

    cfg = json.loads(Path(cfg_path).read_text())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    errors: list[str] = []

    class Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            errors.append(record.getMessage()[:300])

    logging.getLogger("officegrid").addHandler(Count(level=logging.WARNING))
    logging.basicConfig(level=logging.WARNING)
    sets, marks, clients = [], {}, []
    stats = dict.fromkeys(("log_s", "log_n", "entries", "busy_n", "report_s", "report_n"), 0.0)
    for d in cfg["dirs"]:
        name = Path(d).name
        c = Client(cfg["url"], cfg["token"])
        clients.append(c)
        m: list[tuple[float, int]] = []
        marks[name] = m
        rs = ReplicaSet(d, lambda n, c=c, m=m: TimedRemote(HttpRemote(c, n), m, stats),
                        replica_name=f"bench-{name}", interval=cfg["interval"],
                        jitter=cfg["jitter"], batch_entries=cfg["batch"])
        rs.ensure([cfg["source"]])
        sets.append(rs)
    Path(cfg["ready"]).write_text("ok")
    cpu0, wall0 = sum(os.times()[:2]), time.monotonic()
    while not stop.wait(0.5):
        pass
    stats["cpu_s"] = sum(os.times()[:2]) - cpu0
    stats["wall_s"] = time.monotonic() - wall0
    # Close the sets at once: each waits for its follower's long poll (up to LONG_POLL s).
    closers = [threading.Thread(target=rs.close) for rs in sets]
    for th in closers:
        th.start()
    for th in closers:
        th.join()
    for c in clients:
        c.close()
    tmp = Path(cfg["out"] + ".tmp")
    tmp.write_text(json.dumps({"marks": marks, "errors": errors, "stats": stats}))
    os.replace(tmp, cfg["out"])
    return 0


# ----------------------------------------------------------------------------- the run


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.server: bl.Server | None = None
        self.proxy: Any = None
        self.rs_proxy: Any = None
        self.daemon: Any = None
        self.followers: list[subprocess.Popen] = []
        self.r: dict[str, Any] = {}

    # -- helpers

    def client(self, proxied: bool = False) -> Any:
        from officegrid.client import Client

        assert self.server is not None and self.proxy is not None
        url = f"http://127.0.0.1:{self.proxy.port}" if proxied else self.server.url
        return Client(url, self.server.admin_token)

    def counted(self, fn: Any) -> tuple[int, int, float, Any]:
        """Run ``fn(client)`` with a fresh client through the proxy; (up, down, seconds, result).
        """
        assert self.proxy is not None
        self.proxy.wait_idle()
        up0, down0 = self.proxy.counters()
        t = time.perf_counter()
        with self.client(proxied=True) as c:
            res = fn(c)
        sec = time.perf_counter() - t
        self.proxy.wait_idle()
        up1, down1 = self.proxy.counters()
        return up1 - up0, down1 - down0, sec, res

    def rsync(self, old: Path, new: Path, tag: str) -> dict[str, Any]:
        """``rsync -az`` of ``new`` onto a copy of ``old`` from the daemon, through the proxy."""
        assert self.daemon is not None and self.rs_proxy is not None
        src = self.work / "rsync-src"
        dst = self.work / f"rsync-dst-{tag}"
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy2(old, dst / "customers.sqlite")
        shutil.copyfile(new, src / "customers.sqlite")
        self.rs_proxy.wait_idle()
        up0, down0 = self.rs_proxy.counters()
        t = time.perf_counter()
        res = subprocess.run(
            ["rsync", "-az", "--stats", f"rsync://127.0.0.1:{self.rs_proxy.port}/db/"
             "customers.sqlite", str(dst / "customers.sqlite")],
            capture_output=True, text=True, timeout=600)
        sec = time.perf_counter() - t
        if res.returncode:
            raise RuntimeError(f"rsync failed ({res.returncode}): {res.stderr[-2000:]}")
        self.rs_proxy.wait_idle()
        up1, down1 = self.rs_proxy.counters()
        stats = {}
        for label, key in (("Total bytes sent", "sent"), ("Total bytes received", "received"),
                           ("Literal data", "literal"), ("Matched data", "matched")):
            m = re.search(rf"{label}: ([\d,.]+)", res.stdout)
            if m:
                stats[key] = int(float(m.group(1).replace(",", "")))
        ok = blake3.blake3((dst / "customers.sqlite").read_bytes()).digest() == \
            blake3.blake3(new.read_bytes()).digest()
        shutil.rmtree(dst)
        if not ok:
            raise RuntimeError("rsync's copy differs from the new file")
        return {"up": up1 - up0, "down": down1 - down0, "seconds": sec, **stats}

    def master_path(self) -> Path:
        assert self.server is not None
        return self.server.data_dir / "data" / f"{SOURCE}.sqlite"

    def verify(self, replica: Path, reference: Path, what: str, readonly: bool = False) -> None:
        a = table_digest(replica)
        b = table_digest(reference, readonly=readonly)
        if a != b:
            raise RuntimeError(f"{what}: replica differs ({a[0]:,} rows {a[1][:12]} vs "
                               f"{b[0]:,} rows {b[1][:12]})")
        log(f"{what}: replica equals the reference ({a[0]:,} rows)")

    # -- phases

    def setup(self) -> None:
        from officegrid.sync.replication import master

        args = self.args
        t = time.perf_counter()
        self.user0 = self.work / "user-v0.sqlite"
        n = master.build_from_records(self.user0, customers(args.rows), KEY, "customers")
        self.r["rows"] = n
        self.r["file_bytes"] = self.user0.stat().st_size
        log(f"generated {n:,} customers: {fmt_b(self.r['file_bytes'])} SQLite file "
            f"({time.perf_counter() - t:.1f} s)")
        self.server = bl.Server(self.work / "server" / "data").start()
        self.r["keepalive"] = bl.keepalive_latency(self.server.url)
        self.proxy = cs.CountingProxy(int(self.server.url.rsplit(":", 1)[1]))
        t = time.perf_counter()
        with self.client() as c:
            st = c.data_create(SOURCE, self.user0)
        log(f"data source created at position {st['pos']} ({time.perf_counter() - t:.1f} s)")
        src = self.work / "rsync-src"
        src.mkdir()
        self.daemon = cs.RsyncDaemon(self.work / "rsyncd", {"db": src}).start()
        if self.daemon.proc is not None:
            bl._PROCS.append(self.daemon.proc)
        self.rs_proxy = cs.CountingProxy(self.daemon.port)
        (src / "customers.sqlite").write_bytes(b"x")
        self.r["rsync_compress"] = cs.negotiated_compression(self.rs_proxy.port, "db")
        self.rs_proxy.wait_idle()

    def bootstrap(self) -> None:
        from officegrid.sync.replication.remote import HttpRemote
        from officegrid.sync.replication.replica import Replica

        self.rep0 = self.work / "replicas" / "r0.sqlite"
        self.rep0.parent.mkdir(parents=True)
        with self.client() as c:
            t = time.perf_counter()
            info = c.data_snapshot_info(SOURCE)
            self.r["snapshot_make_s"] = time.perf_counter() - t
        self.r["snapshot0"] = info["size"]

        def run(c: Any) -> Any:
            rep = Replica(self.rep0, HttpRemote(c, SOURCE), batch_entries=WORKER_BATCH)
            try:
                return rep.catch_up()
            finally:
                rep.close()

        up, down, sec, pos = self.counted(run)
        self.r["bootstrap"] = {"up": up, "down": down, "seconds": sec, "pos": pos.pos}
        log(f"bootstrap: {fmt_b(up + down)} in {sec:.1f} s (snapshot {fmt_b(info['size'])}, "
            f"made in {self.r['snapshot_make_s']:.1f} s)")

    def burst(self) -> None:
        """(a): 1 % of the rows move."""
        from officegrid.sync.replication.remote import HttpRemote
        from officegrid.sync.replication.replica import Replica

        n = self.r["rows"]
        rows = change_rows(n, 0.01, SEED + 11)
        pre = self.work / "replicas" / "r0-pre-burst.sqlite"
        copy_replica(self.rep0, pre)
        user1 = self.work / "user-v1.sqlite"
        shutil.copyfile(self.user0, user1)
        update_user_db(user1, rows)
        t = time.perf_counter()
        with self.client() as c:
            res = c.data_apply(SOURCE, "customers", upsert=rows)
        log(f"(a) burst: {res['rows']:,} rows upserted, position {res['pos']} "
            f"({time.perf_counter() - t:.1f} s)")
        out: dict[str, Any] = {"changed": len(rows), "runs": {}}
        for batch in dict.fromkeys((WORKER_BATCH, PULL_BATCH)):
            path = self.rep0 if batch == WORKER_BATCH else \
                self.work / "replicas" / f"r0-b{batch}.sqlite"
            if batch != WORKER_BATCH:
                shutil.copyfile(pre, path)
            box: dict[str, Any] = {}

            def run(c: Any, path: Path = path, batch: int = batch,
                    box: dict[str, Any] = box) -> Any:
                remote = RecordingRemote(HttpRemote(c, SOURCE))
                box["remote"] = remote
                rep = Replica(path, remote, batch_entries=batch)
                try:
                    return rep.catch_up()
                finally:
                    rep.close()

            up, down, sec, pos = self.counted(run)
            if batch == WORKER_BATCH:  # the other batch size runs the same code
                self.verify(path, user1, f"(a) catch-up, batches of {batch}")
            out["runs"][batch] = {"up": up, "down": down, "seconds": sec,
                                  "wire": batch_wire(box["remote"].batches),
                                  "requests": len(box["remote"].batches) + 1}
            log(f"(a) catch-up, batches of {batch}: {fmt_b(up + down)} in {sec:.2f} s")
            if path != self.rep0:
                path.unlink()
        out["floor_raw"], out["floor"] = changed_rows_floor(user1, rows)
        t = time.perf_counter()
        out["full"] = zstd_file(user1, 3)
        out["full_s"] = time.perf_counter() - t
        out["rsync"] = self.rsync(self.user0, user1, "a")
        log(f"(a) floor {fmt_b(out['floor'])}, full zstd-3 {fmt_b(out['full'])}, rsync "
            f"{fmt_b(out['rsync']['up'] + out['rsync']['down'])}")
        pre.unlink()
        self.user1 = user1
        self.r["a"] = out

    def repair(self) -> None:
        """(c): a replica misses changes to 10 % of the rows and its position is purged."""
        from officegrid.sync.replication.remote import HttpRemote
        from officegrid.sync.replication.replica import Replica

        n = self.r["rows"]
        stale = self.work / "replicas" / "stale.sqlite"
        copy_replica(self.rep0, stale)
        rows = change_rows(n, 0.10, SEED + 22)
        user2 = self.work / "user-v2.sqlite"
        shutil.copyfile(self.user1, user2)
        update_user_db(user2, rows)
        t = time.perf_counter()
        with self.client() as c:
            res = c.data_apply(SOURCE, "customers", upsert=rows)
            applied_s = time.perf_counter() - t
            purged = c.data_purge(SOURCE, res["pos"])
            st = c.data_status(SOURCE)
        log(f"(c) {res['rows']:,} rows changed in {applied_s:.1f} s; log purged "
            f"({purged['rows']:,} entries), kept from {st['base_pos']}")
        box: dict[str, Any] = {}

        def run(c: Any) -> Any:
            rep = Replica(stale, HttpRemote(c, SOURCE), batch_entries=WORKER_BATCH)
            box["rep"] = rep
            try:
                return rep.catch_up()
            finally:
                rep.close()

        up, down, sec, pos = self.counted(run)
        rep = box["rep"]
        self.verify(stale, self.master_path(), "(c) repair vs the master", readonly=True)
        with self.client() as c:
            t = time.perf_counter()
            info = c.data_snapshot_info(SOURCE)
            snap_s = time.perf_counter() - t
        out = {"changed": len(rows), "up": up, "down": down, "seconds": sec,
               "repairs": rep.stats.repairs, "reasons": rep.stats.repair_reasons,
               "merkle": rep.stats.last_repair, "snapshot": info["size"], "snapshot_s": snap_s,
               "full": zstd_file(user2, 3), "rsync": self.rsync(self.user1, user2, "c")}
        log(f"(c) repair: {fmt_b(up + down)} in {sec:.1f} s = "
            f"{(up + down) / info['size']:.1%} of the snapshot ({fmt_b(info['size'])}); "
            f"{rep.stats.last_repair}")
        self.r["c"] = out
        self.rep_head = stale
        for f in (self.user0, self.user1):
            f.unlink()
        self.user2 = user2

    def lag(self) -> None:
        """(b): replicas follow a steady stream of changes."""
        from officegrid.sync.replication import master

        args = self.args
        n = self.r["rows"]
        nrep, nproc = args.replicas, max(1, min(args.follower_procs, args.replicas))
        t = time.perf_counter()
        checkpoint(self.rep_head)
        dirs = []
        for i in range(nrep):
            d = self.work / "fleet" / f"f{i:02d}"
            d.mkdir(parents=True)
            copy_replica(self.rep_head, d / f"{SOURCE}.sqlite")
            dirs.append(d)
        copy_s = time.perf_counter() - t
        self.r["sqlite_floor_us"] = sqlite_floor(dirs[0] / f"{SOURCE}.sqlite",
                                                 self.work / "floor.sqlite", n)
        log(f"(b) SQLite alone: {self.r['sqlite_floor_us']:.1f} us of CPU per row upserted")
        self.rep_head.unlink()
        self.user2.unlink()
        log(f"(b) {nrep} replica files copied ({copy_s:.1f} s)")
        assert self.server is not None
        outs = []
        for j in range(nproc):
            cfg = {"url": self.server.url, "token": self.server.admin_token, "source": SOURCE,
                   "dirs": [str(d) for d in dirs[j::nproc]], "interval": args.interval,
                   "jitter": args.jitter, "batch": WORKER_BATCH,
                   "out": str(self.work / f"follower-{j}.json"),
                   "ready": str(self.work / f"follower-{j}.ready")}
            cf = self.work / f"follower-{j}.cfg.json"
            cf.write_text(json.dumps(cfg))
            logf = open(self.work / f"follower-{j}.log", "ab")  # noqa: SIM115 - child's log
            proc = subprocess.Popen([sys.executable, __file__, "--follower", str(cf)],
                                    env=bl.clean_env(), stdout=logf, stderr=subprocess.STDOUT)
            logf.close()
            bl._PROCS.append(proc)
            self.followers.append(proc)
            outs.append((cfg, proc))
        names = {f"bench-{d.name}" for d in dirs}

        def following() -> bool:
            for cfg, proc in outs:
                if proc.poll() is not None:
                    raise RuntimeError(f"follower exited with {proc.returncode}: " + Path(
                        cfg["out"]).with_suffix(".log").read_text(errors="replace")[-2000:])
            with self.client() as c:
                st = c.data_status(SOURCE)
            at = {r["replica"] for r in st["replicas"] if r["replica"] in names and r["lag"] == 0}
            return at == names

        bl.wait_for(following, 120, f"{nrep} replicas following at the head", interval=0.5)
        per_tick = max(1, round(args.rate * args.tick))
        ticks = int(args.seconds / args.tick)
        new = moves(per_tick * ticks, SEED + 33)
        rng = random.Random(SEED + 44)
        commits: list[tuple[int, int, float]] = []  # (first pos, last pos, commit time)
        conn = master.connect(self.master_path())
        server_cpu0 = bl.cpu_seconds(self.server.pid)
        fol_cpu0 = sum(bl.cpu_seconds(p.pid) for p in self.followers)
        upd = (f"UPDATE customers SET {', '.join(f'{c}=?' for c in MOVE_COLS)} "
               f"WHERE {KEY}=?")
        seq = "SELECT seq FROM sqlite_sequence WHERE name='_og_log'"
        late, lock_s = 0, 0.0
        with bl.LoadMeter() as load:
            start = time.monotonic()
            for k in range(ticks):
                due = start + k * args.tick
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                elif now - due > args.tick:
                    late += 1
                t_lock = time.perf_counter()
                conn.execute("BEGIN IMMEDIATE")
                lock_s += time.perf_counter() - t_lock
                first = conn.execute(seq).fetchone()[0] + 1
                stamp = time.time()
                conn.executemany(upd, [(*new[k * per_tick + x], stamp,
                                        key_of(rng.randrange(1, n + 1), n))
                                       for x in range(per_tick)])
                last = conn.execute(seq).fetchone()[0]
                conn.execute("COMMIT")
                commits.append((first, last, time.time()))
            # The last commit's tick counts in full (the planned rate over the planned time).
            write_s = max(time.monotonic() - start, ticks * args.tick)
        conn.close()
        server_cpu = bl.cpu_seconds(self.server.pid) - server_cpu0
        fol_cpu = sum(bl.cpu_seconds(p.pid) for p in self.followers) - fol_cpu0
        final = commits[-1][1]
        log(f"(b) wrote {sum(b - a + 1 for a, b, _ in commits):,} changes in {write_s:.1f} s; "
            "waiting for every replica to reach the last one")
        t = time.perf_counter()

        def caught_up() -> bool:
            with self.client() as c:
                st = c.data_status(SOURCE)
            return all(r["pos"] >= final for r in st["replicas"] if r["replica"] in names)

        try:
            bl.wait_for(caught_up, args.drain, "replicas to apply the last change", interval=0.2)
            drained = True
        except TimeoutError:
            drained = False
        drain_s = time.perf_counter() - t
        time.sleep(args.interval * (1 + args.jitter) + 0.5)  # one more poll from each replica
        for proc in self.followers:
            bl._kill(proc, grace=60)
            with contextlib.suppress(ValueError):
                bl._PROCS.remove(proc)
        marks: dict[str, list[tuple[float, int]]] = {}
        errors: list[str] = []
        fs: dict[str, float] = {}
        for cfg, proc in outs:
            try:
                got = json.loads(Path(cfg["out"]).read_text())
            except (OSError, ValueError) as exc:
                raise RuntimeError(f"follower {cfg['out']} wrote no result (exit "
                                   f"{proc.returncode}): {exc}") from None
            marks.update(got["marks"])
            errors += got["errors"]
            for k, v in got["stats"].items():
                fs[k] = fs.get(k, 0.0) + v
        lags, missing, worst = [], 0, []
        for m in marks.values():
            m.sort()
            times = [x[0] for x in m]
            best, run_max = [], -1
            for _, pos in m:
                run_max = max(run_max, pos)
                best.append(run_max)
            mine = []
            for first, last, tc in commits:
                for p in range(first, last + 1):
                    i = bisect.bisect_left(best, p)
                    if i == len(best):
                        missing += 1
                    else:
                        mine.append(times[i] - tc)
            lags += mine
            if mine:
                mine.sort()
                worst.append(bl.percentile(mine, 0.99))
        lags.sort()
        changes = sum(b - a + 1 for a, b, _ in commits)
        self.r["b"] = {
            "replicas": nrep, "procs": nproc, "changes": changes, "write_s": write_s,
            "rate": changes / write_s, "late_ticks": late, "copy_s": copy_s,
            "p50": bl.percentile(lags, 0.5), "p90": bl.percentile(lags, 0.9),
            "p99": bl.percentile(lags, 0.99), "max": lags[-1] if lags else float("nan"),
            "worst_replica_p99": max(worst) if worst else float("nan"),
            "samples": len(lags), "missing": missing, "drained": drained, "drain_s": drain_s,
            "errors": len(errors), "error_sample": errors[:3],
            "server_cores": server_cpu / write_s, "follower_cores": fol_cpu / write_s,
            "load_ours": load.ours, "load_others": load.others, "lock_s": lock_s,
            "fleet": fs, "ticks": ticks,
        }
        log(f"(b) lag p50 {self.r['b']['p50']:.3f} s, p99 {self.r['b']['p99']:.3f} s, max "
            f"{self.r['b']['max']:.3f} s over {len(lags):,} (replica, change) pairs; "
            f"{missing} not applied; {len(errors)} follower errors")

    def run(self) -> None:
        with bl.LoadMeter() as load:
            t = time.perf_counter()
            self.setup()
            self.bootstrap()
            self.burst()
            self.repair()
            self.lag()
            self.r["seconds"] = time.perf_counter() - t
        self.r["load_ours"], self.r["load_others"] = load.ours, load.others
        self.r["loadavg"] = os.getloadavg()

    def close(self) -> None:
        for proc in self.followers:
            bl._kill(proc)
        for proxy in (self.proxy, self.rs_proxy):
            if proxy is not None:
                proxy.close()
        if self.server is not None:
            self.server.stop()
        if self.daemon is not None:
            self.daemon.stop()


# ----------------------------------------------------------------------------- report


def report(bench: Bench, cmd: str) -> str:
    from officegrid.sync.replication.replica import LONG_POLL

    r = bench.r
    a, b, c = r["a"], r["b"], r["c"]
    og = a["runs"][WORKER_BATCH]
    og_bytes = og["up"] + og["down"]
    rs_a = a["rsync"]["up"] + a["rsync"]["down"]
    ok_a = og_bytes <= 1.5 * a["floor"] and og_bytes < rs_a
    ok_b = b["p99"] <= 2.0 and b["missing"] == 0
    rep_bytes = c["up"] + c["down"]
    ok_c = rep_bytes <= 0.25 * c["snapshot"]
    boot = r["bootstrap"]
    out = [f"## Replicated data sources (`{cmd}`)", ""]
    out.append(f"Run {bl.stamp()} in {r['seconds'] / 60:.1f} min. Machine: {bl.machine()} "
               "(every process ran one copy of `src/` taken at the start). "
               f"rsync: `{r['rsync_compress']}`.")
    la = r["loadavg"]
    out.append(f"Load: over the whole run this benchmark's processes used {r['load_ours']:.2f} "
               f"cores and other processes {r['load_others']:.2f} of the {os.cpu_count()} "
               f"(load average {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} at the end); during "
               f"the lag test (b) {b['load_ours']:.2f} ours, {b['load_others']:.2f} others"
               + (" **(the machine was busy: other engineers' tests)**"
                  if max(r["load_others"], b["load_others"]) > 0.3 else "") + ".")
    out.append(bl.server_line(r["keepalive"]))
    out.append("")
    out.append(
        f"Data: `{SOURCE}`, {r['rows']:,} generated customers (the demo's generator: names, "
        "e-mail, street, real city/state/zip, phone, sign-up date; plus segment, balance, "
        f"`updated_at`), key `{KEY}` (text): a {fmt_b(r['file_bytes'])} SQLite file. A new "
        f"replica's snapshot: {fmt_b(r['snapshot0'])} (zstd-9 of the vacuumed copy, made in "
        f"{r['snapshot_make_s']:.1f} s); the bootstrap moved {fmt_b(boot['up'] + boot['down'])} "
        f"in {boot['seconds']:.1f} s.")
    out.append("")
    out.append(
        "Bytes are payload bytes both ways through a counting TCP proxy on 127.0.0.1 (TCP/IP "
        "headers not counted, HTTP headers counted), for officegrid (a `Replica` with an "
        "`HttpRemote` in the benchmark process, a fresh connection per measurement) and for "
        "rsync (`rsync -az --stats rsync://...` from `rsync --daemon`, onto the old file). "
        "The user's file is the plain SQLite file the source was created from, changed with "
        "the same values by `UPDATE` statements; officegrid's master is that file plus "
        "triggers and a change log.")
    out.append("")
    same = WORKER_BATCH == PULL_BATCH
    rows = [[f"officegrid catch-up, batches of {WORKER_BATCH:,} (a worker's replica set"
             + (" and `data pull`)" if same else ")"), fmt_b(og_bytes),
             f"{og_bytes / a['floor']:.2f}x", f"{og['seconds']:.2f} s"]]
    if not same:
        pull = a["runs"][PULL_BATCH]
        pb = pull["up"] + pull["down"]
        rows.append([f"officegrid catch-up, batches of {PULL_BATCH:,} (`data pull`)", fmt_b(pb),
                     f"{pb / a['floor']:.2f}x", f"{pull['seconds']:.2f} s"])
    st = a["rsync"]
    rows.append([f"`rsync -az` of the user's file, old -> new (--stats: sent {st.get('sent', 0):,}"
                 f", received {st.get('received', 0):,}, literal {st.get('literal', 0):,})",
                 fmt_b(rs_a), f"{rs_a / a['floor']:.2f}x", f"{st['seconds']:.2f} s"])
    rows.append(["full compressed copy (zstd -3 of the user's file)", fmt_b(a["full"]),
                 f"{a['full'] / a['floor']:.2f}x", f"{a['full_s']:.2f} s to compress"])
    rows.append([f"floor: zstd -3 of just the changed rows (whole rows, CSV; "
                 f"{fmt_b(a['floor_raw'])} raw)", fmt_b(a["floor"]), "1.00x", ""])
    w = og["wire"]
    out.append(f"### (a) Burst: {a['changed']:,} random rows (1 %) move "
               "(street, city, state, zip, phone, `updated_at`)")
    out.append("")
    out.append(bl.table(["how the replica catches up", "bytes", "x floor", "time"], rows))
    out.append("")
    out.append(
        f"Bar: <= 1.5x the floor ({fmt_b(1.5 * a['floor'])}) and below rsync's: "
        f"{mark(ok_a)} ({og_bytes / a['floor']:.2f}x the floor, "
        f"{og_bytes / rs_a:.1%} of rsync's). Where officegrid's bytes go "
        f"({w['entries']:,} entries in {og['requests']} requests of batches of "
        f"{WORKER_BATCH:,}): the zstd-3 "
        f"JSON answers as served (entry bodies and one chain hash per answer) come to "
        f"{fmt_b(w['served'])}; all entry bodies as one zstd-3 stream {fmt_b(w['one_stream'])} "
        f"({w['one_stream'] / a['floor']:.2f}x: the rest of the gap is the JSON entry format, "
        "column names and positions in every entry); HTTP headers and the requests: "
        f"{fmt_b(og_bytes - w['served'])}.")
    out.append("")
    m = c["merkle"].get("customers", {})
    rs_c = c["rsync"]["up"] + c["rsync"]["down"]
    out.append(f"### (c) Repair: {c['changed']:,} random rows (10 %) changed, the replica's "
               "position purged from the log")
    out.append("")
    out.append(bl.table(
        ["", "bytes", "share of a full snapshot", "time"],
        [[f"officegrid repair by key-range hashes ({m.get('buckets', 0):,} ranges of 64 rows, "
          f"{m.get('dirty', 0):,} differed; {m.get('fetched', 0):,} rows fetched, "
          f"{m.get('whole', 0)} ranges fetched whole)", fmt_b(rep_bytes),
          f"{rep_bytes / c['snapshot']:.1%}", f"{c['seconds']:.1f} s"],
         ["full compressed snapshot (what a new replica downloads now, zstd-9)",
          fmt_b(c["snapshot"]), "100 %", f"{c['snapshot_s']:.1f} s to make"],
         ["`rsync -az` of the user's file for the same change", fmt_b(rs_c),
          f"{rs_c / c['snapshot']:.1%}", f"{c['rsync']['seconds']:.1f} s"],
         ["full compressed copy (zstd -3 of the user's file)", fmt_b(c["full"]),
          f"{c['full'] / c['snapshot']:.1%}", ""]]))
    out.append("")
    out.append(f"Bar: <= 25 % of a full snapshot: {mark(ok_c)} "
               f"({rep_bytes / c['snapshot']:.1%}; repair reason: "
               f"{'; '.join(c['reasons']) or 'none'}).")
    out.append("")
    out.append(f"### (b) Lag: {b['replicas']} replicas following {bench.args.rate:,.0f} "
               f"changes/s planned ({b['rate']:,.0f}/s achieved)")
    out.append("")
    out.append(
        f"{b['replicas']} replicas (full copies of the replica file, each a `ReplicaSet` with "
        f"its own `Client`, as a worker agent runs them: long polls of up to {LONG_POLL:g} s "
        f"at the head (the server answers once it has sealed something new), batches of "
        f"{WORKER_BATCH}, the position carried by the next log request) in {b['procs']} "
        "processes on this same machine; a writer "
        f"committed {b['changes']:,} changes in {b['write_s']:.1f} s ({bench.args.rate:g}/s "
        f"planned as {round(bench.args.rate * bench.args.tick)} random rows every "
        f"{bench.args.tick * 1000:.0f} ms; {b['late_ticks']} ticks more than one tick late) "
        "straight into the master file (the server's triggers capture them; the server seals "
        "them at most every 0.2 s while replicas wait).")
    out.append("")
    out.append(bl.table(
        ["", "p50", "p90", "p99", "max", "worst replica's p99"],
        [["lag: commit on the master -> applied on a replica",
          f"{b['p50']:.3f} s", f"{b['p90']:.3f} s", f"{b['p99']:.3f} s", f"{b['max']:.3f} s",
          f"{b['worst_replica_p99']:.3f} s"]]))
    out.append("")
    out.append(
        f"{b['samples']:,} (replica, change) pairs; {b['missing']} never applied before the "
        f"end; after the writer stopped every replica had the last change within "
        f"{b['drain_s']:.1f} s" + ("" if b["drained"] else " **(not all: timed out)**")
        + f"; {b['errors']} follower errors"
        + (f" (e.g. `{b['error_sample'][0]}`)" if b["error_sample"] else "")
        + f". While writing, the server used {b['server_cores']:.2f} cores and the follower "
        f"processes {b['follower_cores']:.2f}; the writer waited {b['lock_s']:.1f} s in all "
        f"for the master's write lock. Bar: p99 <= 2 s: {mark(ok_b)}.")
    f = b["fleet"]
    if f.get("entries"):
        out.append("")
        out.append(
            f"Where a replica's time went (all {b['replicas']}, writing and catching up): "
            f"{f['entries']:,.0f} entries applied in {f['busy_n']:,.0f} batches (mean "
            f"{f['entries'] / max(1, f['busy_n']):.0f} entries) from {f['log_n']:,.0f} log "
            f"requests ({f['log_n'] * b['procs'] / max(1e-9, b['replicas'] * f['wall_s']):.1f} "
            "per replica per second; one came back after "
            f"{1000 * f['log_s'] / max(1, f['log_n']):.0f} ms on average, long-poll waits "
            "included); "
            + (f"{f['report_n']:,.0f} separate position reports; " if f["report_n"] else
               "no separate position reports (the log requests carry them); ")
            + "the follower processes used "
            f"{1e6 * f['cpu_s'] / f['entries']:.0f} us of CPU per applied entry "
            f"(HTTP client, JSON, chain check, SQLite), i.e. "
            f"{f['cpu_s'] / f['entries'] * bench.args.rate:.2f} cores for one replica "
            f"following {bench.args.rate:g} changes/s and "
            f"{f['cpu_s'] / f['entries'] * bench.args.rate * b['replicas']:.1f} cores for "
            f"all {b['replicas']} on this machine.")
        need = f["cpu_s"] / f["entries"] * bench.args.rate * b["replicas"] + b["server_cores"]
        if not ok_b and need > (os.cpu_count() or 1) - b["load_others"]:
            out.append("")
            out.append(
                f"Why not met here: following {bench.args.rate:g} changes/s, the {b['replicas']} "
                f"replicas and the server need about {need:.1f} cores; this machine has "
                f"{os.cpu_count()}, of which other processes took {b['load_others']:.2f}. "
                f"SQLite alone, without Python or HTTP, spends {r['sqlite_floor_us']:.0f} us of "
                "CPU per row it updates in place in a copy of this replica (batches of 1,000 "
                "random rows, WAL, the replica's pragmas; measured in this run), i.e. "
                f"{r['sqlite_floor_us'] * 1e-6 * bench.args.rate * b['replicas']:.1f} cores "
                f"for {b['replicas']} replicas at {bench.args.rate:g} changes/s. So "
                "the replicas (and the writer, starved too) fall behind and the lag grows for "
                "the whole run like a queue: the figure measures this machine's saturation, "
                "not a fleet of desktops, where each replica has its own CPU. On the master "
                f"side the writer spent {b['lock_s']:.0f} of {b['write_s']:.0f} s waiting for "
                "the master's write lock, which the server takes on replica reads (the poll "
                "that seals the log).")
    out.append("")
    out.append("### Bars")
    out.append("")
    out.append(bl.table(["bar", "measured", ""], [
        ["(a) <= 1.5x the floor and < rsync's", f"{og_bytes / a['floor']:.2f}x the floor, "
         f"{og_bytes / rs_a:.1%} of rsync's", mark(ok_a)],
        ["(b) p99 lag <= 2 s", f"{b['p99']:.3f} s", mark(ok_b)],
        ["(c) repair <= 25 % of a full snapshot", f"{rep_bytes / c['snapshot']:.1%}",
         mark(ok_c)]]))
    if bench.args.quick:
        out.append("")
        out.append("_`--quick`: smaller table and fleet; not comparable with the full run._")
    return "\n".join(out)


# ----------------------------------------------------------------------------- main


def freeze_code(dest: Path) -> None:
    """Run every process of this benchmark on one copy of ``src/officegrid`` taken now.

    The checkout is shared with engineers editing it: a server or follower process started a
    minute later must not import a half-edited module (a follower once did)."""
    global cs
    shutil.copytree(bl.ROOT / "src" / "officegrid", dest / "officegrid",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    sys.path.insert(0, str(dest))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(dest), *filter(None, [os.environ.get("PYTHONPATH")])])
    for mod in [m for m in sys.modules if m == "officegrid" or m.startswith("officegrid.")]:
        del sys.modules[mod]
    import codesync

    cs = codesync


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--follower"]:
        return follower_main(argv[1])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="100,000 rows, 10 replicas, 10 s of changes (about a minute)")
    ap.add_argument("--rows", type=int, default=None, help="rows of the table (1,000,000)")
    ap.add_argument("--replicas", type=int, default=None, help="following replicas (50)")
    ap.add_argument("--follower-procs", type=int, default=5,
                    help="processes the following replicas are spread over (5)")
    ap.add_argument("--seconds", type=float, default=None, help="seconds of changes in (b) (30)")
    ap.add_argument("--rate", type=float, default=1000.0, help="changes per second in (b)")
    ap.add_argument("--tick", type=float, default=0.05, help="seconds between commits in (b)")
    ap.add_argument("--interval", type=float, default=1.0,
                    help="replica poll interval when idle (the worker's default, 1 s)")
    ap.add_argument("--jitter", type=float, default=0.5, help="poll jitter (+-50 %%)")
    ap.add_argument("--drain", type=float, default=120.0,
                    help="seconds to wait for replicas after the writer stops")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the scratch dir")
    ap.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    ap.add_argument("--results", type=Path, default=bl.RESULTS)
    args = ap.parse_args(argv)
    args.rows = args.rows or (100_000 if args.quick else 1_000_000)
    args.replicas = args.replicas or (10 if args.quick else 50)
    args.seconds = args.seconds or (10.0 if args.quick else 30.0)
    if shutil.which("rsync") is None:
        print("rsync is not installed (apt-get install -y rsync)", file=sys.stderr)
        return 2
    bl.install_signal_handlers()
    work = Path(tempfile.mkdtemp(prefix="replication-", dir=args.workdir))
    freeze_code(work / "code")
    bench = Bench(args, work)
    cmd = "python bench/replication.py" + (" --quick" if args.quick else "")
    try:
        bench.run()
        body = report(bench, cmd)
        print(body)
        if not args.no_write:
            bl.update_section(SECTION, body, args.results)
            log(f"wrote the {SECTION} section of {args.results}")
    finally:
        bench.close()
        bl.cleanup()
        if args.keep:
            log(f"scratch kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
