"""A real X server for tests: Xvfb on a free display, plus xdotool input.

`xvfb_display()` starts ``Xvfb -displayfd`` so the X server itself picks a free display number
and writes it to a pipe only once it accepts connections (no polling of lock files, no races
with other test runs); the server is killed when the context exits.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def xvfb_missing() -> str | None:
    """Why Xvfb-based tests cannot run here (None if they can)."""
    for tool in ("Xvfb", "xdotool"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (run `make deps`)"
    return None


@contextmanager
def xvfb_display(timeout: float = 30.0, screen: str = "1024x768x24") -> Iterator[str]:
    """Start Xvfb on a free display and yield it as ":N"; kill the server afterwards.

    Skips the test (pytest.skip) when Xvfb or xdotool is not installed.
    Raises RuntimeError if the server does not report ready within `timeout` seconds.
    """
    why = xvfb_missing()
    if why:
        pytest.skip(why)
    rfd, wfd = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(wfd), "-screen", "0", screen, "-nolisten", "tcp",
         "-noreset"],
        pass_fds=(wfd,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    os.close(wfd)
    try:
        deadline = time.monotonic() + timeout
        buf = b""
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                err = b""
                if proc.poll() is not None and proc.stderr:
                    err = proc.stderr.read()
                raise RuntimeError(f"Xvfb did not start within {timeout:.0f} s: "
                                   f"{err.decode(errors='replace')[-500:]}")
            ready, _, _ = select.select([rfd], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(rfd, 64)
                if not chunk:  # closed without a number: the server died
                    continue
                buf += chunk
        yield f":{int(buf.strip())}"
    finally:
        os.close(rfd)
        proc.kill()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


def xdotool(display: str, *args: str, timeout: float = 10.0) -> str:
    """Run `xdotool ARGS` against `display` and return its stdout.

    Raises subprocess.CalledProcessError if xdotool fails.
    """
    env = dict(os.environ, DISPLAY=display)
    done = subprocess.run(["xdotool", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=True)
    return done.stdout
