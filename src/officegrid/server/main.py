"""Running the server: admin token bootstrap, socket binding, ready signal, uvicorn."""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import sys
import time
from pathlib import Path

import uvicorn

from officegrid.config import ServerSettings
from officegrid.server.app import create_app, open_context
from officegrid.server.store import tokens as tokens_q

log = logging.getLogger("officegrid.server")

ADMIN_TOKEN_FILE = "admin.token"


def ensure_admin_token(ctx) -> Path:
    """Create the admin token on first start; write it (mode 0600) into the data dir.

    Several server processes may start at once on one database: exactly one creates the token
    (the store's unique hash and the check-then-insert run in one write transaction); the file
    is written before the transaction commits so a second process never sees a token without
    its file. Returns the file's path (never log the token itself).
    """
    path = ctx.settings.data_dir / ADMIN_TOKEN_FILE
    with ctx.db.tx() as conn:
        if tokens_q.admin_exists(conn):
            return path
        secret = tokens_q.new_secret("admin")
        tokens_q.create(conn, "admin", "admin", time.time(), secret=secret)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secret + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    return path


def serve(settings: ServerSettings, ready_file: Path | None = None,
          access_log: bool = False) -> None:
    """Run the server until SIGINT/SIGTERM. ``port`` 0 picks a free port; the real URL is
    logged and written (JSON ``{"url", "pid", "admin_token_file"}``) to ``ready_file``."""
    ctx = open_context(settings)
    token_file = ensure_admin_token(ctx)
    app = create_app(settings, ctx)
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only for such sockets;
    # without it Nagle + delayed ACK add ~40 ms to every keep-alive request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((settings.host, settings.port))
    port = sock.getsockname()[1]
    tls = settings.tls_cert is not None
    host = f"[{settings.host}]" if family == socket.AF_INET6 else settings.host
    url = f"{'https' if tls else 'http'}://{host}:{port}"
    config = uvicorn.Config(app, log_config=None, access_log=access_log, lifespan="on",
                            ssl_certfile=str(settings.tls_cert) if tls else None,
                            ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
                            ssl_version=ssl.PROTOCOL_TLS_SERVER, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    ctx.shutting_down = lambda: server.should_exit

    orig_startup = server.startup

    async def startup(sockets=None):
        await orig_startup(sockets=sockets)
        print(f"officegrid server listening on {url} (admin token in {token_file})",
              file=sys.stderr, flush=True)
        if ready_file is not None:
            tmp = Path(str(ready_file) + ".tmp")
            tmp.write_text(json.dumps({"url": url, "pid": os.getpid(),
                                       "admin_token_file": str(token_file)}))
            os.replace(tmp, ready_file)

    server.startup = startup  # type: ignore[method-assign]
    server.run(sockets=[sock])
