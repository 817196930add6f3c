"""The ``officegrid`` command line. One module per command group; all use ``officegrid.Client``."""

from __future__ import annotations

import typer

from officegrid.cli import admin, job, owner, release, server
from officegrid.cli import data as data_cli
from officegrid.cli import pause as owner_pause

app = typer.Typer(rich_markup_mode=None,
    name="officegrid", no_args_is_help=True, add_completion=False,
    help="Turn idle office desktops into a batch-processing grid.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("server")(server.server)
app.add_typer(owner.worker_app(), name="worker")  # the agent + install/uninstall
app.command("idle")(owner.idle)
app.command("idle-reporter")(owner.idle_reporter)
app.add_typer(release.app, name="release")
app.add_typer(data_cli.app, name="data")
app.add_typer(admin.token_app, name="token")
app.add_typer(admin.keys_app, name="keys")
app.command("workers")(admin.workers)
app.command("drain")(admin.drain)
app.command("submit")(job.submit)
app.command("status")(job.status)
app.command("results")(job.results)
app.command("cancel")(job.cancel)
app.command("retry")(job.retry)
app.command("logs")(job.logs)
app.command("pause")(owner_pause.pause)
app.command("resume")(owner_pause.resume)


@app.command("demo")
def demo(records: int = typer.Option(200_000, "--records", "-n", help="customer records"),
         workers: int = typer.Option(2, "--workers", help="worker agents to start"),
         keep: bool = typer.Option(False, "--keep", help="keep the temporary data dir")) -> None:
    """Run the reference job (address enrichment over real ZIP data) on a local grid."""
    from officegrid.cli.common import fail
    from officegrid.cli.demo import run_demo

    try:
        code = run_demo(records=records, workers=workers, keep=keep)
    except RuntimeError as exc:
        fail(str(exc))
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        from officegrid import __version__

        typer.echo(f"officegrid {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """Turn idle office desktops into a batch-processing grid."""


def main() -> None:
    app()
