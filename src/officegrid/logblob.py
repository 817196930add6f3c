"""The log blob of an attempt: its stdout, stderr and log file, each capped, as one JSON blob."""

from __future__ import annotations

import json
from pathlib import Path

MAX_PER_FILE = 256 * 1024  # bytes kept per file: the tail, where the error usually is


def encode_logs(files: dict[str, Path]) -> bytes:
    """Read each file's last ``MAX_PER_FILE`` bytes into ``{"name": text}`` JSON bytes."""
    out: dict[str, str] = {}
    for name, path in files.items():
        try:
            with open(path, "rb") as fh:
                fh.seek(0, 2)
                size = fh.tell()
                fh.seek(max(0, size - MAX_PER_FILE))
                data = fh.read()
        except OSError:
            continue
        text = data.decode("utf-8", errors="replace")
        if size > MAX_PER_FILE:
            text = f"[... {size - MAX_PER_FILE:,} earlier bytes cut ...]\n" + text
        out[name] = text
    return json.dumps(out, ensure_ascii=False).encode()


def decode_logs(data: bytes) -> dict[str, str]:
    """Inverse of :func:`encode_logs`."""
    return json.loads(data.decode())
