"""The desktop owner's side: ``officegrid idle``, ``officegrid idle-reporter`` and
``officegrid worker install | uninstall``.

``officegrid worker`` stays the command that runs an agent (``officegrid worker --server URL``
works unchanged); it becomes a group whose callback is that command, with the subcommands
``install`` and ``uninstall``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from officegrid.cli.common import handle_errors

# readable=False: an installed work dir is 0711 (others may pass through to sessions/,
# not list it); click's default check would refuse it for every user but the service.
WorkDirOpt = typer.Option(None, "--work-dir", readable=False,
                          help="the agent's work dir (reporter files are in its sessions/ "
                          "folder) [default: [worker].work_dir / OFFICEGRID_WORK_DIR, else the "
                          "installed service's or the by-hand one, whichever has a running "
                          "agent, as for `officegrid pause`]")


def _work_dir(work_dir: Path | None) -> Path:
    from officegrid.config import WorkerSettings, load
    from officegrid.worker.identity import default_work_dir

    settings = load(WorkerSettings, "worker", {"work_dir": work_dir},
                    env_skip=frozenset({"token", "server", "enroll", "ca", "name"}))
    return Path(settings.work_dir or default_work_dir()).resolve()


def _discover(work_dir: Path | None) -> tuple[Path, Any]:
    """(work dir, its live agent's status or None), found as ``officegrid pause`` finds it:
    the flag or [worker].work_dir, else the installed service's work dir or the by-hand one,
    whichever has a running agent (officegrid.cli.pause.resolve_work_dir). Where none exists
    yet, the flag's or the user data dir, without an agent."""
    from officegrid.cli.pause import resolve_work_dir

    try:
        return resolve_work_dir(work_dir)
    except ValueError:  # no work dir yet: the reporter and `idle` still work
        return _work_dir(work_dir), None


def _agent_policy(agent: Any, work_dir: Path) -> tuple[Any, str]:
    """(PolicySettings, where it came from): the running agent's own policy when its status
    says it, else the config this command reads (OFFICEGRID_CONFIG or ./officegrid.toml, and
    OFFICEGRID_POLICY), said plainly."""
    import os

    from officegrid.config import CONFIG_ENV, load_policy
    from officegrid.worker.policy import PolicySettings

    unreadable = ""
    if agent is not None and getattr(agent, "policy", None) is not None:
        try:
            return (PolicySettings(**agent.policy),
                    f"the policy of the agent running on {work_dir}, pid {agent.pid}")
        except ValueError as exc:  # another version's keys: say so, use the config
            unreadable = f" (its policy {agent.policy} does not load here: {exc})"
    settings = load_policy()
    path = Path(os.environ.get(CONFIG_ENV) or "officegrid.toml")
    origin = f"from {path}" if path.exists() else f"no {path}: defaults"
    if os.environ.get("OFFICEGRID_POLICY"):
        origin += ", preset from OFFICEGRID_POLICY"
    if agent is None:
        origin += f"; no agent runs on {work_dir} to say its own"
    else:
        origin += (f"; the agent on {work_dir} (pid {agent.pid}) does not say its own"
                   f"{unreadable}")
    return settings, origin


def _fmt_idle(seconds: float | None) -> str:
    if seconds is None:
        return "cannot tell"
    if seconds < 120:
        return f"{seconds:.1f} s"
    from officegrid.worker.policy import format_duration

    return f"{seconds:.0f} s ({format_duration(seconds)})"


@handle_errors
def idle(work_dir: Path = WorkDirOpt,
         source: list[str] = typer.Option(None, "--source", help="read only this source "
                                          "(repeatable) [default: the [policy] sources, else "
                                          "all that work on this OS]"),
         as_json: bool = typer.Option(False, "--json", help="print the readings as JSON")
         ) -> None:
    """Show what each idle source sees (seconds since input, or why it cannot tell), and what
    the owner policy of this machine's agent (found as `officegrid pause` finds it) says."""
    from officegrid.worker.idle import IdleMonitor

    wd, agent = _discover(work_dir)
    policy, origin = _agent_policy(agent, wd)
    sources = list(source) if source else policy.value("sources")
    with IdleMonitor(work_dir=wd, sources=sources) as monitor:
        status = monitor.read()
    verdict = _policy_verdict(policy, status, wd)
    if as_json:
        print(json.dumps({
            "idle_seconds": status.idle_seconds, "present": status.present,
            "no_session": status.no_session, "locked": status.locked,
            "verdict": _verdict_text(status),
            "work_dir": str(wd),
            "policy": {"preset": policy.preset, "origin": origin,
                       "may_start": verdict.may_start,
                       "state": verdict.state, "reason": verdict.reason},
            "readings": [{"source": r.source, "idle_seconds": r.idle_seconds,
                          "detail": r.detail, "present": r.present, "partial": r.partial,
                          "sessions": r.sessions, "locked": r.locked}
                         for r in status.readings]}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="idle sources")
    table.add_column("source")
    table.add_column("idle", justify="right")
    table.add_column("detail")
    for r in status.readings:
        idle_text = _fmt_idle(r.idle_seconds)
        if r.present:
            idle_text += " (present)"
        if r.partial and r.idle_seconds is not None:
            idle_text += " (partial)"
        table.add_row(r.source, idle_text, r.detail)
    console = Console(width=max(100, Console().width))
    console.print(table)
    console.print(f"combined: {_verdict_text(status)}")
    reason = verdict.reason or ""
    if reason.startswith("cannot tell idle time"):
        reason = "cannot tell idle time: see the sources above"
    console.print(f"policy {policy.preset}: "
                  f"{'may start units' if verdict.may_start else 'no new units'}"
                  f"{f' ({reason})' if reason else ''}", highlight=False)
    console.print(f"policy evaluated: {origin}", highlight=False)


def _policy_verdict(settings: Any, status: Any, work_dir: Path) -> Any:
    """What the configured policy would say now, for a worker without units (CPU sampled
    over 0.5 s)."""
    import time
    from datetime import datetime

    import psutil

    from officegrid.worker.load import NonGridCpu, on_battery
    from officegrid.worker.policy import Observation, Policy

    cpu = NonGridCpu()
    cpu.sample([])
    time.sleep(0.5)
    paused, paused_by = None, None
    try:
        from officegrid.worker.pause import pause_state, read_pauses

        paused, paused_by = pause_state(read_pauses(work_dir))
    except Exception:  # noqa: BLE001 - no readable sessions dir: not paused
        paused, paused_by = None, None
    obs = Observation(now=datetime.now().astimezone(), idle_seconds=status.idle_seconds,
                      present=status.present, no_session=status.no_session,
                      non_grid_cpu=cpu.sample([]), on_battery=on_battery(),
                      free_memory=psutil.virtual_memory().available,
                      owner_paused_until=paused, suspended_for=None, running=False,
                      idle_detail=status.detail, locked=status.locked,
                      owner_paused_by=paused_by)
    return Policy.from_settings(settings).evaluate(obs)


def _verdict_text(status: Any) -> str:
    if status.present:
        return "owner present (an idle inhibitor is held)"
    if status.no_session:
        return "nobody logged in (counts as idle)"
    if status.idle_seconds is None:
        untold = getattr(status, "untold", "")
        return f"cannot tell (never counted as idle){f': {untold}' if untold else ''}"
    text = f"idle {_fmt_idle(status.idle_seconds)} ({status.detail})"
    return text + (", screen locked" if status.locked else "")


@handle_errors
def idle_reporter(work_dir: Path = WorkDirOpt,
                  source: list[str] = typer.Option(None, "--source", help="session source to "
                                                   "read (repeatable) [default: all that work "
                                                   "on this OS]"),
                  once: bool = typer.Option(False, "--once", help="write one report and exit "
                                            "(the file is left in place)")) -> None:
    """Report this login session's input to the local worker agent (run at logon)."""
    from officegrid.worker.idle import IdleMonitor, default_session_sources
    from officegrid.worker.idle.reporter import run_reporter, sessions_dir

    wd, _agent = _discover(work_dir)
    sources = list(source) if source else default_session_sources()
    print(f"idle-reporter: reading {', '.join(sources)}; writing to {sessions_dir(wd)}",
          file=sys.stderr, flush=True)
    with IdleMonitor(work_dir=None, sources=sources) as monitor:
        raise typer.Exit(run_reporter(wd, monitor.read, once=once))


# ---------------------------------------------------------------------- worker install


@handle_errors
def install(server: str = typer.Option(..., "--server", "-s", envvar="OFFICEGRID_SERVER",
                                       help="server URL the service connects to"),
            enroll: str = typer.Option(None, "--enroll", envvar="OFFICEGRID_ENROLL",
                                       help="join token: the service registers on first "
                                       "start (prefer the OFFICEGRID_ENROLL variable: a flag "
                                       "is visible to every user in ps)"),
            policy: str = typer.Option("desktop", "--policy", help="owner policy preset"),
            root: Path = typer.Option(None, "--root", help="write the files under this "
                                      "directory instead of / and run no commands"),
            dry_run: bool = typer.Option(False, "--dry-run", help="only print what would be "
                                         "done"),
            target_os: str = typer.Option(None, "--os", help="linux, macos or windows "
                                          "[default: this OS] (with --dry-run or --root)")
            ) -> None:
    """Install the worker as a system service plus the per-session idle reporter."""
    from officegrid.worker import service

    kind = target_os or service.os_name()
    if target_os and not (dry_run or root):
        raise ValueError("--os is only for --dry-run or --root (install on the target OS)")
    user_exists = True
    if kind in ("linux", "macos") and root is None:
        import pwd

        try:
            pwd.getpwnam(service.SERVICE_USER if kind == "linux" else service.MAC_USER)
        except KeyError:
            user_exists = False
    plan = service.plan_install(kind, server, enroll=enroll, policy=policy,
                                user_exists=user_exists and root is None)
    with contextlib.suppress(ValueError):  # no installer for this OS: nothing to check here
        if kind == service.os_name():  # the files checked are this machine's
            account = {"linux": service.SERVICE_USER, "macos": service.MAC_USER}.get(kind)
            for warning in service.preflight(
                    kind, enroll=enroll, command=service.default_command(),
                    work_dir=service.default_work_dir(kind), root=root,
                    service_user=account if user_exists and root is None else None):
                print(f"warning: {warning}", file=sys.stderr)
    raise typer.Exit(service.apply(plan, root=root, dry_run=dry_run))


@handle_errors
def uninstall(root: Path = typer.Option(None, "--root", help="remove files under this "
                                        "directory instead of / and run no commands"),
              dry_run: bool = typer.Option(False, "--dry-run", help="only print what would "
                                           "be done"),
              target_os: str = typer.Option(None, "--os", help="linux, macos or windows "
                                            "[default: this OS]")) -> None:
    """Stop and remove the worker service and the idle reporter's autostart entry."""
    from officegrid.worker import service

    kind = target_os or service.os_name()
    if target_os and not (dry_run or root):
        raise ValueError("--os is only for --dry-run or --root")
    raise typer.Exit(service.apply(service.plan_uninstall(kind), root=root, dry_run=dry_run))


def _group_callback(command: Callable[..., Any]) -> Callable[..., Any]:
    """`command` as a group callback that runs only when no subcommand is given."""
    sig = inspect.signature(command)

    @functools.wraps(command)
    def callback(ctx: typer.Context, **kw: Any) -> Any:
        if ctx.invoked_subcommand is not None:
            return None
        return command(**kw)

    ctx_param = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                  annotation=typer.Context)
    callback.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[ctx_param, *sig.parameters.values()])
    callback.__annotations__ = {**getattr(command, "__annotations__", {}),
                                "ctx": typer.Context}
    return callback


def worker_app() -> typer.Typer:
    """``officegrid worker [OPTIONS]`` (run the agent) with ``install`` and ``uninstall``."""
    from officegrid.cli import worker

    app = typer.Typer(invoke_without_command=True, rich_markup_mode=None,
                      context_settings={"help_option_names": ["-h", "--help"]})
    app.callback(invoke_without_command=True)(_group_callback(worker.worker))
    app.command("install")(install)
    app.command("uninstall")(uninstall)
    return app
