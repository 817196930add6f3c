"""``officegrid server``: run the job control server."""

from __future__ import annotations

from pathlib import Path

import typer

from officegrid import logs
from officegrid.cli.common import handle_errors
from officegrid.config import ServerSettings, load


@handle_errors
def server(
    data_dir: Path = typer.Option(None, "--data-dir", help="blobs, SQLite store, admin token "
                                  "[default: ./officegrid-data]"),
    db: str = typer.Option(None, "--db", help="SQLAlchemy URL, e.g. "
                           "postgresql+psycopg://user@host/db [default: SQLite in the data dir]"),
    host: str = typer.Option(None, "--host", help="address to listen on [default: 127.0.0.1]"),
    port: int = typer.Option(None, "--port", help="port; 0 picks a free one [default: 8765]"),
    tls_cert: Path = typer.Option(None, "--tls-cert", help="PEM certificate: serve HTTPS"),
    tls_key: Path = typer.Option(None, "--tls-key", help="PEM private key for --tls-cert"),
    ready_file: Path = typer.Option(None, "--ready-file",
                                    help="write {url, pid} here once listening"),
    access_log: bool = typer.Option(False, "--access-log", help="log every request"),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True),
) -> None:
    """Run the job control server (stores jobs, releases and results)."""
    logs.setup("DEBUG" if verbose > 1 else "INFO" if verbose else None)
    settings = load(ServerSettings, "server", {
        "data_dir": data_dir, "db": db, "host": host, "port": port,
        "tls_cert": tls_cert, "tls_key": tls_key})
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    from officegrid.server.main import serve

    serve(settings, ready_file=ready_file, access_log=access_log)
