"""The worker's background preparation of releases: materialize, then build the environment.

The server never leases a unit of a release with an environment to a worker that has not
reported it prepared (``WorkerResources.prepared``); it answers with ``LeaseResponse.prepare``
instead. :class:`Preparer` takes those requests and works through them in one background thread,
one build at a time, so no lease is ever held while an environment is built.

A failed build marks the release broken on this worker: persisted in the work dir with the
installer's output tail, reported to the server (which pauses the release's jobs once no live
worker is left that has not reported it: checked at each report and by the reaper), listed in
``broken_releases`` so it is never offered again, and not retried before ``retry_after`` seconds
(default one hour, ``WorkerSettings.env_retry_after``) or before the broken record is deleted
from ``<work_dir>/envs/broken/``. Restarting the agent re-reports the record; it does not retry
the build early.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from officegrid.envs.build import EnvBuilder, EnvBuildError, EnvSpec

log = logging.getLogger("officegrid.worker.envs")

ENV_RETRY_AFTER = 3600.0  # seconds before a broken release's environment is tried again
FETCH_RETRY_AFTER = 30.0  # seconds before a release that failed to materialize is tried again


class EnvNotReady(RuntimeError):
    """A unit's release needs an environment that is not built on this worker yet."""


class Preparer:
    """Prepares releases in one background thread.

    Args:
        builder: builds and keeps the environments (``<work_dir>/envs``).
        releases_dir: ``<work_dir>/releases`` (materialized releases, one dir per id).
        materialize: release id -> its materialized directory (fetches what is missing).
        report: called with (release id, env hash, error) after a failed build; exceptions it
            raises are logged, not propagated.
        retry_after: seconds a broken release stays broken (see the module docstring).
    """

    def __init__(self, builder: EnvBuilder, releases_dir: Path,
                 materialize: Callable[[str], Path],
                 report: Callable[[str, str | None, str], None],
                 retry_after: float = ENV_RETRY_AFTER) -> None:
        self.builder = builder
        self.releases_dir = releases_dir
        self.materialize = materialize
        self.report = report
        self.retry_after = retry_after
        self.lock = threading.Lock()
        self.prepared: set[str] = set()
        self.specs: dict[str, EnvSpec | None] = {}  # release id -> its env (None: no lock)
        self.fetch_failed: dict[str, float] = {}  # release id -> monotonic time of the failure
        self.queued: set[str] = set()
        self.busy: str | None = None  # release being prepared now
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.builds = 0  # environments built by this agent run
        self.thread: threading.Thread | None = None

    # ---------------------------------------------------------------- state

    def spec(self, release_id: str, release_dir: Path) -> EnvSpec | None:
        """The environment a materialized release needs (None: none); cached per release."""
        with self.lock:
            if release_id in self.specs:
                return self.specs[release_id]
        spec = self.builder.spec(release_dir)
        with self.lock:
            self.specs[release_id] = spec
        return spec

    def python_for(self, release_id: str, release_dir: Path) -> tuple[str | None, str | None]:
        """(interpreter, env hash) a unit of the release runs with; (None, None) when it needs
        no environment (the agent's default interpreter).

        Raises:
            EnvNotReady: its environment is not built here (a request to prepare is queued).
        """
        spec = self.spec(release_id, release_dir)
        if spec is None:
            return None, None
        if not self.builder.is_built(spec.env):
            self.request([release_id])
            raise EnvNotReady(f"environment {spec.env[:12]} of release {release_id[:12]} "
                              "is not built on this worker yet")
        return str(self.builder.python_of(spec.env)), spec.env

    def prepared_list(self) -> list[str]:
        """Release ids cached here whose environment is built (for WorkerResources)."""
        out = []
        for rid in list(self.prepared):
            if (self.releases_dir / rid).is_dir():
                out.append(rid)
            else:  # pruned from the cache since: it must be prepared again
                with self.lock:
                    self.prepared.discard(rid)
        return sorted(out)

    def broken(self) -> dict[str, str]:
        """Releases whose environment failed to build recently -> error (persisted)."""
        return self.builder.broken(self.retry_after)

    def scan(self) -> None:
        """Mark the cached releases whose environment is already built as prepared (after an
        agent restart: nothing is rebuilt)."""
        if not self.releases_dir.is_dir():
            return
        for d in self.releases_dir.iterdir():
            if len(d.name) != 64 or not d.is_dir():
                continue
            spec = self.spec(d.name, d)
            if spec is not None and self.builder.is_built(spec.env):
                self.builder.remember(d.name, spec.env)
                with self.lock:
                    self.prepared.add(d.name)

    # ---------------------------------------------------------------- work

    def request(self, release_ids: list[str]) -> None:
        """Queue releases to prepare (ignores those prepared, queued, broken or that failed
        to materialize less than FETCH_RETRY_AFTER seconds ago)."""
        broken = self.broken()
        now = time.monotonic()
        with self.lock:
            for rid in release_ids:
                failed = self.fetch_failed.get(rid)
                if rid in self.prepared or rid in self.queued or rid in broken or \
                        (failed is not None and now - failed < FETCH_RETRY_AFTER):
                    continue
                self.queued.add(rid)
                self.queue.put(rid)

    def start(self, resend_broken: bool = True) -> None:
        """Start the background thread; first re-report the persisted broken releases (the
        server forgets a worker's reports when a new agent run opens its session)."""
        self.scan()
        pending = list(self.builder.broken_records(self.retry_after)) if resend_broken else []
        self.thread = threading.Thread(target=self._loop, args=(pending,), name="prepare",
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.queue.put(None)

    def _loop(self, pending: list[dict]) -> None:
        for rec in pending:
            self._report(rec["release"], rec.get("env"), rec.get("error", ""))
        while True:
            rid = self.queue.get()
            if rid is None:
                return
            with self.lock:
                self.busy = rid
            try:
                self._prepare(rid)
            except Exception:  # a bug must not end the thread: log it and go on
                log.exception("preparing release %s failed", rid[:12])
            finally:
                with self.lock:
                    self.busy = None
                    self.queued.discard(rid)

    def _prepare(self, rid: str) -> None:
        try:
            release_dir = self.materialize(rid)
        except Exception as exc:
            log.warning("release %s: cannot fetch it to prepare it: %s", rid[:12], exc)
            with self.lock:
                self.fetch_failed[rid] = time.monotonic()
            return
        spec = self.spec(rid, release_dir)
        if spec is not None:
            self.builder.remember(rid, spec.env)
            if not self.builder.is_built(spec.env):
                log.info("release %s: building environment %s", rid[:12], spec.env[:12])
                try:
                    self.builder.ensure(spec)
                    self.builds += 1
                except EnvBuildError as exc:
                    error = f"environment {spec.env[:12]} of release {rid[:12]}: {exc}"
                    log.warning("%s", error)
                    self.builder.mark_broken(rid, spec.env, error)
                    self._report(rid, spec.env, error)
                    return
        with self.lock:
            self.prepared.add(rid)

    def _report(self, rid: str, env: str | None, error: str) -> None:
        try:
            self.report(rid, env, error)
        except Exception as exc:  # the server learns it at the next agent start at worst
            log.warning("could not report the broken environment of %s: %s", rid[:12], exc)
