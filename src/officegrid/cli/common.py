"""Shared CLI plumbing: the client from flags/env, error reporting, id output."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from officegrid.client import ApiError, Client
from officegrid.config import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

out = Console()
err = Console(stderr=True)

DEFAULT_TOKEN_FILE = Path("officegrid-data") / "admin.token"

ServerOpt = typer.Option(None, "--server", "-s", envvar="OFFICEGRID_SERVER",
                         help="server URL [default: http://127.0.0.1:8765]")
TokenOpt = typer.Option(None, "--token", "-t", envvar="OFFICEGRID_TOKEN",
                        help="token [default: OFFICEGRID_TOKEN, else OFFICEGRID_TOKEN_FILE, "
                             "else ./officegrid-data/admin.token]")
CaOpt = typer.Option(None, "--ca", envvar="OFFICEGRID_CA", help="CA file to verify TLS")
JsonOpt = typer.Option(False, "--json", help="print the whole object as JSON")


def read_token(token: str | None) -> str | None:
    """The token from the flag/env, else from OFFICEGRID_TOKEN_FILE, else the local default."""
    if token:
        return token.strip()
    path = os.environ.get("OFFICEGRID_TOKEN_FILE")
    candidates = [Path(path)] if path else [DEFAULT_TOKEN_FILE]
    for c in candidates:
        try:
            return c.read_text().strip()
        except OSError:
            if path:
                raise ConfigError(f"OFFICEGRID_TOKEN_FILE={path}: cannot read it") from None
    return None


CLI_RETRY_SECONDS = 15.0  # a person waits this long for an unreachable server, not a minute


def client(server: str | None, token: str | None, ca: Path | None = None) -> Client:
    return Client(server, read_token(token), ca=ca, max_retry_time=CLI_RETRY_SECONDS)


def say(message: str) -> None:
    """One line to stderr, printed verbatim: no markup, never wrapped (grep-able PATH:LINE)."""
    err.print(message, highlight=False, markup=False, soft_wrap=True)


def show(message: str) -> None:
    """One line to stdout, printed verbatim (no markup, no wrapping)."""
    out.print(message, highlight=False, markup=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> None:
    say(f"error: {message}")
    raise typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Turn expected errors into one clear line on stderr and a non-zero exit."""
    from officegrid.records.errors import InputError
    from officegrid.signing import SignatureError
    from officegrid.sync.materialize import MaterializeError

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ApiError as exc:
            fail(f"{exc.message} (HTTP {exc.status})" if exc.status else exc.message)
        except (InputError, ConfigError, ValueError, OSError, MaterializeError,
                SignatureError) as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except Exception as exc:
            import sqlalchemy.exc

            if isinstance(exc, sqlalchemy.exc.SQLAlchemyError):
                orig = getattr(exc, "orig", None)
                fail(f"database: {orig if orig is not None else exc}".splitlines()[0])
            raise

    return wrapper  # type: ignore[return-value]


def emit(obj: dict, as_json: bool, ident: Any, summary: str | None = None) -> None:
    """Print a created object: a summary then its id alone on the last line (or JSON)."""
    if as_json:
        sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
        return
    if summary:
        say(summary)
    sys.stdout.write(f"{ident}\n")
