"""Structured, quiet logging: one line per event, ``key=value`` pairs, WARNING by default.

``OFFICEGRID_LOG_LEVEL`` (DEBUG, INFO, WARNING) or ``-v`` flags raise the detail.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=... logger=... msg="..." key=value...`` (values JSON-quoted if needed)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        parts = [f"ts={ts}.{int(record.msecs):03d}", f"level={record.levelname.lower()}",
                 f"logger={record.name}", f"msg={json.dumps(record.getMessage())}"]
        for key, value in getattr(record, "kv", {}).items():
            parts.append(f"{key}={json.dumps(value, default=str)}")
        if record.exc_info:
            parts.append(f"exc={json.dumps(self.formatException(record.exc_info))}")
        return " ".join(parts)


#: Loggers whose INFO lines are rare events worth keeping even at the default level: the owner
#: policy's suspend / resume / vacate decisions answer "why did my unit stop?" afterwards, and
#: "replicating data source ..." why units wait.
EVENT_LOGGERS = ("officegrid.worker.owner", "officegrid.worker.data")


def setup(level: str | int | None = None, stream=None) -> None:
    """Configure the root logger once for a process (CLI, server or worker): WARNING by default
    (``OFFICEGRID_LOG_LEVEL``), plus INFO of :data:`EVENT_LOGGERS`."""
    explicit = level or os.environ.get("OFFICEGRID_LOG_LEVEL")
    level = explicit or "WARNING"
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if isinstance(level, int) else level.upper())
    if not explicit:
        for name in EVENT_LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO)
    for noisy in ("httpx", "httpcore", "uvicorn.access", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
