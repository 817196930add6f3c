"""macOS background policy (worker/darwin.py): the call it makes (injected), and the real libc
call on this machine (Linux refuses PRIO_DARWIN_PROCESS, which exercises the errno path)."""

from __future__ import annotations

import errno
import os
import sys

import pytest

from officegrid.worker import darwin


def test_set_background_asks_for_the_darwin_background_band() -> None:
    calls: list[tuple[int, int, int]] = []
    assert darwin.set_background(4321, setpriority=lambda *a: calls.append(a)) is True
    # <sys/resource.h>: PRIO_DARWIN_PROCESS 4 (who = a pid), PRIO_DARWIN_BG 0x1000.
    assert calls == [(4, 4321, 0x1000)]


def test_set_background_failure_is_logged_not_raised(caplog) -> None:
    def refuse(which: int, who: int, prio: int) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    assert darwin.set_background(4321, setpriority=refuse) is False
    assert "4321" in caplog.text and "background policy" in caplog.text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux refuses which=4")
def test_real_libc_call_reports_the_kernel_error() -> None:
    call = darwin.libc_setpriority()
    with pytest.raises(OSError) as info:
        call(darwin.PRIO_DARWIN_PROCESS, os.getpid(), darwin.PRIO_DARWIN_BG)
    assert info.value.errno == errno.EINVAL
    assert "setpriority(4" in str(info.value)
    # The same libc binding works for a call Linux accepts: our own nice value, unchanged.
    call(0, os.getpid(), os.getpriority(os.PRIO_PROCESS, 0))
    assert darwin.set_background(os.getpid()) is False  # Linux: refused, logged, no raise


@pytest.mark.skipif(sys.platform != "darwin", reason="macOS only")
def test_real_background_on_macos() -> None:  # pragma: no cover - not run here
    assert darwin.set_background(0) is True
