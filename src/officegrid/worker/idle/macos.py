"""macOS: HIDIdleTime of IOHIDSystem, read from `ioreg -c IOHIDSystem -d 4`.

HIDIdleTime is nanoseconds since the last HID (keyboard, mouse, trackpad) event, system wide.
`ioreg` prints it as a decimal number (`"HIDIdleTime" = 1234567890`); some versions print a
`<hex data>` blob instead, which is little-endian bytes of the same 64-bit value.
"""

from __future__ import annotations

import re
import subprocess
import sys

from officegrid.worker.idle.base import IdleReading, cannot

NAME = "macos"
_NUM = re.compile(r'"HIDIdleTime"\s*=\s*(\d+)')
_HEX = re.compile(r'"HIDIdleTime"\s*=\s*<([0-9a-fA-F]+)>')


def parse_ioreg(text: str) -> float | None:
    """Seconds since the last input from `ioreg -c IOHIDSystem` output; None if absent."""
    m = _NUM.search(text)
    if m:
        return int(m.group(1)) / 1e9
    m = _HEX.search(text)
    if m:
        return int.from_bytes(bytes.fromhex(m.group(1)), "little") / 1e9
    return None


class MacSource:
    """HIDIdleTime via ioreg (one short subprocess per read)."""

    name = NAME

    def read(self) -> IdleReading:
        if sys.platform != "darwin":
            return cannot(NAME, f"not macOS ({sys.platform})")
        try:  # pragma: no cover - macOS only
            out = subprocess.run(["ioreg", "-c", "IOHIDSystem", "-d", "4"], capture_output=True,
                                 text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError) as exc:  # pragma: no cover
            return cannot(NAME, f"ioreg failed: {exc}")
        seconds = parse_ioreg(out)  # pragma: no cover
        if seconds is None:  # pragma: no cover
            return cannot(NAME, "no HIDIdleTime in ioreg output")
        return IdleReading(NAME, seconds, "IOHIDSystem HIDIdleTime")  # pragma: no cover

    def close(self) -> None:
        pass
