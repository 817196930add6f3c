"""Real parts for tests: a server process on 127.0.0.1 and worker agent processes.

Timings are shortened through OFFICEGRID_* variables (seconds, fractions allowed) so tests are
fast; nothing here sleeps where an event can be awaited: readiness is a file the server writes,
and waits poll an observable condition with a deadline (a hang guard, not a speed assertion).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from officegrid.client import Client

FAST = {
    "OFFICEGRID_LEASE_SECONDS": "3",
    "OFFICEGRID_HEARTBEAT_INTERVAL": "0.3",
    "OFFICEGRID_REAPER_INTERVAL": "0.2",
    "OFFICEGRID_POLL_INTERVAL": "0.05",
    "OFFICEGRID_IDLE_RETRY_AFTER": "0.1",
    "OFFICEGRID_LEASE_WAIT": "1",
    "OFFICEGRID_BACKOFF_BASE": "0.05",
    "OFFICEGRID_BACKOFF_CAP": "0.5",
    "OFFICEGRID_VACATE_GRACE": "1",
    "OFFICEGRID_PROGRESS_INTERVAL": "0.1",
    "OFFICEGRID_SPECULATIVE_AFTER": "3600",
}


def wait_for(cond: Callable[[], Any], timeout: float = 60.0, interval: float = 0.05,
             what: str = "condition") -> Any:
    """Poll ``cond`` until it returns a truthy value; raise TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFICEGRID_")}
    env.update(FAST)
    env["OFFICEGRID_LOG_LEVEL"] = "INFO"
    env.update(extra or {})
    return env


class ServerProc:
    """A real ``officegrid server`` process."""

    def __init__(self, data_dir: Path, db: str | None = None, env: dict | None = None,
                 port: int = 0) -> None:
        self.data_dir = data_dir
        self.db = db
        self.env = base_env(env)
        self.port = port
        self.proc: subprocess.Popen | None = None
        self.extra: list[str] = []
        self.url = ""
        self.log = data_dir.parent / f"server-{uuid.uuid4().hex[:6]}.log"

    def start(self) -> ServerProc:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ready = self.data_dir.parent / f"ready-{uuid.uuid4().hex[:8]}.json"
        cmd = [sys.executable, "-m", "officegrid", "server", "--data-dir", str(self.data_dir),
               "--host", "127.0.0.1", "--port", str(self.port), "--ready-file", str(ready)]
        if self.db:
            cmd += ["--db", self.db]
        cmd += self.extra
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT)

        def is_ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n"
                                   + self.log.read_text()[-3000:])
            return ready.exists()

        wait_for(is_ready, 60, what="server ready file")
        info = json.loads(ready.read_text())
        self.url = info["url"]
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def client(self, token: str | None = None, **kw: Any) -> Client:
        return Client(self.url, token or self.admin_token, **kw)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


class WorkerProc:
    """A real ``officegrid worker`` agent process."""

    def __init__(self, server_url: str, work_dir: Path, enroll: str | None = None,
                 token: str | None = None, slots: int = 1, env: dict | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.server_url = server_url
        self.work_dir = work_dir
        self.enroll = enroll
        self.token = token
        self.slots = slots
        self.env = base_env(env)
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen | None = None
        self.log = work_dir.parent / f"{work_dir.name}-{uuid.uuid4().hex[:6]}.log"

    def start(self) -> WorkerProc:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "officegrid", "worker", "--server", self.server_url,
               "--work-dir", str(self.work_dir), "--slots", str(self.slots), *self.extra_args]
        if self.enroll:
            cmd += ["--enroll", self.enroll]
        if self.token:
            cmd += ["--token", self.token]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def identity(self) -> dict:
        return json.loads((self.work_dir / "identity.json").read_text())

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


def publish(client: Client, directory: Path, channel: str = "worker") -> str:
    """Publish ``directory`` as a release on ``channel``; return the release id."""
    from officegrid.cli.release import publish as do_publish

    return do_publish(client, directory, channel, show_progress=False)["id"]


def write_job_module(directory: Path, name: str, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.py").write_text(source)
    return directory


def write_csv(path: Path, n: int, start: int = 1) -> Path:
    with open(path, "w") as fh:
        fh.write("id,value\n")
        for i in range(start, start + n):
            fh.write(f"r{i},{i}\n")
    return path
