#!/usr/bin/env python
"""Dispatch benchmarks of the job control server (a real server process, simulated workers).

(a) Dispatch throughput: a job of N one-record units (default 2,000); W simulated workers
    (default 16 identities, each enrolled with a join token and holding its own session, spread
    over several client processes) loop lease -> PUT result blob -> complete(want_next=True)
    over HTTP with the real ``officegrid.client.Client``. Reported: units leased and completed
    per second, from the moment all workers are ready until the job's last completion
    (``last_done_at``, server clock). A fresh server (and a fresh PostgreSQL database) per run.
    Run on SQLite and on the machine's PostgreSQL.

(b) Heartbeat load: H idle worker identities (default 1,000, enrolled, with sessions) send
    heartbeats as fast as a bounded pool of client threads in several processes allows, for a
    fixed window (default 10 s) repeated R times. Reported: requests/s, p50/p99 latency.

Writes its sections of bench/RESULTS.md (unless --no-write). All traffic goes to 127.0.0.1.
Every process started is killed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import queue
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402

BAR_UNITS_PER_S = 500.0


# ----------------------------------------------------------------------------- helpers


def _store_ctx(store: str, pg_url: str):
    return bl.pg_database(pg_url) if store == "postgresql" else contextlib.nullcontext(None)


def _worker_client(url: str, join: Any, name: str):
    """Enroll ``name`` with ``join`` (a client holding the join token) and open its session;
    return the new identity's own client."""
    from officegrid import protocol as p
    from officegrid.client import Client

    ident = join.enroll("bench-" + name, "bench", name)
    c = Client(url, ident["token"], instance=uuid.uuid4().hex, max_retry_time=60)
    c.open_session(p.SessionRequest(hostname="bench-" + name, platform="bench", version="bench",
                                    resources=p.WorkerResources()))
    return c


def _split(items: list[Any], n: int) -> list[list[Any]]:
    return [items[i::n] for i in range(n)]


def _collect(out_q: Any, n: int, procs: list[Any], timeout: float) -> list[dict]:
    """Get ``n`` messages from ``out_q``; fail fast if a child process died."""
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        try:
            got.append(out_q.get(timeout=0.5))
        except queue.Empty:
            dead = [pr for pr in procs if pr.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"load process exited with {dead[0].exitcode}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"got {len(got)} of {n} answers from load processes") from None
    for msg in got:
        if "fatal" in msg:
            raise RuntimeError(f"load process failed: {msg['fatal']}")
    return got


def _stop_procs(procs: list[Any], wait: float = 10.0) -> None:
    """Join the load processes (they end by themselves after a run), waiting at most ``wait``
    seconds in all, then terminate and kill what is left."""
    deadline = time.monotonic() + wait
    for pr in procs:
        pr.join(timeout=max(0.0, deadline - time.monotonic()))
    for pr in procs:
        if pr.is_alive():
            pr.terminate()
            pr.join(timeout=5)
        if pr.is_alive():
            pr.kill()
            pr.join(timeout=5)


# ----------------------------------------------------------------------------- (a) dispatch


def _dispatch_proc(url: str, join: str, names: list[str], go: Any, out_q: Any) -> None:
    """One load process: a thread per simulated worker."""
    import json

    from officegrid import protocol as p
    from officegrid.client import Client

    try:
        clients = [None] * len(names)

        def enroll(i: int) -> None:
            with Client(url, join, max_retry_time=60) as jc:
                clients[i] = _worker_client(url, jc, names[i])

        ts = [threading.Thread(target=enroll, args=(i,)) for i in range(len(names))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if any(c is None for c in clients):
            raise RuntimeError("a simulated worker could not enroll")
        out_q.put({"ready": True})
        stats: list[dict] = []

        def loop(c: Any) -> None:
            go.wait()
            st = {"units": 0, "lease": [], "put": [], "complete": [], "errors": 0}
            res = p.WorkerResources()
            t = time.perf_counter()
            leases = c.lease(p.LeaseRequest(resources=res, max_units=1)).leases
            st["lease"].append(time.perf_counter() - t)
            lease = leases[0] if leases else None
            while lease is not None:
                key = lease.seq + 1
                body = json.dumps({"k": key, "r": [{"id": f"r{key}", "value": str(key)}]},
                                  separators=(",", ":")).encode() + b"\n"
                t = time.perf_counter()
                blob = c.put_blob(body)
                t2 = time.perf_counter()
                ans = c.complete(lease.attempt, p.Completion(
                    result=blob, records_done=1, record_errors=0, columns=["id", "value"],
                    want_next=True))
                t3 = time.perf_counter()
                st["put"].append(t2 - t)
                st["complete"].append(t3 - t2)
                if ans.outcome == "accepted":
                    st["units"] += 1
                else:
                    st["errors"] += 1
                lease = ans.next
                if lease is None:  # the queue looked empty at that moment: ask once more
                    t = time.perf_counter()
                    leases = c.lease(p.LeaseRequest(resources=res, max_units=1)).leases
                    st["lease"].append(time.perf_counter() - t)
                    lease = leases[0] if leases else None
            st["end"] = time.time()
            stats.append(st)

        ts = [threading.Thread(target=loop, args=(c,)) for c in clients]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for c in clients:
            c.close()
        merged = {"units": sum(s["units"] for s in stats),
                  "errors": sum(s["errors"] for s in stats),
                  "end": max(s["end"] for s in stats),
                  "lease": [x for s in stats for x in s["lease"]],
                  "put": [x for s in stats for x in s["put"]],
                  "complete": [x for s in stats for x in s["complete"]]}
        out_q.put(merged)
    except BaseException as exc:  # report, do not hang the parent
        out_q.put({"fatal": repr(exc)})
        raise


def _make_job(admin: Any, n: int) -> dict:
    """Create a job of ``n`` one-record units of ``empty_job:process``.

    The unit inputs are uploaded by 16 threads (set-up only, not timed), then the job is created
    with one ``POST /jobs``, as ``Client.submit`` does after its (sequential) uploads.
    """
    from concurrent.futures import ThreadPoolExecutor

    from officegrid import protocol as p
    from officegrid.records.units import encode_unit_input

    def put(i: int) -> p.UnitSpec:
        data = encode_unit_input([(i, {"id": f"r{i}", "value": str(i)})])
        return p.UnitSpec(input=admin.put_blob(data), count=1, first_key=i, last_key=i)

    with ThreadPoolExecutor(16) as pool:
        specs = list(pool.map(put, range(1, n + 1)))
    body = p.JobCreate(name="dispatch-bench", entry="empty_job:process", units=specs)
    return admin.request("POST", "/jobs", json=body.model_dump(mode="json"),
                         idempotent=False).json()


def dispatch_run(store: str, args: argparse.Namespace, tmp: Path, run: int,
                 profile: Path | None = None) -> dict:
    """One dispatch throughput run on a fresh server; returns its measurements."""
    from officegrid.cli.release import publish

    ctx = mp.get_context("spawn")
    with _store_ctx(store, args.pg_url) as db:
        server = bl.Server(tmp / f"dispatch-{store}-{run}", db, env=args.server_env)
        procs: list[Any] = []
        failed = True
        try:
            server.start()
            keepalive = bl.keepalive_latency(server.url)
            admin = server.client(timeout=120)
            publish(admin, bl.JOBS, "worker", show_progress=False)
            t = time.monotonic()
            job = _make_job(admin, args.units)
            submit_s = time.monotonic() - t
            join = admin.create_token("enroll", uses=args.workers)["token"]
            names = [f"sim-{run}-{i}" for i in range(args.workers)]
            go = ctx.Event()
            out_q = ctx.Queue()
            for part in _split(names, min(args.procs, args.workers)):
                pr = ctx.Process(target=_dispatch_proc, args=(server.url, join, part, go, out_q),
                                 daemon=True)
                pr.start()
                procs.append(pr)
            _collect(out_q, len(procs), procs, 180)
            bl.wait_quiet(max_wait=args.wait_quiet)
            prof = bl.Profiler(server.pid, profile) if profile else contextlib.nullcontext()
            with bl.LoadMeter() as load, prof:
                cpu0 = bl.cpu_seconds(server.pid)
                t0 = time.time()
                go.set()
                parts = _collect(out_q, len(procs), procs, 600)
                t_end = time.time()
                cpu1 = bl.cpu_seconds(server.pid)
            info = admin.wait(job["id"], poll=0.1, timeout=120)
            admin.close()
            failed = False
        finally:
            _stop_procs(procs, 0.0 if failed else 10.0)
            server.stop()
    done = info["counts"]["done"]
    if done != args.units or info["state"] != "done":
        raise RuntimeError(f"job ended {info['state']} with {done}/{args.units} units done")
    elapsed = info["last_done_at"] - t0
    lat = {k: sorted(x for pt in parts for x in pt[k]) for k in ("lease", "put", "complete")}
    return {
        "store": store, "rate": args.units / elapsed, "keepalive": keepalive, "elapsed": elapsed,
        "client_elapsed": t_end - t0, "submit_s": submit_s,
        "units_counted": sum(pt["units"] for pt in parts),
        "discarded": sum(pt["errors"] for pt in parts),
        "server_cpu": (cpu1 - cpu0) / (t_end - t0),
        "server_ms_per_unit": (cpu1 - cpu0) / args.units * 1000,
        "ours": load.ours, "others": load.others, "postgres": load.postgres,
        "put_p50": bl.percentile(lat["put"], 0.5), "put_p99": bl.percentile(lat["put"], 0.99),
        "complete_p50": bl.percentile(lat["complete"], 0.5),
        "complete_p99": bl.percentile(lat["complete"], 0.99),
    }


# ----------------------------------------------------------------------------- (b) heartbeats


def _beat(clients: list[Any], hb: Any, start_at: float, end_at: float,
          results: list[tuple[int, int, list[float]]]) -> None:
    """One thread: heartbeat its identities in turn, back to back, from start_at to end_at."""
    lat: list[float] = []
    errors = 0
    n = 0
    while time.time() < start_at:
        time.sleep(0.001)
    k = 0
    while True:
        c = clients[k % len(clients)]
        k += 1
        t = time.perf_counter()
        try:
            c.heartbeat(hb)
        except Exception:  # noqa: BLE001 - counted, reported
            errors += 1
        if time.time() > end_at:
            break
        lat.append(time.perf_counter() - t)
        n += 1
    results.append((n, errors, lat))


def _heartbeat_proc(url: str, join: str, names: list[str], threads: int, cmd_q: Any,
                    out_q: Any) -> None:
    """One load process: enroll its identities, then run heartbeat windows on command."""
    from officegrid import protocol as p
    from officegrid.client import Client

    try:
        clients: list[Any] = [None] * len(names)
        slices = _split(list(range(len(names))), threads)

        def enroll(idx: list[int]) -> None:
            with Client(url, join, max_retry_time=60) as jc:
                for i in idx:
                    clients[i] = _worker_client(url, jc, names[i])

        ts = [threading.Thread(target=enroll, args=(s,)) for s in slices]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if any(c is None for c in clients):
            raise RuntimeError("an identity could not enroll")
        out_q.put({"ready": True})
        hb = p.Heartbeat(attempts=[], state="idle")
        while True:
            cmd = cmd_q.get()
            if cmd is None:
                break
            start_at, end_at = cmd
            results: list[tuple[int, int, list[float]]] = []

            ts = [threading.Thread(target=_beat, args=([clients[i] for i in s], hb, start_at,
                                                       end_at, results))
                  for s in slices if s]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            out_q.put({"n": sum(r[0] for r in results), "errors": sum(r[1] for r in results),
                       "lat": [x for r in results for x in r[2]]})
        for c in clients:
            c.close()
    except BaseException as exc:
        out_q.put({"fatal": repr(exc)})
        raise


def heartbeat_bench(store: str, args: argparse.Namespace, tmp: Path) -> dict:
    ctx = mp.get_context("spawn")
    runs: list[dict] = []
    with _store_ctx(store, args.pg_url) as db:
        server = bl.Server(tmp / f"heartbeat-{store}", db, env=args.server_env)
        procs: list[Any] = []
        cmd_qs: list[Any] = []
        failed = True
        try:
            server.start()
            keepalive = bl.keepalive_latency(server.url)
            admin = server.client(timeout=120)
            join = admin.create_token("enroll", uses=args.hb_workers)["token"]
            names = [f"idle-{i}" for i in range(args.hb_workers)]
            out_q = ctx.Queue()
            t = time.monotonic()
            for part in _split(names, args.hb_procs):
                cq = ctx.Queue()
                pr = ctx.Process(target=_heartbeat_proc,
                                 args=(server.url, join, part, args.hb_threads, cq, out_q),
                                 daemon=True)
                pr.start()
                procs.append(pr)
                cmd_qs.append(cq)
            _collect(out_q, len(procs), procs, 600)
            setup_s = time.monotonic() - t
            profile = tmp / f"profile-heartbeat-{store}.txt" if args.profile else None
            for window in range(args.runs + (1 if profile else 0)):
                profiled = window == args.runs  # the extra window, not counted
                bl.wait_quiet(max_wait=args.wait_quiet)
                start_at = time.time() + 0.5
                end_at = start_at + args.hb_seconds
                for cq in cmd_qs:
                    cq.put((start_at, end_at))
                while time.time() < start_at:
                    time.sleep(0.005)
                prof = bl.Profiler(server.pid, profile) if profiled and profile \
                    else contextlib.nullcontext()
                with bl.LoadMeter() as load, prof:
                    cpu0 = bl.cpu_seconds(server.pid)
                    while time.time() < end_at:
                        time.sleep(0.01)
                    cpu1 = bl.cpu_seconds(server.pid)
                parts = _collect(out_q, len(procs), procs, args.hb_seconds + 120)
                if profiled:
                    continue
                lat = sorted(x for pt in parts for x in pt["lat"])
                n = sum(pt["n"] for pt in parts)
                runs.append({"rps": n / args.hb_seconds, "n": n,
                             "errors": sum(pt["errors"] for pt in parts),
                             "p50": bl.percentile(lat, 0.5), "p99": bl.percentile(lat, 0.99),
                             "max": lat[-1] if lat else float("nan"),
                             "server_cpu": (cpu1 - cpu0) / args.hb_seconds,
                             "server_ms_per_req": (cpu1 - cpu0) / max(1, n) * 1000,
                             "ours": load.ours, "others": load.others,
                             "postgres": load.postgres})
                time.sleep(0.5)
            for cq in cmd_qs:
                cq.put(None)
            admin.close()
            failed = False
        finally:
            _stop_procs(procs, 0.0 if failed else 30.0)
            server.stop()
    return {"store": store, "runs": runs, "setup_s": setup_s, "keepalive": keepalive,
            "profile": profile}


# ----------------------------------------------------------------------------- report


def _ms(x: float) -> str:
    return f"{x * 1000:.1f}"


def _med(runs: list[dict], key: str) -> float:
    return bl.spread([r[key] for r in runs])[0]


def report_dispatch(results: dict[str, list[dict]], skipped: dict[str, str],
                    args: argparse.Namespace, cmd: str) -> str:
    rows = []
    lines = []
    met = []
    keepalive = float("nan")
    for store, runs in results.items():
        med, lo, hi = bl.spread([r["rate"] for r in runs])
        keepalive = _med(runs, "keepalive")
        rows.append([store, len(runs), f"**{med:.0f}**", f"{lo:.0f}", f"{hi:.0f}",
                     f"{_med(runs, 'elapsed'):.2f}",
                     f"{_med(runs, 'server_cpu'):.2f}",
                     f"{_med(runs, 'server_ms_per_unit'):.1f}",
                     f"{_ms(_med(runs, 'put_p50'))} / {_ms(_med(runs, 'put_p99'))}",
                     f"{_ms(_med(runs, 'complete_p50'))} / {_ms(_med(runs, 'complete_p99'))}",
                     f"{_med(runs, 'postgres'):.2f}" if store == "postgresql" else "",
                     f"{_med(runs, 'others'):.2f}"])
        cpu_ms = _med(runs, "server_ms_per_unit")
        if store == "sqlite":
            met.append(f"**Bar: >= {BAR_UNITS_PER_S:.0f} units/s on SQLite: "
                       f"{'met' if med >= BAR_UNITS_PER_S else 'NOT met'}** "
                       f"(median {med:.0f} units/s). At {cpu_ms:.1f} ms of server CPU per "
                       f"unit, each core of server CPU buys about {1000 / cpu_ms:.0f} units/s, "
                       "and the server cannot use much more than one: its Python code runs in "
                       "one interpreter (one GIL). "
                       f"{BAR_UNITS_PER_S:.0f} units/s needs <= {1000 / BAR_UNITS_PER_S:.1f} ms "
                       "per unit (or several server processes, which only PostgreSQL allows).")
            p50, p99 = _med(runs, "complete_p50"), _med(runs, "complete_p99")
            if p99 > 10 * p50:
                met.append(f"\nSQLite's tail: `complete` p99 {_ms(p99)} ms vs p50 {_ms(p50)} ms. "
                           "Write transactions (`BEGIN IMMEDIATE`) from the server's 16 pool "
                           "threads contend for SQLite's one write lock, and a waiting "
                           "connection polls in sleeps of up to 100 ms (SQLite's busy "
                           "handler) instead of queueing.")
        lines.append(f"- {store}: units/s per run "
                     + ", ".join(f"{r['rate']:.0f}" for r in runs)
                     + f"; completions discarded: {sum(r['discarded'] for r in runs)}; "
                     f"set-up (upload {args.units:,} inputs with 16 threads + create the job): "
                     f"{_med(runs, 'submit_s'):.1f} s")
    for store, why in skipped.items():
        rows.append([store, 0, "not run", "", "", "", "", "", "", "", "", ""])
        lines.append(f"- {store}: not run ({why})")
    tab = bl.table(["store", "runs", "units/s median", "min", "max", "time (s)",
                    "server CPU (cores)", "server CPU per unit (ms)",
                    "PUT result p50/p99 (ms)", "complete+next p50/p99 (ms)",
                    "PostgreSQL CPU (cores)", "other load (cores)"], rows)
    nprocs = min(args.procs, args.workers)
    return f"""## Dispatch throughput (bench/dispatch.py, part a)

What: one job of {args.units:,} one-record units (`empty_job:process`); {args.workers} simulated
workers, each its own enrolled identity with its own session and `officegrid.client.Client`,
spread over {nprocs} client processes (threads inside), each looping lease -> PUT result blob
-> `complete(want_next=True)` over HTTP (a real worker also downloads the unit's input and
uploads a log blob: 2 more requests per unit). Units/s = {args.units:,} / (job's
`last_done_at` - the moment all workers were released). A fresh server process and, for
PostgreSQL, a fresh database per run (dropped after).

Machine: {bl.machine()}. The server (one uvicorn process) and the {nprocs} load processes share
the same cores. {bl.server_line(keepalive, args.server_env)}

Command: `{cmd}` ({bl.stamp()})

{tab}

{chr(10).join(met)}

{chr(10).join(lines)}
- "server CPU" = the server process's CPU time / the run's wall time; about 1.0 means its one
  Python interpreter (event loop + GIL-bound thread pool) is saturated. "server CPU per unit" =
  its CPU time / units (2 HTTP requests + 1 lease hand-off per unit).
- Latencies are client-side and include the load processes' own GIL waits.
- "PostgreSQL CPU" = the local PostgreSQL server's processes (working for our server); "other
  load" = CPU used meanwhile by everything else outside this benchmark (other people's tests
  on the same machine); runs wait up to {args.wait_quiet:g} s for it to drop below 0.3 cores.
"""


def report_heartbeat(results: list[dict], skipped: dict[str, str], args: argparse.Namespace,
                     cmd: str) -> str:
    rows = []
    lines = []
    keepalive = float("nan")
    for res in results:
        runs = res["runs"]
        keepalive = res["keepalive"]
        med, lo, hi = bl.spread([r["rps"] for r in runs])
        rows.append([res["store"], len(runs), f"**{med:.0f}**", f"{lo:.0f}", f"{hi:.0f}",
                     _ms(_med(runs, "p50")), _ms(_med(runs, "p99")),
                     _ms(max(r["max"] for r in runs)),
                     f"{_med(runs, 'server_cpu'):.2f}", f"{_med(runs, 'server_ms_per_req'):.2f}",
                     f"{_med(runs, 'postgres'):.2f}" if res["store"] == "postgresql" else "",
                     sum(r["errors"] for r in runs), f"{_med(runs, 'others'):.2f}"])
        lines.append(f"- {res['store']}: requests/s per window "
                     + ", ".join(f"{r['rps']:.0f}" for r in runs)
                     + "; p99 per window (ms) " + ", ".join(_ms(r["p99"]) for r in runs)
                     + f"; enrolling + opening {args.hb_workers:,} sessions took "
                     f"{res['setup_s']:.1f} s")
    for store, why in skipped.items():
        rows.append([store, 0, "not run", "", "", "", "", "", "", "", "", "", ""])
        lines.append(f"- {store}: not run ({why})")
    tab = bl.table(["store", "windows", "requests/s median", "min", "max", "p50 (ms)",
                    "p99 (ms)", "max (ms)", "server CPU (cores)", "server CPU per request (ms)",
                    "PostgreSQL CPU (cores)", "errors", "other load (cores)"], rows)
    at_default = args.hb_workers / 20.0
    return f"""## Heartbeat load (bench/dispatch.py, part b)

What: {args.hb_workers:,} idle worker identities (each enrolled with a join token, with its own
session and `Client`, so its own keep-alive connection) send `POST /heartbeat` (no attempts,
state idle) back to back from a bounded pool: {args.hb_procs} client processes x
{args.hb_threads} threads = {args.hb_procs * args.hb_threads} requests in flight at most, each
thread cycling through its share of the identities. {args.runs} windows of {args.hb_seconds:g} s
on one server per store; requests/s = heartbeats completed in the window / window length;
latency is client-side per request (p50/p99: median over windows; max: over all windows).

Machine: {bl.machine()}. The server and the {args.hb_procs} load processes share the same cores
(the load generator takes about one of the two). {bl.server_line(keepalive, args.server_env)}

Command: `{cmd}` ({bl.stamp()})

{tab}

{chr(10).join(lines)}
- For scale: at the default heartbeat interval (20 s), {args.hb_workers:,} idle desktops send
  {at_default:.0f} heartbeats/s.
- Each heartbeat costs the server a write transaction in its thread pool (session check, touch,
  lease renewal, draining flag), the token lookup (a read transaction unless cached), plus
  uvicorn/h11, FastAPI and pydantic work.
"""


def report_profiles(profiles: list[tuple[str, Path]], args: argparse.Namespace,
                    cmd: str) -> str:
    parts = [f"""## Server profiles (bench/dispatch.py --profile)

Where the server's Python time goes, sampled with `py-spy record --gil` (only samples holding
the GIL, i.e. the interpreter's one core; 250 Hz) during an extra run that is not counted in
the tables above. A sample is put in the first category one of whose frames it contains, else
in the group of its innermost frame's package. Server: `python -m officegrid server`, default
settings.

Command: `{cmd}` ({bl.stamp()})
"""]
    for title, raw in profiles:
        if not raw.exists():
            parts.append(f"### {title}\n\nno profile ({raw.name} missing: is py-spy "
                         "installed and allowed to attach?)\n")
            continue
        total, rows = bl.profile_breakdown(raw)
        big = [(k, v) for k, v in rows if v >= 1.0]
        small = sum(v for _, v in rows if v < 1.0)
        tab = bl.table(["where", "% of GIL samples"],
                       [[k, f"{v:.1f}"] for k, v in big] + [["(rest, < 1 % each)",
                                                              f"{small:.1f}"]])
        marker = "complete.<locals>.run" if "dispatch" in title else "heartbeat.<locals>.run"
        inner = bl.store_breakdown(raw, marker)
        inner_txt = "; ".join(f"`{k}` {v:.1f} %" for k, v in inner)
        parts.append(f"### {title} ({total:,} samples)\n\n{tab}\n\nInside "
                     f"`{marker.split('.')[0]}` (store functions, % of all samples): "
                     f"{inner_txt}\n")
    return "\n".join(parts)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="about 1 minute: 1,000 units, 300 identities, 3 s windows, SQLite only")
    ap.add_argument("--runs", type=int, default=3, help="runs per store (>= 3 for a median)")
    ap.add_argument("--units", type=int, default=2000, help="one-record units per dispatch job")
    ap.add_argument("--workers", type=int, default=16, help="simulated workers for dispatch")
    ap.add_argument("--procs", type=int, default=4,
                    help="client processes the dispatch workers are spread over")
    ap.add_argument("--hb-workers", type=int, default=1000, help="idle identities heartbeating")
    ap.add_argument("--hb-seconds", type=float, default=10.0, help="length of a heartbeat window")
    ap.add_argument("--hb-procs", type=int, default=4, help="heartbeat client processes")
    ap.add_argument("--hb-threads", type=int, default=8, help="threads per heartbeat process")
    ap.add_argument("--stores", default=None,
                    help="comma-separated: sqlite, postgresql [default: both; --quick: sqlite]")
    ap.add_argument("--only", choices=("dispatch", "heartbeat"), help="run one part only")
    ap.add_argument("--pg-url", default=bl.PG_URL,
                    help="PostgreSQL admin URL; a scratch database is created next to it")
    ap.add_argument("--profile", action="store_true",
                    help="one extra, uncounted run per store and part with py-spy attached to "
                         "the server; writes the 'profile' section")
    ap.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment of the server, e.g. OFFICEGRID_THREADS=4 "
                         "(repeatable; for experiments)")
    ap.add_argument("--wait-quiet", type=float, default=5.0, metavar="SECONDS",
                    help="before each timed run, wait up to this long for other processes on "
                         "the machine to use < 0.3 cores (0: do not wait)")
    ap.add_argument("--results", type=Path, default=bl.RESULTS,
                    help="the Markdown file whose sections are rewritten")
    ap.add_argument("--no-write", action="store_true", help="do not update the results file")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be >= 1 (3 or more for a meaningful median)")
    if args.quick:
        args.units, args.hb_workers, args.hb_seconds = 1000, 300, 3.0
        args.wait_quiet = min(args.wait_quiet, 3.0)
    if args.stores is None:
        args.stores = "sqlite" if args.quick else "sqlite,postgresql"
    try:
        args.server_env = dict(kv.split("=", 1) for kv in args.server_env)
    except ValueError:
        ap.error("--server-env takes NAME=VALUE")
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    bad = set(stores) - {"sqlite", "postgresql"}
    if bad:
        ap.error(f"unknown store(s): {', '.join(sorted(bad))}")
    cmd = "python bench/dispatch.py" + (" " + " ".join(argv if argv is not None
                                                       else sys.argv[1:])).rstrip()
    bl.install_signal_handlers()
    skipped: dict[str, str] = {}
    if "postgresql" in stores:
        why = bl.pg_available(args.pg_url)
        if why:
            skipped["postgresql"] = f"PostgreSQL unavailable: {why}"
            stores.remove("postgresql")
            print(f"skipping PostgreSQL: {why}", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="og-bench-dispatch-"))
    started = time.monotonic()
    profiles: list[tuple[str, Path]] = []
    try:
        if args.only in (None, "dispatch"):
            results: dict[str, list[dict]] = {}
            for store in stores:
                for run in range(args.runs):
                    r = dispatch_run(store, args, tmp, run)
                    results.setdefault(store, []).append(r)
                    print(f"dispatch {store} run {run + 1}: {r['rate']:.0f} units/s "
                          f"({r['elapsed']:.2f} s, server CPU {r['server_cpu']:.2f} cores, "
                          f"{r['server_ms_per_unit']:.1f} ms/unit, other load "
                          f"{r['others']:.2f} cores)", flush=True)
                if args.profile:
                    raw = tmp / f"profile-dispatch-{store}.txt"
                    dispatch_run(store, args, tmp, args.runs, profile=raw)
                    profiles.append((f"dispatch, {store}", raw))
            text = report_dispatch(results, skipped, args, cmd)
            if not args.no_write:
                bl.update_section("dispatch", text, args.results)
        if args.only in (None, "heartbeat"):
            hb_results = []
            for store in stores:
                res = heartbeat_bench(store, args, tmp)
                hb_results.append(res)
                if res["profile"] is not None:
                    profiles.append((f"heartbeat, {store}", res["profile"]))
                for i, r in enumerate(res["runs"]):
                    print(f"heartbeat {store} window {i + 1}: {r['rps']:.0f} req/s, "
                          f"p50 {_ms(r['p50'])} ms, p99 {_ms(r['p99'])} ms, "
                          f"server CPU {r['server_cpu']:.2f}, errors {r['errors']}, "
                          f"other load {r['others']:.2f} cores", flush=True)
            text = report_heartbeat(hb_results, skipped, args, cmd)
            if not args.no_write:
                bl.update_section("heartbeat", text, args.results)
        if profiles:
            text = report_profiles(profiles, args, cmd)
            print(text)
            if not args.no_write:
                bl.update_section("profile", text, args.results)
    finally:
        bl.cleanup()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}", file=sys.stderr)
    print(f"done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
