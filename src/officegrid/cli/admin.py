"""``officegrid token``, ``workers`` and ``drain``: identities and the fleet."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import typer
from rich.table import Table

from officegrid.cli.common import (
    CaOpt,
    JsonOpt,
    ServerOpt,
    TokenOpt,
    client,
    emit,
    handle_errors,
    out,
    say,
    show,
)

token_app = typer.Typer(rich_markup_mode=None, no_args_is_help=True,
                        help="Create, list and revoke tokens.")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'90s', '15m', '2h', '7d', '1w' or plain seconds -> seconds. Raises ValueError."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text or "")
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 2h, 7d)")
    return float(m.group(1)) * _UNITS.get(m.group(2) or "s", 1)


@token_app.command("create")
@handle_errors
def token_create(
    enroll: bool = typer.Option(False, "--enroll", help="a join token for new workers"),
    worker: str = typer.Option(None, "--worker", help="a worker identity with its own token"),
    admin: bool = typer.Option(False, "--admin", help="another admin token"),
    uses: int = typer.Option(None, "--uses", help="join token: how many workers may join"),
    expires: str = typer.Option(None, "--expires", help="e.g. 7d, 12h"),
    name: str = typer.Option(None, "--name", help="label for join/admin tokens"),
    server: str = ServerOpt, token: str = TokenOpt, ca: Path = CaOpt, as_json: bool = JsonOpt,
) -> None:
    """Create a token; prints the secret alone on the last line (shown only once)."""
    kinds = [k for k, on in (("enroll", enroll), ("worker", worker), ("admin", admin)) if on]
    if len(kinds) != 1:
        raise ValueError("choose exactly one of --enroll, --worker NAME, --admin")
    kind = kinds[0]
    with client(server, token, ca) as c:
        info = c.create_token(kind, name=worker if kind == "worker" else name, uses=uses,
                              expires_in=parse_duration(expires) if expires else None)
    emit(info, as_json, info["token"],
         f"{kind} token {info['name']!r} (id {info['id']})"
         + (f", {info['uses_left']} uses" if info.get("uses_left") else "")
         + (f", expires {time.ctime(info['expires_at'])}" if info.get("expires_at") else ""))


@token_app.command("revoke")
@handle_errors
def token_revoke(name: str = typer.Argument(..., help="worker name or token label"),
                 server: str = ServerOpt, token: str = TokenOpt, ca: Path = CaOpt) -> None:
    """Revoke a worker's (or a labelled) token: its next request gets 401."""
    with client(server, token, ca) as c:
        out.print(c.revoke_token(name)["detail"])


@token_app.command("list")
@handle_errors
def token_list(server: str = ServerOpt, token: str = TokenOpt, ca: Path = CaOpt,
               as_json: bool = JsonOpt) -> None:
    """List tokens (never their secrets)."""
    with client(server, token, ca) as c:
        rows = c.tokens()
    if as_json:
        out.print_json(json.dumps(rows))
        return
    t = Table("id", "kind", "name", "uses left", "expires", "revoked")
    for r in rows:
        uses = "" if r["uses_left"] is None else str(r["uses_left"])
        t.add_row(str(r["id"]), r["kind"], r["name"], uses,
                  time.ctime(r["expires_at"]) if r["expires_at"] else "", str(r["revoked"]))
    out.print(t)


def _ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    d = max(0.0, time.time() - ts)
    if d < 120:
        return f"{d:.0f}s ago"
    return f"{d / 60:.0f}m ago" if d < 7200 else f"{d / 3600:.0f}h ago"


@handle_errors
def workers(server: str = ServerOpt, token: str = TokenOpt, ca: Path = CaOpt,
            as_json: bool = JsonOpt) -> None:
    """Show every worker: state and why, units, release, last heartbeat, health."""
    with client(server, token, ca) as c:
        rows = c.workers()
    if as_json:
        out.print_json(json.dumps(rows))
        return
    t = Table("worker", "host", "state", "reason", "units", "release", "last heartbeat",
              "done", "failed")
    for w in rows:
        state = w["state"]
        if w["draining"] and "draining" not in state:
            state += " (draining)"
        t.add_row(w["name"], w["hostname"] or "", state, w["reason"] or "",
                  ",".join(map(str, w["active_units"])), (w["release"] or "")[:12],
                  _ago(w["last_seen"]), str(w["completed"]), str(w["failed"]))
    out.print(t)


@handle_errors
def drain(worker: str = typer.Argument(..., help="worker name"),
          undo: bool = typer.Option(False, "--undo", help="let it take work again"),
          server: str = ServerOpt, token: str = TokenOpt, ca: Path = CaOpt) -> None:
    """Let WORKER finish its current units and take no more."""
    with client(server, token, ca) as c:
        out.print(c.drain(worker, undo)["detail"])


keys_app = typer.Typer(rich_markup_mode=None, no_args_is_help=True,
                       help="Signing keys for releases.")


@keys_app.command("create")
@handle_errors
def keys_create(out_dir: Path = typer.Option(Path("."), "--out", help="directory for the files"),
                name: str = typer.Option("officegrid-signing", "--name", help="file name stem")
                ) -> None:
    """Create an Ed25519 key pair: NAME.key (private, 0600) and NAME.pub; prints the key id.

    Sign with `release create --sign NAME.key`; give workers `--trust-key NAME.pub`."""
    from officegrid.signing import create_keypair

    out_dir.mkdir(parents=True, exist_ok=True)
    kid = create_keypair(out_dir / f"{name}.key", out_dir / f"{name}.pub")
    say(f"wrote {out_dir / (name + '.key')} (keep it secret) and {out_dir / (name + '.pub')}")
    show(kid)
