"""``officegrid worker``: run a worker agent on this machine."""

from __future__ import annotations

from pathlib import Path

import typer

from officegrid import logs
from officegrid.cli.common import handle_errors
from officegrid.config import WorkerSettings, load, load_policy


@handle_errors
def worker(
    server: str = typer.Option(None, "--server", "-s", envvar="OFFICEGRID_SERVER",
                               help="server URL [default: http://127.0.0.1:8765]"),
    token: str = typer.Option(None, "--token", "-t", envvar="OFFICEGRID_WORKER_TOKEN",
                              help="this worker's own token (from `token create --worker`)"),
    enroll: str = typer.Option(None, "--enroll", envvar="OFFICEGRID_ENROLL",
                               help="join token: register this machine on first start "
                               "(prefer the OFFICEGRID_ENROLL variable: a flag is visible to "
                               "every user in ps)"),
    name: str = typer.Option(None, "--name", help="worker name at enrollment [default: host]"),
    work_dir: Path = typer.Option(None, "--work-dir", help="identity, caches, unit files "
                                  "[default: the user data dir]"),
    slots: int = typer.Option(None, "--slots", help="units run at once [default: 1]"),
    python: str = typer.Option(None, "--python", help="interpreter for units "
                               "[default: this one]"),
    ca: Path = typer.Option(None, "--ca", envvar="OFFICEGRID_CA", help="CA file to verify TLS"),
    trust_key: list[Path] = typer.Option(None, "--trust-key", help="public key file; when given "
                                         "(repeatable), run only releases signed by one of them"),
    max_bandwidth: str = typer.Option(None, "--max-bandwidth", help="cap on this worker's "
                                      "bulk downloads, e.g. 2MB/s, 512KiB/s, 10Mbit/s"),
    transfer_window: str = typer.Option(None, "--transfer-window", help="local times when "
                                        "releases may be fetched, e.g. '20:00-06:00' or "
                                        "'mon-fri 20:00-06:00; sat,sun 00:00-24:00'"),
    policy: str = typer.Option(None, "--policy", help="owner policy preset: always, desktop, "
                               "night, desktop-or-night [default: [policy] of officegrid.toml, "
                               "else always]"),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True),
) -> None:
    """Run a worker agent: lease units, run them at lowest priority, report results."""
    from officegrid.worker.supervisor import run_agent

    logs.setup("DEBUG" if verbose > 1 else "INFO" if verbose else None)
    settings = load(WorkerSettings, "worker", {
        "server": server, "token": token, "enroll": enroll, "name": name,
        "work_dir": work_dir, "slots": slots, "python": python, "ca": ca,
        "trusted_keys": trust_key or None, "max_bandwidth": max_bandwidth,
        "transfer_window": transfer_window},
        env_skip=frozenset({"token", "server", "enroll", "ca", "name"}))
    if settings.slots < 1:
        raise ValueError(f"--slots must be >= 1, got {settings.slots}")
    settings.policy = load_policy(policy)  # [policy] table + --policy (worker/policy.py)
    raise typer.Exit(run_agent(settings))
