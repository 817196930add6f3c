"""The worker agent's supervisor: identity, session, heartbeats, code sync and unit slots.

Threads:
- one heartbeat thread renews every lease of this worker in one request per interval. The
  supervisor, never the code that runs the user's function, heartbeats: a CPU-bound or crashing
  unit cannot make a live worker look dead (dramatiq #692);
- one thread per slot: lease (long poll) → materialize the release → fetch the input → run the
  runner child → store the result blob → complete (asking for the next unit in the same call).

Stopping (SIGTERM, Ctrl-C) vacates every running unit at once: the runner is asked to stop, its
process tree is killed after a short grace, and the unit is given back without using any budget.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from officegrid import __version__
from officegrid import protocol as p
from officegrid.backoff import Backoff
from officegrid.cas import ContentStore, compress, hash_bytes
from officegrid.client import ApiError, Client
from officegrid.config import WorkerSettings
from officegrid.envs.prepare import EnvNotReady, Preparer
from officegrid.logblob import encode_logs
from officegrid.worker import processes
from officegrid.worker.cache import enforce_disk_budget, prune_worker_cache
from officegrid.worker.fetch import blob_fetcher
from officegrid.worker.identity import (
    AgentError,
    Identity,
    default_work_dir,
    host_info,
    load_identity,
    load_nonce,
    lock_work_dir,
    save_identity,
    save_nonce,
    workdir_id,
)
from officegrid.worker.owner import OwnerMonitor, load_policy

log = logging.getLogger("officegrid.worker")
data_log = logging.getLogger("officegrid.worker.data")  # logged by default (logs.EVENT_LOGGERS)

INLINE_MAX = 1 << 20  # compressed bytes of a result sent inside the completion request
SECRET_ENV = ("OFFICEGRID_TOKEN", "OFFICEGRID_ENROLL", "OFFICEGRID_TOKEN_FILE")
REPLICA_RETRY = 60.0  # seconds before a replica that could not be taken (disk, refusal) is retried


class RunningUnit:
    """One attempt being executed by a slot."""

    def __init__(self, lease: p.Lease) -> None:
        self.lease = lease
        self.abort = threading.Event()
        self.abort_reason = ""
        self.progress = 0
        self.proc: Any = None
        self.env: str | None = None  # environment hash the unit runs in (officegrid.envs)
        self.fail_error: str | None = None  # set by the owner monitor (memory cap): fail it


class Agent:
    """A worker agent bound to one work dir.

    Args:
        settings: worker settings (server URL, token or join token, work dir, slots...).
    """

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.work_dir = (settings.work_dir or default_work_dir()).resolve()
        self.instance = uuid.uuid4().hex
        self.stopping = threading.Event()
        self.draining = False
        self.running: dict[str, RunningUnit] = {}
        self.lock = threading.Lock()
        self.release_locks: dict[str, threading.Lock] = {}
        self.backoff = Backoff(settings.backoff_base, settings.backoff_cap)
        self.fatal: str | None = None
        self.state_reason: str | None = None
        self.heartbeat_interval = 10.0
        self.client: Client | None = None
        self.owner: OwnerMonitor | None = None  # owner policy enforcement (worker/owner.py)
        self.heartbeat_now = threading.Event()  # set: heartbeat at once (owner state changed)
        self.broken_releases: dict[str, str] = {}  # release id -> why this worker refuses it
        self.envs: Preparer | None = None  # builds release environments before leasing
        self.replicas: Any = None  # data source replicas (sync/replication/fleet.py), on first use
        self.replica_refused: dict[str, tuple[float, str]] = {}  # name -> (retry at, why)
        self.replicating: dict[str, int] = {}  # what the server last said to replicate
        self.cgroups: Any = None  # cgroup v2 base for unit trees (worker/cgroup.py), or None
        from officegrid.signing import load_public

        self.trusted = [load_public(k) for k in settings.trusted_keys]
        from officegrid.sync.bandwidth import TokenBucket, parse_rate
        from officegrid.worker.windows import Schedule

        # One bucket for the agent: every bulk download of every slot shares --max-bandwidth.
        self.bandwidth = (TokenBucket(parse_rate(settings.max_bandwidth))
                          if settings.max_bandwidth else None)
        self.transfer_window = (Schedule.parse(settings.transfer_window)
                                if settings.transfer_window else None)
        self._window_was_closed = False  # log once per closed period, not per lease request
        self._window_lock = threading.Lock()

    # ------------------------------------------------------------------ start-up

    def _identity(self) -> Identity:
        s = self.settings
        ident = load_identity(self.work_dir)
        if ident is not None and s.token and ident.token != s.token:
            ident = None  # an explicit token overrides a stored identity
        if ident is not None:
            return ident
        hostname, plat = host_info()
        if s.token:
            with Client(s.server, s.token, ca=s.ca, instance=self.instance) as c:
                sess = c.open_session(self._session_request())
            save_nonce(self.work_dir, sess.nonce)
            ident = Identity(server=s.server, worker_id=sess.worker_id, name=sess.name,
                             token=s.token)
        elif s.enroll:
            # A desktop may boot before the server: keep trying (with backoff) to enroll.
            with Client(s.server, s.enroll, ca=s.ca, max_retry_time=None,
                        backoff=self.backoff) as c:
                res = c.enroll(hostname, plat, s.name)
            ident = Identity(server=s.server, worker_id=res["worker_id"], name=res["name"],
                             token=res["token"])
            print(f"officegrid worker: enrolled as {ident.name!r}", file=sys.stderr, flush=True)
        else:
            raise AgentError(
                f"no worker identity in {self.work_dir}: start once with --enroll JOIN_TOKEN "
                "(from `officegrid token create --enroll`) or --token WORKER_TOKEN"
            )
        save_identity(self.work_dir, ident)
        return ident

    def _session_request(self) -> p.SessionRequest:
        hostname, plat = host_info()
        return p.SessionRequest(nonce=load_nonce(self.work_dir), hostname=hostname,
                                platform=plat, version=__version__, resources=self._resources())

    def _resources(self) -> p.WorkerResources:
        releases_dir = self.work_dir / "releases"
        cached = [d.name for d in releases_dir.iterdir() if len(d.name) == 64] \
            if releases_dir.is_dir() else []
        return p.WorkerResources(
            slots=self.settings.slots, free_disk=shutil.disk_usage(self.work_dir).free,
            free_memory=psutil.virtual_memory().available, releases=cached,
            broken_releases=sorted(set(self.broken_releases)
                                   | set(self.envs.broken() if self.envs else ())),
            prepared=self.envs.prepared_list() if self.envs else [],
            fetch_allowed=self._fetch_allowed(),
            data=self.replicas.positions() if self.replicas is not None else {})

    def _fetch_allowed(self) -> bool:
        """True inside the transfer window (or without one): release fetches may start.
        Logs once each time the window is found closed."""
        window = self.transfer_window
        if window is None:
            return True
        from datetime import UTC, datetime

        now = datetime.now(UTC)
        if window.contains(now):
            self._window_was_closed = False
            return True
        with self._window_lock:  # slots ask concurrently: one line per closed period
            first = not self._window_was_closed
            self._window_was_closed = True
        if first:
            nxt = window.next_open(now)
            when = nxt.astimezone().strftime("%a %H:%M") if nxt else "never"
            log.warning("transfer window %r is closed: release transfers deferred until %s; "
                        "only units of releases cached here are taken", window.spec, when)
        return False

    def run(self) -> int:
        """Run until stopped; return the process exit code (0 clean, 3 identity refused)."""
        lock = lock_work_dir(self.work_dir)
        try:
            return self._run()
        finally:
            lock.release()

    def _run(self) -> int:
        s = self.settings
        marker_prefix = f"{workdir_id(self.work_dir)}:"

        def agent_alive(marker: str) -> bool:
            # Markers are "<workdir id>:<agent pid>:<attempt>": spare units of a live agent
            # (a copy of this work dir started beside it must not kill its work).
            parts = marker.split(":")
            pid = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else 0
            return pid != os.getpid() and pid > 0 and psutil.pid_exists(pid)

        killed = processes.sweep_leftovers(marker_prefix, keep=agent_alive)
        if killed:
            log.warning("killed %d leftover unit processes of an earlier agent", len(killed))
        self.marker_prefix = f"{marker_prefix}{os.getpid()}:"
        from officegrid.worker import cgroup

        self.cgroups = cgroup.discover(s.cgroup_root)  # None: SIGSTOP and RSS (logged once)
        shutil.rmtree(self.work_dir / "attempts", ignore_errors=True)
        ident = self._identity()
        self.ident = ident
        self.client = Client(ident.server, ident.token, ca=s.ca, instance=self.instance,
                             max_retry_time=None, backoff=self.backoff)
        self.client.bandwidth = self.bandwidth
        self.cache = ContentStore(self.work_dir / "cache", durable=False)
        self.cache.sweep_temp()
        self.envs = self._make_preparer()
        try:
            sess = self.client.open_session(self._session_request())
        except ApiError as exc:
            raise AgentError(exc.message) from exc
        save_nonce(self.work_dir, sess.nonce)
        self.heartbeat_interval = sess.heartbeat_interval
        self.envs.start()
        print(f"officegrid worker {ident.name!r} serving {ident.server} with {s.slots} slot(s) "
              f"(work dir {self.work_dir})", file=sys.stderr, flush=True)
        self._install_signals()
        self._start_owner()
        hb = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        hb.start()
        slots = [threading.Thread(target=self._slot_loop, args=(i,), name=f"slot-{i}",
                                  daemon=True) for i in range(s.slots)]
        for t in slots:
            t.start()
        stop_seen: float | None = None
        while any(t.is_alive() for t in slots):
            for t in slots:
                t.join(timeout=0.2)
            if self.stopping.is_set():
                if stop_seen is None:
                    # Told first, the server leases nothing more to this agent; a lease it
                    # gave just before reaches a slot still alive, which gives it back.
                    self._announce("stopping", "agent stopping")
                # Slots blocked in a long poll hold no unit: do not wait out the poll.
                stop_seen = stop_seen or time.monotonic()
                with self.lock:
                    busy = bool(self.running)
                if not busy and time.monotonic() - stop_seen > 1.0:
                    break
        self.stopping.set()
        self.heartbeat_now.set()
        self._announce("offline", "agent stopped")  # the operator sees it at once
        if self.owner is not None:
            self.owner.close()
        if self.cgroups is not None:
            self.cgroups.close()
        hb.join(timeout=5)
        self.envs.stop()
        if self.replicas is not None:
            self.replicas.close()  # seals each replica: the next start trusts it unchanged
        self.client.close()
        if self.fatal:
            print(f"officegrid worker: {self.fatal}", file=sys.stderr, flush=True)
            return 3
        print("officegrid worker: stopped", file=sys.stderr, flush=True)
        return 0

    def _start_owner(self) -> None:
        """Start the owner monitor (policy, pause, resource guards); print the policy line."""
        s = self.settings
        policy = load_policy(s)
        line = policy.describe()
        print(line if line.startswith("owner policy") else f"policy: {line}", file=sys.stderr,
              flush=True)

        def units() -> list[RunningUnit]:
            with self.lock:
                return list(self.running.values())

        self.owner = OwnerMonitor(
            policy, self.work_dir, units, on_change=self.heartbeat_now.set,
            max_memory=s.max_memory,
            min_free_disk=s.min_free_disk)
        self.owner.start()

    def _may_start(self) -> bool:
        """Wait (on an event) until the owner policy lets this worker start a unit; False if
        the agent is stopping."""
        owner = self.owner
        while owner is not None and not owner.may_start.is_set():
            if self.stopping.is_set():
                return False
            owner.may_start.wait(0.5)  # the timeout only notices `stopping`
        return not self.stopping.is_set()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_signal(signum, _frame):
            n = len(self.running)  # no lock: a handler must not wait for the thread it interrupted
            log.warning("signal %s: stopping%s", signum,
                        f" (vacating {n} running unit{'s' * (n != 1)})" if n else "")
            self.stop("agent stopping")

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def _announce(self, state: str, reason: str) -> None:
        """One heartbeat saying ``state`` (``stopping``: lease nothing more; ``offline``), with
        the attempts still running so their leases stay renewed. Best effort, ~2 s at most."""
        with self.lock:
            attempts = list(self.running)
        try:
            with Client(self.ident.server, self.ident.token, ca=self.settings.ca,
                        instance=self.instance, max_retry_time=2.0) as c:
                res = c.heartbeat(p.Heartbeat(attempts=attempts, state=state, reason=reason))
            if res.nonce:  # every heartbeat rotates the session nonce: the next start needs it
                save_nonce(self.work_dir, res.nonce)
        except Exception as exc:  # noqa: BLE001 - shutting down: never fail on this
            log.debug("could not tell the server %s: %s", state, exc)

    def stop(self, reason: str = "agent stopping") -> None:
        """Vacate every running unit and stop (safe from signal handlers and other threads)."""
        self.stopping.set()
        with self.lock:
            for ru in self.running.values():
                ru.abort_reason = reason
                ru.abort.set()

    def _die(self, message: str) -> None:
        self.fatal = message
        self.stop("identity refused")

    # ------------------------------------------------------------------ heartbeats

    def _heartbeat_loop(self) -> None:
        assert self.client is not None
        hb_client = Client(self.ident.server, self.ident.token, ca=self.settings.ca,
                           instance=self.instance,
                           max_retry_time=max(1.0, self.heartbeat_interval))
        try:
            while not self.stopping.is_set():
                self.heartbeat_now.wait(self.heartbeat_interval)
                self.heartbeat_now.clear()
                if self.stopping.is_set():
                    break
                with self.lock:
                    attempts = list(self.running)
                    progress = {a: ru.progress for a, ru in self.running.items()}
                state = "running" if attempts else ("draining" if self.draining else "idle")
                reason = self.state_reason
                if self.owner is not None:
                    state, reason = self.owner.heartbeat_state(state, reason)
                try:
                    res = hb_client.heartbeat(p.Heartbeat(
                        attempts=attempts, state=state, reason=reason,
                        progress=progress))
                except ApiError as exc:
                    if exc.code == p.E_REENROLL or exc.status == 401:
                        self._die(exc.message)
                        return
                    log.warning("heartbeat failed: %s", exc)
                    continue
                self.draining = res.drain
                if res.nonce:
                    save_nonce(self.work_dir, res.nonce)
                with self.lock:
                    for a in res.abort:
                        ru = self.running.get(a)
                        if ru is not None:
                            ru.abort_reason = "the server withdrew the unit"
                            ru.abort.set()
        finally:
            hb_client.close()

    # ------------------------------------------------------------------ slots

    def _slot_loop(self, slot: int) -> None:
        assert self.client is not None
        s = self.settings
        next_lease: p.Lease | None = None
        while not self.stopping.is_set():
            lease = next_lease
            next_lease = None
            if lease is None:
                if not self._may_start():
                    return
                try:
                    res = self.client.lease(p.LeaseRequest(resources=self._resources(),
                                                           max_units=1, wait=s.lease_wait))
                except ApiError as exc:
                    if exc.code == p.E_REENROLL or exc.status in (401, 403):
                        self._die(exc.message)
                        return
                    log.warning("lease request failed: %s", exc)
                    self.stopping.wait(self.backoff.next_delay())
                    continue
                if res.prepare and self.envs is not None:
                    self.envs.request(res.prepare)  # built in the background, then leased
                # Replicas the server waits for are caught up in the background.
                cannot = self._follow_data(list(res.replicate)) if res.replicate else None
                if res.replicate and res.replicate != self.replicating:
                    data_log.info("replicating data source %s (units that need it wait until then)",
                             ", ".join(f"{n} to position {at}"
                                       for n, at in sorted(res.replicate.items())))
                self.replicating = dict(res.replicate)
                if not res.leases:
                    reason = cannot or res.reason
                    if reason != self.state_reason:
                        self.heartbeat_now.set()  # the operator sees why at once
                    self.state_reason = reason
                    self.draining = bool(res.reason and res.reason.startswith("draining"))
                    self.stopping.wait(self.backoff.jitter(res.retry_after or 1.0, 0.5))
                    continue
                self.state_reason = None
                self.draining = False
                lease = res.leases[0]
            if self.stopping.is_set():
                self._vacate_unstarted(lease)
                return
            if self.owner is not None and not self.owner.may_start.is_set():
                # The owner came back during the long poll: give the unit back unstarted.
                self._vacate_unstarted(lease, f"vacated: {self.owner.reason or 'owner policy'}")
                continue
            try:
                next_lease = self._run_lease(lease)
            except ApiError as exc:
                if exc.code == p.E_REENROLL or exc.status == 401:
                    self._die(exc.message)
                    return
                log.warning("unit %s: server refused a report: %s", lease.unit, exc)
            except Exception:
                log.exception("slot %d: unexpected error on unit %s", slot, lease.unit)
                self.stopping.wait(self.backoff.next_delay())

    def _vacate_unstarted(self, lease: p.Lease, reason: str = "agent stopping") -> None:
        assert self.client is not None
        try:
            self.client.vacate(lease.attempt, p.Vacate(reason=reason))
        except ApiError as exc:
            log.warning("vacate of unit %s not acknowledged: %s", lease.unit, exc)

    def _run_lease(self, lease: p.Lease) -> p.Lease | None:
        """Execute one lease end to end; return the next lease if the server gave one."""
        assert self.client is not None
        ru = RunningUnit(lease)
        with self.lock:
            self.running[lease.attempt] = ru
        attempt_dir = self.work_dir / "attempts" / lease.attempt
        try:
            attempt_dir.mkdir(parents=True, exist_ok=True)
            refused = self._check_signature(lease.release)
            if refused:
                return self._report_failure(ru, p.FailureKind.refused, refused, attempt_dir)
            if not (self.work_dir / "releases" / lease.release).is_dir() \
                    and not self._fetch_allowed():
                # Outside the transfer window no release transfer starts (a server without
                # the fetch_allowed filter may still lease it): give the unit back unstarted.
                self._vacate_unstarted(lease, "transfer window closed: release not cached here")
                self.stopping.wait(self.backoff.jitter(2.0))
                return None
            try:
                release_dir = self._ensure_release(lease.release)
                (attempt_dir / "input.jsonl").write_bytes(self.client.get_blob(lease.input))
            except ApiError as exc:
                if exc.status in (401, 409) or exc.code == p.E_REENROLL:
                    raise
                return self._report_failure(ru, p.FailureKind.setup,
                                            f"could not fetch the unit's code or input: {exc}",
                                            attempt_dir)
            except Exception as exc:
                return self._report_failure(ru, p.FailureKind.setup,
                                            f"could not prepare the unit: {exc!r}", attempt_dir)
            try:
                return self._execute(ru, release_dir, attempt_dir)
            except ApiError:
                raise
            except Exception as exc:
                # A bug or a local fault (disk full...) must not leave the lease to expire.
                log.exception("unit %s: the agent failed running it", lease.unit)
                return self._report_failure(ru, p.FailureKind.setup,
                                            f"the worker agent failed: {exc!r}", attempt_dir)
        finally:
            with self.lock:
                self.running.pop(lease.attempt, None)
            shutil.rmtree(attempt_dir, ignore_errors=True)

    def _check_signature(self, release_id: str) -> str | None:
        """None if the release may run here; else why not (it is then never leased here again
        by this agent: the lease requests list it as broken)."""
        from officegrid.signing import SignatureError, verify_release

        if not self.trusted:
            return None
        if release_id in self.broken_releases:
            return self.broken_releases[release_id]
        assert self.client is not None
        info = self.client.release(release_id)
        try:
            verify_release(self.trusted, release_id, info.get("signature"), info.get("signer"))
            return None
        except SignatureError as exc:
            self.broken_releases[release_id] = str(exc)
            log.warning("%s", exc)
            return str(exc)

    def _make_preparer(self) -> Preparer:
        """The background preparer of releases (environments under <work_dir>/envs)."""
        from officegrid.envs.build import EnvBuilder

        def report(release_id: str, env: str | None, error: str) -> None:
            assert self.client is not None
            self.client.env_broken(release_id, p.EnvBroken(env=env, error=error[-20000:]))

        s = self.settings
        return Preparer(EnvBuilder(self.work_dir / "envs", s.python), self.work_dir / "releases",
                        self._ensure_release, report,
                        s.env_retry_after)

    def _ensure_release(self, release_id: str) -> Path:
        from officegrid.sync.materialize import materialize

        dest = self.work_dir / "releases" / release_id
        with self.lock:
            rlock = self.release_locks.setdefault(release_id, threading.Lock())
        with rlock:
            assert self.client is not None
            stats = materialize(release_id, dest, cache=self.cache,
                                fetch=blob_fetcher(self.client, self.cache))
            os.utime(dest)  # most recently used: kept by the cache bound
            if not stats.already_present:
                log.info("release %s: fetched %d manifests, %d chunks, %d bytes",
                         release_id[:12], stats.manifests_fetched, stats.chunks_fetched,
                         stats.bytes_fetched)
                with self.lock:
                    in_use = {ru.lease.release for ru in self.running.values()} | {release_id}
                envs = self.envs.builder if self.envs else None
                prune_worker_cache(dest.parent, self.cache, in_use, self.settings.keep_releases,
                                   self.settings.cache_max_bytes, envs=envs)
                if self.settings.disk_budget is not None:
                    # Replicas go last, never one a running unit reads (see _replica_busy).
                    replicas = self._replica_set() if (self.work_dir / "data").is_dir() \
                        else None
                    enforce_disk_budget(self.work_dir, self.settings.disk_budget, self.cache,
                                        in_use, envs, replicas=replicas,
                                        replica_busy=self._replica_busy)
        return dest

    def _execute(self, ru: RunningUnit, release_dir: Path, attempt_dir: Path) -> p.Lease | None:
        s = self.settings
        lease = ru.lease
        spec = {
            "release_dir": str(release_dir), "entry": lease.entry, "input": "input.jsonl",
            "output": "output.jsonl", "log": "attempt.log", "attempt_id": lease.attempt,
            "unit_id": lease.unit, "job_id": lease.job, "release_id": lease.release,
            "worker": self.ident.name, "progress_interval": s.progress_interval, "extra": {},
            "data": self._replica_paths(lease),
        }
        spec_path = attempt_dir / "spec.json"
        spec_path.write_text(json.dumps(spec))
        env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # keep the materialized release as published
        marker = f"{self.marker_prefix}{lease.attempt}"
        try:  # a release with a lock runs in its environment's interpreter
            python, ru.env = self.envs.python_for(lease.release, release_dir) if self.envs \
                else (None, None)
        except EnvNotReady as exc:  # never build while holding a lease: give it back
            self._vacate_unstarted(lease, str(exc))
            return None
        unit_cg = None
        if self.cgroups is not None:
            try:
                unit_cg = self.cgroups.unit(lease.attempt, s.max_memory)
            except (OSError, ValueError) as exc:
                log.warning("unit %s runs without a cgroup: %s", lease.unit, exc)
        try:
            proc = processes.spawn_runner(python or s.python or sys.executable, spec_path,
                                          attempt_dir, attempt_dir / "stderr.log", env, marker,
                                          unit_cg, max_memory=s.max_memory)
        except BaseException:
            if unit_cg is not None:  # nothing runs in it: do not leave it to the next start
                unit_cg.remove()
            raise
        ru.proc = proc
        final: dict | None = None
        import_error: str | None = None
        try:
            while True:
                if ru.abort.is_set():
                    # Ask the runner to stop after its current record, then kill the tree.
                    proc.stop(timeout=s.vacate_grace, kill_grace=1.0)
                    # Read its "stopped" report: the finished prefix is handed in on vacate.
                    while (msg := proc.read_message(timeout=0.1)) is not None:
                        final, import_error = self._on_message(ru, msg, final, import_error)
                    break
                msg = proc.read_message(timeout=0.2)
                if msg is None:
                    if proc.wait(timeout=0) is not None:
                        # Drain what the runner wrote before it exited.
                        while (msg := proc.read_message(timeout=0.1)) is not None:
                            final, import_error = self._on_message(ru, msg, final, import_error)
                        break
                    continue
                final, import_error = self._on_message(ru, msg, final, import_error)
            code = proc.wait(timeout=30)
        finally:
            proc.close()  # kills what is left of the tree (one scan), closes the pipes
            if lease.data and self.replicas is not None:
                with self.lock:  # truncate the WAL only when no other unit may be reading
                    others = any(r.lease.data for a, r in self.running.items()
                                 if a != lease.attempt)
                self.replicas.checkpoint(truncate=not others)
        logs = {"stdout": attempt_dir / "stdout.log", "stderr": attempt_dir / "stderr.log",
                "log": attempt_dir / "attempt.log"}
        if ru.fail_error is None:  # the kernel enforced the memory cap (cgroup or job)
            ru.fail_error = proc.memory_cap_error(s.max_memory)
        if ru.fail_error is not None:  # the owner monitor killed it (memory cap)
            return self._report_failure(ru, p.FailureKind.crash, ru.fail_error, attempt_dir)
        if ru.abort.is_set():
            if (final is not None and final.get("type") == "done" and code == 0
                    and ru.abort_reason != "the server withdrew the unit" and not self.fatal):
                return self._complete(ru, attempt_dir, logs)  # it finished before stopping
            return self._give_back(ru, attempt_dir, logs, final)
        if import_error is not None:  # the runner says so; an exit code alone could be the job's
            return self._report_failure(ru, p.FailureKind.import_error, import_error,
                                        attempt_dir)
        if code != 0 or final is None or final.get("type") != "done":
            return self._report_failure(ru, p.FailureKind.crash, _crash_text(code, attempt_dir),
                                        attempt_dir)
        return self._complete(ru, attempt_dir, logs)

    def _replica_set(self) -> Any:
        """The agent's replicas (``sync.replication.fleet.ReplicaSet``), made on first use."""
        from officegrid.sync.replication.fleet import ReplicaSet
        from officegrid.sync.replication.remote import HttpRemote

        with self.lock:
            if self.replicas is None:
                client = self.client
                self.replicas = ReplicaSet(
                    self.work_dir / "data", lambda name: HttpRemote(client, name),
                    replica_name=self.ident.name,
                    may_transfer=self._fetch_allowed)
            return self.replicas

    def _replica_busy(self, name: str) -> bool:
        """True if a running unit reads data source ``name`` (units are registered in
        ``running`` before they ask for their replicas, so ``ReplicaSet.drop`` asking this
        under its lock never deletes a replica a unit has or is about to open)."""
        with self.lock:
            return any(name in (ru.lease.data or {}) for ru in self.running.values())

    def _follow_data(self, names: list[str]) -> str | None:
        """Start following ``names`` (the server holds back units needing newer replicas and
        says which; each follower thread catches up in the background, and the next lease
        request reports its position). Returns why a replica cannot be taken (too little free
        disk, the server refused), for the worker's state; the job's units then stay with
        other workers. None when all are followed."""
        from officegrid.sync.replication.errors import DataSourceError

        now = time.monotonic()
        failed = [n for n in names if self.replica_refused.get(n, (0.0, ""))[0] > now]
        if failed:  # asked again within the back-off: no new request, no new warning
            return self.replica_refused[failed[0]][1]
        try:
            self._replica_set().ensure(names)
        except (DataSourceError, ApiError) as exc:
            why = f"cannot replicate {', '.join(names)}: {exc}"
            log.warning("%s (trying again in %.0f s)", why, REPLICA_RETRY)
            for n in names:
                self.replica_refused[n] = (now + REPLICA_RETRY, why)
            return why
        return None

    def _replica_paths(self, lease: p.Lease) -> dict[str, str]:
        """The unit's data sources as local replicas, at least at the positions the job
        requires (the master's head at submit; the server leases only once the replicas
        reported them, so this normally returns at once); they keep trickling in the
        background."""
        if not lease.data:
            return {}
        replicas = self._replica_set()
        for name, (epoch, pos) in lease.data.items():
            replicas.catch_up(name, int(pos), epoch=epoch)
        return {name: str(replicas.path(name)) for name in lease.data}

    @staticmethod
    def _on_message(ru: RunningUnit, msg: dict, final: dict | None,
                    import_error: str | None) -> tuple[dict | None, str | None]:
        kind = msg.get("type")
        if kind == "progress":
            ru.progress = int(msg.get("done", 0))
        elif kind in ("done", "stopped"):
            ru.progress = int(msg.get("done", 0))
            final = msg
        elif kind == "import_error":
            import_error = str(msg.get("error", ""))
        return final, import_error

    def _complete(self, ru: RunningUnit, attempt_dir: Path, logs: dict[str, Path]
                  ) -> p.Lease | None:
        assert self.client is not None
        data = (attempt_dir / "output.jsonl").read_bytes()
        try:
            records, errors, columns = _summarize(data)
        except ValueError as exc:
            return self._report_failure(ru, p.FailureKind.crash,
                                        f"the runner wrote a malformed result: {exc}",
                                        attempt_dir)
        if records != ru.lease.count:
            return self._report_failure(
                ru, p.FailureKind.crash,
                f"the runner wrote {records} result lines for {ru.lease.count} records",
                attempt_dir)
        result, result_inline = self._blob_or_inline(data)
        log_blob, log_inline = self._blob_or_inline(encode_logs(logs))
        res = self.client.complete(ru.lease.attempt, p.Completion(
            result=result, result_inline=result_inline, log_inline=log_inline,
            records_done=records - errors,
            record_errors=errors, columns=columns, log=log_blob,
            want_next=not (self.stopping.is_set() or self.draining) and (
                self.owner is None or self.owner.may_start.is_set()),
            resources=self._resources(), env=ru.env))
        if res.outcome != "accepted":
            log.info("unit %s: another attempt completed first; result discarded", ru.lease.unit)
        return res.next

    def _blob_or_inline(self, data: bytes) -> tuple[str, str | None]:
        """(hash, base64 frame to send inline) for small blobs; big ones are uploaded first."""
        assert self.client is not None
        frame = compress(data)
        digest = hash_bytes(data)
        if len(frame) <= INLINE_MAX:
            return digest, base64.b64encode(frame).decode("ascii")
        self.client.put_frame(digest, frame)
        return digest, None

    def _report_failure(self, ru: RunningUnit, kind: p.FailureKind, error: str,
                        attempt_dir: Path) -> None:
        assert self.client is not None
        logs = {"stdout": attempt_dir / "stdout.log", "stderr": attempt_dir / "stderr.log",
                "log": attempt_dir / "attempt.log"}
        log_blob = self.client.put_blob(encode_logs(logs))
        self.client.fail(ru.lease.attempt, p.Failure(kind=kind, error=error[-20000:],
                                                     log=log_blob))
        log.info("unit %s failed (%s)", ru.lease.unit, kind.value)
        return None

    def _give_back(self, ru: RunningUnit, attempt_dir: Path, logs: dict[str, Path],
                   final: dict | None = None) -> None:
        """Vacate: give the unit back with its finished prefix, committed by the server as
        done while the rest becomes a new unit (no lost work, issue 5 item 5): ``done`` output
        lines of a runner that stopped cleanly ("stopped"), else -- its tree killed after the
        grace, in the middle of a long record -- the first lines its last progress report
        counted (the runner flushes its output before each report)."""
        assert self.client is not None
        if ru.abort_reason == "the server withdrew the unit" or self.fatal:
            return None  # nothing to report: the server already moved on
        try:
            log_blob = self.client.put_blob(encode_logs(logs))
            body = p.Vacate(reason=ru.abort_reason or "vacate", log=log_blob)
            data = (attempt_dir / "output.jsonl").read_bytes() if ru.progress else b""
            if final and final.get("type") == "stopped":
                done = int(final.get("done", 0))
            else:
                done, data = ru.progress, _first_lines(data, ru.progress)
            if 0 < done < ru.lease.count:
                try:
                    records, errors, columns = _summarize(data)
                except ValueError as exc:
                    log.warning("unit %s: partial result unusable: %s", ru.lease.unit, exc)
                    records = -1
                if records == done:
                    body.done = done
                    body.result, body.result_inline = self._blob_or_inline(data)
                    body.records_done, body.record_errors = records - errors, errors
                    body.columns = columns
                    body.env = ru.env
            self.client.vacate(ru.lease.attempt, body)
        except ApiError as exc:
            log.warning("vacate of unit %s not acknowledged: %s", ru.lease.unit, exc)
        return None


def _first_lines(data: bytes, n: int) -> bytes:
    """The first ``n`` complete lines of ``data`` (all of it if it has fewer)."""
    end = 0
    for _ in range(n):
        i = data.find(b"\n", end)
        if i < 0:
            break
        end = i + 1
    return data[:end]


def _summarize(data: bytes) -> tuple[int, int, list[str]]:
    """(records, record errors, output columns in first-seen order) of a unit result.

    Raises ValueError on a malformed result."""
    from officegrid.records.units import decode_unit_result

    records = errors = 0
    columns: dict[str, None] = {}
    for line in decode_unit_result(data):
        records += 1
        if line.error is not None:
            errors += 1
        for row in line.rows:
            for c in row:
                columns.setdefault(c, None)
    return records, errors, list(columns)


def _crash_text(code: int | None, attempt_dir: Path) -> str:
    if code is None:
        what = "did not exit"
    elif code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        what = f"was killed by signal {name}"
    else:
        what = f"exited with code {code}"
    try:
        tail = (attempt_dir / "stderr.log").read_text(errors="replace")[-4000:]
    except OSError:
        tail = ""
    return f"the unit's process {what}" + (f"; stderr:\n{tail}" if tail.strip() else "")


def run_agent(settings: WorkerSettings) -> int:
    """Start an agent with ``settings`` and run it until it stops; return the exit code."""
    try:
        return Agent(settings).run()
    except AgentError as exc:
        print(f"officegrid worker: {exc}", file=sys.stderr, flush=True)
        return 3
